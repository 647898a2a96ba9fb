//! The registry: who may vote and what they vote on.
//!
//! Owns the municipality list (`data/comuni.csv`, ISTAT), the service catalog
//! (`schemas/services.csv`) and the terminal directory (`DATA_DIR/terminals.json`: terminal id →
//! municipality and credential). Both catalogs are compiled into the binary so that faccia runs
//! from any directory; the terminal directory is the only registry state that changes at run
//! time, written by `faccia terminals` and read (and re-read when it changes) by the server.
//!
//! Architecture invariant: the registry never sees the network. It answers "who is terminal 42
//! and is this its secret", and the municipality of a vote always comes from here.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{IstatCode, TerminalId};

/// The municipality registry as shipped: ISTAT 2020 codes with the 2011 census population.
const COMUNI_CSV: &str = include_str!("../data/comuni.csv");
/// The service catalog; ids are stable and appear on the wire and in the data.
const SERVICES_CSV: &str = include_str!("../schemas/services.csv");

/// Municipalities under this many inhabitants are the "piccoli Comuni" the program targets.
pub(crate) const ELIGIBLE_POPULATION_BELOW: u32 = 5_000;

/// Length of a terminal secret in bytes (256 bits: guessing is not an attack).
pub(crate) const SECRET_BYTES: usize = 32;

/// Version of `terminals.json`; bumped on any incompatible change.
const TERMINALS_FORMAT_VERSION: u32 = 1;

/// What can go wrong reading or changing the registry's files (`terminals.json`, `administrations.json`) or parsing a secret.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A registry file (or its directory or lock file) could not be read, written or locked.
    #[error("reading {path}")]
    Io {
        /// The registry file being read or written.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A registry file is not JSON of the expected shape.
    #[error("{path} is not a faccia terminal directory")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error, with its line and column.
        source: serde_json::Error,
    },
    /// A registry file declares a format version this faccia does not read.
    #[error("{path} has format version {found}; this faccia reads version {TERMINALS_FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The format version the file declares.
        found: u32,
    },
    /// An ISTAT code that names no municipality of the built-in registry (`data/comuni.csv`).
    #[error("municipality {0} is not in the registry (data/comuni.csv)")]
    UnknownMunicipality(String),
    /// No registered terminal has this id.
    #[error("terminal {0} is not registered")]
    UnknownTerminal(TerminalId),
    /// A terminal secret is not 64 hexadecimal characters (wrong length, or a character that is not hexadecimal).
    #[error("a terminal secret is {expected} hexadecimal characters; got {found}")]
    SecretFormat {
        /// Length a secret must have: 64 characters (32 bytes in hexadecimal).
        expected: usize,
        /// Length of the text given, in bytes, after trimming surrounding whitespace.
        found: usize,
    },
}

/// One comune of the registry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Municipality {
    pub(crate) code: IstatCode,
    pub(crate) name: String,
    pub(crate) province: String,
    pub(crate) region_code: u8,
    pub(crate) region: String,
    pub(crate) area: String,
    pub(crate) population: u32,
}

impl Municipality {
    /// Whether the 2009 program covers it (fewer than 5,000 inhabitants).
    pub(crate) fn eligible(&self) -> bool {
        self.population < ELIGIBLE_POPULATION_BELOW
    }
}

/// One service of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Service {
    pub(crate) id: u16,
    pub(crate) code: String,
    pub(crate) name_it: String,
    pub(crate) name_en: String,
    /// Typical share of all votes; used by simulated terminals, not by any index.
    pub(crate) share: f64,
}

/// The catalogs compiled into the binary: municipalities and services.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) municipalities: Vec<Municipality>,
    pub(crate) services: Vec<Service>,
    by_code: HashMap<IstatCode, usize>,
}

impl Catalog {
    /// The shipped catalog, parsed once per process.
    pub(crate) fn builtin() -> &'static Catalog {
        static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        CATALOG.get_or_init(|| Catalog::parse(COMUNI_CSV, SERVICES_CSV).expect("the built-in catalogs are valid"))
    }

    fn parse(comuni_csv: &str, services_csv: &str) -> Result<Catalog, csv::Error> {
        let mut municipalities = Vec::new();
        for record in csv::Reader::from_reader(comuni_csv.as_bytes()).records() {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            municipalities.push(Municipality {
                code: IstatCode::parse(&field(0)).expect("ISTAT codes in comuni.csv are numeric"),
                name: field(1),
                province: field(2),
                region_code: field(3).parse().expect("region codes in comuni.csv are numeric"),
                region: field(4),
                area: field(5),
                population: field(6).parse().expect("populations in comuni.csv are numeric"),
            });
        }
        let mut services = Vec::new();
        for record in csv::Reader::from_reader(services_csv.as_bytes()).records() {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            services.push(Service {
                id: field(0).parse().expect("service ids are numeric"),
                code: field(1),
                name_it: field(2),
                name_en: field(3),
                share: field(4).parse().expect("service shares are numeric"),
            });
        }
        let by_code = municipalities.iter().enumerate().map(|(i, m)| (m.code, i)).collect();
        Ok(Catalog { municipalities, services, by_code })
    }

    pub(crate) fn municipality(&self, code: IstatCode) -> Option<&Municipality> {
        self.by_code.get(&code).map(|&i| &self.municipalities[i])
    }

    /// The municipalities the program targets, in registry order.
    pub(crate) fn eligible(&self) -> impl Iterator<Item = &Municipality> {
        self.municipalities.iter().filter(|m| m.eligible())
    }

    #[cfg(test)]
    /// Whether `id` names a service of the catalog.
    pub(crate) fn has_service(&self, id: u16) -> bool {
        self.services.iter().any(|s| s.id == id)
    }

    /// The highest service id; the wire check rejects anything outside `1..=max`.
    pub(crate) fn service_id_max(&self) -> u16 {
        self.services.iter().map(|s| s.id).max().unwrap_or(0)
    }
}

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
type DirectoryState = (Option<SystemTime>, Arc<HashMap<TerminalId, Entry>>);

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

    /// Re-reads the file if its modification time changed. Returns whether it did.
    ///
    /// # Errors
    /// When the file cannot be read or parsed; the previous directory stays in force.
    pub(crate) fn reload(&self) -> Result<bool, RegistryError> {
        let modified = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified.is_some() && self.state.read().expect("lock").0 == modified {
            return Ok(false);
        }
        let file = read_terminals(&self.path)?;
        let catalog = Catalog::builtin();
        let index = file
            .terminals
            .iter()
            .map(|t| {
                let mut digest = [0u8; 32];
                // A record with a damaged digest matches no secret.
                let _ = hex::decode_to_slice(&t.secret_sha256, &mut digest);
                let municipality = IstatCode::parse(&t.municipality).filter(|code| catalog.municipality(*code).is_some());
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

    /// Checks a terminal's credential and returns its registered municipality.
    ///
    /// # Errors
    /// Unknown id, wrong secret (compared in constant time) or revoked terminal.
    pub(crate) fn authenticate(&self, id: TerminalId, secret: &Secret) -> Result<IstatCode, AuthError> {
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
    let catalog = Catalog::builtin();
    if let Some(unknown) = municipalities.iter().find(|m| catalog.municipality(**m).is_none()) {
        return Err(RegistryError::UnknownMunicipality(unknown.to_string()));
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
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TerminalsFile { version: TERMINALS_FORMAT_VERSION, next_id: 1, terminals: vec![] });
        }
        Err(source) => return Err(RegistryError::Io { path: path.to_path_buf(), source }),
    };
    let file: TerminalsFile = serde_json::from_str(&text).map_err(|source| RegistryError::Parse { path: path.to_path_buf(), source })?;
    if file.version != TERMINALS_FORMAT_VERSION {
        return Err(RegistryError::Version { path: path.to_path_buf(), found: file.version });
    }
    Ok(file)
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
    let text = serde_json::to_string_pretty(&file).expect("the terminal directory serialises");
    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(io)?;
    Ok(result)
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

// ---------------------------------------------------------------------------------------------
// Administrations: what the program's bonus rule needs beyond the ISTAT list.

/// The 2009 bonus for a terminal or a turnkey kit, once per administration.
pub(crate) const BONUS_TERMINAL_EUR: u32 = 400;
/// Added when the administration had no digital signature.
pub(crate) const BONUS_NO_DIGITAL_SIGNATURE_EUR: u32 = 50;
/// Added when the administration had no certified e-mail box (PEC).
pub(crate) const BONUS_NO_PEC_EUR: u32 = 10;
/// The most one administration could receive.
pub(crate) const BONUS_MAX_EUR: u32 = 460;

/// Version of `administrations.json`.
const ADMINISTRATIONS_FORMAT_VERSION: u32 = 1;

/// What the registry records of one administration: whether it already has a digital signature
/// and a certified e-mail box. `None`: not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AdministrationRecord {
    /// Six-digit ISTAT code.
    pub(crate) municipality: String,
    #[serde(default)]
    pub(crate) digital_signature: Option<bool>,
    #[serde(default)]
    pub(crate) pec: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AdministrationsFile {
    version: u32,
    administrations: Vec<AdministrationRecord>,
}

/// The bonus an administration would receive under the 2009 rule: 400 € for the terminal or kit
/// if it is eligible (under 5,000 inhabitants), plus 50 € if it is known to lack a digital
/// signature and 10 € if it is known to lack a PEC box, at most 460 €, once. `None` when it is
/// not eligible. An attribute not recorded adds nothing.
pub(crate) fn bonus_eur(eligible: bool, digital_signature: Option<bool>, pec: Option<bool>) -> Option<u32> {
    if !eligible {
        return None;
    }
    let signature = if digital_signature == Some(false) { BONUS_NO_DIGITAL_SIGNATURE_EUR } else { 0 };
    let pec = if pec == Some(false) { BONUS_NO_PEC_EUR } else { 0 };
    Some((BONUS_TERMINAL_EUR + signature + pec).min(BONUS_MAX_EUR))
}

fn administrations_path(data_dir: &Path) -> PathBuf {
    data_dir.join("administrations.json")
}

/// The recorded attributes of administrations, in ISTAT order (an absent file records none).
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub(crate) fn list_administrations(data_dir: &Path) -> Result<Vec<AdministrationRecord>, RegistryError> {
    let path = administrations_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(RegistryError::Io { path, source }),
    };
    let file: AdministrationsFile = serde_json::from_str(&text).map_err(|source| RegistryError::Parse { path: path.clone(), source })?;
    if file.version != ADMINISTRATIONS_FORMAT_VERSION {
        return Err(RegistryError::Version { path, found: file.version });
    }
    Ok(file.administrations)
}

/// Records whether an administration has a digital signature and a PEC box (`None` leaves an
/// attribute as it was).
///
/// # Errors
/// Unknown municipality, or the file cannot be read or written.
pub(crate) fn set_administration(
    data_dir: &Path,
    municipality: IstatCode,
    digital_signature: Option<bool>,
    pec: Option<bool>,
) -> Result<AdministrationRecord, RegistryError> {
    if Catalog::builtin().municipality(municipality).is_none() {
        return Err(RegistryError::UnknownMunicipality(municipality.to_string()));
    }
    let mut administrations = list_administrations(data_dir)?;
    let code = municipality.to_string();
    let index = match administrations.iter().position(|a| a.municipality == code) {
        Some(index) => index,
        None => {
            administrations.push(AdministrationRecord { municipality: code, digital_signature: None, pec: None });
            administrations.len() - 1
        }
    };
    let record = &mut administrations[index];
    record.digital_signature = digital_signature.or(record.digital_signature);
    record.pec = pec.or(record.pec);
    let record = record.clone();
    administrations.sort_by(|a, b| a.municipality.cmp(&b.municipality));
    let file = AdministrationsFile { version: ADMINISTRATIONS_FORMAT_VERSION, administrations };
    let path = administrations_path(data_dir);
    let text = serde_json::to_string_pretty(&file).expect("the administrations file serialises");
    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| RegistryError::Io { path, source })?;
    Ok(record)
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
    fn builtin_catalog_holds_the_registry() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.municipalities.len(), 7904);
        assert_eq!(catalog.eligible().count(), 5490);
        let aglie = catalog.municipality(IstatCode(1001)).expect("Agliè");
        assert_eq!(aglie.name, "Agliè");
        assert_eq!(aglie.province, "TO");
        assert!(aglie.eligible());
        assert_eq!(catalog.services[0].id, 1);
        assert!(catalog.has_service(1) && !catalog.has_service(0));
        let share: f64 = catalog.services.iter().map(|s| s.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "service shares sum to 1, got {share}");
    }

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
    fn bonus_follows_the_2009_rule() {
        // 400 € for the terminal; +50 € without a digital signature; +10 € without PEC.
        assert_eq!(bonus_eur(true, Some(true), Some(true)), Some(400));
        assert_eq!(bonus_eur(true, Some(false), Some(true)), Some(450));
        assert_eq!(bonus_eur(true, Some(true), Some(false)), Some(410));
        assert_eq!(bonus_eur(true, Some(false), Some(false)), Some(460));
        assert_eq!(bonus_eur(true, None, None), Some(400));
        assert_eq!(bonus_eur(false, Some(false), Some(false)), None);
    }

    #[test]
    fn administration_attributes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_administrations(dir.path()).unwrap().is_empty());
        set_administration(dir.path(), IstatCode(1003), Some(false), None).unwrap();
        let record = set_administration(dir.path(), IstatCode(1003), None, Some(true)).unwrap();
        assert_eq!((record.digital_signature, record.pec), (Some(false), Some(true)));
        assert_eq!(list_administrations(dir.path()).unwrap(), vec![record]);
        assert!(matches!(set_administration(dir.path(), IstatCode(999_999), None, None), Err(RegistryError::UnknownMunicipality(_))));
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
