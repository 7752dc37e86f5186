//! The whole life of an invocation, whatever fired it: admission within the limits
//! (`max_concurrency` and each function's `concurrency`), the guest's environment, one
//! tracing span, the run in the sandbox, the record, the retry-or-dead decision for
//! durable work, and the metrics. Triggers, the HTTP front, the API and the CLI hand work
//! here; none of them runs a guest or writes a result itself.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

use crate::config::{CallbackSettings, DirMount, FunctionSpec, Retry, TriggerKind};
use crate::keyvalue;
use crate::metrics;
use crate::outbound;
use crate::registry::{Function, Registry};
use crate::sandbox::{
    Body, EnqueueOptions, Failure, HttpServed, IncomingBody, Job, JobLink, KvLink, OutboundLink,
    Outcome, Ready, Run, SPARES, Sandbox, Shape,
};
use crate::store::{
    CancelError, Cancelled, Chain, Claimed, Enqueued, History, HostId, LATEST, Lease,
    NewInvocation, Next, Output, Reason, Record, RetryError, State, Store, SyncRecord, now_ms,
};

/// How long an instance made ahead (`Spare`) may wait for its request, and how soon after
/// its last request a function must be called again to get one. Its invocation's id (a
/// UUIDv7) carries the time it was made, and lists are ordered by id: a spare that waited
/// longer would list its invocation before ones that started earlier.
const SPARE_FRESH: Duration = Duration::from_secs(2);

/// How long a cancel waits for a run here to stop and its result to be stored.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Where a watch trigger's folder appears in the sandbox.
pub const INPUT: &str = "/input";

/// The `Idempotency-Key` of a submission, if it has one; why not, when it cannot be one.
pub fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| "the Idempotency-Key header is not text".to_string())?;
    check_idempotency_key(key).map_err(|why| format!("the Idempotency-Key header {why}"))?;
    Ok(Some(key.to_string()))
}

/// The `X-Jobhost-Callback` of a submission, if it has one and `settings` allow it; why
/// not, when they do not.
pub fn callback(
    headers: &http::HeaderMap,
    settings: &CallbackSettings,
) -> Result<Option<String>, String> {
    let Some(value) = headers.get("x-jobhost-callback") else {
        return Ok(None);
    };
    let url = value
        .to_str()
        .map_err(|_| "the X-Jobhost-Callback header is not text".to_string())?;
    match settings.refuses(url) {
        Some(why) => Err(why),
        None => Ok(Some(url.to_string())),
    }
}

/// An idempotency key is 1 to 255 bytes.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 255 {
        return Err(format!("is {} bytes: give one of 1 to 255", key.len()));
    }
    Ok(())
}

/// A durable invocation of the function `spec` describes, to run now with its priority.
pub fn new_invocation(
    spec: &FunctionSpec,
    trigger: TriggerKind,
    reason: Reason,
    payload: Bytes,
    vars: Vec<(String, String)>,
) -> NewInvocation {
    NewInvocation {
        id: new_id(),
        function: spec.name.clone(),
        trigger,
        reason,
        attempts: spec.limits.retry.attempts,
        priority: spec.priority,
        run_after: None,
        idempotency_key: None,
        payload,
        vars,
        timer: None,
        input_dir: None,
        parent_id: None,
        depth: 0,
        callback: spec.callback.clone(),
    }
}

/// A step of `function`'s chain: an invocation of the function `name` (its spec from
/// `registry`; one not loaded now is queued with the parent's attempts and waits until it
/// is), the child of `parent`.
fn step(
    registry: &Registry,
    function: &Function,
    name: &str,
    reason: Reason,
    payload: Bytes,
    (parent, depth): (&str, u32),
) -> NewInvocation {
    let vars = vec![("JOBHOST_PARENT_ID".to_string(), parent.to_string())];
    let mut new = match registry.functions.get(name) {
        Some(f) => new_invocation(&f.spec, TriggerKind::Chain, reason, payload, vars),
        None => {
            tracing::warn!(
                "`{name}`, next in the chain, is not loaded now: its invocation waits until it is"
            );
            let mut new = new_invocation(&function.spec, TriggerKind::Chain, reason, payload, vars);
            new.function = name.to_string();
            new.priority = 0;
            new.callback = None;
            new
        }
    };
    new.parent_id = Some(parent.to_string());
    new.depth = depth.saturating_add(1);
    new
}

/// What a finished background run of `function` starts (its `on_success` functions with
/// its stdout, or its `on_failure` handler with its record), for the store to queue with
/// its result.
fn chain(
    registry: &Registry,
    function: &Function,
    parent: &str,
    depth: u32,
    outcome: &Outcome,
    next: Next,
) -> Chain {
    let child = |name: &str, reason: Reason, payload: Bytes| {
        step(registry, function, name, reason, payload, (parent, depth))
    };
    match next {
        Next::Succeeded => Chain {
            on_success: (function.spec.on_success.iter())
                .map(|name| child(name, Reason::OnSuccess, outcome.stdout.clone()))
                .collect(),
            on_failure: None,
        },
        // The store fills in the record as the payload.
        Next::Dead => Chain {
            on_success: Vec::new(),
            on_failure: (function.spec.on_failure.as_deref())
                .map(|name| child(name, Reason::OnFailure, Bytes::new())),
        },
        Next::RetryAt(_) | Next::Cancelled => Chain::default(),
    }
}

/// An invocation id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Hands invocations to the sandbox and their results to the store.
pub struct Dispatcher {
    sandbox: Sandbox,
    store: Store,
    sync_records: SyncRecords,
    owner: HostId,
    /// `max_concurrency`: one permit per running invocation.
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    /// Wakes the queue worker: new durable work, or a background run ended. (A slot freed
    /// by a synchronous call is found by the worker's next poll, within a second: waking it
    /// for every request would cost a look at the store per request.)
    wake: Arc<Notify>,
    /// Whether the worker's last look found work that may wait for a slot here (or could
    /// not tell): then every run that ends wakes it. Else one that ends quietly does not
    /// (see `run_claimed`), so that work started as it was submitted costs no look at the
    /// store when it ends.
    slot_wanted: AtomicBool,
    /// The functions as they are now (swapped whole on reload): what chains and guests'
    /// `enqueue` name.
    functions: Arc<RwLock<Arc<Registry>>>,
    /// `[host] max_chain_depth`.
    max_chain_depth: u32,
    /// Guests' outbound HTTP: one pool of connections for all.
    outbound: Arc<outbound::Client>,
    /// `[host] max_kv_keys`.
    max_kv_keys: u64,
    /// Cancelled when the shutdown grace has passed: running invocations are interrupted.
    hard_stop: CancellationToken,
    tasks: TaskTracker,
    /// Background runs going on here, by id, for a user's cancel to interrupt.
    running: Mutex<HashMap<String, Interrupt>>,
    /// wasi:http instances made ahead of their requests: at most one a function, `SPARES`
    /// in all, dropped when the functions are swapped.
    spares: Mutex<Vec<Spare>>,
}

/// A wasi:http function's next invocation, instantiated after a request so that the next
/// request does not wait for instantiation (at one connection, a request waits for all
/// the host does on its way).
struct Spare {
    function: Arc<Function>,
    /// `None` while it is being made.
    ready: Option<(Invocation, Ready)>,
    /// When its making began, just before its id was made.
    made: Instant,
}

/// A spare being made: its place on the list, taken back if it is never filled (the
/// instantiation panicked), so that the function can have one again.
struct Making<'a> {
    spares: &'a Mutex<Vec<Spare>>,
    function: &'a Arc<Function>,
    filled: bool,
}

impl Making<'_> {
    /// Puts `ready` in the place; gives it back if the place is gone (the functions were
    /// swapped meanwhile) or `ready` is `None`.
    fn fill(mut self, ready: Option<(Invocation, Ready)>) -> Option<(Invocation, Ready)> {
        self.filled = true;
        let mut spares = lock(self.spares);
        match (self.place(&spares), ready) {
            (Some(at), Some(ready)) => {
                spares[at].ready = Some(ready);
                None
            }
            (Some(at), None) => {
                spares.swap_remove(at);
                None
            }
            (None, ready) => ready,
        }
    }

    fn place(&self, spares: &[Spare]) -> Option<usize> {
        spares
            .iter()
            .position(|s| Arc::ptr_eq(&s.function, self.function) && s.ready.is_none())
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        if self.filled {
            return;
        }
        let mut spares = lock(self.spares);
        if let Some(at) = self.place(&spares) {
            spares.swap_remove(at);
        }
    }
}

/// How to interrupt one background run here, and how to know it has ended.
#[derive(Clone)]
struct Interrupt {
    cancel: CancellationToken,
    /// Cancelled once its result is stored.
    ended: CancellationToken,
}

/// Takes a run off the dispatcher's list when its attempt is over, however it ends.
struct Registered<'a> {
    running: &'a Mutex<HashMap<String, Interrupt>>,
    id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(run) = lock(self.running).remove(&self.id) {
            run.ended.cancel();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while the list was held leaves it whole (each change is one call).
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a dispatcher is built from.
pub struct Parts {
    pub sandbox: Sandbox,
    pub store: Store,
    pub owner: HostId,
    pub max_concurrency: usize,
    /// How much of a synchronous invocation's payload and output its record keeps.
    pub record_excerpt: usize,
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
    /// `[host] max_chain_depth`.
    pub max_chain_depth: u32,
    /// Guests' outbound HTTP (shared with the callbacks' deliverer).
    pub outbound: Arc<outbound::Client>,
    /// `[host] max_kv_keys`.
    pub max_kv_keys: u64,
}

/// The right to run one invocation now, within both limits.
pub struct Permit {
    _host: OwnedSemaphorePermit,
    _function: Option<OwnedSemaphorePermit>,
}

/// No slot is free now: a waiting caller is told to come back (HTTP 503 with
/// `Retry-After`); durable work stays queued.
#[derive(Debug)]
pub struct Busy {
    pub function: String,
    pub max_concurrency: usize,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is at its concurrency limit, or the host at max_concurrency ({}); try again",
            self.function, self.max_concurrency
        )
    }
}

/// Which guest output lines also go to the host's log; the record keeps both either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// stderr: the caller gets stdout (sync HTTP).
    Stderr,
    /// Both: nobody waits for them (background work).
    Both,
    /// Neither: the terminal shows them (`jobhost invoke`).
    Neither,
}

/// A synchronous call: someone waits for its answer.
pub struct Call<'a> {
    pub function: &'a Arc<Function>,
    pub trigger: TriggerKind,
    pub vars: Vec<(String, String)>,
    pub payload: Bytes,
    pub echo: Echo,
}

/// The answer of a wasi:http component.
pub enum Served {
    /// The guest answered; the body may still stream. The outcome is logged and recorded
    /// when the guest ends.
    Responded(http::Response<Body>),
    /// The guest failed before it answered.
    Failed(Outcome),
}

/// One invocation about to run.
struct Invocation {
    id: String,
    function: Arc<Function>,
    trigger: TriggerKind,
    attempt: u32,
    vars: Vec<(String, String)>,
    payload: Bytes,
    /// A watched folder, mounted read-only at `/input`.
    input: Option<PathBuf>,
    /// A user's cancel (background work only).
    cancel: Option<CancellationToken>,
    /// What its `jobhost:job` calls do.
    job: JobLink,
    /// Where its outbound HTTP requests go.
    outbound: OutboundLink,
    /// The key-value stores it may open.
    kv: KvLink,
}

impl Invocation {
    /// A synchronous call's one attempt: it may `enqueue`, but keeps no checkpoint.
    fn sync(call: Call<'_>, dispatch: &Dispatcher) -> Invocation {
        let id = new_id();
        Invocation {
            job: JobLink(Some(dispatch.job(&id, 0, None))),
            outbound: dispatch.outbound.for_run(call.function, &id),
            kv: dispatch.kv_for(call.function),
            id,
            function: call.function.clone(),
            trigger: call.trigger,
            attempt: 1,
            vars: call.vars,
            payload: call.payload,
            input: None,
            cancel: None,
        }
    }

    /// The environment the guest sees: only what the host sets, never its own.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "JOBHOST_FUNCTION".to_string(),
                self.function.spec.name.clone(),
            ),
            ("JOBHOST_INVOCATION_ID".to_string(), self.id.clone()),
            ("JOBHOST_ATTEMPT".to_string(), self.attempt.to_string()),
            ("JOBHOST_TRIGGER".to_string(), self.trigger.to_string()),
        ];
        env.extend(self.vars.iter().cloned());
        env.extend(
            self.function
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }

    fn span(&self) -> tracing::Span {
        span(&self.function.spec.name, self.trigger.as_str(), &self.id)
    }

    fn run(&self) -> Run<'_> {
        let mut dirs = self.function.spec.dirs.clone();
        if let Some(input) = &self.input {
            dirs.push(DirMount {
                host: input.clone(),
                guest: INPUT.to_string(),
                write: false,
            });
        }
        Run {
            limits: &self.function.spec.limits,
            env: self.env(),
            stdin: self.payload.clone(),
            dirs,
            config: self.function.config.clone(),
            program: &self.function.spec.name,
            cancel: self.cancel.clone(),
            job: self.job.clone(),
            outbound: self.outbound.clone(),
            kv: self.kv.clone(),
        }
    }
}

/// The one span of an invocation: every log line of it names the function and the id.
fn span(function: &str, trigger: &str, id: &str) -> tracing::Span {
    tracing::info_span!("invocation", function = %function, trigger = %trigger, id = %id)
}

impl Dispatcher {
    pub fn new(parts: Parts) -> Dispatcher {
        Dispatcher {
            sandbox: parts.sandbox,
            sync_records: SyncRecords {
                history: parts.store.history.clone(),
                excerpt: parts.record_excerpt,
                host: parts.owner.clone(),
            },
            store: parts.store,
            owner: parts.owner,
            permits: Arc::new(Semaphore::new(parts.max_concurrency)),
            max_concurrency: parts.max_concurrency,
            wake: Arc::new(Notify::new()),
            slot_wanted: AtomicBool::new(true),
            functions: Arc::new(RwLock::new(Arc::new(Registry::default()))),
            max_chain_depth: parts.max_chain_depth,
            outbound: parts.outbound,
            max_kv_keys: parts.max_kv_keys,
            hard_stop: parts.hard_stop,
            tasks: parts.tasks,
            running: Mutex::new(HashMap::new()),
            spares: Mutex::new(Vec::new()),
        }
    }

    /// The key-value stores a run of `function` may open.
    fn kv_for(&self, function: &Arc<Function>) -> KvLink {
        keyvalue::for_run(&self.store.kv, function, self.max_kv_keys)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn owner(&self) -> &HostId {
        &self.owner
    }

    /// A permit to run `function` now, or `Busy` when a limit is reached.
    pub fn admit(&self, function: &Function) -> Result<Permit, Busy> {
        let busy = || Busy {
            function: function.spec.name.clone(),
            max_concurrency: self.max_concurrency,
        };
        let host = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let function = match &function.permits {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| busy())?),
            None => None,
        };
        Ok(Permit {
            _host: host,
            _function: function,
        })
    }

    /// How many more invocations could start now (`max_concurrency` less those running).
    pub fn free_slots(&self) -> usize {
        self.permits.available_permits()
    }

    /// The background invocations this host runs now (claimed, not yet stored).
    pub fn running_ids(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Invocations running now.
    pub fn running(&self) -> usize {
        self.max_concurrency - self.permits.available_permits()
    }

    /// The functions as they are now. A request or a run keeps the snapshot it started
    /// with, so it finishes on that version.
    pub fn functions(&self) -> Arc<Registry> {
        self.functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `next` the functions; returns the ones before. The instances made ahead are
    /// dropped (one being made is kept only if its function is unchanged: `make_spare`).
    pub fn swap(&self, next: Arc<Registry>) -> Arc<Registry> {
        let before = {
            let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *functions, next)
        };
        let spares = std::mem::take(&mut *lock(&self.spares));
        drop(spares);
        before
    }

    /// The `jobhost:job` of invocation `id`, `depth` steps down a chain; with the `lease`
    /// of a background attempt, it keeps checkpoints and progress.
    fn job(&self, id: &str, depth: u32, lease: Option<Lease>) -> Arc<GuestJob> {
        Arc::new(GuestJob {
            store: self.store.clone(),
            functions: self.functions.clone(),
            wake: self.wake.clone(),
            parent: id.to_string(),
            depth,
            lease,
            enqueued: AtomicU32::new(0),
            max_chain_depth: self.max_chain_depth,
            too_deep: Mutex::new(None),
        })
    }

    /// What the worker's last look found: whether work may wait for a slot here (see
    /// `slot_wanted`).
    pub fn slots_wanted(&self, wanted: bool) {
        self.slot_wanted.store(wanted, Ordering::Release);
    }

    /// Wakes the queue worker: durable work was written, or a background run ended.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when someone calls `wake`.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// A durable invocation of `function`, for a trigger to store with its own state.
    pub fn new_invocation(
        &self,
        function: &Function,
        trigger: TriggerKind,
        reason: Reason,
        payload: Bytes,
        vars: Vec<(String, String)>,
    ) -> NewInvocation {
        new_invocation(&function.spec, trigger, reason, payload, vars)
    }

    /// Writes durable work to the store and wakes the worker; once this returns its id,
    /// the invocation will run.
    pub async fn submit(&self, new: NewInvocation) -> anyhow::Result<Enqueued> {
        let enqueued = self.store.queue.enqueue(new).await?;
        if let Enqueued::New(_) = enqueued {
            self.wake();
        }
        Ok(enqueued)
    }

    /// As `submit`, but started here at once when this host has a free slot for it (it is
    /// due, and `function` has no `concurrency` counted across hosts, and is not
    /// `paused`): stored already claimed, it takes no look at the queue and wakes no
    /// other host to race for it. Else it is queued for whichever host claims it first.
    /// With the state a new invocation is stored in: `Running`, `Queued` or `Scheduled`.
    pub async fn submit_here(
        self: &Arc<Self>,
        function: &Arc<Function>,
        new: NewInvocation,
        paused: bool,
    ) -> anyhow::Result<(Enqueued, State)> {
        let waiting = match new.run_after {
            Some(at) if at > now_ms() => State::Scheduled,
            _ => State::Queued,
        };
        let here = !paused && function.spec.concurrency.is_none() && waiting == State::Queued;
        let Some(permit) = here.then(|| self.admit(function).ok()).flatten() else {
            return Ok((self.submit(new).await?, waiting));
        };
        let (enqueued, claimed) = self.store.queue.enqueue_claimed(new, &self.owner).await?;
        let Some(claimed) = claimed else {
            return Ok((enqueued, waiting));
        };
        let run = self.clone().run_claimed(function.clone(), claimed, permit);
        self.tasks.spawn(run);
        Ok((enqueued, State::Running))
    }

    /// Queues a dead invocation again with a fresh round of attempts.
    pub async fn retry(&self, id: &str) -> Result<Record, RetryError> {
        let record = self.store.queue.retry(id).await?;
        self.wake();
        Ok(record)
    }

    /// Cancels an invocation. A waiting one ends `cancelled` at once; a running one here is
    /// interrupted, and answered `Now` once it has ended so; one running on another host
    /// (or here, when the CLI cancels it) is marked, and its host interrupts it within its
    /// next look at the store (`interrupt_cancelled`).
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, CancelError> {
        let cancelled = self.store.queue.cancel(id).await?;
        if !matches!(cancelled, Cancelled::Requested(_)) {
            return Ok(cancelled);
        }
        let Some(run) = lock(&self.running).get(id).cloned() else {
            return Ok(cancelled);
        };
        run.cancel.cancel();
        // The guest stops within an epoch tick; its result is stored right after.
        let ended = tokio::time::timeout(CANCEL_WAIT, run.ended.cancelled()).await;
        if ended.is_err() {
            return Ok(cancelled);
        }
        match self.store.history.get(id).await? {
            Some(record) if record.state == State::Cancelled => Ok(Cancelled::Now(record)),
            // It ended otherwise (succeeded) before it could be interrupted.
            Some(record) => Err(CancelError::Ended {
                id: id.to_string(),
                state: record.state,
            }),
            None => Err(CancelError::NotFound(id.to_string())),
        }
    }

    /// Queues the `on_failure` handlers of invocations that ended `dead` without a result
    /// (a crash or a silent host took their last attempt), each keyed by the dead
    /// invocation and its attempt, so it is queued once however often this is asked.
    pub async fn fail_over(&self, dead: &[String]) {
        let registry = self.functions();
        for id in dead {
            let record = match self.store.history.get(id).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(id = %id, "cannot read the dead invocation, so its on_failure handler is not queued: {e:#}");
                    continue;
                }
            };
            let Some(function) = registry.functions.get(&record.function) else {
                tracing::warn!(id = %id, function = %record.function, "the dead invocation's function is not loaded: its on_failure handler, if any, is not queued");
                continue;
            };
            let Some(handler) = function.spec.on_failure.as_deref() else {
                continue;
            };
            let mut new = step(
                &registry,
                function,
                handler,
                Reason::OnFailure,
                Bytes::new(),
                (id, 0),
            );
            new.idempotency_key = Some(format!("{id}:on_failure:{}", record.attempt));
            let chain = Chain {
                on_success: Vec::new(),
                on_failure: Some(new),
            };
            let queued = async {
                for new in chain.starts(State::Dead, Some(&record))? {
                    self.submit(new).await?;
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = queued {
                tracing::error!(id = %id, "cannot queue the on_failure handler `{handler}`: {e:#}");
            }
        }
    }

    /// Interrupts the runs here that a user cancelled through another host or the CLI.
    pub async fn interrupt_cancelled(&self) -> anyhow::Result<()> {
        let here = self.running_ids();
        if here.is_empty() {
            return Ok(());
        }
        for id in self.store.queue.cancels(&here).await? {
            if let Some(run) = lock(&self.running).get(&id) {
                run.cancel.cancel();
            }
        }
        Ok(())
    }

    /// Runs a command for a caller that waits for it, and records it (never retried: the
    /// caller decides). Its instance is torn down on a task of its own, which runs once the
    /// caller's task waits (after it has written the answer, at one connection the client
    /// does not wait for the teardown); the permit goes with it, so a finished instance
    /// never holds a pool slot that an admitted invocation needs.
    pub async fn run_sync(&self, call: Call<'_>, permit: Permit) -> (String, Outcome) {
        let echo = call.echo;
        let invocation = Invocation::sync(call, self);
        let started_at = now_ms();
        let (outcome, finished) = self
            .sandbox
            .run_command_kept(&invocation.function.prepared, invocation.run())
            .await;
        self.tasks.spawn(async move {
            drop(finished);
            drop(permit);
        });
        log_sync_outcome(&invocation, &outcome, echo);
        self.sync_records.record(&invocation, started_at, &outcome);
        (invocation.id, outcome)
    }

    /// Serves one HTTP request with a wasi:http component, as `wasmtime serve` would. The
    /// permit is held until the guest ends, which may be after its answer has begun. Once
    /// it has ended, the function's next instance is made (`make_spare`).
    pub async fn serve_http(
        self: &Arc<Self>,
        call: Call<'_>,
        request: http::Request<IncomingBody>,
        permit: Permit,
    ) -> (String, Served) {
        let echo = call.echo;
        let trigger = call.trigger;
        let started_at = now_ms();
        let previous = call
            .function
            .last_request
            .swap(started_at, Ordering::Relaxed);
        let often = started_at.saturating_sub(previous) < SPARE_FRESH.as_millis() as i64;
        let (invocation, ready) = match self.take_spare(&call) {
            Some((invocation, ready)) => (invocation, Some(ready)),
            None => (Invocation::sync(call, self), None),
        };
        let served = self
            .sandbox
            .serve_http(
                &invocation.function.prepared,
                request,
                invocation.run(),
                ready,
            )
            .await;
        let id = invocation.id.clone();
        match served {
            HttpServed::Responded(response, done) => {
                let records = self.sync_records.clone();
                let dispatch = self.clone();
                self.tasks.spawn(async move {
                    if let Ok(outcome) = done.await {
                        log_sync_outcome(&invocation, &outcome, echo);
                        records.record(&invocation, started_at, &outcome);
                    }
                    drop(permit);
                    // Only when nothing else runs here: then it takes time the host would
                    // idle; beside other invocations it would only compete with them.
                    if often && dispatch.permits.available_permits() == dispatch.max_concurrency {
                        // Boxed: instantiation's future is large, and this task is
                        // spawned for every request, most of which make no spare.
                        Box::pin(dispatch.make_spare(invocation.function, trigger)).await;
                    }
                });
                (id, Served::Responded(response))
            }
            HttpServed::Failed(outcome) => {
                drop(permit);
                log_sync_outcome(&invocation, &outcome, echo);
                self.sync_records.record(&invocation, started_at, &outcome);
                (id, Served::Failed(outcome))
            }
        }
    }

    /// The instance made ahead for this call, if there is one made within `SPARE_FRESH`:
    /// only for a call that, like the one it was made after, has no variables or payload
    /// of its own (a wasi:http guest reads its request instead).
    fn take_spare(&self, call: &Call<'_>) -> Option<(Invocation, Ready)> {
        if !call.vars.is_empty() || !call.payload.is_empty() {
            return None;
        }
        let spare = {
            let mut spares = lock(&self.spares);
            let at = spares.iter().position(|spare| {
                Arc::ptr_eq(&spare.function, call.function)
                    && spare
                        .ready
                        .as_ref()
                        .is_some_and(|(invocation, _)| invocation.trigger == call.trigger)
            })?;
            spares.swap_remove(at)
        };
        // A stale one is dropped here, outside the lock.
        (spare.made.elapsed() <= SPARE_FRESH).then_some(spare.ready)?
    }

    /// Instantiates `function`'s next invocation ahead of its request (the caller calls
    /// it for a function called again within `SPARE_FRESH`, when nothing else runs here),
    /// unless it has one (or one being made), `SPARES` are made, it is no longer loaded,
    /// or the host is shutting down. A spare holds an instance of the pool (which has room
    /// for `SPARES` beside the running ones) and its memory until a request takes it or
    /// the functions are swapped. None is made for a function with `dirs`: its folders are
    /// opened when its request comes, so a folder replaced meanwhile is the one it sees.
    async fn make_spare(self: Arc<Self>, function: Arc<Function>, trigger: TriggerKind) {
        if !function.spec.dirs.is_empty() || self.tasks.is_closed() {
            return;
        }
        {
            let mut spares = lock(&self.spares);
            let current = self
                .functions()
                .functions
                .get(&function.spec.name)
                .is_some_and(|loaded| Arc::ptr_eq(loaded, &function));
            if !current
                || spares.len() >= SPARES
                || spares.iter().any(|s| Arc::ptr_eq(&s.function, &function))
            {
                return;
            }
            spares.push(Spare {
                function: function.clone(),
                ready: None,
                made: Instant::now(),
            });
        }
        let making = Making {
            spares: &self.spares,
            function: &function,
            filled: false,
        };
        let call = Call {
            function: &function,
            trigger,
            vars: Vec::new(),
            payload: Bytes::new(),
            echo: Echo::Neither,
        };
        let invocation = Invocation::sync(call, &self);
        let ready = self
            .sandbox
            .ready_http(&function.prepared, invocation.run())
            .await;
        // What the place did not take is dropped here, outside the lock.
        drop(making.fill(ready.map(|ready| (invocation, ready))));
    }

    /// Runs a claimed durable invocation to the end of its attempt: the result stored,
    /// then a retry at a backed-off time or `dead`. Interrupted by a shutdown, it goes back
    /// to the queue without using its attempt. Whatever the guest does (a panic of the
    /// host's code for it included), the row does not stay `running`; only a store that
    /// refuses every write until the host stops leaves it for the next start to recover.
    pub async fn run_claimed(
        self: Arc<Self>,
        function: Arc<Function>,
        claimed: Claimed,
        permit: Permit,
    ) {
        let lease = claimed.lease;
        let depth = claimed.depth;
        let trigger_text = match &claimed.trigger {
            Ok(kind) => kind.as_str().to_string(),
            Err(unknown) => unknown.clone(),
        };
        let span = span(&function.spec.name, &trigger_text, &lease.id);
        // On the list from its claim until its result is stored (then a cancel waiting on
        // it is told): what is not on it, the host does not run (`release_lost`).
        let cancel = CancellationToken::new();
        let interrupt = Interrupt {
            cancel: cancel.clone(),
            ended: CancellationToken::new(),
        };
        lock(&self.running).insert(lease.id.clone(), interrupt);
        let registered = Registered {
            running: &self.running,
            id: lease.id.clone(),
        };
        let queued = async {
            let (outcome, next) = match claimed.trigger {
                Err(unknown) => {
                    let outcome = Outcome::host_failure(format!(
                        "unknown trigger kind `{unknown}` in the store (written by another version of jobhost?): this host cannot run it"
                    ));
                    (outcome, Next::Dead)
                }
                Ok(trigger) => {
                    let job = self.job(&lease.id, depth, Some(lease.clone()));
                    let invocation = Invocation {
                        id: lease.id.clone(),
                        function: function.clone(),
                        trigger,
                        attempt: claimed.attempt,
                        vars: claimed.vars,
                        payload: claimed.payload,
                        input: claimed.input_dir,
                        cancel: Some(cancel),
                        job: JobLink(Some(job.clone())),
                        outbound: self.outbound.for_run(&function, &lease.id),
                        kv: self.kv_for(&function),
                    };
                    let Some(mut outcome) = self.run_in_task(invocation).await else {
                        // Interrupted by shutdown: back to the queue, the attempt not used.
                        match self.store.queue.release(&lease).await {
                            Ok(true) => tracing::warn!("interrupted by shutdown; queued again"),
                            Ok(false) => tracing::warn!(
                                "interrupted by shutdown; it had been claimed again meanwhile"
                            ),
                            Err(e) => tracing::error!(
                                "cannot queue the interrupted invocation again ({e:#}); it runs again on the next start"
                            ),
                        }
                        return true;
                    };
                    // A chain that would go on past max_chain_depth ends here, without
                    // retries: another attempt would only try the same.
                    if let Some(why) = lock(&job.too_deep).take()
                        && !matches!(outcome.result, Err(Failure::Cancelled))
                    {
                        outcome.result = Err(Failure::ChainTooDeep(why));
                    }
                    let next = match &outcome.result {
                        Ok(()) => Next::Succeeded,
                        Err(Failure::Cancelled) => Next::Cancelled,
                        Err(Failure::ChainTooDeep(_)) => Next::Dead,
                        Err(_) if claimed.attempt < claimed.max_attempt => {
                            // Counted within the round: a dead invocation queued again backs
                            // off from `initial` as a new one does.
                            let retry = &function.spec.limits.retry;
                            let left = claimed.max_attempt - claimed.attempt;
                            let in_round = retry.attempts.saturating_sub(left).max(1);
                            let delay = backoff(retry, in_round, &lease.id);
                            tracing::info!(attempt = claimed.attempt, "retrying in {delay:?}");
                            Next::RetryAt(now_ms() + delay.as_millis() as i64)
                        }
                        Err(_) => Next::Dead,
                    };
                    (outcome, next)
                }
            };
            let chain = chain(&self.functions(), &function, &lease.id, depth, &outcome, next);
            let queues = matches!(next, Next::RetryAt(_))
                || !chain.on_success.is_empty()
                || chain.on_failure.is_some();
            self.finish(&lease, &outcome, next, chain).await;
            queues
        }
        .instrument(span)
        .await;
        drop(registered);
        drop(permit);
        // The worker looks again when this run's end queued work (a retry, a chain's next
        // step), or may have freed a slot that queued work waits for: any, when its last
        // look left work waiting; this function's, when it has a `concurrency`; this
        // timer's next run, as runs of one timer never overlap.
        let limited = function.spec.concurrency.is_some() || function.spec.has_timer();
        if queued || limited || self.slot_wanted.load(Ordering::Acquire) {
            self.wake();
        }
    }

    /// Runs the guest on a task of its own, so that even a panic in the host's code for
    /// it becomes an outcome; `None` when the shutdown grace ran out first.
    async fn run_in_task(self: &Arc<Self>, invocation: Invocation) -> Option<Outcome> {
        let dispatcher = self.clone();
        // The task is the invocation's own; it logs in the span it is awaited in.
        let span = tracing::Span::current();
        let task = AbortOnDropHandle::new(tokio::spawn(
            async move {
                let outcome = dispatcher
                    .sandbox
                    .run_command(&invocation.function.prepared, invocation.run())
                    .await;
                log_outcome(&invocation, &outcome, Echo::Both);
                outcome
            }
            .instrument(span),
        ));
        tokio::select! {
            joined = task => Some(joined.unwrap_or_else(|e| {
                Outcome::host_failure(format!("the invocation's task failed: {e}"))
            })),
            _ = self.hard_stop.cancelled() => None,
        }
    }

    /// Stores the result. A store that fails is tried again, backing off up to a few
    /// seconds, until it takes the result or the host stops (then the next start runs the
    /// invocation again): a row left `running` would wait for that.
    async fn finish(&self, lease: &Lease, outcome: &Outcome, next: Next, chain: Chain) {
        let mut wait = Duration::from_millis(100);
        let mut said = false;
        loop {
            let result = (self.store.queue)
                .finish(lease, output(outcome), next, chain.clone())
                .await;
            match result {
                Ok(true) => {
                    if said {
                        tracing::info!("the result is stored");
                    }
                    return;
                }
                // After a failed try this is ambiguous: that try may have been stored with
                // only its answer lost (a broken connection), and the store cannot tell
                // it from a rescue that ended the attempt.
                Ok(false) if said => {
                    tracing::warn!(
                        "the attempt no longer holds the invocation: the try that failed may have stored this result before its answer was lost, or the invocation was claimed again meanwhile and this result is dropped"
                    );
                    return;
                }
                Ok(false) => {
                    tracing::warn!(
                        "the invocation was claimed again meanwhile; this attempt's result is dropped"
                    );
                    return;
                }
                Err(e) => {
                    if !said {
                        tracing::error!("cannot store the result ({e:#}); trying again");
                        said = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.hard_stop.cancelled() => {
                            tracing::error!("the result was never stored; the invocation runs again on the next start");
                            return;
                        }
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The store's view of an outcome.
fn output(outcome: &Outcome) -> Output {
    Output {
        error: outcome.result.as_ref().err().map(ToString::to_string),
        exit_code: outcome.exit_code(),
        stdout: outcome.stdout.clone(),
        stderr: outcome.stderr.clone(),
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        duration: outcome.duration,
    }
}

/// The largest payload a guest's `enqueue` takes.
pub const MAX_ENQUEUE_PAYLOAD: usize = 10 << 20;
/// The largest checkpoint kept.
pub const MAX_CHECKPOINT: usize = 1 << 20;
/// The longest progress message kept.
const MAX_PROGRESS_MESSAGE: usize = 1 << 10;

/// What one run's `jobhost:job` calls do: an `enqueue` makes a child of the run (queued
/// under an idempotency key, so an attempt that runs again does not queue it twice);
/// checkpoints and progress are kept for a background attempt, under its lease.
struct GuestJob {
    store: Store,
    functions: Arc<RwLock<Arc<Registry>>>,
    wake: Arc<Notify>,
    /// The running invocation's id: the children's parent.
    parent: String,
    depth: u32,
    lease: Option<Lease>,
    /// Enqueues so far in this run: the ordinal in each child's default key.
    enqueued: AtomicU32,
    max_chain_depth: u32,
    /// Why an enqueue was refused for the chain's depth: the run then ends `dead` with it.
    too_deep: Mutex<Option<String>>,
}

impl GuestJob {
    fn lease(&self, what: &str) -> Result<&Lease, String> {
        self.lease.as_ref().ok_or_else(|| {
            format!("{what} kept for background invocations only; this one answers its caller")
        })
    }
}

#[async_trait::async_trait]
impl Job for GuestJob {
    async fn enqueue(
        &self,
        target: &str,
        payload: Vec<u8>,
        options: EnqueueOptions,
    ) -> Result<String, String> {
        let ordinal = self.enqueued.fetch_add(1, Ordering::Relaxed);
        let registry = self
            .functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (function, trigger, reason, mut vars) = match target.strip_prefix("queue:") {
            Some(queue) => {
                let function = registry.queues.get(queue).ok_or_else(|| {
                    format!("no loaded function listens on queue `{queue}`; nothing was queued")
                })?;
                let vars = vec![("JOBHOST_QUEUE".to_string(), queue.to_string())];
                (function, TriggerKind::Queue, Reason::Message, vars)
            }
            None => {
                let function = registry.functions.get(target).ok_or_else(|| {
                    format!("no function named `{target}` is loaded; nothing was queued")
                })?;
                (function, TriggerKind::Chain, Reason::Enqueue, Vec::new())
            }
        };
        if function.prepared.shape == Shape::Http {
            return Err(format!(
                "`{}` is a wasi:http component: it answers HTTP requests, and cannot run queued work",
                function.spec.name
            ));
        }
        if payload.len() > MAX_ENQUEUE_PAYLOAD {
            return Err(format!(
                "the payload is {} bytes, over {MAX_ENQUEUE_PAYLOAD}; nothing was queued",
                payload.len()
            ));
        }
        let depth = self.depth.saturating_add(1);
        if depth > self.max_chain_depth {
            let why = format!(
                "this would be step {depth} of a chain, past [host] max_chain_depth = {}",
                self.max_chain_depth
            );
            tracing::warn!(target = %target, "chain too deep: {why}; the enqueue is refused");
            *lock(&self.too_deep) = Some(why.clone());
            return Err(format!("chain too deep: {why}"));
        }
        let chosen = options.idempotency_key.is_some();
        let key = match options.idempotency_key {
            Some(key) => {
                check_idempotency_key(&key).map_err(|why| format!("the idempotency key {why}"))?;
                key
            }
            None => format!("{}:{ordinal}", self.parent),
        };
        vars.push(("JOBHOST_PARENT_ID".to_string(), self.parent.clone()));
        let mut new = new_invocation(&function.spec, trigger, reason, payload.into(), vars);
        new.priority = options.priority.unwrap_or(function.spec.priority);
        new.run_after = options.delay_ms.filter(|d| *d > 0).map(|d| {
            now_ms()
                .saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
                .min(LATEST)
        });
        new.idempotency_key = Some(key.clone());
        new.parent_id = Some(self.parent.clone());
        new.depth = depth;
        match self.store.queue.enqueue(new).await {
            Ok(Enqueued::New(id)) => {
                self.wake.notify_one();
                Ok(id)
            }
            Ok(Enqueued::Existing {
                id,
                same_payload: true,
            }) => Ok(id),
            // An earlier attempt queued its enqueue of this number with another payload (a
            // run that resumed from a checkpoint, say): naming that one would lose this.
            Ok(Enqueued::Existing { id, .. }) if !chosen => Err(format!(
                "an earlier attempt of this invocation queued its enqueue number {} as {id} with another payload; give an idempotency key of your own to queue this one; nothing was queued",
                ordinal + 1
            )),
            Ok(Enqueued::Existing { id, .. }) => Err(format!(
                "the idempotency key {key:?} was used for invocation {id} with another payload; nothing was queued"
            )),
            Err(e) => Err(format!("cannot queue it: {e:#}")),
        }
    }

    async fn checkpoint_save(&self, data: Vec<u8>) -> Result<(), String> {
        let lease = self.lease("checkpoints are")?;
        if data.len() > MAX_CHECKPOINT {
            return Err(format!(
                "the checkpoint is {} bytes, over {MAX_CHECKPOINT} (1 MiB); the previous one is kept",
                data.len()
            ));
        }
        match self.store.queue.save_checkpoint(lease, data.into()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(
                "this attempt is no longer the invocation's (it was taken over); nothing was saved"
                    .to_string(),
            ),
            Err(e) => Err(format!("cannot save the checkpoint: {e:#}")),
        }
    }

    async fn checkpoint_load(&self) -> Option<Vec<u8>> {
        self.lease.as_ref()?;
        match self.store.queue.checkpoint(&self.parent).await {
            Ok(data) => data.map(|d| d.to_vec()),
            Err(e) => {
                tracing::warn!("cannot read the checkpoint: {e:#}");
                None
            }
        }
    }

    async fn set_progress(&self, percent: u8, mut message: String) -> Result<(), String> {
        let lease = self.lease("progress is")?;
        if percent > 100 {
            return Err(format!("progress {percent} is over 100 (percent)"));
        }
        if message.len() > MAX_PROGRESS_MESSAGE {
            let mut end = MAX_PROGRESS_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        match self
            .store
            .queue
            .set_progress(lease, percent, &message)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot record the progress: {e:#}")),
        }
    }
}

/// Where synchronous invocations are recorded: excerpts of their payload and output (the
/// caller got the whole answer; the store keeps what is needed to see what happened).
#[derive(Clone)]
struct SyncRecords {
    history: Arc<dyn History>,
    excerpt: usize,
    host: HostId,
}

impl SyncRecords {
    fn record(&self, invocation: &Invocation, started_at: i64, outcome: &Outcome) {
        // Copied, not sliced: a slice would keep the whole body or output alive until the
        // record is written.
        let cut = |bytes: &Bytes| Bytes::copy_from_slice(&bytes[..bytes.len().min(self.excerpt)]);
        let mut output = output(outcome);
        output.stdout_truncated |= output.stdout.len() > self.excerpt;
        output.stderr_truncated |= output.stderr.len() > self.excerpt;
        output.stdout = cut(&output.stdout);
        output.stderr = cut(&output.stderr);
        self.history.record(SyncRecord {
            id: invocation.id.clone(),
            function: invocation.function.spec.name.clone(),
            trigger: invocation.trigger,
            reason: match invocation.trigger {
                TriggerKind::Manual => Reason::Manual,
                _ => Reason::Http,
            },
            started_at,
            host: self.host.clone(),
            payload: cut(&invocation.payload),
            payload_truncated: invocation.payload.len() > self.excerpt,
            output,
        });
    }
}

/// `log_outcome` for a synchronous invocation, in its span. The span is made only when
/// there is a line to write: a request that succeeds quietly (most of them) is counted and
/// nothing more, and making its span (fields formatted into the subscriber's registry,
/// entered and left at every poll) cost some 4% of such a request's CPU (BENCHMARKS.md).
/// So its run is not in the span either; what logs during a run names the function.
fn log_sync_outcome(invocation: &Invocation, outcome: &Outcome, echo: Echo) {
    let quiet = outcome.result.is_ok()
        && !outcome.stdout_truncated
        && !outcome.stderr_truncated
        && (echo == Echo::Neither || outcome.stderr.is_empty())
        && echo != Echo::Both
        && !tracing::enabled!(tracing::Level::DEBUG);
    if quiet {
        log_outcome(invocation, outcome, echo);
    } else {
        invocation
            .span()
            .in_scope(|| log_outcome(invocation, outcome, echo));
    }
}

/// Counts an outcome and logs it in the current span: the guest's stderr lines at WARN
/// (they are its log, not the host's errors), its stdout at INFO when nobody else gets it,
/// and one line with the result (a synchronous success at DEBUG only).
fn log_outcome(invocation: &Invocation, outcome: &Outcome, echo: Echo) {
    metrics::get().invocation(
        &invocation.function.spec.name,
        invocation.trigger.as_str(),
        outcome,
    );
    if echo != Echo::Neither {
        for line in log_lines(&outcome.stderr, "stderr") {
            tracing::warn!(target: "guest", "{line}");
        }
    }
    if echo == Echo::Both {
        for line in log_lines(&outcome.stdout, "stdout") {
            tracing::info!(target: "guest", "{line}");
        }
    }
    // Whole microseconds, so the log shows 0.682, not 0.6818529999999999.
    let duration_ms = outcome.duration.as_micros() as f64 / 1000.0;
    match &outcome.result {
        // A request that succeeded is its caller's news, and counted in the metrics: a
        // line for each would cost a busy host more than the request itself.
        Ok(()) if echo != Echo::Both => tracing::debug!(duration_ms, "succeeded"),
        Ok(()) => tracing::info!(duration_ms, "succeeded"),
        Err(failure) => tracing::warn!(duration_ms, error = %failure, "failed"),
    }
    if outcome.stdout_truncated || outcome.stderr_truncated {
        tracing::warn!(
            stdout_truncated = outcome.stdout_truncated,
            stderr_truncated = outcome.stderr_truncated,
            "output past `max_output` was dropped"
        );
    }
}

/// The longest guest line the log takes whole.
const LOG_LINE: usize = 4 << 10;
/// How much of one invocation's output goes to the log, in bytes and in lines.
const LOG_OUTPUT: usize = 64 << 10;
const LOG_LINES: usize = 1000;

/// A guest's output as log lines: each at most `LOG_LINE` bytes, `LOG_OUTPUT` bytes and
/// `LOG_LINES` lines in all, and a last line saying what was left out, so that a guest
/// cannot flood the host's log.
fn log_lines(output: &[u8], stream: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(output);
    let mut lines = Vec::new();
    let mut logged = 0;
    for line in text.lines() {
        if logged >= LOG_OUTPUT || lines.len() >= LOG_LINES {
            lines.push(format!(
                "... {} more bytes of {stream} left out of the log (see the invocation's record)",
                text.len().saturating_sub(logged)
            ));
            break;
        }
        let mut end = line.len().min(LOG_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        logged += line.len() + 1;
        if end < line.len() {
            lines.push(format!(
                "{} ... ({} bytes more)",
                &line[..end],
                line.len() - end
            ));
        } else {
            lines.push(line.to_string());
        }
    }
    lines
}

/// The wait before the attempt after `attempt`: `initial * 2^(attempt-1)`, at most `max`,
/// less up to a quarter of it at random so that retries of many invocations spread out
/// while each wait stays longer than the one before.
pub fn backoff(retry: &Retry, attempt: u32, id: &str) -> Duration {
    let exp = retry
        .initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let delay = exp.min(retry.max);
    // Jitter needs no crate: the std hasher is randomly keyed per process.
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one((id, attempt));
    let fraction = (random % 1000) as f64 / 1000.0;
    delay.mul_f64(1.0 - 0.25 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_cannot_flood_the_log() {
        let long_line = vec![b'x'; 1 << 20];
        let lines = log_lines(&long_line, "stderr");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].len() < LOG_LINE + 64, "{}", lines[0].len());
        assert!(
            lines[0].ends_with("... (1044480 bytes more)"),
            "{}",
            &lines[0][4000..]
        );
        let many: Vec<u8> = b"a short line\n".repeat(100_000);
        let lines = log_lines(&many, "stdout");
        let total: usize = lines.iter().map(String::len).sum();
        assert!(total < LOG_OUTPUT + 256, "{total}");
        assert!(lines.len() <= LOG_LINES + 1, "{}", lines.len());
        assert!(
            lines
                .last()
                .unwrap()
                .contains("more bytes of stdout left out of the log")
        );
        let blank = vec![b'\n'; 1 << 20];
        let lines = log_lines(&blank, "stderr");
        assert_eq!(lines.len(), LOG_LINES + 1);
        assert_eq!(log_lines(b"one\ntwo\n", "stdout"), ["one", "two"]);
    }

    #[test]
    fn a_cancelled_run_is_stored_with_the_cancel_text() {
        assert_eq!(Failure::Cancelled.to_string(), crate::store::CANCELLED);
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops_at_max() {
        let retry = Retry {
            attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let mut previous = Duration::ZERO;
        for attempt in 1..=4 {
            let d = backoff(&retry, attempt, "x");
            let full = Duration::from_secs(1 << (attempt - 1));
            assert!(
                d <= full && d >= full.mul_f64(0.75),
                "attempt {attempt}: {d:?}"
            );
            assert!(d > previous);
            previous = d;
        }
        assert!(backoff(&retry, 9, "x") <= Duration::from_secs(10));
    }
}
