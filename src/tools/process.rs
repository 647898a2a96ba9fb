//! A `faccia serve` child process, for the crash test and the load generator: started on a
//! data directory and configuration, watched through its log, stopped with SIGTERM or killed
//! with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a server may take to start (log replay included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The configuration file of a child server on loopback: `rest` (a TOML file's text, possibly
/// empty) with ingest on `listen`, Flight SQL and HTTP on ports the system picks (the fixed
/// defaults would collide with another server on the machine) unless `rest` sets them, and each
/// of `defaults` (`table.key`, value) unless `rest` sets it.
///
/// # Errors
/// When `rest` is not valid TOML.
pub fn child_config(listen: SocketAddr, rest: &str, defaults: &[(&str, toml::Value)]) -> anyhow::Result<String> {
    let mut config: toml::Table = rest.parse().context("reading the server configuration")?;
    config.insert("listen".into(), listen.to_string().into());
    for key in ["flight_listen", "http_listen"] {
        config.entry(key).or_insert_with(|| "127.0.0.1:0".into());
    }
    for (path, value) in defaults {
        let (table, key) = path.split_once('.').expect("a default is named table.key");
        let table = config.entry(table).or_insert_with(|| toml::Table::new().into());
        let table = table.as_table_mut().with_context(|| format!("`{path}` must be in a table"))?;
        table.entry(key).or_insert_with(|| value.clone());
    }
    Ok(toml::to_string(&config)?)
}

/// A `faccia serve` child process. Dropping it kills the process: a server must never outlive
/// the test or tool that started it.
pub struct ServerProcess {
    /// The running `faccia serve` process; its stderr is read by a log-watching thread.
    pub child: Child,
    /// The UDP address the server accepts terminals' QUIC connections on.
    pub addr: SocketAddr,
    /// The development CA certificate the server wrote (`DATA_DIR/tls/ca.pem`), for terminals to verify it.
    pub ca: PathBuf,
    /// The configuration file the server was started with (reused on restart).
    pub(crate) config: PathBuf,
    /// Warnings and errors the server logged.
    pub(crate) problems: Arc<Mutex<Vec<String>>>,
    /// The server's last log line, written when it stopped cleanly (it holds its counters).
    stopped: Arc<Mutex<Option<String>>>,
}

impl ServerProcess {
    /// Starts `exe serve` on `data_dir` with `config`, and waits until it reports serving.
    ///
    /// # Errors
    /// When the process cannot start or does not become ready in time.
    pub fn start(exe: &Path, data_dir: &Path, config: &Path, addr: SocketAddr, envs: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let mut child = Command::new(exe)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(config)
            .envs(envs.iter().copied())
            .env("RUST_LOG", std::env::var("FACCIA_SERVER_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        // Echoed lines are named after the data directory (`node-1`, `node-2` in a crash test).
        let name = data_dir.file_name().unwrap_or_default().to_os_string();
        let (ready, wait) = std::sync::mpsc::channel();
        let stopped = Arc::new(Mutex::new(None));
        let stopped_line = Arc::clone(&stopped);
        let problems = Arc::new(Mutex::new(Vec::new()));
        let problem_lines = Arc::clone(&problems);
        std::thread::spawn(move || {
            let echo = std::env::var_os("FACCIA_TEST_VERBOSE").is_some();
            let name = name.to_string_lossy();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("faccia serving") {
                    let _ = ready.send(());
                }
                if line.contains("faccia stopped") {
                    *stopped_line.lock().expect("log lock") = Some(line.clone());
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    problem_lines.lock().expect("log lock").push(line.clone());
                }
                if echo {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        if wait.recv_timeout(START_TIMEOUT).is_err() {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!("the server did not report serving within {START_TIMEOUT:?} (exit status {status:?})");
        }
        let ca = data_dir.join("tls").join("ca.pem");
        Ok(ServerProcess { child, addr, ca, config: config.to_path_buf(), problems, stopped })
    }

    /// What terminals connect to: this server, verified against its development CA.
    ///
    /// # Errors
    /// When the CA file is unusable.
    pub fn target(&self) -> Result<crate::terminal::client::ServerTarget, crate::terminal::client::ClientError> {
        crate::terminal::client::ServerTarget::new(self.addr, "localhost", &self.ca)
    }

    /// SIGKILL: no destructor, no flush, no goodbye.
    pub fn kill(self) {
        // Drop does it.
    }

    /// SIGTERM, and the exit status of the clean shutdown.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn terminate(self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.terminate_with_log()?.0)
    }

    /// SIGTERM; the exit status and the server's final log line (with its counters).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub(crate) fn terminate_with_log(mut self) -> anyhow::Result<(std::process::ExitStatus, Option<String>)> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let status = self.child.wait()?;
        // The log reader thread sees the last line shortly after the process exits.
        for _ in 0..50 {
            if self.stopped.lock().expect("log lock").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = self.stopped.lock().expect("log lock").take();
        Ok((status, line))
    }

    /// The warnings and errors the server has logged so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("log lock").clone()
    }

    /// The server's resident memory in bytes (Linux `/proc`), if readable.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `name=value` from a log line (the server's "faccia stopped" line carries its counters).
pub(crate) fn log_field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A free UDP port on loopback (released before the server binds it).
///
/// # Errors
/// When no socket can be bound.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_fields_are_read_from_the_stopped_line() {
        let line = "2026-11-27 INFO faccia::server: faccia stopped votes_stored=1234 batches_stored=56";
        assert_eq!(super::log_field(line, "votes_stored"), Some(1234));
        assert_eq!(super::log_field(line, "batches_stored"), Some(56));
        assert_eq!(super::log_field(line, "missing"), None);
    }
}
