//! The closed set of triggers and their event sources. Each source receives what it needs
//! (its function, its settings, a [`Context`]) and hands invocations to the dispatcher;
//! none builds an engine or sees the code that started it.
//!
//! HTTP routes are served by the HTTP front from the registry's routing table (`http`);
//! timers and watches run as one task per trigger, restarted whenever their function
//! changes and stopped when it goes.

pub mod http;
pub mod timer;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{FunctionSpec, StoreSettings, Trigger};
use crate::dispatch::Dispatcher;
use crate::registry::{Function, Registry};
use crate::runtime::Runtime;
use crate::store::TriggerState;

/// What an event source gets: where its state lives and how to hand work on.
#[derive(Clone)]
pub struct Context {
    pub state: Arc<dyn TriggerState>,
    pub dispatch: Arc<Dispatcher>,
    /// A timer's `run_on_startup` run fires unless one fired this recently: the lease when
    /// hosts share the store (one run for a cluster starting together), none for one host.
    pub startup_window: Duration,
}

/// The event sources of the loaded functions.
#[derive(Default)]
pub struct Supervisor {
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Supervisor {
    /// Stops the sources of functions that changed or went; starts those of functions
    /// that are new or changed. A function kept as it was keeps its sources running.
    pub fn update(&self, rt: &Runtime, previous: &Registry, next: &Registry) {
        let context = Context {
            state: rt.store.triggers.clone(),
            dispatch: rt.dispatch.clone(),
            startup_window: match rt.host.store {
                StoreSettings::Sqlite => Duration::ZERO,
                StoreSettings::Postgres { .. } => rt.host.lease,
            },
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (name, old) in &previous.functions {
            let kept = next
                .functions
                .get(name)
                .is_some_and(|new| Arc::ptr_eq(old, new));
            if !kept && let Some(token) = running.remove(name) {
                token.cancel();
            }
        }
        for (name, function) in &next.functions {
            let kept = previous
                .functions
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, function));
            if !kept {
                let stop = rt.accept.child_token();
                // A function that ran before this reload restarts its sources: its timers'
                // `run_on_startup` runs fired when it first started.
                let restarted = previous.functions.contains_key(name);
                start(rt, &context, function, &stop, restarted);
                running.insert(name.clone(), stop);
            }
        }
    }
}

fn start(
    rt: &Runtime,
    context: &Context,
    function: &Arc<Function>,
    stop: &CancellationToken,
    restarted: bool,
) {
    for trigger in &function.spec.triggers {
        let (context, function, stop) = (context.clone(), function.clone(), stop.clone());
        match trigger {
            Trigger::Timer(timer) => {
                rt.tasks.spawn(timer::run(
                    context,
                    function,
                    timer.clone(),
                    stop,
                    restarted,
                ));
            }
            Trigger::Watch(watch) => {
                rt.tasks
                    .spawn(watch::run(context, function, watch.clone(), stop));
            }
            // Requests and messages come through the HTTP front and the API.
            Trigger::Http(_) | Trigger::Queue(_) => {}
        }
    }
}

/// The state keys of every timer of `specs`: the cursors worth keeping.
pub fn timer_keys<'a>(specs: impl Iterator<Item = &'a FunctionSpec>) -> Vec<String> {
    specs
        .flat_map(|f| {
            f.triggers.iter().filter_map(|t| match t {
                Trigger::Timer(timer) => Some(timer::key(&f.name, timer)),
                _ => None,
            })
        })
        .collect()
}
