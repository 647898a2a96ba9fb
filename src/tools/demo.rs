//! `faccia demo`: the whole path in one command.
//!
//! Starts a server (on a temporary directory unless one is given), registers simulated
//! terminals across real small municipalities, lets them vote for a few seconds, stops the
//! server cleanly (everything flushed to Parquet), then answers the per-service satisfaction
//! index with SQL from the Parquet files and checks the count against what was acknowledged.
//! The server serves HTTP on a loopback port while it runs, so the dashboard can be looked at:
//! the last line printed is its address (`dashboard: http://127.0.0.1:PORT/`); with
//! `--keep-serving` the server is started again on the same data and address after the run and
//! serves until Ctrl-C, and the analyst token to log in with is printed.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::limits::Limits;
use crate::model::IstatCode;
use crate::query::{self, Format};
use crate::registry::{self, Catalog};
use crate::server::Server;
use crate::terminal::client::ServerTarget;
use crate::terminal::simulate::{FleetPlan, run_fleet};

/// Picks `terminals` terminal slots over random small municipalities, 1–3 per municipality.
fn pick_municipalities(terminals: usize, seed: u64) -> Vec<IstatCode> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let eligible: Vec<IstatCode> = Catalog::builtin().eligible().map(|m| m.code).collect();
    let mut slots = Vec::with_capacity(terminals);
    while slots.len() < terminals {
        let code = *eligible.choose(&mut rng).expect("the registry has small municipalities");
        let count = rng.random_range(1..=3).min(terminals - slots.len());
        slots.extend(std::iter::repeat_n(code, count));
    }
    slots
}

/// Runs the demo and prints the index.
///
/// # Errors
/// Any failure of the server, the terminals or SQL; a count that does not match what was
/// acknowledged is an error too.
pub(crate) async fn run(data_dir: Option<PathBuf>, seconds: u64, terminals: usize, keep_serving: bool) -> anyhow::Result<()> {
    let temporary = match &data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("faccia-demo-").tempdir().context("creating a temporary directory")?),
    };
    let dir = data_dir.clone().unwrap_or_else(|| temporary.as_ref().expect("created above").path().to_path_buf());
    let fresh = !dir.join("checkpoint").exists() && !dir.join("wal").exists();
    let slots = pick_municipalities(terminals, crate::clock::now_ms() as u64);
    let credentials = registry::add_terminals_bulk(&dir, &slots, "demo")?;
    let municipalities: std::collections::HashSet<_> = slots.iter().collect();

    // The demo answers with SQL itself; HTTP serves the dashboard (no Flight SQL). Simulated terminals send a
    // compressed day of votes in seconds (see `terminal::simulate`): lift the per-terminal vote budget,
    // which is sized for people pressing buttons.
    let limits = Limits { votes_per_terminal_per_minute_max: u32::MAX, ..Limits::default() };
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        flight_listen: None,
        http_listen: Some("127.0.0.1:0".parse().expect("valid address")),
        limits,
        ..Config::default()
    };
    let server = Server::start(dir.clone(), config.clone()).await?;
    let http = server.http_addr.context("the demo serves HTTP")?;
    let ca = server.ca_path.clone().expect("the demo uses the development certificate");
    println!(
        "faccia demo: {} terminals in {} small municipalities send votes for {seconds} s to quic://{}",
        credentials.len(),
        municipalities.len(),
        server.ingest_addr
    );
    let target = ServerTarget::new(server.ingest_addr, "localhost", &ca)?;
    let started = Instant::now();
    let plan = FleetPlan { duration: Duration::from_secs(seconds), ..FleetPlan::default() };
    let report = run_fleet(credentials, target, plan).await?;
    let elapsed = started.elapsed().as_secs_f64();
    server.stop().await;

    let ctx = query::context(&dir).await?;
    let (schema, index) = query::run_with_schema(&ctx, "SELECT * FROM service_index ORDER BY wilson_low_pct DESC, service").await?;
    println!("\nPer-service satisfaction index (SQL over the Parquet files, ranked by the Wilson lower bound):");
    query::write_results(&schema, &index, Format::Table, &mut std::io::stdout().lock())?;
    let counted = query::run(&ctx, "SELECT count(*) FROM votes").await?;
    let in_parquet = counted[0].column(0).as_primitive::<Int64Type>().value(0) as u64;
    let acknowledged = report.votes();
    println!(
        "votes acknowledged: {acknowledged} ({:.0}/s over {elapsed:.1} s); votes in Parquet: {in_parquet}; batches rejected: {}; undelivered: {}",
        acknowledged as f64 / elapsed,
        report.batches_rejected.load(Ordering::Relaxed),
        report.batches_undelivered.load(Ordering::Relaxed),
    );
    match &data_dir {
        Some(dir) => println!("data kept in {}", dir.display()),
        None => println!("(temporary data removed; pass --data-dir DIR to keep the Parquet files)"),
    }
    if fresh && in_parquet != acknowledged {
        bail!("the dataset holds {in_parquet} votes but {acknowledged} were acknowledged");
    }
    if !keep_serving {
        println!("dashboard: http://{http}/ (it stopped with the demo; `faccia demo --keep-serving` keeps it up)");
        return Ok(());
    }
    // Signals are caught before the server starts again, so Ctrl-C always stops it cleanly.
    let signals = crate::server::StopSignals::install()?;
    let server = Server::start(dir.clone(), Config { http_listen: Some(http), ..config }).await?;
    let token_file = dir.join(crate::analysts::tokens::TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    println!("log in with the analyst token (from {}): {}", token_file.display(), token.trim());
    println!("serving until Ctrl-C");
    println!("dashboard: http://{http}/");
    server.run_until_signal(signals).await
}
