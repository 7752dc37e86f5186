//! Hot reload: watches `functions/` and `runtime.toml`; once a change there has been quiet
//! for a moment, reads the configuration and the functions again on a blocking thread (so
//! compiling never stalls serving) and installs the new set whole. An invalid
//! configuration keeps the previous one; a module that fails keeps its previous version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::host::Host;
use crate::registry::{self, Young};

/// How long `functions/` and `runtime.toml` must be quiet before a reload. Short: a module
/// caught half-copied does not load, is seen to be young, and is tried again (`RETRY`).
const QUIET: Duration = Duration::from_millis(10);
/// How soon a module that did not load while it was still being written is tried again.
const RETRY: Duration = Duration::from_millis(250);

pub async fn run(host: Arc<Host>, mut unsettled: bool, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = match new_debouncer(QUIET, move |result| {
        let _ = tx.send(result);
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("cannot watch for changes; hot reload is off: {e}");
            return;
        }
    };
    let functions_dir = host.config.host.functions_dir.clone();
    let config_path = host.config.path.clone();
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for dir in [&functions_dir, &config_dir] {
        if let Err(e) = debouncer.watcher().watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!("cannot watch {} for changes: {e}", dir.display());
        }
    }
    let relevant = |path: &Path| {
        path == config_path
            || (path.parent() == Some(functions_dir.as_path())
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("wasm" | "toml")
                ))
    };
    let mut current = host.config.clone();
    let mut had_file = config_path.exists();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(result) = rx.recv() => {
                let Ok(events) = result else { continue };
                if !events.iter().any(|e| relevant(&e.path)) {
                    continue;
                }
            }
            _ = tokio::time::sleep(RETRY), if unsettled => {}
        }
        unsettled = reload(&host, &mut current, &mut had_file).await;
    }
}

/// Reads everything again and installs it; returns whether a module is still settling.
async fn reload(host: &Arc<Host>, current: &mut Config, had_file: &mut bool) -> bool {
    // An editor that saves by moving the old file away first leaves no runtime.toml for a
    // moment; reading that as "all defaults" would drop every declared function.
    let exists = host.config.path.exists();
    let loaded = if exists || !*had_file {
        config::load(&host.config.path)
    } else {
        tracing::warn!(
            "{} is gone; the previous configuration keeps running until it is back",
            host.config.path.display()
        );
        Ok(current.clone())
    };
    *had_file |= exists;
    match loaded {
        Ok(config) => {
            if config.host != current.host {
                tracing::warn!(
                    "[host] settings changed in {}: they take effect on restart",
                    config.path.display()
                );
            }
            *current = config;
        }
        Err(problems) => {
            tracing::error!("invalid configuration, the previous one keeps running:\n{problems}");
        }
    }
    // Configuration of functions comes from this reload; [host] stays as the host started.
    let mut config = current.clone();
    config.host = host.config.host.clone();
    let previous = host.registry();
    let worker = host.clone();
    let next = tokio::task::spawn_blocking(move || {
        registry::reload(&config, &worker.sandbox, &previous, None, Young::Wait)
    })
    .await;
    match next {
        Ok(next) => {
            let unsettled = next.unsettled;
            host.install(next);
            unsettled
        }
        Err(e) => {
            tracing::error!("reloading failed: {e}");
            false
        }
    }
}
