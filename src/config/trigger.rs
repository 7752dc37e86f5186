//! Triggers as configured: each kind's settings (`http`, timers, `watch`, `queue`), read from its
//! table in `triggers = [...]`, and the kind an invocation records (`JOBHOST_TRIGGER`).
//!
//! A new trigger kind is one settings struct here with its `KEYS` and `parse`, one variant
//! of [`Trigger`] (and of [`TriggerKind`]), and its event source under `src/triggers/`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Dur, Size};
use super::route::{Route, parse_route};
use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Http(HttpTrigger),
    Timer(TimerTrigger),
    Watch(WatchTrigger),
    Queue(QueueTrigger),
}

/// What fired an invocation: `JOBHOST_TRIGGER` and the record's `trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerKind {
    Http,
    Timer,
    File,
    Manual,
    Queue,
    /// Started by another invocation's `on_success` or `on_failure`.
    Chain,
}

named!(TriggerKind {
    Http = "http",
    Timer = "timer",
    File = "file",
    Manual = "manual",
    Queue = "queue",
    Chain = "chain",
});

/// A named queue: each message posted to it (`POST /_jobhost/queues/NAME`, `jobhost
/// enqueue`) is one durable invocation of the one function that listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTrigger {
    pub name: String,
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
    pub scope: WatchScope,
}

/// Whose receipts a watch keeps: one set for every host sharing the store (a folder they
/// all see, such as a shared mount, fires once per file), or one per host (a folder local
/// to each machine fires on each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchScope {
    Shared,
    Host,
}

impl PartialEq for WatchTrigger {
    fn eq(&self, other: &Self) -> bool {
        // The matcher is compiled from the pattern.
        (
            &self.folder,
            &self.pattern,
            self.recursive,
            &self.events,
            self.debounce,
            self.scope,
        ) == (
            &other.folder,
            &other.pattern,
            other.recursive,
            &other.events,
            other.debounce,
            other.scope,
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

pub(crate) const DEFAULT_MAX_BODY: u64 = 10 << 20;
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

impl Trigger {
    /// What an invocation this trigger fires records as its trigger.
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Http(_) => TriggerKind::Http,
            Trigger::Timer(_) => TriggerKind::Timer,
            Trigger::Watch(_) => TriggerKind::File,
            Trigger::Queue(_) => TriggerKind::Queue,
        }
    }

    /// The HTTP trigger a function gets when it says nothing: its name as the route.
    pub(crate) fn default_http(name: &str) -> Result<Trigger, String> {
        Ok(Trigger::Http(HttpTrigger {
            route: parse_route(&format!("/{name}"))?,
            methods: Vec::new(),
            mode: HttpMode::Sync,
            max_body: DEFAULT_MAX_BODY,
        }))
    }

    /// Reads one entry of `triggers`; relative folders are taken from `root`.
    pub(crate) fn parse(value: toml::Value, root: &Path) -> Result<Trigger, String> {
        let toml::Value::Table(table) = value else {
            return Err(
                "a trigger is a table, such as { http = \"/hello\" } or { cron = \"0 * * * *\" }"
                    .to_string(),
            );
        };
        // The kind is chosen by the one selecting key the table has.
        let selected: Vec<(&str, &[&str])> = KINDS
            .iter()
            .flat_map(|(selectors, keys)| {
                selectors
                    .iter()
                    .filter(|s| table.contains_key(**s))
                    .map(move |s| (*s, *keys))
            })
            .collect();
        let [(selector, keys)] = selected.as_slice() else {
            let all: Vec<&str> = KINDS.iter().flat_map(|(s, _)| s.iter().copied()).collect();
            let found: Vec<&str> = selected.iter().map(|(s, _)| *s).collect();
            return Err(format!(
                "a trigger needs exactly one of {} (found {})",
                all.join(", "),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            ));
        };
        // A key of another kind is a mistake worth naming as such.
        let stray: Vec<&str> = table
            .keys()
            .map(String::as_str)
            .filter(|k| !keys.contains(k) && KINDS.iter().any(|(_, other)| other.contains(k)))
            .collect();
        if !stray.is_empty() {
            return Err(format!(
                "{} does not apply to a {selector} trigger",
                stray.join(", ")
            ));
        }
        let value = toml::Value::Table(table);
        let message = |e: toml::de::Error| e.message().trim_end().to_string();
        match *selector {
            "http" => HttpTrigger::parse(value.try_into().map_err(message)?).map(Trigger::Http),
            "watch" => {
                WatchTrigger::parse(value.try_into().map_err(message)?, root).map(Trigger::Watch)
            }
            "queue" => QueueTrigger::parse(value.try_into().map_err(message)?).map(Trigger::Queue),
            _ => TimerTrigger::parse(value.try_into().map_err(message)?).map(Trigger::Timer),
        }
    }
}

/// Each kind: the keys that select it, and every key it takes.
const KINDS: &[(&[&str], &[&str])] = &[
    (&["http"], HttpTrigger::KEYS),
    (&["cron", "every", "at"], TimerTrigger::KEYS),
    (&["watch"], WatchTrigger::KEYS),
    (&["queue"], QueueTrigger::KEYS),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    queue: String,
}

impl QueueTrigger {
    const KEYS: &[&str] = &["queue"];

    fn parse(raw: RawQueue) -> Result<QueueTrigger, String> {
        check_queue_name(&raw.queue)?;
        Ok(QueueTrigger { name: raw.queue })
    }
}

/// A queue's name goes in a URL path and a log line: letters, digits, `.`, `_` and `-`.
fn check_queue_name(name: &str) -> Result<(), String> {
    let fits = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "queue name {name:?} is not one: use 1 to 64 letters, digits, '.', '_' or '-', such as \"emails\""
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http: String,
    methods: Option<Vec<String>>,
    mode: Option<HttpMode>,
    max_body: Option<Size>,
}

impl HttpTrigger {
    const KEYS: &[&str] = &["http", "methods", "mode", "max_body"];

    fn parse(raw: RawHttp) -> Result<HttpTrigger, String> {
        let route = parse_route(&raw.http)?;
        let own = ["/healthz", "/metrics"].contains(&route.text.trim_end_matches('/'))
            || route.text.starts_with("/_jobhost");
        if own {
            return Err(format!(
                "route {} is the host's own (/healthz, /metrics and /_jobhost/ are): pick another",
                route.text
            ));
        }
        let mut methods = BTreeSet::new();
        for m in raw.methods.unwrap_or_default() {
            let upper = m.to_ascii_uppercase();
            if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "invalid method {m:?} in methods: use names such as GET or POST"
                ));
            }
            methods.insert(upper);
        }
        Ok(HttpTrigger {
            route,
            methods: methods.into_iter().collect(),
            mode: raw.mode.unwrap_or(HttpMode::Sync),
            max_body: raw.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimer {
    cron: Option<String>,
    tz: Option<String>,
    every: Option<Dur>,
    at: Option<String>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    run_on_startup: Option<bool>,
}

impl TimerTrigger {
    const KEYS: &[&str] = &[
        "cron",
        "tz",
        "every",
        "at",
        "overlap",
        "catch_up",
        "run_on_startup",
    ];

    fn parse(raw: RawTimer) -> Result<TimerTrigger, String> {
        let schedule = match (&raw.cron, raw.every, &raw.at) {
            (Some(cron), _, _) => Schedule::cron(cron, raw.tz.as_deref())?,
            (None, _, _) if raw.tz.is_some() => {
                return Err("tz applies to cron only".to_string());
            }
            (None, Some(every), _) => Schedule::every(every.0)?,
            (None, None, Some(at)) => Schedule::at(at)?,
            (None, None, None) => return Err("a timer needs cron, every or at".to_string()),
        };
        Ok(TimerTrigger {
            schedule,
            overlap: raw.overlap.unwrap_or(Overlap::Skip),
            catch_up: raw.catch_up.unwrap_or(CatchUp::Once),
            run_on_startup: raw.run_on_startup.unwrap_or(false),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    watch: String,
    pattern: Option<String>,
    recursive: Option<bool>,
    events: Option<Vec<FileEvent>>,
    debounce: Option<Dur>,
    scope: Option<WatchScope>,
}

impl WatchTrigger {
    const KEYS: &[&str] = &[
        "watch",
        "pattern",
        "recursive",
        "events",
        "debounce",
        "scope",
    ];

    fn parse(raw: RawWatch, root: &Path) -> Result<WatchTrigger, String> {
        if raw.watch.is_empty() {
            return Err("watch needs a folder, such as \"data/inbox\"".to_string());
        }
        let matcher = match &raw.pattern {
            Some(p) => Some(
                globset::Glob::new(p)
                    .map_err(|e| format!("pattern {p:?} is not a glob ({e}), such as \"*.png\""))?
                    .compile_matcher(),
            ),
            None => None,
        };
        let events = raw
            .events
            .unwrap_or_else(|| vec![FileEvent::Created, FileEvent::Modified]);
        if events.is_empty() {
            return Err("events is empty: list some of created, modified, removed".to_string());
        }
        Ok(WatchTrigger {
            folder: root.join(raw.watch),
            pattern: raw.pattern,
            matcher,
            recursive: raw.recursive.unwrap_or(false),
            events,
            debounce: raw.debounce.map_or(DEFAULT_DEBOUNCE, |d| d.0),
            scope: raw.scope.unwrap_or(WatchScope::Shared),
        })
    }
}

/// One line per trigger, as `jobhost functions` and the API show it.
impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Http(h) => {
                let methods = if h.methods.is_empty() {
                    "*".to_string()
                } else {
                    h.methods.join(",")
                };
                write!(f, "http {methods} {}", h.route.text)?;
                if h.mode == HttpMode::Async {
                    f.write_str(" (async)")?;
                }
                Ok(())
            }
            Trigger::Timer(t) => write!(f, "timer {}", t.schedule.key()),
            Trigger::Watch(w) => write!(f, "watch {}", w.folder.display()),
            Trigger::Queue(q) => write!(f, "queue {}", q.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Trigger, String> {
        let table: toml::Table = toml::from_str(&format!("t = {text}")).unwrap();
        Trigger::parse(table["t"].clone(), Path::new("/project"))
    }

    #[test]
    fn a_trigger_is_chosen_by_its_one_selecting_key() {
        let cases = [
            (r#"{ http = "/a", methods = ["get"] }"#, Ok("http GET /a")),
            (
                r#"{ every = "30s", overlap = "queue" }"#,
                Ok("timer every 30000ms"),
            ),
            (r#"{ watch = "inbox" }"#, Ok("watch /project/inbox")),
            (r#"{ queue = "emails" }"#, Ok("queue emails")),
            (r#"{ queue = "a/b" }"#, Err("queue name \"a/b\" is not one")),
            (
                r#"{ queue = "mail", pattern = "*" }"#,
                Err("pattern does not apply to a queue trigger"),
            ),
            (
                r#"{ methods = ["GET"] }"#,
                Err("exactly one of http, cron, every, at, watch, queue (found none)"),
            ),
            (
                r#"{ cron = "* * * * *", every = "1s" }"#,
                Err("(found cron, every)"),
            ),
            (
                r#"{ cron = "* * * * *", methods = ["GET"] }"#,
                Err("methods does not apply to a cron trigger"),
            ),
            (
                r#"{ http = "/a", bogus = 1 }"#,
                Err("unknown field `bogus`"),
            ),
            (r#"{ http = "a" }"#, Err("route \"a\" must start with '/'")),
            (
                r#"{ every = "1s", tz = "UTC" }"#,
                Err("tz applies to cron only"),
            ),
            (
                r#"{ watch = "inbox", events = [] }"#,
                Err("events is empty"),
            ),
        ];
        for (text, expect) in cases {
            match (parse(text), expect) {
                (Ok(t), Ok(want)) => assert_eq!(t.to_string(), want, "{text}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
