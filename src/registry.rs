//! `functions/` and the configuration -> the set of compiled, linked functions and the
//! routing table, plus every problem found on the way (a bad module never stops the others).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{self, Config, FunctionSpec, HttpMode, HttpTrigger, Route, Trigger};
use crate::sandbox::{Prepared, Sandbox, Shape};

/// A function ready to run: its validated spec and its linked module.
pub struct Function {
    pub spec: FunctionSpec,
    pub prepared: Prepared,
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
    pub problems: Vec<LoadProblem>,
}

/// The names of the functions: every `NAME.wasm` and `NAME.toml` in `functions/` and every
/// `[functions.NAME]`.
pub fn function_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.declared.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(&config.host.functions_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("wasm") | Some("toml"))
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Loads every function; `only` restricts it to one (for `jobhost invoke`).
pub fn load(config: &Config, sandbox: &Sandbox, only: Option<&str>) -> Registry {
    let mut registry = Registry::default();
    for name in function_names(config) {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let started = Instant::now();
        match load_function(config, sandbox, &name) {
            Ok(function) => {
                tracing::info!(
                    function = %name,
                    shape = %function.prepared.shape,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "loaded {}",
                    function.spec.module.display()
                );
                registry.functions.insert(name, Arc::new(function));
            }
            Err(message) => registry.problems.push(LoadProblem {
                function: name,
                message,
            }),
        }
    }
    registry.build_routes();
    registry
}

fn load_function(config: &Config, sandbox: &Sandbox, name: &str) -> Result<Function, String> {
    config::check_function_name(name)?;
    let sidecar_path = config.host.functions_dir.join(format!("{name}.toml"));
    let sidecar = if sidecar_path.exists() {
        Some(config::load_sidecar(&sidecar_path, name).map_err(|p| p.to_string())?)
    } else {
        None
    };
    let spec = config::function_spec(config, name, sidecar.as_ref()).map_err(|p| p.to_string())?;
    if spec.limits.fuel.is_some() && !sandbox.fuel_enabled() {
        return Err(format!(
            "{}: `fuel` is set but the host started without fuel counting: restart the host to enable it",
            module_label(&spec.module)
        ));
    }
    let bytes = std::fs::read(&spec.module).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{}: the module does not exist: build it and copy it there, or set `module`",
                spec.module.display()
            )
        } else {
            format!("{}: cannot read the module: {e}", spec.module.display())
        }
    })?;
    let prepared = sandbox
        .load(&bytes)
        .map_err(|e| format!("{}: {e}", spec.module.display()))?;
    if prepared.shape == Shape::Http
        && spec
            .triggers
            .iter()
            .any(|t| matches!(t, Trigger::Http(h) if h.mode == HttpMode::Async))
    {
        return Err(format!(
            "{}: a wasi:http component answers its caller itself, so it cannot have mode = \"async\": build it as a command (fn main) to run in the background",
            spec.module.display()
        ));
    }
    if prepared.shape == Shape::Http
        && let Some(other) = spec
            .triggers
            .iter()
            .find(|t| !matches!(t, Trigger::Http(_)))
    {
        return Err(format!(
            "{}: a wasi:http component serves HTTP triggers only, but it has {other:?}: build it as a command (fn main) to use timers or watches",
            spec.module.display()
        ));
    }
    Ok(Function { spec, prepared })
}

fn module_label(path: &Path) -> String {
    path.display().to_string()
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

    /// The routes matching `path`, most specific first.
    pub fn routes_for<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Iterator<Item = (&'a RouteEntry, Vec<(String, String)>)> + 'a {
        self.routes
            .iter()
            .filter_map(move |r| r.route.matches(path).map(|p| (r, p)))
    }
}

fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m))
}

/// Where compiled modules are cached.
pub fn cache_dir(config: &Config) -> PathBuf {
    config.host.data_dir.join("cache")
}
