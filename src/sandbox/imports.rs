//! Host imports beyond WASI: configuration through `wasi:config/store` (both the
//! `0.2.0-rc.1` names wasmtime ships and the `0.2.0-draft` names Spin and wasmCloud guests
//! import) and `jobhost.config_get` for core modules.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::HasData;
use wasmtime::{Caller, Extern, Linker};

use super::{ComponentState, ModuleState};

mod draft {
    wasmtime::component::bindgen!({
        inline: "
            package wasi:config@0.2.0-draft;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world imports { import store; }
        ",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

/// Configuration a guest can read: the function's `config` over the shared table.
pub(crate) type Values = Arc<BTreeMap<String, String>>;

/// A function's configuration in the two forms the imports read, built once per function
/// version so that an invocation only clones two `Arc`s.
#[derive(Clone, Default)]
pub struct GuestConfig {
    pub(crate) values: Values,
    pub(crate) wasi: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl GuestConfig {
    pub fn new(config: &BTreeMap<String, String>) -> GuestConfig {
        GuestConfig {
            values: Arc::new(config.clone()),
            wasi: Arc::new(
                config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            ),
        }
    }
}

struct DraftConfig;

impl HasData for DraftConfig {
    type Data<'a> = &'a Values;
}

impl draft::wasi::config::store::Host for &Values {
    fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, draft::wasi::config::store::Error>> {
        Ok(Ok(BTreeMap::get(self, &key).cloned()))
    }

    fn get_all(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, draft::wasi::config::store::Error>> {
        Ok(Ok(self
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

pub(crate) fn add_config_to_component_linker(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, |s: &mut ComponentState| {
        wasmtime_wasi_config::WasiConfig::from(&*s.config.wasi)
    })?;
    draft::wasi::config::store::add_to_linker::<ComponentState, DraftConfig>(linker, |s| {
        &s.config.values
    })?;
    Ok(())
}

/// Longest key `config_get` reads; a longer one is a guest bug, not a lookup.
const MAX_KEY_LEN: usize = 64 * 1024;

/// `jobhost.config_get(key_ptr, key_len, buf_ptr, buf_len) -> i32`: the value's length,
/// written to the buffer only when it fits, or -1 when the key is not set.
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
            let Some(value) = caller.data().config.values.get(&key).cloned() else {
                return Ok(-1);
            };
            if value.len() <= buf_len as u32 as usize {
                memory.write(&mut caller, buf_ptr as u32 as usize, value.as_bytes())?;
            }
            Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
        },
    )?;
    Ok(())
}
