//! jobhost runs WebAssembly functions in fresh wasmtime sandboxes, fired by HTTP routes
//! (and, as the issues land, timers, watched folders and manual calls).
//!
//! The map: `config` turns `runtime.toml` into validated types; `registry` turns
//! `functions/` into compiled, linked functions and routes; `sandbox` is the only module
//! that names wasmtime; `dispatch` runs one invocation; `triggers` own event sources;
//! `host` wires them together and owns shutdown. See ARCHITECTURE.md.

pub mod config;
pub mod dispatch;
pub mod host;
pub mod registry;
pub mod sandbox;
pub mod triggers;
