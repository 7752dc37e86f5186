//! Coordinating jobs (the README's "Coordinating jobs"): cancel, queues, chains. Priority,
//! delay and idempotency are in `durable.rs`, beside the queue they order.

use std::time::{Duration, Instant};

use crate::support::{P1, P2, Project, probe, state};

/// `probe` built for `target`, background only, with one slot.
fn project(target: &str) -> Project {
    let project = Project::new(
        r#"
[defaults]
timeout = "120s"
retry = { attempts = 3, initial = "100ms", max = "1s" }
[functions.probe]
triggers = []
concurrency = 1
"#,
    );
    project.function("probe", &probe(target));
    project
}

/// What `jobhost check` says of a project it refuses (exit 1).
fn refused_by_check(project: &Project) -> String {
    let output = project.jobhost().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn error_text(body: &str) -> String {
    let why: serde_json::Value = serde_json::from_str(body).unwrap();
    why["error"].as_str().unwrap().to_string()
}

#[test]
fn cancel_interrupts_a_running_guest_at_once_and_frees_its_slot() {
    // A p1 guest spinning in wasm, and a p2 guest waiting in a host call (a sleep).
    for (target, work) in [(P1, "loop"), (P2, "sleep 100000")] {
        let project = project(target);
        let host = project.start();
        let id = host.invoke("probe", work);
        host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
        let asked = Instant::now();
        let answer = host.post(&format!("/_jobhost/invocations/{id}/cancel"), "");
        let took = asked.elapsed();
        assert_eq!(answer.status, 200, "{target}: {}", answer.body);
        let record: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(state(&record), "cancelled", "{target}: {record}");
        assert_eq!(record["error"], "cancelled", "{target}: {record}");
        assert!(
            took < Duration::from_secs(1),
            "{target}: cancelled after {took:?}"
        );
        // The only slot is free again, and the cancelled one is never retried.
        let next = host.invoke("probe", "job 10");
        host.wait_for_record(&next, Duration::from_secs(30), |r| state(r) == "succeeded");
        let record = host.json(&format!("/_jobhost/invocations/{id}"));
        assert_eq!(
            (state(&record), &record["attempt"]),
            ("cancelled", &serde_json::json!(1)),
            "{target}: {record}"
        );
    }
}

#[test]
fn cancel_ends_waiting_work_and_refuses_what_has_ended() {
    let project = project(P1);
    let host = project.start();
    let answer = host.post("/_jobhost/functions/probe/invoke?delay=1h", "job 10");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let answer = host.post(&format!("/_jobhost/invocations/{id}/cancel"), "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let record = host.json(&format!("/_jobhost/invocations/{id}"));
    assert_eq!(state(&record), "cancelled", "{record}");
    assert!(record["next_attempt_at"].is_null(), "{record}");
    // Cancelling it again, or anything that ended, is a conflict that says why.
    let again = host.post(&format!("/_jobhost/invocations/{id}/cancel"), "");
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        error_text(&again.body).contains("is cancelled: only queued, scheduled"),
        "{}",
        again.body
    );
    let done = host.invoke("probe", "job 10");
    host.wait_for_record(&done, Duration::from_secs(30), |r| state(r) == "succeeded");
    let late = host.post(&format!("/_jobhost/invocations/{done}/cancel"), "");
    assert_eq!(late.status, 409, "{}", late.body);
    // A cancelled invocation is not retried, and an unknown id is named.
    let retry = host.post(&format!("/_jobhost/invocations/{id}/retry"), "");
    assert_eq!(retry.status, 409, "{}", retry.body);
    let unknown = host.post("/_jobhost/invocations/no-such-id/cancel", "");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(error_text(&unknown.body).contains("no invocation no-such-id"));
    let listed = host.json("/_jobhost/invocations?status=cancelled");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn jobhost_cancel_from_the_cli_reaches_the_host_that_runs_it() {
    let project = project(P1);
    let host = project.start();
    let id = host.invoke("probe", "loop");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    let output = project.jobhost().args(["cancel", &id]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(&format!("asked to cancel {id}")), "{said}");
    // The host looks for cancels a few times a second.
    let record = host.wait_for_record(&id, Duration::from_secs(10), |r| state(r) == "cancelled");
    assert_eq!(record["cancel_requested"], true, "{record}");
    // A queued one is cancelled by the CLI itself.
    let queued = host.post("/_jobhost/functions/probe/invoke?delay=1h", "job 10");
    let queued = queued
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let output = project
        .jobhost()
        .args(["cancel", &queued])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("cancelled {queued}")
    );
    let output = project
        .jobhost()
        .args(["cancel", &queued])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// `probe` listening on the queue `mail`.
fn mail_project() -> Project {
    let project = Project::new(
        r#"
[functions.mailer]
module = "probe.wasm"
triggers = [{ queue = "mail" }]
"#,
    );
    project.function("probe", &probe(P1));
    project
}

#[test]
fn twenty_queue_messages_run_exactly_once_each() {
    let project = mail_project();
    let host = project.start();
    let mut ids = Vec::new();
    for n in 0..10 {
        let answer = host.post("/_jobhost/queues/mail", &format!("echo message {n}"));
        assert_eq!(answer.status, 202, "{}", answer.body);
        let id = answer.header("x-jobhost-invocation-id").unwrap();
        assert_eq!(
            answer.header("location"),
            Some(format!("/_jobhost/invocations/{id}").as_str())
        );
        ids.push((id.to_string(), format!("message {n}")));
    }
    // The CLI posts beside the running host, the message as an argument or on stdin.
    for n in 10..20 {
        let mut cli = project.jobhost();
        let output = if n % 2 == 0 {
            cli.args(["enqueue", "mail", &format!("echo message {n}")])
                .output()
                .unwrap()
        } else {
            use std::io::Write;
            let mut child = cli
                .args(["enqueue", "mail", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            write!(stdin, "echo message {n}").unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        };
        assert!(output.status.success(), "{output:?}");
        let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
        ids.push((id, format!("message {n}")));
    }
    for (id, said) in &ids {
        let record = host.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
        assert_eq!(
            (&record["function"], &record["trigger"], &record["reason"]),
            (
                &serde_json::json!("mailer"),
                &serde_json::json!("queue"),
                &serde_json::json!("message")
            ),
            "{record}"
        );
        assert_eq!(record["attempt"], 1, "{record}");
        assert!(
            record["stdout"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{said}\n")),
            "{record}"
        );
    }
    let listed = host.json("/_jobhost/invocations?function=mailer&limit=1000");
    assert_eq!(listed.as_array().unwrap().len(), 20, "{listed}");
    // A message sent again with its Idempotency-Key is the same invocation.
    let keyed = |body: &str| {
        let answer = host.request_with(
            "POST",
            "/_jobhost/queues/mail",
            body.as_bytes(),
            &[("Idempotency-Key", "message-21")],
        );
        (answer.status, answer.header("location").map(str::to_string))
    };
    let first = keyed("echo message 21");
    assert_eq!(first.0, 202);
    assert_eq!(keyed("echo message 21"), first);
    assert_eq!(keyed("echo another").0, 409);
    // The guest is told which queue it serves.
    let env = host.post("/_jobhost/queues/mail", "env");
    let id = env.header("x-jobhost-invocation-id").unwrap().to_string();
    let record = host.wait_for_record(&id, Duration::from_secs(60), |r| state(r) == "succeeded");
    let stdout = record["stdout"].as_str().unwrap();
    assert!(stdout.contains("JOBHOST_QUEUE=mail"), "{stdout}");
    assert!(stdout.contains("JOBHOST_TRIGGER=queue"), "{stdout}");
}

#[test]
fn a_queue_nobody_listens_to_is_named_and_two_listeners_are_refused() {
    let project = mail_project();
    let host = project.start();
    let answer = host.post("/_jobhost/queues/nobody", "echo hi");
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(
        error_text(&answer.body).contains("no loaded function listens on queue `nobody`"),
        "{}",
        answer.body
    );
    let output = project
        .jobhost()
        .args(["enqueue", "nobody", "hi"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("no function listens on queue `nobody`"),
        "{said}"
    );
    // A bad delay is named, as the API names it.
    let output = project
        .jobhost()
        .args(["enqueue", "mail", "hi", "--delay", "soon"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("--delay \"soon\" is not a duration"),
        "{said}"
    );
    drop(host);
    // A second function on the same queue: `check` names both.
    let clash = Project::new(
        r#"
[functions.a]
module = "probe.wasm"
triggers = [{ queue = "mail" }]
[functions.b]
module = "probe.wasm"
triggers = [{ queue = "mail" }]
"#,
    );
    clash.function("probe", &probe(P1));
    let said = refused_by_check(&clash);
    assert!(
        said.contains("queue `mail` is listened to by both `a` and `b`"),
        "{said}"
    );
}

#[test]
fn a_chain_hands_each_steps_stdout_on_and_on_failure_runs_once_per_dead_invocation() {
    let project = Project::new(
        r#"
[defaults]
retry = { attempts = 2, initial = "100ms", max = "1s" }
[functions.a]
module = "probe.wasm"
triggers = []
on_success = ["b"]
on_failure = "handler"
[functions.b]
module = "probe.wasm"
triggers = []
on_success = ["c"]
[functions.c]
module = "probe.wasm"
triggers = []
[functions.handler]
module = "probe.wasm"
triggers = []
env = { PROBE_EVENT = "env" }
"#,
    );
    project.function("probe", &probe(P1));
    let host = project.start();
    let payload = "relay through three steps\nand a second line";
    let a = host.invoke("a", payload);
    let step = |parent: &str, function: &str| -> serde_json::Value {
        let record = host.wait_for_record(parent, Duration::from_secs(60), |r| {
            state(r) == "succeeded" && r["children"].as_array().is_some_and(|c| !c.is_empty())
        });
        let children = record["children"].as_array().unwrap();
        assert_eq!(children.len(), 1, "{record}");
        let child = children[0].as_str().unwrap();
        let record =
            host.wait_for_record(child, Duration::from_secs(60), |r| state(r) == "succeeded");
        assert_eq!(record["function"], function, "{record}");
        assert_eq!(record["parent_id"], parent, "{record}");
        assert_eq!(
            (&record["trigger"], &record["reason"]),
            (
                &serde_json::json!("chain"),
                &serde_json::json!("on_success")
            ),
        );
        record
    };
    let b = step(&a, "b");
    let c = step(b["id"].as_str().unwrap(), "c");
    assert_eq!(c["stdout"], payload, "{c}");
    assert_eq!(c["payload"], payload, "{c}");
    assert_eq!(
        host.json(&format!(
            "/_jobhost/invocations/{}",
            c["id"].as_str().unwrap()
        ))["children"],
        serde_json::json!([])
    );
    // Every attempt of a fails; once it is dead, the handler runs once with its record.
    let dead = host.invoke("a", "exit 3");
    let record = host.wait_for_record(&dead, Duration::from_secs(60), |r| {
        state(r) == "dead" && r["children"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert_eq!(record["attempt"], 2, "{record}");
    let children = record["children"].as_array().unwrap();
    assert_eq!(
        children.len(),
        1,
        "one handler run for both attempts: {record}"
    );
    let handler = host.wait_for_record(
        children[0].as_str().unwrap(),
        Duration::from_secs(60),
        |r| state(r) == "succeeded",
    );
    assert_eq!(handler["reason"], "on_failure", "{handler}");
    let told: serde_json::Value =
        serde_json::from_str(handler["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&told["id"], &told["state"], &told["error"]),
        (
            &serde_json::json!(dead),
            &serde_json::json!("dead"),
            &serde_json::json!("exit 3")
        ),
        "{told}"
    );
    let env = handler["stdout"].as_str().unwrap();
    assert!(env.contains(&format!("JOBHOST_PARENT_ID={dead}")), "{env}");
    assert!(env.contains("JOBHOST_TRIGGER=chain"), "{env}");
    // `jobhost logs` names the parent and the children.
    let output = project.jobhost().args(["logs", &a]).output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("children: {}", b["id"].as_str().unwrap())),
        "{said}"
    );
}

/// A parent and a child function on `probe` built for `target`.
fn family(target: &str, host: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[host]
{host}
[defaults]
timeout = "120s"
retry = {{ attempts = 2, initial = "100ms", max = "1s" }}
[functions.parent]
module = "probe.wasm"
triggers = []
[functions.child]
module = "probe.wasm"
triggers = []
"#
    ));
    project.function("probe", &probe(target));
    project
}

#[test]
fn a_guests_ten_enqueues_then_a_trap_and_a_retry_make_exactly_ten_children() {
    for target in [P1, P2] {
        let project = family(target, "");
        let host = project.start();
        let parent = host.invoke("parent", "fanout 10 child echo from the parent");
        let record = host.wait_for_record(&parent, Duration::from_secs(60), |r| {
            state(r) == "succeeded"
        });
        assert_eq!(record["attempt"], 2, "{target}: {record}");
        let children = record["children"].as_array().unwrap();
        assert_eq!(children.len(), 10, "{target}: {record}");
        // The retry's enqueues named the same children as the first attempt's.
        let stdout = record["stdout"].as_str().unwrap();
        for child in children {
            let id = child.as_str().unwrap();
            assert!(stdout.contains(&format!("queued {id}")), "{stdout}");
            let child =
                host.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
            assert_eq!(
                (&child["parent_id"], &child["reason"], &child["trigger"]),
                (
                    &serde_json::json!(parent),
                    &serde_json::json!("enqueue"),
                    &serde_json::json!("chain")
                ),
                "{target}: {child}"
            );
            assert!(
                child["stdout"]
                    .as_str()
                    .unwrap()
                    .contains("from the parent")
            );
        }
        let listed = host.json("/_jobhost/invocations?function=child&limit=1000");
        assert_eq!(listed.as_array().unwrap().len(), 10, "{target}: {listed}");
    }
}

#[test]
fn a_guests_bad_enqueues_and_checkpoints_get_clear_errors_and_change_nothing() {
    let project = family(P1, "max_chain_depth = 3");
    let host = project.start();
    let said = |payload: &str| -> String {
        let id = host.invoke("parent", payload);
        let record =
            host.wait_for_record(&id, Duration::from_secs(60), |r| state(r) == "succeeded");
        record["stdout"].as_str().unwrap().to_string()
    };
    let out = said("enqueue nope - 0 x");
    assert!(
        out.contains("enqueue failed: no function named `nope` is loaded; nothing was queued"),
        "{out}"
    );
    let out = said("enqueue queue:nobody - 0 x");
    assert!(
        out.contains("no loaded function listens on queue `nobody`"),
        "{out}"
    );
    // A key the guest chose, used again with another payload, is refused.
    assert!(said("enqueue child k1 3600000 one").contains("queued"));
    let out = said("enqueue child k1 3600000 two");
    assert!(
        out.contains("the idempotency key \"k1\" was used for invocation"),
        "{out}"
    );
    let delayed = host.json("/_jobhost/invocations?function=child&state=scheduled");
    assert_eq!(delayed.as_array().unwrap().len(), 1, "{delayed}");
    // Over 1 MiB: refused, the old checkpoint kept.
    let out = said("checkpoint 1048577");
    assert!(
        out.contains("not saved: the checkpoint is 1048577 bytes, over 1048576 (1 MiB)"),
        "{out}"
    );
    assert!(out.contains("kept 0"), "{out}");
    // A guest that queues itself forever is stopped at max_chain_depth: the run whose
    // enqueue is refused ends dead with the reason, with no retries.
    let mut id = host.invoke("parent", "again");
    let mut steps = 0;
    let last = loop {
        let record = host.wait_for_record(&id, Duration::from_secs(60), |r| {
            state(r) == "succeeded" || state(r) == "dead"
        });
        steps += 1;
        if state(&record) == "dead" {
            break record;
        }
        let stdout = record["stdout"].as_str().unwrap();
        id = stdout
            .lines()
            .find_map(|l| l.strip_prefix("queued "))
            .unwrap_or_else(|| panic!("{record}"))
            .to_string();
    };
    assert_eq!(steps, 4, "the first and three steps of its chain: {last}");
    assert_eq!(
        (&last["error"], &last["attempt"]),
        (
            &serde_json::json!(
                "chain too deep: this would be step 4 of a chain, past [host] max_chain_depth = 3"
            ),
            &serde_json::json!(1)
        ),
        "{last}"
    );
    assert!(
        last["stdout"]
            .as_str()
            .unwrap()
            .contains("enqueue failed: chain too deep"),
        "the guest was told: {last}"
    );
    // A synchronous call keeps no checkpoint.
    let output = project
        .jobhost()
        .args(["invoke", "parent", "--data", "checkpoint 10"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("not saved: checkpoints are kept for background invocations only"),
        "{out}"
    );
}

#[test]
fn a_counting_guest_resumes_from_its_last_checkpoint_after_kill_9_and_after_sigterm() {
    for stop in ["kill -9", "SIGTERM"] {
        let project = family(P1, "shutdown_timeout = \"300ms\"");
        let host = project.start();
        let id = host.invoke("parent", "count 30 100");
        // Well into the count, by what the guest says of its progress.
        let record = host.wait_for_record(&id, Duration::from_secs(60), |r| {
            r["progress"]["percent"].as_u64().is_some_and(|p| p >= 30)
        });
        assert!(
            record["progress"]["message"]
                .as_str()
                .unwrap()
                .starts_with("counted "),
            "{record}"
        );
        if stop == "kill -9" {
            host.kill9();
        } else {
            let (status, _) = host.sigterm(Duration::from_secs(30));
            assert!(status.success(), "{status}");
        }
        let host = project.start();
        let record =
            host.wait_for_record(&id, Duration::from_secs(60), |r| state(r) == "succeeded");
        let stdout = record["stdout"].as_str().unwrap();
        let from: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("resumed at "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            from >= 9,
            "{stop}: resumed from {from}, not from its checkpoint: {record}"
        );
        assert!(
            stdout.contains(&format!("counted from {from} to 30")),
            "{stdout}"
        );
        assert_eq!(record["progress"]["percent"], 100, "{record}");
        // A kill uses the attempt; a graceful stop gives it back.
        let attempt = if stop == "kill -9" { 2 } else { 1 };
        assert_eq!(record["attempt"], attempt, "{stop}: {record}");
    }
}

#[test]
fn a_chain_to_a_wasi_http_component_is_refused_by_check() {
    let project = Project::new(
        r#"
[functions.a]
module = "probe.wasm"
triggers = []
on_success = ["web"]
[functions.web]
"#,
    );
    project.function("probe", &probe(P1));
    project.function("web", &crate::support::probe_http());
    let said = refused_by_check(&project);
    assert!(
        said.contains("on_success names `web`, a wasi:http component"),
        "{said}"
    );
}

#[test]
fn a_last_attempt_lost_in_a_crash_still_calls_on_failure_once() {
    let project = Project::new(
        r#"
[defaults]
timeout = "120s"
[functions.fragile]
module = "probe.wasm"
triggers = []
retry = { attempts = 1, initial = "100ms", max = "1s" }
on_failure = "handler"
[functions.handler]
module = "probe.wasm"
triggers = []
env = { PROBE_EVENT = "env" }
"#,
    );
    project.function("probe", &probe(P1));
    let host = project.start();
    let id = host.invoke("fragile", "sleep 100000");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    host.kill9();
    // The restart ends it dead (no attempts left) and queues its handler.
    let host = project.start();
    let record = host.wait_for_record(&id, Duration::from_secs(60), |r| {
        state(r) == "dead" && r["children"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert!(
        record["error"].as_str().unwrap().starts_with("interrupted"),
        "{record}"
    );
    let handler = record["children"][0].as_str().unwrap().to_string();
    let ran = host.wait_for_record(&handler, Duration::from_secs(60), |r| {
        state(r) == "succeeded"
    });
    let told: serde_json::Value = serde_json::from_str(ran["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&told["id"], &told["state"]),
        (&serde_json::json!(id), &serde_json::json!("dead"))
    );
    // Another restart does not call it again.
    drop(host);
    let host = project.start();
    let handlers = host.json("/_jobhost/invocations?function=handler");
    assert_eq!(handlers.as_array().unwrap().len(), 1, "{handlers}");
}
