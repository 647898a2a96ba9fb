//! What analysts reach over the network: their credentials (bearer tokens) and the shared SQL
//! service that Flight SQL (`flight`) and HTTP (`http`) both call, with its limits.
//!
//! Tokens come from the configuration file (`analyst_tokens`) or `FACCIA_ANALYST_TOKEN`; with
//! none, the server generates one on first start into `DATA_DIR/analyst-token` (mode 0600) and
//! keeps using it. Only SHA-256 digests are held in memory, compared in constant time.
//!
//! Architecture invariant: statements from the network are read-only — no DDL, no DML, no
//! `SET`, no `COPY` — so an analyst can never write to the server's disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::QueryLimits;

/// The file a generated token is kept in, inside the data directory.
pub const TOKEN_FILE: &str = "analyst-token";
/// The environment variable that gives a token.
pub const TOKEN_ENV: &str = "FACCIA_ANALYST_TOKEN";
/// Shortest token accepted: 16 characters are 96+ bits of a random token, not a password.
pub const TOKEN_CHARS_MIN: usize = 16;
/// Bytes of randomness in a generated token (written as hexadecimal).
const GENERATED_TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AnalystError {
    #[error("an analyst token has {found} characters; at least {TOKEN_CHARS_MIN} are required (analyst_tokens, {TOKEN_ENV})")]
    TokenTooShort { found: usize },
    #[error("{path}")]
    TokenFile { path: PathBuf, source: std::io::Error },
}

/// Where the tokens in force came from (for the start-up log; never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Configured(usize),
    File { path: PathBuf, generated: bool },
}

/// The analyst tokens in force, as SHA-256 digests.
#[derive(Debug, Clone)]
pub struct AnalystTokens {
    digests: Vec<[u8; 32]>,
}

impl AnalystTokens {
    /// The configured tokens, or the data directory's token file (generated on first start).
    ///
    /// # Errors
    /// A configured token shorter than `TOKEN_CHARS_MIN`, or a token file that cannot be read
    /// or created.
    pub fn resolve(data_dir: &Path, configured: &[String]) -> Result<(AnalystTokens, TokenSource), AnalystError> {
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

    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> AnalystTokens {
        AnalystTokens { digests: tokens.into_iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect() }
    }

    /// Whether `token` is one of the tokens, compared in constant time (every digest is
    /// compared whole, whatever matches).
    pub fn accepts(&self, token: &str) -> bool {
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
    pub fn check_bearer(&self, header: Option<&str>) -> Result<(), &'static str> {
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

/// Why a statement from an analyst was not answered.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("the statement is {found} bytes; sql_bytes_max is {max}")]
    TooLong { found: usize, max: usize },
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Execution(String),
    #[error("the result has more than {max} rows (http_result_rows_max); aggregate it, or use Flight SQL, which streams")]
    TooManyRows { max: usize },
}

/// The SQL context shared by the analysts' endpoints, with their limits.
pub struct SqlService {
    pub ctx: SessionContext,
    pub tokens: AnalystTokens,
    pub limits: QueryLimits,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for SqlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlService").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl SqlService {
    pub fn new(ctx: SessionContext, tokens: AnalystTokens, limits: QueryLimits) -> SqlService {
        let permits = Arc::new(Semaphore::new(limits.concurrent_queries_max.max(1)));
        SqlService { ctx, tokens, limits, permits }
    }

    /// Plans a read-only statement.
    ///
    /// # Errors
    /// Too long, not read-only, or not valid SQL over these tables.
    pub async fn plan(&self, sql: &str) -> Result<DataFrame, SqlError> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(SqlError::TooLong { found: sql.len(), max: self.limits.sql_bytes_max });
        }
        let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let sql = number_placeholders(sql);
        self.ctx.sql_with_options(&sql, read_only).await.map_err(|e| SqlError::Plan(message(&e)))
    }

    /// Waits for a turn among `concurrent_queries_max`; hold the permit while the query runs.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.permits).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Runs a planned statement as a stream of batches.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn stream(&self, frame: DataFrame) -> Result<SendableRecordBatchStream, SqlError> {
        frame.execute_stream().await.map_err(|e| SqlError::Execution(message(&e)))
    }

    /// Runs a statement and collects at most `http_result_rows_max` rows.
    ///
    /// # Errors
    /// As `plan`, execution errors, or a result past the row limit.
    pub async fn collect(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let frame = self.plan(sql).await?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let _permit = self.permit().await;
        let mut stream = self.stream(frame).await?;
        let (mut batches, mut rows) = (Vec::new(), 0);
        while let Some(batch) = stream.try_next().await.map_err(|e| SqlError::Execution(message(&e)))? {
            rows += batch.num_rows();
            if rows > self.limits.http_result_rows_max {
                return Err(SqlError::TooManyRows { max: self.limits.http_result_rows_max });
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }
}

/// Rewrites JDBC/ADBC-style `?` placeholders as DataFusion's positional `$1`, `$2`, …: only the
/// characters the SQL tokenizer reads as a `?` placeholder are replaced, so string literals and
/// comments stay byte for byte. Text that does not tokenize is returned unchanged for the
/// planner to report.
pub fn number_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else { return sql.to_string() };
    // (line, column) of every `?` placeholder, 1-based, in order.
    let mut marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    marks.reverse();
    let (mut out, mut position) = (String::with_capacity(sql.len() + 8), 0);
    let (mut line, mut column) = (1, 1);
    for c in sql.chars() {
        if c == '?' && marks.last() == Some(&(line, column)) {
            marks.pop();
            position += 1;
            out.push_str(&format!("${position}"));
        } else {
            out.push(c);
        }
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    out
}

/// DataFusion's message, which already holds its causes.
pub fn message(error: &DataFusionError) -> String {
    error.to_string()
}

/// The output schema of a plan (for prepared statements: before parameters are bound).
pub fn plan_schema(plan: &LogicalPlan) -> SchemaRef {
    Arc::new(plan.schema().as_arrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_positional_placeholders() {
        assert_eq!(
            number_placeholders("SELECT '?', 'it''s' AS q, x FROM t WHERE a = ? AND b > ? -- why?"),
            "SELECT '?', 'it''s' AS q, x FROM t WHERE a = $1 AND b > $2 -- why?"
        );
        assert_eq!(number_placeholders("SELECT\n  ?,\n ?"), "SELECT\n  $1,\n $2");
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }

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
