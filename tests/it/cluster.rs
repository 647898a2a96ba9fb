//! Analysts' SQL on a real Apache Ballista cluster: `faccia cluster scheduler` and two
//! `faccia cluster executor`s as processes on loopback, over the Delta tables in a bucket of a
//! real S3-compatible server (moto), with a `faccia serve` node holding votes not yet flushed.
//! Every view and the five analyst queries of `tools/bench_sql.py` are answered single-node
//! and on the cluster (by `faccia sql --cluster` and by the node's HTTP endpoint sending them
//! there), and the answers compared row for row.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faccia::tools::process::ServerProcess;

use crate::common::*;
use crate::crash::free_port;
use crate::objectstore::{S3Server, vote};

const BUCKET: &str = "cluster";
/// The node's analyst token.
const TOKEN: &str = "cluster-test-analyst-token";
/// The last day of the generated votes.
const END: &str = "2026-11-20";

/// A cluster process, killed when dropped; its output goes to `log`.
struct Role {
    child: Child,
    log: PathBuf,
}

impl Role {
    /// Starts `faccia cluster ARGS` with `env`; returns it with the first line it prints.
    fn start(args: &[&str], env: &[(&'static str, String)], log: PathBuf) -> (Role, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_faccia"))
            .arg("cluster")
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "faccia cluster {args:?} printed nothing: {}", std::fs::read_to_string(&log).unwrap_or_default());
        (Role { child, log }, first.trim().to_string())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 request with an optional bearer token and body; the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    if response.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `faccia ARGS` with the bucket's environment; its standard output, or its standard error
/// when it fails.
fn faccia(args: &[&str], s3: &S3Server) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_faccia")).args(args).envs(s3.env()).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The five analyst queries of `tools/bench_sql.py` (faccia's SQL), with `{end}`,
/// `{municipality}` and `{day}` filled in.
fn analyst_queries(municipality: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script =
        "import json, sys; sys.path.insert(0, 'tools'); import bench_sql; print(json.dumps([[q[0], q[1]] for q in bench_sql.QUERIES]))";
    let out = Command::new("python3").arg("-c").arg(script).current_dir(root).output().unwrap();
    assert!(out.status.success(), "reading tools/bench_sql.py: {}", String::from_utf8_lossy(&out.stderr));
    let queries: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queries.len(), 5, "the five analyst queries");
    queries
        .into_iter()
        .map(|(name, sql)| (name, sql.replace("{end}", END).replace("{day}", END).replace("{municipality}", municipality)))
        .collect()
}

/// CSV rows made comparable: sorted (views and some queries carry no order) and with numbers
/// that differ only past the 9th significant digit (partial sums added in another order)
/// rounded alike.
fn comparable(csv: &str) -> Vec<String> {
    let mut rows: Vec<String> = csv
        .lines()
        .map(|line| {
            line.split(',')
                .map(|field| match field.parse::<f64>() {
                    Ok(x) if field.contains('.') || field.contains('e') => format!("{x:.9e}"),
                    _ => field.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    rows.sort();
    rows
}

/// Asserts two CSV answers hold the same rows; names the rows only one has.
fn same(what: &str, expected: &str, got: &str) {
    let (expected, got) = (comparable(expected), comparable(got));
    if expected != got {
        let missing: Vec<_> = expected.iter().filter(|r| !got.contains(r)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|r| !expected.contains(r)).take(5).collect();
        panic!("{what}: {} rows single-node, {} rows here; only single-node: {missing:?}; only here: {extra:?}", expected.len(), got.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_and_analyst_query_answers_the_same_on_a_two_executor_cluster() {
    let test = "cluster::every_view_and_analyst_query_answers_the_same_on_a_two_executor_cluster";
    let Some(s3) = S3Server::start(test, BUCKET) else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let data_arg = data.to_str().unwrap();
    let url = format!("s3://{BUCKET}/tables");

    // 20 days of votes, compacted, moved into the bucket.
    faccia(&["generate", "--data-dir", data_arg, "--votes", "300000", "--days", "20", "--end", END, "--seed", "13"], &s3).unwrap();
    faccia(&["migrate", "--data-dir", data_arg, "--to", &url], &s3).unwrap();

    // The cluster: a scheduler and two executors of one slot each.
    let env = s3.env();
    let (scheduler, line) = Role::start(
        &["scheduler", "--bind", "127.0.0.1:0", "--min-executors", "2", "--executor-timeout", "20"],
        &env,
        dir.path().join("scheduler.log"),
    );
    let scheduler_addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let executors: Vec<Role> = (0..2)
        .map(|i| {
            let work = dir.path().join(format!("executor-{i}"));
            let args =
                ["executor", "--scheduler", &scheduler_addr.to_string(), "--bind", "127.0.0.1:0", "--slots", "1", "--memory-mib", "256"];
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            args.extend(["--work-dir".to_string(), work.display().to_string()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Role::start(&args, &env, dir.path().join(format!("executor-{i}.log"))).0
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(scheduler_addr, "GET", "/readyz", None, "").map(|(s, _)| s).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "two executors never registered:\n{}\n{}", scheduler.log(), executors[0].log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A node on the same tables sending its analysts' queries to the cluster, with votes
    // acknowledged but not flushed (a flush every hour): the fresh rows.
    let credentials = add(&data, ALA_DI_STURA, 3);
    let http_addr = SocketAddr::from(([127, 0, 0, 1], std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()));
    let ingest = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "analyst_tokens = [\"{TOKEN}\"]\nhttp_listen = \"{http_addr}\"\n[storage]\nurl = \"{url}\"\nflush_interval_ms = 3600000\n\
         [cluster]\nscheduler = \"{scheduler_addr}\"\npartitions = 4\n"
    );
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, faccia::tools::process::child_config(ingest, &toml, &[]).unwrap()).unwrap();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_faccia")), &data, &config, ingest, &env_refs).unwrap();
    let fresh = vote(&node, credentials, 4).await;
    assert_eq!(fresh, 300, "3 terminals × 4 batches × 25 votes acknowledged");

    let busiest = faccia(
        &[
            "sql",
            "--data-dir",
            data_arg,
            "--format",
            "csv",
            &format!("SELECT municipality FROM votes WHERE date = DATE '{END}' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"),
        ],
        &s3,
    )
    .unwrap();
    let busiest = busiest.lines().nth(1).unwrap().to_string();
    let views = faccia(
        &[
            "sql",
            "--data-dir",
            data_arg,
            "--format",
            "csv",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'VIEW' ORDER BY table_name",
        ],
        &s3,
    )
    .unwrap();
    let views: Vec<String> = views.lines().skip(1).map(str::to_string).collect();
    assert!(views.len() >= 15 && views.iter().any(|v| v == "service_index"), "the index library's views: {views:?}");

    let mut queries = analyst_queries(&busiest);
    queries.extend(views.iter().map(|v| (v.clone(), format!("SELECT * FROM {v}"))));
    // Every vote, the fresh ones included, one partition, and the rollups by their keys (a
    // node's memory holds a key's fresh counts as several rows until they are flushed).
    queries.push(("all votes".into(), "SELECT count(*), sum(face), sum(municipality) FROM votes".into()));
    queries.push(("one day".into(), format!("SELECT count(*), sum(face) FROM votes WHERE date = DATE '{END}'")));
    // Every file pruned away: the scan is the fresh rows alone, or nothing at all.
    queries.push(("a day without votes".into(), "SELECT count(*), sum(face) FROM votes WHERE date = DATE '1999-01-01'".into()));
    queries.push(("a rollup day without votes".into(), "SELECT count(*) FROM vote_counts WHERE date = DATE '1999-01-01'".into()));
    queries.push((
        "vote_counts by key".into(),
        "SELECT date, region_code, service, hour, channel, face, reason, misuse, CAST(sum(votes) AS BIGINT) FROM vote_counts GROUP BY ALL"
            .into(),
    ));
    queries.push((
        "municipality_service_counts by key".into(),
        "SELECT date, municipality, service, misuse, CAST(sum(votes) AS BIGINT), CAST(sum(positive) AS BIGINT), CAST(sum(negative) AS BIGINT) \
         FROM municipality_service_counts GROUP BY ALL"
            .into(),
    ));
    let cluster_arg = scheduler_addr.to_string();
    let mut compared = 0;
    for (name, sql) in &queries {
        let here =
            faccia(&["sql", "--data-dir", data_arg, "--format", "csv", sql], &s3).unwrap_or_else(|e| panic!("{name} single-node: {e}"));
        let there = faccia(
            &[
                "sql",
                "--data-dir",
                data_arg,
                "--cluster",
                &cluster_arg,
                "--partitions",
                "4",
                "--cluster-timeout-s",
                "120",
                "--format",
                "csv",
                sql,
            ],
            &s3,
        )
        .unwrap_or_else(|e| panic!("{name} on the cluster: {e}\nscheduler:\n{}", scheduler.log()));
        same(&format!("{name} (faccia sql --cluster)"), &here, &there);
        let (status, served) = http(http_addr, "POST", "/query?format=csv", Some(TOKEN), sql).unwrap();
        assert_eq!(status, 200, "{name} through the node's HTTP endpoint: {served}");
        same(&format!("{name} (the node's HTTP endpoint on the cluster)"), &here, &served);
        compared += 1;
    }
    assert_eq!(compared, queries.len());
    let all = faccia(&["sql", "--data-dir", data_arg, "--format", "csv", "SELECT count(*) FROM votes"], &s3).unwrap();
    assert_eq!(all.lines().nth(1).unwrap(), "300300", "the generated votes and the fresh ones");

    // The work was the executors': both ran tasks (each leaves a directory per job).
    for (i, _) in executors.iter().enumerate() {
        let jobs = std::fs::read_dir(dir.path().join(format!("executor-{i}"))).map(|d| d.count()).unwrap_or(0);
        assert!(jobs > 0, "executor {i} ran no task:\n{}", executors[i].log());
    }

    // A function the client has and the cluster does not, and a plan over the size limit: each
    // refused with its name, not answered (a local dataset: this process has no bucket settings).
    let local = dir.path().join("local");
    faccia(&["generate", "--data-dir", local.to_str().unwrap(), "--votes", "2000", "--days", "2", "--end", END], &s3).unwrap();
    let settings = faccia::cluster::ClusterConfig { scheduler: Some(cluster_arg.clone()), partitions: 2, ..Default::default() };
    let ctx = faccia::query::context_for(&local, settings.runs()).await.unwrap();
    let only_here = datafusion::logical_expr::create_udf(
        "only_here",
        vec![arrow::datatypes::DataType::Int64],
        arrow::datatypes::DataType::Int64,
        datafusion::logical_expr::Volatility::Immutable,
        std::sync::Arc::new(|args: &[datafusion::logical_expr::ColumnarValue]| Ok(args[0].clone())),
    );
    ctx.register_udf(only_here);
    let cluster = faccia::cluster::Cluster::from_config(&settings).unwrap();
    let (_, batches) = cluster.run_with_schema(&ctx, "SELECT count(*) FROM votes WHERE face = 1").await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "a local table's query runs on the cluster");
    let error = cluster.run_with_schema(&ctx, "SELECT sum(only_here(CAST(face AS BIGINT))) FROM votes").await.unwrap_err().to_string();
    assert!(error.contains("function only_here is not available on the cluster"), "{error}");
    let tiny = faccia::cluster::ClusterConfig { max_plan_bytes: 1_000, ..settings.clone() };
    let error =
        faccia::cluster::Cluster::from_config(&tiny).unwrap().run_with_schema(&ctx, "SELECT * FROM municipality_index").await.unwrap_err();
    assert!(error.to_string().contains("max_plan_bytes"), "{error}");

    // With the scheduler gone, the cluster's queries fail naming it — never a local answer.
    drop(scheduler);
    let error = faccia(&["sql", "--data-dir", data_arg, "--cluster", &cluster_arg, "--format", "csv", "SELECT count(*) FROM votes"], &s3)
        .unwrap_err();
    assert!(error.contains(&format!("the cluster scheduler at {cluster_arg} does not answer")), "{error}");
    let (status, body) = http(http_addr, "POST", "/query?format=csv", Some(TOKEN), "SELECT count(*) FROM votes").unwrap();
    assert!(status >= 400 && body.contains("does not answer"), "{status} {body}");
    node.kill();
}
