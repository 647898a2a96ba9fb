//! Who may ask: analysts' bearer tokens.
//!
//! Tokens come from the configuration file (`analyst_tokens`) or `FACCIA_ANALYST_TOKEN`; with
//! none, the server generates one on first start into `DATA_DIR/analyst-token` (mode 0600) and
//! keeps using it. Only SHA-256 digests are held in memory, compared in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
            let tokens = AnalystTokens::new(configured.iter().map(|t| t.trim()));
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
        Ok((AnalystTokens::new([token.as_str()]), TokenSource::File { path, generated }))
    }

    /// Holds the SHA-256 digest of each token given (as is: callers trim; no length check, unlike `resolve`).
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> AnalystTokens {
        AnalystTokens { digests: tokens.into_iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect() }
    }

    /// Whether `token` is one of the tokens, compared in constant time (every digest is
    /// compared whole, whatever matches).
    pub(crate) fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.digests.iter().fold(false, |found, known| {
            let difference = known.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        })
    }

    /// Checks an `authorization` header value: `Bearer TOKEN`.
    ///
    /// # Errors
    /// A message for the client when the header is missing, not a bearer token, or wrong.
    pub(crate) fn check_bearer(&self, header: Option<&str>) -> Result<(), &'static str> {
        let header = header.ok_or("authentication required: send `authorization: Bearer TOKEN`")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or("the authorization header must be `Bearer TOKEN`")?;
        if self.accepts(token.trim()) { Ok(()) } else { Err("unknown analyst token") }
    }
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
        assert!(tokens.accepts(&token) && !tokens.accepts("not-the-token-at-all"));
        assert_eq!(tokens.check_bearer(Some(&format!("Bearer {token}"))), Ok(()));
        assert!(tokens.check_bearer(None).is_err());
        assert!(tokens.check_bearer(Some(&format!("Basic {token}"))).is_err());
        // The second start reads the same token.
        let (again, source) = AnalystTokens::resolve(dir.path(), &[]).unwrap();
        assert_eq!(source, TokenSource::File { path, generated: false });
        assert!(again.accepts(&token));
        // Configured tokens win; a short one is refused with the limit named.
        let (configured, _) = AnalystTokens::resolve(dir.path(), &["a-configured-token-1234".into()]).unwrap();
        assert!(configured.accepts("a-configured-token-1234") && !configured.accepts(&token));
        let error = AnalystTokens::resolve(dir.path(), &["short".into()]).unwrap_err().to_string();
        assert!(error.contains("at least 16"), "{error}");
    }
}
