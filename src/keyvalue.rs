//! Key-value data for guests (`wasi:keyvalue`) and operators (`jobhost kv`,
//! `/_jobhost/kv/`): the limits on keys and values, which stores a function may open, and
//! pages of keys. The data itself is the store's ([`KeyValues`]), so hosts sharing a
//! PostgreSQL database share it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::FunctionSpec;
use crate::registry::Function;
use crate::sandbox::{KeyValue, KvFailure, KvLink};
use crate::store::{KeyValues, KvError};

/// The longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// The largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Keys a guest's `list-keys` returns at once.
const PAGE: u64 = 1000;
/// The most keys one batch call (`get-many`, `set-many`, `delete-many`) may name.
pub const MAX_BATCH: usize = 1000;
/// The most bytes of values one `get-many` returns: its keys are read a few at a time, and
/// past this it fails, so a guest cannot make the host hold a thousand 1 MiB values.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Keys read from the store at once by `get-many` (each value at most 1 MiB).
const GET_CHUNK: usize = 16;
/// The store `open("")` opens.
pub const DEFAULT_STORE: &str = "default";

/// Whether `key` may be stored; the error says why not.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key may not be empty".to_string());
    }
    if key.contains('\0') {
        return Err("a key may not hold a NUL character".to_string());
    }
    if key.len() > MAX_KEY {
        return Err(format!(
            "the key is {} bytes, more than the {MAX_KEY} a key may have",
            key.len()
        ));
    }
    Ok(())
}

/// Whether keys may be listed by `prefix` (any text but a NUL).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains('\0') {
        return Err("a prefix may not hold a NUL character".to_string());
    }
    Ok(())
}

/// Whether `value` may be stored; the error says why not.
pub fn check_value(key: &str, value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "the value of {key:?} is {} bytes, more than the {MAX_VALUE} (1 MiB) a value may have",
            value.len()
        ));
    }
    Ok(())
}

/// The most keys an operator's list returns at once.
pub const MAX_LIST: u64 = 10_000;

/// What an operator is told when writing to `store` that no function in `specs` lists:
/// it works, but no guest can open it.
pub fn undeclared<'a>(
    store: &str,
    mut specs: impl Iterator<Item = &'a FunctionSpec>,
) -> Option<String> {
    let declared = specs.any(|spec| spec.key_value_stores.iter().any(|s| s == store));
    (!declared).then(|| {
        format!(
            "no function lists {store:?} in key_value_stores, so no guest can open it (the value is kept)"
        )
    })
}

/// The key-value stores of one run: those its function lists in `key_value_stores`.
pub fn for_run(store: &Arc<dyn KeyValues>, function: &Arc<Function>, max_keys: u64) -> KvLink {
    if function.spec.key_value_stores.is_empty() {
        return KvLink(Some(Arc::new(Denied {
            function: function.clone(),
        })));
    }
    KvLink(Some(Arc::new(Buckets {
        store: store.clone(),
        function: function.clone(),
        max_keys,
    })))
}

impl Buckets {
    /// What a guest is told when the store did not answer; the host's log has the details.
    fn failed(&self, e: anyhow::Error) -> KvFailure {
        tracing::error!(function = %self.function.spec.name, "key-value store: {e:#}");
        KvFailure::Other("the host's store failed; see the host's log".to_string())
    }

    fn refused(&self, e: KvError) -> KvFailure {
        match e {
            KvError::Store(e) => self.failed(e),
            other => KvFailure::Other(other.to_string()),
        }
    }
}

fn refused_open(function: &Function, name: &str) -> KvFailure {
    tracing::warn!(
        function = %function.spec.name,
        "key-value store {name:?} refused: add it to key_value_stores of function {}",
        function.spec.name
    );
    KvFailure::AccessDenied
}

/// The store a guest's `open(name)` means.
fn store_name(name: &str) -> &str {
    if name.is_empty() { DEFAULT_STORE } else { name }
}

/// A function that lists no store: every `open` is denied, and says so in the log.
struct Denied {
    function: Arc<Function>,
}

#[async_trait]
impl KeyValue for Denied {
    fn open(&self, name: &str) -> Result<String, KvFailure> {
        Err(refused_open(&self.function, store_name(name)))
    }

    async fn get(&self, _: &str, _: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvFailure> {
        Err(KvFailure::AccessDenied)
    }

    async fn set(&self, _: &str, _: Vec<(String, Vec<u8>)>) -> Result<(), KvFailure> {
        Err(KvFailure::AccessDenied)
    }

    async fn delete(&self, _: &str, _: Vec<String>) -> Result<(), KvFailure> {
        Err(KvFailure::AccessDenied)
    }

    async fn list(&self, _: &str, _: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvFailure> {
        Err(KvFailure::AccessDenied)
    }

    async fn increment(&self, _: &str, _: String, _: u64) -> Result<u64, KvFailure> {
        Err(KvFailure::AccessDenied)
    }
}

/// The stores a function lists, in the host's store.
struct Buckets {
    store: Arc<dyn KeyValues>,
    function: Arc<Function>,
    max_keys: u64,
}

fn checked(keys: &[String]) -> Result<(), KvFailure> {
    if keys.len() > MAX_BATCH {
        return Err(KvFailure::Other(format!(
            "{} keys in one call, more than the {MAX_BATCH} a batch may name",
            keys.len()
        )));
    }
    keys.iter()
        .try_for_each(|k| check_key(k))
        .map_err(KvFailure::Other)
}

#[async_trait]
impl KeyValue for Buckets {
    fn open(&self, name: &str) -> Result<String, KvFailure> {
        let name = store_name(name);
        if self
            .function
            .spec
            .key_value_stores
            .iter()
            .any(|s| s == name)
        {
            Ok(name.to_string())
        } else {
            Err(refused_open(&self.function, name))
        }
    }

    async fn get(&self, store: &str, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvFailure> {
        checked(&keys)?;
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for chunk in keys.chunks(GET_CHUNK) {
            for value in self
                .store
                .get(store, chunk)
                .await
                .map_err(|e| self.failed(e))?
            {
                bytes += value.as_ref().map_or(0, Vec::len);
                if bytes > MAX_BATCH_BYTES {
                    return Err(KvFailure::Other(format!(
                        "the values come to more than {MAX_BATCH_BYTES} bytes (16 MiB) for one call: ask for fewer keys at once"
                    )));
                }
                values.push(value);
            }
        }
        Ok(values)
    }

    async fn set(&self, store: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvFailure> {
        if pairs.len() > MAX_BATCH {
            return Err(KvFailure::Other(format!(
                "{} pairs in one call, more than the {MAX_BATCH} a batch may name",
                pairs.len()
            )));
        }
        for (key, value) in &pairs {
            check_key(key)
                .and_then(|()| check_value(key, value))
                .map_err(KvFailure::Other)?;
        }
        self.store
            .set(store, &pairs, self.max_keys)
            .await
            .map_err(|e| self.refused(e))
    }

    async fn delete(&self, store: &str, keys: Vec<String>) -> Result<(), KvFailure> {
        checked(&keys)?;
        self.store
            .delete(store, &keys)
            .await
            .map(drop)
            .map_err(|e| self.failed(e))
    }

    async fn list(
        &self,
        store: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvFailure> {
        let from = cursor.unwrap_or(0);
        let keys = self
            .store
            .keys(store, "", from, PAGE)
            .await
            .map_err(|e| self.failed(e))?;
        let next = (keys.len() as u64 == PAGE).then_some(from + PAGE);
        Ok((keys, next))
    }

    async fn increment(&self, store: &str, key: String, delta: u64) -> Result<u64, KvFailure> {
        check_key(&key).map_err(KvFailure::Other)?;
        self.store
            .increment(store, &key, delta, self.max_keys)
            .await
            .map_err(|e| self.refused(e))
    }
}
