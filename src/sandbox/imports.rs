//! Host imports beyond WASI: configuration through `wasi:config/store` (both the
//! `0.2.0-rc.1` names wasmtime ships and the `0.2.0-draft` names Spin and wasmCloud guests
//! import) and `jobhost.config_get` for core modules.
//!
//! Both `wasi:config` versions are bound here rather than through wasmtime-wasi-config:
//! that crate serves a fixed map of strings, and a value configured from an environment
//! variable that is not set must answer the guest that reads it with an error (and only
//! that guest), which a fixed map cannot say.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::HasData;
use wasmtime::{Caller, Extern, Linker};

use super::{ComponentState, ModuleState};
use crate::config::Setting;

macro_rules! wasi_config {
    ($module:ident, $wit:tt) => {
        mod $module {
            wasmtime::component::bindgen!({
                inline: $wit,
                world: "wasi:config/imports",
                imports: { default: trappable },
            });
        }

        impl $module::wasi::config::store::Host for &GuestConfig {
            fn get(
                &mut self,
                key: String,
            ) -> wasmtime::Result<Result<Option<String>, $module::wasi::config::store::Error>> {
                Ok(GuestConfig::get(self, &key)
                    .map_err($module::wasi::config::store::Error::Upstream))
            }

            fn get_all(
                &mut self,
            ) -> wasmtime::Result<Result<Vec<(String, String)>, $module::wasi::config::store::Error>>
            {
                Ok(Ok(self.all()))
            }
        }
    };
}

// The two versions differ in their package line only.
wasi_config!(
    rc1,
    "
    package wasi:config@0.2.0-rc.1;
    interface store {
        variant error { upstream(string), io(string) }
        get: func(key: string) -> result<option<string>, error>;
        get-all: func() -> result<list<tuple<string, string>>, error>;
    }
    world imports { import store; }
    "
);
wasi_config!(
    draft,
    "
    package wasi:config@0.2.0-draft;
    interface store {
        variant error { upstream(string), io(string) }
        get: func(key: string) -> result<option<string>, error>;
        get-all: func() -> result<list<tuple<string, string>>, error>;
    }
    world imports { import store; }
    "
);

/// A function's configuration as guests read it: its `config` over the shared table,
/// shared by every invocation of one function version.
#[derive(Clone, Default)]
pub struct GuestConfig {
    values: Arc<BTreeMap<String, Setting>>,
    /// Named in the log: a synchronous run has no span to name it (`dispatch`).
    function: Arc<str>,
}

impl GuestConfig {
    pub fn new(function: &str, config: &BTreeMap<String, Setting>) -> GuestConfig {
        GuestConfig {
            values: Arc::new(config.clone()),
            function: function.into(),
        }
    }

    /// The value of `key`; `Err` (logged) when it comes from an environment variable that
    /// is not set.
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value.clone())),
            Some(Err(unset)) => {
                tracing::warn!(
                    function = %self.function,
                    "the guest read config `{key}`, which has no value: {unset}"
                );
                Err(unset.to_string())
            }
        }
    }

    /// Every key that has a value; one whose variable is not set is left out.
    fn all(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone().ok()?)))
            .collect()
    }
}

struct Config;

impl HasData for Config {
    type Data<'a> = &'a GuestConfig;
}

pub(crate) fn add_config_to_component_linker(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    rc1::wasi::config::store::add_to_linker::<ComponentState, Config>(linker, |s| &s.config)?;
    draft::wasi::config::store::add_to_linker::<ComponentState, Config>(linker, |s| &s.config)?;
    Ok(())
}

/// Longest key `config_get` reads; a longer one is a guest bug, not a lookup.
const MAX_KEY_LEN: usize = 64 * 1024;

/// `jobhost.config_get(key_ptr, key_len, buf_ptr, buf_len) -> i32`: the value's length,
/// written to the buffer only when it fits; -1 when the key is not set; -2 when its value
/// comes from an environment variable that is not set (the host logs which).
pub(crate) fn add_config_to_module_linker(
    linker: &mut Linker<ModuleState>,
) -> wasmtime::Result<()> {
    linker.func_wrap(
        "jobhost",
        "config_get",
        |mut caller: Caller<'_, ModuleState>,
         key_ptr: i32,
         key_len: i32,
         buf_ptr: i32,
         buf_len: i32|
         -> wasmtime::Result<i32> {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                wasmtime::bail!("jobhost.config_get: the module exports no memory named `memory`");
            };
            let key_len = key_len as u32 as usize;
            if key_len > MAX_KEY_LEN {
                wasmtime::bail!(
                    "jobhost.config_get: key of {key_len} bytes is longer than {MAX_KEY_LEN}"
                );
            }
            let mut key = vec![0; key_len];
            memory.read(&caller, key_ptr as u32 as usize, &mut key)?;
            let Ok(key) = String::from_utf8(key) else {
                wasmtime::bail!("jobhost.config_get: the key is not UTF-8");
            };
            let value = match caller.data().config.get(&key) {
                Ok(Some(value)) => value,
                Ok(None) => return Ok(-1),
                Err(_) => return Ok(-2),
            };
            if value.len() <= buf_len as u32 as usize {
                memory.write(&mut caller, buf_ptr as u32 as usize, value.as_bytes())?;
            }
            Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
        },
    )?;
    Ok(())
}
