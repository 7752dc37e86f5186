//! `wasi:keyvalue` (`store`, `atomics`, `batch`, under the `0.2.0-draft` names that
//! wasmtime's and Spin's guests import; `wit/keyvalue/`) for components. The sandbox only
//! carries the calls; which stores a guest may open and what the data is are the
//! [`KeyValue`] the dispatcher gives each run.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::component::{HasData, Resource, ResourceTable};

use super::ComponentState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open store, as the guest holds it. (`pub`: the bindings re-export it.)
#[allow(unreachable_pub)]
pub struct Bucket {
    store: String,
}

/// Why a call failed, as the guest is told (`wasi:keyvalue/store.error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    AccessDenied,
    Other(String),
}

impl From<KvFailure> for store::Error {
    fn from(e: KvFailure) -> store::Error {
        match e {
            KvFailure::AccessDenied => store::Error::AccessDenied,
            KvFailure::Other(why) => store::Error::Other(why),
        }
    }
}

/// What the guest's key-value calls do, for one run.
#[async_trait]
pub trait KeyValue: Send + Sync {
    /// The store `name` stands for (`""` is `default`), if the function may open it.
    fn open(&self, name: &str) -> Result<String, KvFailure>;
    async fn get(&self, store: &str, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvFailure>;
    async fn set(&self, store: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvFailure>;
    async fn delete(&self, store: &str, keys: Vec<String>) -> Result<(), KvFailure>;
    /// A page of keys from `cursor` (where the last page ended), and where the next starts.
    async fn list(
        &self,
        store: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvFailure>;
    async fn increment(&self, store: &str, key: String, delta: u64) -> Result<u64, KvFailure>;
}

/// A run's [`KeyValue`], or none (every store is then denied).
#[derive(Clone, Default)]
pub struct KvLink(pub Option<Arc<dyn KeyValue>>);

/// What the bindings' calls see: the run's resource table and its [`KvLink`].
pub(crate) struct KvView<'a> {
    table: &'a mut ResourceTable,
    link: &'a KvLink,
}

impl KvView<'_> {
    fn kv(&self) -> Result<Arc<dyn KeyValue>, store::Error> {
        self.link.0.clone().ok_or(store::Error::AccessDenied)
    }

    /// The store that `bucket` opened.
    fn store(&self, bucket: &Resource<Bucket>) -> Result<String, store::Error> {
        self.table
            .get(bucket)
            .map(|b| b.store.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
        let store = self.kv()?.open(&identifier)?;
        self.table
            .push(Bucket { store })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let store = self.store(&bucket)?;
        let mut values = self.kv()?.get(&store, vec![key]).await?;
        Ok(values.pop().flatten())
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let store = self.store(&bucket)?;
        Ok(self.kv()?.set(&store, vec![(key, value)]).await?)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), store::Error> {
        let store = self.store(&bucket)?;
        Ok(self.kv()?.delete(&store, vec![key]).await?)
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<bool, store::Error> {
        let store = self.store(&bucket)?;
        let values = self.kv()?.get(&store, vec![key]).await?;
        Ok(values.first().is_some_and(Option::is_some))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, store::Error> {
        let store = self.store(&bucket)?;
        let (keys, cursor) = self.kv()?.list(&store, cursor).await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        let store = self.store(&bucket)?;
        Ok(self.kv()?.increment(&store, key, delta).await?)
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let store = self.store(&bucket)?;
        let values = self.kv()?.get(&store, keys.clone()).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|v| (key, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        let store = self.store(&bucket)?;
        Ok(self.kv()?.set(&store, key_values).await?)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let store = self.store(&bucket)?;
        Ok(self.kv()?.delete(&store, keys).await?)
    }
}

struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

pub(crate) fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    fn view(s: &mut ComponentState) -> KvView<'_> {
        KvView {
            table: &mut s.table,
            link: &s.kv,
        }
    }
    store::add_to_linker::<ComponentState, KvData>(linker, view)?;
    atomics::add_to_linker::<ComponentState, KvData>(linker, view)?;
    batch::add_to_linker::<ComponentState, KvData>(linker, view)
}
