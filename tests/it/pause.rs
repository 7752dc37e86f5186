//! Operating functions without editing files: pausing one (the README's "Pausing a
//! function": its timers fire no runs and its queued work waits, kept in the store through
//! restarts, until it is resumed), and retrying its dead invocations at once.

use std::time::Duration;

use crate::support::{Host, P1, Project, probe, state, wait_until};

fn project() -> Project {
    let project = Project::new(
        "[functions.tick]\nmodule = \"probe.wasm\"\ntriggers = [{ every = \"200ms\" }]\nenv = { PROBE_EVENT = \"echo tick\" }\n",
    );
    project.write("functions/probe.wasm", &std::fs::read(probe(P1)).unwrap());
    project
}

/// The ids of `tick`'s timer runs recorded so far.
fn timer_runs(host: &Host) -> Vec<String> {
    host.json("/_jobhost/invocations?function=tick&trigger=timer&limit=1000")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pause_stops_a_functions_timer_runs_and_holds_its_queue_until_resumed() {
    let project = project();
    let host = project.start();
    wait_until(Duration::from_secs(20), || {
        (!timer_runs(&host).is_empty()).then_some(())
    });
    let paused = host.post("/_jobhost/functions/tick/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let said: serde_json::Value = serde_json::from_str(&paused.body).unwrap();
    assert_eq!(
        (&said["paused"], &said["changed"]),
        (&true.into(), &true.into())
    );
    let before = timer_runs(&host);
    let passed = || {
        host.log()
            .iter()
            .filter(|l| l.contains("passes: the function is paused"))
            .count()
    };
    // Occurrences pass without a run (each says so), and work queued meanwhile waits.
    wait_until(Duration::from_secs(10), || (passed() >= 1).then_some(()));
    let waiting = host.invoke("tick", "echo queued");
    wait_until(Duration::from_secs(10), || (passed() >= 3).then_some(()));
    // A run fired just before the pause may still be recorded; none after it.
    let during = timer_runs(&host);
    assert!(during.len() <= before.len() + 1, "{before:?} -> {during:?}");
    let record = host.json(&format!("/_jobhost/invocations/{waiting}"));
    assert_eq!(state(&record), "queued", "{record}");
    let functions = host.json("/_jobhost/functions");
    assert_eq!(functions[0]["paused"], true, "{functions}");

    // Kept in the store: a restart keeps it paused.
    drop(host);
    let mut host = project.start();
    host.wait_for_log("passes: the function is paused", Duration::from_secs(10));
    let output = project.jobhost().arg("functions").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("tick") && text.contains("paused"), "{text}");

    let output = project.jobhost().args(["resume", "tick"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "resumed tick\n");
    host.wait_for_record(&waiting, Duration::from_secs(30), |r| {
        state(r) == "succeeded"
    });
    let resumed = timer_runs(&host).len();
    wait_until(Duration::from_secs(20), || {
        (timer_runs(&host).len() > resumed).then_some(())
    });
}

#[test]
fn pause_of_an_unknown_function_is_404_and_the_cli_names_the_functions() {
    let project = project();
    let host = project.start();
    let answer = host.post("/_jobhost/functions/nope/pause", "");
    assert_eq!(answer.status, 404, "{}", answer.body);
    let output = project.jobhost().args(["pause", "nope"]).output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no function named `nope`: the functions are tick"),
        "{err}"
    );
    let output = project.jobhost().args(["pause", "tick"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "paused tick\n");
    let again = host.post("/_jobhost/functions/tick/pause", "");
    let said: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(said["changed"], false, "already paused by the CLI: {said}");
}

#[test]
fn bulk_retry_queues_the_dead_invocations_of_a_function_again() {
    let project = Project::new(
        "[defaults]\nretry = { attempts = 1 }\n[functions.a]\nmodule = \"probe.wasm\"\ntriggers = []\n[functions.b]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    project.write("functions/probe.wasm", &std::fs::read(probe(P1)).unwrap());
    let host = project.start();
    let dead: Vec<String> = ["a", "a", "a", "b"]
        .iter()
        .map(|f| host.invoke(f, "exit 3"))
        .collect();
    for id in &dead {
        host.wait_for_record(id, Duration::from_secs(30), |r| state(r) == "dead");
    }
    let answer = host.post("/_jobhost/invocations/retry?function=a&state=dead", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let said: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        (&said["retried"], &said["more"]),
        (&3.into(), &false.into())
    );
    for id in &dead[..3] {
        let record = host.wait_for_record(id, Duration::from_secs(30), |r| {
            state(r) == "dead" && r["attempt"] == 2
        });
        assert_eq!(record["reason"], "retry", "{record}");
    }
    let untouched = host.json(&format!("/_jobhost/invocations/{}", dead[3]));
    assert_eq!(untouched["attempt"], 1, "{untouched}");
    let bad = host.post("/_jobhost/invocations/retry?state=failed", "");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("only dead invocations are retried"),
        "{}",
        bad.body
    );
}
