//! The terminal directory (`DATA_DIR/terminals.json`: terminal id → municipality and the
//! SHA-256 of its secret), the credentials `faccia terminals add` prints, and the checks the
//! server makes at each hello. The only registry state that changes at run time: written by
//! `faccia terminals`, re-read by the server when it changes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RegistryError;
use super::catalog::Catalog;
use crate::model::{IstatCode, TerminalId};

/// Length of a terminal secret in bytes (256 bits: guessing is not an attack).
pub(crate) const SECRET_BYTES: usize = 32;

/// Version of `terminals.json`; bumped on any incompatible change.
const TERMINALS_FORMAT_VERSION: u32 = 1;

/// A terminal's secret: 32 random bytes, written as 64 hexadecimal characters.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; SECRET_BYTES]);

impl Secret {
    /// A fresh secret: 32 bytes from `rand::rng()`, a cryptographically secure generator.
    pub(crate) fn generate() -> Secret {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// # Errors
    /// When `text` is not 64 hexadecimal characters.
    pub(crate) fn from_hex(text: &str) -> Result<Secret, RegistryError> {
        let text = text.trim();
        let mut bytes = [0u8; SECRET_BYTES];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| RegistryError::SecretFormat { expected: SECRET_BYTES * 2, found: text.len() })?;
        Ok(Secret(bytes))
    }

    /// The secret as 64 lowercase hexadecimal characters, the form `from_hex` reads and `faccia terminals add` prints.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// One registered terminal, as kept in `terminals.json`. Only the SHA-256 of the secret is
/// stored: the secret itself is printed once, when the terminal is added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TerminalRecord {
    pub(crate) id: TerminalId,
    /// Six-digit ISTAT code.
    pub(crate) municipality: String,
    pub(crate) secret_sha256: String,
    pub(crate) added_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revoked_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) label: String,
    /// The union of comuni the terminal is registered to (`unions.json`), standing in
    /// `municipality`, one of its members; `None`: the comune's own terminal.
    #[serde(default, rename = "union", skip_serializing_if = "Option::is_none")]
    pub(crate) union_code: Option<String>,
    /// How the terminal was bought (the bonus settlement); `None` in files written before
    /// purchases were recorded, and until `faccia terminals set` records it.
    #[serde(default, flatten)]
    pub(crate) purchase: Purchase,
}

/// The kind of a public e-marketplace (MePA) order, as the 2009 programme names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OrderKind {
    /// Ordine Diretto di Acquisto: a direct order from a supplier's catalogue.
    #[serde(rename = "ODA")]
    DirectOrder,
    /// Richiesta di Offerta: a request for quotation to several suppliers.
    #[serde(rename = "RdO")]
    RequestForQuotation,
}

impl OrderKind {
    /// The forms `--order` accepts, for error messages.
    pub(crate) const ACCEPTED: &'static str = "ODA:NUMBER (direct order) or RdO:NUMBER (request for quotation), e.g. ODA:1234";

    /// The programme's abbreviation: `ODA` or `RdO`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            OrderKind::DirectOrder => "ODA",
            OrderKind::RequestForQuotation => "RdO",
        }
    }
}

/// The purchase of a terminal on the public e-marketplace: who sold it, by which order, when.
/// Each field is `None` until recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Purchase {
    /// The supplier's name, as on its invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) supplier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) order_kind: Option<OrderKind>,
    /// The order's number on the marketplace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) order_number: Option<String>,
    /// The purchase date (the order's date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bought: Option<chrono::NaiveDate>,
}

/// The longest supplier name kept (a company name with its legal form fits).
pub(crate) const SUPPLIER_CHARS_MAX: usize = 120;
/// The longest order number kept (MePA numbers are up to 10 digits).
pub(crate) const ORDER_NUMBER_CHARS_MAX: usize = 32;

impl Purchase {
    /// Reads the three flags of `faccia terminals add/set`; a flag not given stays `None`.
    ///
    /// # Errors
    /// `InvalidPurchase` naming the flag and its accepted form: an empty or too long supplier,
    /// an order not `ODA:NUMBER` / `RdO:NUMBER`, a date not `YYYY-MM-DD` or after `today`.
    pub(crate) fn parse(
        supplier: Option<&str>,
        order: Option<&str>,
        bought: Option<&str>,
        today: chrono::NaiveDate,
    ) -> Result<Purchase, RegistryError> {
        let invalid = |message: String| RegistryError::InvalidPurchase(message);
        let supplier = match supplier.map(str::trim) {
            None => None,
            Some("") => return Err(invalid("--supplier is empty: give the supplier's name, as on its invoice".into())),
            Some(s) if s.chars().count() > SUPPLIER_CHARS_MAX => {
                return Err(invalid(format!("--supplier has {} characters; at most {SUPPLIER_CHARS_MAX}", s.chars().count())));
            }
            Some(s) => Some(s.to_string()),
        };
        let (order_kind, order_number) = match order {
            None => (None, None),
            Some(text) => {
                let (kind, number) = parse_order(text).ok_or_else(|| {
                    invalid(format!(
                        "--order {text:?} is not an order: give {} (the number: 1 to {ORDER_NUMBER_CHARS_MAX} of A-Z, a-z, 0-9, /, -)",
                        OrderKind::ACCEPTED
                    ))
                })?;
                (Some(kind), Some(number))
            }
        };
        let bought = match bought {
            None => None,
            Some(text) => {
                let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                    .map_err(|_| invalid(format!("--bought {text:?} is not a date: give YYYY-MM-DD, e.g. 2026-11-03")))?;
                if date > today {
                    return Err(invalid(format!("--bought {date} is in the future (today is {today}): give the order's date")));
                }
                Some(date)
            }
        };
        Ok(Purchase { supplier, order_kind, order_number, bought })
    }

    /// This purchase with the fields `other` records replacing these.
    fn merged(&self, other: &Purchase) -> Purchase {
        Purchase {
            supplier: other.supplier.clone().or_else(|| self.supplier.clone()),
            order_kind: other.order_kind.or(self.order_kind),
            order_number: other.order_number.clone().or_else(|| self.order_number.clone()),
            bought: other.bought.or(self.bought),
        }
    }

    /// The order as `--order` takes it (`ODA:1234`), if recorded.
    pub(crate) fn order(&self) -> Option<String> {
        Some(format!("{}:{}", self.order_kind?.code(), self.order_number.as_deref()?))
    }
}

/// `ODA:1234` / `RdO:1234` (the kind in any case) as its kind and number.
fn parse_order(text: &str) -> Option<(OrderKind, String)> {
    let (kind, number) = text.trim().split_once(':')?;
    let kind = match kind.trim().to_ascii_uppercase().as_str() {
        "ODA" => OrderKind::DirectOrder,
        "RDO" => OrderKind::RequestForQuotation,
        _ => return None,
    };
    let number = number.trim();
    let valid =
        (1..=ORDER_NUMBER_CHARS_MAX).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-');
    valid.then(|| (kind, number.to_string()))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TerminalsFile {
    version: u32,
    next_id: TerminalId,
    terminals: Vec<TerminalRecord>,
}

/// Why a terminal was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No terminal with this id, or its record names no municipality of the registry (a
    /// hand-edited file): a terminal is never let in without a known municipality.
    UnknownTerminal,
    /// The secret does not match the one registered for this terminal.
    BadCredential,
    /// The terminal was revoked (`faccia terminals revoke`).
    Revoked,
}

#[derive(Debug, Clone)]
struct Entry {
    /// `None` when the record's municipality is not in the registry.
    municipality: Option<IstatCode>,
    digest: [u8; 32],
    revoked: bool,
}

impl Entry {
    fn admit(&self) -> Result<IstatCode, AuthError> {
        if self.revoked {
            return Err(AuthError::Revoked);
        }
        self.municipality.ok_or(AuthError::UnknownTerminal)
    }
}

/// The directory as last read: the file's modification time and the entries by terminal id.
/// The file's version as loaded — modification time, inode and length: each change is written
/// to a new file renamed over the old one (a new inode), so two changes within the clock tick
/// that stamps modification times are still told apart — and the index.
type DirectoryState = (Option<(SystemTime, u64, u64)>, Arc<HashMap<TerminalId, Entry>>);

/// The terminal directory as the server reads it: an in-memory index of `terminals.json`,
/// re-read when the file changes so that `faccia terminals add` and `revoke` take effect on a
/// running server. Each change is announced to subscribers (`subscribe`), so that open
/// connections of a revoked terminal are closed.
#[derive(Debug)]
pub struct TerminalDirectory {
    path: PathBuf,
    state: RwLock<DirectoryState>,
    /// Counts the reloads that changed the directory.
    changes: tokio::sync::watch::Sender<u64>,
}

impl TerminalDirectory {
    /// Opens the directory in `data_dir` (an absent file is an empty directory).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub(crate) fn open(data_dir: &Path) -> Result<TerminalDirectory, RegistryError> {
        let directory = TerminalDirectory {
            path: terminals_path(data_dir),
            state: RwLock::new((None, Arc::new(HashMap::new()))),
            changes: tokio::sync::watch::Sender::new(0),
        };
        directory.reload()?;
        Ok(directory)
    }

    /// Re-reads the file if it changed (`DirectoryState`). Returns whether it did.
    ///
    /// # Errors
    /// When the file cannot be read or parsed; the previous directory stays in force.
    pub(crate) fn reload(&self) -> Result<bool, RegistryError> {
        let modified = fs::metadata(&self.path).and_then(|m| Ok((m.modified()?, std::os::unix::fs::MetadataExt::ino(&m), m.len()))).ok();
        if modified.is_some() && self.state.read().expect("lock").0 == modified {
            return Ok(false);
        }
        let file = read_terminals(&self.path)?;
        let catalog = Catalog::for_data_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        let index = file
            .terminals
            .iter()
            .map(|t| {
                let mut digest = [0u8; 32];
                // A record with a damaged digest matches no secret.
                let _ = hex::decode_to_slice(&t.secret_sha256, &mut digest);
                // A code an import suppressed or renumbered stays admitted (its votes keep it and
                // join the successor in the views).
                let municipality = IstatCode::parse(&t.municipality).filter(|code| catalog.current(*code).is_some());
                if municipality.is_none() {
                    tracing::warn!(terminal = t.id, municipality = %t.municipality, "terminal record names no municipality of the registry; it cannot connect");
                }
                (t.id, Entry { municipality, digest, revoked: t.revoked_ms.is_some() })
            })
            .collect();
        *self.state.write().expect("lock") = (modified, Arc::new(index));
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// A receiver that is told each time a reload changed the directory.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a terminal that authenticated earlier may still send: registered, not revoked,
    /// with a known municipality. Its registered municipality if so.
    ///
    /// # Errors
    /// Unknown (or no longer known) or revoked terminal.
    pub(crate) fn check(&self, id: TerminalId) -> Result<IstatCode, AuthError> {
        self.index().get(&id).ok_or(AuthError::UnknownTerminal)?.admit()
    }

    fn index(&self) -> Arc<HashMap<TerminalId, Entry>> {
        Arc::clone(&self.state.read().expect("lock").1)
    }

    /// Checks a terminal's credential and returns its registered municipality. An id not in the
    /// directory makes it look at the file first (`reload`: a stat, a read only if it changed),
    /// so that a terminal registered a moment ago is let in at its first hello rather than
    /// refused for good until the next periodic reload.
    ///
    /// # Errors
    /// Unknown id, wrong secret (compared in constant time) or revoked terminal.
    pub(crate) fn authenticate(&self, id: TerminalId, secret: &Secret) -> Result<IstatCode, AuthError> {
        match self.authenticate_loaded(id, secret) {
            Err(AuthError::UnknownTerminal) if matches!(self.reload(), Ok(true)) => {
                tracing::info!(terminals = self.len(), terminal = id, "terminal directory reloaded for a terminal it did not know");
                self.authenticate_loaded(id, secret)
            }
            other => other,
        }
    }

    /// `authenticate` against the directory as loaded.
    fn authenticate_loaded(&self, id: TerminalId, secret: &Secret) -> Result<IstatCode, AuthError> {
        let index = self.index();
        let entry = index.get(&id).ok_or(AuthError::UnknownTerminal)?;
        let digest = secret.digest();
        let difference = entry.digest.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(AuthError::BadCredential);
        }
        entry.admit()
    }

    /// Number of terminals in the directory, revoked ones included.
    pub(crate) fn len(&self) -> usize {
        self.state.read().expect("lock").1.len()
    }
}

/// A credential as handed to a terminal: what `faccia terminals add` prints.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The terminal's id, which it sends when it connects.
    pub id: TerminalId,
    /// The municipality the terminal is registered to; its votes are counted there.
    pub municipality: IstatCode,
    /// The terminal's secret; `terminals.json` keeps only its SHA-256.
    pub secret: Secret,
}

impl Credential {
    /// The header of a credentials CSV file.
    pub(crate) const CSV_HEADER: &'static str = "terminal,municipality,secret";

    pub(crate) fn to_csv_line(&self) -> String {
        format!("{},{},{}", self.id, self.municipality, self.secret.to_hex())
    }

    /// Reads a credentials file written by `faccia terminals add --out`.
    ///
    /// # Errors
    /// When the file cannot be read or a line is not `terminal,municipality,secret`.
    pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Credential>> {
        use anyhow::Context;
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut credentials = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if number == 0 && line.trim() == Self::CSV_HEADER || line.trim().is_empty() {
                continue;
            }
            let parse = || -> Option<Credential> {
                let mut fields = line.split(',');
                let id = fields.next()?.trim().parse().ok()?;
                let municipality = IstatCode::parse(fields.next()?)?;
                let secret = Secret::from_hex(fields.next()?).ok()?;
                Some(Credential { id, municipality, secret })
            };
            let credential = parse().with_context(|| format!("{}:{}: expected `{}`", path.display(), number + 1, Self::CSV_HEADER))?;
            credentials.push(credential);
        }
        Ok(credentials)
    }
}

/// Registers `count` new terminals for `municipality` in `data_dir` and returns their
/// credentials (the only time the secrets are seen).
///
/// # Errors
/// Unknown municipality, or the directory file cannot be read or written.
pub fn add_terminals(data_dir: &Path, municipality: IstatCode, count: u32, label: &str) -> Result<Vec<Credential>, RegistryError> {
    add_terminals_bulk(data_dir, &vec![municipality; count as usize], label)
}

/// Registers one terminal per entry of `municipalities`, in one rewrite of the directory.
///
/// # Errors
/// Unknown municipality, or the directory file cannot be read or written.
pub(crate) fn add_terminals_bulk(data_dir: &Path, municipalities: &[IstatCode], label: &str) -> Result<Vec<Credential>, RegistryError> {
    add_terminals_of(data_dir, municipalities, label, None, &Purchase::default())
}

/// Registers `count` terminals of `municipality`, or with `union` of that union of comuni
/// standing in `municipality`, one of its members (the union is the administration they belong
/// to: its bonus, its coverage, `union_index`; their votes keep the comune where they stand),
/// with their purchase recorded (`Purchase::default()`: none), in one rewrite.
///
/// # Errors
/// `InvalidUnion` for a union not registered or a comune not among its members; as
/// `add_terminals`.
pub(crate) fn add_bought_terminals(
    data_dir: &Path,
    municipality: IstatCode,
    union: Option<&str>,
    count: u32,
    label: &str,
    purchase: &Purchase,
) -> Result<Vec<Credential>, RegistryError> {
    if let Some(union) = union {
        check_union_member(data_dir, union, municipality)?;
    }
    add_terminals_of(data_dir, &vec![municipality; count as usize], label, union, purchase)
}

/// Records (or changes) how terminal `id` was bought: the fields `purchase` holds replace the
/// recorded ones, the others stay.
///
/// # Errors
/// Unknown terminal, or the directory file cannot be read or written.
pub(crate) fn set_purchase(data_dir: &Path, id: TerminalId, purchase: &Purchase) -> Result<TerminalRecord, RegistryError> {
    update_terminals(data_dir, |file| {
        let record = file.terminals.iter_mut().find(|t| t.id == id).ok_or(RegistryError::UnknownTerminal(id))?;
        record.purchase = record.purchase.merged(purchase);
        Ok(record.clone())
    })?
}

/// Registers `count` terminals of the union of comuni `union`, standing in `municipality`, one
/// of its member comuni: the union is the administration they belong to (its bonus, its
/// coverage, `union_index`); their votes keep the comune where they stand. The tests'
/// shorthand for `add_bought_terminals` without a purchase.
///
/// # Errors
/// `InvalidUnion` for a union not registered or a comune not among its members; as
/// `add_terminals`.
#[cfg(test)]
pub(crate) fn add_union_terminals(
    data_dir: &Path,
    union: &str,
    municipality: IstatCode,
    count: u32,
    label: &str,
) -> Result<Vec<Credential>, RegistryError> {
    add_bought_terminals(data_dir, municipality, Some(union), count, label, &Purchase::default())
}

/// `InvalidUnion` unless `union` is registered and `municipality` is one of its members.
fn check_union_member(data_dir: &Path, union: &str, municipality: IstatCode) -> Result<(), RegistryError> {
    let Some(record) = super::unions::find_union(data_dir, union)? else {
        return Err(RegistryError::InvalidUnion(format!("union {union} is not registered (faccia unions add)")));
    };
    if !record.members.contains(&municipality.to_string()) {
        return Err(RegistryError::InvalidUnion(format!(
            "comune {municipality} is not a member of union {union} ({}): its members are {}",
            record.name,
            record.members.join(", ")
        )));
    }
    Ok(())
}

fn add_terminals_of(
    data_dir: &Path,
    municipalities: &[IstatCode],
    label: &str,
    union: Option<&str>,
    purchase: &Purchase,
) -> Result<Vec<Credential>, RegistryError> {
    let catalog = Catalog::for_data_dir(data_dir)?;
    if let Some(unknown) = municipalities.iter().find(|m| catalog.municipality(**m).is_none()) {
        return Err(catalog.not_current(*unknown));
    }
    update_terminals(data_dir, |file| {
        let now = now_ms();
        municipalities
            .iter()
            .map(|&municipality| {
                let id = file.next_id.max(1);
                file.next_id = id + 1;
                let secret = Secret::generate();
                file.terminals.push(TerminalRecord {
                    id,
                    municipality: municipality.to_string(),
                    secret_sha256: hex::encode(secret.digest()),
                    added_ms: now,
                    revoked_ms: None,
                    label: label.to_string(),
                    union_code: union.map(str::to_string),
                    purchase: purchase.clone(),
                });
                Credential { id, municipality, secret }
            })
            .collect()
    })
}

/// Revokes a terminal: its next connection is refused, and so are the open ones once the server
/// notices the change.
///
/// # Errors
/// Unknown terminal, or the directory file cannot be read or written.
pub fn revoke_terminal(data_dir: &Path, id: TerminalId) -> Result<(), RegistryError> {
    update_terminals(data_dir, |file| {
        let record = file.terminals.iter_mut().find(|t| t.id == id);
        match record {
            Some(record) => {
                record.revoked_ms.get_or_insert(now_ms());
                Ok(())
            }
            None => Err(RegistryError::UnknownTerminal(id)),
        }
    })?
}

/// The registered terminals, in id order.
///
/// # Errors
/// When the directory file cannot be read.
pub(crate) fn list_terminals(data_dir: &Path) -> Result<Vec<TerminalRecord>, RegistryError> {
    Ok(read_terminals(&terminals_path(data_dir))?.terminals)
}

fn terminals_path(data_dir: &Path) -> PathBuf {
    data_dir.join("terminals.json")
}

fn read_terminals(path: &Path) -> Result<TerminalsFile, RegistryError> {
    let file = super::read_versioned(path, TERMINALS_FORMAT_VERSION, |f: &TerminalsFile| f.version)?;
    Ok(file.unwrap_or(TerminalsFile { version: TERMINALS_FORMAT_VERSION, next_id: 1, terminals: vec![] }))
}

/// Read-modify-write of `terminals.json` under an exclusive lock, replaced atomically.
fn update_terminals<T>(data_dir: &Path, change: impl FnOnce(&mut TerminalsFile) -> T) -> Result<T, RegistryError> {
    let path = terminals_path(data_dir);
    let io = |source| RegistryError::Io { path: path.clone(), source };
    fs::create_dir_all(data_dir).map_err(io)?;
    let lock = File::create(data_dir.join("terminals.lock")).map_err(io)?;
    lock.lock().map_err(io)?;
    let mut file = read_terminals(&path)?;
    let result = change(&mut file);
    super::write_json(&path, &file)?;
    Ok(result)
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Writes credentials as CSV, the format `Credential::read_csv` reads.
///
/// # Errors
/// When the writer fails.
pub(crate) fn write_credentials_csv(mut out: impl Write, credentials: &[Credential]) -> std::io::Result<()> {
    writeln!(out, "{}", Credential::CSV_HEADER)?;
    for credential in credentials {
        writeln!(out, "{}", credential.to_csv_line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminals_add_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let added = add_terminals(dir.path(), IstatCode(1003), 2, "test").unwrap();
        assert_eq!(added.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2]);
        let directory = TerminalDirectory::open(dir.path()).unwrap();
        assert_eq!(directory.authenticate(1, &added[0].secret), Ok(IstatCode(1003)));
        assert_eq!(directory.authenticate(1, &added[1].secret), Err(AuthError::BadCredential));
        assert_eq!(directory.authenticate(9, &added[0].secret), Err(AuthError::UnknownTerminal));
        revoke_terminal(dir.path(), 1).unwrap();
        // The modification time may not move within the filesystem's granularity: force it.
        directory.state.write().unwrap().0 = None;
        directory.reload().unwrap();
        assert_eq!(directory.authenticate(1, &added[0].secret), Err(AuthError::Revoked));
        assert!(matches!(add_terminals(dir.path(), IstatCode(999_999), 1, ""), Err(RegistryError::UnknownMunicipality(_))));
    }

    #[test]
    fn reloads_are_announced_and_damaged_records_let_nobody_in() {
        let dir = tempfile::tempdir().unwrap();
        let added = add_terminals(dir.path(), IstatCode(1003), 2, "").unwrap();
        let directory = TerminalDirectory::open(dir.path()).unwrap();
        let changes = directory.subscribe();
        assert_eq!(directory.check(2), Ok(IstatCode(1003)));
        // Hand-edit the file: terminal 2 now names a municipality that does not exist.
        let path = dir.path().join("terminals.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut file: TerminalsFile = serde_json::from_str(&text).unwrap();
        file.terminals[1].municipality = "999999".into();
        std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
        directory.state.write().unwrap().0 = None;
        assert!(directory.reload().unwrap());
        assert!(changes.has_changed().unwrap(), "the reload is announced");
        assert_eq!(directory.authenticate(2, &added[1].secret), Err(AuthError::UnknownTerminal));
        assert_eq!(directory.check(2), Err(AuthError::UnknownTerminal));
        assert_eq!(directory.check(1), Ok(IstatCode(1003)));
        assert_eq!(directory.check(3), Err(AuthError::UnknownTerminal));
    }

    #[test]
    fn a_purchase_is_recorded_at_add_or_later_and_bad_flags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let purchase = Purchase::parse(Some("Emoticon Srl"), Some("oda:1234"), Some("2026-11-03"), today).unwrap();
        assert_eq!(purchase.order().as_deref(), Some("ODA:1234"));
        let added = add_bought_terminals(dir.path(), IstatCode(1003), None, 1, "", &purchase).unwrap();
        assert_eq!(list_terminals(dir.path()).unwrap()[0].purchase, purchase);
        // Set later: only the fields given change.
        let change = Purchase::parse(None, Some("RdO:77/B"), None, today).unwrap();
        let record = set_purchase(dir.path(), added[0].id, &change).unwrap();
        assert_eq!(record.purchase.supplier.as_deref(), Some("Emoticon Srl"));
        assert_eq!(record.purchase.order().as_deref(), Some("RdO:77/B"));
        assert!(matches!(set_purchase(dir.path(), 99, &change), Err(RegistryError::UnknownTerminal(99))));
        let refused = |s: Option<&str>, o: Option<&str>, b: Option<&str>| Purchase::parse(s, o, b, today).unwrap_err().to_string();
        assert!(refused(Some(" "), None, None).contains("--supplier is empty"));
        assert!(refused(None, Some("MEPA:1"), None).contains("--order \"MEPA:1\" is not an order: give ODA:NUMBER"));
        assert!(refused(None, Some("ODA:"), None).contains("--order"));
        assert!(refused(None, None, Some("3/11/2026")).contains("--bought \"3/11/2026\" is not a date: give YYYY-MM-DD"));
        assert!(refused(None, None, Some("2026-12-01")).contains("--bought 2026-12-01 is in the future"));
    }

    #[test]
    fn a_directory_written_before_purchases_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"version": 1, "next_id": 2, "terminals": [{"id": 1, "municipality": "001003",
            "secret_sha256": "00", "added_ms": 1, "label": "x"}]}"#;
        std::fs::write(dir.path().join("terminals.json"), old).unwrap();
        let list = list_terminals(dir.path()).unwrap();
        assert_eq!(list[0].purchase, Purchase::default());
        // Written back without the fields it does not have.
        set_purchase(dir.path(), 1, &Purchase::default()).unwrap();
        assert!(!std::fs::read_to_string(dir.path().join("terminals.json")).unwrap().contains("supplier"));
    }

    #[test]
    fn credentials_csv_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let added = add_terminals(dir.path(), IstatCode(1003), 3, "").unwrap();
        let path = dir.path().join("creds.csv");
        write_credentials_csv(File::create(&path).unwrap(), &added).unwrap();
        let read = Credential::read_csv(&path).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[2].secret, added[2].secret);
        assert_eq!(read[2].municipality, IstatCode(1003));
    }
}
