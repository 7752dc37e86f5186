//! The tree keeps its shape: every source file says what it owns in a `//!` line, no two
//! modules import each other (directly or round a circle), and ARCHITECTURE.md's codemap
//! names exactly the files under `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, relative to it, with `/` separators.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    let mut out: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    out.sort();
    out
}

/// The module path a file defines: `store/sqlite.rs` -> `store::sqlite`.
fn module_of(file: &str) -> String {
    let stem = file.trim_end_matches(".rs").trim_end_matches("/mod");
    match stem {
        "lib" | "main" => String::new(),
        _ => stem.replace('/', "::"),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `a::b::c` path starting at `text`.
fn path_at(text: &str) -> String {
    let end = text
        .char_indices()
        .find(|&(i, c)| {
            !(is_ident(c)
                || (c == ':' && text[i..].starts_with("::"))
                || (c == ':' && i > 0 && text[..i].ends_with(':')))
        })
        .map_or(text.len(), |(i, _)| i);
    text[..end].trim_end_matches(':').to_string()
}

/// The modules a file's code names through `crate::` (tests left out: they may reach
/// anywhere), including names brought in by `use crate::a::{b, c::d}` and `use crate::a;`
/// followed by `a::b`.
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut paths = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let body = &group[..group.find("};").or_else(|| group.find('}')).unwrap_or(0)];
            for item in body.split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    paths.insert(path_at(item));
                }
            }
        } else {
            let path = path_at(after);
            // `use crate::a::b;` lets the file write `b::c` for `crate::a::b::c`.
            if let Some(alias) = path.rsplit("::").next()
                && after[path.len()..].starts_with(';')
            {
                let mut look = code;
                while let Some(j) = look.find(&format!("{alias}::")) {
                    let before = look[..j].chars().next_back();
                    let tail = &look[j + alias.len() + 2..];
                    if !before.is_some_and(|c| is_ident(c) || c == ':') {
                        paths.insert(format!("{path}::{}", path_at(tail)));
                    }
                    look = tail;
                }
            }
            paths.insert(path);
        }
        rest = after;
    }
    paths
}

#[test]
fn every_source_file_starts_with_a_line_saying_what_it_owns() {
    for file in sources() {
        let text = std::fs::read_to_string(src().join(&file)).unwrap();
        assert!(
            text.starts_with("//!"),
            "src/{file} does not start with a `//!` line saying what it owns"
        );
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let files = sources();
    let modules: BTreeMap<String, String> =
        files.iter().map(|f| (module_of(f), f.clone())).collect();
    // The file that defines the longest known prefix of a path.
    let target = |path: &str| -> Option<String> {
        let segments: Vec<&str> = path.split("::").collect();
        (1..=segments.len())
            .rev()
            .find_map(|k| modules.get(&segments[..k].join("::")).cloned())
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        let out = edges.entry(file.clone()).or_default();
        for path in references(&text) {
            if let Some(t) = target(&path)
                && &t != file
            {
                out.insert(t);
            }
        }
    }
    // A circle is a path from a file back to itself.
    for start in &files {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(trail) = stack.pop() {
            let last = trail.last().unwrap();
            for next in &edges[last] {
                if next == start {
                    panic!(
                        "modules import each other: {} -> {start}",
                        trail.join(" -> ")
                    );
                }
                if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
}

#[test]
fn the_codemap_names_exactly_the_files_under_src() {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let named: BTreeSet<String> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|s| s.strip_prefix("src/"))
        .filter(|s| s.ends_with(".rs") && !s.contains("NAME"))
        .map(str::to_string)
        .collect();
    let files: BTreeSet<String> = sources().into_iter().collect();
    let missing: Vec<_> = files.difference(&named).collect();
    let stale: Vec<_> = named.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's codemap is out of date: not named {missing:?}; named but gone {stale:?}"
    );
}
