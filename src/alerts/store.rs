//! The alerts' own state under `DATA_DIR/alerts/`: `events.jsonl` (each alert fired and
//! resolved) and `deliveries.jsonl` (each webhook attempt), both append-only JSON lines whose
//! first line names the format and its version, each append fsync'd before it counts; and the
//! lifecycle that turns an evaluation's conditions into events, rebuilt from `events.jsonl` at
//! start so that a restart neither forgets a firing alert nor raises it again.
//!
//! A line cut short by a crash (no final newline) is ignored by readers and cut off when the
//! file is next opened for appending; this is the dataset's log rule (`storage::wal`) in text form.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alerts::rules::{self, Condition, Rule};

/// The alerts' folder, under the data directory.
pub const ALERTS_DIR: &str = "alerts";
/// The events file, in `ALERTS_DIR`.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The delivery log, in `ALERTS_DIR`.
pub const DELIVERIES_FILE: &str = "deliveries.jsonl";
/// The version of both files' line format; readers refuse any other.
pub const FORMAT_VERSION: u32 = 1;

/// Why the alerts' files could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, appending to or syncing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file's first line does not name this format and version.
    #[error("{path}: not an alerts file of format version {FORMAT_VERSION} (first line: {found})")]
    Format {
        /// The file.
        path: PathBuf,
        /// The first line found.
        found: String,
    },
    /// A complete line (ending with a newline) is not a record of this format.
    #[error("{path}, line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// serde_json's message.
        reason: String,
    },
    /// The webhook's TLS could not be set up (`alerts.webhook_ca`).
    #[error("alerts.webhook_ca")]
    WebhookTls(#[source] crate::transport::tls::TlsError),
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Its condition became true.
    Fired,
    /// Its condition became false.
    Resolved,
}

impl EventKind {
    /// `fired` or `resolved`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Fired => "fired",
            EventKind::Resolved => "resolved",
        }
    }
}

/// One line of `events.jsonl`, and the body of a webhook POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The alert's stable id: its subject key and the time it fired (`red_share/1001/3@1764525600000`).
    pub alert_id: String,
    /// `fired` or `resolved`.
    pub event: EventKind,
    /// The rule.
    pub rule: Rule,
    /// The comune (ISTAT code as a number).
    pub municipality: Option<u32>,
    /// The service, for `red_share`.
    pub service: Option<u16>,
    /// The terminal, for the terminal rules.
    pub terminal: Option<u32>,
    /// When the alert fired, ms since the epoch (UTC).
    pub fired_at_ms: i64,
    /// When it resolved, ms since the epoch (UTC); none while firing.
    pub resolved_at_ms: Option<i64>,
    /// What was measured when it fired (the red share in %, a count of votes).
    pub value: Option<f64>,
    /// The rule's threshold, in the same unit.
    pub threshold: f64,
    /// One English sentence.
    pub message: String,
}

impl Event {
    /// The subject key (`rules::key`).
    pub fn key(&self) -> String {
        rules::key(self.rule, self.municipality, self.service, self.terminal)
    }
}

/// One line of `deliveries.jsonl`: one attempt to POST one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The alert.
    pub alert_id: String,
    /// Which of its events.
    pub event: EventKind,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// When the attempt ended, ms since the epoch (UTC).
    pub at_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, when it did (a status other than 2xx, a connection error, a timeout).
    pub error: Option<String>,
}

impl Delivery {
    /// Whether the receiver took the event (a 2xx status).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

fn header_line(format: &str) -> String {
    let header = Header { format: format.into(), version: FORMAT_VERSION };
    serde_json::to_string(&header).expect("a header serialises") + "\n"
}

fn path(data_dir: &Path, file: &str) -> PathBuf {
    data_dir.join(ALERTS_DIR).join(file)
}

/// An append-only JSON-lines file, each append fsync'd.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
}

impl Log {
    /// Opens `DATA_DIR/alerts/{file}` for appending, creating it (and the folder) with its header line.
    ///
    /// # Errors
    /// When the folder or file cannot be created or opened.
    pub fn open(data_dir: &Path, file: &str) -> Result<Log, StoreError> {
        let path = path(data_dir, file);
        let io = |source| StoreError::Io { path: path.clone(), source };
        crate::fsutil::create_dir_durable(&data_dir.join(ALERTS_DIR)).map_err(io)?;
        let fresh = !path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        if fresh {
            file.write_all(header_line(file_format(&path)).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            crate::fsutil::sync_dir(&data_dir.join(ALERTS_DIR)).map_err(io)?;
        } else if !ends_with_newline(&path).map_err(io)? {
            // A line cut short by a crash: cut it off (as the log's torn tail), so that the next
            // record starts on its own line and the fragment never reads as a record.
            let text = std::fs::read(&path).map_err(io)?;
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::warn!(path = %path.display(), bytes = text.len() - keep, "alerts file: a line cut short by a crash was cut off");
        }
        Ok(Log { path, file })
    }

    /// Appends `record` as one line and waits for it to be on disk (`fdatasync`).
    ///
    /// # Errors
    /// When the write or the sync fails.
    pub fn append_durable<T: Serialize>(&mut self, record: &T) -> Result<(), StoreError> {
        let line = serde_json::to_string(record).expect("alert records serialise") + "\n";
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

fn file_format(path: &Path) -> &'static str {
    if path.ends_with(DELIVERIES_FILE) { "faccia-alert-deliveries" } else { "faccia-alert-events" }
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Reads every complete record of `DATA_DIR/alerts/{file}`; none when it does not exist.
fn read<T: for<'de> Deserialize<'de>>(data_dir: &Path, file: &str) -> Result<Vec<T>, StoreError> {
    let path = path(data_dir, file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    let header: Option<Header> = serde_json::from_str(first.trim_end()).ok();
    if !header.is_some_and(|h| h.format == file_format(&path) && h.version == FORMAT_VERSION) {
        return Err(StoreError::Format { path, found: first.trim_end().chars().take(80).collect() });
    }
    let mut records = Vec::new();
    for (index, line) in lines.enumerate() {
        if !line.ends_with('\n') || line.trim().is_empty() {
            continue; // cut short by a crash
        }
        let record = serde_json::from_str(line.trim_end()).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            line: index + 2,
            reason: e.to_string(),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Every event recorded, oldest first.
///
/// # Errors
/// As `StoreError`.
pub fn read_events(data_dir: &Path) -> Result<Vec<Event>, StoreError> {
    read(data_dir, EVENTS_FILE)
}

/// Every delivery attempt recorded, oldest first.
///
/// # Errors
/// As `StoreError`.
pub fn read_deliveries(data_dir: &Path) -> Result<Vec<Delivery>, StoreError> {
    read(data_dir, DELIVERIES_FILE)
}

/// One alert as the `alerts` table shows it: its last event, and whether that event's webhook
/// delivery succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its last event (`resolved_at_ms` set once resolved).
    pub last: Event,
    /// Whether an attempt to deliver that last event succeeded.
    pub delivered: bool,
}

/// Every alert, in the order they fired.
///
/// # Errors
/// As `StoreError`.
pub fn alerts(data_dir: &Path) -> Result<Vec<Alert>, StoreError> {
    let deliveries = read_deliveries(data_dir)?;
    let mut order = Vec::new();
    let mut last: BTreeMap<String, Event> = BTreeMap::new();
    for event in read_events(data_dir)? {
        if !last.contains_key(&event.alert_id) {
            order.push(event.alert_id.clone());
        }
        last.insert(event.alert_id.clone(), event);
    }
    Ok(order
        .into_iter()
        .filter_map(|id| last.remove(&id))
        .map(|last| {
            let delivered = deliveries.iter().any(|d| d.alert_id == last.alert_id && d.event == last.event && d.succeeded());
            Alert { last, delivered }
        })
        .collect())
}

/// The alerts firing now, by subject key, and the event file new events go to.
#[derive(Debug)]
pub struct Lifecycle {
    log: Log,
    firing: BTreeMap<String, Event>,
}

impl Lifecycle {
    /// Opens `events.jsonl` and rebuilds which alerts are firing from it.
    ///
    /// # Errors
    /// As `StoreError`.
    pub fn open(data_dir: &Path) -> Result<Lifecycle, StoreError> {
        let mut firing = BTreeMap::new();
        for event in read_events(data_dir)? {
            match event.event {
                EventKind::Fired => firing.insert(event.key(), event),
                EventKind::Resolved => firing.remove(&event.key()),
            };
        }
        Ok(Lifecycle { log: Log::open(data_dir, EVENTS_FILE)?, firing })
    }

    /// The alerts firing now, by subject key.
    pub fn firing(&self) -> &BTreeMap<String, Event> {
        &self.firing
    }

    /// Applies one evaluation at `now_ms`: `conditions` are the subjects meeting a rule now, for
    /// the rules in `evaluated` (a rule switched off or whose query failed is not in it, and its
    /// alerts stay as they are). A condition without a firing alert fires one; a firing alert of
    /// an evaluated rule without a condition resolves. Each event is on disk before it is returned.
    ///
    /// # Errors
    /// When an event cannot be appended: the events before it are recorded, it and the rest not
    /// (the next evaluation finds them again).
    pub fn apply(&mut self, conditions: &[Condition], evaluated: &[Rule], now_ms: i64) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let mut now_true = std::collections::BTreeSet::new();
        for condition in conditions.iter().filter(|c| evaluated.contains(&c.rule)) {
            let key = condition.key();
            now_true.insert(key.clone());
            if self.firing.contains_key(&key) {
                continue;
            }
            let event = Event {
                alert_id: format!("{key}@{now_ms}"),
                event: EventKind::Fired,
                rule: condition.rule,
                municipality: condition.municipality,
                service: condition.service,
                terminal: condition.terminal,
                fired_at_ms: now_ms,
                resolved_at_ms: None,
                value: condition.value,
                threshold: condition.threshold,
                message: condition.message.clone(),
            };
            self.log.append_durable(&event)?;
            self.firing.insert(key, event.clone());
            events.push(event);
        }
        let ended: Vec<String> =
            self.firing.iter().filter(|(k, e)| evaluated.contains(&e.rule) && !now_true.contains(*k)).map(|(k, _)| k.clone()).collect();
        for key in ended {
            let fired = &self.firing[&key];
            let event = Event {
                event: EventKind::Resolved,
                resolved_at_ms: Some(now_ms),
                message: format!("Resolved: {}", fired.message),
                ..fired.clone()
            };
            self.log.append_durable(&event)?;
            self.firing.remove(&key);
            events.push(event);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(municipality: u32, share: f64) -> Condition {
        Condition {
            rule: Rule::RedShare,
            municipality: Some(municipality),
            service: Some(3),
            terminal: None,
            value: Some(share),
            threshold: 50.0,
            message: format!("{share} % red"),
        }
    }

    #[test]
    fn an_alert_is_raised_once_resolved_once_and_a_restart_keeps_it() {
        // Proves: with a driven clock, a condition fires one event however many evaluations
        // find it; it resolves once when it ends; a restart (reopening the file) remembers the
        // firing alert and neither raises it again nor forgets to resolve it; a disabled rule's
        // alerts stay as they are.
        let dir = tempfile::tempdir().unwrap();
        let mut now = 1_764_525_600_000; // the driven clock, ms
        let all = Rule::ALL;
        let mut lifecycle = Lifecycle::open(dir.path()).unwrap();
        let fired = lifecycle.apply(&[red(1001, 75.0)], &all, now).unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].event, EventKind::Fired);
        assert_eq!(fired[0].alert_id, "red_share/1001/3@1764525600000");
        for _ in 0..5 {
            now += 10_000;
            assert!(lifecycle.apply(&[red(1001, 80.0)], &all, now).unwrap().is_empty(), "no duplicate while it stays true");
        }
        drop(lifecycle);

        let mut lifecycle = Lifecycle::open(dir.path()).unwrap();
        assert_eq!(lifecycle.firing().len(), 1, "a restart remembers the firing alert");
        now += 10_000;
        assert!(lifecycle.apply(&[red(1001, 60.0)], &all, now).unwrap().is_empty(), "not raised again after a restart");
        assert!(lifecycle.apply(&[], &[Rule::ClockFault], now).unwrap().is_empty(), "a rule not evaluated resolves nothing");
        now += 10_000;
        let resolved = lifecycle.apply(&[], &all, now).unwrap();
        assert_eq!(resolved.len(), 1);
        assert_eq!((resolved[0].event, resolved[0].resolved_at_ms), (EventKind::Resolved, Some(now)));
        assert_eq!(resolved[0].alert_id, fired[0].alert_id);
        assert!(lifecycle.apply(&[], &all, now).unwrap().is_empty(), "resolved once");
        now += 10_000;
        let again = lifecycle.apply(&[red(1001, 90.0)], &all, now).unwrap();
        assert_eq!(again.len(), 1, "a new firing is a new alert");
        assert_ne!(again[0].alert_id, fired[0].alert_id);
        drop(lifecycle);

        let alerts = alerts(dir.path()).unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].last.event, EventKind::Resolved);
        assert_eq!(alerts[1].last.event, EventKind::Fired);
        assert!(!alerts[0].delivered);
        assert_eq!(read_events(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn a_line_cut_short_is_ignored_and_the_next_append_starts_clean() {
        // Proves: a crash in the middle of an append leaves a line without its newline, which
        // readers skip; the next open cuts it off, and later records read back; another format is refused.
        let dir = tempfile::tempdir().unwrap();
        let mut lifecycle = Lifecycle::open(dir.path()).unwrap();
        lifecycle.apply(&[red(1001, 75.0)], &Rule::ALL, 1_000).unwrap();
        drop(lifecycle);
        let file = path(dir.path(), EVENTS_FILE);
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"alert_id\":\"red_sh").unwrap();
        drop(f);
        assert_eq!(read_events(dir.path()).unwrap().len(), 1);
        let mut lifecycle = Lifecycle::open(dir.path()).unwrap();
        lifecycle.apply(&[], &Rule::ALL, 2_000).unwrap();
        assert_eq!(read_events(dir.path()).unwrap().len(), 2);
        std::fs::write(&file, "{\"format\":\"faccia-alert-events\",\"version\":2}\n").unwrap();
        let error = read_events(dir.path()).unwrap_err().to_string();
        assert!(error.contains("format version 1"), "{error}");
    }
}
