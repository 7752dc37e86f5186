//! What the CLI prints: tables for people, JSON with `--json`.

use crate::api::FunctionView;
use crate::store::{HostView, Record, rfc3339};

/// `1 function`, `2 functions`.
pub(super) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub(super) fn functions(functions: &[FunctionView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(functions)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<26} TRIGGERS / ERROR",
        "NAME", "STATUS", "SHAPE"
    );
    for f in functions {
        let detail = f.error.clone().unwrap_or_else(|| f.triggers.join("; "));
        let status = if f.paused && f.status == "ready" {
            "paused"
        } else {
            f.status
        };
        println!(
            "{:<24} {:<8} {:<26} {detail}",
            f.name,
            status,
            f.shape.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub(super) fn invocations(list: &[Record], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<20} {:<8} {:<9} {:>7} {:<10} {:>9}  ERROR",
        "ID", "FUNCTION", "TRIGGER", "REASON", "ATTEMPT", "STATE", "MS"
    );
    for r in list {
        println!(
            "{:<36} {:<20} {:<8} {:<9} {:>7} {:<10} {:>9}  {}",
            r.id,
            r.function,
            r.trigger,
            r.reason,
            r.attempt,
            r.state,
            r.duration_ms.map_or("-".to_string(), |d| d.to_string()),
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub(super) fn record(r: &Record, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let time = |t: Option<i64>| t.map_or("-".to_string(), rfc3339);
    let cut = |truncated: bool| {
        if truncated {
            " (cut at max_output)"
        } else {
            ""
        }
    };
    println!(
        "invocation {} of {} ({} / {}), attempt {} of {}",
        r.id, r.function, r.trigger, r.reason, r.attempt, r.max_attempts
    );
    println!(
        "state: {}{}",
        r.state,
        r.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    println!(
        "created {}, started {}, finished {}",
        rfc3339(r.created_at),
        time(r.started_at),
        time(r.finished_at)
    );
    if let Some(parent) = &r.parent_id {
        println!("parent: {parent}");
    }
    if let Some(children) = r.children.as_ref().filter(|c| !c.is_empty()) {
        println!("children: {}", children.join(", "));
    }
    if let Some(c) = &r.callback {
        let last = match (c.last_status, &c.last_error) {
            (_, Some(why)) => format!(", last: {why}"),
            (Some(status), None) => format!(", last: {status}"),
            (None, None) => String::new(),
        };
        println!(
            "callback: {} to {} ({} tries{last})",
            c.state, c.url, c.attempts
        );
    }
    println!("--- stdout{} ---", cut(r.stdout_truncated));
    print!("{}", r.stdout);
    println!("--- stderr{} ---", cut(r.stderr_truncated));
    print!("{}", r.stderr);
    Ok(())
}

pub(super) fn hosts(hosts: &[HostView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(hosts)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<24} {:<24} {:<6} {:>7}",
        "HOST", "STARTED", "LAST HEARTBEAT", "ALIVE", "RUNNING"
    );
    for h in hosts {
        println!(
            "{:<36} {:<24} {:<24} {:<6} {:>7}",
            h.id,
            rfc3339(h.started_at),
            rfc3339(h.last_heartbeat),
            if h.alive { "yes" } else { "no" },
            h.running
        );
    }
    Ok(())
}
