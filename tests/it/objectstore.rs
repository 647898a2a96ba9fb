//! The tables in a bucket of a real S3-compatible server: moto in server mode (PyPI
//! `moto[server]`, installed by `.ci/run`; it honours `If-None-Match: *`, which Delta commits
//! from several nodes rely on). Servers and `faccia sql` run as processes with the standard
//! `AWS_*` environment, as an operator would run them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faccia::terminal::client::{Event, Terminal};
use faccia::tools::process::ServerProcess;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

use crate::common::*;
use crate::crash::free_port;

/// An S3-compatible server on a loopback port, stopped when dropped.
pub(crate) struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl S3Server {
    /// Starts moto on a free loopback port with an empty `bucket`; `None` (after `cannot_run`)
    /// when moto is not installed.
    pub(crate) fn start(test: &str, bucket: &str) -> Option<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            cannot_run(test, "python3 could not be started");
            return None;
        };
        let mut server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        // CreateBucket, until the server answers (moto does not check signatures).
        loop {
            if let Ok(status) = http_put(addr, &format!("/{bucket}")) {
                assert!(status == 200, "creating the bucket {bucket}: HTTP {status}");
                return Some(server);
            }
            if server.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                cannot_run(test, "moto's S3 server did not start (pip install 'moto[server]')");
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The environment a faccia process reaches the bucket with.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "faccia-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "faccia-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A client of `bucket`, for the test's own checks.
    pub(crate) fn client(&self, bucket: &str) -> impl ObjectStore {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("faccia-test")
            .with_secret_access_key("faccia-test")
            .with_region("us-east-1")
            .build()
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 PUT with an empty body; the status code.
fn http_put(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok());
    status.ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
}

/// `faccia serve` on `dir` with its tables at `url`.
fn serve(dir: &Path, url: &str, s3: &S3Server) -> ServerProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("serve.toml");
    let text = faccia::tools::process::child_config(addr, &format!("[storage]\nurl = \"{url}\"\n"), &[]).unwrap();
    std::fs::write(&config, text).unwrap();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_faccia")), dir, &config, addr, &env).expect("faccia serve starts")
}

/// `faccia serve` on `dir` with its tables at `url`, its heartbeat at 200 ms and a dead
/// node's terminals free after a second, flushing every second, and `env` added.
fn serve_node(dir: &Path, url: &str, s3: &S3Server, env: &[(&str, &str)]) -> ServerProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("serve.toml");
    let storage = format!("[storage]\nurl = \"{url}\"\nheartbeat_interval_ms = 200\nnode_ttl_ms = 2000\nflush_interval_ms = 1000\n");
    let text =
        faccia::tools::process::child_config(addr, &storage, &[("limits.votes_per_terminal_per_minute_max", 1_000_000.into())]).unwrap();
    std::fs::write(&config, text).unwrap();
    let s3_env = s3.env();
    let mut all: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_faccia")), dir, &config, addr, &all).expect("faccia serve starts")
}

/// `faccia sql --format csv` on `dir` with the bucket's environment: the lines of its answer.
fn sql(dir: &Path, s3: &S3Server, query: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_faccia"))
        .args(["sql", "--data-dir"])
        .arg(dir)
        .args(["--format", "csv", query])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "faccia sql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::to_string).collect()
}

/// Delivers `batches` batches of 25 votes from each terminal of `credentials`; the votes
/// acknowledged.
pub(crate) async fn vote(server: &ServerProcess, credentials: Vec<faccia::registry::Credential>, batches: i64) -> usize {
    let endpoint = faccia::terminal::client::client_endpoint(server.addr).unwrap();
    let now = faccia::clock::now_ms();
    let mut acknowledged = 0;
    for (t, credential) in credentials.into_iter().enumerate() {
        let mut terminal = Terminal::new(credential, endpoint.clone(), server.target().unwrap(), 8);
        for b in 0..batches {
            terminal.enqueue(&votes(now - 900_000 + (t as i64) * 60_000 + b * 1_000, 25)).unwrap();
        }
        acknowledged += deliver(&mut terminal).await.0;
        terminal.close();
    }
    acknowledged
}

/// The objects of `bucket` under `prefix`.
async fn objects(store: &impl ObjectStore, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store.list(Some(&ObjectPath::from(prefix))).try_collect().await.unwrap();
    listed.into_iter().map(|meta| meta.location.to_string()).collect()
}

#[tokio::test]
async fn a_server_keeps_its_tables_in_the_bucket_and_every_command_reads_them_there() {
    // Proves: with `[storage] url = "s3://…"` the three tables (files and logs) are written to
    // the bucket, not to the data directory, which keeps the log and records the URL; `faccia
    // sql` on the data directory reads them back; a restart with another location is refused.
    let Some(s3) = S3Server::start("a_server_keeps_its_tables_in_the_bucket", "votes-bucket") else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = "s3://votes-bucket/programme";
    let credentials = add(dir.path(), AGLIE, 3);
    let server = serve(dir.path(), url, &s3);
    let acknowledged = vote(&server, credentials, 4).await;
    assert!(server.terminate().unwrap().success(), "clean shutdown on SIGTERM");

    let bucket = s3.client("votes-bucket");
    for table in ["votes", "vote_counts", "municipality_service_counts"] {
        let listed = objects(&bucket, &format!("programme/{table}")).await;
        assert!(listed.iter().any(|o| o.ends_with("00000000000000000000.json")), "{table}'s log is in the bucket: {listed:?}");
        assert!(listed.iter().any(|o| o.contains("/date=") && o.ends_with(".parquet")), "{table}'s files are in the bucket: {listed:?}");
    }
    assert!(parquet_files(dir.path()).is_empty(), "no table file in the data directory");
    assert_eq!(std::fs::read_to_string(dir.path().join("storage-url")).unwrap().trim(), url);
    assert_eq!(sql(dir.path(), &s3, "SELECT count(*) AS n FROM votes"), vec![acknowledged.to_string()]);
    assert_eq!(sql(dir.path(), &s3, "SELECT sum(votes) AS n FROM vote_counts"), vec![acknowledged.to_string()]);

    // The same data directory with its tables elsewhere: refused, naming the recorded URL.
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "[storage]\nurl = \"s3://votes-bucket/elsewhere\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_faccia"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .envs(s3.env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(url) && stderr.contains("[storage] url"), "{stderr}");
}

#[tokio::test]
async fn two_nodes_commit_to_one_bucket_and_each_answers_with_both() {
    // Proves: two nodes (their own data directories, node ids and logs) write one table in the
    // bucket, their flushes committing at the same moment (both stopped at once: conflicting
    // versions are retried by delta-rs's conditional put, none lost or doubled), and SQL on
    // either node's directory counts both nodes' votes.
    let Some(s3) = S3Server::start("two_nodes_commit_to_one_bucket", "shared") else { return };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = "s3://shared/faccia";
    let (credentials_a, credentials_b) = (add(a.path(), AGLIE, 2), add(a.path(), ALA_DI_STURA, 3));
    let node_a = serve(a.path(), url, &s3);
    faccia::tools::crashtest::same_directory_and_certificate(a.path(), b.path()).unwrap();
    let node_b = serve(b.path(), url, &s3);
    let (from_a, from_b) = tokio::join!(vote(&node_a, credentials_a, 6), vote(&node_b, credentials_b, 4));
    let (stop_a, stop_b) = std::thread::scope(|scope| {
        let stop_a = scope.spawn(|| node_a.terminate().unwrap());
        let stop_b = scope.spawn(|| node_b.terminate().unwrap());
        (stop_a.join().unwrap(), stop_b.join().unwrap())
    });
    assert!(stop_a.success() && stop_b.success(), "both nodes stop cleanly");
    let by_municipality = "SELECT municipality, count(*) AS n FROM votes GROUP BY 1 ORDER BY 1";
    let expected = vec![format!("{},{from_a}", AGLIE.0), format!("{},{from_b}", ALA_DI_STURA.0)];
    assert_eq!(sql(a.path(), &s3, by_municipality), expected, "node A answers with both nodes' votes");
    assert_eq!(sql(b.path(), &s3, by_municipality), expected, "node B answers with both nodes' votes");
    let writers = sql(a.path(), &s3, "SELECT count(*) AS n FROM table_history WHERE table_name = 'votes' AND operation = 'WRITE'");
    assert!(writers[0].parse::<u32>().unwrap() >= 2, "a commit of each node: {writers:?}");
}

#[tokio::test]
async fn a_local_data_directory_moves_into_the_bucket_with_every_vote_once() {
    // Proves: `faccia migrate` copies the tables a local server wrote into the bucket (files and
    // logs as they are), records the URL, and is harmless when run again; the server restarted
    // on the bucket answers with the votes of before and stores new ones there, none lost or
    // doubled.
    let Some(s3) = S3Server::start("a_local_data_directory_moves_into_the_bucket", "moved") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (add(dir.path(), AGLIE, 2), add(dir.path(), ALA_DI_STURA, 1));
    let local = crate::crash::start_process(dir.path(), free_port());
    let before = vote(&local, first, 5).await;
    assert!(local.terminate().unwrap().success());
    let url = "s3://moved/tables";
    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_faccia"))
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .args(["--to", url])
            .envs(s3.env())
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[storage] url"), "{}", String::from_utf8_lossy(&out.stdout));
    let again = migrate();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already at"), "a second migration is refused");
    assert_eq!(sql(dir.path(), &s3, "SELECT count(*) AS n FROM votes"), vec![before.to_string()]);

    let server = serve(dir.path(), url, &s3);
    let after = vote(&server, second, 3).await;
    assert!(server.terminate().unwrap().success());
    let by_municipality = "SELECT municipality, count(*) AS n FROM votes GROUP BY 1 ORDER BY 1";
    assert_eq!(sql(dir.path(), &s3, by_municipality), vec![format!("{},{before}", AGLIE.0), format!("{},{after}", ALA_DI_STURA.0)]);
}

#[tokio::test]
async fn a_terminal_moves_from_a_dead_node_to_the_other_and_every_vote_is_stored_once() {
    // Proves exactly-once across nodes (`storage::membership`): node A stops itself right
    // after a log fsync whose batches it never acknowledged (`wal.after_fsync`), mid-stream;
    // the terminals, given both addresses, move to node B, which takes their leases once A is
    // silent for the TTL and stores what they send again — some of it already in A's log.
    // A comes back: its recovery claims its uncommitted batches and leaves to B those B
    // claimed first. Every acknowledged vote is in the table once, none lost, none doubled.
    let Some(s3) = S3Server::start("a_terminal_moves_from_a_dead_node", "moving") else { return };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = "s3://moving/faccia";
    let credentials = add(a.path(), AGLIE, 12);
    let node_a = serve_node(a.path(), url, &s3, &[("FACCIA_CRASH_POINT", "wal.after_fsync@200")]);
    faccia::tools::crashtest::same_directory_and_certificate(a.path(), b.path()).unwrap();
    let node_b = serve_node(b.path(), url, &s3, &[]);
    let mut target = node_a.target().unwrap().with_other_addresses([node_b.addr]);
    target.set_idle_timeout(Duration::from_secs(1));
    let endpoint = faccia::terminal::client::client_endpoint(node_a.addr).unwrap();
    let base = faccia::clock::now_ms() - 3_600_000;
    let mut fleet = tokio::task::JoinSet::new();
    for (t, credential) in credentials.into_iter().enumerate() {
        let mut terminal = Terminal::new(credential, endpoint.clone(), target.clone(), 4);
        terminal.set_ack_timeout(Duration::from_secs(1));
        fleet.spawn(async move {
            let (mut acknowledged, mut batches, mut moved) = (0usize, 0i64, false);
            let mut pace = tokio::time::interval(Duration::from_millis(25));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while batches < 120 || terminal.unacknowledged() > 0 {
                assert!(tokio::time::Instant::now() < deadline, "terminal {t} delivers within 60 s");
                tokio::select! {
                    _ = pace.tick(), if batches < 120 => {
                        // Distinct times: a vote stored twice shows as a repeated (terminal, ts).
                        terminal.enqueue(&votes(base + (t as i64) * 20_000 + batches * 100, 10)).unwrap();
                        batches += 1;
                    }
                    event = terminal.next_event() => match event {
                        Event::Acknowledged { votes, .. } => acknowledged += votes,
                        Event::Disconnected { .. } => moved = true,
                        // Nothing to send yet: wait for the next batch.
                        Event::Idle => tokio::task::yield_now().await,
                        Event::Fatal(error) => panic!("terminal {t} refused: {error}"),
                        Event::Rejected { rejection, .. } => panic!("terminal {t}: batch rejected: {rejection}"),
                        _ => {}
                    }
                }
            }
            terminal.close();
            (acknowledged, moved)
        });
    }
    let mut acknowledged = 0;
    while let Some(result) = fleet.join_next().await {
        let (votes, moved) = result.unwrap();
        assert!(moved, "every terminal lost node A and moved");
        acknowledged += votes;
    }
    assert_eq!(acknowledged, 12 * 120 * 10, "every vote acknowledged, by one node or the other");
    let mut node_a = node_a;
    let status = node_a.child.wait().unwrap();
    assert!(!status.success(), "node A stopped at its crash point: {status}");
    // A comes back with batches in its log that B stored too.
    let node_a = serve_node(a.path(), url, &s3, &[]);
    let problems = [node_a.problems(), node_b.problems()];
    let (stop_a, stop_b) = (node_a.terminate().unwrap(), node_b.terminate().unwrap());
    assert!(stop_a.success() && stop_b.success(), "both nodes stop cleanly: {stop_a}, {stop_b}; {problems:?}");
    // Every vote of the test has its own time.
    let per_terminal = "SELECT count(*) - count(DISTINCT ts) AS doubled, count(*) AS n FROM votes";
    for dir in [a.path(), b.path()] {
        assert_eq!(sql(dir, &s3, per_terminal), vec![format!("0,{acknowledged}")], "no vote doubled, none lost ({})", dir.display());
    }
    let store = s3.client("moving");
    let claims = objects(&store, "faccia/_faccia/claims").await;
    let mut holders = std::collections::BTreeSet::new();
    for claim in &claims {
        use object_store::ObjectStoreExt;
        let holder = store.get(&ObjectPath::from(claim.as_str())).await.unwrap().bytes().await.unwrap();
        holders.insert(String::from_utf8(holder.to_vec()).unwrap());
    }
    assert_eq!(holders.len(), 2, "both nodes claimed batches they both held: {} claims by {holders:?}", claims.len());
}

#[tokio::test]
async fn two_nodes_killed_in_turn_lose_nothing_and_double_nothing() {
    // Proves: `faccia crashtest` with two nodes on one bucket — each round kills one node with
    // SIGKILL (or it stops itself inside a compaction, or right after a log fsync it never
    // acknowledged) while the terminals, holding both addresses, move to the other — ends with
    // every acknowledged vote in the table exactly once.
    let Some(s3) = S3Server::start("two_nodes_killed_in_turn", "crashing") else { return };
    for (key, value) in s3.env() {
        // SAFETY: the variables are set before the nodes (child processes) start; this test's
        // other threads read no environment.
        unsafe { std::env::set_var(key, value) };
    }
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let plan = faccia::tools::crashtest::Plan {
        server_exe: env!("CARGO_BIN_EXE_faccia").into(),
        data_dir: dir.path().to_path_buf(),
        rounds: 4,
        terminals: 6,
        run_ms: (300, 1000),
        batch_votes_max: 40,
        in_flight_max: 4,
        seed,
        nodes: 2,
        storage_url: Some("s3://crashing/faccia".into()),
    };
    let report = faccia::tools::crashtest::run(&plan).await.unwrap();
    println!("{report:?}");
    assert!(report.votes_acknowledged > 0);
    assert!(report.is_clean(), "seed {seed}: {report:?}");
    assert!(report.log_crashes > 0, "a node stopped after an fsync it never acknowledged: {report:?}");
}
