//! A running host: configuration, sandbox and functions loaded once, the listener bound,
//! every task tracked and stopped by one shutdown signal. Also the in-process `invoke` and
//! `check` of the CLI.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, HttpMode, Trigger};
use crate::dispatch::{self, Invocation, TriggerKind};
use crate::registry::{self, Registry};
use crate::sandbox::{Outcome, Sandbox, SandboxSettings, Shape};
use crate::triggers;

/// Shared state of a running host.
pub struct Host {
    pub config: Config,
    pub sandbox: Sandbox,
    pub registry: Registry,
    /// `max_concurrency`: one permit per running invocation.
    pub permits: Arc<Semaphore>,
    pub tasks: TaskTracker,
}

/// A host serving in the background; `stop` shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    pub host: Arc<Host>,
    shutdown: CancellationToken,
}

fn wants_fuel(config: &Config) -> bool {
    // Fuel counting is an engine setting: turn it on when anything asks for it at start.
    config.defaults.fuel.is_some()
        || registry::function_names(config).iter().any(|name| {
            let sidecar = config.host.functions_dir.join(format!("{name}.toml"));
            let sidecar = sidecar
                .exists()
                .then(|| config::load_sidecar(&sidecar, name).ok())
                .flatten();
            config::function_spec(config, name, sidecar.as_ref())
                .is_ok_and(|s| s.limits.fuel.is_some())
        })
}

pub fn sandbox_for(config: &Config) -> anyhow::Result<Sandbox> {
    Sandbox::new(&SandboxSettings {
        max_concurrency: config.host.max_concurrency,
        fuel: wants_fuel(config),
        cache_dir: Some(registry::cache_dir(config)),
    })
}

/// Loads everything and binds the listener; serving starts at once.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.host.data_dir).with_context(|| {
        format!(
            "creating the data folder {}",
            config.host.data_dir.display()
        )
    })?;
    let sandbox = sandbox_for(&config)?;
    let registry = registry::load(&config, &sandbox, None);
    for problem in &registry.problems {
        tracing::error!(function = %problem.function, "{}", problem.message);
    }
    for function in registry.functions.values() {
        for trigger in &function.spec.triggers {
            match trigger {
                Trigger::Http(http) if http.mode == HttpMode::Async => tracing::warn!(
                    function = %function.spec.name,
                    "route {} asks for mode = \"async\", which needs the durable queue this build does not have yet; it is served synchronously",
                    http.route.text
                ),
                Trigger::Http(_) => {}
                Trigger::Timer(t) => tracing::warn!(
                    function = %function.spec.name,
                    "timer trigger ({}) will not fire: timers are not in this build yet",
                    t.describe
                ),
                Trigger::Watch(w) => tracing::warn!(
                    function = %function.spec.name,
                    "watch trigger on {} will not fire: watches are not in this build yet",
                    w.folder.display()
                ),
            }
        }
    }
    let listen = config.host.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("binding {listen} (host.listen): is another program using the port?")
    })?;
    let addr = listener.local_addr()?;
    let host = Arc::new(Host {
        permits: Arc::new(Semaphore::new(config.host.max_concurrency)),
        config,
        sandbox,
        registry,
        tasks: TaskTracker::new(),
    });
    let shutdown = CancellationToken::new();
    host.tasks.spawn(triggers::http::serve(
        listener,
        host.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        functions = host.registry.functions.len(),
        problems = host.registry.problems.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on http://{addr}"
    );
    Ok(Running {
        addr,
        host,
        shutdown,
    })
}

impl Running {
    /// Stops accepting, lets running invocations finish for up to `shutdown_timeout`.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.host.tasks.close();
        let grace = self.host.config.host.shutdown_timeout;
        if tokio::time::timeout(grace, self.host.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "invocations still running after shutdown_timeout ({grace:?}); stopping them"
            );
        }
    }
}

/// `jobhost up`: serve until SIGINT or SIGTERM.
pub async fn up(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
    };
    Ok(dispatch::run_command(&sandbox, &invocation).await)
}
