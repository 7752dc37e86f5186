//! `runtime.toml` and `functions/NAME.toml`: read, validated, and turned into the typed
//! [`Config`] and [`FunctionSpec`]s that everything after this module takes. Every default
//! lives here, and every problem names the file, the line and the key.
//!
//! - `source`: a file's text and the problems found in it;
//! - `raw`: the serde schema (durations, sizes, the raw sections);
//! - `values`: configuration values for guests, from the file or the environment;
//! - `trigger`, `route`: the trigger kinds and HTTP routes;
//! - `function`: each function's spec from `runtime.toml` and its sidecar.

mod chain;
mod function;
mod outbound;
mod raw;
mod route;
mod source;
mod trigger;
mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

pub use function::{FunctionSpec, check_function_name, check_store_name, functions};
pub use outbound::{AllowedHost, BlockNetworks, Permit, permit};
pub use route::{Route, Segment, parse_route};
pub use source::{Problem, Problems};
pub use trigger::{
    CatchUp, FileEvent, HttpMode, HttpTrigger, Overlap, TimerTrigger, Trigger, TriggerKind,
    WatchScope, WatchTrigger,
};
pub use values::{Setting, Unset};

use function::Section;
use raw::{RawHost, RawLimits, RawStore};
use source::Source;

/// The validated configuration of one host.
#[derive(Debug, Clone)]
pub struct Config {
    /// The absolute path of `runtime.toml` (it may not exist: then everything is default).
    pub path: PathBuf,
    pub host: HostSettings,
    pub defaults: Limits,
    /// The shared `[config]` table.
    pub shared: BTreeMap<String, Setting>,
    /// Functions declared in `runtime.toml`; [`functions`] adds their sidecars.
    pub(crate) declared: BTreeMap<String, Section>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    pub listen: SocketAddr,
    /// Absolute, as every path in a `Config` is.
    pub functions_dir: PathBuf,
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub max_concurrency: usize,
    /// Connections open at once; more wait in the listen queue until one closes.
    pub max_connections: usize,
    /// How long the host waits for a client that sends nothing: for a request's headers,
    /// for the next part of its body, and on an idle kept-alive connection.
    pub client_timeout: Duration,
    /// Request bodies held in memory at once, all requests together (a command's stdin is
    /// its whole body); past it a request waits up to `client_timeout`, then answers 503.
    pub max_body_memory: u64,
    /// The largest module the host reads; a bigger file (or one that is not a regular
    /// file: a device, a FIFO) is refused before it is read.
    pub max_module_size: u64,
    /// How much of the payload, stdout and stderr a synchronous invocation's record keeps,
    /// and how much of each a list of records shows.
    pub record_excerpt: usize,
    pub retention: Duration,
    pub admin_token: Option<String>,
    /// Names besides the listen address and `localhost` that the status API answers to
    /// (its `Host` header), for a host reached by name without a token.
    pub api_hosts: Vec<String>,
    pub store: StoreSettings,
    /// How often the host says in the store that it is alive.
    pub heartbeat: Duration,
    /// A host silent this long is taken for dead: its running work runs again elsewhere.
    pub lease: Duration,
    /// How many steps a chain of guest `enqueue`s (and `on_success`) may take; deeper,
    /// an enqueue fails with "chain too deep".
    pub max_chain_depth: u32,
    /// Guests' outbound HTTP (and completion callbacks).
    pub outbound: OutboundSettings,
    /// The most keys one key-value store may hold.
    pub max_kv_keys: u64,
    /// Completion callbacks: where they may go, how they are signed and retried.
    pub callbacks: CallbackSettings,
}

/// `[host] callback_secret`, `allowed_callback_hosts` and `callback_retry`.
#[derive(Clone, PartialEq)]
pub struct CallbackSettings {
    /// The HMAC-SHA256 key of `X-Jobhost-Signature`; callbacks need one.
    pub secret: Option<String>,
    /// The environment variable `callback_secret` names, when it is not set.
    pub unset_variable: Option<String>,
    pub allowed: Vec<AllowedHost>,
    pub retry: Retry,
}

impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("unset_variable", &self.unset_variable)
            .field("allowed", &self.allowed)
            .field("retry", &self.retry)
            .finish()
    }
}

impl CallbackSettings {
    /// Why `url` cannot be a callback here, if it cannot.
    pub fn refuses(&self, url: &str) -> Option<String> {
        let uri = url.parse::<http::Uri>().ok();
        let Some((scheme, host)) = uri
            .as_ref()
            .and_then(|u| Some((u.scheme_str()?, u.host()?)))
        else {
            return Some(format!(
                "callback {url:?} is not a URL: write one such as https://example.com/done"
            ));
        };
        if self.secret.is_none() {
            return Some(match &self.unset_variable {
                Some(var) => format!(
                    "callbacks are signed with [host] callback_secret, which comes from the environment variable {var}: it is not set; set it before starting the host"
                ),
                None => "callbacks are signed with [host] callback_secret: set it (receivers verify X-Jobhost-Signature with it)".to_string(),
            });
        }
        let port = uri.as_ref().and_then(http::Uri::port_u16);
        if permit(&self.allowed, scheme, host, port) == Permit::Denied {
            let allowed: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            return Some(format!(
                "callback {url:?} is not in [host] allowed_callback_hosts ({}): add its scheme://host[:port]",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        None
    }
}

/// How the host makes HTTP requests for guests and callbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundSettings {
    /// No name may resolve into these (an allowlist entry written as an IP is exempt).
    pub block_networks: BlockNetworks,
    pub connect_timeout: Duration,
    /// For the answer's head, and then between parts of its body.
    pub timeout: Duration,
    /// The largest answer body a guest may read from one request.
    pub max_response: u64,
}

impl Default for OutboundSettings {
    fn default() -> OutboundSettings {
        OutboundSettings {
            block_networks: BlockNetworks::default(),
            connect_timeout: DEFAULT_OUTBOUND_CONNECT_TIMEOUT,
            timeout: DEFAULT_OUTBOUND_TIMEOUT,
            max_response: DEFAULT_MAX_OUTBOUND_RESPONSE,
        }
    }
}

/// Where the host keeps invocations, timer cursors and watch receipts.
#[derive(Clone, PartialEq)]
pub enum StoreSettings {
    /// `data/jobhost.db`: the embedded default, for one host.
    Sqlite,
    /// A PostgreSQL database that several hosts share; the URL as given (it may hold a
    /// password, so `Debug` leaves it out), and the most connections this host opens to it
    /// (besides one that listens for new work and one for the queue worker's claims).
    Postgres { url: String, connections: usize },
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSettings::Sqlite => f.write_str("Sqlite"),
            StoreSettings::Postgres { .. } => f.write_str("Postgres { .. }"),
        }
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct DirMount {
    pub host: PathBuf,
    pub guest: String,
    pub write: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Connections a host opens to PostgreSQL at most: a few per database core serve best, so
/// a cluster's hosts together should not hold many more than that.
const DEFAULT_STORE_CONNECTIONS: usize = 8;
const DEFAULT_MAX_CONNECTIONS: usize = 1000;
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BODY_MEMORY: u64 = 256 << 20;
const DEFAULT_MAX_MODULE_SIZE: u64 = 256 << 20;
const DEFAULT_MAX_CHAIN_DEPTH: u32 = 100;
const DEFAULT_RECORD_EXCERPT: usize = 4 << 10;
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_OUTBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_OUTBOUND_RESPONSE: u64 = 16 << 20;
const DEFAULT_MAX_KV_KEYS: u64 = 100_000;
const DEFAULT_CALLBACK_RETRY: Retry = Retry {
    attempts: 10,
    initial: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 64 << 20,
            timeout: Duration::from_secs(30),
            fuel: None,
            max_output: 1 << 20,
            retry: Retry {
                attempts: 3,
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
        }
    }
}

impl HostSettings {
    /// What in these settings cannot work, as (key, why).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.client_timeout.is_zero() {
            out.push((
                "client_timeout",
                "must be more than 0s: no client could send a request in no time".to_string(),
            ));
        }
        if self.max_body_memory == 0 {
            out.push((
                "max_body_memory",
                "must be more than 0 bytes: no request body could be read".to_string(),
            ));
        }
        if self.outbound.connect_timeout.is_zero() {
            out.push((
                "outbound_connect_timeout",
                "must be more than 0s".to_string(),
            ));
        }
        if self.outbound.timeout.is_zero() {
            out.push(("outbound_timeout", "must be more than 0s".to_string()));
        }
        if self.heartbeat.is_zero() {
            out.push(("heartbeat", "must be more than 0s".to_string()));
        } else if self.lease < 2 * self.heartbeat {
            out.push((
                "lease",
                format!(
                    "{:?} is less than two heartbeats ({:?} each): a host that is one beat late would be taken for dead; make the lease longer or the heartbeat shorter",
                    self.lease, self.heartbeat
                ),
            ));
        }
        out
    }
}

/// The largest memory a guest may have: a 32-bit memory's whole address space.
const MAX_MEMORY: u64 = 4 << 30;
/// A WebAssembly page: the least memory that lets a guest that has any memory start.
const WASM_PAGE: u64 = 64 << 10;

impl Limits {
    /// What in these limits cannot work, as (key, why).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.timeout.is_zero() {
            out.push((
                "timeout",
                "must be more than 0s: no guest could run".to_string(),
            ));
        }
        if self.memory < WASM_PAGE {
            out.push((
                "memory",
                format!(
                    "{} bytes is less than one WebAssembly page (64KiB)",
                    self.memory
                ),
            ));
        }
        if self.memory > MAX_MEMORY {
            out.push((
                "memory",
                "is more than 4GiB, the most a 32-bit guest memory can hold".to_string(),
            ));
        }
        out
    }

    fn from_raw(raw: &RawLimits, base: &Limits) -> Limits {
        let retry = match &raw.retry {
            None => base.retry.clone(),
            Some(r) => Retry {
                attempts: r.attempts.unwrap_or(base.retry.attempts).max(1),
                initial: r.initial.map_or(base.retry.initial, |d| d.0),
                max: r.max.map_or(base.retry.max, |d| d.0),
            },
        };
        Limits {
            memory: raw.memory.map_or(base.memory, |s| s.0),
            timeout: raw.timeout.map_or(base.timeout, |d| d.0),
            fuel: raw.fuel.or(base.fuel),
            max_output: raw.max_output.map_or(base.max_output, |s| s.0 as usize),
            retry,
        }
    }
}

impl Config {
    /// The folder of `runtime.toml`: relative paths in the configuration start here, never
    /// at the process's working directory.
    pub fn root(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// `path` made absolute once, with its folder's symlinks resolved, so that it compares
/// equal to what a file watcher reports, whatever the working directory was.
fn absolute(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map_or_else(|_| path.clone(), |dir| dir.join(name)),
        _ => path,
    }
}

/// Reads `runtime.toml` at `path`; a missing file means every default.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let path = absolute(path);
    let source = Source::read(path.clone())
        .map_err(|p| Problems(vec![p]))?
        .unwrap_or_else(|| Source::new(path.clone(), String::new()));
    let table = source.table().map_err(|p| Problems(vec![p]))?;

    let mut problems = Problems::default();
    let mut raw_host = RawHost::default();
    let mut host_keys = BTreeMap::new();
    let mut raw_defaults = RawLimits::default();
    let mut shared = BTreeMap::new();
    let mut declared = BTreeMap::new();
    for (key, value) in table.into_inner() {
        let span = key.span();
        let section = key.get_ref().as_ref();
        match section {
            "host" => {
                host_keys = source::key_spans(&value);
                raw_host = RawHost::read(&source, section, value, &mut problems);
            }
            "defaults" => {
                let keys = source::key_spans(&value);
                let raw = RawLimits::read(&source, section, value, &mut problems);
                for (key, why) in Limits::from_raw(&raw, &Limits::default()).problems() {
                    let span = keys.get(key).unwrap_or(&span);
                    problems.push(source.problem(Some(span), &format!("defaults.{key}"), why));
                }
                raw_defaults = raw;
            }
            "config" => match source.deserialize(section, value) {
                Ok(raw) => shared = values::resolve(&source, section, &raw),
                Err(p) => problems.push(p),
            },
            "functions" => {
                let DeValue::Table(functions) = value.into_inner() else {
                    problems.push(source.problem(
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
                        problems.push(source.problem(Some(&name_span), &section, why));
                        continue;
                    }
                    let f = Section::read(&source, &section, body, &mut problems);
                    declared.insert(name, f);
                }
            }
            other => problems.push(source.problem(
                Some(&span),
                other,
                "unknown section: expected host, defaults, config or functions",
            )),
        }
    }

    let root = path.parent().unwrap_or(Path::new("/"));
    let host = host_settings(&source, root, raw_host, &mut problems);
    for (key, why) in host.problems() {
        let span = host_keys.get(key);
        problems.push(source.problem(span, &format!("host.{key}"), why));
    }
    let defaults = Limits::from_raw(&raw_defaults, &Limits::default());
    problems.or(Config {
        path,
        host,
        defaults,
        shared,
        declared,
    })
}

fn host_settings(
    source: &Source,
    root: &Path,
    raw: RawHost,
    problems: &mut Problems,
) -> HostSettings {
    let listen_span = raw.listen.as_ref().map(toml::Spanned::span);
    let listen_text = raw
        .listen
        .map_or_else(|| DEFAULT_LISTEN.to_string(), toml::Spanned::into_inner);
    let listen = listen_text.parse().unwrap_or_else(|_| {
        problems.push(source.problem(
            listen_span.as_ref(),
            "host.listen",
            format!("invalid address {listen_text:?}: write an IP address and a port, such as 127.0.0.1:8080 or 0.0.0.0:8080"),
        ));
        DEFAULT_LISTEN.parse().expect("the default address parses")
    });
    // An admin token read from an unset variable means "no token": the API then stays
    // loopback-only, which is the safe side.
    let admin_token = raw.admin_token.and_then(|v| {
        let span = v.span();
        let token = v.into_inner().resolve().ok()?;
        if token.trim().is_empty() {
            problems.push(source.problem(
                Some(&span),
                "host.admin_token",
                "the token is empty: set a long random one, or leave admin_token out to keep the API on loopback",
            ));
        }
        Some(token)
    });
    let store = match raw.store {
        None => StoreSettings::Sqlite,
        Some(value) => {
            let span = value.span();
            match value.into_inner() {
                RawStore::Sqlite => StoreSettings::Sqlite,
                RawStore::Postgres { url, connections } => match url.resolve() {
                    Ok(url) => {
                        if let Err(e) = url.parse::<tokio_postgres::Config>() {
                            problems.push(source.problem(
                                Some(&span),
                                "host.store.postgres",
                                format!("invalid PostgreSQL URL ({e}): write postgres://user:password@host:5432/database"),
                            ));
                        }
                        if connections == Some(0) {
                            problems.push(source.problem(
                                Some(&span),
                                "host.store.connections",
                                "a host needs at least one connection: write connections = 1 or more, or leave it out for the default (8)".to_string(),
                            ));
                        }
                        StoreSettings::Postgres {
                            url,
                            connections: connections.unwrap_or(DEFAULT_STORE_CONNECTIONS).max(1),
                        }
                    }
                    Err(var) => {
                        problems.push(source.problem(
                            Some(&span),
                            "host.store.postgres",
                            format!("the environment variable {var} is not set: set it to the database URL (postgres://user:password@host:5432/database) before starting the host"),
                        ));
                        StoreSettings::Sqlite
                    }
                },
            }
        }
    };
    let block_networks = match &raw.block_networks {
        None => BlockNetworks::default(),
        Some(list) => {
            let texts: Vec<&str> = list.iter().map(|e| e.get_ref().as_str()).collect();
            BlockNetworks::parse(&texts).unwrap_or_else(|(i, why)| {
                problems.push(source.problem(
                    Some(&list[i].span()),
                    &format!("host.block_networks[{i}]"),
                    why,
                ));
                BlockNetworks::default()
            })
        }
    };
    let mut unset_variable = None;
    let secret = raw.callback_secret.and_then(|v| {
        let span = v.span();
        match v.into_inner().resolve() {
            Ok(secret) if secret.trim().is_empty() => {
                problems.push(source.problem(
                    Some(&span),
                    "host.callback_secret",
                    "the secret is empty: set a long random one",
                ));
                None
            }
            Ok(secret) => Some(secret),
            // Unset: callbacks are refused, each naming the variable.
            Err(var) => {
                unset_variable = Some(var);
                None
            }
        }
    });
    let mut allowed = Vec::new();
    for (i, entry) in raw.allowed_callback_hosts.iter().flatten().enumerate() {
        match entry.get_ref().parse::<AllowedHost>() {
            Ok(a) => allowed.push(a),
            Err(why) => problems.push(source.problem(
                Some(&entry.span()),
                &format!("host.allowed_callback_hosts[{i}]"),
                why,
            )),
        }
    }
    let retry = match &raw.callback_retry {
        None => DEFAULT_CALLBACK_RETRY,
        Some(r) => Retry {
            attempts: r.attempts.unwrap_or(DEFAULT_CALLBACK_RETRY.attempts).max(1),
            initial: r.initial.map_or(DEFAULT_CALLBACK_RETRY.initial, |d| d.0),
            max: r.max.map_or(DEFAULT_CALLBACK_RETRY.max, |d| d.0),
        },
    };
    let callbacks = CallbackSettings {
        secret,
        unset_variable,
        allowed,
        retry,
    };
    let outbound = OutboundSettings {
        block_networks,
        connect_timeout: raw
            .outbound_connect_timeout
            .map_or(DEFAULT_OUTBOUND_CONNECT_TIMEOUT, |d| d.0),
        timeout: raw
            .outbound_timeout
            .map_or(DEFAULT_OUTBOUND_TIMEOUT, |d| d.0),
        max_response: raw
            .max_outbound_response
            .map_or(DEFAULT_MAX_OUTBOUND_RESPONSE, |s| s.0),
    };
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
        max_connections: raw
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
            .max(1),
        client_timeout: raw.client_timeout.map_or(DEFAULT_CLIENT_TIMEOUT, |d| d.0),
        max_body_memory: raw.max_body_memory.map_or(DEFAULT_MAX_BODY_MEMORY, |s| s.0),
        max_module_size: raw
            .max_module_size
            .map_or(DEFAULT_MAX_MODULE_SIZE, |s| s.0)
            .max(1),
        record_excerpt: raw
            .record_excerpt
            .map_or(DEFAULT_RECORD_EXCERPT, |s| s.0 as usize),
        retention: raw.retention.map_or(DEFAULT_RETENTION, |d| d.0),
        admin_token,
        api_hosts: raw
            .api_hosts
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        store,
        heartbeat: raw.heartbeat.map_or(DEFAULT_HEARTBEAT, |d| d.0),
        lease: raw.lease.map_or(DEFAULT_LEASE, |d| d.0),
        max_chain_depth: raw.max_chain_depth.unwrap_or(DEFAULT_MAX_CHAIN_DEPTH),
        outbound,
        max_kv_keys: raw.max_kv_keys.unwrap_or(DEFAULT_MAX_KV_KEYS),
        callbacks,
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
    fn a_relative_config_path_is_made_absolute_once() {
        let config = load(Path::new("runtime.toml")).unwrap();
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(config.path, cwd.join("runtime.toml"));
        assert_eq!(config.host.functions_dir, cwd.join("functions"));
        assert_eq!(config.host.data_dir, cwd.join(".jobhost"));
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
                "[config]\nk = { env = \"X\", bogus = 1 }\n",
                "2|config.k|{ env = \"NAME\" }",
            ),
            (
                "[defaults]\nmemory = \"1MiB\"\ntimeout = \"0s\"\n",
                "3|defaults.timeout|must be more than 0s",
            ),
            (
                "[defaults]\nmemory = 0\n",
                "2|defaults.memory|less than one WebAssembly page",
            ),
            (
                "[defaults]\n\nmemory = \"5GiB\"\n",
                "3|defaults.memory|more than 4GiB",
            ),
            (
                "[host]\nlisten = \"127.0.0.1:0\"\nclient_timeout = \"0s\"\n",
                "3|host.client_timeout|must be more than 0s",
            ),
            (
                "[host]\nmax_body_memory = 0\n",
                "2|host.max_body_memory|must be more than 0 bytes",
            ),
            (
                "[host]\nretention = \"99999999999d\"\n",
                "2|host.retention|longer than 100 years",
            ),
            (
                "[host]\nheartbeat = \"20s\"\nlease = \"30s\"\n",
                "3|host.lease|less than two heartbeats",
            ),
            (
                "[host]\nheartbeat = \"0s\"\n",
                "2|host.heartbeat|more than 0s",
            ),
            ("[host]\nstore = \"mysql\"\n", "2|host.store|unknown store"),
            (
                "[host]\nstore = { sqlite = true }\n",
                "2|host.store|store = { postgres =",
            ),
            (
                "[host]\nstore = { postgres = \"postgres://h:port/db\" }\n",
                "2|host.store.postgres|invalid PostgreSQL URL",
            ),
            (
                "[host]\nstore = { postgres = \"postgres://h/db\", connections = 0 }\n",
                "2|host.store.connections|at least one connection",
            ),
            (
                "[host]\nstore = { postgres = \"postgres://h/db\", connections = \"many\" }\n",
                "2|host.store|connections = N",
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
    fn a_postgres_store_opens_the_connections_it_is_given_or_eight() {
        let connections = |text: &str| match load_text(text).unwrap().host.store {
            StoreSettings::Postgres { connections, .. } => connections,
            StoreSettings::Sqlite => panic!("not a PostgreSQL store"),
        };
        let url = "postgres://u@h/db";
        assert_eq!(
            connections(&format!("[host]\nstore = {{ postgres = \"{url}\" }}\n")),
            8
        );
        assert_eq!(
            connections(&format!(
                "[host]\nstore = {{ postgres = \"{url}\", connections = 3 }}\n"
            )),
            3
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let problems = load_text("[host]\nlisen = 1\n[defaults]\ntimeout = \"x\"\n").unwrap_err();
        assert_eq!(problems.0.len(), 2, "{problems}");
    }

    #[test]
    fn every_problem_of_a_table_is_reported_under_its_own_key() {
        let problems = load_text(
            "[host]\nlisen = 1\nlisten = \"x\"\nretention = \"3x\"\n[defaults]\nretry = { attempts = \"many\" }\n[functions.a]\nbogus = 1\nmemory = \"lots\"\n",
        )
        .unwrap_err();
        let got: Vec<String> = problems
            .0
            .iter()
            .map(|p| format!("{}|{}", p.line.unwrap_or(0), p.key))
            .collect();
        for want in [
            "2|host.lisen",
            "3|host.listen",
            "4|host.retention",
            "6|defaults.retry.attempts",
            "8|functions.a.bogus",
            "9|functions.a.memory",
        ] {
            assert!(got.contains(&want.to_string()), "{want} not in {got:?}");
        }
        assert_eq!(got.len(), 6, "{problems}");
    }

    #[test]
    fn an_unset_environment_variable_is_not_a_configuration_error() {
        let config = load_text(
            "[config]\nk = { env = \"JOBHOST_TEST_SURELY_UNSET\" }\nd = { env = \"JOBHOST_TEST_SURELY_UNSET\", default = 7 }\n",
        )
        .unwrap();
        let unset = config.shared["k"].clone().unwrap_err();
        assert_eq!(unset.var, "JOBHOST_TEST_SURELY_UNSET");
        assert!(unset.whence.ends_with("runtime.toml:2 config.k"), "{unset}");
        assert_eq!(config.shared["d"], Ok("7".to_string()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Any text as runtime.toml: a configuration or problems, never a panic; every
        /// problem names the file.
        #[test]
        fn any_runtime_toml_loads_or_is_refused_without_panicking(
            text in "(\\[(host|defaults|config|functions\\.a)\\]\n|[a-z_]{1,16} = (\"[a-z0-9 /*{}.:]{0,12}\"|[0-9]{1,20}|true|\\[\\{ ?(http|cron|every|watch|at) = \"[/a-z0-9* ]{0,10}\" ?\\}\\]|\\{ [a-z]{1,8} = [0-9]{1,3} \\})\n|[\\[\\]{}=\"#\n a-z0-9.]{0,12}){0,12}"
        ) {
            if let Err(problems) = load_text(&text) {
                for p in &problems.0 {
                    proptest::prop_assert!(p.file.ends_with("runtime.toml"), "{p}");
                }
            }
        }
    }
}
