//! The raw schema: what serde reads from `runtime.toml` and `functions/NAME.toml`, before
//! validation. Nothing outside `config` sees these types.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::source::{Problems, Source};
use super::values::RawValue;

/// A section read key by key, so that every bad key of it is reported (serde stops at the
/// first) and each under its own name. Every key is optional.
macro_rules! section {
    ($(#[$doc:meta])* $name:ident { $($key:ident: $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone)]
        pub(crate) struct $name {
            $(pub(crate) $key: Option<$ty>,)+
        }

        impl $name {
            pub(crate) const KEYS: &[&str] = &[$(stringify!($key)),+];

            /// Reads the table `value`, found at `section`; every problem is pushed.
            pub(crate) fn read(
                source: &Source,
                section: &str,
                value: Spanned<DeValue<'_>>,
                problems: &mut Problems,
            ) -> $name {
                let mut out = $name::default();
                let span = value.span();
                let DeValue::Table(table) = value.into_inner() else {
                    problems.push(source.problem(Some(&span), section, "must be a table"));
                    return out;
                };
                for (key, value) in table {
                    match key.get_ref().as_ref() {
                        $(stringify!($key) => match source.field(section, stringify!($key), value) {
                            Ok(v) => out.$key = Some(v),
                            Err(p) => problems.push(p),
                        },)+
                        other => problems.push(source.problem(
                            Some(&key.span()),
                            &format!("{section}.{other}"),
                            format!("unknown field `{other}`, expected one of {}", $name::KEYS.join(", ")),
                        )),
                    }
                }
                out
            }
        }
    };
}

section!(RawHost {
    listen: Spanned<String>,
    functions: String,
    data: String,
    shutdown_timeout: Dur,
    max_concurrency: usize,
    max_module_size: Size,
    max_connections: usize,
    client_timeout: Dur,
    max_body_memory: Size,
    record_excerpt: Size,
    retention: Dur,
    admin_token: Spanned<RawValue>,
    api_hosts: Vec<String>,
    store: Spanned<RawStore>,
    heartbeat: Dur,
    lease: Dur,
    max_chain_depth: u32,
    block_networks: Vec<Spanned<String>>,
    outbound_connect_timeout: Dur,
    outbound_timeout: Dur,
    max_outbound_response: Size,
    max_kv_keys: u64,
    callback_secret: Spanned<RawValue>,
    allowed_callback_hosts: Vec<Spanned<String>>,
    callback_retry: RawRetry,
});

/// `store = "sqlite"` or `store = { postgres = "postgres://..." }` (the URL may come from
/// the environment: `{ postgres = { env = "DATABASE_URL" } }`), with the most connections
/// a host opens (`connections = 8`).
#[derive(Debug, Clone)]
pub(crate) enum RawStore {
    Sqlite,
    Postgres {
        url: RawValue,
        connections: Option<usize>,
    },
}

impl<'de> Deserialize<'de> for RawStore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Postgres {
            postgres: RawValue,
            connections: Option<usize>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Name(String),
            Postgres(Postgres),
        }
        let shapes = "write store = \"sqlite\" (the default), store = { postgres = \"postgres://user@host/db\" } or store = { postgres = { env = \"DATABASE_URL\" } }, with connections = N if you like";
        match Either::deserialize(d).map_err(|_| serde::de::Error::custom(shapes))? {
            Either::Name(name) if name == "sqlite" => Ok(RawStore::Sqlite),
            Either::Name(name) => Err(serde::de::Error::custom(format!(
                "unknown store {name:?}: {shapes}"
            ))),
            Either::Postgres(p) => Ok(RawStore::Postgres {
                url: p.postgres,
                connections: p.connections,
            }),
        }
    }
}

section!(RawLimits {
    memory: Size,
    timeout: Dur,
    fuel: u64,
    max_output: Size,
    retry: RawRetry,
});

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) attempts: Option<u32>,
    /// `exponential` is the only kind; the key is accepted so that files can say so.
    #[allow(dead_code)]
    pub(crate) backoff: Option<Backoff>,
    pub(crate) initial: Option<Dur>,
    pub(crate) max: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backoff {
    Exponential,
}

section!(
    /// The keys a function may have, in `[functions.NAME]` or in `functions/NAME.toml`.
    /// Each trigger's table is read by `config::trigger`, by its kind.
    RawFunction {
        module: String,
        memory: Size,
        timeout: Dur,
        fuel: u64,
        max_output: Size,
        retry: RawRetry,
        concurrency: usize,
        priority: i32,
        triggers: Vec<Spanned<toml::Value>>,
        dirs: Vec<Spanned<RawDir>>,
        config: BTreeMap<String, Spanned<RawValue>>,
        env: BTreeMap<String, String>,
        on_success: Vec<String>,
        on_failure: String,
        allowed_outbound_hosts: Vec<Spanned<String>>,
        key_value_stores: Vec<Spanned<String>>,
        callback: Spanned<String>,
    }
);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDir {
    pub(crate) host: String,
    pub(crate) guest: String,
    #[serde(default)]
    pub(crate) write: bool,
}

/// A duration such as `500ms`, `30s`, `5m`, `7d`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}): write a number and a unit, such as 500ms, 30s, 5m or 7d"
            ))
        })?;
        // Beyond this, adding it to a clock overflows; no setting needs more.
        if duration > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is longer than 100 years: write a shorter one"
            )));
        }
        Ok(Dur(duration))
    }
}

/// The longest duration any setting takes: a hundred years.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A size such as `64MiB`, `512KiB`, `1GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size(pub(crate) u64);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_duration_is_an_error_not_a_panic() {
        let parsed: Result<Dur, _> = toml::from_str::<toml::Table>("d = \"99999999999d\"").unwrap()
            ["d"]
            .clone()
            .try_into();
        let message = parsed.unwrap_err().to_string();
        assert!(message.contains("longer than 100 years"), "{message}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10 KiB"), Some(10 << 10));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
    }

    proptest::proptest! {
        /// Any text as a duration or a size: an answer or an error, never a panic, and no
        /// duration past the limit.
        #[test]
        fn any_duration_or_size_parses_without_panicking(text in "\\PC{0,24}") {
            let table = toml::Table::from_iter([("v".to_string(), toml::Value::String(text.clone()))]);
            if let Ok(d) = table["v"].clone().try_into::<Dur>() {
                proptest::prop_assert!(d.0 <= MAX_DURATION);
            }
            let _ = table["v"].clone().try_into::<Size>();
            let _ = parse_size(&text);
        }

        #[test]
        fn numbers_and_units_near_the_limits_never_panic(n in proptest::num::u64::ANY, unit in "(ns|us|ms|s|m|h|d|w|y|B|KiB|MiB|GiB|KB|MB|GB)") {
            let text = format!("{n}{unit}");
            let table = toml::Table::from_iter([("v".to_string(), toml::Value::String(text.clone()))]);
            let _ = table["v"].clone().try_into::<Dur>();
            let _ = parse_size(&text);
        }
    }
}
