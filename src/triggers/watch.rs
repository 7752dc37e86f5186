//! Watch triggers: a file fires once per settled change. notify's debouncer reports a path
//! once it has been quiet for `debounce` (its callback only forwards into a channel); the
//! actor loop here then checks the file again and compares it with the receipt in the
//! store (size and modification time), so bursts, atomic saves and renames fire once, and
//! a restart neither re-fires handled files nor misses ones that came while it was down.
//! Symbolic links are never followed: the watch stays inside its folder.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{Config, DebounceEventResult, DebouncedEventKind, new_debouncer_opt};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::config::{FileEvent, TriggerKind, WatchScope, WatchTrigger};
use crate::dispatch::INPUT;
use crate::metrics::{self, WatchGauge, WatchState};
use crate::registry::Function;
use crate::store::{HostId, Reason, Receipt};

/// How often the folder itself is checked: created after the host started, or removed
/// and created again.
const FOLDER_CHECK: Duration = Duration::from_millis(250);

/// The key receipts are stored under; with `scope = "host"`, this host's own.
pub fn key(function: &str, watch: &WatchTrigger, host: &HostId) -> String {
    let shared = format!(
        "{function} {} {} {}",
        watch.folder.display(),
        watch.pattern.as_deref().unwrap_or("*"),
        if watch.recursive { "recursive" } else { "flat" }
    );
    match watch.scope {
        WatchScope::Shared => shared,
        WatchScope::Host => format!("{shared} host {host}"),
    }
}

/// Temporary and swap files, and anything in a dot-folder (or a dot-file), never fire.
fn ignored(rel: &Path) -> bool {
    let components: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let Some(name) = components.last() else {
        return true;
    };
    components.iter().any(|c| c.starts_with('.'))
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || name.ends_with(".tmp")
}

fn wanted(watch: &WatchTrigger, rel: &Path) -> bool {
    if ignored(rel) || (!watch.recursive && rel.components().count() != 1) {
        return false;
    }
    match (&watch.matcher, &watch.pattern) {
        (Some(m), Some(p)) if p.contains('/') => m.is_match(rel),
        (Some(m), _) => rel.file_name().is_some_and(|n| m.is_match(n)),
        _ => true,
    }
}

/// The file's receipt now, or `None` if it is not a regular file (a link is not).
fn stat(path: &Path) -> Option<Receipt> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64 / 1000);
    Some(Receipt {
        size: meta.len(),
        mtime,
    })
}

fn rel_text(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The files of a watch's folder that it fires for, with their receipts. Symbolic links
/// are neither followed nor fired for: a link could lead out of the folder (a guest could
/// not read through it anyway: `/input` does not follow links out) or round in a loop.
fn scan(watch: &WatchTrigger, dir: &Path, out: &mut Vec<(String, Receipt)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(&watch.folder) else {
            continue;
        };
        // The entry's own type: a link is a link, whatever it points at.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if watch.recursive && !ignored(rel) {
                scan(watch, &path, out);
            }
        } else if kind.is_file()
            && wanted(watch, rel)
            && let Some(receipt) = stat(&path)
        {
            out.push((rel_text(rel), receipt));
        }
    }
}

/// The folder's identity, to notice it was removed and created again.
fn identity(folder: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(folder).ok().filter(|m| m.is_dir())?;
    Some((meta.dev(), meta.ino()))
}

struct Watch {
    context: Context,
    function: Arc<Function>,
    watch: WatchTrigger,
    key: String,
}

pub async fn run(
    context: Context,
    function: Arc<Function>,
    watch: WatchTrigger,
    stop: CancellationToken,
) {
    let key = key(&function.spec.name, &watch, context.dispatch.owner());
    let w = Watch {
        context,
        function,
        watch,
        key,
    };
    let name = w.function.spec.name.clone();
    let folder = w.watch.folder.clone();
    let mut said_missing = false;
    let mut gauge = WatchGauge::default();
    loop {
        let Some(id) = identity(&folder) else {
            gauge.set(WatchState::Waiting);
            if !said_missing {
                tracing::warn!(function = %name, "watched folder {} does not exist yet; waiting for it", folder.display());
                said_missing = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FOLDER_CHECK) => continue,
            }
        };
        said_missing = false;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
        // notify follows links when it watches a tree; a link out of the folder, or round a
        // loop, must not be watched.
        let config = Config::default()
            .with_timeout(w.watch.debounce)
            .with_notify_config(notify::Config::default().with_follow_symlinks(false));
        let debouncer = new_debouncer_opt::<_, RecommendedWatcher>(config, move |result| {
            let _ = tx.send(result);
        });
        let mut debouncer = match debouncer {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(function = %name, "cannot watch {}: {e}", folder.display());
                return;
            }
        };
        let mode = if w.watch.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = debouncer.watcher().watch(&folder, mode) {
            tracing::warn!(function = %name, "cannot watch {} yet: {e}", folder.display());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FOLDER_CHECK) => continue,
            }
        }
        tracing::info!(function = %name, "watching {}", folder.display());
        // What changed while nobody watched: before the start, or while the folder was gone.
        w.reconcile().await;
        gauge.set(WatchState::Watching);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(result) = rx.recv() => match result {
                    Ok(events) => {
                        let mut paths = HashSet::new();
                        for event in events {
                            if event.kind == DebouncedEventKind::Any {
                                paths.insert(event.path);
                            }
                        }
                        for path in paths {
                            w.settled(&path).await;
                        }
                    }
                    Err(e) => tracing::warn!(function = %name, "watch error on {}: {e}", folder.display()),
                },
                _ = tokio::time::sleep(FOLDER_CHECK) => {
                    if identity(&folder) != Some(id) {
                        tracing::warn!(function = %name, "watched folder {} was removed; waiting for it to come back", folder.display());
                        gauge.set(WatchState::Waiting);
                        break;
                    }
                }
            }
        }
        drop(debouncer);
    }
}

impl Watch {
    /// A path that has been quiet for `debounce`: check it again and fire if it changed.
    async fn settled(&self, path: &Path) {
        let Ok(rel) = path.strip_prefix(&self.watch.folder) else {
            return;
        };
        if rel.as_os_str().is_empty() {
            return; // the folder itself; its removal is noticed by the identity check
        }
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            // A folder moved in or created: whatever it holds is new.
            if self.watch.recursive {
                self.reconcile().await;
            }
            return;
        }
        if !wanted(&self.watch, rel) {
            return;
        }
        let rel = rel_text(rel);
        let before = match self.context.state.receipt(&self.key, &rel).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(function = %self.function.spec.name, "reading receipts: {e:#}");
                return;
            }
        };
        self.changed(&rel, before, stat(path)).await;
    }

    /// Compares the folder with the receipts and fires for every difference.
    async fn reconcile(&self) {
        let mut receipts = match self.context.state.receipts(&self.key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(function = %self.function.spec.name, "reading receipts: {e:#}");
                return;
            }
        };
        // Off the async workers: a big tree takes a while to read.
        let watch = self.watch.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            scan(&watch, &watch.folder, &mut files);
            files
        })
        .await;
        // A scan that did not finish says nothing about which files went.
        let files = match scanned {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(function = %self.function.spec.name, "scanning the folder: {e}");
                return;
            }
        };
        for (rel, now) in files {
            let before = receipts.remove(&rel);
            self.changed(&rel, before, Some(now)).await;
        }
        for (rel, before) in receipts {
            self.changed(&rel, Some(before), None).await;
        }
    }

    async fn changed(&self, rel: &str, before: Option<Receipt>, now: Option<Receipt>) {
        let event = match (before, now) {
            (None, Some(_)) => FileEvent::Created,
            (Some(b), Some(n)) if b != n => FileEvent::Modified,
            (Some(_), None) => FileEvent::Removed,
            _ => return,
        };
        let name = &self.function.spec.name;
        let fire = self.watch.events.contains(&event);
        if fire && let Some(now) = now {
            let written = UNIX_EPOCH + Duration::from_micros(now.mtime.max(0) as u64);
            metrics::get().watch_latency(written.elapsed().unwrap_or_default());
        }
        let guest_path = format!("{INPUT}/{rel}");
        let vars = vec![
            ("JOBHOST_FILE_PATH".to_string(), guest_path.clone()),
            ("JOBHOST_FILE_EVENT".to_string(), event.as_str().to_string()),
        ];
        let payload = serde_json::json!({
            "trigger": "file",
            "event": event.as_str(),
            "path": guest_path,
            "size": now.map(|r| r.size),
        })
        .to_string();
        let dispatch = &self.context.dispatch;
        let invocation = fire.then(|| {
            let mut new = dispatch.new_invocation(
                &self.function,
                TriggerKind::File,
                Reason::File,
                Bytes::from(payload),
                vars,
            );
            new.input_dir = Some(self.watch.folder.clone());
            new
        });
        let id = invocation.as_ref().map(|i| i.id.clone());
        match self
            .context
            .state
            .fire_file(&self.key, rel, before, now, invocation)
            .await
        {
            Ok(true) => {
                if let Some(id) = id {
                    tracing::info!(function = %name, %id, "{} {rel}", event.as_str());
                    dispatch.wake();
                }
            }
            Ok(false) => {
                tracing::debug!(function = %name, "{} {rel}: already handled (by another host sharing the folder)", event.as_str());
            }
            Err(e) => {
                tracing::error!(function = %name, "cannot queue {} {rel}: {e:#}", event.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_swap_and_dot_files_never_fire() {
        for (path, expect) in [
            ("a.png", false),
            ("a.png.swp", true),
            ("a.png~", true),
            (".#a.png", true),
            ("a.tmp", true),
            (".cache/a.png", true),
            ("sub/a.png", false),
        ] {
            assert_eq!(ignored(Path::new(path)), expect, "{path}");
        }
    }
}
