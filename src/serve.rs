//! The composition root of `jobhost up`: builds every part once (store, sandbox,
//! dispatcher, functions, runtime), starts the tasks (HTTP front, queue worker, pruner,
//! callbacks' deliverer, hot reload, triggers), and owns shutdown. Nothing else imports it but the CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::{self, Config};
use crate::dispatch::{Dispatcher, Parts};
use crate::registry;
use crate::reload::{self, Reload};
use crate::runtime::Runtime;
use crate::sandbox::Sandbox;
use crate::store::{HostId, Store, is_unreachable, now_ms};
use crate::triggers::{self, Supervisor};
use crate::{callbacks, front, outbound, queue};

/// A host serving in the background; `stop` shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    pub rt: Arc<Runtime>,
    /// Cancelled when `shutdown_timeout` has passed: running invocations are interrupted.
    hard_stop: CancellationToken,
    /// Cancelled when the host cannot go on (its store went away): it stops at once.
    fatal: CancellationToken,
    /// The heartbeat, which goes on while running invocations finish in a graceful
    /// shutdown (their host is alive), and ends when this is dropped.
    _heartbeat: AbortOnDropHandle<()>,
}

/// Opens the store, loads everything and binds the listener; serving starts at once.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    let data_dir = &config.host.data_dir;
    let store = Store::open_for_host(&config.host).await?;
    let owner = HostId::load_or_create(data_dir)?;
    let started_ms = now_ms();
    // Alive before it claims anything: a host that claims unseen looks silent to the others.
    store.cluster.heartbeat(&owner, started_ms).await?;
    let recovered = store.queue.recover(&owner).await?;
    if recovered.requeued > 0 || !recovered.dead.is_empty() {
        tracing::warn!(
            requeued = recovered.requeued,
            dead = recovered.dead.len(),
            "recovered from an unclean stop: background invocations that were running run again, or end dead on their last attempt"
        );
    }
    std::fs::create_dir_all(&config.host.functions_dir).with_context(|| {
        format!(
            "creating the functions folder {}",
            config.host.functions_dir.display()
        )
    })?;
    // Watching starts before the first load: a module dropped meanwhile is not missed.
    let watching = reload::watch(&config);
    let specs = config::functions(&config);
    let sandbox = Sandbox::new(&registry::sandbox_settings(&config, &specs))?;
    let registry = registry::load(&specs, &sandbox, None);
    // After the load, which marked every entry it used: what is left unused is old.
    let pruned = sandbox.prune_cache(config.host.retention);
    if pruned > 0 {
        tracing::info!("pruned {pruned} compiled modules not used for the retention period");
    }
    // Cursors are kept for every configured timer, loaded or not: a function whose module
    // fails now keeps the runs it missed for when it loads.
    store
        .triggers
        .forget_timers_except(&triggers::timer_keys(specs.values().flatten()))
        .await?;
    let listen = config.host.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("binding {listen} (host.listen): is another program using the port?")
    })?;
    let addr = listener.local_addr()?;

    let accept = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let outbound = Arc::new(outbound::Client::new(&config.host.outbound));
    let dispatch = Arc::new(Dispatcher::new(Parts {
        sandbox,
        store: store.clone(),
        owner,
        max_concurrency: config.host.max_concurrency,
        record_excerpt: config.host.record_excerpt,
        hard_stop: hard_stop.clone(),
        tasks: tasks.clone(),
        max_chain_depth: config.host.max_chain_depth,
        outbound: outbound.clone(),
        max_kv_keys: config.host.max_kv_keys,
    }));
    // The address as bound (port 0 becomes the port the system chose): what the API checks
    // requests against, and the `Host` a wasi:http guest sees when a client sends none.
    let mut host = config.host.clone();
    host.listen = addr;
    let rt = Arc::new(Runtime::new(
        host,
        dispatch,
        store,
        accept.clone(),
        tasks.clone(),
    ));
    let supervisor = Arc::new(Supervisor::default());
    let unsettled = registry.unsettled;
    reload::install(&rt, &supervisor, registry);
    // What ended dead in the recovery gets its on_failure handler, now that the functions
    // are known.
    rt.dispatch.fail_over(&recovered.dead).await;
    tasks.spawn(front::serve(listener, rt.clone()));
    // Loading may have taken long: alive again before the first claim.
    rt.store
        .cluster
        .heartbeat(rt.dispatch.owner(), started_ms)
        .await?;
    tasks.spawn(queue::run(rt.clone(), accept.clone()));
    tasks.spawn(prune(rt.clone(), accept.clone()));
    tasks.spawn(callbacks::run(
        rt.store.clone(),
        outbound,
        config.host.callbacks.clone(),
        config.host.outbound.clone(),
        accept.clone(),
    ));
    let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(rt.clone(), started_ms)));
    let fatal = CancellationToken::new();
    tasks.spawn(watch_store(rt.clone(), fatal.clone(), accept.clone()));
    if let Some(watching) = watching {
        let reload = Reload {
            rt: rt.clone(),
            triggers: supervisor,
            config,
            unsettled,
        };
        tasks.spawn(reload::run(reload, watching, accept.clone()));
    }
    let functions = rt.functions();
    tracing::info!(
        functions = functions.functions.len(),
        problems = functions.problems.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on http://{addr}"
    );
    Ok(Running {
        addr,
        rt,
        hard_stop,
        fatal,
        _heartbeat: heartbeat,
    })
}

/// Looks every second that the store is still there; when it went away (its file deleted
/// or replaced), what the host writes would be lost, so it stops, loudly.
async fn watch_store(rt: Arc<Runtime>, fatal: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = rt.store.history.check().await {
            tracing::error!("{e:#}: what the host writes now would be lost, so it stops");
            fatal.cancel();
            break;
        }
    }
}

/// Says every `heartbeat` that this host is alive, and rescues the running background work
/// of hosts silent for longer than `lease`: it runs again, here or on another host (same
/// id, next attempt), as after a crash. A silent host that comes back finds its claims
/// fenced: its late results are dropped. Its own claims older than the lease that it does
/// not run (the claim's answer was lost on the way) go back to the queue.
async fn heartbeat(rt: Arc<Runtime>, started_ms: i64) {
    let (every, lease) = (rt.host.heartbeat, rt.host.lease);
    let owner = rt.dispatch.owner().clone();
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let cluster = &rt.store.cluster;
        let beat = async {
            cluster.heartbeat(&owner, started_ms).await?;
            let rescued = cluster.rescue(lease).await?;
            // A run is listed here from the moment its claim is answered, so a claim
            // older than the lease and not listed never reached this host.
            let claimed_before = now_ms() - lease.as_millis() as i64;
            let running = rt.dispatch.running_ids();
            let lost = (rt.store.queue)
                .release_lost(&owner, &running, claimed_before)
                .await?;
            anyhow::Ok((rescued, lost))
        };
        // A beat that hangs (a half-open connection) must not go unnoticed past the lease.
        let beat = async {
            tokio::time::timeout(lease / 2, beat)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the store did not answer within {:?}",
                        lease / 2
                    ))
                })
        };
        match beat.await {
            Ok((rescued, lost)) => {
                if failing {
                    tracing::info!("this host's heartbeat reaches the store again");
                    failing = false;
                }
                for r in &rescued {
                    tracing::warn!(
                        host = %r.host,
                        requeued = r.requeued,
                        dead = r.dead.len(),
                        "a host was silent for longer than the lease ({lease:?}): its running background invocations run again (same id, next attempt), or end dead if that was their last"
                    );
                }
                // On a task of its own: a slow store must not hold up the next beat.
                let dead: Vec<String> = rescued.iter().flat_map(|r| r.dead.clone()).collect();
                if !dead.is_empty() {
                    let dispatch = rt.dispatch.clone();
                    rt.tasks
                        .spawn(async move { dispatch.fail_over(&dead).await });
                }
                if !lost.is_empty() {
                    tracing::warn!(
                        ids = %lost.join(","),
                        "claimed by this host more than the lease ({lease:?}) ago but not running here (the store's answer to the claim was lost on the way, or a release failed): queued again without using an attempt"
                    );
                }
                if !rescued.is_empty() || !lost.is_empty() {
                    rt.dispatch.wake();
                }
            }
            // Logged once per outage (a lost store logs it itself); the other hosts take
            // this one's running work after the lease, and its late results are dropped.
            Err(e) if !failing && !is_unreachable(&e) => {
                tracing::error!("cannot tell the store that this host is alive: {e:#}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Deletes finished records older than `retention`, at start and every ten minutes.
async fn prune(rt: Arc<Runtime>, stop: CancellationToken) {
    let retention = rt.host.retention;
    let every = Duration::from_secs(600).min(retention.max(Duration::from_secs(1)));
    loop {
        let before = now_ms() - retention.as_millis() as i64;
        // A long prune (it goes in chunks) does not hold up a shutdown: what it had not
        // reached yet goes in the next one.
        let pruned = tokio::select! {
            _ = stop.cancelled() => break,
            pruned = rt.store.history.prune(before) => pruned,
        };
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!("pruned {n} invocation records older than the retention"),
            Err(e) if is_unreachable(&e) => {}
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
        self.rt.accept.cancel();
        self.rt.tasks.close();
        let grace = self.rt.host.shutdown_timeout;
        if tokio::time::timeout(grace, self.rt.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "invocations still running after shutdown_timeout ({grace:?}); interrupting them"
            );
            self.stop_now().await;
            return;
        }
        self.flush_records().await;
    }

    /// Interrupts whatever still runs and waits briefly for their records to be updated.
    pub async fn stop_now(&self) {
        self.rt.accept.cancel();
        self.rt.tasks.close();
        self.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.rt.tasks.wait()).await;
        self.flush_records().await;
    }

    /// Writes out the synchronous records still in memory.
    async fn flush_records(&self) {
        if let Err(e) = self.rt.store.history.flush().await {
            tracing::error!("writing the last records: {e:#}");
        }
    }
}

/// `jobhost up`: serve until SIGINT or SIGTERM; a second signal stops at once. A host
/// that cannot go on (its store went away) stops at once and fails.
pub async fn up(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = running.fatal.cancelled() => {
            running.stop_now().await;
            anyhow::bail!("stopped: the store went away while the host ran (see the log above)");
        }
    }
    tracing::info!(
        "shutting down: waiting up to {:?} for running invocations",
        running.rt.host.shutdown_timeout
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
