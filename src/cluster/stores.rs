//! The object stores of a cluster process: the scheduler decodes plans whose scans name
//! `s3://bucket` (DataFusion looks the store up while decoding) and the executors read the
//! files, so both find a bucket's store by its URL, built from the process's `AWS_*`
//! environment as the server's `storage::location` builds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::ObjectStore;
use url::Url;

/// Stores by scheme and authority: `file://` is the local file system; `s3://bucket` (or
/// `s3a://`) is built on first use from the `AWS_*` environment (credentials, endpoint,
/// region, `AWS_ALLOW_HTTP`) and kept.
#[derive(Debug, Default)]
pub(crate) struct EnvStores {
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl EnvStores {
    fn key(url: &Url) -> String {
        format!("{}://{}", url.scheme(), &url[url::Position::BeforeHost..url::Position::AfterPort])
    }
}

impl ObjectStoreRegistry for EnvStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.stores.lock().expect("not poisoned").insert(EnvStores::key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.stores
            .lock()
            .expect("not poisoned")
            .remove(&EnvStores::key(url))
            .ok_or_else(|| DataFusionError::Execution(format!("no object store is registered for {url}")))
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = EnvStores::key(url);
        if let Some(store) = self.stores.lock().expect("not poisoned").get(&key) {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => Arc::new(object_store::local::LocalFileSystem::new()),
            "s3" | "s3a" => {
                let root = Url::parse(&format!("{key}/")).map_err(|e| DataFusionError::Execution(format!("{url}: {e}")))?;
                let options = crate::storage::location::environment_options();
                let (store, _) = object_store::parse_url_opts(&root, options.iter())
                    .map_err(|e| DataFusionError::Execution(format!("the object store of {key}: {}", crate::error_chain(&e))))?;
                Arc::from(store)
            }
            other => {
                return Err(DataFusionError::Execution(format!(
                    "{url}: this cluster process reads file:// and s3:// tables, not {other}://"
                )));
            }
        };
        Ok(Arc::clone(self.stores.lock().expect("not poisoned").entry(key).or_insert(store)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_has_one_store_whatever_the_path() {
        let stores = EnvStores::default();
        let a = stores.get_store(&Url::parse("s3://votes-bucket/a/b.parquet").unwrap()).unwrap();
        let b = stores.get_store(&Url::parse("s3://votes-bucket/").unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(stores.get_store(&Url::parse("gs://x/").unwrap()).unwrap_err().to_string().contains("not gs://"));
    }
}
