//! The handle the running parts share: the functions as they are now (swapped whole on
//! reload), the dispatcher, the store, and the shutdown signals. It is built once, by
//! `serve`; the HTTP front, the API, the queue worker, reload and the triggers receive it
//! (or the part of it they need), never the code that started them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Budget;
use crate::config::HostSettings;
use crate::dispatch::Dispatcher;
use crate::registry::Registry;
use crate::store::Store;

pub struct Runtime {
    /// The `[host]` settings the host started with (they hold until a restart), with
    /// `listen` the address as bound.
    pub host: HostSettings,
    pub dispatch: Arc<Dispatcher>,
    pub store: Store,
    /// The budget for request bodies held in memory (`max_body_memory`).
    pub bodies: Budget,
    /// Cancelled on the first shutdown signal: the listener and triggers stop, and requests
    /// still arriving on open connections answer 503.
    pub accept: CancellationToken,
    /// Every task the host spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Runtime {
    pub fn new(
        host: HostSettings,
        dispatch: Arc<Dispatcher>,
        store: Store,
        accept: CancellationToken,
        tasks: TaskTracker,
    ) -> Runtime {
        Runtime {
            bodies: Budget::new(host.max_body_memory),
            host,
            dispatch,
            store,
            accept,
            tasks,
        }
    }

    /// The functions as they are now. A request or a run keeps the snapshot it started
    /// with, so it finishes on that version.
    pub fn functions(&self) -> Arc<Registry> {
        self.dispatch.functions()
    }

    /// Makes `next` the functions; returns the ones before.
    pub fn swap(&self, next: Arc<Registry>) -> Arc<Registry> {
        self.dispatch.swap(next)
    }
}
