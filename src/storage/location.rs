//! Where the tables live: the data directory itself (the default) or a bucket of an
//! S3-compatible object store (`[storage] url = "s3://bucket/prefix"`; `file:///dir` names a
//! directory). Google Cloud Storage and Azure are not compiled in: `object_store`'s and
//! `deltalake`'s `gcp`/`azure` features would add them, at the cost of a larger build.
//!
//! The write-ahead log, the checkpoint, the node id and the other node-local files stay in the
//! data directory whatever the location: they are what makes an acknowledgement fast. The
//! location of a data directory is recorded in `DATA_DIR/storage-url` when the server first
//! starts with one, so that every command given that data directory (`faccia sql`,
//! `compact`, `retention`) reads the same tables, and a server restarted with another URL is
//! refused rather than silently starting an empty table.
//!
//! Credentials, endpoint and region come from the standard environment variables
//! `object_store` and delta-rs read (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`). Commits
//! from several nodes rely on the store's conditional writes (`If-None-Match: *`), as delta-rs
//! 1.x does: no lock service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::storage::StoreError;

/// The file of the data directory that records the tables' location.
pub(crate) const STORAGE_URL_FILE: &str = "storage-url";

/// The root of the dataset: the three tables' directories are below it.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// The root, ending with `/` (`file:///abs/dir/` or `s3://bucket/prefix/`).
    url: Url,
    /// The store of the whole bucket (or file system), as DataFusion scans see it.
    bucket: Arc<dyn ObjectStore>,
    /// The root's path inside `bucket`.
    prefix: ObjectPath,
    /// Options for delta-rs's log stores (from the environment, for object stores).
    options: HashMap<String, String>,
    /// The local directory, when the tables are local.
    local: Option<PathBuf>,
}

impl Location {
    /// The tables in the local directory `dir`.
    ///
    /// # Errors
    /// When `dir` cannot be made absolute.
    pub(crate) fn local(dir: &Path) -> Result<Location, StoreError> {
        let absolute = std::path::absolute(dir).map_err(|source| StoreError::Sync { path: dir.display().to_string(), source })?;
        let url = Url::from_directory_path(&absolute).map_err(|()| StoreError::Location(absolute.display().to_string()))?;
        let prefix = ObjectPath::from_absolute_path(&absolute).map_err(|e| StoreError::Location(format!("{}: {e}", absolute.display())))?;
        Ok(Location {
            url,
            bucket: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            options: HashMap::new(),
            local: Some(absolute),
        })
    }

    /// The tables at `url` (`s3://bucket/prefix` or `file:///dir`), with the credentials and
    /// endpoint of the environment.
    ///
    /// # Errors
    /// `StoreError::Location` for a URL that is not one of these or lacks what its store needs.
    pub(crate) fn parse(url: &str) -> Result<Location, StoreError> {
        let mut parsed =
            Url::parse(url).map_err(|e| StoreError::Location(format!("{url}: {e} (expected s3://bucket/prefix or file:///dir)")))?;
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|()| StoreError::Location(format!("{url}: not a local path")))?;
            return Location::local(&dir);
        }
        if !matches!(parsed.scheme(), "s3" | "s3a") {
            return Err(StoreError::Location(format!(
                "{url}: unsupported scheme {:?}: s3:// (S3 and S3-compatible stores) or file:// (Google Cloud Storage and Azure are not compiled in)",
                parsed.scheme()
            )));
        }
        if !parsed.path().ends_with('/') {
            parsed.set_path(&format!("{}/", parsed.path()));
        }
        let options = environment_options();
        let (bucket, prefix) = object_store::parse_url_opts(&parsed, options.iter())
            .map_err(|e| StoreError::Location(format!("{url}: {}", crate::error_chain(&e))))?;
        Ok(Location { url: parsed, bucket: Arc::from(bucket), prefix, options, local: None })
    }

    /// The location recorded for the data directory `data_dir`, else the directory itself.
    ///
    /// # Errors
    /// An unreadable or invalid record.
    pub(crate) fn of_data_dir(data_dir: &Path) -> Result<Location, StoreError> {
        match std::fs::read_to_string(data_dir.join(STORAGE_URL_FILE)) {
            Ok(recorded) => Location::parse(recorded.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Location::local(data_dir),
            Err(source) => Err(StoreError::Sync { path: data_dir.join(STORAGE_URL_FILE).display().to_string(), source }),
        }
    }

    /// The location the server uses for `data_dir` when configured with `url` (`None`: the
    /// directory): recorded in the data directory the first time, refused when it differs from
    /// the recorded one.
    ///
    /// # Errors
    /// `StoreError::Location` when `url` differs from the URL recorded in `data_dir`, or is invalid.
    pub(crate) fn for_server(data_dir: &Path, url: Option<&str>) -> Result<Location, StoreError> {
        let record = data_dir.join(STORAGE_URL_FILE);
        let recorded = std::fs::read_to_string(&record).ok().map(|r| r.trim().to_string());
        match (url, recorded) {
            (None, None) => Location::local(data_dir),
            (Some(url), None) => {
                let location = Location::parse(url)?;
                crate::fsutil::write_atomic(&record, format!("{url}\n").as_bytes())
                    .map_err(|source| StoreError::Sync { path: record.display().to_string(), source })?;
                Ok(location)
            }
            (Some(url), Some(recorded)) if url.trim_end_matches('/') == recorded.trim_end_matches('/') => Location::parse(url),
            (url, Some(recorded)) => Err(StoreError::Location(format!(
                "the tables of {} are at {recorded} ({}), the configuration says {}: set [storage] url to {recorded}",
                data_dir.display(),
                record.display(),
                url.unwrap_or("the data directory")
            ))),
        }
    }

    /// The URL of the table in the directory `dir` (`…/votes/`).
    pub(crate) fn table_url(&self, dir: &str) -> Url {
        self.url.join(&format!("{dir}/")).expect("a table directory is a valid relative URL")
    }

    /// Options for delta-rs (credentials and endpoint of an object store; none locally).
    pub(crate) fn options(&self) -> &HashMap<String, String> {
        &self.options
    }

    /// The local directory of the tables, when they are local.
    pub(crate) fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// A store rooted at the location: paths are `votes/date=…/part-….parquet`.
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        if let Some(dir) = &self.local
            && let Ok(store) = object_store::local::LocalFileSystem::new_with_prefix(dir)
        {
            return Arc::new(store);
        }
        if self.prefix.as_ref().is_empty() {
            return Arc::clone(&self.bucket);
        }
        Arc::new(PrefixStore::new(Arc::clone(&self.bucket), self.prefix.clone()))
    }

    /// The path inside the bucket of the file `relative` (as the Delta log names it) of the
    /// table in the directory `dir`, for DataFusion scans of explicit files
    /// (`object_store_url`).
    pub(crate) fn scan_path(&self, dir: &str, relative: &str) -> String {
        let path: ObjectPath = self.prefix.parts().chain(ObjectPath::from(dir).parts()).chain(ObjectPath::from(relative).parts()).collect();
        path.to_string()
    }

    /// The object store URL DataFusion scans resolve `scan_path`s with.
    pub(crate) fn object_store_url(&self) -> ObjectStoreUrl {
        let url = &self.url[..url::Position::BeforePath];
        ObjectStoreUrl::parse(if self.local.is_some() { "file://" } else { url }).expect("a scheme and authority")
    }

    /// Registers the bucket's store with `runtime`, so that scans of `scan_path`s find it.
    pub(crate) fn register(&self, runtime: &datafusion::execution::runtime_env::RuntimeEnv) {
        if self.local.is_none() {
            runtime.register_object_store(self.object_store_url().as_ref(), Arc::clone(&self.bucket));
        }
    }
}

/// The object store settings of the environment (`AWS_*`), as the lower-case keys
/// `object_store` and delta-rs take.
pub(crate) fn environment_options() -> HashMap<String, String> {
    std::env::vars().filter(|(key, _)| key.starts_with("AWS_")).map(|(key, value)| (key.to_ascii_lowercase(), value)).collect()
}

/// What `migrate` copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MigrationReport {
    /// Objects copied (data files and log entries).
    pub(crate) objects: usize,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Objects already at the destination with the same size (an interrupted migration resumed).
    pub(crate) already_there: usize,
}

/// Copies the tables in the directories `dirs` of `from` (files and logs) to `to`, as they are: Delta logs name
/// their files relative to the table, so the copy is the same table. Data files go first, then
/// the log entries in version order and `_last_checkpoint` last, so that a reader of `to` never
/// meets a commit whose files are not there yet. Resumable: an object already at `to` with the
/// same size is skipped. `progress` is called after each object with (bytes done, bytes in all).
/// The server must be stopped while it runs (its flushes would commit to `from`).
///
/// # Errors
/// Listing, reading or writing errors; `StoreError::Location` when `to` already holds another
/// table (a log entry `from` does not have, or an object of another size).
pub(crate) async fn migrate(
    from: &Location,
    to: &Location,
    dirs: &[&str],
    mut progress: impl FnMut(u64, u64),
) -> Result<MigrationReport, StoreError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let (source, destination) = (from.store(), to.store());
    let mut copies: Vec<(ObjectPath, u64)> = Vec::new();
    let mut report = MigrationReport::default();
    for dir in dirs {
        let root = ObjectPath::from(*dir);
        let there: HashMap<ObjectPath, u64> = destination.list(Some(&root)).map_ok(|m| (m.location, m.size)).try_collect().await?;
        let mut here: Vec<(ObjectPath, u64)> = source
            .list(Some(&root))
            .map_ok(|m| (m.location, m.size))
            .try_filter(|(path, _)| std::future::ready(!path.filename().is_some_and(|n| n.starts_with('.'))))
            .try_collect()
            .await?;
        let log = |path: &ObjectPath| path.as_ref().contains("/_delta_log/");
        if let Some((extra, _)) = there.iter().find(|(path, _)| log(path) && !here.iter().any(|(p, _)| p == *path)) {
            return Err(StoreError::Location(format!("{} already holds another table: {extra} is not in {}", to.url, from.url)));
        }
        // Data files, then the log by name (versions are zero-padded), `_last_checkpoint` last.
        here.sort_by_key(|(path, _)| (log(path), path.as_ref().ends_with("_last_checkpoint"), path.to_string()));
        for (path, size) in here {
            match there.get(&path) {
                Some(&same) if same == size => report.already_there += 1,
                Some(other) => {
                    return Err(StoreError::Location(format!("{} already holds {path} with {other} bytes, not {size}", to.url)));
                }
                None => copies.push((path, size)),
            }
        }
    }
    let total: u64 = copies.iter().map(|(_, size)| size).sum();
    for (path, size) in copies {
        let bytes = source.get(&path).await?.bytes().await?;
        destination.put(&path, bytes.into()).await?;
        report.objects += 1;
        report.bytes += size;
        progress(report.bytes, total);
    }
    Ok(report)
}
