//! Functions as configured: `[functions.NAME]` in `runtime.toml`, `functions/NAME.toml`
//! beside the module, or neither (a module dropped in alone). Each key keeps the file and
//! line it came from; the functions folder is read, and every sidecar parsed, once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

use super::chain;
use super::outbound::AllowedHost;
use super::raw::{RawFunction, RawLimits};
use super::source::{Problem, Problems, Source};
use super::trigger::{HttpMode, Trigger};
use super::values::{self, Setting};
use super::{Config, DirMount, Limits};

/// One function, validated: what a module in `functions/` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub module: PathBuf,
    pub limits: Limits,
    pub concurrency: Option<usize>,
    /// Its background work's priority: higher is claimed first (default 0).
    pub priority: i32,
    pub triggers: Vec<Trigger>,
    pub dirs: Vec<DirMount>,
    /// The function's `config` over the shared `[config]`.
    pub config: BTreeMap<String, Setting>,
    pub env: BTreeMap<String, String>,
    /// Functions queued with this one's stdout as payload when a background run succeeds.
    pub on_success: Vec<String>,
    /// The function queued with this one's record as JSON when a background run is `dead`.
    pub on_failure: Option<String>,
    /// Where its guest may send HTTP requests (`wasi:http/outgoing-handler`); none by default.
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    /// The key-value stores its guest may open (`wasi:keyvalue`); none by default.
    pub key_value_stores: Vec<String>,
    /// Where each of its durable invocations' records is POSTed once it ends.
    pub callback: Option<String>,
}

impl FunctionSpec {
    /// Whether a timer fires it (runs of one timer never overlap).
    pub fn has_timer(&self) -> bool {
        self.triggers.iter().any(|t| matches!(t, Trigger::Timer(_)))
    }
}

/// A function's table in one file, with the spans of its keys.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    raw: RawFunction,
    source: Source,
    keys: BTreeMap<String, Range<usize>>,
}

impl Section {
    /// Reads a function's table; every problem in it is pushed.
    pub(crate) fn read(
        source: &Source,
        section: &str,
        body: Spanned<DeValue<'_>>,
        problems: &mut Problems,
    ) -> Section {
        let keys = super::source::key_spans(&body);
        let raw = RawFunction::read(source, section, body, problems);
        Section {
            raw,
            source: source.clone(),
            keys,
        }
    }

    /// Reads a `functions/NAME.toml` sidecar.
    fn sidecar(path: PathBuf, name: &str) -> Result<Section, Problems> {
        let one = |p| Problems(vec![p]);
        let source = Source::read(path.clone())
            .map_err(one)?
            .unwrap_or_else(|| Source::new(path, String::new()));
        let table = source.table().map_err(one)?;
        let span = table.span();
        let value = Spanned::new(span, DeValue::Table(table.into_inner()));
        let mut problems = Problems::default();
        let section = Section::read(&source, &format!("functions.{name}"), value, &mut problems);
        problems.or(section)
    }
}

/// Function names are used in routes, file names and metrics labels.
pub fn check_function_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid function name {name:?}: use letters, digits, '-' and '_' only"
        ))
    }
}

/// Key-value store names are used in URLs (`/_jobhost/kv/NAME`) and on command lines.
pub fn check_store_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid key-value store name {name:?}: use up to 64 letters, digits, '-', '_' and '.'"
        ))
    }
}

/// Every function that `runtime.toml` and the functions folder describe, each with its
/// spec or the problems that keep it from loading. A module that a function names in
/// `module` belongs to that function only: it is not also a function of its own.
pub fn functions(config: &Config) -> BTreeMap<String, Result<FunctionSpec, Problems>> {
    let dir = &config.host.functions_dir;
    let mut modules = BTreeSet::new();
    let mut sidecars = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some("wasm") => {
                    modules.insert(stem.to_string());
                }
                Some("toml") => {
                    let sidecar = check_function_name(stem)
                        .map_err(|why| Problems(vec![problem_of(&path, &why)]))
                        .and_then(|()| Section::sidecar(path.clone(), stem));
                    sidecars.insert(stem.to_string(), sidecar);
                }
                _ => {}
            }
        }
    }
    let mut names: BTreeSet<String> = config.declared.keys().cloned().collect();
    names.extend(sidecars.keys().cloned());
    // Modules claimed through `module` by a function of another name.
    for name in names.clone() {
        let sections = Sections {
            declared: config.declared.get(&name),
            sidecar: sidecars.get(&name).and_then(|s| s.as_ref().ok()),
        };
        if let Some((module, _)) = sections.with(|r| r.module.as_ref()) {
            let path = dir.join(module);
            if path.parent() == Some(dir.as_path())
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && stem != name
            {
                modules.remove(stem);
            }
        }
    }
    names.extend(modules);
    let mut specs: BTreeMap<String, Result<FunctionSpec, Problems>> = names
        .into_iter()
        .map(|name| {
            let spec = match (sidecars.get(&name), check_function_name(&name)) {
                (Some(Err(problems)), _) => Err(problems.clone()),
                (_, Err(why)) => {
                    let path = dir.join(format!("{name}.wasm"));
                    Err(Problems(vec![problem_of(&path, &why)]))
                }
                (sidecar, Ok(())) => {
                    let sections = Sections {
                        declared: config.declared.get(&name),
                        sidecar: sidecar.and_then(|s| s.as_ref().ok()),
                    };
                    function_spec(config, &name, &sections)
                }
            };
            (name, spec)
        })
        .collect();
    // Chains name other functions: checked once every function is known.
    for (name, found) in chain::check(&specs) {
        let sections = Sections {
            declared: config.declared.get(&name),
            sidecar: sidecars.get(&name).and_then(|s| s.as_ref().ok()),
        };
        let problems: Vec<Problem> = found
            .into_iter()
            .map(|(key, why)| {
                let full = format!("functions.{name}.{key}");
                match sections.source_of(key) {
                    Some((source, span)) => source.problem(Some(span), &full, why),
                    None => problem_of(&config.path, &why),
                }
            })
            .collect();
        specs.insert(name, Err(Problems(problems)));
    }
    specs
}

fn problem_of(path: &Path, why: &str) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        message: why.to_string(),
    }
}

/// A function's sections: in `runtime.toml`, in its sidecar, either or neither.
pub(crate) struct Sections<'a> {
    pub(crate) declared: Option<&'a Section>,
    pub(crate) sidecar: Option<&'a Section>,
}

impl Sections<'_> {
    /// A key's value and the file it came from, so that a problem with it names that
    /// file and line. (A key set in both places is refused by `function_spec`.)
    fn with<T>(&self, get: impl Fn(&RawFunction) -> Option<&T>) -> Option<(&T, &Source)> {
        self.sidecar
            .iter()
            .chain(self.declared.iter())
            .find_map(|s| get(&s.raw).map(|v| (v, &s.source)))
    }

    fn value<T: Clone>(&self, get: impl Fn(&RawFunction) -> Option<&T>) -> Option<T> {
        self.with(get).map(|(v, _)| v.clone())
    }

    /// The file that sets `key`, and where in it.
    fn source_of(&self, key: &str) -> Option<(&Source, &Range<usize>)> {
        self.sidecar
            .iter()
            .chain(self.declared.iter())
            .find_map(|s| s.keys.get(key).map(|span| (&s.source, span)))
    }
}

/// The spec of the function `name` from its sections, over the defaults.
pub(crate) fn function_spec(
    config: &Config,
    name: &str,
    sections: &Sections<'_>,
) -> Result<FunctionSpec, Problems> {
    let mut problems = Problems::default();
    let section = format!("functions.{name}");
    if let (Some(declared), Some(sidecar)) = (sections.declared, sections.sidecar) {
        for (key, span) in &sidecar.keys {
            if let Some(first) = declared.keys.get(key) {
                problems.push(sidecar.source.problem(
                    Some(span),
                    &format!("{section}.{key}"),
                    format!(
                        "also set in {} line {}: keep it in one place",
                        declared.source.file.display(),
                        declared.source.line_of(first)
                    ),
                ));
            }
        }
    }
    let root = config.root();
    let mut triggers = Vec::new();
    match sections.with(|r| r.triggers.as_ref()) {
        // No `triggers` key: served at /NAME, as a module with no configuration is.
        // `triggers = []` means manual calls only.
        None => match Trigger::default_http(name) {
            Ok(t) => triggers.push(t),
            Err(why) => problems.push(Problem {
                file: config.path.clone(),
                line: None,
                key: section.clone(),
                message: why,
            }),
        },
        Some((list, source)) => {
            for (i, t) in list.iter().enumerate() {
                match Trigger::parse(t.get_ref().clone(), root) {
                    // An async route holds each body whole in memory until it is queued.
                    Ok(Trigger::Http(h))
                        if h.mode == HttpMode::Async
                            && h.max_body > config.host.max_body_memory =>
                    {
                        problems.push(source.problem(
                            Some(&t.span()),
                            &format!("{section}.triggers[{i}].max_body"),
                            format!(
                                "{} bytes is more than [host] max_body_memory ({} bytes), all the host holds in request bodies at once: lower max_body or raise max_body_memory",
                                h.max_body, config.host.max_body_memory
                            ),
                        ));
                    }
                    Ok(t) => triggers.push(t),
                    Err(why) => problems.push(source.problem(
                        Some(&t.span()),
                        &format!("{section}.triggers[{i}]"),
                        why,
                    )),
                }
            }
        }
    }
    let mut dirs = Vec::new();
    if let Some((list, source)) = sections.with(|r| r.dirs.as_ref()) {
        for (i, d) in list.iter().enumerate() {
            let span = d.span();
            let d = d.get_ref();
            if !d.guest.starts_with('/') {
                problems.push(source.problem(
                    Some(&span),
                    &format!("{section}.dirs[{i}].guest"),
                    format!(
                        "guest path {:?} must be absolute, such as \"/data\"",
                        d.guest
                    ),
                ));
                continue;
            }
            let host = root.join(&d.host);
            if !host.is_dir() {
                problems.push(source.problem(
                    Some(&span),
                    &format!("{section}.dirs[{i}].host"),
                    format!(
                        "{} is not a folder: create it, or fix the path (relative to the folder of runtime.toml)",
                        host.display()
                    ),
                ));
                continue;
            }
            dirs.push(DirMount {
                host,
                guest: d.guest.clone(),
                write: d.write,
            });
        }
    }
    let mut allowed_outbound_hosts = Vec::new();
    if let Some((list, source)) = sections.with(|r| r.allowed_outbound_hosts.as_ref()) {
        for (i, entry) in list.iter().enumerate() {
            match entry.get_ref().parse::<AllowedHost>() {
                Ok(allowed) => allowed_outbound_hosts.push(allowed),
                Err(why) => problems.push(source.problem(
                    Some(&entry.span()),
                    &format!("{section}.allowed_outbound_hosts[{i}]"),
                    why,
                )),
            }
        }
    }
    let mut key_value_stores = Vec::new();
    if let Some((list, source)) = sections.with(|r| r.key_value_stores.as_ref()) {
        for (i, entry) in list.iter().enumerate() {
            match check_store_name(entry.get_ref()) {
                Ok(()) => key_value_stores.push(entry.get_ref().clone()),
                Err(why) => problems.push(source.problem(
                    Some(&entry.span()),
                    &format!("{section}.key_value_stores[{i}]"),
                    why,
                )),
            }
        }
    }
    let callback = sections
        .with(|r| r.callback.as_ref())
        .and_then(
            |(url, source)| match config.host.callbacks.refuses(url.get_ref()) {
                None => Some(url.get_ref().clone()),
                Some(why) => {
                    problems.push(source.problem(
                        Some(&url.span()),
                        &format!("{section}.callback"),
                        why,
                    ));
                    None
                }
            },
        );
    let mut function_config = config.shared.clone();
    if let Some((table, source)) = sections.with(|r| r.config.as_ref()) {
        function_config.extend(values::resolve(source, &format!("{section}.config"), table));
    }
    let raw_limits = RawLimits {
        memory: sections.value(|r| r.memory.as_ref()),
        timeout: sections.value(|r| r.timeout.as_ref()),
        fuel: sections.value(|r| r.fuel.as_ref()),
        max_output: sections.value(|r| r.max_output.as_ref()),
        retry: sections.value(|r| r.retry.as_ref()),
    };
    let module = match sections.with(|r| r.module.as_ref()) {
        Some((m, _)) => config.host.functions_dir.join(m),
        None => config.host.functions_dir.join(format!("{name}.wasm")),
    };
    let limits = Limits::from_raw(&raw_limits, &config.defaults);
    for (key, why) in limits.problems() {
        // Only a key the function sets is its own problem; [defaults] is checked once.
        if let Some((source, span)) = sections.source_of(key) {
            problems.push(source.problem(Some(span), &format!("{section}.{key}"), why));
        }
    }
    let spec = FunctionSpec {
        name: name.to_string(),
        module,
        limits,
        concurrency: sections.value(|r| r.concurrency.as_ref()).map(|c| c.max(1)),
        priority: sections.value(|r| r.priority.as_ref()).unwrap_or(0),
        triggers,
        dirs,
        config: function_config,
        env: sections.value(|r| r.env.as_ref()).unwrap_or_default(),
        on_success: sections
            .value(|r| r.on_success.as_ref())
            .unwrap_or_default(),
        on_failure: sections.value(|r| r.on_failure.as_ref()),
        allowed_outbound_hosts,
        key_value_stores,
        callback,
    };
    problems.or(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;

    fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let config = load(&dir.path().join("runtime.toml")).unwrap();
        (dir, config)
    }

    fn problems_of(config: &Config, name: &str) -> String {
        functions(config)[name]
            .as_ref()
            .expect_err("the function should be refused")
            .to_string()
    }

    #[test]
    fn chains_to_unknown_functions_and_cycles_are_refused_with_the_path() {
        let (_dir, config) = project(&[
            (
                "runtime.toml",
                "[functions.a]\non_success = [\"b\"]\n[functions.b]\non_success = [\"c\"]\n[functions.c]\non_failure = \"a\"\n[functions.d]\non_success = [\"e\", \"nope\"]\n[functions.e]\non_failure = \"e\"\n[functions.f]\non_success = [\"d\"]\n",
            ),
            ("functions/g.toml", "on_success = [\"a\"]\n"),
        ]);
        let text = problems_of(&config, "a");
        assert!(
            text.contains(":2: `functions.a.on_success`: the chain comes back to where it started: a -> b -> c -> a;"),
            "{text}"
        );
        assert!(problems_of(&config, "b").contains("b -> c -> a -> b"));
        let text = problems_of(&config, "c");
        assert!(
            text.contains(":6: `functions.c.on_failure`: the chain comes back to where it started: c -> a -> b -> c"),
            "{text}"
        );
        let text = problems_of(&config, "d");
        assert!(
            text.contains(":8: `functions.d.on_success`: `nope` is not a function: name one of a, b, c, d, e, f, g"),
            "{text}"
        );
        assert!(problems_of(&config, "e").contains(
            "`functions.e.on_failure`: the chain comes back to where it started: e -> e"
        ));
        // Leading into a cycle, or to a refused function, is no cycle of its own; a sidecar
        // is named as the file of its key.
        let specs = functions(&config);
        assert_eq!(specs["f"].as_ref().unwrap().on_success, ["d"]);
        assert!(specs["g"].is_ok());
        let (_dir, config) = project(&[
            ("runtime.toml", "[functions.a]\n"),
            ("functions/g.toml", "\non_success = [\"g\"]\n"),
        ]);
        let text = problems_of(&config, "g");
        assert!(
            text.contains("functions/g.toml:2: `functions.g.on_success`: the chain comes back"),
            "{text}"
        );
    }

    #[test]
    fn trigger_errors_name_the_trigger() {
        let (_dir, config) = project(&[(
            "runtime.toml",
            "[functions.a]\ntriggers = [\n  { http = \"/a\" },\n  { http = \"a\", methods = [\"GET\"] },\n  { cron = \"* * * * *\", methods = [\"GET\"] },\n]\n",
        )]);
        let text = problems_of(&config, "a");
        assert!(
            text.contains(":4: `functions.a.triggers[1]`: route \"a\" must start with '/'"),
            "{text}"
        );
        assert!(
            text.contains(
                ":5: `functions.a.triggers[2]`: methods does not apply to a cron trigger"
            ),
            "{text}"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let (_dir, config) = project(&[(
            "runtime.toml",
            "[host]\nmax_body_memory = \"1MiB\"\n[functions.a]\ntimeout = \"0s\"\nmemory = \"8GiB\"\ntriggers = [{ http = \"/healthz\" }, { http = \"/_jobhost/x\" }, { http = \"/up\", mode = \"async\", max_body = \"2MiB\" }]\ndirs = [{ host = \"nowhere\", guest = \"/in\" }]\n",
        )]);
        let text = problems_of(&config, "a");
        for expected in [
            ":4: `functions.a.timeout`: must be more than 0s",
            ":5: `functions.a.memory`: is more than 4GiB",
            ":6: `functions.a.triggers[0]`: route /healthz is the host's own",
            ":6: `functions.a.triggers[1]`: route /_jobhost/x is the host's own",
            ":6: `functions.a.triggers[2].max_body`: 2097152 bytes is more than [host] max_body_memory",
            ":7: `functions.a.dirs[0].host`:",
            "nowhere is not a folder",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }

    #[test]
    fn a_key_in_both_places_is_an_error() {
        let (_dir, config) = project(&[
            ("runtime.toml", "[functions.a]\ntimeout = \"1s\"\n"),
            ("functions/a.toml", "memory = \"1MiB\"\ntimeout = \"2s\"\n"),
        ]);
        let text = problems_of(&config, "a");
        assert!(
            text.contains("a.toml:2: `functions.a.timeout`: also set in"),
            "{text}"
        );
        assert!(text.contains("runtime.toml line 2"), "{text}");
    }

    #[test]
    fn each_key_keeps_the_file_and_line_it_came_from() {
        // The bad trigger lives in runtime.toml, line 3; the sidecar sets other keys.
        let (_dir, config) = project(&[
            (
                "runtime.toml",
                "[functions.a]\nmemory = \"1MiB\"\ntriggers = [{ http = \"nope\" }]\n",
            ),
            ("functions/a.toml", "\n\ntimeout = \"2s\"\n"),
        ]);
        let text = problems_of(&config, "a");
        assert!(
            text.contains("runtime.toml:3: `functions.a.triggers[0]`"),
            "{text}"
        );
        assert!(!text.contains("a.toml:"), "{text}");
    }

    #[test]
    fn function_config_is_over_shared_config() {
        let (_dir, config) = project(&[(
            "runtime.toml",
            "[config]\ngreeting = \"hello\"\nsize = 1\n[functions.a]\nconfig = { size = 128, on = true }\nmemory = \"1MiB\"\n",
        )]);
        let spec = functions(&config)["a"].clone().unwrap();
        assert_eq!(spec.config["greeting"], Ok("hello".to_string()));
        assert_eq!(spec.config["size"], Ok("128".to_string()));
        assert_eq!(spec.config["on"], Ok("true".to_string()));
        assert_eq!(spec.limits.memory, 1 << 20);
        assert_eq!(spec.limits.timeout, Limits::default().timeout);
    }

    #[test]
    fn a_module_with_no_configuration_is_served_at_its_name() {
        let (_dir, config) = project(&[("functions/hello.wasm", "")]);
        let spec = functions(&config)["hello"].clone().unwrap();
        let [Trigger::Http(http)] = spec.triggers.as_slice() else {
            panic!("{:?}", spec.triggers)
        };
        assert_eq!(http.route.text, "/hello");
        assert!(http.methods.is_empty());
    }

    #[test]
    fn a_module_claimed_by_a_declared_function_belongs_to_it_only() {
        let (_dir, config) = project(&[
            ("runtime.toml", "[functions.y]\nmodule = \"x.wasm\"\n"),
            ("functions/b.toml", "module = \"z.wasm\"\n"),
            ("functions/x.wasm", ""),
            ("functions/z.wasm", ""),
            ("functions/w.wasm", ""),
        ]);
        let names: Vec<String> = functions(&config).into_keys().collect();
        assert_eq!(names, ["b", "w", "y"]);
    }
}
