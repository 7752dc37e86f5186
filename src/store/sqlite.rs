//! The embedded store: one SQLite file, `data/jobhost.db`, holding a row per invocation
//! (synchronous ones too), which is both the record the API shows and, for durable work,
//! the queue entry; timer cursors and watch receipts beside it. Every call runs on a
//! blocking thread, never on the async runtime's workers.
//!
//! The journal is WAL with `synchronous = NORMAL`: a committed row survives the process
//! being killed (even `kill -9`); an operating-system crash may lose the last commits.
//! `data/host.lock` (see [`super::lock_data_dir`]) keeps a second host off the same folder,
//! so one host owns every claim in the file; the CLI opens it beside a running host.

mod batch;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    CANCELLED, CallbackTry, CallbackView, Callbacks, CancelError, Cancelled, Candidate, Chain,
    Claimed, Cluster, DueCallback, ENDED, Enqueued, Filter, Fired, History, HostId, HostView,
    KeyValues, KvError, Lease, NewInvocation, Next, Output, Progress, Queue, Receipt, Record,
    Recovered, Rescued, RetryError, State, Stats, SyncRecord, TimerFire, TriggerState, Wanted,
    choose, columns, millis, now_ms,
};
use crate::config::{Overlap, TriggerKind};
use batch::Batcher;

/// The schema, one step per version (`PRAGMA user_version`); a file from an older jobhost
/// is brought up to date when it is opened.
const MIGRATIONS: &[&str] = &[
    // 1: invocations (records and queue), watch receipts, timer cursors.
    "CREATE TABLE IF NOT EXISTS invocations (
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
    -- Only durable work is looked up by schedule and due time; synchronous records (the
    -- many) stay out of these indexes, so recording one touches two b-trees less.
    DROP INDEX IF EXISTS invocations_timer;
    CREATE INDEX IF NOT EXISTS invocations_timer_runs ON invocations (timer, state)
        WHERE timer IS NOT NULL;
    DROP INDEX IF EXISTS invocations_due;
    CREATE INDEX IF NOT EXISTS invocations_durable_due ON invocations (state, run_after)
        WHERE durable = 1;
    CREATE INDEX IF NOT EXISTS invocations_function ON invocations (function, id);
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
    );",
    // 2: a claim carries its owner and a fence; the size of a round of attempts is kept
    // for retries.
    "ALTER TABLE invocations ADD COLUMN owner TEXT;
    ALTER TABLE invocations ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN attempts INTEGER;",
    // 3: synchronous records keep an excerpt of their payload, flagged when cut.
    "ALTER TABLE invocations ADD COLUMN payload_truncated INTEGER NOT NULL DEFAULT 0;",
    // 4: hosts say they are alive (one at a time here, but the API lists it).
    "CREATE TABLE IF NOT EXISTS hosts (
        id           TEXT PRIMARY KEY,
        started_at   INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );",
    // 5: claims take each function's due work by priority, then due time.
    "ALTER TABLE invocations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS invocations_claim
        ON invocations (function, priority DESC, run_after, id)
        WHERE durable = 1 AND state IN ('queued', 'failed');",
    // 6: when a timer's `run_on_startup` run last fired.
    "ALTER TABLE timers ADD COLUMN startup INTEGER;",
    // 7: delayed work waits as `scheduled`, claimed from the same index once due.
    "DROP INDEX IF EXISTS invocations_claim;
    CREATE INDEX IF NOT EXISTS invocations_claim
        ON invocations (function, priority DESC, run_after, id)
        WHERE durable = 1 AND state IN ('queued', 'failed', 'scheduled');",
    // 8: a caller's idempotency key, one invocation per key and function.
    "ALTER TABLE invocations ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX IF NOT EXISTS invocations_idempotency
        ON invocations (function, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // 9: a user asked to cancel a running invocation; its host interrupts it.
    "ALTER TABLE invocations ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;",
    // 10: chains: the invocation that made one, and how deep in a chain it is.
    "ALTER TABLE invocations ADD COLUMN parent_id TEXT;
    ALTER TABLE invocations ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS invocations_parent ON invocations (parent_id, id)
        WHERE parent_id IS NOT NULL;",
    // 11: a running invocation's checkpoint and what it says of its progress.
    "ALTER TABLE invocations ADD COLUMN checkpoint BLOB;
    ALTER TABLE invocations ADD COLUMN progress INTEGER;
    ALTER TABLE invocations ADD COLUMN progress_message TEXT;",
    // 12: key-value data, by store and key.
    "CREATE TABLE IF NOT EXISTS kv (
        store TEXT NOT NULL,
        key   TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (store, key)
    ) WITHOUT ROWID;",
    // 13: completion callbacks: where an invocation's record goes once it ends, and how
    // its delivery goes.
    "ALTER TABLE invocations ADD COLUMN callback_url TEXT;
    ALTER TABLE invocations ADD COLUMN callback_state TEXT;
    ALTER TABLE invocations ADD COLUMN callback_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN callback_status INTEGER;
    ALTER TABLE invocations ADD COLUMN callback_error TEXT;
    ALTER TABLE invocations ADD COLUMN callback_next INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS invocations_callbacks ON invocations (callback_next)
        WHERE callback_state = 'pending' AND state IN ('succeeded', 'dead', 'cancelled');",
    // 14: functions whose background work an operator paused.
    "CREATE TABLE IF NOT EXISTS paused (
        function  TEXT PRIMARY KEY,
        paused_at INTEGER NOT NULL
    );",
    // 15: the dashboard's filters and overview read indexes, not every record: by state,
    // by trigger, records with an error, and ends by time.
    "CREATE INDEX IF NOT EXISTS invocations_state ON invocations (state, id);
    CREATE INDEX IF NOT EXISTS invocations_trigger ON invocations (trigger, id);
    CREATE INDEX IF NOT EXISTS invocations_errors ON invocations (id) WHERE error IS NOT NULL;
    CREATE INDEX IF NOT EXISTS invocations_ended ON invocations (finished_at / 60000, state)
        WHERE finished_at IS NOT NULL;",
];

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jobhost.db")
}

fn open_connection(data_dir: &Path) -> anyhow::Result<Connection> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let path = db_path(data_dir);
    let mut conn =
        Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&mut conn).with_context(|| format!("preparing {}", path.display()))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current == MIGRATIONS.len() as i64 {
        return Ok(());
    }
    // Read again under the write lock: another process may have migrated meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        bail!(
            "the store is at schema version {version}, newer than this jobhost knows ({}): use the newer jobhost, or another data folder",
            MIGRATIONS.len()
        );
    }
    for step in &MIGRATIONS[version..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

/// A file's device and inode: the same path with another identity is another file.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The store in `data/jobhost.db`.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Shared with the records writer's connection.
    turns: Turns,
    batch: Batcher,
    /// `data/jobhost.db`, named in every error.
    path: PathBuf,
    /// The file's identity when it was opened, to notice it deleted or replaced.
    identity: Option<(u64, u64)>,
    /// Held for the life of a host: a second host on the same `data/` is refused.
    _lock: Option<File>,
}

impl SqliteStore {
    /// Opens `data/jobhost.db`; a host passes the lock it holds on the folder.
    pub fn open(data_dir: &Path, lock: Option<File>) -> anyhow::Result<SqliteStore> {
        let conn = open_connection(data_dir)?;
        let path = db_path(data_dir);
        let turns = Turns::default();
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            batch: Batcher::start(data_dir, turns.clone())?,
            turns,
            identity: identity(&path).ok(),
            path,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, on a blocking thread, in its turn; an error names the
    /// file.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (conn, turns) = (self.conn.clone(), self.turns.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = turns.blocking_lock();
            f(&mut lock(&conn))
        })
        .await
        .context("the store's worker thread failed")?
        .with_context(|| format!("the store {}", self.path.display()))
    }
}

/// A claimed invocation given back without using its attempt (?3 is now, ?4 the cancel
/// text): to the queue, or `cancelled` when a cancel was asked meanwhile (it ends rather
/// than run again).
const RELEASED: &str = "
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested THEN ?3 END,
    error = CASE WHEN cancel_requested THEN ?4 ELSE error END,
    attempt = attempt - 1, started_at = NULL, run_after = ?3";

/// The store's connections in this process (the store's own and the records writer's) use
/// the database in turns, first come first served. SQLite lets one connection write at a
/// time and has the others poll for the lock, sleeping up to 100 ms between looks, until
/// `busy_timeout`: under a steady stream of record batches a submission could poll for
/// seconds and then fail. A queue does not lose its place; the polling stays only for
/// other processes (the CLI). Taken on blocking threads only, before the connection.
#[derive(Clone, Default)]
struct Turns(Arc<tokio::sync::Mutex<()>>);

impl Turns {
    fn blocking_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.blocking_lock()
    }
}

/// One chunk of `History::prune`: up to ?3 finished records that ended before ?2 (ms),
/// found through the index of ends per minute (?1 is ?2's minute; `+state` keeps the
/// planner off the index by state, which holds nearly every record under `succeeded`).
const PRUNE_CHUNK: &str = "DELETE FROM invocations WHERE rowid IN (
    SELECT rowid FROM invocations
    WHERE finished_at / 60000 <= ?1 AND finished_at < ?2
      AND (+state IN ('succeeded', 'dead', 'skipped', 'cancelled') OR (+state = 'failed' AND durable = 0))
    LIMIT ?3)";
const PRUNE_CHUNK_ROWS: usize = 2000;

/// Records in one state, for `History::stats`: a range of the index by state, counted
/// without reading a row (for every state in turn, three times faster than one `GROUP BY`
/// over the whole index, measured at 100,000 records).
const COUNT_IN_STATE: &str = "SELECT count(*) FROM invocations WHERE state = ?1";

/// Invocations ended since minute `?1` (ms / 60,000) per minute and state, for
/// `History::stats`: the index holds the minute itself, so the groups come in its order
/// (no sort: 11 ms instead of 78 at 100,000 records in the hour).
const ENDED_PER_MINUTE: &str = "SELECT finished_at / 60000, state, count(*) FROM invocations
     WHERE finished_at / 60000 >= ?1 AND finished_at IS NOT NULL
     GROUP BY finished_at / 60000, state";

/// The query of `History::list` and the values of its placeholders.
fn list_query(filter: &Filter) -> (String, Vec<Box<dyn rusqlite::ToSql + Send>>) {
    let (clause, values) = filter.conditions(|n| format!("?{n}"), "LIKE");
    let mut bound: Vec<Box<dyn rusqlite::ToSql + Send>> = values
        .into_iter()
        .map(|v| Box::new(v) as Box<dyn rusqlite::ToSql + Send>)
        .collect();
    bound.push(Box::new(filter.limit() as i64));
    let limit = format!("?{}", bound.len());
    let excerpt = filter.excerpt.map(|n| {
        bound.push(Box::new(n as i64));
        format!("?{}", bound.len())
    });
    let columns = columns(excerpt.as_deref());
    let sql = format!("SELECT {columns} FROM invocations {clause} ORDER BY id DESC LIMIT {limit}");
    (sql, bound)
}

/// Inserts a new invocation in `state`, or running its first attempt for `owner` (see
/// [`Queue::enqueue_claimed`]); `false` when its idempotency key is taken (nothing
/// inserted).
fn insert(
    conn: &Connection,
    new: &NewInvocation,
    state: State,
    owner: Option<&HostId>,
) -> anyhow::Result<bool> {
    let now = now_ms();
    let (state, run_after) = match owner {
        Some(_) => (State::Running, now),
        None => super::waiting(new, state, now),
    };
    let vars = serde_json::to_string(&new.vars)?;
    let inserted = conn.prepare_cached(
        "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt, attempts,
             state, durable, payload, vars, created_at, run_after, timer, finished_at, input_dir,
             priority, idempotency_key, parent_id, depth, callback_url, callback_state,
             owner, fence, started_at)
         VALUES (?1, ?2, ?3, ?4, ?19 IS NOT NULL, ?5, ?5, ?6, 1, ?7, ?8, ?9, ?14, ?10, ?11, ?12,
             ?13, ?15, ?16, ?17, ?18, CASE WHEN ?18 IS NOT NULL AND ?6 <> 'skipped' THEN 'pending' END,
             ?19, ?19 IS NOT NULL, CASE WHEN ?19 IS NOT NULL THEN ?9 END)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        new.id,
        new.function,
        new.trigger.as_str(),
        new.reason.as_str(),
        new.attempts,
        state.as_str(),
        new.payload.as_ref(),
        vars,
        now,
        new.timer,
        (state == State::Skipped).then_some(now),
        new.input_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        new.priority,
        run_after,
        new.idempotency_key,
        new.parent_id,
        new.depth,
        new.callback,
        owner.map(HostId::as_str)
    ])?;
    Ok(inserted == 1)
}

/// Stores `new` (running for `owner` when given), or names the invocation that holds its
/// idempotency key.
fn enqueue(
    conn: &Connection,
    new: &NewInvocation,
    owner: Option<&HostId>,
) -> anyhow::Result<Enqueued> {
    if insert(conn, new, State::Queued, owner)? {
        return Ok(Enqueued::New(new.id.clone()));
    }
    let (id, payload): (String, Vec<u8>) = conn.query_row(
        "SELECT id, payload FROM invocations WHERE function = ?1 AND idempotency_key = ?2",
        params![new.function, new.idempotency_key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Enqueued::Existing {
        id,
        same_payload: payload == new.payload.as_ref(),
    })
}

/// Queues what a finished invocation's chain starts in `state` (see [`Queue::finish`]).
fn start_chain(conn: &Connection, id: &str, state: State, chain: Chain) -> anyhow::Result<()> {
    let record = match chain.wants_record(state) {
        true => Some(get(conn, id)?.context("the record was just updated")?),
        false => None,
    };
    for new in chain.starts(state, record.as_ref())? {
        insert(conn, &new, State::Queued, None)?;
    }
    Ok(())
}

fn set_cursor(conn: &Connection, key: &str, at: i64) -> anyhow::Result<()> {
    conn.prepare_cached(
        "INSERT INTO timers (key, last) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET last = MAX(last, ?2)",
    )?
    .execute(params![key, at])?;
    Ok(())
}

/// Records finished synchronous invocations, many in one transaction.
fn insert_sync(conn: &mut Connection, batch: &[SyncRecord]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt, state,
                 durable, payload, vars, created_at, run_after, started_at, finished_at,
                 duration_ms, exit_code, error, stdout, stderr, stdout_truncated, stderr_truncated,
                 payload_truncated, owner)
             VALUES (?1, ?2, ?3, ?4, 1, 1, ?5, 0, ?15, '[]', ?6, ?6, ?6, ?7, ?8, ?9, ?10,
                 ?11, ?12, ?13, ?14, ?16, ?17)",
        )?;
        for r in batch {
            let o = &r.output;
            let state = if o.error.is_none() {
                State::Succeeded
            } else {
                State::Failed
            };
            let duration = o.duration.as_millis() as i64;
            stmt.execute(params![
                r.id,
                r.function,
                r.trigger.as_str(),
                r.reason.as_str(),
                state.as_str(),
                r.started_at,
                r.started_at + duration,
                duration,
                o.exit_code,
                o.error,
                o.stdout.as_ref(),
                o.stderr.as_ref(),
                o.stdout_truncated,
                o.stderr_truncated,
                r.payload.as_ref(),
                r.payload_truncated,
                r.host.as_str()
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A stored name read back as its enum; a name this build does not know is an error that
/// says so, rather than a wrong value.
fn named<T>(r: &Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            Type::Text,
            format!("unknown value {text:?} (written by another version of jobhost?)").into(),
        )
    })
}

fn record(r: &Row<'_>) -> rusqlite::Result<Record> {
    let text = |i: usize| -> rusqlite::Result<String> {
        let bytes: Option<Vec<u8>> = r.get(i)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    };
    let state = named(r, 6, State::parse)?;
    let durable: bool = r.get(14)?;
    Ok(Record {
        id: r.get(0)?,
        function: r.get(1)?,
        trigger: r.get(2)?,
        reason: r.get(3)?,
        attempt: r.get(4)?,
        max_attempts: r.get(5)?,
        next_attempt_at: (durable && state.is_waiting())
            .then(|| r.get(10))
            .transpose()?,
        state,
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        duration_ms: r.get::<_, Option<i64>>(11)?.map(|d| d.max(0) as u64),
        exit_code: r.get(12)?,
        error: r.get(13)?,
        payload: text(15)?,
        payload_truncated: r.get(16)?,
        stdout: text(17)?,
        stdout_truncated: r.get(18)?,
        stderr: text(19)?,
        stderr_truncated: r.get(20)?,
        host: r.get(21)?,
        priority: r.get(22)?,
        idempotency_key: r.get(23)?,
        cancel_requested: r.get(24)?,
        parent_id: r.get(25)?,
        progress: Progress::stored(r.get(26)?, r.get(27)?),
        callback: CallbackView::stored(
            state,
            r.get(28)?,
            r.get(29)?,
            r.get(30)?,
            r.get(31)?,
            r.get(32)?,
            r.get(33)?,
        ),
        children: None,
    })
}

fn get(conn: &Connection, id: &str) -> anyhow::Result<Option<Record>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM invocations WHERE id = ?1",
        columns(None)
    ))?;
    stmt.query_row(params![id], record)
        .optional()
        .with_context(|| format!("reading invocation {id}"))
}

/// Marks one due invocation running for `owner`, with its next attempt and a new fence;
/// `None` when it is not due (or a run of its timer is going).
fn claim_row(
    conn: &Connection,
    id: &str,
    owner: &HostId,
    now: i64,
) -> anyhow::Result<Option<Claimed>> {
    let mut stmt = conn.prepare_cached(
        "UPDATE invocations SET state = 'running', attempt = attempt + 1, started_at = ?3,
             finished_at = NULL, duration_ms = NULL, owner = ?2, fence = fence + 1,
             progress = NULL, progress_message = NULL
         WHERE id = ?1 AND state IN ('queued', 'failed', 'scheduled') AND durable = 1
           AND run_after <= ?3
           AND (timer IS NULL OR NOT EXISTS (SELECT 1 FROM invocations AS r
                WHERE r.timer = invocations.timer AND r.state = 'running'))
         RETURNING function, trigger, attempt, max_attempt, payload, vars, input_dir, fence,
             depth",
    )?;
    let claimed = stmt
        .query_row(params![id, owner.as_str(), now], |r| {
            let trigger: String = r.get(1)?;
            let vars: String = r.get(5)?;
            let payload: Vec<u8> = r.get(4)?;
            Ok(Claimed {
                lease: Lease {
                    id: id.to_string(),
                    owner: owner.clone(),
                    fence: r.get(7)?,
                },
                function: r.get(0)?,
                trigger: TriggerKind::parse(&trigger).ok_or(trigger),
                attempt: r.get(2)?,
                max_attempt: r.get(3)?,
                payload: payload.into(),
                vars: serde_json::from_str(&vars).unwrap_or_default(),
                input_dir: r.get::<_, Option<String>>(6)?.map(PathBuf::from),
                depth: r.get(8)?,
            })
        })
        .optional()?;
    Ok(claimed)
}

#[async_trait]
impl Queue for SqliteStore {
    async fn enqueue(&self, new: NewInvocation) -> anyhow::Result<Enqueued> {
        self.with(move |conn| enqueue(conn, &new, None)).await
    }

    async fn enqueue_claimed(
        &self,
        new: NewInvocation,
        owner: &HostId,
    ) -> anyhow::Result<(Enqueued, Option<Claimed>)> {
        let owner = owner.clone();
        self.with(move |conn| {
            let due = new.run_after.is_none_or(|at| at <= now_ms());
            let enqueued = enqueue(conn, &new, due.then_some(&owner))?;
            let claimed = (due && matches!(enqueued, Enqueued::New(_)))
                .then(|| super::claimed_new(new, &owner));
            Ok((enqueued, claimed))
        })
        .await
    }

    async fn claim_due(&self, owner: &HostId, wanted: &Wanted) -> anyhow::Result<Vec<Claimed>> {
        let (owner, wanted) = (owner.clone(), wanted.clone());
        self.with(move |conn| {
            // One writer at a time: what is counted stays true until the commit.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let mut candidates = Vec::new();
            {
                let mut running = tx.prepare_cached(
                    "SELECT COUNT(*) FROM invocations
                     WHERE function = ?1 AND state = 'running' AND durable = 1",
                )?;
                let mut due = tx.prepare_cached(
                    "SELECT id, priority, run_after, timer FROM invocations AS i
                     WHERE function = ?1 AND durable = 1 AND state IN ('queued', 'failed', 'scheduled')
                       AND run_after <= ?2
                       AND (timer IS NULL OR NOT EXISTS (SELECT 1 FROM invocations AS r
                            WHERE r.timer = i.timer AND r.state = 'running'))
                       AND NOT EXISTS (SELECT 1 FROM paused WHERE paused.function = ?1)
                     ORDER BY priority DESC, run_after, id LIMIT ?3",
                )?;
                for slots in &wanted.functions {
                    let running_now = match slots.everywhere {
                        Some(_) => running.query_row(params![slots.function], |r| r.get(0))?,
                        None => 0,
                    };
                    let room = slots.room(running_now).min(wanted.limit);
                    if room == 0 {
                        continue;
                    }
                    let rows = due.query_map(params![slots.function, now, room as i64], |r| {
                        Ok(Candidate {
                            id: r.get(0)?,
                            priority: r.get(1)?,
                            run_after: r.get(2)?,
                            timer: r.get(3)?,
                        })
                    })?;
                    for row in rows {
                        candidates.push(row?);
                    }
                }
            }
            let mut claimed = Vec::new();
            for candidate in choose(candidates, wanted.limit) {
                claimed.extend(claim_row(&tx, &candidate.id, &owner, now)?);
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    fn work_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        // One host per file: what others write (the CLI's `retry`) is found by polling.
        None
    }

    async fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        self.with(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(run_after) FROM invocations WHERE state IN ('queued', 'failed', 'scheduled') AND durable = 1",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn depth(&self) -> anyhow::Result<i64> {
        self.with(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM invocations WHERE state IN ('queued', 'failed', 'scheduled') AND durable = 1",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn claim(&self, id: &str, owner: &HostId) -> anyhow::Result<Option<Claimed>> {
        let (id, owner) = (id.to_string(), owner.clone());
        self.with(move |conn| {
            // In a transaction: a row that fails to read back is not left `running`.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed = claim_row(&tx, &id, &owner, now_ms())?;
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn finish(
        &self,
        lease: &Lease,
        output: Output,
        next: Next,
        chain: Chain,
    ) -> anyhow::Result<bool> {
        let lease = lease.clone();
        self.with(move |conn| {
            let (state, run_after) = next.state();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A run a user cancelled ends `cancelled` unless it succeeded: never retried.
            let ended = tx
                .prepare_cached(
                    "UPDATE invocations SET finished_at = ?4, duration_ms = ?5, exit_code = ?6,
                         error = ?7, stdout = ?8, stderr = ?9, stdout_truncated = ?10,
                         stderr_truncated = ?11, run_after = COALESCE(?12, run_after),
                         state = CASE WHEN cancel_requested AND ?3 <> 'succeeded' THEN 'cancelled'
                                      ELSE ?3 END,
                         checkpoint = CASE WHEN ?3 = 'succeeded' THEN NULL ELSE checkpoint END
                     WHERE id = ?1 AND state = 'running' AND fence = ?2
                     RETURNING state",
                )?
                .query_row(
                    params![
                        lease.id,
                        lease.fence,
                        state.as_str(),
                        now_ms(),
                        output.duration.as_millis() as i64,
                        output.exit_code,
                        output.error,
                        output.stdout.as_ref(),
                        output.stderr.as_ref(),
                        output.stdout_truncated,
                        output.stderr_truncated,
                        run_after
                    ],
                    |r| named(r, 0, State::parse),
                )
                .optional()?;
            let Some(ended) = ended else {
                return Ok(false);
            };
            start_chain(&tx, &lease.id, ended, chain)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> anyhow::Result<bool> {
        let lease = lease.clone();
        self.with(move |conn| {
            let changed = conn.execute(
                &format!(
                    "UPDATE invocations SET {RELEASED} WHERE id = ?1 AND state = 'running' AND fence = ?2"
                ),
                params![lease.id, lease.fence, now_ms(), CANCELLED],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lost(
        &self,
        owner: &HostId,
        running: &[String],
        claimed_before: i64,
    ) -> anyhow::Result<Vec<String>> {
        // The ids it runs go in as one JSON array, read by SQLite's own `json_each`.
        let running = serde_json::to_string(running)?;
        let owner = owner.as_str().to_string();
        self.with(move |conn| {
            let released = conn
                .prepare(&format!(
                    "UPDATE invocations SET {RELEASED}
                     WHERE state = 'running' AND durable = 1 AND owner = ?5 AND started_at < ?1
                       AND id NOT IN (SELECT value FROM json_each(?2))
                     RETURNING id"
                ))?
                .query_map(
                    params![claimed_before, running, now_ms(), CANCELLED, owner],
                    |r| r.get(0),
                )?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(released)
        })
        .await
    }

    async fn recover(&self, _owner: &HostId) -> anyhow::Result<Recovered> {
        // The host lock makes this host the only one on the file, so every running row is
        // one of its own, whatever owner it was claimed under.
        self.with(|conn| {
            let now = now_ms();
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE invocations SET state = 'cancelled', finished_at = ?1, error = ?2
                 WHERE state = 'running' AND durable = 1 AND cancel_requested",
                params![now, CANCELLED],
            )?;
            let dead = tx
                .prepare(
                    "UPDATE invocations SET state = 'dead', finished_at = ?1,
                         error = 'interrupted: the host stopped while it ran, and no attempts were left'
                     WHERE state = 'running' AND durable = 1 AND attempt >= max_attempt
                     RETURNING id",
                )?
                .query_map(params![now], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let requeued = tx.execute(
                "UPDATE invocations SET state = 'queued', run_after = ?1
                 WHERE state = 'running' AND durable = 1",
                params![now],
            )?;
            tx.commit()?;
            Ok(Recovered { requeued, dead })
        })
        .await
    }

    async fn retry(&self, id: &str) -> Result<Record, RetryError> {
        let id = id.to_string();
        let result = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let state = tx
                    .query_row(
                        "SELECT state FROM invocations WHERE id = ?1",
                        params![id],
                        |r| named(r, 0, State::parse),
                    )
                    .optional()?;
                match state {
                    None => return Ok(Err(RetryError::NotFound(id))),
                    Some(State::Dead) => {}
                    Some(state) => return Ok(Err(RetryError::NotDead { id, state })),
                }
                tx.execute(
                    &format!(
                        "UPDATE invocations SET {}, run_after = ?2, {} WHERE id = ?1",
                        super::RETRIED,
                        super::CALLBACK_AGAIN
                    ),
                    params![id, now_ms()],
                )?;
                let record = get(&tx, &id)?.context("the record was just updated")?;
                tx.commit()?;
                Ok(Ok(record))
            })
            .await;
        result.map_err(RetryError::Store)?
    }

    async fn retry_dead(&self, function: Option<&str>, limit: usize) -> anyhow::Result<usize> {
        let function = function.map(str::to_string);
        self.with(move |conn| {
            let retried = conn.execute(
                &format!(
                    "UPDATE invocations SET {}, run_after = ?2, {}
                     WHERE id IN (SELECT id FROM invocations
                         WHERE durable = 1 AND state = 'dead'
                             AND (?1 IS NULL OR function = ?1)
                         ORDER BY id LIMIT ?3)",
                    super::RETRIED,
                    super::CALLBACK_AGAIN
                ),
                params![function, now_ms(), limit as i64],
            )?;
            Ok(retried)
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, CancelError> {
        let id = id.to_string();
        let result = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let found = tx
                    .query_row(
                        "SELECT state, durable FROM invocations WHERE id = ?1",
                        params![id],
                        |r| Ok((named(r, 0, State::parse)?, r.get::<_, bool>(1)?)),
                    )
                    .optional()?;
                let cancelled = match found {
                    None => return Ok(Err(CancelError::NotFound(id))),
                    Some((state, true)) if state.is_waiting() => {
                        tx.execute(
                            "UPDATE invocations SET state = 'cancelled', cancel_requested = 1,
                                 finished_at = ?2, error = ?3
                             WHERE id = ?1",
                            params![id, now_ms(), CANCELLED],
                        )?;
                        Cancelled::Now
                    }
                    Some((State::Running, true)) => {
                        tx.execute(
                            "UPDATE invocations SET cancel_requested = 1 WHERE id = ?1",
                            params![id],
                        )?;
                        Cancelled::Requested
                    }
                    Some((state, _)) => return Ok(Err(CancelError::Ended { id, state })),
                };
                let record = get(&tx, &id)?.context("the record was just updated")?;
                tx.commit()?;
                Ok(Ok(cancelled(record)))
            })
            .await;
        result.map_err(CancelError::Store)?
    }

    async fn save_checkpoint(&self, lease: &Lease, data: Bytes) -> anyhow::Result<bool> {
        let lease = lease.clone();
        self.with(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE invocations SET checkpoint = ?3
                     WHERE id = ?1 AND state = 'running' AND fence = ?2",
                )?
                .execute(params![lease.id, lease.fence, data.as_ref()])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn checkpoint(&self, id: &str) -> anyhow::Result<Option<Bytes>> {
        let id = id.to_string();
        self.with(move |conn| {
            let data: Option<Option<Vec<u8>>> = conn
                .prepare_cached("SELECT checkpoint FROM invocations WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            Ok(data.flatten().map(Bytes::from))
        })
        .await
    }

    async fn set_progress(
        &self,
        lease: &Lease,
        percent: u8,
        message: &str,
    ) -> anyhow::Result<bool> {
        let (lease, message) = (lease.clone(), message.to_string());
        self.with(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE invocations SET progress = ?3, progress_message = ?4
                     WHERE id = ?1 AND state = 'running' AND fence = ?2",
                )?
                .execute(params![lease.id, lease.fence, percent, message])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn cancels(&self, running: &[String]) -> anyhow::Result<Vec<String>> {
        let running = running.to_vec();
        self.with(move |conn| {
            // By primary key, one each: a host runs at most `max_concurrency` of them.
            let mut stmt = conn.prepare_cached(
                "SELECT 1 FROM invocations WHERE id = ?1 AND state = 'running' AND cancel_requested",
            )?;
            let mut asked = Vec::new();
            for id in running {
                if stmt.exists(params![id])? {
                    asked.push(id);
                }
            }
            Ok(asked)
        })
        .await
    }
}

#[async_trait]
impl TriggerState for SqliteStore {
    async fn timer_cursor(&self, key: &str) -> anyhow::Result<Option<i64>> {
        let key = key.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT last FROM timers WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn set_timer_cursor(&self, key: &str, at: i64) -> anyhow::Result<()> {
        let key = key.to_string();
        self.with(move |conn| set_cursor(conn, &key, at)).await
    }

    async fn fire_timer(&self, fire: TimerFire) -> anyhow::Result<Fired> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((occurrence, cursor)) = fire.advance {
                let last: Option<i64> = tx
                    .query_row(
                        "SELECT last FROM timers WHERE key = ?1",
                        params![fire.key],
                        |r| r.get(0),
                    )
                    .optional()?;
                if last.is_some_and(|last| last >= occurrence) {
                    return Ok(Fired::AlreadyFired);
                }
                set_cursor(&tx, &fire.key, cursor)?;
            }
            let count = |state: State| -> rusqlite::Result<i64> {
                tx.query_row(
                    "SELECT COUNT(*) FROM invocations WHERE timer = ?1 AND state = ?2",
                    params![fire.key, state.as_str()],
                    |r| r.get(0),
                )
            };
            let (running, waiting) = (count(State::Running)? > 0, count(State::Queued)? > 0);
            let skip = match fire.overlap {
                Overlap::Skip => running || waiting,
                Overlap::Queue => waiting,
            };
            let (state, fired) = if skip {
                (State::Skipped, Fired::Skipped)
            } else {
                (State::Queued, Fired::Queued)
            };
            insert(&tx, &fire.invocation, state, None)?;
            tx.commit()?;
            Ok(fired)
        })
        .await
    }

    async fn claim_startup(&self, key: &str, within: Duration) -> anyhow::Result<bool> {
        let key = key.to_string();
        self.with(move |conn| {
            let now = now_ms();
            let claimed = conn
                .prepare_cached(
                    "INSERT INTO timers (key, last, startup) VALUES (?1, ?2, ?2)
                     ON CONFLICT (key) DO UPDATE SET startup = ?2
                     WHERE startup IS NULL OR startup <= ?2 - ?3
                     RETURNING 1",
                )?
                .query_row(params![key, now, millis(within)], |_| Ok(()))
                .optional()?;
            Ok(claimed.is_some())
        })
        .await
    }

    async fn forget_timers_except(&self, keep: &[String]) -> anyhow::Result<()> {
        let keep = keep.to_vec();
        self.with(move |conn| {
            let keys: Vec<String> = conn
                .prepare("SELECT key FROM timers")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for key in keys.iter().filter(|k| !keep.contains(k)) {
                conn.execute("DELETE FROM timers WHERE key = ?1", params![key])?;
            }
            Ok(())
        })
        .await
    }

    async fn set_paused(&self, function: &str, paused: bool) -> anyhow::Result<bool> {
        let function = function.to_string();
        self.with(move |conn| {
            let changed = if paused {
                conn.execute(
                    "INSERT INTO paused (function, paused_at) VALUES (?1, ?2)
                     ON CONFLICT DO NOTHING",
                    params![function, now_ms()],
                )?
            } else {
                conn.execute("DELETE FROM paused WHERE function = ?1", params![function])?
            };
            Ok(changed == 1)
        })
        .await
    }

    async fn paused(&self) -> anyhow::Result<BTreeSet<String>> {
        self.with(|conn| {
            let names = conn
                .prepare_cached("SELECT function FROM paused")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn receipt(&self, watch: &str, path: &str) -> anyhow::Result<Option<Receipt>> {
        let (watch, path) = (watch.to_string(), path.to_string());
        self.with(move |conn| stored_receipt(conn, &watch, &path))
            .await
    }

    async fn receipts(&self, watch: &str) -> anyhow::Result<HashMap<String, Receipt>> {
        let watch = watch.to_string();
        self.with(move |conn| {
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
        })
        .await
    }

    async fn fire_file(
        &self,
        watch: &str,
        path: &str,
        before: Option<Receipt>,
        now: Option<Receipt>,
        invocation: Option<NewInvocation>,
    ) -> anyhow::Result<bool> {
        let (watch, path) = (watch.to_string(), path.to_string());
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if stored_receipt(&tx, &watch, &path)? != before {
                return Ok(false);
            }
            if let Some(new) = &invocation {
                insert(&tx, new, State::Queued, None)?;
            }
            match now {
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
            Ok(true)
        })
        .await
    }
}

fn stored_receipt(conn: &Connection, watch: &str, path: &str) -> anyhow::Result<Option<Receipt>> {
    let mut stmt =
        conn.prepare_cached("SELECT size, mtime FROM receipts WHERE watch = ?1 AND path = ?2")?;
    Ok(stmt
        .query_row(params![watch, path], |r| {
            Ok(Receipt {
                size: r.get::<_, i64>(0)? as u64,
                mtime: r.get(1)?,
            })
        })
        .optional()?)
}

#[async_trait]
impl History for SqliteStore {
    fn record(&self, record: SyncRecord) {
        self.batch.record(record);
    }

    async fn flush(&self) -> anyhow::Result<()> {
        let batch = self.batch.clone();
        tokio::task::spawn_blocking(move || batch.flush())
            .await
            .context("the records writer failed")
    }

    async fn children(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let id = id.to_string();
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT id FROM invocations WHERE parent_id = ?1 ORDER BY id")?;
            let ids = stmt.query_map(params![id], |r| r.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<Record>> {
        let id = id.to_string();
        self.with(move |conn| get(conn, &id)).await
    }

    async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Record>> {
        let filter = filter.clone();
        self.with(move |conn| {
            let (sql, bound) = list_query(&filter);
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(bound.iter()), record)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn stats(&self, now: i64, minutes: usize) -> anyhow::Result<Stats> {
        self.with(move |conn| {
            let mut states = Vec::new();
            let mut count = conn.prepare_cached(COUNT_IN_STATE)?;
            for state in State::ALL {
                let n: i64 = count.query_row([state.as_str()], |r| r.get(0))?;
                if n > 0 {
                    states.push((state.as_str().to_string(), n));
                }
            }
            let ended = conn
                .prepare_cached(ENDED_PER_MINUTE)?
                .query_map([Stats::since(now, minutes) / 60_000], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(Stats::gather(states, ended, now, minutes))
        })
        .await
    }

    async fn check(&self) -> anyhow::Result<()> {
        match identity(&self.path) {
            Ok(now) if Some(now) == self.identity => Ok(()),
            Ok(_) => bail!(
                "the store {} was replaced by another file while the host ran",
                self.path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "the store {} was deleted while the host ran",
                self.path.display()
            ),
            // Anything else (a folder made unreadable for a moment, a stale mount) is no
            // proof the file went: the next look tells.
            Err(e) => {
                tracing::warn!("cannot look at the store {}: {e}", self.path.display());
                Ok(())
            }
        }
    }

    async fn bytes(&self) -> anyhow::Result<u64> {
        self.with(|conn| {
            let bytes: i64 = conn.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )?;
            // Committed rows not yet checkpointed live in the write-ahead log beside it.
            let wal = conn
                .path()
                .map(|p| format!("{p}-wal"))
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            Ok(bytes.max(0) as u64 + wal)
        })
        .await
    }

    async fn prune(&self, before: i64) -> anyhow::Result<usize> {
        self.with(move |conn| {
            conn.execute("DELETE FROM hosts WHERE heartbeat_at < ?1", params![before])?;
            Ok(())
        })
        .await?;
        // In chunks, each a transaction and a turn of its own: one DELETE of a busy day's
        // records holds SQLite's only writer (and the store's connection) for seconds, and
        // submissions, claims and the records writer would wait all that time.
        let mut pruned = 0;
        loop {
            let deleted = self
                .with(move |conn| {
                    Ok(conn.prepare_cached(PRUNE_CHUNK)?.execute(params![
                        before.div_euclid(60_000),
                        before,
                        PRUNE_CHUNK_ROWS as i64
                    ])?)
                })
                .await?;
            pruned += deleted;
            if deleted < PRUNE_CHUNK_ROWS {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait]
impl Callbacks for SqliteStore {
    async fn claim_callbacks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> anyhow::Result<Vec<DueCallback>> {
        self.with(move |conn| {
            let now = now_ms();
            let due = conn
                .prepare_cached(&format!(
                    "UPDATE invocations SET callback_attempts = callback_attempts + 1,
                         callback_next = ?2
                     WHERE id IN (SELECT id FROM invocations
                         WHERE callback_state = 'pending' AND callback_next <= ?1
                             AND state IN {ENDED}
                         ORDER BY callback_next LIMIT ?3)
                     RETURNING id, callback_url, callback_attempts"
                ))?
                .query_map(params![now, now + millis(hold), limit as i64], |r| {
                    Ok(DueCallback {
                        id: r.get(0)?,
                        url: r.get(1)?,
                        attempts: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(due)
        })
        .await
    }

    async fn callback_tried(&self, due: &DueCallback, tried: CallbackTry) -> anyhow::Result<()> {
        let (id, attempts) = (due.id.clone(), due.attempts);
        self.with(move |conn| {
            let (state, next) = super::after_try(&tried);
            conn.prepare_cached(
                "UPDATE invocations SET callback_state = ?2, callback_status = ?3,
                     callback_error = ?4, callback_next = ?5
                 WHERE id = ?1 AND callback_state = 'pending' AND callback_attempts = ?6",
            )?
            .execute(params![
                id,
                state,
                tried.status,
                tried.error,
                next,
                attempts
            ])?;
            Ok(())
        })
        .await
    }
}

/// Inserts or replaces `key`; a key new to `store` only while it holds fewer than `max_keys`.
/// `held` is how many keys the store holds, counted once per transaction when first needed.
fn put(
    tx: &rusqlite::Transaction<'_>,
    (store, key, value): (&str, &str, &[u8]),
    max_keys: u64,
    held: &mut Option<u64>,
) -> Result<(), KvError> {
    let replaced = tx
        .prepare_cached("UPDATE kv SET value = ?3 WHERE store = ?1 AND key = ?2")
        .and_then(|mut s| s.execute(params![store, key, value]))
        .map_err(anyhow::Error::from)?;
    if replaced == 0 {
        let count = match *held {
            Some(n) => n,
            None => tx
                .prepare_cached("SELECT count(*) FROM kv WHERE store = ?1")
                .and_then(|mut s| s.query_row(params![store], |r| r.get::<_, i64>(0)))
                .map_err(anyhow::Error::from)?
                .unsigned_abs(),
        };
        if count >= max_keys {
            return Err(KvError::TooManyKeys {
                store: store.to_string(),
                max: max_keys,
            });
        }
        tx.prepare_cached("INSERT INTO kv (store, key, value) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![store, key, value]))
            .map_err(anyhow::Error::from)?;
        *held = Some(count + 1);
    }
    Ok(())
}

#[async_trait]
impl KeyValues for SqliteStore {
    async fn get(&self, store: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let (store, keys) = (store.to_string(), keys.to_vec());
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT value FROM kv WHERE store = ?1 AND key = ?2")?;
            let mut values = Vec::with_capacity(keys.len());
            for key in &keys {
                values.push(
                    stmt.query_row(params![store, key], |r| r.get(0))
                        .optional()?,
                );
            }
            Ok(values)
        })
        .await
    }

    async fn set(
        &self,
        store: &str,
        pairs: &[(String, Vec<u8>)],
        max_keys: u64,
    ) -> Result<(), KvError> {
        let (store, pairs) = (store.to_string(), pairs.to_vec());
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut held = None;
            for (key, value) in &pairs {
                let put = put(&tx, (&store, key, value), max_keys, &mut held);
                if let Err(refused) = super::lift(put)? {
                    return Ok(Err(refused));
                }
            }
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
        .unwrap_or_else(|e| Err(KvError::Store(e)))
    }

    async fn delete(&self, store: &str, keys: &[String]) -> anyhow::Result<u64> {
        let (store, keys) = (store.to_string(), keys.to_vec());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut deleted = 0;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM kv WHERE store = ?1 AND key = ?2")?;
                for key in &keys {
                    deleted += stmt.execute(params![store, key])? as u64;
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn keys(
        &self,
        store: &str,
        prefix: &str,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<Vec<String>> {
        let (store, prefix) = (store.to_string(), prefix.to_string());
        self.with(move |conn| {
            // Keys compare as bytes (BINARY); a prefix is text, never a pattern.
            let keys = conn
                .prepare_cached(
                    "SELECT key FROM kv WHERE store = ?1 AND substr(key, 1, length(?2)) = ?2
                     ORDER BY key LIMIT ?3 OFFSET ?4",
                )?
                .query_map(
                    params![
                        store,
                        prefix,
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        i64::try_from(offset).unwrap_or(i64::MAX)
                    ],
                    |r| r.get(0),
                )?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(keys)
        })
        .await
    }

    async fn increment(
        &self,
        store: &str,
        key: &str,
        delta: u64,
        max_keys: u64,
    ) -> Result<u64, KvError> {
        let (store, key) = (store.to_string(), key.to_string());
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM kv WHERE store = ?1 AND key = ?2")?
                .query_row(params![store, key], |r| r.get(0))
                .optional()?;
            let sum = match super::incremented(&key, current.as_deref(), delta) {
                Ok(sum) => sum,
                Err(refused) => return Ok(Err(refused)),
            };
            let text = sum.to_string();
            let put = put(&tx, (&store, &key, text.as_bytes()), max_keys, &mut None);
            if let Err(refused) = super::lift(put)? {
                return Ok(Err(refused));
            }
            tx.commit()?;
            Ok(Ok(sum))
        })
        .await
        .unwrap_or_else(|e| Err(KvError::Store(e)))
    }
}

#[async_trait]
impl Cluster for SqliteStore {
    async fn heartbeat(&self, host: &HostId, started_at: i64) -> anyhow::Result<()> {
        let host = host.clone();
        self.with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO hosts (id, started_at, heartbeat_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET started_at = ?2, heartbeat_at = ?3",
            )?
            .execute(params![host.as_str(), started_at, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn rescue(&self, lease: Duration) -> anyhow::Result<Vec<Rescued>> {
        self.with(move |conn| {
            let now = now_ms();
            let silent_since = now - millis(lease);
            let tx = conn.transaction()?;
            let silent = "state = 'running' AND durable = 1 AND NOT EXISTS (SELECT 1 FROM hosts
                 WHERE hosts.id = invocations.owner AND hosts.heartbeat_at >= ?2)";
            let owners = |sql: &str| -> rusqlite::Result<Vec<Option<String>>> {
                tx.prepare(sql)?
                    .query_map(params![now, silent_since], |r| r.get(0))?
                    .collect()
            };
            tx.execute(
                &format!(
                    "UPDATE invocations SET state = 'cancelled', finished_at = ?1, error = ?3
                     WHERE {silent} AND cancel_requested"
                ),
                params![now, silent_since, CANCELLED],
            )?;
            let dead = tx
                .prepare(&format!(
                    "UPDATE invocations SET state = 'dead', finished_at = ?1,
                         error = 'interrupted: its host fell silent while it ran, and no attempts were left'
                     WHERE {silent} AND attempt >= max_attempt RETURNING owner, id"
                ))?
                .query_map(params![now, silent_since], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<(Option<String>, String)>, _>>()?;
            let requeued = owners(&format!(
                "UPDATE invocations SET state = 'queued', run_after = ?1 WHERE {silent}
                 RETURNING owner"
            ))?;
            tx.commit()?;
            Ok(super::rescued(requeued, dead))
        })
        .await
    }

    async fn hosts(&self, lease: Duration) -> anyhow::Result<Vec<HostView>> {
        self.with(move |conn| {
            let alive_since = now_ms() - millis(lease);
            let mut stmt = conn.prepare(
                "SELECT id, started_at, heartbeat_at, heartbeat_at >= ?1,
                     (SELECT COUNT(*) FROM invocations WHERE state = 'running' AND owner = hosts.id)
                 FROM hosts ORDER BY started_at, id",
            )?;
            let rows = stmt.query_map(params![alive_since], |r| {
                Ok(HostView {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    last_heartbeat: r.get(2)?,
                    alive: r.get(3)?,
                    running: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::conformance;

    /// What SQLite's planner does for a query: its `EXPLAIN QUERY PLAN` lines.
    fn plan(conn: &Connection, sql: &str, bound: &[Box<dyn rusqlite::ToSql + Send>]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let lines: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(bound.iter()), |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        lines.join("; ")
    }

    #[test]
    fn the_dashboards_lists_and_stats_read_indexes_not_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(dir.path()).unwrap();
        let filter = |f: fn(&mut Filter)| {
            let mut filter = Filter {
                excerpt: Some(4096),
                ..Filter::default()
            };
            f(&mut filter);
            filter
        };
        let cases: [(Filter, &str); 7] = [
            (filter(|_| {}), "sqlite_autoindex_invocations_1"),
            (
                filter(|f| f.before = Some("x".into())),
                "sqlite_autoindex_invocations_1",
            ),
            (
                filter(|f| f.function = Some("f".into())),
                "invocations_function",
            ),
            (filter(|f| f.state = Some(State::Dead)), "invocations_state"),
            (
                filter(|f| f.trigger = Some(TriggerKind::Timer)),
                "invocations_trigger",
            ),
            (
                filter(|f| f.error = Some("oops".into())),
                "invocations_errors",
            ),
            (
                filter(|f| {
                    f.function = Some("f".into());
                    f.state = Some(State::Dead);
                    f.before = Some("x".into());
                }),
                "INDEX invocations_",
            ),
        ];
        for (filter, index) in cases {
            let (sql, bound) = list_query(&filter);
            let plan = plan(&conn, &sql, &bound);
            // Shown with --nocapture: the plans BENCHMARKS.md quotes.
            eprintln!(
                "{}: {plan}",
                sql.split("FROM invocations").nth(1).unwrap_or(&sql)
            );
            assert!(plan.contains(index), "{filter:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?} sorts: {plan}");
            let scans_all = plan
                .split("; ")
                .any(|l| l.starts_with("SCAN") && !l.contains("INDEX"));
            assert!(!scans_all, "{filter:?} reads every record: {plan}");
        }
        let ended = plan(&conn, ENDED_PER_MINUTE, &[Box::new(0i64)]);
        eprintln!("ends per minute: {ended}");
        assert!(ended.contains("INDEX invocations_ended"), "{ended}");
        assert!(!ended.contains("TEMP B-TREE"), "{ended}");
        let states = plan(&conn, COUNT_IN_STATE, &[Box::new("dead")]);
        assert!(
            states.contains("COVERING INDEX invocations_state"),
            "{states}"
        );
    }

    #[test]
    fn pruning_finds_old_records_through_the_index_of_ends() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(dir.path()).unwrap();
        let bound: [Box<dyn rusqlite::ToSql + Send>; 3] =
            [Box::new(1i64), Box::new(60_000i64), Box::new(10i64)];
        let pruned = plan(&conn, PRUNE_CHUNK, &bound);
        assert!(pruned.contains("INDEX invocations_ended"), "{pruned}");
        let scans_all = pruned
            .split("; ")
            .any(|l| l.starts_with("SCAN") && !l.contains("INDEX"));
        assert!(!scans_all, "pruning reads every record: {pruned}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_deletes_in_chunks_until_nothing_old_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), None).unwrap();
        let old = now_ms() - 3_600_000;
        let record = |n: usize, started_at: i64| SyncRecord {
            id: format!("{n:08}"),
            function: "f".to_string(),
            trigger: TriggerKind::Http,
            reason: crate::store::Reason::Http,
            started_at,
            host: HostId("h".into()),
            payload: Bytes::new(),
            payload_truncated: false,
            output: Output::default(),
        };
        // More than two chunks of old records, and a few recent ones that stay.
        let total = 2 * PRUNE_CHUNK_ROWS + 10;
        for n in 0..total {
            store.record(record(n, old));
        }
        for n in total..total + 3 {
            store.record(record(n, now_ms()));
        }
        store.flush().await.unwrap();
        let pruned = store.prune(now_ms() - 60_000).await.unwrap();
        assert_eq!(pruned, total);
        let left = store
            .list(&Filter {
                limit: Some(100),
                ..Filter::default()
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_passes_the_store_conformance_suite() {
        conformance::run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path(), None).unwrap();
            (Store::new(store, "test"), dir)
        })
        .await;
    }

    #[test]
    fn a_store_from_the_first_schema_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(db_path(dir.path())).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt,
                     state, durable, payload, vars, created_at, run_after)
                 VALUES ('old', 'f', 'manual', 'manual', 0, 3, 'queued', 1, x'', '[]', 1, 1)",
                [],
            )
            .unwrap();
        }
        let conn = open_connection(dir.path()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let fence: i64 = conn
            .query_row("SELECT fence FROM invocations WHERE id = 'old'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fence, 0);
        drop(conn);
        // Opening again changes nothing.
        open_connection(dir.path()).unwrap();
    }

    /// A manual invocation of `f` to queue.
    fn manual(id: &str) -> crate::store::NewInvocation {
        crate::store::NewInvocation {
            id: id.to_string(),
            function: "f".to_string(),
            trigger: crate::config::TriggerKind::Manual,
            reason: crate::store::Reason::Manual,
            attempts: 1,
            priority: 0,
            run_after: None,
            idempotency_key: None,
            payload: bytes::Bytes::new(),
            vars: Vec::new(),
            timer: None,
            input_dir: None,
            parent_id: None,
            depth: 0,
            callback: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_errors_name_the_file_and_a_deleted_file_is_noticed() {
        use crate::store::{History, Queue};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), None).unwrap();
        store.check().await.unwrap();
        Connection::open(db_path(dir.path()))
            .unwrap()
            .execute_batch("DROP TABLE invocations")
            .unwrap();
        let new = manual("x");
        let message = format!("{:#}", store.enqueue(new).await.unwrap_err());
        assert!(message.contains("jobhost.db"), "{message}");
        std::fs::remove_file(db_path(dir.path())).unwrap();
        let message = store.check().await.unwrap_err().to_string();
        assert!(
            message.contains("was deleted while the host ran"),
            "{message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submission_waits_its_turn_behind_the_records_writer_rather_than_fail() {
        use crate::store::{Enqueued, Queue};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), None).unwrap();
        // A batch of records written in its turn that holds SQLite's lock for longer than
        // `busy_timeout` (5 s): a submission polling for the lock would give up.
        let (turns, path) = (store.turns.clone(), dir.path().to_path_buf());
        let (held, holding) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let _turn = turns.blocking_lock();
            let mut conn = open_connection(&path).unwrap();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(6));
            tx.commit().unwrap();
        });
        holding.recv().unwrap();
        let new = manual("x");
        let enqueued = store.enqueue(new).await;
        assert!(matches!(enqueued, Ok(Enqueued::New(_))), "{enqueued:?}");
        writer.join().unwrap();
    }

    #[test]
    fn a_second_host_on_the_same_data_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = crate::store::lock_data_dir(dir.path()).unwrap();
        let _first = SqliteStore::open(dir.path(), Some(lock)).unwrap();
        let second = crate::store::lock_data_dir(dir.path());
        let message = format!("{:#}", second.expect_err("refused"));
        assert!(message.contains("another jobhost is running"), "{message}");
        SqliteStore::open(dir.path(), None).expect("the CLI may open it beside the host");
    }
}
