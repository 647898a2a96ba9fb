//! The index library as SQL views (`schemas/sql.md` documents each, with its formula).
//!
//! Every view that groups by municipality groups a vote under the comune that exists now: the
//! code its terminal was registered with, or that code's current successor when an imported
//! edition suppressed or renumbered it (`municipality_successors`); `votes`, `counted_votes`
//! and `municipality_index_as_voted` keep the code as voted.
//!
//! Every index view counts only votes not flagged as misuse (`misuse = 0`, which also leaves
//! out clock faults, `misuse = 4`); `misuse_summary` counts the flagged ones, `clock_summary`
//! the clock faults per terminal. Views carry no order: rank with `ORDER BY`.

use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;

/// Groups with fewer counted votes than this get no rank in `municipality_service_ranking`:
/// below ~30 votes a percentage moves by several points with a single vote.
pub(crate) const RANKING_VOTES_MIN: u32 = 30;

/// Bounds of the empirical-Bayes prior strength (in votes) estimated from the data: at least one
/// vote, and at most 10,000 when the groups hardly differ (everything shrinks to the mean).
const PRIOR_VOTES_MIN: f64 = 1.0;
const PRIOR_VOTES_MAX: f64 = 10_000.0;

/// The counts every index is computed from (`face_counts` counts all faces in one pass).
const COUNTS: &str = "face_counts(face) AS counts";

/// The fields of `counts`, as columns.
const UNPACKED: &str = "get_field(counts, 'votes') AS votes, get_field(counts, 'positive') AS positive, \
     get_field(counts, 'neutral') AS neutral, get_field(counts, 'negative') AS negative";

/// The same counts, summed over finer groups.
const SUMMED: &str = "CAST(sum(c.votes) AS BIGINT) AS votes, CAST(sum(c.positive) AS BIGINT) AS positive, \
     CAST(sum(c.neutral) AS BIGINT) AS neutral, CAST(sum(c.negative) AS BIGINT) AS negative";

/// The index columns over `votes`, `positive`, `neutral`, `negative` (one decimal).
const INDICES: &str = "votes, positive, neutral, negative, \
     round(csat(positive, votes), 1) AS csat_pct, \
     round(net_score(positive, negative, votes), 1) AS net_score, \
     round(happy_index(positive, neutral, votes), 1) AS happy_index, \
     round(wilson_lower(positive, votes), 1) AS wilson_low_pct, \
     round(wilson_upper(positive, votes), 1) AS wilson_high_pct";

/// Counted votes grouped by `keys` (expression, name).
fn counts(keys: &[(&str, &str)]) -> String {
    let select = keys.iter().map(|(e, n)| format!("{e} AS {n}")).collect::<Vec<_>>().join(", ");
    let names = keys.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
    let positions = (1..=keys.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    format!("SELECT {names}, {UNPACKED} FROM (SELECT {select}, {COUNTS} FROM votes WHERE misuse = 0 GROUP BY {positions})")
}

/// The same counts from the `vote_counts` rollup, grouped by `keys` (expression, name): what
/// every view by service, channel, region, hour of the day or day uses.
fn rolled(keys: &[(&str, &str)]) -> String {
    let select = keys.iter().map(|(e, n)| format!("{e} AS {n}")).collect::<Vec<_>>().join(", ");
    let positions = (1..=keys.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let face = |f: i8| format!("CAST(coalesce(sum(votes) FILTER (WHERE face = {f}), 0) AS BIGINT)");
    format!(
        "SELECT {select}, CAST(sum(votes) AS BIGINT) AS votes, {} AS positive, {} AS neutral, {} AS negative \
         FROM vote_counts WHERE misuse = 0 GROUP BY {positions}",
        face(1),
        face(0),
        face(-1)
    )
}

/// The `municipality_service_counts` rollup with `municipality` the current code (a suppressed
/// or renumbered code's successor) and `municipality_as_voted` the code the votes carry.
const CURRENT_PAIRS: &str = "(SELECT coalesce(s.current, p.municipality) AS municipality, p.municipality AS municipality_as_voted, \
     p.service, p.misuse, p.votes, p.positive, p.neutral, p.negative, p.date \
     FROM municipality_service_counts p LEFT JOIN municipality_successors s ON s.municipality = p.municipality) pairs";

/// The same counts from the `municipality_service_counts` rollup (by current municipality),
/// grouped by `keys`: what the views by municipality, province and municipality × service use.
fn paired(keys: &[(&str, &str)]) -> String {
    paired_from(CURRENT_PAIRS, keys)
}

/// `paired` over `source` (the rollup as it is, or `CURRENT_PAIRS`).
fn paired_from(source: &str, keys: &[(&str, &str)]) -> String {
    let select = keys.iter().map(|(e, n)| format!("{e} AS {n}")).collect::<Vec<_>>().join(", ");
    let positions = (1..=keys.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let sum = |c: &str| format!("CAST(sum({c}) AS BIGINT) AS {c}");
    format!(
        "SELECT {select}, {}, {}, {}, {} FROM {source} WHERE misuse = 0 GROUP BY {positions}",
        sum("votes"),
        sum("positive"),
        sum("neutral"),
        sum("negative")
    )
}

/// Region names by code.
const REGIONS: &str = "(SELECT DISTINCT region_code, region FROM municipalities)";

/// A view with the index columns after `select`, over `from` (which yields the counts).
fn index_view(name: &str, select: &str, from: &str) -> String {
    format!("CREATE VIEW {name} AS SELECT {select}, {INDICES} FROM {from}")
}

/// Per-municipality counts joined to the registry, summed by `dims` (columns of `m`).
fn by_registry(dims: &str) -> String {
    format!(
        "(SELECT {dims}, {SUMMED} FROM ({}) c JOIN municipalities m ON m.municipality = c.municipality GROUP BY {dims}) g",
        paired(&[("municipality", "municipality")])
    )
}

/// Per-service index over a time bucket (`expression` names the bucket column `bucket`), from
/// the votes (`raw`) or from the counts rollup.
fn bucket_view(name: &str, bucket: &str, expression: &str, raw: bool) -> String {
    let keys = [(expression, bucket), ("service", "service")];
    let from = if raw { counts(&keys) } else { rolled(&keys) };
    index_view(name, &format!("c.{bucket}, c.service, s.name"), &format!("({from}) c JOIN services s ON s.service = c.service"))
}

/// This period against the previous one, per service (`step` is the interval between periods).
fn trend_view(name: &str, unit: &str, step: &str) -> String {
    let periods = rolled(&[(&format!("CAST(date_trunc('{unit}', date) AS DATE)"), "period"), ("service", "service")]);
    format!(
        "CREATE VIEW {name} AS
         WITH p AS ({periods})
         SELECT p.service, s.name, p.period, q.period AS previous_period,
                p.votes, round(csat(p.positive, p.votes), 1) AS csat_pct,
                q.votes AS previous_votes, round(csat(q.positive, q.votes), 1) AS previous_csat_pct,
                round(csat(p.positive, p.votes) - csat(q.positive, q.votes), 1) AS change_pts,
                round(change_z(p.positive, p.votes, q.positive, q.votes), 2) AS z,
                abs(change_z(p.positive, p.votes, q.positive, q.votes)) >= {z} AS significant
         FROM p JOIN services s ON s.service = p.service
         LEFT JOIN p q ON q.service = p.service AND q.period = p.period - INTERVAL '{step}'",
        z = super::indices::Z_95
    )
}

/// Every view of the library, in creation order.
pub(crate) fn definitions() -> Vec<String> {
    let mut views = vec![
        // The six-digit code beside the number, for spreadsheets (the rest as `votes` has it).
        "CREATE VIEW counted_votes AS SELECT municipality, istat_code(municipality) AS istat_code, * EXCLUDE (municipality) \
         FROM votes WHERE misuse = 0"
            .to_string(),
        index_view(
            "service_index",
            "c.service, s.name",
            &format!("({}) c JOIN services s ON s.service = c.service", rolled(&[("service", "service")])),
        ),
        index_view(
            "channel_index",
            "c.channel, ch.name",
            &format!("({}) c JOIN channels ch ON ch.channel = c.channel", rolled(&[("channel", "channel")])),
        ),
        index_view(
            "municipality_index",
            "c.municipality, m.istat_code, m.name, m.province, m.region",
            &format!("({}) c JOIN municipalities m ON m.municipality = c.municipality", paired(&[("municipality", "municipality")])),
        ),
        index_view(
            "municipality_index_as_voted",
            "c.municipality, istat_code(c.municipality) AS istat_code, coalesce(m.name, s.name) AS name, \
             coalesce(s.current, c.municipality) AS current_municipality, s.kind AS succession",
            &format!(
                "({}) c LEFT JOIN municipalities m ON m.municipality = c.municipality \
                 LEFT JOIN municipality_successors s ON s.municipality = c.municipality",
                paired_from("municipality_service_counts", &[("municipality", "municipality")])
            ),
        ),
        index_view("province_index", "province, region", &by_registry("m.province, m.region")),
        index_view(
            "region_index",
            "c.region_code, r.region",
            &format!("({}) c JOIN {REGIONS} r ON r.region_code = c.region_code", rolled(&[("region_code", "region_code")])),
        ),
        bucket_view("service_index_hourly", "hour", "date_trunc('hour', ts)", true),
        bucket_view("service_index_daily", "day", "date", false),
        bucket_view("service_index_weekly", "week", "CAST(date_trunc('week', date) AS DATE)", false),
        bucket_view("service_index_monthly", "month", "CAST(date_trunc('month', date) AS DATE)", false),
        trend_view("service_trend_weekly", "week", "7 days"),
        trend_view("service_trend_monthly", "month", "1 month"),
    ];
    views.push(index_view(
        "heat_map",
        "c.region_code, r.region, c.weekday, c.hour",
        &format!(
            "({}) c JOIN {REGIONS} r ON r.region_code = c.region_code",
            rolled(&[
                ("region_code", "region_code"),
                ("CAST((date_part('dow', date) + 6) % 7 + 1 AS TINYINT UNSIGNED)", "weekday"),
                ("hour", "hour"),
            ])
        ),
    ));
    views.push(format!(
        "CREATE VIEW municipality_service_ranking AS
         WITH g AS ({groups}),
         moments AS (
           SELECT CAST(sum(positive) AS DOUBLE) / sum(votes) AS mu,
                  var_pop(CAST(positive AS DOUBLE) / votes) AS spread,
                  avg(1.0 / votes) AS inverse_votes
           FROM g),
         prior AS (
           SELECT mu,
                  CASE WHEN spread > mu * (1 - mu) * inverse_votes
                       THEN least(greatest(mu * (1 - mu) / (spread - mu * (1 - mu) * inverse_votes) - 1, {PRIOR_VOTES_MIN:.1}), {PRIOR_VOTES_MAX:.1})
                       ELSE {PRIOR_VOTES_MAX:.1} END AS strength
           FROM moments),
         scored AS (
           SELECT g.*, wilson_lower(g.positive, g.votes) AS wilson, eb_score(g.positive, g.votes, 100 * prior.mu, prior.strength) AS eb,
                  prior.mu, prior.strength, g.votes >= {RANKING_VOTES_MIN} AS ranked
           FROM g CROSS JOIN prior)
         SELECT c.municipality, m.istat_code, m.name AS municipality_name, m.region, c.service, s.name AS service_name, {INDICES},
                round(eb, 1) AS eb_score_pct, round(100 * mu, 1) AS prior_pct, round(strength, 1) AS prior_votes,
                CASE WHEN ranked THEN rank() OVER (PARTITION BY ranked ORDER BY wilson DESC) END AS rank_wilson,
                CASE WHEN ranked THEN rank() OVER (PARTITION BY ranked ORDER BY eb DESC) END AS rank_eb
         FROM scored c JOIN municipalities m ON m.municipality = c.municipality JOIN services s ON s.service = c.service",
        groups = paired(&[("municipality", "municipality"), ("service", "service")]),
    ));
    views.push(
        "CREATE VIEW reason_shares AS
         SELECT n.service, s.name AS service_name, n.reason, coalesce(r.name, 'not given') AS reason_name,
                n.votes AS negative_votes,
                round(share_pct(n.votes, sum(n.votes) OVER (PARTITION BY n.service)), 1) AS share_pct
         FROM (SELECT service, reason, CAST(sum(votes) AS BIGINT) AS votes FROM vote_counts
               WHERE misuse = 0 AND face = -1 GROUP BY service, reason) n
         JOIN services s ON s.service = n.service
         LEFT JOIN reasons r ON r.reason = n.reason"
            .to_string(),
    );
    views.push(
        "CREATE VIEW misuse_summary AS
         SELECT municipality, istat_code(municipality) AS istat_code, terminal, misuse AS rule, count(*) AS flagged_votes, min(ts) AS first_flagged, max(ts) AS last_flagged
         FROM votes WHERE misuse <> 0 GROUP BY municipality, terminal, misuse"
            .to_string(),
    );
    views.push(format!(
        "CREATE VIEW clock_summary AS
         SELECT municipality, istat_code(municipality) AS istat_code, terminal, count(*) AS faulted_votes,
                min(ts) AS first_received, max(ts) AS last_received,
                min(terminal_ts) AS earliest_terminal_ts, max(terminal_ts) AS latest_terminal_ts,
                CAST(median(CAST(terminal_ts AS BIGINT) - CAST(ts AS BIGINT)) AS BIGINT) AS typical_offset_ms,
                round(median(CAST(terminal_ts AS BIGINT) - CAST(ts AS BIGINT)) / 86400000.0, 2) AS typical_offset_days
         FROM votes WHERE misuse = {clock} GROUP BY municipality, terminal",
        clock = crate::storage::buffer::CLOCK_FAULT
    ));
    views.extend(coverage_views());
    views
}

fn coverage_views() -> Vec<String> {
    vec![
        format!(
            "CREATE VIEW administration_coverage AS
         SELECT m.municipality, m.istat_code, m.name, m.province, m.region_code, m.region, m.population, a.eligible,
                a.digital_signature, a.pec, a.bonus_eur,
                coalesce(t.active, 0) AS terminals_active, coalesce(v.votes, 0) AS votes, v.first_day, v.last_day
         FROM municipalities m JOIN administrations a ON a.municipality = m.municipality
         LEFT JOIN (SELECT coalesce(s.current, t.municipality) AS municipality, count(*) FILTER (WHERE t.active) AS active
                    FROM terminals t LEFT JOIN municipality_successors s ON s.municipality = t.municipality
                    WHERE t.union_code IS NULL GROUP BY 1) t
                ON t.municipality = m.municipality
         LEFT JOIN (SELECT municipality, CAST(sum(votes) AS BIGINT) AS votes, min(date) AS first_day, max(date) AS last_day
                    FROM {CURRENT_PAIRS} WHERE misuse = 0 GROUP BY municipality) v ON v.municipality = m.municipality"
        ),
        // A union is one administration: its own terminals (registered to it, standing in a
        // member comune), its own bonus; the member comuni keep theirs.
        "CREATE VIEW union_coverage AS
         SELECT u.union_code, u.name, u.region_code, u.region, u.members, u.small_members, u.eligible, u.digital_signature, u.pec,
                u.bonus_eur, coalesce(t.active, 0) AS terminals_active, coalesce(v.votes, 0) AS votes, v.first_day, v.last_day
         FROM unions u
         LEFT JOIN (SELECT union_code, count(*) FILTER (WHERE active) AS active FROM terminals WHERE union_code IS NOT NULL GROUP BY union_code) t
                ON t.union_code = u.union_code
         LEFT JOIN (SELECT t.union_code, count(*) AS votes, min(c.date) AS first_day, max(c.date) AS last_day
                    FROM counted_votes c JOIN terminals t ON t.terminal = c.terminal WHERE t.union_code IS NOT NULL GROUP BY t.union_code) v
                ON v.union_code = u.union_code"
            .to_string(),
        "CREATE VIEW coverage_by_region AS
         SELECT c.region_code, c.region, c.eligible, c.with_terminals, c.with_votes, c.coverage_pct,
                coalesce(u.eligible, 0) AS unions_eligible, coalesce(u.with_terminals, 0) AS unions_with_terminals,
                CAST(c.bonus_eur + coalesce(u.bonus_eur, 0) AS BIGINT) AS bonus_eur
         FROM (SELECT region_code, region,
                      count(*) FILTER (WHERE eligible) AS eligible,
                      count(*) FILTER (WHERE eligible AND terminals_active > 0) AS with_terminals,
                      count(*) FILTER (WHERE eligible AND votes > 0) AS with_votes,
                      round(share_pct(count(*) FILTER (WHERE eligible AND terminals_active > 0), count(*) FILTER (WHERE eligible)), 1) AS coverage_pct,
                      CAST(coalesce(sum(bonus_eur) FILTER (WHERE eligible AND terminals_active > 0), 0) AS BIGINT) AS bonus_eur
               FROM administration_coverage GROUP BY region_code, region) c
         LEFT JOIN (SELECT region_code, count(*) FILTER (WHERE eligible) AS eligible,
                           count(*) FILTER (WHERE eligible AND terminals_active > 0) AS with_terminals,
                           CAST(sum(bonus_eur) FILTER (WHERE eligible AND terminals_active > 0) AS BIGINT) AS bonus_eur
                    FROM union_coverage GROUP BY region_code) u ON u.region_code = c.region_code"
            .to_string(),
        format!(
            "CREATE VIEW union_index AS
             SELECT union_code, name, service, {INDICES}
             FROM (SELECT t.union_code, u.name, c.service, {SUMMED}
                   FROM (SELECT terminal, service, {UNPACKED}
                         FROM (SELECT terminal, service, {COUNTS} FROM votes WHERE misuse = 0 GROUP BY terminal, service)) c
                   JOIN terminals t ON t.terminal = c.terminal JOIN unions u ON u.union_code = t.union_code
                   GROUP BY t.union_code, u.name, c.service)"
        ),
        format!(
            "CREATE VIEW coverage_by_region_month AS
         SELECT e.region_code, e.region, v.month, e.eligible, count(v.municipality) AS with_votes,
                round(share_pct(count(v.municipality), e.eligible), 1) AS coverage_pct
         FROM (SELECT region_code, region, count(*) AS eligible FROM municipalities WHERE eligible GROUP BY region_code, region) e
         JOIN (SELECT DISTINCT m.region_code, CAST(date_trunc('month', c.date) AS DATE) AS month, c.municipality
               FROM (SELECT DISTINCT municipality, date FROM {CURRENT_PAIRS} WHERE misuse = 0) c
               JOIN municipalities m ON m.municipality = c.municipality WHERE m.eligible) v ON v.region_code = e.region_code
         GROUP BY e.region_code, e.region, v.month, e.eligible"
        ),
    ]
}

/// Creates every view in `ctx`.
///
/// # Errors
/// A view that does not plan (a programming error caught by the tests).
pub(crate) async fn create(ctx: &SessionContext) -> DfResult<()> {
    for view in definitions() {
        ctx.sql(&view).await?.collect().await?;
    }
    Ok(())
}
