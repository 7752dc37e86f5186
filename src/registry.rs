//! `functions/` and the configuration -> the set of compiled, linked functions and the
//! routing table, plus every problem found on the way (a bad module never stops the others).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use sha2::Digest;

use crate::config::{Config, FunctionSpec, HttpMode, HttpTrigger, Problems, Route, Trigger};
use crate::metrics;
use crate::sandbox::{GuestConfig, Prepared, Sandbox, SandboxSettings, Shape};

/// Every function the configuration describes: its spec, or why it has none.
pub type Specs = BTreeMap<String, Result<FunctionSpec, Problems>>;

/// A function ready to run: its validated spec and its linked module.
pub struct Function {
    pub spec: FunctionSpec,
    pub prepared: Prepared,
    /// SHA-256 of the module's bytes: a reload with the same bytes and spec keeps it.
    pub module_hash: [u8; 32],
    /// Its own `concurrency`, shared by every version of the function.
    pub permits: Option<Arc<tokio::sync::Semaphore>>,
    /// Its configuration as guests read it.
    pub config: GuestConfig,
    /// When its last wasi:http request came (ms since the epoch; 0: none yet): whether it
    /// is called often enough for the dispatcher to make its next instance ahead.
    pub last_request: AtomicI64,
}

/// One HTTP route and the function it fires.
pub struct RouteEntry {
    pub route: Route,
    pub methods: Vec<String>,
    pub mode: HttpMode,
    pub max_body: u64,
    pub function: Arc<Function>,
}

/// A function that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct LoadProblem {
    pub function: String,
    pub message: String,
}

#[derive(Default)]
pub struct Registry {
    pub functions: BTreeMap<String, Arc<Function>>,
    pub routes: Vec<RouteEntry>,
    /// Each queue and the one function that listens to it.
    pub queues: BTreeMap<String, Arc<Function>>,
    pub problems: Vec<LoadProblem>,
    /// A module that failed to load while it was still being written: load again later
    /// before calling it an error.
    pub unsettled: bool,
}

/// A module younger than this that does not load may still be being copied.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The sandbox a host on this configuration needs. Fuel counting is an engine setting:
/// it is on when anything asks for `fuel` at start.
pub fn sandbox_settings(config: &Config, specs: &Specs) -> SandboxSettings {
    let fuel = config.defaults.fuel.is_some()
        || specs
            .values()
            .any(|s| s.as_ref().is_ok_and(|s| s.limits.fuel.is_some()));
    SandboxSettings {
        max_concurrency: config.host.max_concurrency,
        fuel,
        cache_dir: Some(config.host.data_dir.join("cache")),
        max_module_size: config.host.max_module_size,
    }
}

/// What to make of a module that does not load while it is younger than a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Young {
    /// Report it: `check`, start-up and the CLI look at a folder at rest.
    Report,
    /// It may still be copying: wait for it to settle (hot reload).
    Wait,
}

/// Loads every function; `only` restricts it to one (for `jobhost invoke`).
pub fn load(specs: &Specs, sandbox: &Sandbox, only: Option<&str>) -> Registry {
    reload(specs, sandbox, &Registry::default(), only, Young::Report)
}

/// Loads the functions again, keeping every one whose module bytes and spec are unchanged.
/// A function that fails to load keeps its previous version serving, with the error shown
/// beside it; a module that fails while it is younger than a second is taken to be still
/// copying, and is retried (`unsettled`) rather than reported.
pub fn reload(
    specs: &Specs,
    sandbox: &Sandbox,
    previous: &Registry,
    only: Option<&str>,
    young: Young,
) -> Registry {
    let mut registry = Registry::default();
    for (name, spec) in specs {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let name = name.clone();
        let old = previous.functions.get(&name);
        let started = Instant::now();
        let loaded = match spec {
            Ok(spec) => load_function(sandbox, spec, old),
            Err(problems) => Err(LoadFailure::from(problems.to_string())),
        };
        match loaded {
            Ok(function) => {
                if !old.is_some_and(|o| Arc::ptr_eq(o, &function)) {
                    tracing::info!(
                        function = %name,
                        shape = %function.prepared.shape,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "{} {}",
                        if old.is_some() { "reloaded" } else { "loaded" },
                        function.spec.module.display()
                    );
                }
                registry.functions.insert(name, function);
            }
            Err(failure) => {
                if failure.unsettled && young == Young::Wait {
                    registry.unsettled = true;
                    tracing::debug!(function = %name, "not loaded yet, the module may still be copying: {}", failure.message);
                    if let Some(old) = old {
                        registry.functions.insert(name, old.clone());
                    }
                    continue;
                }
                let message = match old {
                    Some(old) if failure.module_exists => {
                        registry.functions.insert(name.clone(), old.clone());
                        format!("{}; the previous version keeps serving", failure.message)
                    }
                    _ => failure.message,
                };
                registry.problems.push(LoadProblem {
                    function: name,
                    message,
                });
            }
        }
    }
    registry.build_routes();
    registry.build_queues();
    registry.check_chains();
    registry
}

struct LoadFailure {
    message: String,
    module_exists: bool,
    unsettled: bool,
}

impl From<String> for LoadFailure {
    fn from(message: String) -> Self {
        LoadFailure {
            message,
            module_exists: false,
            unsettled: false,
        }
    }
}

fn load_function(
    sandbox: &Sandbox,
    spec: &FunctionSpec,
    old: Option<&Arc<Function>>,
) -> Result<Arc<Function>, LoadFailure> {
    if spec.limits.fuel.is_some() && !sandbox.fuel_enabled() {
        return Err(format!(
            "{}: `fuel` is set but the host started without fuel counting: restart the host to enable it",
            spec.module.display()
        )
        .into());
    }
    let bytes = read_module(&spec.module, sandbox.max_module_size())
        .map_err(|why| format!("{}: {why}", spec.module.display()))?;
    let module_hash: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    if let Some(old) = old
        && old.module_hash == module_hash
        && old.spec == *spec
    {
        return Ok(old.clone());
    }
    let compiling = Instant::now();
    let loaded = sandbox
        .load(&bytes)
        .map_err(|e| format!("{}: {e}", spec.module.display()));
    metrics::get().compiled(compiling.elapsed());
    let prepared = match loaded {
        Ok(p) => p,
        Err(message) => {
            let young = std::fs::metadata(&spec.module)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < SETTLE);
            return Err(LoadFailure {
                message,
                module_exists: true,
                unsettled: young,
            });
        }
    };
    if prepared.shape == Shape::Http
        && spec
            .triggers
            .iter()
            .any(|t| matches!(t, Trigger::Http(h) if h.mode == HttpMode::Async))
    {
        return Err(format!(
            "{}: a wasi:http component answers its caller itself, so it cannot have mode = \"async\": build it as a command (fn main) to run in the background",
            spec.module.display()
        )
        .into());
    }
    if prepared.shape == Shape::Http
        && let Some(other) = spec
            .triggers
            .iter()
            .find(|t| !matches!(t, Trigger::Http(_)))
    {
        return Err(format!(
            "{}: a wasi:http component serves HTTP triggers only, but it has `{other}`: build it as a command (fn main) to use timers, watches or queues",
            spec.module.display()
        )
        .into());
    }
    // Concurrency slots carry over from the previous version, so a reload never lets more
    // runs through than `concurrency` allows.
    let permits = match (spec.concurrency, old) {
        (Some(n), Some(old)) if old.spec.concurrency == Some(n) => old.permits.clone(),
        (Some(n), _) => Some(Arc::new(tokio::sync::Semaphore::new(n))),
        (None, _) => None,
    };
    let config = GuestConfig::new(&spec.name, &spec.config);
    Ok(Arc::new(Function {
        spec: spec.clone(),
        prepared,
        module_hash,
        permits,
        config,
        last_request: AtomicI64::new(0),
    }))
}

/// Reads a module: a regular file of at most `cap` bytes. It is opened without blocking
/// and checked through the open handle, so a FIFO cannot hang the host and a device such as
/// `/dev/zero` cannot fill its memory, even if the file is swapped between look and read.
fn read_module(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "the module does not exist: build it and copy it there, or set `module`".to_string()
            }
            _ => format!("cannot read the module: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the module: {e}"))?;
    if !meta.is_file() {
        return Err(
            "not a regular file (a folder, a device or a FIFO): point `module` at a .wasm file"
                .to_string(),
        );
    }
    if meta.len() > cap {
        return Err(format!(
            "the module is {} bytes, more than max_module_size ({cap} bytes): raise [host] max_module_size if it is meant to be this big",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the module: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!(
            "the module grew past max_module_size ({cap} bytes) while it was read"
        ));
    }
    Ok(bytes)
}

impl Registry {
    /// Builds the routing table; a route two functions claim for the same methods is
    /// refused for the second (in name order), naming both.
    fn build_routes(&mut self) {
        let mut claimed: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for (name, function) in &self.functions {
            for trigger in &function.spec.triggers {
                let Trigger::Http(HttpTrigger {
                    route,
                    methods,
                    mode,
                    max_body,
                }) = trigger
                else {
                    continue;
                };
                let shape = route.shape();
                let owners = claimed.entry(shape).or_default();
                if let Some((owner, _)) = owners.iter().find(|(_, m)| overlap(m, methods)) {
                    self.problems.push(LoadProblem {
                        function: name.clone(),
                        message: format!(
                            "route {} is claimed by both `{owner}` and `{name}`: give one of them another route or other methods; `{owner}` keeps it",
                            route.text
                        ),
                    });
                    continue;
                }
                owners.push((name.clone(), methods.clone()));
                self.routes.push(RouteEntry {
                    route: route.clone(),
                    methods: methods.clone(),
                    mode: *mode,
                    max_body: *max_body,
                    function: function.clone(),
                });
            }
        }
        // Most specific first, so the first match wins.
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.route.specificity()));
    }

    /// Builds the queue table: one function per queue; a second that listens to a queue is
    /// refused (in name order), naming both.
    fn build_queues(&mut self) {
        for (name, function) in &self.functions {
            for trigger in &function.spec.triggers {
                let Trigger::Queue(queue) = trigger else {
                    continue;
                };
                if let Some(owner) = self.queues.get(&queue.name) {
                    self.problems.push(LoadProblem {
                        function: name.clone(),
                        message: format!(
                            "queue `{}` is listened to by both `{}` and `{name}`: one function per queue, so give one of them another queue; `{}` keeps it",
                            queue.name, owner.spec.name, owner.spec.name
                        ),
                    });
                    continue;
                }
                self.queues.insert(queue.name.clone(), function.clone());
            }
        }
    }

    /// A chain step must run in the background: a wasi:http component cannot be one.
    /// (That each step exists and that no chain comes back is the configuration's check.)
    fn check_chains(&mut self) {
        for (name, function) in &self.functions {
            let spec = &function.spec;
            let steps = spec.on_success.iter().map(|s| ("on_success", s));
            for (key, step) in steps.chain(spec.on_failure.iter().map(|s| ("on_failure", s))) {
                if self
                    .functions
                    .get(step)
                    .is_some_and(|f| f.prepared.shape == Shape::Http)
                {
                    self.problems.push(LoadProblem {
                        function: name.clone(),
                        message: format!(
                            "{key} names `{step}`, a wasi:http component: it answers HTTP requests only, so it cannot run as a step of a chain; chain to a command (fn main) instead"
                        ),
                    });
                }
            }
        }
    }

    /// The routes matching `path`, most specific first.
    pub fn routes_for<'a, 'p>(
        &'a self,
        path: &'p str,
    ) -> impl Iterator<Item = (&'a RouteEntry, Vec<(String, String)>)> + use<'a, 'p> {
        self.routes
            .iter()
            .filter_map(move |r| r.route.matches(path).map(|p| (r, p)))
    }
}

fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m))
}
