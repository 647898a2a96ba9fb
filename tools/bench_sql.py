#!/usr/bin/env python3
"""The standard analyst queries on faccia (DataFusion) and on DuckDB, over the same files.

Usage: tools/bench_sql.py --data-dir DIR --faccia target/release/faccia [--repeat 5] [--end YYYY-MM-DD]
       tools/bench_sql.py --data-dir DIR --baseline-dir DIR2 --faccia F [--repeat 5]

For each query, interleaved: `faccia sql --repeat N` (timings measured inside the process, after
the context is open, so process start is not counted) and DuckDB in this process reading
the table's files (the active files of its Delta log; every file of a directory written before
the table format) with hive partitioning, N runs each after one warm-up run per engine.
faccia answers with its library (views and tables over the rollups where they have one);
DuckDB reads the votes, as an analyst pointing it at the dataset would. Where faccia reads the
rollup, DuckDB is also timed over the same rollup files, for a like-for-like
figure. All answers are compared (rows and a checksum) before any timing is reported. Prints
a Markdown table of medians and the ratio faccia / DuckDB, and the bytes per vote on disk.

With --baseline-dir, faccia alone on two datasets of the same votes (e.g. the year written at a
10-minute flush and compacted, against the same votes written one file per day): the five
queries and `count(*)`, interleaved, with the ratio DIR / DIR2; answers compared first.
"""
import argparse
import csv
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import time

import duckdb

Z = 1.959963984540054

# (name, faccia SQL, DuckDB SQL over votes, DuckDB SQL over vote_counts or None).
# {end}, {municipality} and {day} are filled in.
QUERIES = [
    (
        "per-service index, everything",
        "SELECT service, votes, positive, neutral, negative, csat_pct, net_score, wilson_low_pct "
        "FROM service_index ORDER BY service",
        "SELECT service, count(*) AS votes, count(*) FILTER (WHERE face = 1) AS positive, "
        "count(*) FILTER (WHERE face = 0) AS neutral, count(*) FILTER (WHERE face = -1) AS negative, "
        "round(100.0 * count(*) FILTER (WHERE face = 1) / count(*), 1) AS csat_pct, "
        "round(100.0 * (count(*) FILTER (WHERE face = 1) - count(*) FILTER (WHERE face = -1)) / count(*), 1) AS net_score, "
        "round(wilson_lower(count(*) FILTER (WHERE face = 1), count(*)), 1) AS wilson_low_pct "
        "FROM votes WHERE misuse = 0 GROUP BY service ORDER BY service",
        "SELECT service, sum(votes) AS votes, sum(votes) FILTER (WHERE face = 1) AS positive, "
        "sum(votes) FILTER (WHERE face = 0) AS neutral, sum(votes) FILTER (WHERE face = -1) AS negative, "
        "round(100.0 * sum(votes) FILTER (WHERE face = 1) / sum(votes), 1) AS csat_pct, "
        "round(100.0 * (sum(votes) FILTER (WHERE face = 1) - sum(votes) FILTER (WHERE face = -1)) / sum(votes), 1) AS net_score, "
        "round(wilson_lower(sum(votes) FILTER (WHERE face = 1), sum(votes)), 1) AS wilson_low_pct "
        "FROM vote_counts WHERE misuse = 0 GROUP BY service ORDER BY service",
    ),
    (
        "top municipality × service by Wilson, 30 days",
        "SELECT municipality, service, CAST(sum(votes) AS BIGINT) AS votes, wilson_lower(sum(positive), sum(votes)) AS w "
        "FROM municipality_service_counts WHERE misuse = 0 AND date > DATE '{end}' - INTERVAL '30 days' "
        "GROUP BY municipality, service HAVING sum(votes) >= 30 ORDER BY w DESC, municipality, service LIMIT 20",
        "SELECT municipality, service, count(*) AS votes, "
        "wilson_lower(count(*) FILTER (WHERE face = 1), count(*)) AS w FROM votes "
        "WHERE misuse = 0 AND date > DATE '{end}' - INTERVAL '30 days' GROUP BY municipality, service "
        "HAVING count(*) >= 30 ORDER BY w DESC, municipality, service LIMIT 20",
        "SELECT municipality, service, sum(votes) AS votes, wilson_lower(sum(positive), sum(votes)) AS w "
        "FROM municipality_service_counts WHERE misuse = 0 AND date > DATE '{end}' - INTERVAL '30 days' "
        "GROUP BY municipality, service HAVING sum(votes) >= 30 ORDER BY w DESC, municipality, service LIMIT 20",
    ),
    (
        "heat map, one region (Piemonte)",
        "SELECT weekday, hour, votes, csat_pct FROM heat_map WHERE region = 'Piemonte' ORDER BY weekday, hour",
        "SELECT CAST((date_part('dow', v.ts AT TIME ZONE 'Europe/Rome') + 6) % 7 + 1 AS INTEGER) AS weekday, "
        "CAST(date_part('hour', v.ts AT TIME ZONE 'Europe/Rome') AS INTEGER) AS hour, count(*) AS votes, "
        "round(100.0 * count(*) FILTER (WHERE face = 1) / count(*), 1) AS csat_pct "
        "FROM votes v JOIN municipalities m ON m.municipality = v.municipality "
        "WHERE v.misuse = 0 AND m.region = 'Piemonte' GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT CAST((date_part('dow', date) + 6) % 7 + 1 AS INTEGER) AS weekday, CAST(hour AS INTEGER) AS hour, "
        "sum(votes) AS votes, round(100.0 * sum(votes) FILTER (WHERE face = 1) / sum(votes), 1) AS csat_pct "
        "FROM vote_counts WHERE misuse = 0 AND region_code = 1 GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "one municipality, one day",
        "SELECT service, CAST(sum(votes) AS BIGINT) AS votes, csat(sum(positive), sum(votes)) AS csat "
        "FROM municipality_service_counts "
        "WHERE municipality = {municipality} AND date = DATE '{day}' AND misuse = 0 GROUP BY service ORDER BY service",
        "SELECT service, count(*) AS votes, 100.0 * count(*) FILTER (WHERE face = 1) / count(*) AS csat FROM votes "
        "WHERE municipality = {municipality} AND date = DATE '{day}' AND misuse = 0 GROUP BY service ORDER BY service",
        "SELECT service, sum(votes) AS votes, 100.0 * sum(positive) / sum(votes) AS csat FROM municipality_service_counts "
        "WHERE municipality = {municipality} AND date = DATE '{day}' AND misuse = 0 GROUP BY service ORDER BY service",
    ),
    (
        "reason shares, 7 days",
        "SELECT reason, CAST(sum(votes) AS BIGINT) AS votes, round(share_pct(sum(votes), sum(sum(votes)) OVER ()), 1) AS share_pct "
        "FROM vote_counts WHERE misuse = 0 AND face = -1 AND date > DATE '{end}' - INTERVAL '7 days' "
        "GROUP BY reason ORDER BY reason NULLS LAST",
        "SELECT reason, count(*) AS votes, round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS share_pct "
        "FROM votes WHERE misuse = 0 AND face = -1 AND date > DATE '{end}' - INTERVAL '7 days' "
        "GROUP BY reason ORDER BY reason NULLS LAST",
        "SELECT reason, sum(votes) AS votes, round(100.0 * sum(votes) / sum(sum(votes)) OVER (), 1) AS share_pct "
        "FROM vote_counts WHERE misuse = 0 AND face = -1 AND date > DATE '{end}' - INTERVAL '7 days' "
        "GROUP BY reason ORDER BY reason NULLS LAST",
    ),
]


def faccia_run(args, sql, data_dir=None):
    """(rows as text, median ms, min ms) from `faccia sql --repeat` (one warm-up run more)."""
    proc = subprocess.run(
        [args.faccia, "sql", "--data-dir", data_dir or args.data_dir, "--format", "csv", "--repeat", str(args.repeat + 1), sql],
        check=True, capture_output=True, text=True,
    )
    runs = [float(x) for x in proc.stderr.split("runs ")[-1].split()][1:]
    rows = list(csv.reader(io.StringIO(proc.stdout)))[1:]
    return rows, statistics.median(runs), min(runs)


def table_files(data_dir, table):
    """The files of a table: the active files of its Delta log (replayed from the last checkpoint
    with the `deltalake` package), or every Parquet file of a directory written before the table
    format. Files removed by compaction but not yet vacuumed are not the table's."""
    root = f"{data_dir}/{table}"
    if os.path.isdir(f"{root}/_delta_log"):
        from deltalake import DeltaTable

        return sorted(DeltaTable(root).file_uris())
    return sorted(glob.glob(f"{root}/*/*.parquet"))


def duckdb_connection(data_dir, repo):
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'Europe/Rome'")
    for table in ("votes", "vote_counts", "municipality_service_counts"):
        files = table_files(data_dir, table)
        if files:
            con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet({json.dumps(files)}, hive_partitioning = true)"
            )
    con.execute(
        f"CREATE TABLE municipalities AS SELECT CAST(istat_code AS INTEGER) AS municipality, region "
        f"FROM read_csv('{repo}/data/comuni.csv', header = true, all_varchar = true)"
    )
    con.execute(
        f"""CREATE MACRO wilson_lower(p, t) AS 100 * greatest(0,
            ((p / t + {Z}^2 / (2 * t)) - {Z} * sqrt(p / t * (1 - p / t) / t + {Z}^2 / (4 * t * t))) / (1 + {Z}^2 / t))"""
    )
    return con


def duckdb_run(con, sql, repeat):
    con.execute(sql).fetchall()  # warm-up
    runs = []
    rows = None
    for _ in range(repeat):
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        runs.append((time.perf_counter() - started) * 1000)
    return rows, statistics.median(runs), min(runs)


def checksum(rows):
    """Rows and the sum of every numeric cell, rounded: enough to catch a different answer."""
    total = 0.0
    for row in rows:
        for cell in row:
            try:
                total += float(cell) if cell not in ("", None) else 0.0
            except (TypeError, ValueError):
                pass
    return len(rows), round(total, 0)


def faccia_against_baseline(args, params):
    """faccia on --data-dir and on --baseline-dir (the same votes), interleaved query by query."""
    print(f"faccia on {args.data_dir} against {args.baseline_dir}, {args.repeat} runs each after a warm-up, medians (min)\n")
    print("| query | this dataset ms | baseline ms | ratio |")
    print("|---|---:|---:|---:|")
    queries = [(name, ours) for name, ours, _, _ in QUERIES] + [("count(*)", "SELECT count(*) FROM votes")]
    for name, sql in queries:
        sql = sql.format(**params)
        rows, ms, low = faccia_run(args, sql)
        base_rows, base_ms, base_low = faccia_run(args, sql, data_dir=args.baseline_dir)
        if checksum(rows) != checksum(base_rows):
            print(f"{name}: answers differ: {checksum(rows)} against {checksum(base_rows)}", file=sys.stderr)
            return 1
        print(f"| {name} | {ms:.1f} ({low:.1f}) | {base_ms:.1f} ({base_low:.1f}) | {ms / base_ms:.2f} |")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--faccia", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--end", help="the last day of the dataset [default: the latest partition]")
    parser.add_argument("--baseline-dir", help="time faccia alone against this dataset of the same votes")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = table_files(args.data_dir, "votes")
    days = sorted(os.path.basename(os.path.dirname(f)).removeprefix("date=") for f in files)
    end = args.end or days[-1]
    con = duckdb_connection(args.data_dir, repo)
    votes = con.execute("SELECT count(*) FROM votes").fetchone()[0]
    busiest = con.execute(
        f"SELECT municipality FROM votes WHERE date = DATE '{end}' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()[0]
    params = {"end": end, "municipality": busiest, "day": end}
    if args.baseline_dir:
        return faccia_against_baseline(args, params)
    size = sum(os.path.getsize(f) for f in files)
    print(f"{votes} votes in {len(files)} files, {size} bytes: {size / votes:.2f} bytes per vote")
    total = size
    for rollup in ("vote_counts", "municipality_service_counts"):
        rolled = sum(os.path.getsize(f) for f in table_files(args.data_dir, rollup))
        total += rolled
        print(f"{rollup} rollup: {rolled} bytes, {rolled / votes:.3f} bytes per vote")
    print(f"votes and rollups together: {total / votes:.2f} bytes per vote")
    print(f"DuckDB {duckdb.__version__}, {args.repeat} runs each after a warm-up, medians (min)\n")
    print("| query | faccia (DataFusion) ms | DuckDB over votes ms | faccia / DuckDB | DuckDB over the same rollup ms |")
    print("|---|---:|---:|---:|---:|")
    for name, ours, theirs, theirs_counted in QUERIES:
        ours, theirs = ours.format(**params), theirs.format(**params)
        our_rows, our_ms, our_min = faccia_run(args, ours)
        their_rows, their_ms, their_min = duckdb_run(con, theirs, args.repeat)
        counted = "—"
        if theirs_counted:
            counted_rows, counted_ms, counted_min = duckdb_run(con, theirs_counted.format(**params), args.repeat)
            if checksum(counted_rows) != checksum(their_rows):
                print(f"{name}: DuckDB over counts differs from over votes", file=sys.stderr)
                return 1
            counted = f"{counted_ms:.0f} ({counted_min:.0f})"
        if checksum(our_rows) != checksum(their_rows):
            print(f"{name}: answers differ: faccia {checksum(our_rows)} {our_rows[:3]}, DuckDB {checksum(their_rows)} {their_rows[:3]}", file=sys.stderr)
            return 1
        print(f"| {name} | {our_ms:.0f} ({our_min:.0f}) | {their_ms:.0f} ({their_min:.0f}) | {our_ms / their_ms:.2f} | {counted} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
