//! The command line: one clap definition per flag, and the commands that call the library.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::model::IstatCode;
use crate::query::formats::{CsvOptions, Delimiter};
use crate::query::{self, Format};
use crate::registry::{self, Credential};
use crate::server::Server;
use crate::terminal::client::ServerTarget;
use crate::terminal::simulate::{FleetPlan, run_fleet};

/// The `faccia` command line: one subcommand per job.
#[derive(Debug, Parser)]
#[command(
    name = "faccia",
    version,
    about = "Customer-satisfaction votes from emoticon terminals: QUIC ingest, Parquet storage, SQL indices."
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The `--data-dir` flag every command that reads or writes a data directory shares.
#[derive(Debug, Args)]
pub struct DataDir {
    /// Directory holding the log, the Parquet dataset, the terminal directory and certificates.
    #[arg(long, short = 'd', env = "FACCIA_DATA_DIR", default_value = "faccia-data")]
    pub data_dir: PathBuf,
}

/// Where and how `faccia sql` writes a result.
#[derive(Debug, Args)]
pub struct SqlOutput {
    /// Output format. For Excel: `xlsx` (typed cells, times in Italy), or `csv-excel` (a CSV an
    /// Italian Excel opens right by double-click: byte-order mark, `;`, decimal commas).
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the result to this file instead of standard output (`xlsx`, `parquet` and `arrow`
    /// need it when standard output is a terminal).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With `--format csv`: start the file with a UTF-8 byte-order mark, so that Excel reads
    /// "Agliè" right.
    #[arg(long)]
    pub csv_bom: bool,
    /// With `--format csv`: the field delimiter, `,` (the default), `;` (what Excel's import
    /// takes where the decimal separator is a comma, as in Italy) or `tab`.
    #[arg(long, value_name = "CHAR", value_parser = |text: &str| Delimiter::parse(text))]
    pub csv_delimiter: Option<Delimiter>,
}

impl SqlOutput {
    /// The CSV options, refused with a format they do not apply to (naming the flag).
    fn csv(&self) -> anyhow::Result<CsvOptions> {
        let given: Vec<&str> =
            [(self.csv_bom, "--csv-bom"), (self.csv_delimiter.is_some(), "--csv-delimiter")].iter().filter(|g| g.0).map(|g| g.1).collect();
        if !given.is_empty() && self.format != Format::Csv {
            bail!(
                "{} applies to --format csv, not --format {} (csv-excel always writes a byte-order mark, ';' and decimal commas)",
                given.join(" and "),
                format_name(self.format)
            );
        }
        Ok(CsvOptions { bom: self.csv_bom, delimiter: self.csv_delimiter.unwrap_or_default() })
    }
}

fn format_name(format: Format) -> String {
    format.to_possible_value().map_or_else(|| format!("{format:?}"), |v| v.get_name().to_string())
}

/// The subcommands of `faccia`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ingest server until Ctrl-C or SIGTERM.
    Serve {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// UDP address for terminal connections (QUIC) [default: 127.0.0.1:4747].
        #[arg(long, short = 'l')]
        listen: Option<SocketAddr>,
        /// TCP address of the Arrow Flight SQL server for analysts [default: 127.0.0.1:4748].
        #[arg(long)]
        flight_listen: Option<SocketAddr>,
        /// TCP address of the HTTP server (/query, /health, /metrics) [default: 127.0.0.1:4749].
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Analyst bearer token for Flight SQL and HTTP (instead of the configuration file's
        /// `analyst_tokens` or the generated DATA_DIR/analyst-token).
        #[arg(long, env = crate::analysts::tokens::TOKEN_ENV, hide_env_values = true)]
        analyst_token: Option<String>,
        /// TOML configuration file (listen address, TLS certificate, limits, storage).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Run SQL over the dataset; without a query, open an interactive prompt.
    Sql {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// Where and how the result is written.
        #[command(flatten)]
        output: SqlOutput,
        /// Run the query this many times and print its timings to stderr (measurements).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Run queries on the Ballista cluster whose scheduler is at HOST:PORT (`faccia cluster
        /// scheduler`); the plan is made here, with the rows not yet in the table.
        #[arg(long, value_name = "HOST:PORT", env = "FACCIA_CLUSTER")]
        cluster: Option<String>,
        /// With --cluster: scan tasks and shuffle partitions per query (about twice the
        /// cluster's slots).
        #[arg(long, default_value_t = crate::cluster::ClusterConfig::default().partitions, requires = "cluster")]
        partitions: usize,
        /// With --cluster: give up a query the cluster has not finished after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::cluster::ClusterConfig::default().query_timeout_s, requires = "cluster")]
        cluster_timeout_s: u64,
        /// The query, e.g. "SELECT * FROM service_index".
        query: Option<String>,
    },
    /// Run SQL past one machine: an Apache Ballista scheduler or executor of this build
    /// (ARCHITECTURE.md, "Running a cluster").
    Cluster {
        /// Which part of the cluster this process is.
        #[command(subcommand)]
        role: ClusterRole,
    },
    /// Register, list and revoke terminals.
    Terminals {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// What to do with the terminal directory.
        #[command(subcommand)]
        action: TerminalsAction,
    },
    /// Create, list and revoke SQL tokens scoped to a region, a municipality or a union.
    Tokens {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// What to do with the scoped tokens.
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Register unions of comuni (Unioni di Comuni): one administration of several comuni.
    Unions {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// What to do with the unions.
        #[command(subcommand)]
        action: UnionsAction,
    },
    /// The list of comuni: import a newer ISTAT edition into the data directory, list the
    /// editions it went through.
    Registry {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// What to do with the list of comuni.
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Record what the programme's bonus rule needs about administrations.
    Administrations {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// What to do with the administrations' attributes.
        #[command(subcommand)]
        action: AdministrationsAction,
    },
    /// Send simulated votes from registered terminals to a server.
    Terminal {
        /// The server's QUIC address; several (comma-separated or repeated) for the nodes of one
        /// table: each terminal starts at the first and moves to the next when its node is
        /// unreachable or says another node serves it.
        #[arg(long, short = 's', default_value = crate::config::DEFAULT_LISTEN, value_delimiter = ',', num_args = 1..)]
        server: Vec<SocketAddr>,
        /// Name the server's certificate is checked against.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// CA certificate that signed the server's certificate (DATA_DIR/tls/ca.pem in development).
        #[arg(long)]
        ca: PathBuf,
        /// Credentials file written by `faccia terminals add --out`.
        #[arg(long)]
        credentials: PathBuf,
        /// How long to send.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Largest batch; each batch holds 1..=N votes.
        #[arg(long, default_value_t = 40)]
        batch_votes: usize,
        /// Mean pause between a terminal's batches, in milliseconds.
        #[arg(long, default_value_t = 500)]
        think_ms: u64,
        /// How long a batch's reply may take before the terminal reconnects (to its next
        /// server address, if it has several), in milliseconds.
        #[arg(long, default_value_t = crate::terminal::client::ACK_TIMEOUT.as_millis() as u64)]
        reply_timeout_ms: u64,
        /// How long a silent connection lives (keep-alives every 5 s or half of it), in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        idle_timeout_ms: u64,
        /// Simulated clock faults.
        #[command(flatten)]
        clock: ClockFaultArgs,
    },
    /// Load-test a server with simulated terminals: throughput, acknowledgement latency,
    /// handshakes, memory per terminal, reconnect storm; cross-checked with SQL.
    Bench(BenchArgs),
    /// Kill a live server with SIGKILL at random moments while terminals send, restart it, and
    /// check with SQL that every acknowledged vote is stored exactly once.
    Crashtest {
        /// Keep the data here instead of a temporary directory.
        #[arg(long, short = 'd')]
        data_dir: Option<PathBuf>,
        /// Kill/restart rounds.
        #[arg(long, default_value_t = 50)]
        rounds: u32,
        /// Simulated terminals sending throughout.
        #[arg(long, default_value_t = 20)]
        terminals: usize,
        /// Shortest time the server runs before it is killed, in milliseconds.
        #[arg(long, default_value_t = 100)]
        min_ms: u64,
        /// Longest time the server runs before it is killed, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        max_ms: u64,
        /// Seed of the random kill times and votes (printed; a run is replayed with it).
        #[arg(long)]
        seed: Option<u64>,
        /// Nodes serving one table, killed in turn while the terminals move between them
        /// (needs --storage-url).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// The tables' `[storage] url` (`s3://bucket/prefix`; credentials and endpoint from the
        /// `AWS_*` environment).
        #[arg(long)]
        storage_url: Option<String>,
    },
    /// Write a synthetic dataset (realistic votes over the real small municipalities) through
    /// the server's Parquet writer, for measuring SQL at scale.
    Generate {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// How many votes in all.
        #[arg(long, default_value_t = 100_000_000)]
        votes: u64,
        /// How many days, ending with --end.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// The last day (YYYY-MM-DD) [default: yesterday].
        #[arg(long)]
        end: Option<chrono::NaiveDate>,
        /// Random seed: the same seed writes the same votes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write each day as this many flushes of consecutive time slices, as a server flushing
        /// every 24 h / N leaves it (144: a flush every 10 minutes). 1 to 1440.
        #[arg(long, default_value_t = 1)]
        flushes_per_day: u32,
        /// Keep each day's small files instead of compacting the day once it is written (as the
        /// server does once a day is closed).
        #[arg(long)]
        no_compact: bool,
    },
    /// Merge the small files of each day into one, in all three tables (the server does it in
    /// the background every `compaction_interval_ms`; safe while it runs).
    Compact {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// Only this day (YYYY-MM-DD), whatever its number of files [default: every closed day
        /// with two files or more, and today's with 16 or more].
        #[arg(long, conflicts_with = "rewrite")]
        date: Option<chrono::NaiveDate>,
        /// Rewrite every day of the vote table, even a day of one file, with the current
        /// encodings: for files an earlier faccia wrote with byte-stream split timestamps, which
        /// DuckDB 1.4 and Spark 3.x cannot read.
        #[arg(long)]
        rewrite: bool,
    },
    /// Move the tables of a data directory into object storage (`--to s3://bucket/prefix`, with
    /// the AWS_* environment): copies every table file and log entry, then records the URL in
    /// the data directory, so that the next `faccia serve` (with `[storage] url` set to it) and
    /// every command use the bucket. Stop the server first. Resumable; the local copies stay.
    Migrate {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// The object store URL to move the tables to.
        #[arg(long)]
        to: String,
    },
    /// Remove whole days older than a number of days from all three tables (one commit per
    /// table); the files are deleted by the next vacuum, after a one-hour grace period.
    Retention {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// Keep this many days before today (in Italy); older days go.
        #[arg(long)]
        older_than: u32,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the monthly bulletin of a month: an HTML page (printable, charts inline), its tables
    /// as CSV for Excel and as one XLSX workbook, and the bonus settlement per supplier.
    Bulletin {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// The month, YYYY-MM.
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
        /// Only this region (its name as in data/comuni.csv, e.g. Piemonte).
        #[arg(long, value_name = "NAME", conflicts_with = "municipality")]
        region: Option<String>,
        /// Only this municipality (six-digit ISTAT code) and the unions it belongs to.
        #[arg(long, value_name = "CODE")]
        municipality: Option<String>,
        /// The page's language.
        #[arg(long, value_enum, default_value_t = crate::tools::bulletin::Lang::It)]
        lang: crate::tools::bulletin::Lang,
        /// The directory the files are written to (created if absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Start a server on a temporary directory, run simulated terminals across small
    /// municipalities, stop the server and print the per-service satisfaction index.
    Demo {
        /// Keep the data here instead of a temporary directory.
        #[arg(long, short = 'd')]
        data_dir: Option<PathBuf>,
        /// How long the terminals send votes.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Number of simulated terminals.
        #[arg(long, default_value_t = 300)]
        terminals: usize,
        /// After the run, serve the data again (HTTP on the same address: the dashboard) until
        /// Ctrl-C, and print the analyst token to log in with.
        #[arg(long)]
        keep_serving: bool,
    },
}

/// Clock faults of the simulated terminals (`faccia terminal`, `faccia bench`): what the server
/// does with the votes of a terminal whose clock is wrong.
#[derive(Debug, Clone, Args)]
pub struct ClockFaultArgs {
    /// Run each terminal's clock this many seconds ahead of the real one (negative: behind).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_skew_s: i64,
    /// This many seconds after it starts, each terminal's clock jumps to 2000-01-01 00:00 UTC
    /// (a dead clock battery after a power cut) and runs on from there.
    #[arg(long)]
    pub clock_reset_at: Option<u64>,
    /// Each terminal starts with a backlog of one batch of votes cast this many days ago (35: a
    /// terminal offline for five weeks; past the server's 31-day window they are clock faults).
    #[arg(long)]
    pub backlog_days: Option<u32>,
    /// Send the votes with the device's clock as it is: no correction by the server's clock (the
    /// terminal library corrects by default), to show what an uncorrected terminal's faults become.
    #[arg(long)]
    pub no_clock_correction: bool,
}

impl ClockFaultArgs {
    fn faults(&self) -> crate::terminal::simulate::ClockFaults {
        crate::terminal::simulate::ClockFaults {
            skew_ms: self.clock_skew_s.saturating_mul(1000),
            reset_after: self.clock_reset_at.map(Duration::from_secs),
            backlog_age_ms: self.backlog_days.map(|d| i64::from(d) * 86_400_000),
            correction: !self.no_clock_correction,
        }
    }
}

/// The flags of `faccia bench` (also built by the tests and the crash test's load).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Start a server (this executable) on a temporary directory; the default unless --server.
    #[arg(long, conflicts_with = "server")]
    pub spawn: bool,
    /// Configuration file for the spawned server (its `listen` is set by the bench).
    #[arg(long)]
    pub(crate) server_config: Option<PathBuf>,
    /// Data directory of the spawned server [default: a temporary directory, removed after].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A running server's QUIC address (needs --ca and --credentials).
    #[arg(long, requires_all = ["ca", "credentials"])]
    pub server: Option<SocketAddr>,
    /// Name the server's certificate is checked against.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// CA certificate of a running server.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Credentials of a running server's terminals (`faccia terminals add --out`).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Terminals to simulate [default: every small municipality with 1–5 terminals, ~10,300].
    #[arg(long, short = 't')]
    pub terminals: Option<usize>,
    /// Use only the first N small municipalities.
    #[arg(long)]
    pub municipalities: Option<usize>,
    /// Votes per batch.
    #[arg(long, short = 'b', default_value_t = 20)]
    pub batch: usize,
    /// Batches in flight per terminal (closed loop).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Measured seconds.
    #[arg(long, short = 's', default_value_t = 20)]
    pub(crate) seconds: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Open loop at this many votes per second in total (Poisson arrivals); closed loop if absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client UDP sockets the terminals' connections are spread over.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// Handshakes the generator keeps in progress at once.
    #[arg(long, default_value_t = 16)]
    pub connect_concurrency: usize,
    /// Handshakes the generator starts per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Kill the spawned server with SIGKILL this many seconds into the run and restart it.
    #[arg(long, conflicts_with = "server")]
    pub restart_at: Option<u64>,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency percentile plot (SVG).
    #[arg(long, default_value = "faccia-bench-latency.svg")]
    pub plot: PathBuf,
    /// Seed of the simulated votes and the fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated clock faults.
    #[command(flatten)]
    pub clock: ClockFaultArgs,
}

/// `faccia administrations` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdministrationsAction {
    /// Record whether an administration has a digital signature and a certified e-mail (PEC).
    Set {
        /// ISTAT code of the municipality, e.g. 001003.
        municipality: String,
        /// Whether it has a digital signature (yes/no).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        digital_signature: Option<bool>,
        /// Whether it has a certified e-mail box, PEC (yes/no).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        pec: Option<bool>,
    },
    /// List the recorded attributes and the bonus each administration would receive.
    List,
}

/// `faccia tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Create a token: printed once, only its SHA-256 digest is kept (DATA_DIR/tokens.json).
    Add {
        /// What the token sees: everything, region:NAME or region:CODE, municipality:CODE
        /// (six-digit ISTAT code) or union:CODE (a registered union).
        #[arg(long)]
        scope: String,
        /// Who or what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List the tokens: id, scope, creation time, label (never the token).
    List,
    /// Revoke a token: a running server refuses it from its next request.
    Revoke {
        /// The token's id (`faccia tokens list`).
        id: u64,
    },
}

/// `faccia registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryAction {
    /// Import a newer ISTAT list of comuni ("Elenco dei codici e delle denominazioni delle unità
    /// territoriali": Latin-1, ';'-separated, ISTAT's header). A comune missing from it maps
    /// to its successor: a suppression (ES) in --variations, or a new code with its name in its
    /// region (a renumbering). Nothing changes when a check fails.
    Import {
        /// ISTAT's list of comuni (CSV as ISTAT publishes it).
        file: PathBuf,
        /// The edition's date, YYYY-MM-DD (default: from the file name, e.g. istat20260101.csv).
        #[arg(long)]
        edition: Option<String>,
        /// ISTAT's "Variazioni amministrative e territoriali dei comuni" (CSV as ISTAT publishes
        /// it): its suppressions (ES) name the comune each suppressed one merged into.
        #[arg(long)]
        variations: Option<PathBuf>,
    },
    /// List the editions of the list of comuni the data directory went through.
    List,
    /// List the codes no longer current and their successors.
    Successors,
}

/// `faccia unions` subcommands.
#[derive(Debug, Subcommand)]
pub enum UnionsAction {
    /// Register a union (or update the one with this code): its members, and what the bonus
    /// rule needs. Eligible when at least half of the members have fewer than 5,000 inhabitants.
    Add {
        /// The union's code (its IPA code, say): 1 to 32 of A-Z, a-z, 0-9, _ and -.
        #[arg(long)]
        code: String,
        /// The union's name.
        #[arg(long)]
        name: String,
        /// ISTAT codes of the member comuni, comma-separated (at least two).
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        members: Vec<String>,
        /// Whether the union has a digital signature (yes/no).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        digital_signature: Option<bool>,
        /// Whether the union has a certified e-mail box, PEC (yes/no).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        pec: Option<bool>,
    },
    /// List the unions, their members, the 50 % rule and the bonus.
    List,
}

/// How a terminal was bought on the public e-marketplace (MePA), for the bonus settlement.
#[derive(Debug, Args)]
pub struct PurchaseArgs {
    /// The supplier that sold the terminal or kit, as on its invoice.
    #[arg(long, value_name = "NAME")]
    pub supplier: Option<String>,
    /// The marketplace order: ODA:NUMBER (direct order) or RdO:NUMBER (request for quotation).
    #[arg(long, value_name = "KIND:NUMBER")]
    pub order: Option<String>,
    /// The purchase date, YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub bought: Option<String>,
}

impl PurchaseArgs {
    fn purchase(&self) -> anyhow::Result<registry::Purchase> {
        let today = crate::storage::buffer::partition_date(crate::clock::now_ms());
        Ok(registry::Purchase::parse(self.supplier.as_deref(), self.order.as_deref(), self.bought.as_deref(), today)?)
    }

    fn is_empty(&self) -> bool {
        self.supplier.is_none() && self.order.is_none() && self.bought.is_none()
    }
}

/// `faccia terminals` subcommands.
#[derive(Debug, Subcommand)]
pub enum TerminalsAction {
    /// Register terminals for a municipality and print their credentials (shown only once).
    Add {
        /// ISTAT code of the municipality, e.g. 001003.
        #[arg(long, short = 'm')]
        municipality: String,
        /// How many terminals to add.
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u32,
        /// Free text kept with the terminal (office, room).
        #[arg(long, default_value = "")]
        label: String,
        /// Register the terminals to this union of comuni (`faccia unions add`): they stand in
        /// --municipality, which must be one of its members, and belong to the union.
        #[arg(long, value_name = "CODE")]
        union: Option<String>,
        /// Also write the credentials to this CSV file (for `faccia terminal --credentials`).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// How the terminals were bought (the bonus settlement of `faccia bulletin`).
        #[command(flatten)]
        purchase: PurchaseArgs,
    },
    /// Record how a terminal was bought: supplier, order, date (the flags given replace the
    /// recorded ones).
    Set {
        /// Terminal id.
        id: u32,
        /// The purchase's fields to record.
        #[command(flatten)]
        purchase: PurchaseArgs,
    },
    /// List registered terminals.
    List,
    /// Revoke a terminal: its connections are refused from now on.
    Revoke {
        /// Terminal id.
        id: u32,
    },
}

/// The parts of a cluster.
#[derive(Debug, Subcommand)]
pub enum ClusterRole {
    /// The scheduler: takes queries (`faccia sql --cluster`, `faccia serve` with `[cluster]
    /// scheduler`), splits them into stages and hands tasks to executors. Prints its address.
    Scheduler {
        /// TCP address for gRPC and `GET /readyz` (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// `/readyz` answers 200 once this many executors are registered.
        #[arg(long, default_value_t = 1)]
        min_executors: usize,
        /// Seconds after which a silent executor is dropped and its tasks run elsewhere.
        #[arg(long, default_value_t = 60)]
        executor_timeout: u64,
    },
    /// An executor: pulls tasks from the scheduler, reads the tables' files (local, or S3 with
    /// the `AWS_*` environment) and serves its results over Arrow Flight.
    Executor {
        /// The scheduler's address.
        #[arg(long, value_name = "HOST:PORT")]
        scheduler: String,
        /// TCP address of the executor's Arrow Flight server, advertised to the cluster as is
        /// (port 0: a free port, chosen at start).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: SocketAddr,
        /// Tasks run at once (0: one per core).
        #[arg(long, default_value_t = 0)]
        slots: usize,
        /// Directory for shuffle files and spills [default: a directory in the system's temp dir].
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// The executor's memory pool in MiB [default: 70 % of the host's memory].
        #[arg(long, value_name = "MIB")]
        memory_mib: Option<u64>,
    },
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command fails with; `main` prints the chain.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { data, listen, flight_listen, http_listen, analyst_token, config } => {
            let mut config = match config {
                Some(path) => Config::read(&path)?,
                None => Config::default(),
            };
            config.listen = listen.unwrap_or(config.listen);
            config.flight_listen = flight_listen.or(config.flight_listen);
            config.http_listen = http_listen.or(config.http_listen);
            config.analyst_tokens.extend(analyst_token);
            serve(&data.data_dir, config).await
        }
        Command::Sql { data, output, repeat, cluster, partitions, cluster_timeout_s, query } => {
            let cluster =
                crate::cluster::ClusterConfig { scheduler: cluster, partitions, query_timeout_s: cluster_timeout_s, ..Default::default() };
            sql(&data.data_dir, &output, repeat, &cluster, query.as_deref()).await
        }
        Command::Cluster { role } => cluster(role).await,
        Command::Terminals { data, action } => terminals(&data.data_dir, action),
        Command::Administrations { data, action } => administrations(&data.data_dir, action),
        Command::Unions { data, action } => unions(&data.data_dir, action),
        Command::Tokens { data, action } => tokens(&data.data_dir, action),
        Command::Registry { data, action } => registry_command(&data.data_dir, action),
        Command::Terminal {
            server,
            server_name,
            ca,
            credentials,
            seconds,
            batch_votes,
            think_ms,
            reply_timeout_ms,
            idle_timeout_ms,
            clock,
        } => {
            let credentials = Credential::read_csv(&credentials)?;
            let (first, others) = server.split_first().expect("clap gives at least one address");
            let mut target = ServerTarget::new(*first, &server_name, &ca)?.with_other_addresses(others.iter().copied());
            target.set_idle_timeout(Duration::from_millis(idle_timeout_ms.max(1)));
            let plan = FleetPlan {
                duration: Duration::from_secs(seconds),
                reply_timeout: Duration::from_millis(reply_timeout_ms.max(1)),
                batch_votes_max: batch_votes,
                think_time: Duration::from_millis(think_ms),
                clock: clock.faults(),
                ..FleetPlan::default()
            };
            let report = run_fleet(credentials, target, plan).await?;
            println!(
                "{} terminals: {} votes in {} batches acknowledged ({} duplicates), {} batches rejected, {} undelivered",
                report.terminals,
                report.votes(),
                report.batches_acknowledged.load(std::sync::atomic::Ordering::Relaxed),
                report.batches_duplicate.load(std::sync::atomic::Ordering::Relaxed),
                report.batches_rejected.load(std::sync::atomic::Ordering::Relaxed),
                report.batches_undelivered.load(std::sync::atomic::Ordering::Relaxed),
            );
            Ok(())
        }
        Command::Bulletin { data, month, region, municipality, lang, out } => {
            bulletin(&data.data_dir, &month, region.as_deref(), municipality.as_deref(), lang, out).await
        }
        Command::Demo { data_dir, seconds, terminals, keep_serving } => {
            crate::tools::demo::run(data_dir, seconds, terminals, keep_serving).await
        }
        Command::Bench(args) => bench(args).await,
        Command::Crashtest { data_dir, rounds, terminals, min_ms, max_ms, seed, nodes, storage_url } => {
            let seed = seed.unwrap_or_else(rand::random);
            let plan = crate::tools::crashtest::Plan {
                server_exe: std::env::current_exe().context("locating the faccia executable")?,
                data_dir: PathBuf::new(),
                rounds,
                terminals,
                run_ms: (min_ms, max_ms),
                batch_votes_max: 50,
                in_flight_max: 4,
                seed,
                nodes,
                storage_url,
            };
            crashtest(data_dir, plan).await
        }
        Command::Generate { data, votes, days, end, seed, flushes_per_day, no_compact } => {
            let yesterday = || crate::storage::buffer::partition_date(crate::clock::now_ms()) - chrono::Days::new(1);
            let end = end.unwrap_or_else(yesterday);
            let plan = crate::tools::generate::GeneratePlan { votes, days, end, seed, flushes_per_day, compact: !no_compact };
            generate(&data.data_dir, &plan).await
        }
        Command::Compact { data, date, rewrite } => compact(&data.data_dir, date, rewrite).await,
        Command::Migrate { data, to } => migrate(&data.data_dir, &to).await,
        Command::Retention { data, older_than, dry_run } => retention(&data.data_dir, older_than, dry_run).await,
    }
}

/// The tables of an existing data directory, opened for maintenance (taken over first if a
/// release before the table format wrote it).
async fn maintained(data_dir: &Path) -> anyhow::Result<(crate::storage::dataset::Dataset, crate::storage::table::Tables)> {
    if !data_dir.join("node-id").is_file() && !data_dir.join(crate::storage::dataset::VOTES_DIR).is_dir() {
        bail!("{} is not a faccia data directory (no node-id, no votes/); give one with --data-dir", data_dir.display());
    }
    let node = crate::storage::engine::node_id(data_dir).context("reading the node id")?;
    let location = crate::storage::location::Location::of_data_dir(data_dir)?;
    let dataset = crate::storage::dataset::Dataset::new(location, &node)?;
    let watermark = crate::storage::checkpoint::Checkpoint::read(data_dir)?.watermark;
    let tables = crate::storage::engine::take_over(&dataset, watermark).await.context("opening the tables")?;
    Ok((dataset, tables))
}

async fn migrate(data_dir: &Path, to: &str) -> anyhow::Result<()> {
    use crate::storage::location::{Location, STORAGE_URL_FILE};
    let record = data_dir.join(STORAGE_URL_FILE);
    if let Ok(recorded) = std::fs::read_to_string(&record) {
        bail!("the tables of {} are already at {} ({})", data_dir.display(), recorded.trim(), record.display());
    }
    // Taken over first when a release before the table format wrote the directory.
    let (dataset, tables) = maintained(data_dir).await?;
    let destination = Location::parse(to)?;
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes}, {elapsed}").expect("a valid template"),
    );
    bar.set_message("copying the tables");
    let dirs = crate::storage::table::Table::ALL.map(crate::storage::table::Table::dir);
    let report = crate::storage::location::migrate(&dataset.location, &destination, &dirs, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    for (table, here) in crate::storage::table::Table::ALL.into_iter().zip(tables.versions()) {
        let there = crate::storage::table::open(&destination, table).await?.version();
        if there != Some(here) {
            bail!("{} at {to} is at version {there:?}, the local table at {here}: run the migration again", table.dir());
        }
    }
    crate::fsutil::write_atomic(&record, format!("{to}\n").as_bytes())
        .with_context(|| format!("recording the URL in {}", record.display()))?;
    println!(
        "copied {} objects ({} bytes; {} already there) to {to} in {:.1} s; {} now uses it: set [storage] url = \"{to}\" for faccia serve. \
         The local copies under {} can be deleted.",
        report.objects,
        report.bytes,
        report.already_there,
        started.elapsed().as_secs_f64(),
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

async fn compact(data_dir: &Path, date: Option<chrono::NaiveDate>, rewrite: bool) -> anyhow::Result<()> {
    use crate::storage::compaction::{CompactScope, compact};
    let (dataset, mut tables) = maintained(data_dir).await?;
    let scope = match date {
        Some(day) => CompactScope::Day(day),
        None if rewrite => CompactScope::Rewrite,
        None => CompactScope::Due {
            today: crate::storage::buffer::partition_date(crate::clock::now_ms()),
            today_files_max: crate::limits::StorageLimits::default().today_files_max,
        },
    };
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} table-days, {elapsed}").expect("a valid template"),
    );
    bar.set_message("compacting");
    let report = compact(&dataset, &mut tables, scope, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    let vacuumed = crate::storage::compaction::vacuum(&mut tables, crate::storage::compaction::Grace::Period).await?;
    println!(
        "compacted {} table-days: {} files into {}, {} → {} bytes, in {:.1} s{}; {vacuumed} files vacuumed",
        report.days,
        report.files_removed,
        report.files_added,
        report.bytes_before,
        report.bytes_after,
        started.elapsed().as_secs_f64(),
        if report.conflicts > 0 {
            format!(" ({} days skipped: another commit changed them first)", report.conflicts)
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn retention(data_dir: &Path, older_than: u32, dry_run: bool) -> anyhow::Result<()> {
    let (_, mut tables) = maintained(data_dir).await?;
    let cutoff = crate::storage::buffer::partition_date(crate::clock::now_ms()) - chrono::Days::new(u64::from(older_than));
    let report = crate::storage::compaction::apply_retention(&mut tables, cutoff, dry_run).await?;
    let days = match (report.days.first(), report.days.last()) {
        (Some(first), Some(last)) => format!("{} days ({first} to {last})", report.days.len()),
        _ => "no day".to_string(),
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    println!("{verb} {days} before {cutoff}: {} votes, {} files, {} bytes", report.votes, report.files, report.bytes);
    if !dry_run && report.files > 0 {
        println!("the files are deleted by the next vacuum after a one-hour grace period (faccia compact, or the server's maintenance)");
    }
    Ok(())
}

async fn serve(data_dir: &Path, config: Config) -> anyhow::Result<()> {
    let signals = crate::server::StopSignals::install()?;
    let server = Server::start(data_dir.to_path_buf(), config).await?;
    if let Some(ca) = &server.ca_path {
        tracing::info!(ca = %ca.display(), "development CA (give it to terminals with --ca)");
    }
    server.run_until_signal(signals).await
}

async fn generate(data_dir: &Path, plan: &crate::tools::generate::GeneratePlan) -> anyhow::Result<()> {
    if plan.days == 0 {
        bail!("--days must be at least 1");
    }
    let most = crate::tools::generate::FLUSHES_PER_DAY_MAX;
    if !(1..=most).contains(&plan.flushes_per_day) {
        bail!("--flushes-per-day is {}; it must be 1 to {most} (one flush a minute)", plan.flushes_per_day);
    }
    let started = Instant::now();
    let report = crate::tools::generate::generate(data_dir, plan, |day, so_far| {
        eprintln!(
            "{day}: {} votes, {} vote files, {:.2} bytes per vote so far (all three tables)",
            so_far.votes,
            so_far.files,
            so_far.bytes as f64 / so_far.votes.max(1) as f64
        );
    })
    .await?;
    println!(
        "generated {} votes in {} vote files, {} bytes in the three tables ({:.2} bytes per vote) in {:.1} s",
        report.votes,
        report.files,
        report.bytes,
        report.bytes as f64 / report.votes.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn cluster(role: ClusterRole) -> anyhow::Result<()> {
    match role {
        ClusterRole::Scheduler { bind, min_executors, executor_timeout } => {
            let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
            let address = listener.local_addr()?;
            // Scripts and tests read the address (with port 0, the port chosen) from here.
            println!("scheduler listening on {address}");
            std::io::stdout().flush()?;
            let options =
                crate::cluster::scheduler::SchedulerOptions { min_executors, executor_timeout: Duration::from_secs(executor_timeout) };
            crate::cluster::scheduler::serve(listener, options).await
        }
        ClusterRole::Executor { scheduler, bind, slots, work_dir, memory_mib } => {
            let scheduler = tokio::net::lookup_host(&scheduler)
                .await
                .with_context(|| format!("resolving the scheduler's address {scheduler}"))?
                .next()
                .with_context(|| format!("{scheduler} has no address"))?;
            let flight = if bind.port() == 0 {
                // Ballista advertises the port it is given: take a free one now.
                std::net::TcpListener::bind(bind).and_then(|l| l.local_addr()).with_context(|| format!("binding {bind}"))?
            } else {
                bind
            };
            let work_dir = work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("faccia-executor-{}", flight.port())));
            println!("executor flight on {flight}, scheduler {scheduler}, work dir {}", work_dir.display());
            std::io::stdout().flush()?;
            let options = crate::cluster::executor::ExecutorOptions {
                scheduler,
                flight,
                slots,
                work_dir,
                memory_bytes: memory_mib.map(|m| m * 1024 * 1024),
            };
            crate::cluster::executor::run(options).await
        }
    }
}

async fn sql(
    data_dir: &Path,
    output: &SqlOutput,
    repeat: u32,
    cluster: &crate::cluster::ClusterConfig,
    query: Option<&str>,
) -> anyhow::Result<()> {
    let csv = output.csv()?;
    let format = output.format;
    if query.is_none() && (output.out.is_some() || format.is_binary()) {
        bail!("--out and --format {} write one query's result: give the query (the interactive prompt prints text)", format_name(format));
    }
    if format.is_binary() && output.out.is_none() && std::io::stdout().is_terminal() {
        bail!("--format {} writes a binary file: give --out FILE (or redirect standard output to a file)", format_name(format));
    }
    if !data_dir.is_dir() {
        bail!("data directory {} does not exist (give one with --data-dir)", data_dir.display());
    }
    let ctx = query::context_for(data_dir, cluster.runs()).await.context("opening the dataset")?;
    let cluster = crate::cluster::Cluster::from_config(cluster);
    let Some(sql) = query else {
        let mut stdout = std::io::stdout().lock();
        repl(&ctx, cluster.as_ref(), format, &mut stdout).await?;
        stdout.flush()?;
        return Ok(());
    };
    let mut timings = Vec::new();
    let mut result = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        // DataFusion's message already holds its causes: print it once.
        result = Some(run_statement(&ctx, cluster.as_ref(), sql).await?);
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (schema, batches) = result.expect("ran at least once");
    match &output.out {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut file = std::io::BufWriter::new(file);
            query::write_output(&schema, &batches, format, csv, &mut file)?;
            file.flush().with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            query::write_output(&schema, &batches, format, csv, &mut stdout)?;
            stdout.flush()?;
        }
    }
    if repeat > 1 {
        let mut sorted = timings.clone();
        sorted.sort_by(f64::total_cmp);
        let runs: Vec<String> = timings.iter().map(|t| format!("{t:.1}")).collect();
        eprintln!("timing_ms min {:.1} median {:.1} runs {}", sorted[0], sorted[sorted.len() / 2], runs.join(" "));
    }
    Ok(())
}

/// Runs one statement here, or on the cluster when there is one.
async fn run_statement(
    ctx: &datafusion::prelude::SessionContext,
    cluster: Option<&crate::cluster::Cluster>,
    sql: &str,
) -> anyhow::Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)> {
    // DataFusion's and the cluster's messages already hold their causes: print them once.
    match cluster {
        Some(cluster) => cluster.run_with_schema(ctx, sql).await.map_err(|e| anyhow::anyhow!("{e}")),
        None => query::run_with_schema(ctx, sql).await.map_err(|e| anyhow::anyhow!("{e}")),
    }
}

async fn repl(
    ctx: &datafusion::prelude::SessionContext,
    cluster: Option<&crate::cluster::Cluster>,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    println!(
        "faccia SQL — tables: votes, municipalities, services, faces, channels, reasons; view: service_index. End statements with ';', quit with \\q."
    );
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() { "faccia> " } else { "   ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        if statement.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            return Ok(());
        }
        statement.push_str(&line);
        statement.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let _ = editor.add_history_entry(statement.trim());
        let started = Instant::now();
        match run_statement(ctx, cluster, statement.trim().trim_end_matches(';')).await {
            Ok((schema, batches)) => {
                query::write_results(&schema, &batches, format, out)?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                println!("{rows} rows in {:.3} s", started.elapsed().as_secs_f64());
            }
            Err(error) => eprintln!("error: {error}"),
        }
        statement.clear();
    }
}

fn administrations(data_dir: &Path, action: AdministrationsAction) -> anyhow::Result<()> {
    let catalog = registry::Catalog::for_data_dir(data_dir)?;
    let yes_no = |v: Option<bool>| v.map_or("?", |v| if v { "yes" } else { "no" });
    let print = |a: &registry::AdministrationRecord| {
        let m = IstatCode::parse(&a.municipality).and_then(|c| catalog.municipality(c));
        let name = m.map_or("?", |m| m.name.as_str());
        let bonus = registry::bonus_eur(m.is_some_and(|m| m.eligible()), a.digital_signature, a.pec)
            .map_or_else(|| "not eligible".to_string(), |b| format!("{b} €"));
        println!("{:<6}  {:<28}  {:<17}  {:<3}  {bonus}", a.municipality, name, yes_no(a.digital_signature), yes_no(a.pec));
    };
    match action {
        AdministrationsAction::Set { municipality, digital_signature, pec } => {
            let code = IstatCode::parse(&municipality)
                .with_context(|| format!("{municipality:?} is not an ISTAT code (six digits, e.g. 001003)"))?;
            print(&registry::set_administration(data_dir, code, digital_signature, pec)?);
        }
        AdministrationsAction::List => {
            println!("{:<6}  {:<28}  {:<17}  {:<3}  bonus", "istat", "municipality", "digital signature", "pec");
            for a in registry::list_administrations(data_dir)? {
                print(&a);
            }
        }
    }
    Ok(())
}

fn tokens(data_dir: &Path, action: TokensAction) -> anyhow::Result<()> {
    use crate::analysts::tokens::{TokenRecord, add_token, list_tokens, revoke_token};
    let print = |t: &TokenRecord| {
        let created = chrono::DateTime::from_timestamp_millis(t.created_ms)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        println!("{:>4}  {:<32}  {created}  {}", t.id, t.scope, t.label);
    };
    match action {
        TokensAction::Add { scope, label } => {
            let scope = crate::query::scope::Scope::parse(&scope)?;
            let (record, token) = add_token(data_dir, &scope, &label)?;
            print(&record);
            println!("{token}");
            eprintln!("the token is shown this once (only its digest is kept): give it to the client as `authorization: Bearer TOKEN`");
        }
        TokensAction::List => {
            for t in list_tokens(data_dir)? {
                print(&t);
            }
        }
        TokensAction::Revoke { id } => print(&revoke_token(data_dir, id)?),
    }
    Ok(())
}

fn registry_command(data_dir: &Path, action: RegistryAction) -> anyhow::Result<()> {
    match action {
        RegistryAction::Import { file, edition, variations } => {
            let request = registry::ImportRequest {
                list: &file,
                edition: edition.as_deref(),
                variations: variations.as_deref(),
                now_ms: crate::clock::now_ms(),
            };
            let report = registry::import(data_dir, &request, &mut |step| eprintln!("{step}"))?;
            let e = &report.edition;
            eprintln!(
                "edition {} replaces {}: {} comuni; {} suppressed by a merger, {} renumbered, {} renamed, {} new codes",
                e.edition, report.previous, e.municipalities, e.suppressed, e.renumbered, e.renamed, e.new
            );
            for s in &report.successions {
                eprintln!("  {} {:<28} → {} ({}, {})", s.municipality, s.name, s.successor, s.kind.name(), s.date);
            }
            eprintln!("written to {}", registry::state_path(data_dir).display());
        }
        RegistryAction::List => {
            let catalog = registry::Catalog::for_data_dir(data_dir)?;
            println!(
                "{:<10}  {:<16}  {:>6}  {:>10}  {:>10}  {:>7}  {:>5}  source",
                "edition", "imported", "comuni", "suppressed", "renumbered", "renamed", "new"
            );
            for e in &catalog.editions {
                let imported = e.imported_ms.and_then(chrono::DateTime::from_timestamp_millis).map_or_else(
                    || "built in".to_string(),
                    |t| t.with_timezone(&chrono_tz::Europe::Rome).format("%Y-%m-%d %H:%M").to_string(),
                );
                println!(
                    "{:<10}  {:<16}  {:>6}  {:>10}  {:>10}  {:>7}  {:>5}  {}",
                    e.edition, imported, e.municipalities, e.suppressed, e.renumbered, e.renamed, e.new, e.source
                );
            }
        }
        RegistryAction::Successors => {
            let catalog = registry::Catalog::for_data_dir(data_dir)?;
            println!("{:<6}  {:<28}  {:<9}  {:<6}  {:<11}  {:<10}  edition", "istat", "name", "successor", "now", "kind", "date");
            for s in &catalog.successors {
                let now = catalog.current(s.municipality).map_or_else(|| "?".to_string(), |c| c.to_string());
                println!(
                    "{:<6}  {:<28}  {:<9}  {:<6}  {:<11}  {:<10}  {}",
                    s.municipality,
                    s.name,
                    s.successor,
                    now,
                    s.kind.name(),
                    s.date,
                    s.edition
                );
            }
        }
    }
    Ok(())
}

fn unions(data_dir: &Path, action: UnionsAction) -> anyhow::Result<()> {
    let catalog = registry::Catalog::for_data_dir(data_dir)?;
    let yes_no = |v: Option<bool>| v.map_or("?", |v| if v { "yes" } else { "no" });
    let print = |u: &registry::UnionRecord| {
        let rule = registry::union_eligibility(&catalog, &u.members);
        let bonus =
            registry::bonus_eur(rule.eligible, u.digital_signature, u.pec).map_or_else(|| "not eligible".to_string(), |b| format!("{b} €"));
        println!(
            "{:<16}  {:<36}  {}/{} small  signature {}  pec {}  {bonus}\n{:<16}  members: {}",
            u.code,
            u.name,
            rule.small_members,
            rule.members,
            yes_no(u.digital_signature),
            yes_no(u.pec),
            "",
            u.members.join(", ")
        );
    };
    match action {
        UnionsAction::Add { code, name, members, digital_signature, pec } => {
            let members = members
                .iter()
                .map(|m| IstatCode::parse(m).with_context(|| format!("--members: {m:?} is not an ISTAT code (six digits, e.g. 001003)")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print(&registry::add_union(data_dir, &code, &name, &members, digital_signature, pec)?);
        }
        UnionsAction::List => {
            for u in registry::list_unions(data_dir)? {
                print(&u);
            }
        }
    }
    Ok(())
}

fn terminals(data_dir: &Path, action: TerminalsAction) -> anyhow::Result<()> {
    match action {
        TerminalsAction::Add { municipality, count, label, union, out, purchase } => {
            let code = IstatCode::parse(&municipality)
                .with_context(|| format!("--municipality {municipality:?} is not an ISTAT code (six digits, e.g. 001003)"))?;
            let purchase = purchase.purchase()?;
            let credentials = registry::add_bought_terminals(data_dir, code, union.as_deref(), count, &label, &purchase)?;
            let catalog = registry::Catalog::for_data_dir(data_dir)?;
            let name = catalog.municipality(code).map(|m| m.name.as_str()).unwrap_or("?");
            let of = union.map(|u| format!(" of union {u}")).unwrap_or_default();
            eprintln!("added {} terminal(s){of} for {code} {name}; the secrets are shown only now", credentials.len());
            registry::write_credentials_csv(std::io::stdout().lock(), &credentials)?;
            if let Some(path) = out {
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                registry::write_credentials_csv(file, &credentials)?;
            }
            Ok(())
        }
        TerminalsAction::List => {
            let catalog = registry::Catalog::for_data_dir(data_dir)?;
            println!(
                "{:>8}  {:<6}  {:<28}  {:<8}  {:<24}  {:<14}  {:<10}  label",
                "terminal", "istat", "municipality", "status", "supplier", "order", "bought"
            );
            for t in registry::list_terminals(data_dir)? {
                let name = IstatCode::parse(&t.municipality).and_then(|c| catalog.municipality(c)).map_or("?", |m| m.name.as_str());
                let status = if t.revoked_ms.is_some() { "revoked" } else { "active" };
                let p = &t.purchase;
                println!(
                    "{:>8}  {:<6}  {:<28}  {:<8}  {:<24}  {:<14}  {:<10}  {}",
                    t.id,
                    t.municipality,
                    name,
                    status,
                    p.supplier.as_deref().unwrap_or("-"),
                    p.order().unwrap_or_else(|| "-".into()),
                    p.bought.map_or_else(|| "-".into(), |d| d.to_string()),
                    t.label
                );
            }
            Ok(())
        }
        TerminalsAction::Set { id, purchase } => {
            if purchase.is_empty() {
                bail!("give what to record: --supplier NAME, --order ODA:NUMBER or RdO:NUMBER, --bought YYYY-MM-DD");
            }
            let record = registry::set_purchase(data_dir, id, &purchase.purchase()?)?;
            let p = &record.purchase;
            eprintln!(
                "terminal {id}: supplier {}, order {}, bought {}",
                p.supplier.as_deref().unwrap_or("-"),
                p.order().unwrap_or_else(|| "-".into()),
                p.bought.map_or_else(|| "-".into(), |d| d.to_string())
            );
            Ok(())
        }
        TerminalsAction::Revoke { id } => {
            registry::revoke_terminal(data_dir, id)?;
            eprintln!("terminal {id} revoked");
            Ok(())
        }
    }
}

async fn bulletin(
    data_dir: &Path,
    month: &str,
    region: Option<&str>,
    municipality: Option<&str>,
    lang: crate::tools::bulletin::Lang,
    out: PathBuf,
) -> anyhow::Result<()> {
    use crate::tools::bulletin;
    let month = bulletin::parse_month(month)?;
    let scope = bulletin::Scope::parse(region, municipality)?;
    if !data_dir.is_dir() {
        bail!("data directory {} does not exist (give one with --data-dir)", data_dir.display());
    }
    let plan = bulletin::BulletinPlan { month, scope, lang, out };
    let bar = indicatif::ProgressBar::new(bulletin::STEPS)
        .with_style(indicatif::ProgressStyle::with_template("bulletin {msg} [{bar:30}] {pos}/{len}, {elapsed}").expect("a valid template"));
    let computed = bulletin::compute(data_dir, &plan, |step| {
        bar.set_message(step.to_string());
        bar.inc(1);
    })
    .await?;
    bar.set_message("writing");
    // When, in Italy's time (the offices'), as the page writes dates.
    let now = chrono::DateTime::from_timestamp_millis(crate::clock::now_ms()).expect("a time").with_timezone(&chrono_tz::Europe::Rome);
    let generated = match lang {
        bulletin::Lang::It => now.format("%d/%m/%Y %H:%M").to_string(),
        bulletin::Lang::En => now.format("%Y-%m-%d %H:%M").to_string(),
    };
    let page = bulletin::html::render(&computed, &generated)?;
    let written = bulletin::write(&computed, &page)?;
    bar.inc(1);
    bar.finish_and_clear();
    for (path, rows) in written {
        match rows {
            Some(rows) => println!("wrote {} ({rows} rows)", path.display()),
            None => println!("wrote {}", path.display()),
        }
    }
    Ok(())
}

async fn crashtest(data_dir: Option<PathBuf>, mut plan: crate::tools::crashtest::Plan) -> anyhow::Result<()> {
    let temporary = tempfile::Builder::new().prefix("faccia-crashtest-").tempdir()?;
    plan.data_dir = data_dir.unwrap_or_else(|| temporary.path().to_path_buf());
    let (rounds, terminals, seed, nodes) = (plan.rounds, plan.terminals, plan.seed, plan.nodes);
    eprintln!("crash test: {rounds} rounds of kill -9, {terminals} terminals, {nodes} node(s), seed {seed}");
    let started = Instant::now();
    let report = crate::tools::crashtest::run(&plan).await?;
    println!("rounds                 {:>12}", report.rounds);
    println!("votes acknowledged     {:>12}", report.votes_acknowledged);
    println!("batches acknowledged   {:>12}  ({} as duplicates of a stored copy)", report.batches_acknowledged, report.batches_duplicate);
    println!("votes found by SQL     {:>12}", report.votes_found);
    println!("lost                   {:>12}", report.lost);
    println!("duplicated             {:>12}", report.duplicated);
    println!("unexpected             {:>12}", report.unexpected);
    println!("compactions committed  {:>12}  ({} rounds stopped inside one)", report.compactions, report.compaction_crashes);
    if nodes > 1 {
        println!("log crashes            {:>12}  (a node stopped after an fsync it never acknowledged)", report.log_crashes);
    }
    println!("seed {seed}, {:.0} s", started.elapsed().as_secs_f64());
    if !report.is_clean() {
        bail!("acknowledged votes were lost or doubled (seed {seed})");
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let target = match (args.server, args.ca, args.credentials) {
        (Some(addr), Some(ca), Some(credentials)) => {
            crate::tools::bench::Target::Server { addr, server_name: args.server_name, ca, credentials }
        }
        _ => crate::tools::bench::Target::Spawn {
            exe: std::env::current_exe().context("locating the faccia executable")?,
            config: args.server_config,
            data_dir: args.data_dir,
        },
    };
    let plan = crate::tools::bench::Plan {
        target,
        terminals: args.terminals,
        municipalities: args.municipalities,
        batch_votes: args.batch.max(1),
        in_flight: args.in_flight.max(1),
        duration: Duration::from_secs(args.seconds.max(1)),
        warmup: Duration::from_secs(args.warmup),
        rate: args.rate,
        endpoints: args.endpoints,
        connect_concurrency: args.connect_concurrency,
        connect_rate: args.connect_rate,
        restart_at: args.restart_at.map(Duration::from_secs),
        json: args.json.clone(),
        plot: Some(args.plot.clone()),
        seed: args.seed,
        clock: args.clock.faults(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = crate::tools::bench::run(&plan).await?;
    print!("{}", crate::tools::bench::render(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    crate::tools::bench::plot(&report, &args.plot).with_context(|| format!("writing {}", args.plot.display()))?;
    println!("latency plot written to {}", args.plot.display());
    if report.cross_check.starts_with("MISMATCH") {
        bail!("the cross-check failed: {}", report.cross_check);
    }
    Ok(())
}
