//! Configuration values that guests read (`[config]` and a function's `config`): text, or
//! `{ env = "NAME", default = "..." }` read from the host's environment so secrets stay out
//! of files. A variable that is not set is not an error of the configuration: only a guest
//! that reads that key gets one, so one missing secret never stops the other functions.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::source::Source;

/// What a guest reads for a key: the value, or why there is none.
pub type Setting = Result<String, Unset>;

/// A value configured from an environment variable that is not set (and has no default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    pub var: String,
    /// Where it is configured: `runtime.toml:14 config.who`.
    pub whence: String,
}

impl fmt::Display for Unset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the environment variable {} is not set ({}): set it before starting the host, or give a default: {{ env = \"{}\", default = \"...\" }}",
            self.var, self.whence, self.var
        )
    }
}

/// A value as written: text (numbers and booleans are taken as their text) or read from
/// the environment.
#[derive(Debug, Clone)]
pub(crate) enum RawValue {
    Text(String),
    Env {
        var: String,
        default: Option<String>,
    },
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Env {
            env: String,
            default: Option<Scalar>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Integer(i64),
            Float(f64),
            Bool(bool),
        }
        impl Scalar {
            fn text(self) -> String {
                match self {
                    Scalar::Text(s) => s,
                    Scalar::Integer(i) => i.to_string(),
                    Scalar::Float(f) => f.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                }
            }
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Scalar(Scalar),
            Env(Env),
        }
        // serde's own message for an untagged enum names no shape; this one names them all.
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a value is text, a number, true or false, or { env = \"NAME\" } (optionally with default = \"...\")",
            )
        })? {
            Either::Scalar(s) => Ok(RawValue::Text(s.text())),
            Either::Env(e) => Ok(RawValue::Env {
                var: e.env,
                default: e.default.map(Scalar::text),
            }),
        }
    }
}

impl RawValue {
    /// The value now; `Err` names the variable that is not set.
    pub(crate) fn resolve(self) -> Result<String, String> {
        match self {
            RawValue::Text(s) => Ok(s),
            RawValue::Env { var, default } => std::env::var(&var).ok().or(default).ok_or(var),
        }
    }
}

/// Resolves a table of values found under `section` of `source`.
pub(crate) fn resolve(
    source: &Source,
    section: &str,
    raw: &BTreeMap<String, Spanned<RawValue>>,
) -> BTreeMap<String, Setting> {
    raw.iter()
        .map(|(key, value)| {
            let setting = value.get_ref().clone().resolve().map_err(|var| Unset {
                var,
                whence: format!(
                    "{}:{} {section}.{key}",
                    source.file.display(),
                    source.line_of(&value.span())
                ),
            });
            (key.clone(), setting)
        })
        .collect()
}
