//! jobhost runs WebAssembly functions in fresh wasmtime sandboxes, fired by HTTP routes,
//! timers, watched folders and manual calls.
//!
//! The map, top down (a module imports only those below it): `cli` parses commands and
//! prints; `serve` builds everything at start and owns shutdown; `front` accepts HTTP and
//! sends each request to `api` (`/_jobhost/`), to `ui` (the dashboard page) or to a
//! function's route (`triggers::http`); `queue` works off durable work; `reload` watches `functions/` and
//! `runtime.toml`; `triggers` own their event sources. They share a `runtime` handle: the
//! functions (`registry`), the `dispatch`er that owns an invocation's whole life, the
//! `store` (traits, with SQLite as the embedded implementation), `metrics`, and what guests
//! reach beyond WASI (`outbound` HTTP, `keyvalue` state). Below them
//! `sandbox` is the only module that names wasmtime, `config` the only one that knows the
//! TOML shape, and `schedule` does timer arithmetic. See ARCHITECTURE.md.

// First: its macro is used by the modules below.
#[macro_use]
mod names;

pub mod answer;
pub mod api;
pub mod body;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod front;
pub mod keyvalue;
pub mod metrics;
pub mod outbound;
pub mod queue;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod sandbox;
pub mod schedule;
pub mod serve;
pub mod store;
pub mod triggers;
pub mod ui;
