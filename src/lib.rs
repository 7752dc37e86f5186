//! jobhost runs WebAssembly functions in fresh wasmtime sandboxes, fired by HTTP routes,
//! timers, watched folders and manual calls.
//!
//! The map: `config` turns `runtime.toml` into validated types; `registry` turns
//! `functions/` into compiled, linked functions and routes; `sandbox` is the only module
//! that names wasmtime; `dispatch` runs one invocation; `records` is the SQLite store of
//! invocations and the durable queue, which `queue` works off; `triggers` own event
//! sources; `api` is `/_jobhost/`; `host` wires them together and owns shutdown. See
//! ARCHITECTURE.md.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod host;
pub mod metrics;
pub mod queue;
pub mod records;
pub mod registry;
pub mod reload;
pub mod sandbox;
pub mod schedule;
pub mod triggers;
