//! Who may ask: analysts' bearer tokens.
//!
//! Tokens come from the configuration file (`analyst_tokens`) or `FACCIA_ANALYST_TOKEN`; with
//! none, the server generates one on first start into `DATA_DIR/analyst-token` (mode 0600) and
//! keeps using it; these see everything. Scoped tokens (`faccia tokens add --scope …`) are
//! kept in `DATA_DIR/tokens.json` (mode 0600) as SHA-256 digests with their scope, label, id
//! and creation time — never the token — and a running server reads the file again when it
//! changes (its modification time, length or inode), so additions and revocations take effect
//! at the next request. Only SHA-256 digests are held in memory, compared in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::query::scope::{Scope, ScopeError};

/// The file of scoped tokens, inside the data directory.
pub const SCOPED_TOKENS_FILE: &str = "tokens.json";
/// Version of `tokens.json`'s format.
const SCOPED_TOKENS_VERSION: u32 = 1;

/// The file a generated token is kept in, inside the data directory.
pub const TOKEN_FILE: &str = "analyst-token";
/// The environment variable that gives a token.
pub(crate) const TOKEN_ENV: &str = "FACCIA_ANALYST_TOKEN";
/// Shortest token accepted: 16 characters are 96+ bits of a random token, not a password.
pub(crate) const TOKEN_CHARS_MIN: usize = 16;
/// Bytes of randomness in a generated token (written as hexadecimal).
const GENERATED_TOKEN_BYTES: usize = 32;

/// Why the analyst tokens could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnalystError {
    /// A configured token, or the token file's, is shorter than `TOKEN_CHARS_MIN` (16).
    #[error("an analyst token has {found} characters; at least {TOKEN_CHARS_MIN} are required (analyst_tokens, {TOKEN_ENV})")]
    TokenTooShort {
        /// The token's length once trimmed, in bytes (characters, for an ASCII token).
        found: usize,
    },
    /// The token file could not be read, or could not be created and written.
    #[error("{path}")]
    TokenFile {
        /// The token file (`DATA_DIR/analyst-token`).
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Where the tokens in force came from (for the start-up log; never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// Given in the configuration (`analyst_tokens`, `--analyst-token` or `FACCIA_ANALYST_TOKEN`); how many tokens.
    Configured(usize),
    /// From the token file in the data directory.
    File {
        /// The token file (`DATA_DIR/analyst-token`).
        path: PathBuf,
        /// Whether this start generated it (first start) rather than read it.
        generated: bool,
    },
}

/// The analyst tokens in force, as SHA-256 digests.
#[derive(Debug, Clone)]
pub(crate) struct AnalystTokens {
    digests: Vec<[u8; 32]>,
    /// The scoped tokens of `DATA_DIR/tokens.json`; `None` when built without a data directory.
    scoped: Option<Arc<ScopedTokens>>,
}

/// The scoped tokens as last read, and what identified the file then.
#[derive(Debug)]
struct ScopedTokens {
    path: PathBuf,
    state: Mutex<(Option<FileStamp>, Vec<ScopedDigest>)>,
}

/// A scoped token's SHA-256 digest and its scope.
type ScopedDigest = ([u8; 32], Scope);

/// What changes when `tokens.json` is replaced: (modification time, length, inode).
type FileStamp = (std::time::SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl ScopedTokens {
    /// The (digest, scope) pairs in force: read again when the file changed. A file that
    /// cannot be read or parsed admits no scoped token (fail closed) until it is fixed.
    fn current(&self) -> Vec<([u8; 32], Scope)> {
        let mut state = self.state.lock().expect("scoped tokens lock");
        let now = stamp(&self.path);
        if state.0.is_none() || now != state.0 {
            let read = read_tokens_file(&self.path).map(|f| {
                f.tokens
                    .into_iter()
                    .filter_map(|t| {
                        let digest: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                        Some((digest, Scope::parse(&t.scope).ok()?))
                    })
                    .collect()
            });
            match read {
                Ok(tokens) => *state = (now, tokens),
                Err(e) => {
                    tracing::warn!(error = %e, "scoped tokens unreadable: none admitted until fixed");
                    *state = (None, Vec::new());
                }
            }
        }
        state.1.clone()
    }
}

/// Whether two digests are equal, comparing every byte whatever differs.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AnalystTokens {
    /// The configured tokens, or the data directory's token file (generated on first start).
    ///
    /// # Errors
    /// A configured token shorter than `TOKEN_CHARS_MIN`, or a token file that cannot be read
    /// or created.
    pub(crate) fn resolve(data_dir: &Path, configured: &[String]) -> Result<(AnalystTokens, TokenSource), AnalystError> {
        if let Some(short) = configured.iter().find(|t| t.trim().len() < TOKEN_CHARS_MIN) {
            return Err(AnalystError::TokenTooShort { found: short.trim().len() });
        }
        if !configured.is_empty() {
            let tokens = AnalystTokens::new(configured.iter().map(|t| t.trim())).with_scoped(data_dir);
            return Ok((tokens, TokenSource::Configured(configured.len())));
        }
        let path = data_dir.join(TOKEN_FILE);
        let file_error = |source| AnalystError::TokenFile { path: path.clone(), source };
        let (token, generated) = match std::fs::read_to_string(&path) {
            Ok(text) => (text.trim().to_string(), false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (generate_token_file(&path).map_err(file_error)?, true),
            Err(e) => return Err(file_error(e)),
        };
        if token.len() < TOKEN_CHARS_MIN {
            return Err(AnalystError::TokenTooShort { found: token.len() });
        }
        Ok((AnalystTokens::new([token.as_str()]).with_scoped(data_dir), TokenSource::File { path, generated }))
    }

    /// Holds the SHA-256 digest of each token given (as is: callers trim; no length check, unlike `resolve`).
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> AnalystTokens {
        AnalystTokens { digests: tokens.into_iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect(), scoped: None }
    }

    /// These tokens plus the scoped tokens of `data_dir`'s `tokens.json`.
    fn with_scoped(self, data_dir: &Path) -> AnalystTokens {
        let scoped = ScopedTokens { path: data_dir.join(SCOPED_TOKENS_FILE), state: Mutex::new((None, Vec::new())) };
        AnalystTokens { scoped: Some(Arc::new(scoped)), ..self }
    }

    /// The scope of `token`: everything for an analyst token, the recorded scope for a token
    /// of `tokens.json` (as the file is now); `None` for an unknown token. Every digest is
    /// compared whole.
    pub(crate) fn scope_of(&self, token: &str) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let analyst = self.digests.iter().fold(false, |found, known| found | same(known, &digest));
        let scoped = self.scoped.as_ref().map(|s| s.current()).unwrap_or_default();
        let found = scoped.into_iter().fold(None, |found, (known, scope)| if same(&known, &digest) { Some(scope) } else { found });
        if analyst { Some(Scope::Everything) } else { found }
    }

    /// The scope of an `authorization` header value: `Bearer TOKEN`.
    ///
    /// # Errors
    /// A message for the client when the header is missing, not a bearer token, or unknown
    /// (or revoked).
    pub(crate) fn authorize(&self, header: Option<&str>) -> Result<Scope, &'static str> {
        let header = header.ok_or("authentication required: send `authorization: Bearer TOKEN`")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or("the authorization header must be `Bearer TOKEN`")?;
        self.scope_of(token.trim()).ok_or("unknown analyst token")
    }
}

/// One scoped token as `tokens.json` records it (never the token itself).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// The token's id (`faccia tokens revoke ID`), never reused.
    pub id: u64,
    /// SHA-256 digest of the token, in hexadecimal.
    pub sha256: String,
    /// The scope, as `--scope` gives it (`Scope`'s text).
    pub scope: String,
    /// Who or what the token is for (free text).
    pub label: String,
    /// When it was created, in milliseconds since the Unix epoch (UTC).
    pub created_ms: i64,
}

/// `tokens.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct TokensFile {
    version: u32,
    next_id: u64,
    tokens: Vec<TokenRecord>,
}

/// Why `faccia tokens` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The scope is not a scope, or names no municipality, region or registered union.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// `tokens.json` cannot be read, parsed or written.
    #[error("{path}: {message}")]
    File {
        /// `DATA_DIR/tokens.json`.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No token has this id (never created, or revoked already).
    #[error("no token has id {0} (faccia tokens list)")]
    UnknownId(u64),
}

fn read_tokens_file(path: &Path) -> Result<TokensFile, TokensError> {
    let error = |message: String| TokensError::File { path: path.to_path_buf(), message };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TokensFile { version: SCOPED_TOKENS_VERSION, ..TokensFile::default() });
        }
        Err(e) => return Err(error(e.to_string())),
    };
    let file: TokensFile = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    if file.version != SCOPED_TOKENS_VERSION {
        return Err(error(format!("version {} is not {SCOPED_TOKENS_VERSION}, the one this release reads", file.version)));
    }
    Ok(file)
}

/// Replaces `tokens.json` atomically (a temporary file of mode 0600, synced, renamed).
fn write_tokens_file(path: &Path, file: &TokensFile) -> Result<(), TokensError> {
    use std::os::unix::fs::OpenOptionsExt;
    let error = |e: std::io::Error| TokensError::File { path: path.to_path_buf(), message: e.to_string() };
    let tmp = path.with_file_name(format!(".{SCOPED_TOKENS_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(error)?;
    out.write_all(serde_json::to_string_pretty(file).expect("the tokens file serialises").as_bytes()).map_err(error)?;
    out.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)?;
    crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(error)
}

/// Creates a token of `scope` (a union must be registered): returns its record and the token,
/// 64 random hexadecimal characters, which is stored nowhere (only its digest).
///
/// # Errors
/// `TokensError::Scope` for an unknown union; `File` when `tokens.json` cannot be read or written.
pub fn add_token(data_dir: &Path, scope: &Scope, label: &str) -> Result<(TokenRecord, String), TokensError> {
    scope.check_union(data_dir)?;
    let path = data_dir.join(SCOPED_TOKENS_FILE);
    let mut file = read_tokens_file(&path)?;
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = hex::encode(bytes);
    file.next_id = file.next_id.max(file.tokens.iter().map(|t| t.id).max().unwrap_or(0)) + 1;
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let record = TokenRecord {
        id: file.next_id,
        sha256: hex::encode(Sha256::digest(token.as_bytes())),
        scope: scope.to_string(),
        label: label.to_string(),
        created_ms,
    };
    file.tokens.push(record.clone());
    write_tokens_file(&path, &file)?;
    Ok((record, token))
}

/// The scoped tokens (records: never the token).
///
/// # Errors
/// When `tokens.json` cannot be read.
pub fn list_tokens(data_dir: &Path) -> Result<Vec<TokenRecord>, TokensError> {
    Ok(read_tokens_file(&data_dir.join(SCOPED_TOKENS_FILE))?.tokens)
}

/// Removes the token `id`: a running server refuses it from its next request.
///
/// # Errors
/// `UnknownId`, or when `tokens.json` cannot be read or written.
pub fn revoke_token(data_dir: &Path, id: u64) -> Result<TokenRecord, TokensError> {
    let path = data_dir.join(SCOPED_TOKENS_FILE);
    let mut file = read_tokens_file(&path)?;
    let at = file.tokens.iter().position(|t| t.id == id).ok_or(TokensError::UnknownId(id))?;
    let record = file.tokens.remove(at);
    write_tokens_file(&path, &file)?;
    Ok(record)
}

fn generate_token_file(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_generated_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, source) = AnalystTokens::resolve(dir.path(), &[]).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(source, TokenSource::File { path: path.clone(), generated: true });
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
        assert!(tokens.scope_of(&token) == Some(Scope::Everything) && tokens.scope_of("not-the-token-at-all").is_none());
        assert_eq!(tokens.authorize(Some(&format!("Bearer {token}"))), Ok(Scope::Everything));
        assert!(tokens.authorize(None).is_err());
        assert!(tokens.authorize(Some(&format!("Basic {token}"))).is_err());
        // The second start reads the same token.
        let (again, source) = AnalystTokens::resolve(dir.path(), &[]).unwrap();
        assert_eq!(source, TokenSource::File { path, generated: false });
        assert!(again.scope_of(&token).is_some());
        // Configured tokens win; a short one is refused with the limit named.
        let (configured, _) = AnalystTokens::resolve(dir.path(), &["a-configured-token-1234".into()]).unwrap();
        assert!(configured.scope_of("a-configured-token-1234").is_some() && configured.scope_of(&token).is_none());
        let error = AnalystTokens::resolve(dir.path(), &["short".into()]).unwrap_err().to_string();
        assert!(error.contains("at least 16"), "{error}");
    }

    #[test]
    fn scoped_tokens_are_stored_as_digests_and_seen_at_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (tokens, _) = AnalystTokens::resolve(dir.path(), &[]).unwrap();
        let scope = Scope::parse("municipality:001003").unwrap();
        let (record, token) = add_token(dir.path(), &scope, "town hall").unwrap();
        assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = dir.path().join(SCOPED_TOKENS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token) && text.contains(&record.sha256), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(tokens.authorize(Some(&format!("Bearer {token}"))), Ok(scope.clone()));
        let (second, other) = add_token(dir.path(), &Scope::parse("region:Lazio").unwrap(), "").unwrap();
        assert_eq!(second.id, record.id + 1);
        assert_eq!(tokens.scope_of(&other).map(|s| s.to_string()).as_deref(), Some("region:Lazio"));
        assert_eq!(revoke_token(dir.path(), record.id).unwrap().id, record.id);
        assert_eq!(tokens.scope_of(&token), None);
        assert!(tokens.scope_of(&other).is_some());
        assert!(matches!(revoke_token(dir.path(), record.id), Err(TokensError::UnknownId(_))));
        let unknown = add_token(dir.path(), &Scope::Union("NOPE".into()), "").unwrap_err().to_string();
        assert!(unknown.contains("union NOPE is not registered"), "{unknown}");
        // A token revoked and re-added never gets the old id back.
        assert_eq!(add_token(dir.path(), &scope, "").unwrap().0.id, second.id + 1);
    }
}
