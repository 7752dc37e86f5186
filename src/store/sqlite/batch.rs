//! The writer of synchronous records: they are gathered and written in batches, each in
//! one transaction, on a thread of their own, so a request never waits for SQLite.
//! Synchronous invocations are recorded but never retried, so nothing durable waits here;
//! `flush` gives readers (the API, shutdown) every record handed over before.
//!
//! The writer thread runs at normal priority: it writes in turns with the store's
//! connection (see `Turns`), one chunk of a batch a turn, and a chunk that holds the turn
//! must end quickly, which a thread at the lowest priority on a busy machine does not
//! (submissions waited up to a second behind it in the soak; at normal priority some
//! 15 ms, with sync p99 unchanged).
//! When requests keep the writer from keeping up, once `BEHIND` records wait a blocking
//! task writes them as well: pending records stay bounded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::{Turns, insert_sync, lock, open_connection};
use crate::store::SyncRecord;

#[derive(Clone)]
pub(super) struct Batcher {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<SyncRecord>>,
    /// Wakes the writer thread when records arrive.
    arrived: Condvar,
    /// Held while a batch is taken and written, so a flush sees every earlier batch done.
    conn: Mutex<Connection>,
    /// The store's: a batch is written in its turn.
    turns: Turns,
    /// A blocking task is writing a backlog besides the writer thread.
    helping: AtomicBool,
}

/// The most records the writer thread gathers before it writes them.
const BATCH: usize = 512;
/// The most records written in one transaction, in one turn. Where requests and the
/// writer share a core, a request waits behind at most one chunk: with the whole batch in
/// one transaction (some 1.5 ms at 17,000 requests/s) the p99 at one connection, the host
/// pinned to one core, was 1.7 ms against a p50 of 0.05; in chunks it is 0.4 ms, at the
/// same CPU a request.
const CHUNK: usize = 64;
/// How long the writer gathers records before it commits them.
const WINDOW: Duration = Duration::from_millis(20);
/// Records waiting beyond which a blocking task writes them besides the writer thread.
const BEHIND: usize = 4 * BATCH;

impl Batcher {
    /// Starts the writer on a connection of its own, so that its commits (and the WAL
    /// checkpoints they trigger) are off the store's connection; it writes in its `turns`
    /// with the store's.
    pub(super) fn start(data_dir: &Path, turns: Turns) -> anyhow::Result<Batcher> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            conn: Mutex::new(open_connection(data_dir)?),
            turns,
            helping: AtomicBool::new(false),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("jobhost-records".into())
            .spawn(move || {
                loop {
                    let pending = lock(&writer.pending);
                    let (pending, _) = writer
                        .arrived
                        .wait_timeout_while(pending, Duration::from_secs(1), |p| p.is_empty())
                        .unwrap_or_else(|e| e.into_inner());
                    if pending.is_empty() {
                        // Every handle is gone (the store was dropped): so is the writer.
                        if Arc::strong_count(&writer) == 1 {
                            return;
                        }
                        continue;
                    }
                    // Gather for up to WINDOW: one commit for many requests costs a
                    // fraction of one commit each.
                    let (pending, _) = writer
                        .arrived
                        .wait_timeout_while(pending, WINDOW, |p| p.len() < BATCH)
                        .unwrap_or_else(|e| e.into_inner());
                    drop(pending);
                    writer.write_pending();
                }
            })?;
        Ok(Batcher { shared })
    }

    pub(super) fn record(&self, record: SyncRecord) {
        let waiting = {
            let mut pending = lock(&self.shared.pending);
            pending.push(record);
            pending.len()
        };
        if waiting == 1 || waiting == BATCH {
            self.shared.arrived.notify_one();
        }
        if waiting >= BEHIND && !self.shared.helping.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            let help = move || {
                shared.write_pending();
                shared.helping.store(false, Ordering::Release);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(help)),
                Err(_) => help(),
            }
        }
    }

    /// Writes every record handed over before; blocks while it does.
    pub(super) fn flush(&self) {
        self.shared.write_pending();
    }
}

impl Shared {
    fn write_pending(&self) {
        let mut conn = lock(&self.conn);
        let batch = std::mem::take(&mut *lock(&self.pending));
        for (n, chunk) in batch.chunks(CHUNK).enumerate() {
            if n > 0 {
                // Lets the request threads run between chunks on a busy core.
                std::thread::yield_now();
            }
            let _turn = self.turns.blocking_lock();
            if let Err(e) = insert_sync(&mut conn, chunk) {
                tracing::error!(
                    "cannot record {} synchronous invocations in {}: {e:#}",
                    chunk.len(),
                    conn.path().unwrap_or("the store")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TriggerKind;
    use crate::store::{Output, now_ms};

    fn record(n: usize) -> SyncRecord {
        SyncRecord {
            id: format!("{n:08}"),
            function: "f".to_string(),
            trigger: TriggerKind::Http,
            reason: crate::store::Reason::Http,
            started_at: now_ms(),
            host: crate::store::HostId("h".into()),
            payload: bytes::Bytes::new(),
            payload_truncated: false,
            output: Output {
                stdout: bytes::Bytes::from_static(b"out"),
                duration: Duration::from_millis(1),
                exit_code: Some(0),
                ..Output::default()
            },
        }
    }

    #[test]
    fn every_sync_record_is_written_including_a_backlog_past_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::start(dir.path(), Turns::default()).unwrap();
        // Far more than the writer gathers at once: the backlog path writes part of them.
        let total = 3 * BEHIND;
        for n in 0..total {
            batcher.record(record(n));
        }
        batcher.flush();
        let conn = open_connection(dir.path()).unwrap();
        let written: i64 = conn
            .query_row("SELECT COUNT(*) FROM invocations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(written, total as i64);
        assert!(lock(&batcher.shared.pending).is_empty());
    }
}
