//! The shared store: a PostgreSQL database that several hosts use at once. The same rows
//! as the embedded store (a row per invocation, which is both the record and, for durable
//! work, the queue entry; timer cursors and watch receipts beside it), in tables named
//! `jobhost_*` so that they can live in a database that holds other things too.
//!
//! What keeps hosts from stepping on each other:
//! - a claim is one `UPDATE ... WHERE state IN ('queued', 'failed')` on the row: of two
//!   hosts claiming the same invocation, the second finds it `running` and gets nothing;
//! - every claim raises the row's fence, and a result or a release names the fence it was
//!   claimed under, so a host that lost its claim cannot overwrite the newer attempt;
//! - what concerns one timer (firing an occurrence, claiming one of its runs) happens under
//!   a transaction-scoped advisory lock on the timer's key, so an occurrence fires once and
//!   two runs of a timer never start together, whichever hosts reach them;
//! - the schema is migrated under an advisory lock, so hosts starting together migrate once.
//!
//! Synchronous records are written in batches by a task of their own, so a request never
//! waits for the database.

mod records;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::task::AbortOnDropHandle;

use records::Write;

use super::{
    CANCELLED, CallbackTry, CallbackView, Callbacks, CancelError, Cancelled, Candidate, Chain,
    Claimed, Cluster, DueCallback, ENDED, Enqueued, Filter, Fired, History, HostId, HostView,
    KeyValues, KvError, Lease, NewInvocation, Next, Output, Progress, Queue, Receipt, Record,
    Recovered, Rescued, RetryError, Slots, State, Stats, SyncRecord, TimerFire, TriggerState,
    Unreachable, Wanted, choose, columns, millis, now_ms,
};
use crate::config::{Overlap, TriggerKind};

/// The schema, one step per version (kept in `jobhost_schema`).
const MIGRATIONS: &[&str] = &[
    // 1: invocations (records and queue), watch receipts, timer cursors.
    "CREATE TABLE jobhost_invocations (
        id                TEXT PRIMARY KEY,
        function          TEXT NOT NULL,
        trigger           TEXT NOT NULL,
        reason            TEXT NOT NULL,
        attempt           INTEGER NOT NULL,
        max_attempt       INTEGER NOT NULL,
        attempts          INTEGER,
        state             TEXT NOT NULL,
        durable           BOOLEAN NOT NULL,
        priority          INTEGER NOT NULL DEFAULT 0,
        payload           BYTEA NOT NULL,
        payload_truncated BOOLEAN NOT NULL DEFAULT FALSE,
        vars              TEXT NOT NULL,
        created_at        BIGINT NOT NULL,
        run_after         BIGINT NOT NULL,
        started_at        BIGINT,
        finished_at       BIGINT,
        duration_ms       BIGINT,
        exit_code         INTEGER,
        error             TEXT,
        stdout            BYTEA,
        stderr            BYTEA,
        stdout_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
        stderr_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
        timer             TEXT,
        input_dir         TEXT,
        owner             TEXT,
        fence             BIGINT NOT NULL DEFAULT 0
    );
    -- Durable work waiting is looked up by due time; synchronous records (the many) and
    -- finished work stay out of this index.
    CREATE INDEX jobhost_invocations_due ON jobhost_invocations (run_after, id)
        WHERE durable AND state IN ('queued', 'failed');
    CREATE INDEX jobhost_invocations_running ON jobhost_invocations (owner)
        WHERE state = 'running';
    CREATE INDEX jobhost_invocations_timer_runs ON jobhost_invocations (timer, state)
        WHERE timer IS NOT NULL;
    CREATE INDEX jobhost_invocations_function ON jobhost_invocations (function, id);
    CREATE INDEX jobhost_invocations_finished ON jobhost_invocations (finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE TABLE jobhost_receipts (
        watch TEXT NOT NULL,
        path  TEXT NOT NULL,
        size  BIGINT NOT NULL,
        mtime BIGINT NOT NULL,
        PRIMARY KEY (watch, path)
    );
    CREATE TABLE jobhost_timers (
        key  TEXT PRIMARY KEY,
        last BIGINT NOT NULL
    );",
    // 2: hosts say they are alive; times on the server's clock.
    "CREATE TABLE jobhost_hosts (
        id           TEXT PRIMARY KEY,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
    );",
    // 3: a claim takes each function's due work by priority, then due time, from an index
    // that holds only waiting durable work.
    "CREATE INDEX jobhost_invocations_claim
        ON jobhost_invocations (function, priority DESC, run_after, id)
        WHERE durable AND state IN ('queued', 'failed');",
    // 4: when a timer's `run_on_startup` run last fired, on the server's clock.
    "ALTER TABLE jobhost_timers ADD COLUMN startup BIGINT;",
    // 5: delayed work waits as `scheduled`, found and claimed from the same indexes.
    "DROP INDEX jobhost_invocations_due;
    CREATE INDEX jobhost_invocations_due ON jobhost_invocations (run_after, id)
        WHERE durable AND state IN ('queued', 'failed', 'scheduled');
    DROP INDEX jobhost_invocations_claim;
    CREATE INDEX jobhost_invocations_claim
        ON jobhost_invocations (function, priority DESC, run_after, id)
        WHERE durable AND state IN ('queued', 'failed', 'scheduled');",
    // 6: a caller's idempotency key, one invocation per key and function.
    "ALTER TABLE jobhost_invocations ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX jobhost_invocations_idempotency
        ON jobhost_invocations (function, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // 7: a user asked to cancel a running invocation; its host interrupts it.
    "ALTER TABLE jobhost_invocations ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;",
    // 8: chains: the invocation that made one, and how deep in a chain it is.
    "ALTER TABLE jobhost_invocations ADD COLUMN parent_id TEXT;
    ALTER TABLE jobhost_invocations ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobhost_invocations_parent ON jobhost_invocations (parent_id, id)
        WHERE parent_id IS NOT NULL;",
    // 9: a running invocation's checkpoint and what it says of its progress.
    "ALTER TABLE jobhost_invocations ADD COLUMN checkpoint BYTEA;
    ALTER TABLE jobhost_invocations ADD COLUMN progress INTEGER;
    ALTER TABLE jobhost_invocations ADD COLUMN progress_message TEXT;",
    // 10: key-value data, by store and key (ordered by the keys' bytes, as in SQLite).
    "CREATE TABLE jobhost_kv (
        store TEXT NOT NULL,
        key   TEXT COLLATE \"C\" NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (store, key)
    );",
    // 11: completion callbacks: where an invocation's record goes once it ends, and how
    // its delivery goes.
    "ALTER TABLE jobhost_invocations ADD COLUMN callback_url TEXT;
    ALTER TABLE jobhost_invocations ADD COLUMN callback_state TEXT;
    ALTER TABLE jobhost_invocations ADD COLUMN callback_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobhost_invocations ADD COLUMN callback_status INTEGER;
    ALTER TABLE jobhost_invocations ADD COLUMN callback_error TEXT;
    ALTER TABLE jobhost_invocations ADD COLUMN callback_next BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX jobhost_invocations_callbacks ON jobhost_invocations (callback_next)
        WHERE callback_state = 'pending' AND state IN ('succeeded', 'dead', 'cancelled');",
    // 12: functions whose background work an operator paused.
    "CREATE TABLE jobhost_paused (
        function  TEXT PRIMARY KEY,
        paused_at BIGINT NOT NULL
    );",
    // 13: the dashboard's filters and overview read indexes, not every record: by state,
    // by trigger, records with an error, and ends by time (which pruning reads too).
    "CREATE INDEX jobhost_invocations_state ON jobhost_invocations (state, id);
    CREATE INDEX jobhost_invocations_trigger ON jobhost_invocations (trigger, id);
    CREATE INDEX jobhost_invocations_errors ON jobhost_invocations (id)
        WHERE error IS NOT NULL;
    DROP INDEX jobhost_invocations_finished;
    CREATE INDEX jobhost_invocations_finished ON jobhost_invocations (finished_at, state)
        WHERE finished_at IS NOT NULL;",
];

/// The query of `History::list` and the values of its placeholders.
fn list_query(filter: &Filter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let (clause, values) = filter.conditions(|n| format!("${n}"), "ILIKE");
    let mut bound: Vec<Box<dyn ToSql + Sync + Send>> = values
        .into_iter()
        .map(|v| Box::new(v) as Box<dyn ToSql + Sync + Send>)
        .collect();
    bound.push(Box::new(filter.limit() as i64));
    let limit = format!("${}", bound.len());
    let excerpt = filter.excerpt.map(|n| {
        bound.push(Box::new(i32::try_from(n).unwrap_or(i32::MAX)));
        format!("${}", bound.len())
    });
    let columns = columns(excerpt.as_deref());
    let sql = format!(
        "SELECT {columns} FROM jobhost_invocations {clause} ORDER BY id DESC LIMIT {limit}"
    );
    (sql, bound)
}

/// Locks one key-value store's new keys for the rest of the transaction, so that its key
/// limit holds while several hosts add keys at once.
const LOCK_KV_STORE: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('jobhost kv ' || $1, 0))";

/// Now on the server's clock, in ms: what host liveness is measured on, so that hosts'
/// clocks need not agree for it.
const SERVER_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// The advisory lock held while the schema is migrated (any fixed number; this one spells
/// "jobhost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006a_6f62_686f_7374;

/// The advisory lock of the host that prunes old records now.
const PRUNE_LOCK: i64 = MIGRATION_LOCK + 1;

/// Locks one timer for the rest of the transaction (see the module's note).
const LOCK_TIMER: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('jobhost timer ' || $1, 0))";

/// Each function's due work, at most its room: one index range per function, rows that
/// another host is claiming skipped.
const DUE: &str = "SELECT c.id, c.priority, c.run_after, c.timer
    FROM unnest($1::text[], $2::int8[]) AS f(name, room)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_after, timer FROM jobhost_invocations AS i
        WHERE i.function = f.name AND i.durable AND i.state IN ('queued', 'failed', 'scheduled')
          AND i.run_after <= $3
          AND (i.timer IS NULL OR NOT EXISTS (SELECT 1 FROM jobhost_invocations AS r
               WHERE r.timer = i.timer AND r.state = 'running'))
          AND NOT EXISTS (SELECT 1 FROM jobhost_paused AS p WHERE p.function = f.name)
        ORDER BY i.priority DESC, i.run_after, i.id
        LIMIT f.room
        FOR UPDATE SKIP LOCKED
    ) AS c";

/// Marks due invocations running for one owner (`$2`), with their next attempt and a new
/// fence; a run of a timer whose other run is going is left alone.
const CLAIM: &str = "UPDATE jobhost_invocations SET state = 'running', attempt = attempt + 1,
        started_at = $3, finished_at = NULL, duration_ms = NULL, owner = $2, fence = fence + 1,
        progress = NULL, progress_message = NULL
    WHERE id = ANY($1) AND durable AND state IN ('queued', 'failed', 'scheduled') AND run_after <= $3
      AND (timer IS NULL OR NOT EXISTS (SELECT 1 FROM jobhost_invocations AS r
           WHERE r.timer = jobhost_invocations.timer AND r.state = 'running'))
    RETURNING id, function, trigger, attempt, max_attempt, payload, vars, input_dir, fence,
        depth";

/// The whole claim in one statement, for functions with neither a `concurrency` nor
/// timers: each one's due rows at most its room (`$1`, `$2`) from the claim index, rows
/// another host is claiming skipped, the first `$5` of all marked running for `$3`.
const CLAIM_SIMPLE: &str = "UPDATE jobhost_invocations AS i SET state = 'running',
        attempt = i.attempt + 1, started_at = $4, finished_at = NULL, duration_ms = NULL,
        owner = $3, fence = i.fence + 1, progress = NULL, progress_message = NULL
    FROM (
        SELECT c.id FROM unnest($1::text[], $2::int8[]) AS f(name, room)
        CROSS JOIN LATERAL (
            SELECT id, priority, run_after FROM jobhost_invocations AS d
            WHERE d.function = f.name AND d.durable AND d.state IN ('queued', 'failed', 'scheduled')
              AND d.run_after <= $4
              AND (d.timer IS NULL OR NOT EXISTS (SELECT 1 FROM jobhost_invocations AS r
                   WHERE r.timer = d.timer AND r.state = 'running'))
              AND NOT EXISTS (SELECT 1 FROM jobhost_paused AS p WHERE p.function = f.name)
            ORDER BY d.priority DESC, d.run_after, d.id
            LIMIT f.room
            FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.priority DESC, c.run_after, c.id
        LIMIT $5
    ) AS next
    WHERE i.id = next.id
    RETURNING i.id, i.function, i.trigger, i.attempt, i.max_attempt, i.payload, i.vars,
        i.input_dir, i.fence, i.depth, i.priority, i.run_after";

/// The store in a PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
    /// One connection, the queue worker's (`claim_due`, `next_due_at`).
    claims: Pool,
    /// The server and database without the password, named in every error.
    name: String,
    records: mpsc::UnboundedSender<Write>,
    /// Whether the server is lost now: logged once when it goes, once when it is back.
    outage: Arc<Outage>,
    /// For the connection that listens for other hosts' work, made on first use.
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// Woken by the listener; the listener stops with the store.
    hint: OnceLock<(Arc<Notify>, AbortOnDropHandle<()>)>,
    /// Held for the life of a host: one host per data folder, so per host id.
    _lock: Option<File>,
}

impl PostgresStore {
    /// Connects to the database at `url`, through at most `connections` connections (and
    /// two more: one listens for new work, one is the queue worker's), creates or
    /// migrates the schema, and starts the records writer. A host passes the lock it holds
    /// on its data folder.
    pub async fn open(
        url: &str,
        connections: usize,
        lock: Option<File>,
    ) -> anyhow::Result<PostgresStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .context("invalid PostgreSQL URL: write postgres://user:password@host:5432/database")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A connection whose peer vanished (a failover, a split) is noticed in seconds,
        // not after the system's hours of TCP retries.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        config.keepalives_idle(Duration::from_secs(30));
        let name = describe(&config);
        let tls = tls(&mut config).with_context(|| format!("setting up TLS for {name}"))?;
        // Waiting for a connection is bounded too: a full or stuck pool is an error, not a
        // caller that hangs.
        let pool = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(10)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .with_context(|| format!("setting up connections to {name}"))
        };
        // The queue worker's looks have a connection of their own: a claim does not wait
        // behind the results of the runs it would start more of.
        let claims = pool(1)?;
        let pool = pool(connections)?;
        let mut client = pool.get().await.map_err(|e| {
            let why = format!("{:#}", anyhow::Error::from(e));
            let hint = if why.contains("certificate") {
                "the server's TLS certificate is not trusted here: set SSL_CERT_FILE to the file holding its CA's certificate, or add that CA to the system's"
            } else {
                "is the server running, and are the URL's user, password and database right?"
            };
            anyhow::anyhow!("cannot reach PostgreSQL at {name}: {hint}: {why}")
        })?;
        migrate(&mut client)
            .await
            .with_context(|| format!("preparing the jobhost tables in {name}"))?;
        drop(client);
        let outage = Arc::new(Outage::new(name.clone()));
        let (records, rx) = mpsc::unbounded_channel();
        tokio::spawn(records::write(pool.clone(), rx, outage.clone()));
        Ok(PostgresStore {
            pool,
            claims,
            name,
            records,
            outage,
            config,
            tls,
            hint: OnceLock::new(),
            _lock: lock,
        })
    }

    /// `postgres://user@host:port/database`, without the password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work`; an error names the database.
    async fn named<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        match work.await {
            Ok(done) => {
                self.outage.over();
                Ok(done)
            }
            // Not tried: the server is lost and it is not yet time to try again.
            Err(e) if e.is::<Unreachable>() => Err(e),
            Err(e) if lost(&e) => {
                self.outage.begin(&e);
                Err(Unreachable {
                    store: self.name.clone(),
                    why: format!("{e:#}"),
                }
                .into())
            }
            Err(e) => Err(e.context(format!("the store {}", self.name))),
        }
    }

    async fn client(&self) -> anyhow::Result<Object> {
        self.connection(&self.pool).await
    }

    /// The queue worker's connection, for its looks at due work.
    async fn claimer(&self) -> anyhow::Result<Object> {
        self.connection(&self.claims).await
    }

    async fn connection(&self, pool: &Pool) -> anyhow::Result<Object> {
        self.outage.may_try()?;
        pool.get()
            .await
            .context("cannot get a connection to PostgreSQL")
    }
}

/// Whether `e` says the server could not be reached or the connection was lost (as
/// opposed to a statement it refused): the server may come back.
fn lost(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
            // Waiting for a free connection of a busy pool is no sign of a lost server.
            return !matches!(
                e,
                deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)
            );
        }
        let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() else {
            return false;
        };
        // A closed connection, or one that failed on I/O; class 08 is a connection
        // exception, 57P a server shutting down or starting.
        e.is_closed()
            || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            || e.code().is_some_and(|code| {
                let code = code.code();
                code.starts_with("08") || code.starts_with("57P")
            })
    })
}

/// A lost server: logged once when it goes and once when it is back, and tried again
/// with backoff meanwhile (callers in between fail at once instead of each waiting for a
/// connection that cannot be made).
struct Outage {
    /// The store's name, for the log.
    store: String,
    state: std::sync::Mutex<Option<Lost>>,
}

/// Since when the server is lost, and when to try it again.
struct Lost {
    since: std::time::Instant,
    next_try: std::time::Instant,
    backoff: Duration,
}

/// The first wait before trying a lost server again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Outage {
    fn new(store: String) -> Outage {
        Outage {
            store,
            state: std::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lost>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` while the server is lost and it is not yet time to try it again.
    fn may_try(&self) -> Result<(), Unreachable> {
        match &*self.lock() {
            Some(lost) if std::time::Instant::now() < lost.next_try => Err(Unreachable {
                store: self.store.clone(),
                why: format!(
                    "lost {:.1}s ago; tried again shortly",
                    lost.since.elapsed().as_secs_f64()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn begin(&self, e: &anyhow::Error) {
        let mut state = self.lock();
        let now = std::time::Instant::now();
        match &mut *state {
            Some(lost) => {
                lost.backoff = (lost.backoff * 2).min(RETRY_MAX);
                lost.next_try = now + lost.backoff;
            }
            None => {
                *state = Some(Lost {
                    since: now,
                    next_try: now + RETRY_FIRST,
                    backoff: RETRY_FIRST,
                });
                tracing::error!(
                    "lost the store {}: {e:#}; until it is back, durable work is refused (503) and synchronous requests go on, their records waiting in memory",
                    self.store
                );
            }
        }
    }

    fn over(&self) {
        if let Some(lost) = self.lock().take() {
            tracing::info!(
                "the store {} is back after {:.1}s",
                self.store,
                lost.since.elapsed().as_secs_f64()
            );
        }
    }
}

/// A claimed invocation given back without using its attempt ($3 is now, $4 the cancel
/// text): to the queue, or `cancelled` when a cancel was asked meanwhile (it ends rather
/// than run again).
const RELEASED: &str = "
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested THEN $3::int8 END,
    error = CASE WHEN cancel_requested THEN $4::text ELSE error END,
    attempt = attempt - 1, started_at = NULL, run_after = $3";

/// Listens for `NOTIFY jobhost_work` (sent when queued work commits, on any host) on a
/// connection of its own, and wakes `hint` for each; reconnects with backoff when the
/// connection is lost. A hint only: the queue worker polls as well.
async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, hint: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok((client, mut connection)) = config.connect(tls.clone()).await {
            backoff = Duration::from_millis(100);
            let messages = async {
                while let Some(Ok(message)) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    if let AsyncMessage::Notification(_) = message {
                        hint.notify_one();
                    }
                }
            };
            tokio::pin!(messages);
            let listening = tokio::select! {
                listened = client.batch_execute("LISTEN jobhost_work") => listened.is_ok(),
                _ = &mut messages => false,
            };
            if listening {
                // What was written while nobody listened is found by the look this wakes.
                hint.notify_one();
                messages.await;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The connector for `config`: TLS when the URL says `sslmode=require`, with the server's
/// certificate verified against the system's roots (or those in `SSL_CERT_FILE`); plain
/// otherwise (libpq's default `prefer` is taken as plain, so a server whose certificate
/// is not trusted here keeps working as before).
fn tls(config: &mut tokio_postgres::Config) -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    if config.get_ssl_mode() == SslMode::Require {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            bail!(
                "sslmode=require, but no trusted certificates were found ({}): install the system's CA certificates, or set SSL_CERT_FILE to the file holding the server's CA",
                if why.is_empty() {
                    "none".to_string()
                } else {
                    why.join("; ")
                }
            );
        }
    } else {
        config.ssl_mode(SslMode::Disable);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(client))
}

/// `user@host:port/database`: enough to tell which server, without the password.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

async fn migrate(client: &mut Object) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    // Every host starting at once waits here; the first migrates, the others find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Quietly: the server's notice that the table exists already is no news.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS jobhost_schema (version INTEGER NOT NULL)",
    )
    .await?;
    let version: Option<i32> = tx
        .query_one("SELECT MAX(version) FROM jobhost_schema", &[])
        .await?
        .try_get(0)?;
    let version = usize::try_from(version.unwrap_or(0)).unwrap_or(0);
    if version > MIGRATIONS.len() {
        bail!(
            "the tables are at schema version {version}, newer than this jobhost knows ({}): use the newer jobhost, or another database",
            MIGRATIONS.len()
        );
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    for step in &MIGRATIONS[version..] {
        tx.batch_execute(step).await?;
    }
    tx.execute("DELETE FROM jobhost_schema", &[]).await?;
    tx.execute(
        "INSERT INTO jobhost_schema (version) VALUES ($1)",
        &[&(MIGRATIONS.len() as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts a new invocation in `state`, or running its first attempt for `owner` (see
/// [`Queue::enqueue_claimed`]); `false` when its idempotency key is taken (nothing
/// inserted).
async fn insert(
    client: &impl GenericClient,
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
    let attempts = i32::try_from(new.attempts).unwrap_or(i32::MAX);
    let finished = (state == State::Skipped).then_some(now);
    let input_dir = new
        .input_dir
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    // Queued work wakes the other hosts when it commits (see `work_hint`); work claimed
    // as it is stored wakes nobody.
    let statement = client
        .prepare_cached(
            "WITH inserted AS (
                 INSERT INTO jobhost_invocations (id, function, trigger, reason, attempt,
                     max_attempt, attempts, state, durable, payload, vars, created_at, run_after,
                     timer, finished_at, input_dir, priority, idempotency_key, parent_id, depth,
                     callback_url, callback_state, owner, fence, started_at)
                 VALUES ($1, $2, $3, $4, CASE WHEN $19::text IS NULL THEN 0 ELSE 1 END, $5, $5,
                     $6, TRUE, $7, $8, $9, $14, $10, $11, $12, $13, $15, $16, $17, $18::text,
                     CASE WHEN $18::text IS NOT NULL AND $6 <> 'skipped' THEN 'pending' END,
                     $19::text, CASE WHEN $19::text IS NULL THEN 0 ELSE 1 END,
                     CASE WHEN $19::text IS NOT NULL THEN $9::int8 END)
                 ON CONFLICT DO NOTHING
                 RETURNING state)
             SELECT CASE WHEN state NOT IN ('skipped', 'running')
                 THEN pg_notify('jobhost_work', '') END
             FROM inserted",
        )
        .await?;
    let inserted = client
        .query(
            &statement,
            &[
                &new.id,
                &new.function,
                &new.trigger.as_str(),
                &new.reason.as_str(),
                &attempts,
                &state.as_str(),
                &new.payload.as_ref(),
                &vars,
                &now,
                &new.timer,
                &finished,
                &input_dir,
                &new.priority,
                &run_after,
                &new.idempotency_key,
                &new.parent_id,
                &i32::try_from(new.depth).unwrap_or(i32::MAX),
                &new.callback,
                &owner.map(HostId::as_str),
            ],
        )
        .await?;
    Ok(inserted.len() == 1)
}

/// Stores `new` (running for `owner` when given), or names the invocation that holds its
/// idempotency key.
async fn enqueue(
    client: &impl GenericClient,
    new: &NewInvocation,
    owner: Option<&HostId>,
) -> anyhow::Result<Enqueued> {
    if insert(client, new, State::Queued, owner).await? {
        return Ok(Enqueued::New(new.id.clone()));
    }
    let row = client
        .query_one(
            "SELECT id, payload FROM jobhost_invocations
             WHERE function = $1 AND idempotency_key = $2",
            &[&new.function, &new.idempotency_key],
        )
        .await?;
    let payload: Vec<u8> = row.try_get(1)?;
    Ok(Enqueued::Existing {
        id: row.try_get(0)?,
        same_payload: payload == new.payload.as_ref(),
    })
}

/// Stores an attempt's result under its lease; the state it ended in (a run a user
/// cancelled ends `cancelled` unless it succeeded: never retried), or `None` when the lease
/// is no longer current.
async fn finish_row(
    client: &impl GenericClient,
    lease: &Lease,
    output: &Output,
    next: Next,
) -> anyhow::Result<Option<State>> {
    let (state, run_after) = next.state();
    let stmt = client
        .prepare_cached(
            "UPDATE jobhost_invocations SET finished_at = $4,
                 duration_ms = $5, exit_code = $6, error = $7, stdout = $8, stderr = $9,
                 stdout_truncated = $10, stderr_truncated = $11,
                 run_after = COALESCE($12, run_after),
                 state = CASE WHEN cancel_requested AND $3::text <> 'succeeded'
                              THEN 'cancelled' ELSE $3::text END,
                 checkpoint = CASE WHEN $3::text = 'succeeded' THEN NULL ELSE checkpoint END
             WHERE id = $1 AND state = 'running' AND fence = $2
             RETURNING state",
        )
        .await?;
    let ended = client
        .query_opt(
            &stmt,
            &[
                &lease.id,
                &lease.fence,
                &state.as_str(),
                &now_ms(),
                &millis(output.duration),
                &output.exit_code,
                &output.error.as_deref().map(records::without_nul),
                &output.stdout.as_ref(),
                &output.stderr.as_ref(),
                &output.stdout_truncated,
                &output.stderr_truncated,
                &run_after,
            ],
        )
        .await?;
    ended.map(|r| named(&r, 0, State::parse)).transpose()
}

/// Queues what a finished invocation's chain starts in `state` (see [`Queue::finish`]).
async fn start_chain(
    client: &impl GenericClient,
    id: &str,
    state: State,
    chain: Chain,
) -> anyhow::Result<()> {
    let record = match chain.wants_record(state) {
        true => Some(
            get(client, id)
                .await?
                .context("the record was just updated")?,
        ),
        false => None,
    };
    for new in chain.starts(state, record.as_ref())? {
        insert(client, &new, State::Queued, None).await?;
    }
    Ok(())
}

async fn set_cursor(client: &impl GenericClient, key: &str, at: i64) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO jobhost_timers (key, last) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET last = GREATEST(jobhost_timers.last, $2)",
            &[&key, &at],
        )
        .await?;
    Ok(())
}

/// A stored name read back as its enum; a name this build does not know is an error that
/// says so, rather than a wrong value.
fn named<T>(r: &Row, i: usize, parse: fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let text: String = r.try_get(i)?;
    parse(&text)
        .with_context(|| format!("unknown value {text:?} (written by another version of jobhost?)"))
}

fn record(r: &Row) -> anyhow::Result<Record> {
    let text = |i: usize| -> anyhow::Result<String> {
        let bytes: Option<Vec<u8>> = r.try_get(i)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    };
    let count = |i: usize| -> anyhow::Result<u32> {
        Ok(u32::try_from(r.try_get::<_, i32>(i)?).unwrap_or(0))
    };
    let state = named(r, 6, State::parse)?;
    let durable: bool = r.try_get(14)?;
    Ok(Record {
        id: r.try_get(0)?,
        function: r.try_get(1)?,
        trigger: r.try_get(2)?,
        reason: r.try_get(3)?,
        attempt: count(4)?,
        max_attempts: count(5)?,
        next_attempt_at: (durable && state.is_waiting())
            .then(|| r.try_get(10))
            .transpose()?,
        state,
        created_at: r.try_get(7)?,
        started_at: r.try_get(8)?,
        finished_at: r.try_get(9)?,
        duration_ms: r.try_get::<_, Option<i64>>(11)?.map(|d| d.max(0) as u64),
        exit_code: r.try_get(12)?,
        error: r.try_get(13)?,
        payload: text(15)?,
        payload_truncated: r.try_get(16)?,
        stdout: text(17)?,
        stdout_truncated: r.try_get(18)?,
        stderr: text(19)?,
        stderr_truncated: r.try_get(20)?,
        host: r.try_get(21)?,
        priority: r.try_get(22)?,
        idempotency_key: r.try_get(23)?,
        cancel_requested: r.try_get(24)?,
        parent_id: r.try_get(25)?,
        progress: Progress::stored(r.try_get(26)?, r.try_get(27)?),
        callback: CallbackView::stored(
            state,
            r.try_get(28)?,
            r.try_get(29)?,
            r.try_get::<_, i32>(30).map(i64::from).ok(),
            r.try_get::<_, Option<i32>>(31)?.map(i64::from),
            r.try_get(32)?,
            r.try_get(33)?,
        ),
        children: None,
    })
}

async fn get(client: &impl GenericClient, id: &str) -> anyhow::Result<Option<Record>> {
    let sql = format!(
        "SELECT {} FROM jobhost_invocations WHERE id = $1",
        columns(None)
    );
    client
        .query_opt(&sql, &[&id])
        .await?
        .map(|r| record(&r))
        .transpose()
        .with_context(|| format!("reading invocation {id}"))
}

/// A row `CLAIM` returned.
fn claimed_row(r: &Row, owner: &HostId) -> anyhow::Result<Claimed> {
    let trigger: String = r.try_get(2)?;
    let vars: String = r.try_get(6)?;
    let payload: Vec<u8> = r.try_get(5)?;
    Ok(Claimed {
        lease: Lease {
            id: r.try_get(0)?,
            owner: owner.clone(),
            fence: r.try_get(8)?,
        },
        function: r.try_get(1)?,
        trigger: TriggerKind::parse(&trigger).ok_or(trigger),
        attempt: u32::try_from(r.try_get::<_, i32>(3)?).unwrap_or(0),
        max_attempt: u32::try_from(r.try_get::<_, i32>(4)?).unwrap_or(0),
        payload: payload.into(),
        vars: serde_json::from_str(&vars).unwrap_or_default(),
        input_dir: r.try_get::<_, Option<String>>(7)?.map(PathBuf::from),
        depth: u32::try_from(r.try_get::<_, i32>(9)?).unwrap_or(0),
    })
}

impl PostgresStore {
    /// `claim_due` when no wanted function has a `concurrency` or timers: one statement.
    async fn claim_simple(
        &self,
        owner: &HostId,
        functions: &[&Slots],
        limit: usize,
    ) -> anyhow::Result<Vec<Claimed>> {
        let (names, rooms): (Vec<&str>, Vec<i64>) = functions
            .iter()
            .map(|s| (s.function.as_str(), s.here.min(limit) as i64))
            .filter(|(_, room)| *room > 0)
            .unzip();
        if names.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.claimer().await?;
        let claim = client.prepare_cached(CLAIM_SIMPLE).await?;
        let limit = limit as i64;
        let rows = client
            .query(
                &claim,
                &[&names, &rooms, &owner.as_str(), &now_ms(), &limit],
            )
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let order: (i32, i64) = (r.try_get(10)?, r.try_get(11)?);
            claimed.push((order, claimed_row(r, owner)?));
        }
        // In claim order: highest priority, then oldest due, then oldest id.
        claimed.sort_by(|(a, x), (b, y)| {
            (std::cmp::Reverse(a.0), a.1, &x.lease.id).cmp(&(
                std::cmp::Reverse(b.0),
                b.1,
                &y.lease.id,
            ))
        });
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// `claim_due` when some wanted function has a `concurrency` or timers: in a
    /// transaction, under the limited functions' locks, a timer's run only under its
    /// timer's.
    async fn claim_careful(
        &self,
        owner: &HostId,
        functions: &[&Slots],
        limit: usize,
    ) -> anyhow::Result<Vec<Claimed>> {
        let mut client = self.claimer().await?;
        let tx = client.transaction().await?;
        // A function's `concurrency` holds on all hosts together: claimers of a limited
        // function take turns (locks in name order, so two never wait on each other),
        // and each counts what runs after the previous one committed.
        let mut limited: Vec<&str> = functions
            .iter()
            .filter(|s| s.everywhere.is_some())
            .map(|s| s.function.as_str())
            .collect();
        limited.sort_unstable();
        let mut running: HashMap<String, i64> = HashMap::new();
        if !limited.is_empty() {
            tx.execute(
                "SELECT pg_advisory_xact_lock(key) FROM (SELECT hashtextextended('jobhost function ' || f, 0) AS key
                     FROM unnest($1::text[]) WITH ORDINALITY AS t(f, n) ORDER BY n) AS ordered",
                &[&limited],
            )
            .await?;
            for row in tx
                .query(
                    "SELECT function, COUNT(*) FROM jobhost_invocations
                     WHERE state = 'running' AND function = ANY($1) GROUP BY function",
                    &[&limited],
                )
                .await?
            {
                running.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        // Read after the locks: a run stamped as started here began after what ended
        // before this claimer's turn.
        let now = now_ms();
        let (mut names, mut rooms) = (Vec::new(), Vec::new());
        for slots in functions {
            let room = slots
                .room(running.get(&slots.function).copied().unwrap_or(0))
                .min(limit);
            if room > 0 {
                names.push(slots.function.as_str());
                rooms.push(room as i64);
            }
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let due = tx.prepare_cached(DUE).await?;
        let mut candidates = Vec::new();
        for r in tx.query(&due, &[&names, &rooms, &now]).await? {
            candidates.push(Candidate {
                id: r.try_get(0)?,
                priority: r.try_get(1)?,
                run_after: r.try_get(2)?,
                timer: r.try_get(3)?,
            });
        }
        let mut chosen = choose(candidates, limit);
        // A timer's run: only while no other host is claiming or firing that timer (its
        // lock), and the claim below checks again, after the lock, that no run is going.
        for candidate in &mut chosen {
            if let Some(timer) = &candidate.timer {
                let locked: bool = tx
                    .query_one(
                        "SELECT pg_try_advisory_xact_lock(hashtextextended('jobhost timer ' || $1, 0))",
                        &[timer],
                    )
                    .await?
                    .try_get(0)?;
                if !locked {
                    candidate.id.clear();
                }
            }
        }
        let ids: Vec<&str> = chosen
            .iter()
            .map(|c| c.id.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let claim = tx.prepare_cached(CLAIM).await?;
        let rows = tx.query(&claim, &[&ids, &owner.as_str(), &now]).await?;
        let mut claimed = rows
            .iter()
            .map(|r| claimed_row(r, owner))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit().await?;
        // In claim order.
        claimed.sort_by_key(|c| ids.iter().position(|id| *id == c.lease.id));
        Ok(claimed)
    }
}

#[async_trait]
impl Queue for PostgresStore {
    async fn enqueue(&self, new: NewInvocation) -> anyhow::Result<Enqueued> {
        self.named(async {
            let client = self.client().await?;
            enqueue(&client, &new, None).await
        })
        .await
    }

    async fn enqueue_claimed(
        &self,
        new: NewInvocation,
        owner: &HostId,
    ) -> anyhow::Result<(Enqueued, Option<Claimed>)> {
        self.named(async {
            let client = self.client().await?;
            let due = new.run_after.is_none_or(|at| at <= now_ms());
            let enqueued = enqueue(&client, &new, due.then_some(owner)).await?;
            let claimed = (due && matches!(enqueued, Enqueued::New(_)))
                .then(|| super::claimed_new(new, owner));
            Ok((enqueued, claimed))
        })
        .await
    }

    async fn claim_due(&self, owner: &HostId, wanted: &Wanted) -> anyhow::Result<Vec<Claimed>> {
        self.named(async {
            // One statement when no wanted function needs locks; otherwise all go the
            // careful way together, so that priority orders them all.
            let functions: Vec<&Slots> = wanted.functions.iter().collect();
            let claimed = if functions
                .iter()
                .all(|s| s.everywhere.is_none() && !s.timers)
            {
                self.claim_simple(owner, &functions, wanted.limit).await?
            } else {
                self.claim_careful(owner, &functions, wanted.limit).await?
            };
            Ok(claimed)
        })
        .await
    }

    fn work_hint(&self) -> Option<Arc<Notify>> {
        let (hint, _) = self.hint.get_or_init(|| {
            let hint = Arc::new(Notify::new());
            let listener =
                tokio::spawn(listen(self.config.clone(), self.tls.clone(), hint.clone()));
            (hint, AbortOnDropHandle::new(listener))
        });
        Some(hint.clone())
    }

    async fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        self.named(async {
            let client = self.claimer().await?;
            let row = client
                .query_one(
                    "SELECT MIN(run_after) FROM jobhost_invocations
                     WHERE durable AND state IN ('queued', 'failed', 'scheduled')",
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn depth(&self) -> anyhow::Result<i64> {
        self.named(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT COUNT(*) FROM jobhost_invocations
                     WHERE durable AND state IN ('queued', 'failed', 'scheduled')",
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn claim(&self, id: &str, owner: &HostId) -> anyhow::Result<Option<Claimed>> {
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT timer FROM jobhost_invocations WHERE id = $1",
                    &[&id],
                )
                .await?
            else {
                return Ok(None);
            };
            // A timer's run waits for any claim of another run of that timer to commit, so
            // the check below sees it.
            if let Some(timer) = row.try_get::<_, Option<String>>(0)? {
                tx.execute(LOCK_TIMER, &[&timer]).await?;
            }
            let claim = tx.prepare_cached(CLAIM).await?;
            let ids = vec![id];
            let Some(r) = tx
                .query_opt(&claim, &[&ids, &owner.as_str(), &now_ms()])
                .await?
            else {
                return Ok(None);
            };
            let claimed = claimed_row(&r, owner)?;
            tx.commit().await?;
            Ok(Some(claimed))
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
        self.named(async {
            let mut client = self.client().await?;
            // A result that starts nothing needs no transaction: one statement.
            if chain.on_success.is_empty() && chain.on_failure.is_none() {
                return Ok(finish_row(&client, lease, &output, next).await?.is_some());
            }
            let tx = client.transaction().await?;
            let Some(ended) = finish_row(&tx, lease, &output, next).await? else {
                return Ok(false);
            };
            start_chain(&tx, &lease.id, ended, chain).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> anyhow::Result<bool> {
        self.named(async {
            let client = self.client().await?;
            let changed = client
                .query(
                    &format!(
                        "WITH released AS (
                             UPDATE jobhost_invocations SET {RELEASED}
                             WHERE id = $1 AND state = 'running' AND fence = $2 RETURNING id)
                         SELECT pg_notify('jobhost_work', '') FROM released"
                    ),
                    &[&lease.id, &lease.fence, &now_ms(), &CANCELLED],
                )
                .await?;
            Ok(changed.len() == 1)
        })
        .await
    }

    async fn release_lost(
        &self,
        owner: &HostId,
        running: &[String],
        claimed_before: i64,
    ) -> anyhow::Result<Vec<String>> {
        self.named(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "WITH released AS (
                             UPDATE jobhost_invocations SET {RELEASED}
                             WHERE state = 'running' AND durable AND owner = $1
                               AND started_at < $2 AND NOT (id = ANY($5))
                             RETURNING id)
                         SELECT id, pg_notify('jobhost_work', '') FROM released"
                    ),
                    &[
                        &owner.as_str(),
                        &claimed_before,
                        &now_ms(),
                        &CANCELLED,
                        &running,
                    ],
                )
                .await?;
            rows.iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()
                .map_err(anyhow::Error::from)
        })
        .await
    }

    async fn recover(&self, owner: &HostId) -> anyhow::Result<Recovered> {
        // Only this host's own: other hosts' running work is theirs while they live.
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = now_ms();
            tx.execute(
                "UPDATE jobhost_invocations SET state = 'cancelled', finished_at = $2, error = $3
                 WHERE state = 'running' AND durable AND owner = $1 AND cancel_requested",
                &[&owner.as_str(), &now, &CANCELLED],
            )
            .await?;
            let dead = tx
                .query(
                    "UPDATE jobhost_invocations SET state = 'dead', finished_at = $2,
                         error = 'interrupted: the host stopped while it ran, and no attempts were left'
                     WHERE state = 'running' AND durable AND owner = $1
                       AND attempt >= max_attempt
                     RETURNING id",
                    &[&owner.as_str(), &now],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            let requeued = tx
                .execute(
                    "UPDATE jobhost_invocations SET state = 'queued', run_after = $2
                     WHERE state = 'running' AND durable AND owner = $1",
                    &[&owner.as_str(), &now],
                )
                .await?;
            tx.commit().await?;
            Ok(Recovered {
                requeued: requeued as usize,
                dead,
            })
        })
        .await
    }

    async fn retry(&self, id: &str) -> Result<Record, RetryError> {
        let result = self
            .named(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let state = match tx
                    .query_opt(
                        "SELECT state FROM jobhost_invocations WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?
                {
                    None => return Ok(Err(RetryError::NotFound(id.to_string()))),
                    Some(row) => named(&row, 0, State::parse)?,
                };
                if state != State::Dead {
                    let id = id.to_string();
                    return Ok(Err(RetryError::NotDead { id, state }));
                }
                tx.execute(
                    &format!(
                        "UPDATE jobhost_invocations SET {}, run_after = $2, {} WHERE id = $1",
                        super::RETRIED,
                        super::CALLBACK_AGAIN
                    ),
                    &[&id, &now_ms()],
                )
                .await?;
                let record = get(&tx, id).await?.context("the record was just updated")?;
                tx.batch_execute("NOTIFY jobhost_work").await?;
                tx.commit().await?;
                Ok(Ok(record))
            })
            .await;
        result.map_err(RetryError::Store)?
    }

    async fn retry_dead(&self, function: Option<&str>, limit: usize) -> anyhow::Result<usize> {
        self.named(async {
            let client = self.client().await?;
            // Queued work wakes the other hosts when it commits (see `work_hint`).
            let rows = client
                .query(
                    &format!(
                        "WITH retried AS (
                             UPDATE jobhost_invocations SET {}, run_after = $2, {}
                             WHERE id IN (SELECT id FROM jobhost_invocations
                                 WHERE durable AND state = 'dead'
                                     AND ($1::text IS NULL OR function = $1)
                                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                             RETURNING 1)
                         SELECT count(*), pg_notify('jobhost_work', '') FROM retried",
                        super::RETRIED,
                        super::CALLBACK_AGAIN
                    ),
                    &[&function, &now_ms(), &(limit as i64)],
                )
                .await?;
            let count: i64 = rows.first().map_or(0, |r| r.get(0));
            Ok(usize::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, CancelError> {
        let result = self
            .named(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let Some(row) = tx
                    .query_opt(
                        "SELECT state, durable FROM jobhost_invocations WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?
                else {
                    return Ok(Err(CancelError::NotFound(id.to_string())));
                };
                let state = named(&row, 0, State::parse)?;
                let durable: bool = row.try_get(1)?;
                let cancelled = match state {
                    _ if !durable => {
                        let id = id.to_string();
                        return Ok(Err(CancelError::Ended { id, state }));
                    }
                    state if state.is_waiting() => {
                        tx.execute(
                            "UPDATE jobhost_invocations SET state = 'cancelled',
                                 cancel_requested = TRUE, finished_at = $2, error = $3
                             WHERE id = $1",
                            &[&id, &now_ms(), &CANCELLED],
                        )
                        .await?;
                        Cancelled::Now
                    }
                    State::Running => {
                        // Its host may be another: the hint wakes it to look (`cancels`).
                        tx.execute(
                            "UPDATE jobhost_invocations SET cancel_requested = TRUE WHERE id = $1",
                            &[&id],
                        )
                        .await?;
                        tx.batch_execute("NOTIFY jobhost_work").await?;
                        Cancelled::Requested
                    }
                    state => {
                        let id = id.to_string();
                        return Ok(Err(CancelError::Ended { id, state }));
                    }
                };
                let record = get(&tx, id).await?.context("the record was just updated")?;
                tx.commit().await?;
                Ok(Ok(cancelled(record)))
            })
            .await;
        result.map_err(CancelError::Store)?
    }

    async fn save_checkpoint(&self, lease: &Lease, data: Bytes) -> anyhow::Result<bool> {
        self.named(async {
            let client = self.client().await?;
            let changed = client
                .execute(
                    "UPDATE jobhost_invocations SET checkpoint = $3
                     WHERE id = $1 AND state = 'running' AND fence = $2",
                    &[&lease.id, &lease.fence, &data.as_ref()],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }

    async fn checkpoint(&self, id: &str) -> anyhow::Result<Option<Bytes>> {
        self.named(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT checkpoint FROM jobhost_invocations WHERE id = $1",
                    &[&id],
                )
                .await?;
            let data: Option<Vec<u8>> = match row {
                Some(row) => row.try_get(0)?,
                None => None,
            };
            Ok(data.map(Bytes::from))
        })
        .await
    }

    async fn set_progress(
        &self,
        lease: &Lease,
        percent: u8,
        message: &str,
    ) -> anyhow::Result<bool> {
        self.named(async {
            let client = self.client().await?;
            let message = records::without_nul(message);
            let changed = client
                .execute(
                    "UPDATE jobhost_invocations SET progress = $3, progress_message = $4
                     WHERE id = $1 AND state = 'running' AND fence = $2",
                    &[&lease.id, &lease.fence, &i32::from(percent), &message],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }

    async fn cancels(&self, running: &[String]) -> anyhow::Result<Vec<String>> {
        self.named(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT id FROM jobhost_invocations
                     WHERE id = ANY($1) AND state = 'running' AND cancel_requested",
                )
                .await?;
            let rows = client.query(&stmt, &[&running]).await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[async_trait]
impl TriggerState for PostgresStore {
    async fn timer_cursor(&self, key: &str) -> anyhow::Result<Option<i64>> {
        self.named(async {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT last FROM jobhost_timers WHERE key = $1", &[&key])
                .await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
        .await
    }

    async fn set_timer_cursor(&self, key: &str, at: i64) -> anyhow::Result<()> {
        self.named(async {
            let client = self.client().await?;
            set_cursor(&client, key, at).await
        })
        .await
    }

    async fn fire_timer(&self, fire: TimerFire) -> anyhow::Result<Fired> {
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Under the timer's lock, what is read below stays true until the commit.
            tx.execute(LOCK_TIMER, &[&fire.key]).await?;
            if let Some((occurrence, cursor)) = fire.advance {
                let last: Option<i64> = tx
                    .query_opt(
                        "SELECT last FROM jobhost_timers WHERE key = $1",
                        &[&fire.key],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                if last.is_some_and(|last| last >= occurrence) {
                    return Ok(Fired::AlreadyFired);
                }
                set_cursor(&tx, &fire.key, cursor).await?;
            }
            let counts = tx
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE state = 'running'),
                            COUNT(*) FILTER (WHERE state = 'queued')
                     FROM jobhost_invocations WHERE timer = $1",
                    &[&fire.key],
                )
                .await?;
            let running = counts.try_get::<_, i64>(0)? > 0;
            let waiting = counts.try_get::<_, i64>(1)? > 0;
            let skip = match fire.overlap {
                Overlap::Skip => running || waiting,
                Overlap::Queue => waiting,
            };
            let (state, fired) = if skip {
                (State::Skipped, Fired::Skipped)
            } else {
                (State::Queued, Fired::Queued)
            };
            insert(&tx, &fire.invocation, state, None).await?;
            tx.commit().await?;
            Ok(fired)
        })
        .await
    }

    async fn claim_startup(&self, key: &str, within: Duration) -> anyhow::Result<bool> {
        self.named(async {
            let client = self.client().await?;
            let claimed = client
                .query_opt(
                    &format!(
                        "INSERT INTO jobhost_timers (key, last, startup) VALUES ($1, $2, {SERVER_NOW})
                         ON CONFLICT (key) DO UPDATE SET startup = {SERVER_NOW}
                         WHERE jobhost_timers.startup IS NULL
                            OR jobhost_timers.startup <= {SERVER_NOW} - $3
                         RETURNING 1"
                    ),
                    &[&key, &now_ms(), &millis(within)],
                )
                .await?;
            Ok(claimed.is_some())
        })
        .await
    }

    async fn forget_timers_except(&self, keep: &[String]) -> anyhow::Result<()> {
        self.named(async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM jobhost_timers WHERE NOT (key = ANY($1))",
                    &[&keep],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn set_paused(&self, function: &str, paused: bool) -> anyhow::Result<bool> {
        self.named(async {
            let client = self.client().await?;
            let changed = if paused {
                client
                    .execute(
                        "INSERT INTO jobhost_paused (function, paused_at) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&function, &now_ms()],
                    )
                    .await?
            } else {
                client
                    .execute(
                        "DELETE FROM jobhost_paused WHERE function = $1",
                        &[&function],
                    )
                    .await?
            };
            Ok(changed == 1)
        })
        .await
    }

    async fn paused(&self) -> anyhow::Result<BTreeSet<String>> {
        self.named(async {
            let client = self.client().await?;
            let rows = client
                .query("SELECT function FROM jobhost_paused", &[])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn receipt(&self, watch: &str, path: &str) -> anyhow::Result<Option<Receipt>> {
        self.named(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT size, mtime FROM jobhost_receipts WHERE watch = $1 AND path = $2",
                    &[&watch, &path],
                )
                .await?;
            row.map(|r| receipt(&r, 0)).transpose()
        })
        .await
    }

    async fn receipts(&self, watch: &str) -> anyhow::Result<HashMap<String, Receipt>> {
        self.named(async {
            let client = self.client().await?;
            client
                .query(
                    "SELECT size, mtime, path FROM jobhost_receipts WHERE watch = $1",
                    &[&watch],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(2)?, receipt(r, 0)?)))
                .collect()
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
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let moved = match before {
                // Of two hosts writing the first receipt, the second finds the first's.
                None => match now {
                    Some(r) => {
                        tx.execute(
                            "INSERT INTO jobhost_receipts (watch, path, size, mtime)
                             VALUES ($1, $2, $3, $4) ON CONFLICT (watch, path) DO NOTHING",
                            &[&watch, &path, &size(r), &r.mtime],
                        )
                        .await?
                            == 1
                    }
                    None => tx
                        .query_opt(
                            "SELECT 1 FROM jobhost_receipts WHERE watch = $1 AND path = $2",
                            &[&watch, &path],
                        )
                        .await?
                        .is_none(),
                },
                // The row is locked from here to the commit: what it holds stays true.
                Some(b) => {
                    let stored = tx
                        .query_opt(
                            "SELECT size, mtime FROM jobhost_receipts
                             WHERE watch = $1 AND path = $2 FOR UPDATE",
                            &[&watch, &path],
                        )
                        .await?
                        .map(|r| receipt(&r, 0))
                        .transpose()?;
                    if stored != Some(b) {
                        false
                    } else {
                        match now {
                            Some(r) => {
                                tx.execute(
                                    "UPDATE jobhost_receipts SET size = $3, mtime = $4
                                     WHERE watch = $1 AND path = $2",
                                    &[&watch, &path, &size(r), &r.mtime],
                                )
                                .await?
                            }
                            None => {
                                tx.execute(
                                    "DELETE FROM jobhost_receipts WHERE watch = $1 AND path = $2",
                                    &[&watch, &path],
                                )
                                .await?
                            }
                        };
                        true
                    }
                }
            };
            if !moved {
                return Ok(false);
            }
            if let Some(new) = &invocation {
                insert(&tx, new, State::Queued, None).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}

fn size(r: Receipt) -> i64 {
    i64::try_from(r.size).unwrap_or(i64::MAX)
}

fn receipt(r: &Row, first: usize) -> anyhow::Result<Receipt> {
    Ok(Receipt {
        size: u64::try_from(r.try_get::<_, i64>(first)?).unwrap_or(0),
        mtime: r.try_get(first + 1)?,
    })
}

#[async_trait]
impl History for PostgresStore {
    fn record(&self, record: SyncRecord) {
        // Fails only when the writer is gone, with the store: nothing is left to write to.
        let _ = self.records.send(Write::Record(record));
    }

    async fn flush(&self) -> anyhow::Result<()> {
        let (done, written) = oneshot::channel();
        if self.records.send(Write::Flush(done)).is_err() {
            bail!("the records writer of {} stopped", self.name);
        }
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => bail!("writing records to {}: {why}", self.name),
            Err(_) => bail!("the records writer of {} stopped", self.name),
        }
    }

    async fn children(&self, id: &str) -> anyhow::Result<Vec<String>> {
        self.named(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id FROM jobhost_invocations WHERE parent_id = $1 ORDER BY id",
                    &[&id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<Record>> {
        self.named(async {
            let client = self.client().await?;
            get(&client, id).await
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Record>> {
        self.named(async {
            let client = self.client().await?;
            let (sql, bound) = list_query(filter);
            let stmt = client.prepare_cached(&sql).await?;
            let bound: Vec<&(dyn ToSql + Sync)> = bound
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client
                .query(&stmt, &bound)
                .await?
                .iter()
                .map(record)
                .collect()
        })
        .await
    }

    async fn stats(&self, now: i64, minutes: usize) -> anyhow::Result<Stats> {
        self.named(async {
            // Both reads on connections of their own at once: the answer takes the longer
            // of them, not their sum.
            let states = async {
                let client = self.client().await?;
                let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                // One index range per state, counted from the index alone (a GROUP BY over
                // the table reads every row).
                let rows = client
                    .query(
                        "SELECT s, (SELECT count(*) FROM jobhost_invocations WHERE state = s)
                         FROM unnest($1::text[]) s",
                        &[&names],
                    )
                    .await?;
                let mut states = Vec::new();
                for row in rows {
                    let n: i64 = row.try_get(1)?;
                    if n > 0 {
                        states.push((row.try_get(0)?, n));
                    }
                }
                anyhow::Ok(states)
            };
            let ended = async {
                let client = self.client().await?;
                // Grouped by minute alone (few groups), each kind counted in its group.
                let rows = client
                    .query(
                        "SELECT finished_at / 60000,
                             count(*) FILTER (WHERE state = 'succeeded'),
                             count(*) FILTER (WHERE state IN ('failed', 'dead')),
                             count(*) FILTER (WHERE state IN ('cancelled', 'skipped'))
                         FROM jobhost_invocations WHERE finished_at >= $1 GROUP BY 1",
                        &[&Stats::since(now, minutes)],
                    )
                    .await?;
                let mut ended = Vec::new();
                for row in rows {
                    let minute: i64 = row.try_get(0)?;
                    let kinds = [State::Succeeded, State::Failed, State::Cancelled];
                    for (i, state) in kinds.into_iter().enumerate() {
                        ended.push((minute, state.as_str().to_string(), row.try_get(i + 1)?));
                    }
                }
                anyhow::Ok(ended)
            };
            let (states, ended) = tokio::try_join!(states, ended)?;
            Ok(Stats::gather(states, ended, now, minutes))
        })
        .await
    }

    async fn prune(&self, before: i64) -> anyhow::Result<usize> {
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // One host at a time: the others find the lock taken and leave it to that one.
            let alone: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
                .await?
                .try_get(0)?;
            if !alone {
                return Ok(0);
            }
            tx.execute(
                "DELETE FROM jobhost_hosts WHERE heartbeat_at < $1",
                &[&before],
            )
            .await?;
            let deleted = tx
                .execute(
                    "DELETE FROM jobhost_invocations
                     WHERE finished_at IS NOT NULL AND finished_at < $1
                       AND (state IN ('succeeded', 'dead', 'skipped', 'cancelled')
                            OR (state = 'failed' AND NOT durable))",
                    &[&before],
                )
                .await?;
            tx.commit().await?;
            Ok(deleted as usize)
        })
        .await
    }

    async fn bytes(&self) -> anyhow::Result<u64> {
        self.named(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT (pg_total_relation_size('jobhost_invocations')
                            + pg_total_relation_size('jobhost_receipts')
                            + pg_total_relation_size('jobhost_timers'))::int8",
                    &[],
                )
                .await?;
            Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
        })
        .await
    }

    async fn check(&self) -> anyhow::Result<()> {
        // A server that cannot be reached now may be back in a moment (the outage is
        // logged once); only tables that are gone mean what the host writes would be lost.
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => {
                // Tried and failed (not a try skipped while the server is lost).
                if !e.is::<Unreachable>() {
                    self.outage.begin(&e);
                }
                return Ok(());
            }
        };
        match client.query_one("SELECT 1 FROM jobhost_schema", &[]).await {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => bail!(
                "the jobhost tables in {} were dropped while the host ran",
                self.name
            ),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if lost(&e) {
                    self.outage.begin(&e);
                } else {
                    tracing::warn!("cannot read the store {}: {e:#}", self.name);
                }
                Ok(())
            }
            Ok(_) => {
                self.outage.over();
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Callbacks for PostgresStore {
    async fn claim_callbacks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> anyhow::Result<Vec<DueCallback>> {
        self.named(async {
            let client = self.client().await?;
            let now = now_ms();
            let rows = client
                .query(
                    &format!(
                        "UPDATE jobhost_invocations SET callback_attempts = callback_attempts + 1,
                             callback_next = $2
                         WHERE id IN (SELECT id FROM jobhost_invocations
                             WHERE callback_state = 'pending' AND callback_next <= $1
                                 AND state IN {ENDED}
                             ORDER BY callback_next LIMIT $3 FOR UPDATE SKIP LOCKED)
                         RETURNING id, callback_url, callback_attempts"
                    ),
                    &[&now, &(now + millis(hold)), &(limit as i64)],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(DueCallback {
                        id: r.try_get(0)?,
                        url: r.try_get(1)?,
                        attempts: u32::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0),
                    })
                })
                .collect()
        })
        .await
    }

    async fn callback_tried(&self, due: &DueCallback, tried: CallbackTry) -> anyhow::Result<()> {
        self.named(async {
            let client = self.client().await?;
            let (state, next) = super::after_try(&tried);
            let status = tried.status.map(i32::from);
            let attempts = i32::try_from(due.attempts).unwrap_or(i32::MAX);
            client
                .execute(
                    "UPDATE jobhost_invocations SET callback_state = $2, callback_status = $3,
                         callback_error = $4, callback_next = $5
                     WHERE id = $1 AND callback_state = 'pending' AND callback_attempts = $6",
                    &[&due.id, &state, &status, &tried.error, &next, &attempts],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

/// Inserts or replaces `key`; a key new to `store` only while it holds fewer than `max_keys`.
/// The caller holds `LOCK_KV_STORE`, so no other transaction adds keys to the store
/// meanwhile; `held` is how many it holds, counted once when first needed.
async fn put(
    tx: &tokio_postgres::Transaction<'_>,
    (store, key, value): (&str, &str, &[u8]),
    max_keys: u64,
    held: &mut Option<u64>,
) -> anyhow::Result<Result<(), KvError>> {
    let replaced = tx
        .execute(
            "UPDATE jobhost_kv SET value = $3 WHERE store = $1 AND key = $2",
            &[&store, &key, &value],
        )
        .await?;
    if replaced == 0 {
        let count = match *held {
            Some(n) => n,
            None => tx
                .query_one(
                    "SELECT count(*) FROM jobhost_kv WHERE store = $1",
                    &[&store],
                )
                .await?
                .get::<_, i64>(0)
                .unsigned_abs(),
        };
        if count >= max_keys {
            return Ok(Err(KvError::TooManyKeys {
                store: store.to_string(),
                max: max_keys,
            }));
        }
        tx.execute(
            "INSERT INTO jobhost_kv (store, key, value) VALUES ($1, $2, $3)",
            &[&store, &key, &value],
        )
        .await?;
        *held = Some(count + 1);
    }
    Ok(Ok(()))
}

#[async_trait]
impl KeyValues for PostgresStore {
    async fn get(&self, store: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        self.named(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT k.i, kv.value FROM unnest($2::text[]) WITH ORDINALITY AS k (key, i)
                     LEFT JOIN jobhost_kv AS kv ON kv.store = $1 AND kv.key = k.key",
                    &[&store, &keys],
                )
                .await?;
            let mut values = vec![None; keys.len()];
            for row in rows {
                let i: i64 = row.get(0);
                values[usize::try_from(i - 1)?] = row.get(1);
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
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Writers of a store take turns: a batch adding keys counts them against the
            // limit alone, and row locks are always taken under this one (no deadlock).
            tx.execute(LOCK_KV_STORE, &[&store]).await?;
            let mut held = None;
            for (key, value) in pairs {
                if let Err(refused) = put(&tx, (store, key, value), max_keys, &mut held).await? {
                    return Ok(Err(refused));
                }
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
        .unwrap_or_else(|e| Err(KvError::Store(e)))
    }

    async fn delete(&self, store: &str, keys: &[String]) -> anyhow::Result<u64> {
        self.named(async {
            let client = self.client().await?;
            Ok(client
                .execute(
                    "DELETE FROM jobhost_kv WHERE store = $1 AND key = ANY($2)",
                    &[&store, &keys],
                )
                .await?)
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
        self.named(async {
            let client = self.client().await?;
            let (offset, limit) = (
                i64::try_from(offset).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX),
            );
            let rows = client
                .query(
                    "SELECT key FROM jobhost_kv WHERE store = $1 AND starts_with(key, $2)
                     ORDER BY key LIMIT $3 OFFSET $4",
                    &[&store, &prefix, &limit, &offset],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
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
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let select = "SELECT value FROM jobhost_kv WHERE store = $1 AND key = $2 FOR UPDATE";
            let mut current: Option<Vec<u8>> = tx
                .query_opt(select, &[&store, &key])
                .await?
                .map(|r| r.get(0));
            if current.is_none() {
                // A new key: hosts adding one take turns, so of two that add the same key
                // at once, the second sees the first's.
                tx.execute(LOCK_KV_STORE, &[&store]).await?;
                current = tx
                    .query_opt(select, &[&store, &key])
                    .await?
                    .map(|r| r.get(0));
            }
            let sum = match super::incremented(key, current.as_deref(), delta) {
                Ok(sum) => sum,
                Err(refused) => return Ok(Err(refused)),
            };
            let text = sum.to_string();
            let put = put(&tx, (store, key, text.as_bytes()), max_keys, &mut None).await?;
            if let Err(refused) = put {
                return Ok(Err(refused));
            }
            tx.commit().await?;
            Ok(Ok(sum))
        })
        .await
        .unwrap_or_else(|e| Err(KvError::Store(e)))
    }
}

#[async_trait]
impl Cluster for PostgresStore {
    async fn heartbeat(&self, host: &HostId, started_at: i64) -> anyhow::Result<()> {
        self.named(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "INSERT INTO jobhost_hosts (id, started_at, heartbeat_at)
                     VALUES ($1, $2, {SERVER_NOW})
                     ON CONFLICT (id) DO UPDATE SET started_at = $2, heartbeat_at = {SERVER_NOW}"
                ))
                .await?;
            client
                .execute(&stmt, &[&host.as_str(), &started_at])
                .await?;
            Ok(())
        })
        .await
    }

    async fn rescue(&self, lease: Duration) -> anyhow::Result<Vec<Rescued>> {
        self.named(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let silent = format!(
                "state = 'running' AND durable AND NOT EXISTS (SELECT 1 FROM jobhost_hosts AS h
                 WHERE h.id = jobhost_invocations.owner AND h.heartbeat_at >= {SERVER_NOW} - $2)"
            );
            let (now, lease) = (now_ms(), millis(lease));
            tx.execute(
                &format!(
                    "UPDATE jobhost_invocations SET state = 'cancelled', finished_at = $1, error = $3
                     WHERE {silent} AND cancel_requested"
                ),
                &[&now, &lease, &CANCELLED],
            )
            .await?;
            let dead = tx
                .query(
                    &format!(
                        "UPDATE jobhost_invocations SET state = 'dead', finished_at = $1,
                             error = 'interrupted: its host fell silent while it ran, and no attempts were left'
                         WHERE {silent} AND attempt >= max_attempt RETURNING owner, id"
                    ),
                    &[&now, &lease],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<(Option<String>, String)>, tokio_postgres::Error>>()?;
            let requeued = tx
                .query(
                    &format!(
                        "UPDATE jobhost_invocations SET state = 'queued', run_after = $1
                         WHERE {silent} RETURNING owner"
                    ),
                    &[&now, &lease],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<Option<String>>, _>>()?;
            if !requeued.is_empty() {
                tx.batch_execute("NOTIFY jobhost_work").await?;
            }
            tx.commit().await?;
            Ok(super::rescued(requeued, dead))
        })
        .await
    }

    async fn hosts(&self, lease: Duration) -> anyhow::Result<Vec<HostView>> {
        self.named(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT id, started_at, heartbeat_at, heartbeat_at >= {SERVER_NOW} - $1,
                             (SELECT COUNT(*) FROM jobhost_invocations AS i
                              WHERE i.state = 'running' AND i.owner = h.id)
                         FROM jobhost_hosts AS h ORDER BY started_at, id"
                    ),
                    &[&millis(lease)],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(HostView {
                        id: r.try_get(0)?,
                        started_at: r.try_get(1)?,
                        last_heartbeat: r.try_get(2)?,
                        alive: r.try_get(3)?,
                        running: r.try_get(4)?,
                    })
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
#[path = "../../tests/it/postgres_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, conformance};

    /// The default of `[host] store = { postgres = ..., connections }`.
    const CONNECTIONS: usize = 8;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_store_conformance_suite() {
        conformance::run(|| async {
            let url = server::database();
            (
                Store::new(
                    PostgresStore::open(&url, CONNECTIONS, None).await.unwrap(),
                    "test",
                ),
                (),
            )
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosts_starting_together_migrate_the_schema_once() {
        let url = server::database();
        let (a, b, c) = tokio::join!(
            PostgresStore::open(&url, CONNECTIONS, None),
            PostgresStore::open(&url, CONNECTIONS, None),
            PostgresStore::open(&url, CONNECTIONS, None)
        );
        for store in [a, b, c] {
            store.expect("each host opens the store");
        }
        let store = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let client = store.client().await.unwrap();
        let versions: Vec<i32> = client
            .query("SELECT version FROM jobhost_schema", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [MIGRATIONS.len() as i32]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_named_with_what_to_check() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://jobhost:secret@127.0.0.1:{port}/jobs");
        let message = format!(
            "{:#}",
            PostgresStore::open(&url, CONNECTIONS, None)
                .await
                .err()
                .unwrap()
        );
        assert!(
            message.contains(&format!("postgres://jobhost@127.0.0.1:{port}/jobs")),
            "{message}"
        );
        assert!(message.contains("is the server running"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dashboards_lists_read_indexes_not_the_whole_table() {
        let url = server::database();
        let store = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let client = store.client().await.unwrap();
        // 20,000 records over five functions and a rare one, one in a hundred dead with an
        // error. A filter that most records pass may walk the ids and skip the rest; one that
        // few pass must read its own index.
        client
            .batch_execute(
                "INSERT INTO jobhost_invocations (id, function, trigger, reason, attempt,
                     max_attempt, state, durable, payload, vars, created_at, run_after,
                     finished_at, error)
                 SELECT lpad(n::text, 8, '0'),
                     CASE WHEN n % 97 = 0 THEN 'rare' ELSE 'f' || (n % 5) END, 'http', 'http', 1, 1,
                     CASE WHEN n % 100 = 0 THEN 'dead' ELSE 'succeeded' END, false, '', '[]',
                     n, n, n, CASE WHEN n % 100 = 0 THEN 'exit 3' END
                 FROM generate_series(1, 20000) AS n;
                 ANALYZE jobhost_invocations;",
            )
            .await
            .unwrap();
        let filter = |f: fn(&mut Filter)| {
            let mut filter = Filter {
                excerpt: Some(4096),
                ..Filter::default()
            };
            f(&mut filter);
            filter
        };
        let cases: [(Filter, &str); 6] = [
            (filter(|_| {}), "jobhost_invocations_pkey"),
            (
                filter(|f| f.before = Some("00010000".into())),
                "jobhost_invocations_pkey",
            ),
            (
                filter(|f| f.function = Some("rare".into())),
                "jobhost_invocations_function",
            ),
            (
                filter(|f| f.state = Some(State::Dead)),
                "jobhost_invocations_state",
            ),
            (
                filter(|f| f.error = Some("exit".into())),
                "jobhost_invocations_errors",
            ),
            (
                filter(|f| {
                    f.function = Some("rare".into());
                    f.state = Some(State::Dead);
                    f.before = Some("00010000".into());
                }),
                "jobhost_invocations_",
            ),
        ];
        for (filter, index) in cases {
            let (sql, bound) = list_query(&filter);
            let bound: Vec<&(dyn ToSql + Sync)> = bound
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {sql}"), &bound)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(index), "{filter:?}: {plan}");
            assert!(!plan.contains("Seq Scan"), "{filter:?}: {plan}");
        }
        let stats = store.stats(20_000, 60).await.unwrap();
        assert_eq!(stats.states["dead"], 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_reads_indexes_not_the_whole_table() {
        let url = server::database();
        let store = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let client = store.client().await.unwrap();
        // Many finished records and 1,000 waiting, over five functions, as statistics know.
        client
            .batch_execute(
                "INSERT INTO jobhost_invocations (id, function, trigger, reason, attempt,
                     max_attempt, state, durable, payload, vars, created_at, run_after)
                 SELECT 'i' || n, 'f' || (n % 5), 'manual', 'manual', 0, 3,
                     CASE WHEN n <= 1000 THEN 'queued' ELSE 'succeeded' END,
                     n <= 1000 OR n % 2 = 0, '', '[]', n, n
                 FROM generate_series(1, 20000) AS n;
                 ANALYZE jobhost_invocations;",
            )
            .await
            .unwrap();
        // Both claim statements, their parameters written in: the claim index, no table scan.
        let careful = DUE.replace("$3", "20001");
        let simple = CLAIM_SIMPLE
            .replace("$3", "'h'")
            .replace("$4", "20001")
            .replace("$5", "30");
        for sql in [careful, simple] {
            let sql = sql
                .replace("$1::text[]", "ARRAY['f0', 'f1', 'f2']")
                .replace("$2::int8[]", "ARRAY[10, 10, 10]::int8[]");
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {sql}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains("jobhost_invocations_claim"), "{plan}");
            assert!(!plan.contains("Seq Scan on jobhost_invocations"), "{plan}");
        }
        // And it claims what it should: ten of each, oldest first.
        let owner = HostId("h".into());
        let wanted = Wanted {
            limit: 30,
            functions: ["f0", "f1", "f2"]
                .iter()
                .map(|f| super::super::Slots {
                    function: f.to_string(),
                    here: 10,
                    everywhere: Some(10),
                    timers: false,
                })
                .collect(),
        };
        let claimed = store.claim_due(&owner, &wanted).await.unwrap();
        assert_eq!(claimed.len(), 30);
        assert_eq!(claimed[0].lease.id, "i1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_queued_by_another_host_wakes_this_one() {
        let url = server::database();
        let here = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let there = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let hint = here.work_hint().expect("PostgreSQL gives hints");
        let within = Duration::from_secs(30);
        // The first wake comes once the listener listens.
        tokio::time::timeout(within, hint.notified()).await.unwrap();
        let new = NewInvocation {
            id: "n".to_string(),
            function: "f".to_string(),
            trigger: TriggerKind::Manual,
            reason: super::super::Reason::Manual,
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
        };
        there.enqueue(new).await.unwrap();
        tokio::time::timeout(within, hint.notified())
            .await
            .expect("queued work on another host wakes this one");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_tables_are_noticed_and_named() {
        let url = server::database();
        let store = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        store.check().await.unwrap();
        let client = store.client().await.unwrap();
        client
            .batch_execute("DROP TABLE jobhost_schema")
            .await
            .unwrap();
        let message = store.check().await.unwrap_err().to_string();
        assert!(
            message.contains("were dropped while the host ran"),
            "{message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_the_server_refuses_costs_only_itself_not_its_batch() {
        let url = server::database();
        let store = PostgresStore::open(&url, CONNECTIONS, None).await.unwrap();
        let client = store.client().await.unwrap();
        // Something the server refuses in one record of a batch (here a rule of the test's).
        client
            .batch_execute(
                "ALTER TABLE jobhost_invocations ADD CONSTRAINT no_bad CHECK (function <> 'bad')",
            )
            .await
            .unwrap();
        for (id, function) in [("01", "good"), ("02", "bad"), ("03", "good")] {
            store.record(SyncRecord {
                id: id.to_string(),
                function: function.to_string(),
                trigger: TriggerKind::Http,
                reason: super::super::Reason::Http,
                started_at: now_ms(),
                host: HostId("h".into()),
                payload: bytes::Bytes::from_static(b"asked"),
                payload_truncated: false,
                output: super::super::Output::default(),
            });
        }
        store.flush().await.unwrap();
        let kept: Vec<String> = store
            .list(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(kept, ["03", "01"]);
    }
}
