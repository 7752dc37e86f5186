//! A running host: the store locked and recovered, functions loaded (and swapped whole on
//! reload), the listener bound, every task tracked and stopped by one shutdown signal.
//! Also the in-process `check`, `functions` and `invoke` of the CLI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::{self, Config, Trigger};
use crate::dispatch::{self, Invocation, TriggerKind};
use crate::queue;
use crate::records::{Records, SyncRecorder};
use crate::registry::{self, Function, Registry};
use crate::reload;
use crate::sandbox::{Outcome, Sandbox, SandboxSettings, Shape};
use crate::triggers;

/// Shared state of a running host.
pub struct Host {
    /// The configuration the host started with; its `[host]` settings hold until a restart.
    pub config: Config,
    pub sandbox: Sandbox,
    /// The functions now; swapped whole by a reload, so a request or a run keeps the
    /// version it started with.
    registry: RwLock<Arc<Registry>>,
    /// Each function's timer and watch tasks, stopped when it is reloaded or removed.
    trigger_tasks: Mutex<HashMap<String, CancellationToken>>,
    pub records: Records,
    /// Records sync HTTP invocations in batches, off the request path.
    pub sync_records: SyncRecorder,
    /// `max_concurrency`: one permit per running invocation.
    pub permits: Arc<Semaphore>,
    /// Wakes the queue worker: new durable work, or a slot came free.
    pub wake: Notify,
    /// Cancelled on the first shutdown signal: the listener and triggers stop, and requests
    /// still arriving on open connections answer 503.
    pub accept: CancellationToken,
    /// Cancelled when `shutdown_timeout` has passed: running invocations are interrupted.
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
}

/// The right to run one invocation now, within both limits.
pub struct Permit {
    _host: OwnedSemaphorePermit,
    _function: Option<OwnedSemaphorePermit>,
}

impl Host {
    /// The functions as they are now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A permit to run `function` now, or `None` when a limit is reached.
    pub fn try_permit(&self, function: &Function) -> Option<Permit> {
        let host = self.permits.clone().try_acquire_owned().ok()?;
        let function = match &function.permits {
            Some(s) => Some(s.clone().try_acquire_owned().ok()?),
            None => None,
        };
        Some(Permit {
            _host: host,
            _function: function,
        })
    }

    /// `/_jobhost/` needs the admin token when the listener is not on loopback.
    pub fn admin_needs_token(&self) -> bool {
        !self.config.host.listen.ip().is_loopback()
    }

    /// Makes `next` the functions: logs what changed, restarts the timers and watches of
    /// every function that changed, stops those of removed ones.
    pub fn install(self: &Arc<Self>, next: Registry) {
        let previous = self.registry();
        for problem in &next.problems {
            let known = previous
                .problems
                .iter()
                .any(|p| p.function == problem.function && p.message == problem.message);
            if !known {
                tracing::error!(function = %problem.function, "{}", problem.message);
            }
        }
        let mut tasks = self.trigger_tasks.lock().unwrap_or_else(|e| e.into_inner());
        for (name, old) in &previous.functions {
            let kept = next
                .functions
                .get(name)
                .is_some_and(|new| Arc::ptr_eq(old, new));
            if !kept && let Some(token) = tasks.remove(name) {
                token.cancel();
            }
            if !next.functions.contains_key(name) {
                tracing::info!(function = %name, "removed");
            }
        }
        for (name, function) in &next.functions {
            let kept = previous
                .functions
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, function));
            if !kept {
                let token = self.accept.child_token();
                self.start_triggers(function, &token);
                tasks.insert(name.clone(), token);
            }
        }
        drop(tasks);
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        // Work that waited for a function may run now.
        self.wake.notify_one();
    }

    fn start_triggers(self: &Arc<Self>, function: &Arc<Function>, stop: &CancellationToken) {
        for trigger in &function.spec.triggers {
            match trigger {
                Trigger::Timer(timer) => {
                    let key = triggers::timer::key(&function.spec.name, timer);
                    let f = function.clone();
                    let task =
                        triggers::timer::run(self.clone(), f, timer.clone(), key, stop.clone());
                    self.tasks.spawn(task);
                }
                Trigger::Watch(watch) => {
                    let key = triggers::watch::key(&function.spec.name, watch);
                    let f = function.clone();
                    let task =
                        triggers::watch::run(self.clone(), f, watch.clone(), key, stop.clone());
                    self.tasks.spawn(task);
                }
                Trigger::Http(_) => {}
            }
        }
    }
}

/// A host serving in the background; `stop` shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    pub host: Arc<Host>,
}

fn wants_fuel(config: &Config) -> bool {
    // Fuel counting is an engine setting: turn it on when anything asks for it at start.
    config.defaults.fuel.is_some()
        || registry::function_names(config)
            .iter()
            .any(|name| function_limits(config, name).is_some_and(|l| l.fuel.is_some()))
}

pub fn sandbox_for(config: &Config) -> anyhow::Result<Sandbox> {
    Sandbox::new(&SandboxSettings {
        max_concurrency: config.host.max_concurrency,
        fuel: wants_fuel(config),
        cache_dir: Some(registry::cache_dir(config)),
    })
}

/// Opens the store, loads everything and binds the listener; serving starts at once.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    let records = Records::open_for_host(&config.host.data_dir)?;
    let sync_records = SyncRecorder::start(&config.host.data_dir)?;
    let (requeued, interrupted) = records.recover()?;
    if requeued > 0 || interrupted > 0 {
        tracing::warn!(
            requeued,
            interrupted_http = interrupted,
            "recovered from an unclean stop: background invocations that were running run again"
        );
    }
    let sandbox = sandbox_for(&config)?;
    std::fs::create_dir_all(&config.host.functions_dir).with_context(|| {
        format!(
            "creating the functions folder {}",
            config.host.functions_dir.display()
        )
    })?;
    // Watching starts before the first load: a module dropped meanwhile is not missed.
    let watching = reload::watch(&config);
    let registry = registry::load(&config, &sandbox, None);
    let timer_keys: Vec<String> = registry
        .functions
        .values()
        .flat_map(|f| {
            f.spec.triggers.iter().filter_map(|t| match t {
                Trigger::Timer(timer) => Some(triggers::timer::key(&f.spec.name, timer)),
                _ => None,
            })
        })
        .collect();
    records.forget_timers_except(&timer_keys)?;
    let listen = config.host.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("binding {listen} (host.listen): is another program using the port?")
    })?;
    let addr = listener.local_addr()?;
    let host = Arc::new(Host {
        permits: Arc::new(Semaphore::new(config.host.max_concurrency)),
        config,
        sandbox,
        registry: RwLock::new(Arc::new(Registry::default())),
        trigger_tasks: Mutex::new(HashMap::new()),
        sync_records,
        records,
        wake: Notify::new(),
        accept: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    let unsettled = registry.unsettled;
    host.install(registry);
    let accept = host.accept.clone();
    host.tasks.spawn(triggers::http::serve(
        listener,
        host.clone(),
        accept.clone(),
    ));
    host.tasks.spawn(queue::run(host.clone(), accept.clone()));
    host.tasks.spawn(prune(host.clone(), accept.clone()));
    if let Some(watching) = watching {
        host.tasks.spawn(reload::run(
            host.clone(),
            watching,
            unsettled,
            accept.clone(),
        ));
    }
    let registry = host.registry();
    tracing::info!(
        functions = registry.functions.len(),
        problems = registry.problems.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on http://{addr}"
    );
    Ok(Running { addr, host })
}

/// Deletes finished records older than `retention`, at start and every ten minutes.
async fn prune(host: Arc<Host>, stop: CancellationToken) {
    let every =
        Duration::from_secs(600).min(host.config.host.retention.max(Duration::from_secs(1)));
    loop {
        match host.records.prune(host.config.host.retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!("pruned {n} invocation records older than the retention"),
            Err(e) => tracing::error!("pruning invocation records: {e:#}"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

impl Running {
    /// Graceful shutdown: stop the listener and the triggers, let running invocations
    /// finish for up to `shutdown_timeout`, then interrupt the rest (background ones go
    /// back to the queue without using an attempt).
    pub async fn stop(&self) {
        self.host.accept.cancel();
        self.host.tasks.close();
        let grace = self.host.config.host.shutdown_timeout;
        if tokio::time::timeout(grace, self.host.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "invocations still running after shutdown_timeout ({grace:?}); interrupting them"
            );
            self.stop_now().await;
        }
        self.flush_records().await;
    }

    /// Writes out the sync HTTP records still in memory.
    async fn flush_records(&self) {
        let recorder = self.host.sync_records.clone();
        let _ = tokio::task::spawn_blocking(move || recorder.flush()).await;
    }

    /// Interrupts whatever still runs and waits briefly for their records to be updated.
    pub async fn stop_now(&self) {
        self.host.accept.cancel();
        self.host.tasks.close();
        self.host.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.host.tasks.wait()).await;
        self.flush_records().await;
    }
}

/// `jobhost up`: serve until SIGINT or SIGTERM; a second signal stops at once.
pub async fn up(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown_signal().await;
    tracing::info!(
        "shutting down: waiting up to {:?} for running invocations",
        running.host.config.host.shutdown_timeout
    );
    tokio::select! {
        _ = running.stop() => {}
        _ = shutdown_signal() => {
            tracing::warn!("second signal: interrupting running invocations now");
            running.stop_now().await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `jobhost check`: every configuration and load problem, as lines; empty when all is well.
pub fn check(config_path: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(problems) => return Ok((0, problems.0.iter().map(ToString::to_string).collect())),
    };
    let sandbox = sandbox_for(&config)?;
    let registry = registry::load(&config, &sandbox, None);
    let problems = registry
        .problems
        .iter()
        .map(|p| format!("function `{}`: {}", p.function, p.message))
        .collect();
    Ok((registry.functions.len(), problems))
}

/// `jobhost functions`: what a host on this configuration would load, with every error.
pub fn list_functions(config: &Config) -> anyhow::Result<Vec<api::FunctionView>> {
    let sandbox = sandbox_for(config)?;
    let registry = registry::load(config, &sandbox, None);
    Ok(api::function_views(&registry))
}

/// The limits `name` runs with, if its configuration is valid.
pub fn function_limits(config: &Config, name: &str) -> Option<config::Limits> {
    let sidecar = config.host.functions_dir.join(format!("{name}.toml"));
    let sidecar = sidecar
        .exists()
        .then(|| config::load_sidecar(&sidecar, name).ok())
        .flatten();
    config::function_spec(config, name, sidecar.as_ref())
        .ok()
        .map(|s| s.limits)
}

/// `jobhost invoke NAME`: one manual invocation in this process.
pub async fn invoke(config: &Config, name: &str, data: Bytes) -> anyhow::Result<Outcome> {
    let sandbox = sandbox_for(config)?;
    let registry = registry::load(config, &sandbox, Some(name));
    if let Some(problem) = registry.problems.first() {
        anyhow::bail!("function `{name}` cannot be loaded: {}", problem.message);
    }
    let Some(function) = registry.functions.get(name) else {
        let known = registry::function_names(config).join(", ");
        anyhow::bail!(
            "no function named `{name}` (known: {known}): put {name}.wasm in the functions folder"
        );
    };
    if function.prepared.shape == Shape::Http {
        anyhow::bail!(
            "`{name}` is a wasi:http component: call it over HTTP with `jobhost up` and curl"
        );
    }
    let invocation = Invocation {
        id: dispatch::new_id(),
        function,
        trigger: TriggerKind::Manual,
        attempt: 1,
        vars: Vec::new(),
        payload: data,
        input: None,
    };
    Ok(dispatch::run_command(&sandbox, &invocation).await)
}
