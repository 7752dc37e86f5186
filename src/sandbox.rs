//! The only module that names wasmtime: the engine and its epoch ticker, compiling (with a
//! cache under `data/`), recognising a guest's shape, linking it once into an
//! `InstancePre`, and running one invocation in a fresh store that always carries a memory
//! limiter and a wall-clock deadline.

mod capture;
mod imports;
mod job;
mod keyvalue;
mod outbound;
mod response;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::{DirMount, Limits};
use capture::Capture;
pub use imports::GuestConfig;
pub use job::{EnqueueOptions, Job, JobLink};
pub use keyvalue::{KeyValue, KvFailure, KvLink};
pub use outbound::{
    BoxError, Outbound, OutboundError, OutboundLink, OutgoingBody, ResponseBody, Timeouts,
};
use response::Response;

/// How often the epoch advances; a guest past its deadline stops within one tick.
const TICK: Duration = Duration::from_millis(10);
/// Bytes of each pooled linear memory kept resident between instances.
const KEEP_RESIDENT: usize = 4 << 20;
/// wasi:http instances made ahead of their requests (`Ready`) that a host keeps at most;
/// the instance pool has room for them beside `max_concurrency` running invocations.
pub const SPARES: usize = 8;

/// Engine-wide settings, fixed for the life of the host.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Invocations running at once; sizes the instance pool.
    pub max_concurrency: usize,
    /// Count fuel so functions may set `fuel`. Costs some speed for every guest.
    pub fuel: bool,
    /// Where compiled modules are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The largest module file read for loading.
    pub max_module_size: u64,
}

pub struct Sandbox {
    engine: Engine,
    component_linker: wasmtime::component::Linker<ComponentState>,
    module_linker: Linker<ModuleState>,
    cache_dir: Option<PathBuf>,
    engine_hash: String,
    fuel: bool,
    max_module_size: u64,
    ticker_stop: Arc<AtomicBool>,
}

/// The three guest shapes, recognised from the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A component exporting `wasi:http/incoming-handler`.
    Http,
    /// A component exporting `wasi:cli/run`.
    Command,
    /// A core module exporting `_start`, importing `wasi_snapshot_preview1`.
    Module,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Http => "wasi:http component",
            Shape::Command => "command component",
            Shape::Module => "command module (wasip1)",
        })
    }
}

/// A module compiled and linked once; every invocation instantiates from it.
#[derive(Clone)]
pub struct Prepared {
    pub shape: Shape,
    pre: Pre,
}

#[derive(Clone)]
enum Pre {
    Http(ProxyPre<ComponentState>),
    Command(CommandPre<ComponentState>),
    Module(InstancePre<ModuleState>),
}

/// A wasi:http component instantiated ahead of the request it will serve, in a store of
/// its own that no request has touched: `serve_http` given one skips instantiation, so the
/// caller does not wait for it. Made with the `Run` of the invocation it becomes (its
/// environment names that invocation's id); its deadline starts when it serves.
pub struct Ready {
    store: Store<ComponentState>,
    proxy: Proxy,
    stdout: Capture,
    stderr: Capture,
}

/// A finished command's instance: torn down (its memory reset, its resources dropped) when
/// this is dropped.
pub struct Finished {
    _store: Option<Box<dyn Send>>,
}

impl Finished {
    fn of<T: Send + 'static>(store: Store<T>) -> Finished {
        Finished {
            _store: Some(Box::new(store)),
        }
    }

    fn none() -> Finished {
        Finished { _store: None }
    }
}

/// Everything one invocation runs with.
pub struct Run<'a> {
    pub limits: &'a Limits,
    pub env: Vec<(String, String)>,
    pub stdin: Bytes,
    pub dirs: Vec<DirMount>,
    pub config: GuestConfig,
    /// argv[0], the function's name.
    pub program: &'a str,
    /// Cancelled when a user cancels the invocation: the guest is stopped at once (at its
    /// next epoch tick, or in a host call it waits in) and the run ends `cancelled`.
    pub cancel: Option<CancellationToken>,
    /// What the guest's `jobhost:job` calls do.
    pub job: JobLink,
    /// Where its outbound HTTP requests go, if anywhere.
    pub outbound: OutboundLink,
    /// The key-value stores it may open.
    pub kv: KvLink,
}

/// Why an invocation failed. The `Display` text is the reason stored and shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    MemoryLimit,
    CpuLimit,
    Trap(String),
    Exit(i32),
    /// The host could not set the sandbox up (a missing `dirs` folder, a full pool).
    Host(String),
    /// A user cancelled it while it ran.
    Cancelled,
    /// It tried to queue work past `[host] max_chain_depth` (decided by the dispatcher,
    /// which ends it without retries).
    ChainTooDeep(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::MemoryLimit => f.write_str("memory limit"),
            Failure::CpuLimit => f.write_str("cpu limit"),
            Failure::Trap(why) => write!(f, "trap: {why}"),
            Failure::Exit(code) => write!(f, "exit {code}"),
            Failure::Host(why) => write!(f, "host error: {why}"),
            Failure::Cancelled => f.write_str("cancelled"),
            Failure::ChainTooDeep(why) => write!(f, "chain too deep: {why}"),
        }
    }
}

/// What one invocation did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: Result<(), Failure>,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration: Duration,
    /// How long instantiating the guest took, when it got that far.
    pub instantiation: Option<Duration>,
}

impl Outcome {
    /// A failure of the host itself, before or instead of running the guest.
    pub fn host_failure(why: String) -> Outcome {
        Outcome {
            result: Err(Failure::Host(why)),
            stdout: Bytes::new(),
            stderr: Bytes::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: Duration::ZERO,
            instantiation: None,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match &self.result {
            Ok(()) => Some(0),
            Err(Failure::Exit(code)) => Some(*code),
            Err(_) => None,
        }
    }
}

/// The body of an HTTP answer: a guest's streamed body, or one the host wrote.
pub type Body = HyperOutgoingBody;

/// A request body on its way into a wasi:http guest, read as it arrives.
pub type IncomingBody = http_body_util::combinators::UnsyncBoxBody<Bytes, RequestBodyError>;

/// Why a request body could not be read to its end. A wasi:http guest sees its read fail
/// with the matching `error-code`.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body is larger than {0} bytes (max_body)")]
    TooLarge(u64),
    #[error("the request body stopped arriving for client_timeout, or came slower than 16 KiB/s")]
    TimedOut,
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error("cannot read the request body: {0}")]
    Client(hyper::Error),
}

impl From<RequestBodyError> for wasmtime_wasi_http::Error {
    fn from(e: RequestBodyError) -> Self {
        match e {
            RequestBodyError::TooLarge(limit) => Self::HttpRequestBodySize(Some(limit)),
            RequestBodyError::TimedOut => Self::ConnectionReadTimeout,
            RequestBodyError::ShuttingDown => Self::ConnectionTerminated,
            RequestBodyError::Client(e) => Self::Hyper(e),
        }
    }
}

/// The answer of a wasi:http component.
pub enum HttpServed {
    /// The guest set a response; its body may still be streaming. The handle resolves to
    /// the outcome once the guest is done.
    Responded(
        hyper::Response<HyperOutgoingBody>,
        tokio::task::JoinHandle<Outcome>,
    ),
    /// The guest failed before it set a response.
    Failed(Outcome),
}

/// Why a module could not be loaded; shown to the user with the file's name.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "not a WebAssembly file (it does not start with \\0asm): build it for wasm32-wasip2 or wasm32-wasip1"
    )]
    NotWasm,
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error(
        "the component exports none of the known worlds (found: {0}): export wasi:http/incoming-handler or wasi:cli/run, version 0.2.x"
    )]
    UnknownWorld(String),
    #[error(
        "the core module exports no `_start`: build it as a WASI command (a binary with fn main)"
    )]
    NoStart,
    #[error("cannot link: {0}")]
    Link(String),
}

/// Per-store guard: the memory budget and whether a limit was hit, for classification.
struct Guard {
    memory_limit: u64,
    memory_used: u64,
    memory_hit: bool,
    timed_out: bool,
    instantiated_in: Option<Duration>,
}

impl ResourceLimiter for Guard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The budget covers all memories of the store together, as a component may have
        // several.
        let growth = (desired - current) as u64;
        if self.memory_used + growth > self.memory_limit {
            self.memory_hit = true;
            return Ok(false);
        }
        self.memory_used += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

trait Guarded: Send + 'static {
    fn guard(&mut self) -> &mut Guard;
}

pub(crate) struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    config: GuestConfig,
    hooks: OutboundLink,
    guard: Guard,
    job: JobLink,
    kv: KvLink,
}

pub(crate) struct ModuleState {
    wasi: WasiP1Ctx,
    config: GuestConfig,
    guard: Guard,
    job: JobLink,
}

impl Guarded for ComponentState {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl Guarded for ModuleState {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl Sandbox {
    pub fn new(settings: &SandboxSettings) -> anyhow::Result<Sandbox> {
        let mut config = EngineConfig::new();
        config.epoch_interruption(true);
        config.consume_fuel(settings.fuel);
        let slots = u32::try_from(settings.max_concurrency.max(1).saturating_add(SPARES))
            .unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::default();
        // Every running invocation (and every spare, `Ready`) holds one component (or
        // module) instance; components built by today's toolchains carry a handful of core
        // instances and memories.
        pool.total_component_instances(slots.saturating_mul(2).max(16))
            .total_core_instances(slots.saturating_mul(16).max(64))
            .total_memories(slots.saturating_mul(4).max(32))
            .total_tables(slots.saturating_mul(16).max(64))
            .total_stacks(slots.saturating_mul(2).max(16))
            .max_memory_size(4 << 30)
            // A slot's memory is reset with memset (only its dirty pages, where the kernel
            // can list them) rather than handed back with madvise: no TLB shootdown when an
            // instance ends, no page faults when the next one starts. This is what puts the
            // per-request cost below `wasmtime serve`'s defaults (BENCHMARKS.md).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            // What lies past KEEP_RESIDENT is given back to the system as each instance
            // ends, not gathered into batches that a quiet host might hold for long: a
            // burst of big guests leaves no memory behind.
            .decommit_batch_size(1);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)?;
        imports::add_config_to_component_linker(&mut component_linker)?;
        job::add_to_component_linker(&mut component_linker)?;
        keyvalue::add_to_component_linker(&mut component_linker)?;

        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| {
            &mut s.wasi
        })?;
        imports::add_config_to_module_linker(&mut module_linker)?;
        job::add_to_module_linker(&mut module_linker)?;
        // wasmtime-wasi turns a preview 1 exit status of 126 or more into a trap that loses
        // the status; a guest's status is its own to choose, so it is reported as it is.
        module_linker.allow_shadowing(true);
        module_linker.func_wrap(
            "wasi_snapshot_preview1",
            "proc_exit",
            |status: i32| -> wasmtime::Result<()> { Err(I32Exit(status).into()) },
        )?;
        module_linker.allow_shadowing(false);

        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        // One thread drives every deadline; it ends with the engine.
        std::thread::Builder::new()
            .name("jobhost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Sandbox {
            engine,
            component_linker,
            module_linker,
            cache_dir: settings.cache_dir.clone(),
            engine_hash,
            fuel: settings.fuel,
            max_module_size: settings.max_module_size,
            ticker_stop,
        })
    }

    pub fn fuel_enabled(&self) -> bool {
        self.fuel
    }

    /// Deletes compiled modules not used for `unused` (old versions of modules, builds of
    /// another wasmtime) and files left half-written; returns how many. The cache would
    /// otherwise only grow.
    pub fn prune_cache(&self, unused: Duration) -> usize {
        let Some(dir) = &self.cache_dir else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut pruned = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let stale = if name.ends_with(".cwasm") {
                age > unused
            } else {
                // A write that never finished: cache files are written beside, then renamed.
                name.contains(".tmp") && age > Duration::from_secs(3600)
            };
            if stale && std::fs::remove_file(&path).is_ok() {
                pruned += 1;
            }
        }
        pruned
    }

    /// The largest module file the host reads (`max_module_size`).
    pub fn max_module_size(&self) -> u64 {
        self.max_module_size
    }

    /// Compiles (or loads from the cache), recognises the shape and links.
    pub fn load(&self, bytes: &[u8]) -> Result<Prepared, LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        if wasmparser::Parser::is_component(bytes) {
            let component = self.compile_component(bytes)?;
            let exports: Vec<String> = component
                .component_type()
                .exports(&self.engine)
                .map(|(name, _)| name.to_string())
                .collect();
            let has = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
            let pre = self
                .component_linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Link(format!("{e:#}")))?;
            if has("wasi:http/incoming-handler@0.2") {
                let pre = ProxyPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
                Ok(Prepared {
                    shape: Shape::Http,
                    pre: Pre::Http(pre),
                })
            } else if has("wasi:cli/run@0.2") {
                let pre = CommandPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
                Ok(Prepared {
                    shape: Shape::Command,
                    pre: Pre::Command(pre),
                })
            } else {
                let found = if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                };
                Err(LoadError::UnknownWorld(found))
            }
        } else {
            let module = self.compile_module(bytes)?;
            if module.get_export("_start").is_none() {
                return Err(LoadError::NoStart);
            }
            let pre = self
                .module_linker
                .instantiate_pre(&module)
                .map_err(|e| LoadError::Link(format!("{e:#}")))?;
            Ok(Prepared {
                shape: Shape::Module,
                pre: Pre::Module(pre),
            })
        }
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let digest = sha2::Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{}.cwasm", self.engine_hash)))
    }

    fn compile_component(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let path = self.cache_path(bytes);
        if let Some(path) = &path
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of an engine with the
            // same compatibility hash (it is in the name), in the host's own data folder;
            // wasmtime checks the header and engine settings again before using it.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    used(path);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(path) = &path
            && let Ok(serialized) = component.serialize()
        {
            write_cache(path, &serialized);
        }
        Ok(component)
    }

    fn compile_module(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let path = self.cache_path(bytes);
        if let Some(path) = &path
            && path.exists()
        {
            // SAFETY: as in `compile_component`.
            #[allow(unsafe_code)]
            match unsafe { Module::deserialize_file(&self.engine, path) } {
                Ok(m) => {
                    used(path);
                    return Ok(m);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e:#}")
                }
            }
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(path) = &path
            && let Ok(serialized) = module.serialize()
        {
            write_cache(path, &serialized);
        }
        Ok(module)
    }

    fn new_store<T: Guarded>(&self, data: T, limits: &Limits) -> Result<Store<T>, Failure> {
        let mut store = Store::new(&self.engine, data);
        store.limiter(|s| s.guard());
        arm(&mut store, limits.timeout);
        if self.fuel {
            let fuel = limits.fuel.unwrap_or(u64::MAX);
            store
                .set_fuel(fuel)
                .map_err(|e| Failure::Host(format!("{e:#}")))?;
            store
                .fuel_async_yield_interval(Some(1_000_000))
                .map_err(|e| Failure::Host(format!("{e:#}")))?;
        }
        Ok(store)
    }

    /// Runs a command (component or core module), CGI-style.
    pub async fn run_command(&self, prepared: &Prepared, run: Run<'_>) -> Outcome {
        self.run_command_kept(prepared, run).await.0
    }

    /// Runs a command, and hands its finished instance back to be torn down when the
    /// caller likes (after the answer has gone out).
    pub async fn run_command_kept(&self, prepared: &Prepared, run: Run<'_>) -> (Outcome, Finished) {
        let started = Instant::now();
        let stdout = Capture::new(run.limits.max_output);
        let stderr = Capture::new(run.limits.max_output);
        let (result, instantiation, finished) = match &prepared.pre {
            Pre::Command(pre) => {
                self.run_command_component(pre, &run, &stdout, &stderr)
                    .await
            }
            Pre::Module(pre) => self.run_module(pre, &run, &stdout, &stderr).await,
            Pre::Http(_) => {
                let why = "a wasi:http component can only serve HTTP triggers";
                (Err(Failure::Host(why.to_string())), None, Finished::none())
            }
        };
        let outcome = finish(result, &stdout, &stderr, started, instantiation);
        (outcome, finished)
    }

    async fn run_command_component(
        &self,
        pre: &CommandPre<ComponentState>,
        run: &Run<'_>,
        stdout: &Capture,
        stderr: &Capture,
    ) -> (Result<(), Failure>, Option<Duration>, Finished) {
        let setup =
            component_state(run, stdout, stderr).and_then(|s| self.new_store(s, run.limits));
        let mut store = match setup {
            Ok(store) => store,
            Err(failure) => return (Err(failure), None, Finished::none()),
        };
        let call = async {
            let started = Instant::now();
            let command = pre.instantiate_async(&mut store).await?;
            store.data_mut().guard.instantiated_in = Some(started.elapsed());
            command.wasi_cli_run().call_run(&mut store).await
        };
        let result = bounded(run, call).await;
        let guard = store.data_mut().guard();
        let result = classify(result.map(|r| r.map(|exit| exit.map_err(|()| 1))), guard);
        let instantiated_in = guard.instantiated_in;
        (result, instantiated_in, Finished::of(store))
    }

    async fn run_module(
        &self,
        pre: &InstancePre<ModuleState>,
        run: &Run<'_>,
        stdout: &Capture,
        stderr: &Capture,
    ) -> (Result<(), Failure>, Option<Duration>, Finished) {
        let setup = wasi_builder(run, stdout, stderr).and_then(|mut builder| {
            let state = ModuleState {
                wasi: builder.build_p1(),
                config: run.config.clone(),
                guard: guard(run.limits),
                job: run.job.clone(),
            };
            self.new_store(state, run.limits)
        });
        let mut store = match setup {
            Ok(store) => store,
            Err(failure) => return (Err(failure), None, Finished::none()),
        };
        let call = async {
            let started = Instant::now();
            let instance = pre.instantiate_async(&mut store).await?;
            store.data_mut().guard.instantiated_in = Some(started.elapsed());
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let result = bounded(run, call).await;
        let guard = store.data_mut().guard();
        let result = classify(result.map(|r| r.map(Ok)), guard);
        let instantiated_in = guard.instantiated_in;
        (result, instantiated_in, Finished::of(store))
    }

    /// A component's fresh store for `run`, and the captures of its stdout and stderr.
    fn component_store(
        &self,
        run: &Run<'_>,
    ) -> (Capture, Capture, Result<Store<ComponentState>, Failure>) {
        let stdout = Capture::new(run.limits.max_output);
        let stderr = Capture::new(run.limits.max_output);
        let store = component_state(run, &stdout, &stderr)
            .and_then(|state| self.new_store(state, run.limits));
        (stdout, stderr, store)
    }

    /// Instantiates a wasi:http component for the invocation `run` describes, ahead of its
    /// request. `None` if it is not one or cannot be instantiated (the request will then
    /// instantiate it itself, and report why it cannot).
    pub async fn ready_http(&self, prepared: &Prepared, run: Run<'_>) -> Option<Ready> {
        let Pre::Http(pre) = &prepared.pre else {
            return None;
        };
        let (stdout, stderr, store) = self.component_store(&run);
        let mut store = store.ok()?;
        let started = Instant::now();
        let instantiated =
            tokio::time::timeout(run.limits.timeout, pre.instantiate_async(&mut store));
        let proxy = instantiated.await.ok()?.ok()?;
        store.data_mut().guard.instantiated_in = Some(started.elapsed());
        Some(Ready {
            store,
            proxy,
            stdout,
            stderr,
        })
    }

    /// Serves one request with a wasi:http component, as `wasmtime serve` would: with the
    /// instance `ready` when there is one (made for this `run`), else a new one.
    pub async fn serve_http(
        &self,
        prepared: &Prepared,
        request: hyper::Request<IncomingBody>,
        run: Run<'_>,
        ready: Option<Ready>,
    ) -> HttpServed {
        let started = Instant::now();
        let Pre::Http(pre) = &prepared.pre else {
            let failure = Failure::Host("not a wasi:http component".to_string());
            let none = Capture::new(0);
            return HttpServed::Failed(finish(Err(failure), &none, &none, started, None));
        };
        let (stdout, stderr, proxy, store) = match ready {
            Some(Ready {
                mut store,
                proxy,
                stdout,
                stderr,
            }) => {
                arm(&mut store, run.limits.timeout);
                (stdout, stderr, Some(proxy), Ok(store))
            }
            None => {
                let (stdout, stderr, store) = self.component_store(&run);
                (stdout, stderr, None, store)
            }
        };
        let setup = store.and_then(|mut store| {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let host_err = |e: wasmtime::Error| Failure::Host(format!("{e:#}"));
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)
                .map_err(host_err)?;
            let out = store
                .data_mut()
                .http()
                .new_response_outparam(sender)
                .map_err(host_err)?;
            Ok::<_, Failure>((store, req, out, receiver))
        });
        let (mut store, req, out, receiver) = match setup {
            Ok(s) => s,
            Err(failure) => {
                return HttpServed::Failed(finish(Err(failure), &stdout, &stderr, started, None));
            }
        };
        let pre = pre.clone();
        let timeout = run.limits.timeout;
        let (task_stdout, task_stderr) = (stdout.clone(), stderr.clone());
        let (verdict, failed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let call = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => {
                        let started = Instant::now();
                        let proxy = pre.instantiate_async(&mut store).await?;
                        store.data_mut().guard.instantiated_in = Some(started.elapsed());
                        proxy
                    }
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| Stopped::Timeout);
            let guard = store.data_mut().guard();
            let result = classify(result.map(|r| r.map(Ok)), guard);
            let instantiation = guard.instantiated_in;
            // Said before the store (and with it the response body's sender) goes, so that
            // the body sees it when it ends.
            let _ = verdict.send(result.is_err());
            // The answer goes out first (its connection's task is woken by the body's end)
            // and the instance is torn down after: at one connection the client waits for
            // the answer, not for the teardown.
            tokio::task::yield_now().await;
            drop(store);
            finish(result, &task_stdout, &task_stderr, started, instantiation)
        });
        match receiver.await {
            Ok(Ok(response)) => {
                let (head, body) = response.into_parts();
                let body = Response::new(body, failed).gather().await;
                if body.cut() {
                    // The guest failed before any of its answer went out: the caller gets
                    // the failure (a 500) rather than a part of an answer.
                    drop(body);
                    let mut outcome = task.await.unwrap_or_else(|e| panicked(e, started));
                    if outcome.result.is_ok() {
                        outcome.result = Err(Failure::Trap(
                            "the guest failed while it wrote its answer".to_string(),
                        ));
                    }
                    return HttpServed::Failed(outcome);
                }
                HttpServed::Responded(http::Response::from_parts(head, body.boxed_unsync()), task)
            }
            Ok(Err(code)) => {
                let mut outcome = task.await.unwrap_or_else(|e| panicked(e, started));
                if outcome.result.is_ok() {
                    outcome.result = Err(Failure::Trap(format!(
                        "the guest answered with an error: {code:?}"
                    )));
                }
                HttpServed::Failed(outcome)
            }
            Err(_) => {
                let mut outcome = task.await.unwrap_or_else(|e| panicked(e, started));
                if outcome.result.is_ok() {
                    outcome.result = Err(Failure::Trap(
                        "the guest returned without setting a response".to_string(),
                    ));
                }
                HttpServed::Failed(outcome)
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn panicked(e: tokio::task::JoinError, started: Instant) -> Outcome {
    Outcome {
        duration: started.elapsed(),
        ..Outcome::host_failure(format!("the invocation task failed: {e}"))
    }
}

/// Marks a cache entry as used now, so pruning keeps it.
fn used(path: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

fn write_cache(path: &Path, bytes: &[u8]) {
    // Written beside and renamed, so a crash never leaves half a file under the real name.
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), "cannot write the compile cache: {e}");
    }
}

/// Stops the store's guest `timeout` from now: at the first epoch tick past it (or, in a
/// host call, when the caller's own timer fires).
fn arm<T: Guarded>(store: &mut Store<T>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        if Instant::now() >= deadline {
            ctx.data_mut().guard().timed_out = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            // Yield every tick so a busy guest never starves the runtime's threads.
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

fn guard(limits: &Limits) -> Guard {
    Guard {
        memory_limit: limits.memory,
        memory_used: 0,
        memory_hit: false,
        timed_out: false,
        instantiated_in: None,
    }
}

fn wasi_builder(
    run: &Run<'_>,
    stdout: &Capture,
    stderr: &Capture,
) -> Result<WasiCtxBuilder, Failure> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(MemoryInputPipe::new(run.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(&[run.program])
        .envs(&run.env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for dir in &run.dirs {
        let perms = if dir.write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| {
                Failure::Host(format!(
                    "cannot open {} for {}: {e:#}",
                    dir.host.display(),
                    dir.guest
                ))
            })?;
    }
    Ok(builder)
}

fn component_state(
    run: &Run<'_>,
    stdout: &Capture,
    stderr: &Capture,
) -> Result<ComponentState, Failure> {
    let mut builder = wasi_builder(run, stdout, stderr)?;
    Ok(ComponentState {
        wasi: builder.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        config: run.config.clone(),
        hooks: run.outbound.clone(),
        guard: guard(run.limits),
        job: run.job.clone(),
        kv: run.kv.clone(),
    })
}

/// Why the host stopped a guest before it returned.
enum Stopped {
    /// Its wall-clock `timeout` passed while it waited in a host call.
    Timeout,
    /// A user cancelled it.
    Cancelled,
}

/// Runs a guest's `call` until it returns, its `timeout` passes, or it is cancelled.
/// Dropping the call stops the guest: a busy one yields at every epoch tick, so the drop
/// happens within a tick.
async fn bounded<T>(run: &Run<'_>, call: impl Future<Output = T>) -> Result<T, Stopped> {
    let cancelled = async {
        match &run.cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::time::timeout(run.limits.timeout, call) => {
            result.map_err(|_| Stopped::Timeout)
        }
        () = cancelled => Err(Stopped::Cancelled),
    }
}

/// Turns what wasmtime returned into the guest's result. `Err(Stopped)` is the host's own
/// doing; the inner `Err(code)` a command's non-zero status.
fn classify(
    result: Result<wasmtime::Result<Result<(), i32>>, Stopped>,
    guard: &Guard,
) -> Result<(), Failure> {
    let error = match result {
        Err(Stopped::Timeout) => return Err(Failure::Timeout),
        Err(Stopped::Cancelled) => return Err(Failure::Cancelled),
        Ok(Ok(Ok(()))) => return Ok(()),
        Ok(Ok(Err(code))) => {
            return Err(if guard.memory_hit {
                Failure::MemoryLimit
            } else {
                Failure::Exit(code)
            });
        }
        Ok(Err(e)) => e,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Ok(()),
            _ if guard.memory_hit => Err(Failure::MemoryLimit),
            code => Err(Failure::Exit(code)),
        };
    }
    let trap = error.downcast_ref::<Trap>().copied();
    if guard.timed_out || trap == Some(Trap::Interrupt) {
        return Err(Failure::Timeout);
    }
    if guard.memory_hit {
        return Err(Failure::MemoryLimit);
    }
    if trap == Some(Trap::OutOfFuel) {
        return Err(Failure::CpuLimit);
    }
    match trap {
        Some(trap) => Err(Failure::Trap(
            trap.to_string()
                .trim_start_matches("wasm trap: ")
                .to_string(),
        )),
        None => Err(Failure::Trap(format!("{error:#}"))),
    }
}

fn finish(
    result: Result<(), Failure>,
    stdout: &Capture,
    stderr: &Capture,
    started: Instant,
    instantiation: Option<Duration>,
) -> Outcome {
    let (stdout, stdout_truncated) = stdout.take();
    let (stderr, stderr_truncated) = stderr.take();
    Outcome {
        result,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration: started.elapsed(),
        instantiation,
    }
}
