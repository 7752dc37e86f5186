//! `runtime.toml` and `functions/NAME.toml`: the raw serde schema, and its validation into
//! the typed [`Config`] that everything after this module takes. Every default lives here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::schedule::Schedule;

/// The validated configuration of one host.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `runtime.toml` this came from (it may not exist: then everything is default).
    pub path: PathBuf,
    pub host: HostSettings,
    pub defaults: Limits,
    /// The shared `[config]` table, values resolved.
    pub shared: BTreeMap<String, String>,
    /// Functions declared in `runtime.toml` (sidecars are merged in by [`function_spec`]).
    pub declared: BTreeMap<String, RawFunctionAt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    pub listen: SocketAddr,
    pub functions_dir: PathBuf,
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub max_concurrency: usize,
    pub retention: Duration,
    pub admin_token: Option<String>,
}

/// Limits of one invocation; `[defaults]` and each function's own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory: u64,
    pub timeout: Duration,
    pub fuel: Option<u64>,
    pub max_output: usize,
    pub retry: Retry,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

/// One function, validated: what a module in `functions/` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub module: PathBuf,
    pub limits: Limits,
    pub concurrency: Option<usize>,
    pub triggers: Vec<Trigger>,
    pub dirs: Vec<DirMount>,
    /// The function's `config` over the shared `[config]`.
    pub config: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Http(HttpTrigger),
    Timer(TimerTrigger),
    Watch(WatchTrigger),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpTrigger {
    pub route: Route,
    /// Upper-case method names; empty means every method.
    pub methods: Vec<String>,
    pub mode: HttpMode,
    pub max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    Sync,
    Async,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimerTrigger {
    pub schedule: Schedule,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub run_on_startup: bool,
}

/// What an occurrence does while the previous run of the timer is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Recorded as `skipped`.
    Skip,
    /// Runs once after; never more than one waiting.
    Queue,
}

/// What the occurrences missed while the host was down do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// One past-due run, with the first missed occurrence.
    Once,
    None,
}

#[derive(Debug, Clone)]
pub struct WatchTrigger {
    pub folder: PathBuf,
    /// The glob as written (`*.png`); matched against the file name, or against the path
    /// inside the folder when it contains a `/`.
    pub pattern: Option<String>,
    pub matcher: Option<globset::GlobMatcher>,
    pub recursive: bool,
    pub events: Vec<FileEvent>,
    pub debounce: Duration,
}

impl PartialEq for WatchTrigger {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.folder,
            &self.pattern,
            self.recursive,
            &self.events,
            self.debounce,
        ) == (
            &other.folder,
            &other.pattern,
            other.recursive,
            &other.events,
            other.debounce,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileEvent {
    Created,
    Modified,
    Removed,
}

impl FileEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            FileEvent::Created => "created",
            FileEvent::Modified => "modified",
            FileEvent::Removed => "removed",
        }
    }
}

const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq)]
pub struct DirMount {
    pub host: PathBuf,
    pub guest: String,
    pub write: bool,
}

/// A route such as `/users/{id}/files/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub text: String,
    pub segments: Vec<Segment>,
    /// The route ends in `*` and matches any rest of the path.
    pub tail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// Problems found while reading configuration: each names file, line and key.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MEMORY: u64 = 64 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
const DEFAULT_MAX_BODY: u64 = 10 << 20;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
const DEFAULT_MAX_CONCURRENCY: usize = 64;
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

// ---------------------------------------------------------------------------------------
// Raw schema: what serde reads. Nothing outside this module sees these types.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    listen: Option<Spanned<String>>,
    functions: Option<String>,
    data: Option<String>,
    shutdown_timeout: Option<Dur>,
    max_concurrency: Option<usize>,
    retention: Option<Dur>,
    admin_token: Option<RawValue>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Size>,
    timeout: Option<Dur>,
    fuel: Option<u64>,
    max_output: Option<Size>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<Backoff>,
    initial: Option<Dur>,
    max: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Backoff {
    Exponential,
}

/// The keys a function may have, in `[functions.NAME]` or in `functions/NAME.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    module: Option<String>,
    memory: Option<Size>,
    timeout: Option<Dur>,
    fuel: Option<u64>,
    max_output: Option<Size>,
    retry: Option<RawRetry>,
    concurrency: Option<usize>,
    triggers: Option<Vec<Spanned<RawTrigger>>>,
    dirs: Option<Vec<Spanned<RawDir>>>,
    config: Option<BTreeMap<String, Spanned<RawValue>>>,
    env: Option<BTreeMap<String, String>>,
}

/// A function's raw table with where it came from, so later errors can name the line.
#[derive(Debug, Clone)]
pub struct RawFunctionAt {
    raw: RawFunction,
    source: Source,
    /// Top-level keys with their spans, to find a key set in both places.
    keys: BTreeMap<String, Range<usize>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    http: Option<String>,
    methods: Option<Vec<String>>,
    mode: Option<HttpMode>,
    max_body: Option<Size>,
    cron: Option<String>,
    tz: Option<String>,
    every: Option<Dur>,
    at: Option<String>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    run_on_startup: Option<bool>,
    watch: Option<String>,
    pattern: Option<String>,
    recursive: Option<bool>,
    events: Option<Vec<FileEvent>>,
    debounce: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    host: String,
    guest: String,
    #[serde(default)]
    write: bool,
}

/// A configuration value: text (numbers and booleans are taken as their text) or
/// `{ env = "NAME" }`, read from the host's environment so secrets stay out of files.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Env { env: String },
}

/// A duration such as `500ms`, `30s`, `5m`, `7d`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}): write a number and a unit, such as 500ms, 30s, 5m or 7d"
            ))
        })
    }
}

/// A size such as `64MiB`, `512KiB`, `1GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Bytes(n) => Ok(Size(n)),
            Either::Text(text) => parse_size(&text).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {text:?}: write a number and a unit, such as 512KiB, 64MiB or 1GiB"
                ))
            }),
        }
    }
}

/// Sizes are ten lines of parsing; no crate needed.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

// ---------------------------------------------------------------------------------------
// Loading.

/// One TOML source being read: its path and text, to turn spans into lines.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    text: std::sync::Arc<str>,
}

impl Source {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    /// The key whose value sits at `span`: the name before the last `=` on that line,
    /// which is what a user looks for in the file.
    fn key_at(&self, span: &Range<usize>) -> Option<String> {
        let start = span.start.min(self.text.len());
        let end = span.end.min(self.text.len()).max(start);
        // An unknown field's span is the key itself.
        if self.text[end..]
            .trim_start_matches([' ', '\t'])
            .starts_with('=')
        {
            let key = self.text[start..end].trim().trim_matches('"');
            if !key.is_empty() && !key.contains('\n') {
                return Some(key.to_string());
            }
        }
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let before = &self.text[line_start..start];
        let eq = before.rfind('=')?;
        let key = before[..eq]
            .trim()
            .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
            .next()?
            .trim_matches('"');
        (!key.is_empty()).then(|| key.to_string())
    }

    fn problem(
        &self,
        span: Option<&Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            file: self.file.clone(),
            line: span.map(|s| self.line_of(s)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A serde error found under `section` (for example `functions.hello`).
    fn serde_problem(&self, section: &str, err: toml::de::Error) -> Problem {
        let span = err.span();
        let key = match span.as_ref().and_then(|s| self.key_at(s)) {
            Some(key) if !section.is_empty() => format!("{section}.{key}"),
            Some(key) => key,
            None => section.to_string(),
        };
        self.problem(span.as_ref(), &key, err.message().trim_end())
    }
}

fn deserialize_at<T: for<'de> Deserialize<'de>>(
    source: &Source,
    section: &str,
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(err) => {
            problems.0.push(source.serde_problem(section, err));
            None
        }
    }
}

fn parse_table(source: &Source) -> Result<Spanned<DeTable<'_>>, Problem> {
    DeTable::parse(&source.text).map_err(|err| {
        let span = err.span();
        source.problem(
            span.as_ref(),
            "",
            format!("invalid TOML: {}", err.message().trim_end()),
        )
    })
}

/// Reads `runtime.toml` at `path`; a missing file means every default.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Problems(vec![Problem {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }]));
        }
    };
    let source = Source {
        file: path.to_path_buf(),
        text: text.into(),
    };
    let table = parse_table(&source).map_err(|p| Problems(vec![p]))?;

    let mut problems = Problems::default();
    let mut raw_host = RawHost::default();
    let mut raw_defaults = RawLimits::default();
    let mut raw_shared = BTreeMap::new();
    let mut declared = BTreeMap::new();
    for (key, value) in table.into_inner() {
        let span = key.span();
        match key.get_ref().as_ref() {
            "host" => {
                raw_host = deserialize_at(&source, "host", value, &mut problems).unwrap_or_default()
            }
            "defaults" => {
                raw_defaults =
                    deserialize_at(&source, "defaults", value, &mut problems).unwrap_or_default()
            }
            "config" => {
                raw_shared = deserialize_at::<BTreeMap<String, Spanned<RawValue>>>(
                    &source,
                    "config",
                    value,
                    &mut problems,
                )
                .unwrap_or_default()
            }
            "functions" => {
                let DeValue::Table(functions) = value.into_inner() else {
                    problems.0.push(source.problem(
                        Some(&span),
                        "functions",
                        "must be a table of functions, such as [functions.hello]",
                    ));
                    continue;
                };
                for (name, body) in functions {
                    let name_span = name.span();
                    let name = name.get_ref().to_string();
                    let section = format!("functions.{name}");
                    if let Err(why) = check_function_name(&name) {
                        problems
                            .0
                            .push(source.problem(Some(&name_span), &section, why));
                        continue;
                    }
                    if let Some(f) = read_function(&source, &section, body, &mut problems) {
                        declared.insert(name, f);
                    }
                }
            }
            other => problems.0.push(source.problem(
                Some(&span),
                other,
                "unknown section: expected host, defaults, config or functions",
            )),
        }
    }

    let host = host_settings(&source, &root, raw_host, &mut problems);
    let defaults = limits(&raw_defaults, &base_limits());
    let shared = resolve_values(&source, "config", raw_shared, &mut problems);
    if problems.0.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            host,
            defaults,
            shared,
            declared,
        })
    } else {
        Err(problems)
    }
}

fn read_function(
    source: &Source,
    section: &str,
    body: Spanned<DeValue<'_>>,
    problems: &mut Problems,
) -> Option<RawFunctionAt> {
    let keys = match body.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect(),
        _ => BTreeMap::new(),
    };
    let raw = deserialize_at::<RawFunction>(source, section, body, problems)?;
    Some(RawFunctionAt {
        raw,
        source: source.clone(),
        keys,
    })
}

/// Reads a `functions/NAME.toml` sidecar.
pub fn load_sidecar(path: &Path, name: &str) -> Result<RawFunctionAt, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let source = Source {
        file: path.to_path_buf(),
        text: text.into(),
    };
    let table = parse_table(&source).map_err(|p| Problems(vec![p]))?;
    let span = table.span();
    let mut problems = Problems::default();
    let value = Spanned::new(span, DeValue::Table(table.into_inner()));
    let f = read_function(&source, &format!("functions.{name}"), value, &mut problems);
    match f {
        Some(f) if problems.0.is_empty() => Ok(f),
        _ => Err(problems),
    }
}

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

fn base_limits() -> Limits {
    Limits {
        memory: DEFAULT_MEMORY,
        timeout: DEFAULT_TIMEOUT,
        fuel: None,
        max_output: DEFAULT_MAX_OUTPUT,
        retry: Retry {
            attempts: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        },
    }
}

fn limits(raw: &RawLimits, base: &Limits) -> Limits {
    let retry = match &raw.retry {
        None => base.retry.clone(),
        Some(r) => {
            let _ = r.backoff; // exponential is the only kind
            Retry {
                attempts: r.attempts.unwrap_or(base.retry.attempts).max(1),
                initial: r.initial.map_or(base.retry.initial, |d| d.0),
                max: r.max.map_or(base.retry.max, |d| d.0),
            }
        }
    };
    Limits {
        memory: raw.memory.map_or(base.memory, |s| s.0),
        timeout: raw.timeout.map_or(base.timeout, |d| d.0),
        fuel: raw.fuel.or(base.fuel),
        max_output: raw.max_output.map_or(base.max_output, |s| s.0 as usize),
        retry,
    }
}

fn host_settings(
    source: &Source,
    root: &Path,
    raw: RawHost,
    problems: &mut Problems,
) -> HostSettings {
    let listen_span = raw.listen.as_ref().map(Spanned::span);
    let listen_text = raw
        .listen
        .map_or_else(|| DEFAULT_LISTEN.to_string(), Spanned::into_inner);
    let listen = listen_text.parse().unwrap_or_else(|_| {
        problems.0.push(source.problem(
            listen_span.as_ref(),
            "host.listen",
            format!("invalid address {listen_text:?}: write an IP address and a port, such as 127.0.0.1:8080 or 0.0.0.0:8080"),
        ));
        DEFAULT_LISTEN.parse().expect("the default address parses")
    });
    // An admin token read from an unset variable means "no token": the API then stays
    // loopback-only, which is the safe side.
    let admin_token = raw.admin_token.and_then(|v| resolve_value(v).ok());
    HostSettings {
        listen,
        functions_dir: root.join(raw.functions.as_deref().unwrap_or("functions")),
        data_dir: root.join(raw.data.as_deref().unwrap_or(".jobhost")),
        shutdown_timeout: raw
            .shutdown_timeout
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
        max_concurrency: raw
            .max_concurrency
            .unwrap_or(DEFAULT_MAX_CONCURRENCY)
            .max(1),
        retention: raw.retention.map_or(DEFAULT_RETENTION, |d| d.0),
        admin_token,
    }
}

fn resolve_value(v: RawValue) -> Result<String, String> {
    match v {
        RawValue::Text(s) => Ok(s),
        RawValue::Integer(i) => Ok(i.to_string()),
        RawValue::Float(f) => Ok(f.to_string()),
        RawValue::Bool(b) => Ok(b.to_string()),
        RawValue::Env { env } => std::env::var(&env).map_err(|_| {
            format!("the environment variable {env} is not set: set it before starting the host, or give the value in the file")
        }),
    }
}

fn resolve_values(
    source: &Source,
    section: &str,
    raw: BTreeMap<String, Spanned<RawValue>>,
    problems: &mut Problems,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        let span = value.span();
        match resolve_value(value.into_inner()) {
            Ok(v) => {
                out.insert(key, v);
            }
            Err(why) => {
                problems
                    .0
                    .push(source.problem(Some(&span), &format!("{section}.{key}"), why))
            }
        }
    }
    out
}

/// The spec of the function `name` whose module is `module`: the `[functions.NAME]` table
/// and the `functions/NAME.toml` sidecar (either may be missing) over the defaults.
pub fn function_spec(
    config: &Config,
    name: &str,
    sidecar: Option<&RawFunctionAt>,
) -> Result<FunctionSpec, Problems> {
    let declared = config.declared.get(name);
    let mut problems = Problems::default();
    let section = format!("functions.{name}");
    let merged = match (declared, sidecar) {
        (Some(a), Some(b)) => {
            for (key, span) in &b.keys {
                if let Some(first) = a.keys.get(key) {
                    problems.0.push(b.source.problem(
                        Some(span),
                        &format!("{section}.{key}"),
                        format!(
                            "also set in {} line {}: keep it in one place",
                            a.source.file.display(),
                            a.source.line_of(first)
                        ),
                    ));
                }
            }
            Some((merge(&a.raw, &b.raw), b.source.clone()))
        }
        (Some(a), None) => Some((a.raw.clone(), a.source.clone())),
        (None, Some(b)) => Some((b.raw.clone(), b.source.clone())),
        (None, None) => None,
    };
    let functions_dir = &config.host.functions_dir;
    let root = config.path.parent().unwrap_or(Path::new("."));
    let Some((raw, source)) = merged else {
        // A module with no configuration at all is served at /NAME.
        let trigger = default_http_trigger(name).map_err(|why| {
            Problems(vec![Problem {
                file: config.path.clone(),
                line: None,
                key: section.clone(),
                message: why,
            }])
        })?;
        return Ok(FunctionSpec {
            name: name.to_string(),
            module: functions_dir.join(format!("{name}.wasm")),
            limits: config.defaults.clone(),
            concurrency: None,
            triggers: vec![trigger],
            dirs: Vec::new(),
            config: config.shared.clone(),
            env: BTreeMap::new(),
        });
    };

    let raw_limits = RawLimits {
        memory: raw.memory,
        timeout: raw.timeout,
        fuel: raw.fuel,
        max_output: raw.max_output,
        retry: raw.retry.clone(),
    };
    let mut triggers = Vec::new();
    if raw.triggers.is_none() {
        // No `triggers` key at all: served at /NAME, as a module with no configuration is.
        // `triggers = []` means manual calls only.
        triggers.push(default_http_trigger(name).map_err(|why| {
            Problems(vec![Problem {
                file: source.file.clone(),
                line: None,
                key: section.clone(),
                message: why,
            }])
        })?);
    }
    for (i, t) in raw
        .triggers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let span = t.span();
        match trigger(t.into_inner(), root) {
            Ok(t) => triggers.push(t),
            Err(why) => problems.0.push(source.problem(
                Some(&span),
                &format!("{section}.triggers[{i}]"),
                why,
            )),
        }
    }
    let mut dirs = Vec::new();
    for (i, d) in raw.dirs.clone().unwrap_or_default().into_iter().enumerate() {
        let span = d.span();
        let d = d.into_inner();
        if !d.guest.starts_with('/') {
            problems.0.push(source.problem(
                Some(&span),
                &format!("{section}.dirs[{i}].guest"),
                format!(
                    "guest path {:?} must be absolute, such as \"/data\"",
                    d.guest
                ),
            ));
            continue;
        }
        dirs.push(DirMount {
            host: root.join(&d.host),
            guest: d.guest,
            write: d.write,
        });
    }
    let mut function_config = config.shared.clone();
    function_config.extend(resolve_values(
        &source,
        &format!("{section}.config"),
        raw.config.clone().unwrap_or_default(),
        &mut problems,
    ));
    let module = match &raw.module {
        Some(m) => functions_dir.join(m),
        None => functions_dir.join(format!("{name}.wasm")),
    };
    if !problems.0.is_empty() {
        return Err(problems);
    }
    Ok(FunctionSpec {
        name: name.to_string(),
        module,
        limits: limits(&raw_limits, &config.defaults),
        concurrency: raw.concurrency.map(|c| c.max(1)),
        triggers,
        dirs,
        config: function_config,
        env: raw.env.clone().unwrap_or_default(),
    })
}

fn default_http_trigger(name: &str) -> Result<Trigger, String> {
    Ok(Trigger::Http(HttpTrigger {
        route: parse_route(&format!("/{name}"))?,
        methods: Vec::new(),
        mode: HttpMode::Sync,
        max_body: DEFAULT_MAX_BODY,
    }))
}

fn merge(a: &RawFunction, b: &RawFunction) -> RawFunction {
    RawFunction {
        module: a.module.clone().or(b.module.clone()),
        memory: a.memory.or(b.memory),
        timeout: a.timeout.or(b.timeout),
        fuel: a.fuel.or(b.fuel),
        max_output: a.max_output.or(b.max_output),
        retry: a.retry.clone().or(b.retry.clone()),
        concurrency: a.concurrency.or(b.concurrency),
        triggers: a.triggers.clone().or(b.triggers.clone()),
        dirs: a.dirs.clone().or(b.dirs.clone()),
        config: a.config.clone().or(b.config.clone()),
        env: a.env.clone().or(b.env.clone()),
    }
}

fn trigger(t: RawTrigger, root: &Path) -> Result<Trigger, String> {
    let kinds: Vec<&str> = [
        ("http", t.http.is_some()),
        ("cron", t.cron.is_some()),
        ("every", t.every.is_some()),
        ("at", t.at.is_some()),
        ("watch", t.watch.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let [kind] = kinds.as_slice() else {
        return Err(format!(
            "a trigger needs exactly one of http, cron, every, at or watch (found {})",
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            }
        ));
    };
    let mut stray = Vec::new();
    let mut allow = |name: &'static str, set: bool, ok_for: &[&str]| {
        if set && !ok_for.contains(kind) {
            stray.push(name);
        }
    };
    const TIMERS: &[&str] = &["cron", "every", "at"];
    allow("methods", t.methods.is_some(), &["http"]);
    allow("mode", t.mode.is_some(), &["http"]);
    allow("max_body", t.max_body.is_some(), &["http"]);
    allow("tz", t.tz.is_some(), &["cron"]);
    allow("overlap", t.overlap.is_some(), TIMERS);
    allow("catch_up", t.catch_up.is_some(), TIMERS);
    allow("run_on_startup", t.run_on_startup.is_some(), TIMERS);
    allow("pattern", t.pattern.is_some(), &["watch"]);
    allow("recursive", t.recursive.is_some(), &["watch"]);
    allow("events", t.events.is_some(), &["watch"]);
    allow("debounce", t.debounce.is_some(), &["watch"]);
    if !stray.is_empty() {
        return Err(format!(
            "{} does not apply to a {kind} trigger",
            stray.join(", ")
        ));
    }
    match *kind {
        "http" => {
            let route = parse_route(t.http.as_deref().unwrap_or_default())?;
            let mut methods = BTreeSet::new();
            for m in t.methods.unwrap_or_default() {
                let upper = m.to_ascii_uppercase();
                if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(format!(
                        "invalid method {m:?} in methods: use names such as GET or POST"
                    ));
                }
                methods.insert(upper);
            }
            Ok(Trigger::Http(HttpTrigger {
                route,
                methods: methods.into_iter().collect(),
                mode: t.mode.unwrap_or(HttpMode::Sync),
                max_body: t.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0),
            }))
        }
        "watch" => {
            let folder = t.watch.unwrap_or_default();
            if folder.is_empty() {
                return Err("watch needs a folder, such as \"data/inbox\"".to_string());
            }
            let matcher = match &t.pattern {
                Some(p) => Some(
                    globset::Glob::new(p)
                        .map_err(|e| {
                            format!("pattern {p:?} is not a glob ({e}), such as \"*.png\"")
                        })?
                        .compile_matcher(),
                ),
                None => None,
            };
            let events = t
                .events
                .unwrap_or_else(|| vec![FileEvent::Created, FileEvent::Modified]);
            if events.is_empty() {
                return Err("events is empty: list some of created, modified, removed".to_string());
            }
            Ok(Trigger::Watch(WatchTrigger {
                folder: root.join(folder),
                pattern: t.pattern,
                matcher,
                recursive: t.recursive.unwrap_or(false),
                events,
                debounce: t.debounce.map_or(DEFAULT_DEBOUNCE, |d| d.0),
            }))
        }
        kind => {
            let schedule = match kind {
                "cron" => Schedule::cron(t.cron.as_deref().unwrap_or_default(), t.tz.as_deref())?,
                "every" => Schedule::every(t.every.map(|d| d.0).unwrap_or_default())?,
                _ => Schedule::at(t.at.as_deref().unwrap_or_default())?,
            };
            Ok(Trigger::Timer(TimerTrigger {
                schedule,
                overlap: t.overlap.unwrap_or(Overlap::Skip),
                catch_up: t.catch_up.unwrap_or(CatchUp::Once),
                run_on_startup: t.run_on_startup.unwrap_or(false),
            }))
        }
    }
}

/// Parses a route: `/`, literal segments, `{name}` segments and a final `*`.
pub fn parse_route(text: &str) -> Result<Route, String> {
    if !text.starts_with('/') {
        return Err(format!("route {text:?} must start with '/'"));
    }
    let mut segments = Vec::new();
    let mut tail = false;
    let parts: Vec<&str> = text[1..].split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            if last {
                break; // a trailing slash, or the route "/"
            }
            return Err(format!("route {text:?} has an empty segment"));
        }
        if *part == "*" {
            if !last {
                return Err(format!("route {text:?}: '*' may only be the last segment"));
            }
            tail = true;
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "route {text:?}: parameter {{{name}}} needs a name of letters, digits and '_'"
                ));
            }
            segments.push(Segment::Param(name.to_string()));
        } else if part.contains(['{', '}', '*']) {
            return Err(format!(
                "route {text:?}: segment {part:?} mixes text with '{{', '}}' or '*'"
            ));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    Ok(Route {
        text: text.to_string(),
        segments,
        tail,
    })
}

impl Route {
    /// Matches `path` and returns the `{param}` values.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        if self.tail || parts.next().is_none() {
            Some(params)
        } else {
            None
        }
    }

    /// The shape of the route with parameter names erased: two routes with the same shape
    /// claim the same requests.
    pub fn shape(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(_) => s.push_str("{}"),
            }
        }
        if self.tail {
            s.push_str("/*");
        }
        s
    }

    /// Literal segments outrank parameters, which outrank a tail: `/users/me` wins over
    /// `/users/{id}`, which wins over `/users/*`.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (self.segments.len(), literals, !self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, Problems> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    fn first_problem(text: &str) -> String {
        let problems = load_text(text).expect_err("the configuration should be refused");
        let p = &problems.0[0];
        format!("{}|{}|{}", p.line.unwrap_or(0), p.key, p.message)
    }

    #[test]
    fn missing_file_means_defaults() {
        let config = load(Path::new("/nonexistent/runtime.toml")).unwrap();
        assert_eq!(config.host.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.defaults.memory, 64 << 20);
        assert_eq!(
            config.host.functions_dir,
            Path::new("/nonexistent/functions")
        );
    }

    #[test]
    fn configuration_errors_name_line_and_key() {
        let cases = [
            ("[host]\nlisten = \"x\"\n", "2|host.listen|invalid address"),
            (
                "[defaults]\n\ntimeout = \"3x\"\n",
                "3|defaults.timeout|invalid duration",
            ),
            (
                "[defaults]\nmemory = \"lots\"\n",
                "2|defaults.memory|invalid size",
            ),
            (
                "[host]\nlisen = \"x\"\n",
                "2|host.lisen|unknown field `lisen`",
            ),
            ("[hots]\n", "1|hots|unknown section"),
            (
                "[functions.a]\ntimeout = 5\n",
                "2|functions.a.timeout|invalid type",
            ),
            (
                "[functions.a]\nbogus = 1\n",
                "2|functions.a.bogus|unknown field `bogus`",
            ),
            ("x = [\n", "1||invalid TOML"),
            (
                "[config]\nk = { env = \"JOBHOST_TEST_SURELY_UNSET\" }\n",
                "2|config.k|JOBHOST_TEST_SURELY_UNSET is not set",
            ),
        ];
        for (text, expect) in cases {
            let got = first_problem(text);
            let (want_prefix, want_msg) = expect.rsplit_once('|').unwrap();
            assert!(
                got.starts_with(want_prefix) && got.contains(want_msg),
                "for {text:?}: got {got:?}, want {expect:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let problems = load_text("[host]\nlisen = 1\n[defaults]\ntimeout = \"x\"\n").unwrap_err();
        assert_eq!(problems.0.len(), 2, "{problems}");
    }

    #[test]
    fn trigger_errors_name_the_trigger() {
        let config = load_text(
            "[functions.a]\ntriggers = [\n  { http = \"/a\" },\n  { http = \"a\", methods = [\"GET\"] },\n  { cron = \"* * * * *\", methods = [\"GET\"] },\n]\n",
        )
        .unwrap();
        let problems = function_spec(&config, "a", None).unwrap_err();
        let text = problems.to_string();
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
    fn a_key_in_both_places_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, "[functions.a]\ntimeout = \"1s\"\n").unwrap();
        let sidecar_path = dir.path().join("a.toml");
        std::fs::write(&sidecar_path, "memory = \"1MiB\"\ntimeout = \"2s\"\n").unwrap();
        let config = load(&path).unwrap();
        let sidecar = load_sidecar(&sidecar_path, "a").unwrap();
        let text = function_spec(&config, "a", Some(&sidecar))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("a.toml:2: `functions.a.timeout`: also set in"),
            "{text}"
        );
    }

    #[test]
    fn function_config_is_over_shared_config() {
        let config = load_text(
            "[config]\ngreeting = \"hello\"\nsize = 1\n[functions.a]\nconfig = { size = 128, on = true }\nmemory = \"1MiB\"\n",
        )
        .unwrap();
        let spec = function_spec(&config, "a", None).unwrap();
        assert_eq!(spec.config["greeting"], "hello");
        assert_eq!(spec.config["size"], "128");
        assert_eq!(spec.config["on"], "true");
        assert_eq!(spec.limits.memory, 1 << 20);
        assert_eq!(spec.limits.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn a_module_with_no_configuration_is_served_at_its_name() {
        let config = load_text("").unwrap();
        let spec = function_spec(&config, "hello", None).unwrap();
        let [Trigger::Http(http)] = spec.triggers.as_slice() else {
            panic!("{:?}", spec.triggers)
        };
        assert_eq!(http.route.text, "/hello");
        assert!(http.methods.is_empty());
    }

    #[test]
    fn routes_match_params_and_tails() {
        let cases = [
            ("/users/{id}", "/users/7", Some(vec![("id", "7")])),
            ("/users/{id}", "/users/7/x", None),
            ("/files/*", "/files/a/b", Some(vec![])),
            ("/files/*", "/files", Some(vec![])),
            ("/", "/", Some(vec![])),
            ("/hello", "/hello/", Some(vec![])),
            ("/hello", "/helloo", None),
        ];
        for (route, path, expect) in cases {
            let got = parse_route(route).unwrap().matches(path);
            let expect = expect.map(|v| {
                v.into_iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, expect, "{route} against {path}");
        }
        assert!(parse_route("/a/*/b").is_err());
        assert!(parse_route("/a/{}").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10 KiB"), Some(10 << 10));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
    }
}
