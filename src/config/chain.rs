//! Chains between functions (`on_success`, `on_failure`): each must name a function, and
//! no chain may come back to where it started, or every run would start the next forever.

use std::collections::BTreeMap;

use super::function::FunctionSpec;
use super::source::Problems;

/// The chain problems of each function that has some: the key (`on_success` or
/// `on_failure`) and what is wrong with it. Every function on a cycle has it as its
/// problem (the shortest one through it, named step by step), so none of a cycle loads.
pub(crate) fn check(
    specs: &BTreeMap<String, Result<FunctionSpec, Problems>>,
) -> BTreeMap<String, Vec<(&'static str, String)>> {
    let mut found: BTreeMap<String, Vec<(&'static str, String)>> = BTreeMap::new();
    let mut edges: BTreeMap<&str, Vec<(&str, &'static str)>> = BTreeMap::new();
    for (name, spec) in specs {
        let Ok(spec) = spec else { continue };
        let next = spec.on_success.iter().map(|n| (n, "on_success"));
        for (target, key) in next.chain(spec.on_failure.iter().map(|n| (n, "on_failure"))) {
            if specs.contains_key(target) {
                edges.entry(name).or_default().push((target, key));
            } else {
                let known: Vec<&str> = specs.keys().map(String::as_str).collect();
                found.entry(name.clone()).or_default().push((
                    key,
                    format!(
                        "`{target}` is not a function: name one of {} (declared in runtime.toml, or a module in the functions folder)",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    for start in edges.keys() {
        if let Some((path, key)) = cycle_from(&edges, start) {
            found.entry(start.to_string()).or_default().push((
                key,
                format!(
                    "the chain comes back to where it started: {}; a chain (on_failure handlers too) must end, or each run would start the next forever",
                    path.join(" -> ")
                ),
            ));
        }
    }
    found
}

/// A shortest chain from `start` back to it, with the key of its first step.
fn cycle_from<'a>(
    edges: &BTreeMap<&'a str, Vec<(&'a str, &'static str)>>,
    start: &'a str,
) -> Option<(Vec<&'a str>, &'static str)> {
    // Breadth first, so the cycle named is a shortest one.
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for node in frontier {
            for (target, _) in edges.get(node).into_iter().flatten() {
                if *target == start {
                    let mut path = vec![start];
                    let mut at = node;
                    let mut back = Vec::new();
                    while at != start {
                        back.push(at);
                        at = came_from[at];
                    }
                    path.extend(back.into_iter().rev());
                    path.push(start);
                    let first = path[1];
                    let key = edges[start]
                        .iter()
                        .find(|(t, _)| *t == first)
                        .map_or("on_success", |(_, k)| *k);
                    return Some((path, key));
                }
                if !came_from.contains_key(target) && *target != start {
                    came_from.insert(target, node);
                    next.push(*target);
                }
            }
        }
        frontier = next;
    }
    None
}
