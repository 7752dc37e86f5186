//! Hot reload: watches `functions/` and `runtime.toml`; once a change there (not a mere
//! read) has been quiet for a moment, reads the configuration and the functions again on a
//! blocking thread (so compiling never stalls serving) and installs the new set whole. An invalid
//! configuration keeps the previous one; a module that fails keeps its previous version.
//! `install` is the one way a set of functions becomes the running one, at start too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::metrics::{self, Reloaded};
use crate::registry::{self, Registry, Young};
use crate::runtime::Runtime;
use crate::triggers::Supervisor;

/// Makes `next` the running functions: logs what is newly wrong and what went, restarts
/// the triggers of every function that changed, and wakes the queue (work may have waited
/// for a function).
pub fn install(rt: &Runtime, triggers: &Supervisor, next: Registry) {
    let next = Arc::new(next);
    let previous = rt.swap(next.clone());
    for problem in &next.problems {
        let known = previous
            .problems
            .iter()
            .any(|p| p.function == problem.function && p.message == problem.message);
        if !known {
            tracing::error!(function = %problem.function, "{}", problem.message);
        }
    }
    for name in previous.functions.keys() {
        if !next.functions.contains_key(name) {
            tracing::info!(function = %name, "removed");
        }
    }
    triggers.update(rt, &previous, &next);
    rt.dispatch.wake();
}

/// How long `functions/` and `runtime.toml` must be quiet before a reload. Short: a module
/// caught half-copied does not load, is seen to be young, and is tried again (`RETRY`).
const QUIET: Duration = Duration::from_millis(10);
/// How soon a module that did not load while it was still being written is tried again.
const RETRY: Duration = Duration::from_millis(250);

/// The watch on `functions/` and the folder of `runtime.toml`, set up before the functions
/// are first loaded so that nothing changed during start-up goes unseen.
pub struct Watching {
    _watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<notify::Result<Event>>,
}

/// Starts watching; `None` (logged) when the platform will not, and hot reload is off.
pub fn watch(config: &Config) -> Option<Watching> {
    // notify's own watcher rather than its debouncer: the debouncer drops the event kind,
    // and without it the reload's own reads (inotify reports every open) look like changes,
    // so the host would reload forever. The quiet period is one resettable timer in `run`.
    let (tx, events) = tokio::sync::mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = match notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch for changes; hot reload is off: {e}");
            return None;
        }
    };
    let config_dir = config
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for dir in [&config.host.functions_dir, &config_dir] {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!("cannot watch {} for changes: {e}", dir.display());
        }
    }
    Some(Watching {
        _watcher: watcher,
        events,
    })
}

/// What reload works from: the configuration the host started with, and where to install.
pub struct Reload {
    pub rt: Arc<Runtime>,
    pub triggers: Arc<Supervisor>,
    pub config: Config,
    /// A module was still being written at the first load: look again soon.
    pub unsettled: bool,
}

pub async fn run(reload: Reload, watching: Watching, stop: CancellationToken) {
    let Reload {
        rt,
        triggers,
        config: started,
        mut unsettled,
    } = reload;
    let Watching {
        _watcher,
        events: mut rx,
    } = watching;
    let functions_dir = started.host.functions_dir.clone();
    let config_path = started.path.clone();
    let relevant = |path: &Path| {
        path == config_path
            || (path.parent() == Some(functions_dir.as_path())
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("wasm" | "toml")
                ))
    };
    let mut current = started.clone();
    let mut had_file = usable(&config_path);
    // When the last change is QUIET old; `None` while nothing changed.
    let mut quiet_at: Option<tokio::time::Instant> = None;
    // When a module still settling is tried again; a fixed time, so events that are not
    // changes cannot keep putting it off.
    let mut retry_at = tokio::time::Instant::now() + RETRY;
    loop {
        let quiet = async {
            match quiet_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(event) = rx.recv() => {
                if let Ok(event) = event
                    && is_change(&event.kind)
                    && event.paths.iter().any(|p| relevant(p))
                {
                    quiet_at = Some(tokio::time::Instant::now() + QUIET);
                }
                continue;
            }
            _ = quiet => quiet_at = None,
            _ = tokio::time::sleep_until(retry_at), if unsettled && quiet_at.is_none() => {}
        }
        tracing::debug!("reloading: functions/ or the configuration changed");
        unsettled = reread(&rt, &triggers, &started, &mut current, &mut had_file).await;
        retry_at = tokio::time::Instant::now() + RETRY;
    }
}

/// Whether an event is a change; opening or reading a file (the reload itself does) is not.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A configuration file there to read: present and not empty.
fn usable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.len() > 0)
}

/// Reads everything again and installs it; returns whether a module is still settling.
async fn reread(
    rt: &Runtime,
    triggers: &Supervisor,
    started: &Config,
    current: &mut Config,
    had_file: &mut bool,
) -> bool {
    // An editor that saves by moving the old file away first leaves no runtime.toml for a
    // moment, and one that truncates and writes leaves it empty; reading either as "all
    // defaults" would drop every declared function.
    let exists = usable(&started.path);
    let missing = *had_file && !exists;
    *had_file |= exists;
    let result = if missing {
        tracing::warn!(
            "{} is gone or empty; the previous configuration keeps running until it is back",
            started.path.display()
        );
        Reloaded::ConfigurationMissing
    } else {
        match config::load(&started.path) {
            Ok(config) => {
                if config.host != current.host {
                    tracing::warn!(
                        "[host] settings changed in {}: they take effect on restart",
                        config.path.display()
                    );
                }
                *current = config;
                Reloaded::Applied
            }
            Err(problems) => {
                tracing::error!(
                    "invalid configuration, the previous one keeps running:\n{problems}"
                );
                Reloaded::InvalidConfiguration
            }
        }
    };
    metrics::get().reloaded(result);
    // Configuration of functions comes from this reload; [host] stays as the host started.
    let mut config = current.clone();
    config.host = started.host.clone();
    let previous = rt.functions();
    let dispatch = rt.dispatch.clone();
    let next = tokio::task::spawn_blocking(move || {
        let specs = config::functions(&config);
        registry::reload(&specs, dispatch.sandbox(), &previous, None, Young::Wait)
    })
    .await;
    match next {
        Ok(next) => {
            let unsettled = next.unsettled;
            install(rt, triggers, next);
            unsettled
        }
        Err(e) => {
            tracing::error!("reloading failed: {e}");
            false
        }
    }
}
