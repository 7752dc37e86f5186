//! The one integration-test binary: every test starts the real `jobhost` binary in its own
//! temp folder on port 0 and talks to it as a user would.

// Helpers are `pub` for the sibling test modules; the crate itself is never a library.
#![allow(unreachable_pub)]

mod browser;
mod callbacks;
mod cli;
mod durable;
mod examples;
mod hostile;
mod http;
mod jobs;
mod keyvalue;
mod loading;
mod metrics;
mod outbound;
mod pause;
// Also compiled into the store's unit tests, which use part of it.
#[allow(dead_code)]
mod postgres_server;
mod receiver;
mod reload;
mod sandbox;
mod scale_out;
mod support;
mod tidy;
mod timers;
mod watch;
