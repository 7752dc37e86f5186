//! The handle the running parts share: the functions as they are now (swapped whole on
//! reload), the dispatcher, the store, the paused functions, and the shutdown signals. It is built once, by
//! `serve`; the HTTP front, the API, the queue worker, reload and the triggers receive it
//! (or the part of it they need), never the code that started them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Budget;
use crate::config::HostSettings;
use crate::dispatch::Dispatcher;
use crate::registry::{Function, Registry};
use crate::store::{Enqueued, NewInvocation, State, Store, is_unreachable};

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
    /// The paused functions as last read from the store.
    paused: Mutex<Paused>,
}

/// The functions paused, and when they were read.
#[derive(Default)]
struct Paused {
    read: Option<Instant>,
    functions: Arc<BTreeSet<String>>,
    /// Pauses and resumes made here: a read begun before one is not kept as fresh.
    changes: u64,
}

/// How long a read of the paused functions holds: a pause made on another host (or by the
/// CLI) holds here within this.
const PAUSED_FRESH: Duration = Duration::from_secs(1);

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
            paused: Mutex::default(),
        }
    }

    /// The functions paused now, read from the store at most once a second (and at once
    /// after a pause or resume made here). On a store error, the last read.
    pub async fn paused(&self) -> Arc<BTreeSet<String>> {
        let changes = {
            let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
            if paused.read.is_some_and(|at| at.elapsed() < PAUSED_FRESH) {
                return paused.functions.clone();
            }
            paused.changes
        };
        match self.store.triggers.paused().await {
            Ok(functions) => {
                let functions = Arc::new(functions);
                let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
                // A pause made here while this read was under way may be missing from it:
                // the next call reads again (a submission right after a pause must see it).
                if paused.changes == changes {
                    paused.read = Some(Instant::now());
                    paused.functions = functions.clone();
                }
                functions
            }
            Err(e) => {
                // A lost store is logged once, by the store.
                if !is_unreachable(&e) {
                    tracing::error!("reading paused functions: {e:#}");
                }
                let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
                paused.functions.clone()
            }
        }
    }

    /// Pauses or resumes `function` in the store, and here at once (a resume wakes the
    /// queue worker); whether that changed anything.
    pub async fn set_paused(&self, function: &str, paused: bool) -> anyhow::Result<bool> {
        let changed = self.store.triggers.set_paused(function, paused).await?;
        let mut cached = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        cached.read = None;
        cached.changes += 1;
        if !paused {
            // Its waiting work starts now here (other hosts find it within a second).
            self.dispatch.wake();
        }
        Ok(changed)
    }

    /// Durable work of `function` submitted through this host (the API, an async HTTP
    /// route): started here at once when this host can (`Dispatcher::submit_here`), else
    /// queued. With the state its invocation is in, for the answer: the one it was stored
    /// in, or for an `Idempotency-Key` used before, the one its invocation has now.
    pub async fn submit(
        &self,
        function: &Arc<Function>,
        new: NewInvocation,
    ) -> anyhow::Result<(Enqueued, State)> {
        let paused = self.paused().await.contains(&function.spec.name);
        let (enqueued, state) = self.dispatch.submit_here(function, new, paused).await?;
        let state = match &enqueued {
            Enqueued::New(_) => state,
            Enqueued::Existing { id, .. } => {
                let record = self.store.history.get(id).await?;
                record.map_or(state, |r| r.state)
            }
        };
        Ok((enqueued, state))
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
