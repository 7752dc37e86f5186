//! Where configuration comes from: a TOML file's text, and the problems found in it, each
//! naming the file, the line and the key.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// The spans of a table's keys, so that a problem found after deserializing can still name
/// its line.
pub(crate) fn key_spans(
    value: &Spanned<DeValue<'_>>,
) -> std::collections::BTreeMap<String, Range<usize>> {
    match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect(),
        _ => Default::default(),
    }
}

/// A problem found while reading configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Every problem found, not just the first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

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

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub(crate) fn or<T>(self, value: T) -> Result<T, Problems> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// One TOML file being read: its path and text, to turn spans into lines.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) file: PathBuf,
    text: Arc<str>,
}

impl Source {
    pub(crate) fn new(file: PathBuf, text: String) -> Source {
        Source {
            file,
            text: text.into(),
        }
    }

    /// Reads `file`; `None` text when it does not exist.
    pub(crate) fn read(file: PathBuf) -> Result<Option<Source>, Problem> {
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Some(Source::new(file, text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Problem {
                file,
                line: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }),
        }
    }

    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
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

    pub(crate) fn problem(
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

    /// Deserializes `value`, the value of `key` in `section`; a problem names its line and
    /// its key, or the key inside it that is wrong (`defaults.retry.attempts`).
    pub(crate) fn field<T: for<'de> Deserialize<'de>>(
        &self,
        section: &str,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Result<T, Problem> {
        let whole = value.span();
        T::deserialize(ValueDeserializer::from(value)).map_err(|err| {
            // A value's own check (a bad duration) knows no span: it is the whole value's.
            let span = err.span().or(Some(whole));
            let path = match span.as_ref().and_then(|s| self.key_at(s)) {
                Some(inner) if inner != key => format!("{section}.{key}.{inner}"),
                _ => format!("{section}.{key}"),
            };
            self.problem(span.as_ref(), &path, err.message().trim_end())
        })
    }

    /// Deserializes `value`, found under `section`; a problem names its line and key.
    pub(crate) fn deserialize<T: for<'de> Deserialize<'de>>(
        &self,
        section: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Result<T, Problem> {
        T::deserialize(ValueDeserializer::from(value)).map_err(|e| self.serde_problem(section, e))
    }

    /// The whole file as a table.
    pub(crate) fn table(&self) -> Result<Spanned<DeTable<'_>>, Problem> {
        DeTable::parse(&self.text).map_err(|err| {
            let span = err.span();
            self.problem(
                span.as_ref(),
                "",
                format!("invalid TOML: {}", err.message().trim_end()),
            )
        })
    }
}
