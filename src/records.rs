//! The invocation store: one SQLite file under `data/` holding a record per invocation
//! (sync HTTP too) and, in the same rows, the durable queue of background work. Named
//! `records`, not `store`, to stay clear of `wasmtime::Store`.
//!
//! The journal is WAL with `synchronous = NORMAL`: a committed row survives the process
//! being killed (even `kill -9`); an operating-system crash may lose the last commits.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::sandbox::Outcome;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS invocations (
    id               TEXT PRIMARY KEY,
    function         TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempt      INTEGER NOT NULL,
    state            TEXT NOT NULL,
    durable          INTEGER NOT NULL,
    payload          BLOB NOT NULL,
    vars             TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    run_after        INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    duration_ms      INTEGER,
    exit_code        INTEGER,
    error            TEXT,
    stdout           BLOB,
    stderr           BLOB,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    timer            TEXT,
    input_dir        TEXT
);
-- Only durable work is looked up by schedule and due time; sync HTTP records (the many)
-- stay out of these indexes, so recording one touches two b-trees less.
DROP INDEX IF EXISTS invocations_timer;
CREATE INDEX IF NOT EXISTS invocations_timer_runs ON invocations (timer, state)
    WHERE timer IS NOT NULL;
CREATE TABLE IF NOT EXISTS receipts (
    watch      TEXT NOT NULL,
    path       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime      INTEGER NOT NULL,
    PRIMARY KEY (watch, path)
);
CREATE TABLE IF NOT EXISTS timers (
    key        TEXT PRIMARY KEY,
    last       INTEGER NOT NULL
);
DROP INDEX IF EXISTS invocations_due;
CREATE INDEX IF NOT EXISTS invocations_durable_due ON invocations (state, run_after)
    WHERE durable = 1;
CREATE INDEX IF NOT EXISTS invocations_function ON invocations (function, id);
";

/// The store, held by one host at a time.
pub struct Records {
    conn: Mutex<Connection>,
    /// Held for the life of the host: a second host on the same `data/` is refused.
    _lock: Option<File>,
}

/// A new invocation to record.
pub struct NewInvocation<'a> {
    pub id: &'a str,
    pub function: &'a str,
    pub trigger: &'a str,
    pub reason: &'a str,
    pub max_attempt: u32,
    pub payload: &'a [u8],
    pub vars: &'a [(String, String)],
    /// The timer that fired it: runs of one timer never overlap.
    pub timer: Option<&'a str>,
    /// The watched folder a file event comes from, mounted read-only at `/input`.
    pub input_dir: Option<&'a Path>,
}

/// What a watch remembers of a file it handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub size: u64,
    pub mtime: i64,
}

/// A queued invocation claimed to run now.
pub struct Claimed {
    pub id: String,
    pub function: String,
    pub trigger: String,
    pub attempt: u32,
    pub max_attempt: u32,
    pub payload: Vec<u8>,
    pub vars: Vec<(String, String)>,
    pub input_dir: Option<PathBuf>,
}

/// A due invocation: what the worker needs to decide whether it can start it.
pub struct Due {
    pub id: String,
    pub function: String,
}

/// A finished sync HTTP invocation, recorded in a batch by [`SyncRecorder`].
pub struct SyncRecord {
    pub id: String,
    pub function: String,
    pub started_at: i64,
    pub outcome: Outcome,
}

/// Writes sync HTTP records in batches, each in one transaction, so a request never waits
/// for SQLite. Sync HTTP is recorded but never retried, so nothing durable waits here;
/// `flush` gives readers (the API, shutdown) every record handed over before.
///
/// The writer thread runs at the lowest priority so its commits stay out of request tail
/// latency. When requests keep every core busy it cannot keep up, so once `SYNC_BEHIND`
/// records wait, a blocking task at normal priority writes them: pending records stay
/// bounded, and a saturated host spends its share of CPU on recording as it should.
#[derive(Clone)]
pub struct SyncRecorder {
    shared: Arc<SyncShared>,
}

struct SyncShared {
    pending: Mutex<Vec<SyncRecord>>,
    /// Wakes the writer thread when records arrive.
    arrived: Condvar,
    /// Held while a batch is taken and written, so a flush sees every earlier batch done.
    conn: Mutex<Connection>,
    /// A normal-priority task is writing a backlog.
    helping: AtomicBool,
}

/// The most records written in one transaction by the writer thread.
const SYNC_BATCH: usize = 512;
/// How long the writer gathers records before it commits them.
const SYNC_WINDOW: Duration = Duration::from_millis(20);
/// Records waiting beyond which a normal-priority task writes them.
const SYNC_BEHIND: usize = 4 * SYNC_BATCH;

impl SyncRecorder {
    /// Starts the writer on a connection of its own, so that its commits (and the WAL
    /// checkpoints they trigger) never hold up the store's other users.
    pub fn start(data_dir: &Path) -> anyhow::Result<SyncRecorder> {
        let shared = Arc::new(SyncShared {
            pending: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            conn: Mutex::new(open_connection(data_dir)?),
            helping: AtomicBool::new(false),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("jobhost-records".into())
            .spawn(move || {
                lower_priority();
                loop {
                    let pending = lock(&writer.pending);
                    let (pending, _) = writer
                        .arrived
                        .wait_timeout_while(pending, Duration::from_secs(1), |p| p.is_empty())
                        .unwrap_or_else(|e| e.into_inner());
                    if pending.is_empty() {
                        // Every recorder is gone (an in-process host stopped): so is the writer.
                        if Arc::strong_count(&writer) == 1 {
                            return;
                        }
                        continue;
                    }
                    // Gather for up to SYNC_WINDOW: one commit for many requests costs a
                    // fraction of one commit each.
                    let (pending, _) = writer
                        .arrived
                        .wait_timeout_while(pending, SYNC_WINDOW, |p| p.len() < SYNC_BATCH)
                        .unwrap_or_else(|e| e.into_inner());
                    drop(pending);
                    writer.write_pending();
                }
            })?;
        Ok(SyncRecorder { shared })
    }

    pub fn record(&self, record: SyncRecord) {
        let waiting = {
            let mut pending = lock(&self.shared.pending);
            pending.push(record);
            pending.len()
        };
        if waiting == 1 || waiting == SYNC_BATCH {
            self.shared.arrived.notify_one();
        }
        if waiting >= SYNC_BEHIND && !self.shared.helping.swap(true, Ordering::AcqRel) {
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
    pub fn flush(&self) {
        self.shared.write_pending();
    }
}

impl SyncShared {
    fn write_pending(&self) {
        let mut conn = lock(&self.conn);
        let batch = std::mem::take(&mut *lock(&self.pending));
        if !batch.is_empty()
            && let Err(e) = insert_sync(&mut conn, &batch)
        {
            tracing::error!("cannot record {} sync HTTP invocations: {e:#}", batch.len());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The records writer yields the CPU to requests: on a machine with few cores its commits
/// would otherwise show up in request tail latency (see [`SyncRecorder`] for the backlog).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names one thread for setpriority.
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
            tracing::debug!("cannot lower the records writer's priority: {e}");
        }
    }
}

/// How a finished attempt leaves the record.
pub enum Next {
    Succeeded,
    /// Failed; run again at this time (ms).
    RetryAt(i64),
    /// Failed, attempts used up.
    Dead,
}

/// An invocation as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Record {
    pub id: String,
    pub function: String,
    pub trigger: String,
    pub reason: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub state: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Filters of `GET /_jobhost/invocations` and `jobhost invocations`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub function: Option<String>,
    pub state: Option<String>,
    pub trigger: Option<String>,
    pub limit: Option<usize>,
}

pub const STATES: &[&str] = &[
    "queued",
    "running",
    "succeeded",
    "failed",
    "dead",
    "skipped",
];

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jobhost.db")
}

fn open_connection(data_dir: &Path) -> anyhow::Result<Connection> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let path = db_path(data_dir);
    let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("preparing {}", path.display()))?;
    Ok(conn)
}

impl Records {
    /// Opens the store for a host; refuses when another host holds `data_dir`.
    pub fn open_for_host(data_dir: &Path) -> anyhow::Result<Records> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
        let lock_path = data_dir.join("host.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another jobhost is running on the data folder {}: stop it, or give this host its own `data` in [host]",
                data_dir.display()
            );
        }
        let conn = open_connection(data_dir)?;
        Ok(Records {
            conn: Mutex::new(conn),
            _lock: Some(lock),
        })
    }

    /// Opens the store beside a running host, for the CLI's reads and retries.
    pub fn open_shared(data_dir: &Path) -> anyhow::Result<Records> {
        Ok(Records {
            conn: Mutex::new(open_connection(data_dir)?),
            _lock: None,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records durable work; once this returns, the invocation will run.
    pub fn enqueue(&self, new: &NewInvocation<'_>, run_after: i64) -> anyhow::Result<()> {
        self.insert(new, "queued", true, run_after)
    }

    /// Records a timer occurrence skipped because the previous run is still going.
    pub fn skipped(&self, new: &NewInvocation<'_>) -> anyhow::Result<()> {
        self.insert(new, "skipped", true, now_ms())
    }

    fn insert(
        &self,
        new: &NewInvocation<'_>,
        state: &str,
        durable: bool,
        run_after: i64,
    ) -> anyhow::Result<()> {
        insert_on(&self.conn(), new, state, durable, run_after)
    }

    /// Queues a file event and stores the file's receipt (`None` forgets it) in one
    /// transaction: a handled file is never forgotten, a forgotten one never handled.
    /// `new` is `None` for a change that the watch's `events` does not fire for.
    pub fn enqueue_file(
        &self,
        new: Option<&NewInvocation<'_>>,
        watch: &str,
        path: &str,
        receipt: Option<Receipt>,
    ) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(new) = new {
            insert_on(&tx, new, "queued", true, now_ms())?;
        }
        match receipt {
            Some(r) => tx.execute(
                "INSERT INTO receipts (watch, path, size, mtime) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (watch, path) DO UPDATE SET size = ?3, mtime = ?4",
                params![watch, path, r.size as i64, r.mtime],
            )?,
            None => tx.execute(
                "DELETE FROM receipts WHERE watch = ?1 AND path = ?2",
                params![watch, path],
            )?,
        };
        tx.commit()?;
        Ok(())
    }

    /// The receipt of one file of a watch.
    pub fn receipt(&self, watch: &str, path: &str) -> anyhow::Result<Option<Receipt>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT size, mtime FROM receipts WHERE watch = ?1 AND path = ?2")?;
        let receipt = stmt
            .query_row(params![watch, path], |r| {
                Ok(Receipt {
                    size: r.get::<_, i64>(0)? as u64,
                    mtime: r.get(1)?,
                })
            })
            .optional()?;
        Ok(receipt)
    }

    /// Every receipt of a watch, by path.
    pub fn receipts(&self, watch: &str) -> anyhow::Result<HashMap<String, Receipt>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT path, size, mtime FROM receipts WHERE watch = ?1")?;
        let rows = stmt.query_map(params![watch], |r| {
            let receipt = Receipt {
                size: r.get::<_, i64>(1)? as u64,
                mtime: r.get(2)?,
            };
            Ok((r.get::<_, String>(0)?, receipt))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Records finished sync HTTP invocations, many in one transaction.
fn insert_sync(conn: &mut Connection, batch: &[SyncRecord]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt, state,
                 durable, payload, vars, created_at, run_after, started_at, finished_at,
                 duration_ms, exit_code, error, stdout, stderr, stdout_truncated, stderr_truncated)
             VALUES (?1, ?2, 'http', 'http', 1, 1, ?3, 0, x'', '[]', ?4, ?4, ?4, ?5, ?6, ?7, ?8,
                 ?9, ?10, ?11, ?12)",
        )?;
        for r in batch {
            let o = &r.outcome;
            stmt.execute(params![
                r.id,
                r.function,
                if o.result.is_ok() {
                    "succeeded"
                } else {
                    "failed"
                },
                r.started_at,
                r.started_at + o.duration.as_millis() as i64,
                o.duration.as_millis() as i64,
                o.exit_code(),
                o.result.as_ref().err().map(ToString::to_string),
                o.stdout.as_ref(),
                o.stderr.as_ref(),
                o.stdout_truncated,
                o.stderr_truncated
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn insert_on(
    conn: &Connection,
    new: &NewInvocation<'_>,
    state: &str,
    durable: bool,
    run_after: i64,
) -> anyhow::Result<()> {
    let now = now_ms();
    let vars = serde_json::to_string(new.vars)?;
    let (attempt, started_at) = if durable { (0, None) } else { (1, Some(now)) };
    conn.execute(
        "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt, state, durable,
             payload, vars, created_at, run_after, started_at, timer, finished_at, input_dir)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            new.id,
            new.function,
            new.trigger,
            new.reason,
            attempt,
            new.max_attempt,
            state,
            durable,
            new.payload,
            vars,
            now,
            run_after,
            started_at,
            new.timer,
            (state == "skipped").then_some(now),
            new.input_dir.map(|p| p.to_string_lossy().into_owned())
        ],
    )?;
    Ok(())
}

impl Records {
    /// Durable invocations ready to run, oldest first.
    pub fn due(&self, now: i64, limit: usize) -> anyhow::Result<Vec<Due>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, function FROM invocations AS i
             WHERE state IN ('queued', 'failed') AND durable = 1 AND run_after <= ?1
               AND (timer IS NULL OR NOT EXISTS
                    (SELECT 1 FROM invocations AS r WHERE r.timer = i.timer AND r.state = 'running'))
             ORDER BY run_after, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok(Due {
                id: r.get(0)?,
                function: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Durable invocations waiting to run: queued, or failed and awaiting a retry.
    pub fn queue_depth(&self) -> anyhow::Result<i64> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM invocations WHERE state IN ('queued', 'failed') AND durable = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// When the next durable invocation becomes due, if any is waiting.
    pub fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT MIN(run_after) FROM invocations WHERE state IN ('queued', 'failed') AND durable = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// Marks a due invocation running with its next attempt; `None` if it is no longer due.
    pub fn claim(&self, id: &str) -> anyhow::Result<Option<Claimed>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE invocations SET state = 'running', attempt = attempt + 1, started_at = ?2,
                 finished_at = NULL, duration_ms = NULL
             WHERE id = ?1 AND state IN ('queued', 'failed') AND durable = 1",
            params![id, now_ms()],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        let claimed = tx.query_row(
            "SELECT id, function, trigger, attempt, max_attempt, payload, vars, input_dir FROM invocations WHERE id = ?1",
            params![id],
            |r| {
                let vars: String = r.get(6)?;
                Ok(Claimed {
                    id: r.get(0)?,
                    function: r.get(1)?,
                    trigger: r.get(2)?,
                    attempt: r.get(3)?,
                    max_attempt: r.get(4)?,
                    payload: r.get(5)?,
                    vars: serde_json::from_str(&vars).unwrap_or_default(),
                    input_dir: r.get::<_, Option<String>>(7)?.map(PathBuf::from),
                })
            },
        )?;
        tx.commit()?;
        Ok(Some(claimed))
    }

    /// Stores the result of an attempt.
    pub fn finish(&self, id: &str, outcome: &Outcome, next: Next) -> anyhow::Result<()> {
        let now = now_ms();
        let (state, run_after) = match next {
            Next::Succeeded => ("succeeded", None),
            Next::RetryAt(at) => ("failed", Some(at)),
            Next::Dead => ("dead", None),
        };
        let error = outcome.result.as_ref().err().map(ToString::to_string);
        self.conn().execute(
            "UPDATE invocations SET state = ?2, finished_at = ?3, duration_ms = ?4, exit_code = ?5,
                 error = ?6, stdout = ?7, stderr = ?8, stdout_truncated = ?9, stderr_truncated = ?10,
                 run_after = COALESCE(?11, run_after)
             WHERE id = ?1",
            params![
                id,
                state,
                now,
                outcome.duration.as_millis() as i64,
                outcome.exit_code(),
                error,
                outcome.stdout.as_ref(),
                outcome.stderr.as_ref(),
                outcome.stdout_truncated,
                outcome.stderr_truncated,
                run_after
            ],
        )?;
        Ok(())
    }

    /// Puts an invocation that a graceful shutdown interrupted back in the queue without
    /// using up its attempt.
    pub fn requeue_interrupted(&self, id: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE invocations SET state = 'queued', attempt = attempt - 1, started_at = NULL,
                 run_after = ?2
             WHERE id = ?1 AND state = 'running'",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// After a crash: durable invocations that were running run again (their next run is
    /// the next attempt); sync HTTP ones were answered or lost with their connection, so
    /// they are marked failed. Returns (requeued, failed).
    pub fn recover(&self) -> anyhow::Result<(usize, usize)> {
        let conn = self.conn();
        let requeued = conn.execute(
            "UPDATE invocations SET state = 'queued', run_after = ?1 WHERE state = 'running' AND durable = 1",
            params![now_ms()],
        )?;
        let failed = conn.execute(
            "UPDATE invocations SET state = 'failed', finished_at = ?1,
                 error = 'interrupted: the host stopped while it ran'
             WHERE state = 'running' AND durable = 0",
            params![now_ms()],
        )?;
        Ok((requeued, failed))
    }

    /// Whether a run of `timer` is going (running) and how many wait (queued).
    pub fn timer_active(&self, timer: &str) -> anyhow::Result<(bool, usize)> {
        let conn = self.conn();
        let count = |state: &str| -> rusqlite::Result<i64> {
            conn.query_row(
                "SELECT COUNT(*) FROM invocations WHERE timer = ?1 AND state = ?2",
                params![timer, state],
                |r| r.get(0),
            )
        };
        Ok((count("running")? > 0, count("queued")? as usize))
    }

    /// The last occurrence a timer handled, in ms.
    pub fn timer_last(&self, timer: &str) -> anyhow::Result<Option<i64>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT last FROM timers WHERE key = ?1",
                params![timer],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_timer_last(&self, timer: &str, last: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO timers (key, last) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET last = ?2",
            params![timer, last],
        )?;
        Ok(())
    }

    /// Forgets the schedule state of timers no longer configured.
    pub fn forget_timers_except(&self, keep: &[String]) -> anyhow::Result<()> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key FROM timers")?;
        let keys: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for key in keys.iter().filter(|k| !keep.contains(k)) {
            conn.execute("DELETE FROM timers WHERE key = ?1", params![key])?;
        }
        Ok(())
    }

    /// Re-queues a dead invocation with a fresh round of `attempts`.
    pub fn retry(&self, id: &str, attempts: u32) -> anyhow::Result<Record> {
        let Some(record) = self.get(id)? else {
            bail!("no invocation {id}");
        };
        if record.state != "dead" {
            bail!(
                "invocation {id} is {}, not dead: only a dead invocation can be retried",
                record.state
            );
        }
        self.conn().execute(
            "UPDATE invocations SET state = 'queued', reason = 'retry', max_attempt = attempt + ?2,
                 run_after = ?3
             WHERE id = ?1 AND state = 'dead'",
            params![id, attempts, now_ms()],
        )?;
        Ok(self.get(id)?.expect("the record was just read"))
    }

    /// Deletes finished records older than `age`. Returns how many.
    pub fn prune(&self, age: Duration) -> anyhow::Result<usize> {
        let before = now_ms() - age.as_millis() as i64;
        Ok(self.conn().execute(
            "DELETE FROM invocations
             WHERE finished_at IS NOT NULL AND finished_at < ?1
               AND (state IN ('succeeded', 'dead', 'skipped') OR (state = 'failed' AND durable = 0))",
            params![before],
        )?)
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<Record>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"))?;
        Ok(stmt.query_row(params![id], record).optional()?)
    }

    /// Records newest first, filtered.
    pub fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Record>> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000) as i64;
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invocations
             WHERE (?1 IS NULL OR function = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR trigger = ?3)
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![filter.function, filter.state, filter.trigger, limit],
            record,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const COLUMNS: &str = "id, function, trigger, reason, attempt, max_attempt, state, created_at, started_at,
    finished_at, run_after, duration_ms, exit_code, error, stdout, stderr, stdout_truncated, stderr_truncated, durable";

fn record(r: &Row<'_>) -> rusqlite::Result<Record> {
    let text = |i: usize| -> rusqlite::Result<String> {
        let bytes: Option<Vec<u8>> = r.get(i)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    };
    let state: String = r.get(6)?;
    let run_after: i64 = r.get(10)?;
    let durable: bool = r.get(18)?;
    Ok(Record {
        id: r.get(0)?,
        function: r.get(1)?,
        trigger: r.get(2)?,
        reason: r.get(3)?,
        attempt: r.get(4)?,
        max_attempts: r.get(5)?,
        next_attempt_at: (durable && matches!(state.as_str(), "queued" | "failed"))
            .then(|| rfc3339(run_after)),
        state,
        created_at: rfc3339(r.get(7)?),
        started_at: r.get::<_, Option<i64>>(8)?.map(rfc3339),
        finished_at: r.get::<_, Option<i64>>(9)?.map(rfc3339),
        duration_ms: r.get::<_, Option<i64>>(11)?.map(|d| d.max(0) as u64),
        exit_code: r.get(12)?,
        error: r.get(13)?,
        stdout: text(14)?,
        stderr: text(15)?,
        stdout_truncated: r.get(16)?,
        stderr_truncated: r.get(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> SyncRecord {
        SyncRecord {
            id: format!("{n:08}"),
            function: "f".to_string(),
            started_at: now_ms(),
            outcome: Outcome {
                result: Ok(()),
                stdout: bytes::Bytes::from_static(b"out"),
                stderr: bytes::Bytes::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                duration: Duration::from_millis(1),
                instantiation: None,
            },
        }
    }

    #[test]
    fn every_sync_record_is_written_including_a_backlog_past_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = SyncRecorder::start(dir.path()).unwrap();
        // Far more than the writer gathers at once: the backlog path writes part of them.
        let total = 3 * SYNC_BEHIND;
        for n in 0..total {
            recorder.record(record(n));
        }
        recorder.flush();
        let conn = open_connection(dir.path()).unwrap();
        let written: i64 = conn
            .query_row("SELECT COUNT(*) FROM invocations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(written, total as i64);
        assert!(lock(&recorder.shared.pending).is_empty());
    }
}
