//! Durable background invocations, retries, crash recovery, graceful shutdown, async HTTP,
//! concurrency, and the status API.

use std::time::Duration;

use crate::support::{P1, Project, probe, state, wait_until};

fn project(extra: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[defaults]
timeout = "120s"
retry = {{ attempts = 3, initial = "100ms", max = "1s" }}
[functions.probe]
triggers = []
{extra}
"#
    ));
    project.function("probe", &probe(P1));
    project
}

#[test]
fn a_kill_9_mid_run_runs_the_invocation_again_with_the_same_id_and_the_next_attempt() {
    let project = project("");
    let host = project.start();
    let id = host.invoke("probe", "job 3000");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    host.kill9();

    let host = project.start();
    let record = host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
    assert_eq!(record["attempt"], 2);
    assert_eq!(
        record["stdout"].as_str().unwrap(),
        format!("Content-Type: text/plain\n\nid={id} attempt=2\n")
    );
    assert_eq!(record["reason"], "manual");
}

#[test]
fn nothing_queued_before_a_kill_9_is_lost() {
    let project = project("[host]\nmax_concurrency = 4\n");
    let host = project.start();
    let ids: Vec<String> = (0..100).map(|_| host.invoke("probe", "job 30")).collect();
    wait_until(Duration::from_secs(30), || {
        let done = host.json("/_jobhost/invocations?state=succeeded&limit=1000");
        (done.as_array().unwrap().len() >= 10).then_some(())
    });
    host.kill9();

    let host = project.start();
    let records = wait_until(Duration::from_secs(60), || {
        let all = host.json("/_jobhost/invocations?limit=1000");
        let all = all.as_array().unwrap().clone();
        all.iter().all(|r| state(r) == "succeeded").then_some(all)
    });
    assert_eq!(records.len(), 100);
    for id in &ids {
        let r = records
            .iter()
            .find(|r| r["id"] == id.as_str())
            .expect("every queued id has a record");
        let attempt = r["attempt"].as_u64().unwrap();
        assert!(attempt == 1 || attempt == 2, "{r}");
        assert!(
            r["stdout"]
                .as_str()
                .unwrap()
                .ends_with(&format!("attempt={attempt}\n")),
            "{r}"
        );
    }
}

#[test]
fn a_guest_that_always_fails_ends_dead_after_its_attempts_with_growing_backoff() {
    let project = project(
        r#"retry = { attempts = 4, initial = "200ms", max = "10s" }
dirs = [{ host = "stamps", guest = "/stamps", write = true }]"#,
    );
    project.write("stamps/.keep", b"");
    let host = project.start();
    // When each attempt ran, in ms, as the guest stamped it.
    let stamps = || -> Vec<u64> {
        std::fs::read_to_string(project.path("stamps/times"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let id = host.invoke("probe", "stamp /stamps/times");
    let record = host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "dead");
    assert_eq!(record["attempt"], 4);
    assert_eq!(record["error"], "exit 1");
    let times = stamps();
    assert_eq!(times.len(), 4, "{times:?}");
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 200ms, 400ms, 800ms, each less up to a quarter of jitter.
    assert!(
        gaps[0] >= 150 && gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "{gaps:?}"
    );

    // A dead invocation can be queued again, through the API...
    let answer = host.post(&format!("/_jobhost/invocations/{id}/retry"), "");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let record = host.wait_for_record(&id, Duration::from_secs(30), |r| {
        state(r) == "dead" && r["attempt"] == 8
    });
    assert_eq!(record["reason"], "retry");
    // The new round backs off from `initial` again, not from where the last one stopped.
    let times = stamps();
    assert_eq!(times.len(), 8, "{times:?}");
    assert!(times[5] - times[4] < times[3] - times[2], "{times:?}");
    // ...and a record that is not dead cannot.
    let ok = host.invoke("probe", "echo fine");
    host.wait_for_record(&ok, Duration::from_secs(30), |r| state(r) == "succeeded");
    assert_eq!(
        host.post(&format!("/_jobhost/invocations/{ok}/retry"), "")
            .status,
        409
    );

    // ...and through the CLI, beside the running host.
    let output = project.jobhost().args(["retry", &id]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    host.wait_for_record(&id, Duration::from_secs(30), |r| {
        state(r) == "dead" && r["attempt"] == 12
    });
}

#[test]
fn sigterm_lets_a_short_job_finish_and_exits_0() {
    let project = project("[host]\nshutdown_timeout = \"5s\"\n");
    let host = project.start();
    let id = host.invoke("probe", "job 2000");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    let (status, _) = host.sigterm(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let output = project
        .jobhost()
        .args(["logs", &id, "--json"])
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(state(&record), "succeeded", "{record}");
}

#[test]
fn sigterm_interrupts_a_long_job_after_shutdown_timeout_and_queues_it_without_using_an_attempt() {
    let project = project("[host]\nshutdown_timeout = \"2s\"\n");
    let host = project.start();
    let id = host.invoke("probe", "job 60000");
    host.wait_for_record(&id, Duration::from_secs(30), |r| {
        state(r) == "running" && r["attempt"] == 1
    });
    let (status, took) = host.sigterm(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} with shutdown_timeout 2s"
    );
    let output = project
        .jobhost()
        .args(["invocations", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let record = &list[0];
    assert_eq!(
        (state(record), record["attempt"].as_u64()),
        ("queued", Some(0)),
        "{record}"
    );

    // It runs on the next start, as attempt 1 again.
    let host = project.start();
    host.wait_for_record(&id, Duration::from_secs(30), |r| {
        state(r) == "running" && r["attempt"] == 1
    });
}

#[test]
fn a_second_signal_stops_at_once() {
    let project = project("[host]\nshutdown_timeout = \"60s\"\n");
    let host = project.start();
    let id = host.invoke("probe", "job 60000");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    let pid = host.pid().to_string();
    let term = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    term();
    // Shutting down: the listener is closed while the job still runs.
    wait_until(Duration::from_secs(10), || {
        (!host.listening()).then_some(())
    });
    term();
    let (status, took) = host.sigterm_wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let output = project
        .jobhost()
        .args(["logs", &id, "--json"])
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (state(&record), record["attempt"].as_u64()),
        ("queued", Some(0)),
        "{record}"
    );
}

#[test]
fn async_http_answers_202_and_location_resolves_to_the_finished_record() {
    let project = project(
        r#"[functions.later]
module = "probe.wasm"
triggers = [{ http = "/later", mode = "async" }]"#,
    );
    let host = project.start();
    let answer = host.post("/later?x=1", "echo done later");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("1"));
    let location = answer.header("location").unwrap().to_string();
    let record = wait_until(Duration::from_secs(30), || {
        let r = host.json(&location);
        (state(&r) == "succeeded").then_some(r)
    });
    assert_eq!(record["trigger"], "http");
    assert_eq!(record["stdout"], "Content-Type: text/plain\n\ndone later\n");
    assert_eq!(record["exit_code"], 0);
}

#[test]
fn per_function_concurrency_1_never_runs_two_at_once() {
    let project = project("concurrency = 1\n[host]\nmax_concurrency = 8\n");
    let host = project.start();
    let ids: Vec<String> = (0..6).map(|_| host.invoke("probe", "job 150")).collect();
    let mut spans: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let r = host.wait_for_record(id, Duration::from_secs(30), |r| state(r) == "succeeded");
            (
                r["started_at"].as_str().unwrap().to_string(),
                r["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "overlapping runs: {pair:?}");
    }
}

#[test]
fn sync_http_invocations_are_recorded_and_listed_with_filters() {
    let project = project("[functions.web]\nmodule = \"probe.wasm\"\n");
    let host = project.start();
    let ok = host.post("/web", "echo recorded");
    let failed = host.post("/web", "exit 2");
    let ok_id = ok.header("x-jobhost-invocation-id").unwrap().to_string();
    let failed_id = failed
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let record = host.json(&format!("/_jobhost/invocations/{ok_id}"));
    assert_eq!(
        (
            state(&record),
            record["trigger"].as_str(),
            record["reason"].as_str()
        ),
        ("succeeded", Some("http"), Some("http"))
    );
    assert_eq!(record["stdout"], "Content-Type: text/plain\n\nrecorded\n");
    for field in [
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "exit_code",
        "stdout_truncated",
    ] {
        assert!(!record[field].is_null(), "{field} missing: {record}");
    }
    let failed = host.json(&format!("/_jobhost/invocations/{failed_id}"));
    assert_eq!(
        (
            state(&failed),
            failed["error"].as_str(),
            failed["attempt"].as_u64()
        ),
        ("failed", Some("exit 2"), Some(1))
    );

    let list = host.json("/_jobhost/invocations?function=web&state=failed");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let list = host.json("/_jobhost/invocations?limit=1");
    assert_eq!(list[0]["id"], failed_id.as_str(), "newest first");
    assert_eq!(host.get("/_jobhost/invocations?state=bogus").status, 400);
    assert_eq!(host.get("/_jobhost/invocations/nope").status, 404);

    let functions = host.json("/_jobhost/functions");
    assert!(
        functions
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "web" && f["status"] == "ready")
    );

    let output = project
        .jobhost()
        .args(["invocations", "--function", "web"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains(&ok_id) && table.contains("exit 2"),
        "{table}"
    );
    let output = project.jobhost().args(["logs", &ok_id]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("recorded"));
}

#[test]
fn a_second_host_on_the_same_data_folder_refuses_to_start() {
    let project = project("");
    let _host = project.start();
    let output = project.jobhost().arg("up").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("another jobhost is running on the data folder")
    );
}

#[test]
fn the_admin_api_needs_the_token_off_loopback() {
    let project =
        project("[host]\nlisten = \"0.0.0.0:0\"\nadmin_token = { env = \"JOBHOST_TEST_TOKEN\" }\n");
    let host = project.start_with(|cmd| {
        cmd.env("JOBHOST_TEST_TOKEN", "t0ken");
    });
    assert_eq!(host.get("/_jobhost/invocations").status, 401);
    let with = host.request_with(
        "GET",
        "/_jobhost/invocations",
        b"",
        &[("authorization", "Bearer t0ken")],
    );
    assert_eq!(with.status, 200);
    let wrong = host.request_with(
        "GET",
        "/_jobhost/invocations",
        b"",
        &[("authorization", "Bearer nope")],
    );
    assert_eq!(wrong.status, 401);
    // Function routes need no token.
    assert_eq!(host.get("/healthz").status, 200);
    drop(host);

    let host = project.start();
    assert_eq!(
        host.get("/_jobhost/functions").status,
        403,
        "no token configured: the API stays shut"
    );
}

#[test]
fn finished_records_older_than_retention_are_pruned() {
    let project = project("[host]\nretention = \"1s\"\n[functions.web]\nmodule = \"probe.wasm\"\n");
    let host = project.start();
    let id = host
        .post("/web", "echo short-lived")
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    assert_eq!(host.get(&format!("/_jobhost/invocations/{id}")).status, 200);
    wait_until(Duration::from_secs(15), || {
        (host.get(&format!("/_jobhost/invocations/{id}")).status == 404).then_some(())
    });
}

#[test]
fn retry_gives_the_same_round_of_attempts_from_the_cli_and_the_api_even_for_a_function_gone_since()
{
    let project = project(r#"retry = { attempts = 2, initial = "100ms", max = "1s" }"#);
    let host = project.start();
    let a = host.invoke("probe", "exit 1");
    let b = host.invoke("probe", "exit 1");
    for id in [&a, &b] {
        host.wait_for_record(id, Duration::from_secs(30), |r| state(r) == "dead");
    }
    // The module goes: the function is no longer loaded.
    std::fs::remove_file(project.path("functions/probe.wasm")).unwrap();
    wait_until(Duration::from_secs(10), || {
        let functions = host.json("/_jobhost/functions");
        functions
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "probe" && f["status"] == "error")
            .then_some(())
    });
    let answer = host.post(&format!("/_jobhost/invocations/{a}/retry"), "");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let output = project.jobhost().args(["retry", &b]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for id in [&a, &b] {
        let record = host.json(&format!("/_jobhost/invocations/{id}"));
        assert_eq!(
            (state(&record), &record["attempt"], &record["max_attempts"]),
            ("queued", &serde_json::json!(2), &serde_json::json!(4)),
            "{record}"
        );
    }
    // An id that does not exist: 404 from the API, an error from the CLI.
    let answer = host.post("/_jobhost/invocations/no-such-id/retry", "");
    assert_eq!(answer.status, 404, "{}", answer.body);
    let output = project
        .jobhost()
        .args(["retry", "no-such-id"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no invocation no-such-id"));
}

#[test]
fn a_queued_invocation_of_an_unknown_trigger_kind_ends_dead_and_is_never_left_running() {
    let project = project("");
    // A store written by another version of jobhost, with a kind this one does not know.
    let host = project.start();
    let (status, _) = host.sigterm(Duration::from_secs(30));
    assert!(status.success());
    let db = rusqlite::Connection::open(project.path(".jobhost/jobhost.db")).unwrap();
    db.execute(
        "INSERT INTO invocations (id, function, trigger, reason, attempt, max_attempt, state,
             durable, payload, vars, created_at, run_after)
         VALUES ('from-elsewhere', 'probe', 'carrier-pigeon', 'manual', 0, 3, 'queued', 1, x'',
             '[]', 0, 0)",
        [],
    )
    .unwrap();
    let host = project.start();
    let record = host.wait_for_record("from-elsewhere", Duration::from_secs(30), |r| {
        state(r) != "queued" && state(r) != "running"
    });
    assert_eq!(state(&record), "dead", "{record}");
    assert_eq!(record["trigger"], "carrier-pigeon");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("unknown trigger kind `carrier-pigeon`"),
        "{error}"
    );
    // It is listed like any other.
    let dead = host.json("/_jobhost/invocations?state=dead");
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
}

#[test]
fn twenty_kill_9s_while_jobs_flow_lose_no_accepted_job_and_hide_no_rerun() {
    let project = project(
        r#"retry = { attempts = 40, initial = "20ms", max = "100ms" }
dirs = [{ host = "marks", guest = "/marks", write = true }]
[host]
max_concurrency = 4"#,
    );
    std::fs::create_dir_all(project.path("marks")).unwrap();
    let mut accepted = Vec::new();
    // Kill points from a fixed sequence, so a failure can be run again.
    let mut seed: u64 = 0x5eed;
    for _ in 0..20 {
        let host = project.start();
        for _ in 0..5 {
            accepted.push(host.invoke("probe", "mark 40 /marks/log"));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pause = Duration::from_millis((seed >> 33) % 300);
        std::thread::sleep(pause); // the kill point: chaos, not a wait for a condition
        host.kill9();
    }
    let host = project.start();
    let marks = |id: &str| -> Vec<u64> {
        std::fs::read_to_string(project.path("marks/log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(i, _)| *i == id)
            .map(|(_, a)| a.parse().unwrap())
            .collect()
    };
    for id in &accepted {
        let record = host.wait_for_record(id, Duration::from_secs(120), |r| {
            state(r) == "succeeded" || state(r) == "dead"
        });
        assert_eq!(state(&record), "succeeded", "{record}");
        let attempt = record["attempt"].as_u64().unwrap();
        let mut runs = marks(id);
        runs.sort();
        // Every completed run is one of its attempts, none twice, the last one included:
        // a run the host did not record is seen as a retry, never hidden.
        assert!(runs.windows(2).all(|w| w[0] < w[1]), "{id}: {runs:?}");
        assert!(
            runs.iter().all(|a| *a <= attempt),
            "{id}: {runs:?} > {attempt}"
        );
        assert_eq!(runs.last(), Some(&attempt), "{id}: {runs:?}");
    }
    assert_eq!(accepted.len(), 100);
}

#[test]
fn a_higher_priority_job_submitted_later_runs_before_waiting_lower_ones() {
    let project = project("concurrency = 1\n");
    let host = project.start();
    // One long run holds the only slot while the others queue behind it.
    let holder = host.invoke("probe", "job 1500");
    host.wait_for_record(&holder, Duration::from_secs(30), |r| state(r) == "running");
    let low: Vec<String> = (0..5).map(|_| host.invoke("probe", "job 10")).collect();
    let answer = host.post("/_jobhost/functions/probe/invoke?priority=10", "job 10");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let urgent = answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let started = |id: &str| {
        let record = host.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
        record["started_at"].as_str().unwrap().to_string()
    };
    let urgent_at = started(&urgent);
    assert_eq!(
        host.json(&format!("/_jobhost/invocations/{urgent}"))["priority"],
        10
    );
    for id in &low {
        assert!(
            urgent_at < started(id),
            "the priority=10 job ran after {id}"
        );
    }
    // A priority that is not a number is refused, naming it.
    let refused = host.post("/_jobhost/functions/probe/invoke?priority=high", "job 10");
    assert_eq!(refused.status, 400);
    let why: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    let why = why["error"].as_str().unwrap();
    assert!(why.contains("priority \"high\" is not an integer"), "{why}");
}

#[test]
fn a_delayed_job_waits_as_scheduled_survives_a_restart_and_runs_when_due() {
    let project = project("");
    let host = project.start();
    let answer = host.post("/_jobhost/functions/probe/invoke?delay=2s", "job 10");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let waiting = host.json(&format!("/_jobhost/invocations/{id}"));
    assert_eq!(state(&waiting), "scheduled", "{waiting}");
    // Down and up again before it is due: it still runs, when due.
    host.kill9();
    let host = project.start();
    let record = host.wait_for_record(&id, Duration::from_secs(60), |r| state(r) == "succeeded");
    let ms = |field: &str| {
        let t = humantime::parse_rfc3339(record[field].as_str().unwrap()).unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    };
    // The due time is reckoned from the request's arrival, a moment before its record is
    // made (`created_at`).
    assert!(
        ms("started_at") + 100 >= ms("created_at") + 2000,
        "{record}"
    );
    assert_eq!(record["attempt"], 1);
    // A delay or time that cannot be meant is refused, naming it.
    for (query, says) in [
        ("delay=soon", "delay \"soon\" is not a duration"),
        ("at=2020-01-01T00:00:00Z", "more than a minute in the past"),
        ("at=tomorrow", "is not an RFC 3339 time"),
        ("delay=1s&at=2030-01-01T00:00:00Z", "not both"),
        ("delay=100000y", "after the year 9999"),
    ] {
        let refused = host.post(
            &format!("/_jobhost/functions/probe/invoke?{query}"),
            "job 1",
        );
        assert_eq!(refused.status, 400, "{query}");
        let why: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        let why = why["error"].as_str().unwrap();
        assert!(why.contains(says), "{query}: {why}");
    }
}

#[test]
fn an_idempotency_key_returns_the_first_invocation_and_refuses_another_payload() {
    let project = project("");
    let host = project.start();
    let submit = |payload: &str, key: &str| {
        host.request_with(
            "POST",
            "/_jobhost/functions/probe/invoke",
            payload.as_bytes(),
            &[("Idempotency-Key", key)],
        )
    };
    let first = submit("job 10", "order-42");
    assert_eq!(first.status, 202, "{}", first.body);
    let again = submit("job 10", "order-42");
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("location"), first.header("location"));
    let id = first.header("x-jobhost-invocation-id").unwrap().to_string();
    let record = host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
    assert_eq!(record["idempotency_key"], "order-42");
    let other = submit("job 20", "order-42");
    assert_eq!(other.status, 409, "{}", other.body);
    assert!(other.body.contains(&id), "{}", other.body);
    let long = "k".repeat(256);
    assert_eq!(submit("job 10", &long).status, 400);
    // One run, however often it was sent.
    let runs = host.json("/_jobhost/invocations?function=probe");
    assert_eq!(runs.as_array().unwrap().len(), 1);
}

#[test]
fn a_submission_is_answered_with_the_state_its_invocation_is_in() {
    let project = project("");
    let host = project.start();
    let submitted = |path: &str, key: &str| {
        let answer = host.request_with("POST", path, b"job 10", &[("Idempotency-Key", key)]);
        assert_eq!(answer.status, 202, "{}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            body["location"].as_str().unwrap(),
            answer.header("location").unwrap()
        );
        (
            body["id"].as_str().unwrap().to_string(),
            state(&body).to_string(),
        )
    };
    let invoke = "/_jobhost/functions/probe/invoke";
    // A free slot here: stored claimed and started at once.
    let (started, said) = submitted(invoke, "now");
    assert_eq!(said, "running");
    assert_eq!(
        submitted(&format!("{invoke}?delay=1h"), "later").1,
        "scheduled"
    );
    assert_eq!(host.post("/_jobhost/functions/probe/pause", "").status, 200);
    assert_eq!(submitted(invoke, "paused").1, "queued");
    // The same key again: the state its invocation has now.
    host.wait_for_record(&started, Duration::from_secs(30), |r| {
        state(r) == "succeeded"
    });
    assert_eq!(submitted(invoke, "now"), (started, "succeeded".to_string()));
}
