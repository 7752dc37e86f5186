//! A three-step pipeline chained in `runtime.toml` with `on_success`, and the handler its
//! `on_failure` calls: one module, four functions. Which step it is comes from
//! `JOBHOST_FUNCTION`, and each step reads the one before's stdout on stdin:
//!
//! - `pipeline-split`: text -> its words, one per line, lower case;
//! - `pipeline-count`: words -> `COUNT WORD` lines, most frequent first. It fails now and
//!   then on a first attempt (as a flaky service would) and succeeds when retried; a text
//!   with the word `fail` in it fails every attempt, to show the handler;
//! - `pipeline-report`: counts -> `top words: a (3), b (2), c (1)`;
//! - `pipeline-alert`: called with the record of an invocation that is `dead`, as JSON.

use std::collections::BTreeMap;
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    let step = std::env::var("JOBHOST_FUNCTION").unwrap_or_default();
    match step.as_str() {
        "pipeline-split" => {
            for word in input.split(|c: char| !c.is_alphanumeric()) {
                if !word.is_empty() {
                    println!("{}", word.to_lowercase());
                }
            }
        }
        "pipeline-count" => count(&input),
        "pipeline-report" => {
            let top: Vec<String> = input
                .lines()
                .take(3)
                .filter_map(|l| l.split_once(' '))
                .map(|(n, word)| format!("{word} ({n})"))
                .collect();
            println!("top words: {}", top.join(", "));
        }
        "pipeline-alert" => {
            // The record of the dead invocation; a real handler would page someone.
            let field = |name: &str| {
                let key = format!("\"{name}\":\"");
                input
                    .split_once(&key)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map_or("?", |(value, _)| value)
                    .to_string()
            };
            println!(
                "ALERT: {} invocation {} is dead: {}",
                field("function"),
                field("id"),
                field("error")
            );
        }
        other => {
            eprintln!(
                "pipeline: unknown step {other:?}: name the function pipeline-split, -count, -report or -alert"
            );
            std::process::exit(2);
        }
    }
}

fn count(words: &str) {
    let id = std::env::var("JOBHOST_INVOCATION_ID").unwrap_or_default();
    let attempt = std::env::var("JOBHOST_ATTEMPT").unwrap_or_default();
    // About one first attempt in two fails, by the last digit of the invocation's id.
    let flaky = id.ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e']);
    if attempt == "1" && flaky {
        eprintln!("the word service is busy (attempt {attempt}); failing so that jobhost retries");
        std::process::exit(1);
    }
    if words.lines().any(|w| w == "fail") {
        eprintln!("asked to fail (the text has the word `fail`)");
        std::process::exit(1);
    }
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for word in words.lines().filter(|w| !w.is_empty()) {
        *counts.entry(word).or_default() += 1;
    }
    let mut sorted: Vec<(&str, u32)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (word, n) in sorted {
        println!("{n} {word}");
    }
}
