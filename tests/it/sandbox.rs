//! The sandbox: limits, failure reasons, isolation, captured output, configuration imports.

use std::time::{Duration, Instant};

use crate::support::{Answer, P1, P2, Project, example, probe, probe_http, rss_kib, state, wat};

/// Both command shapes fail the same way for the same cause.
fn failing_project(extra: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[defaults]
timeout = "1s"
memory = "32MiB"
[functions.p2]
module = "probe2.wasm"
[functions.p1]
module = "probe1.wasm"
{extra}
"#
    ));
    project
        .function("probe2", &probe(P2))
        .function("probe1", &probe(P1));
    project
}

/// A synchronous call stopped by its timeout: a 500 that says so.
fn assert_timed_out(answer: &Answer) {
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.ends_with("failed: timeout\n"),
        "{}",
        answer.body
    );
}

/// A wasi:http function called again soon has its next instance made ahead of its request:
/// it is still a fresh one, made for the invocation that uses it.
#[test]
fn a_fresh_store_and_instance_for_every_invocation() {
    let project = Project::new("[functions.web]\ntriggers = [{ http = \"/web/*\" }]\n");
    project.function("web", &probe_http());
    let host = project.start();
    for _ in 0..5 {
        let answer = host.get("/web/count");
        assert_eq!((answer.status, answer.body.as_str()), (200, "1\n"));
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let answer = host.get("/web/env");
        let id = answer
            .header("x-jobhost-invocation-id")
            .expect("the answer names its invocation")
            .to_string();
        assert!(
            answer
                .body
                .contains(&format!("\nJOBHOST_INVOCATION_ID={id}\n")),
            "the guest of {id} saw: {}",
            answer.body
        );
        assert!(seen.insert(id.clone()), "{id} ran twice");
        // Recorded a moment after the answer.
        host.wait_for_record(&id, Duration::from_secs(10), |r| state(r) == "succeeded");
    }
}

/// A wasi:http function's folders are opened for each request: one replaced between two
/// requests is the one the second sees.
#[test]
fn a_folder_replaced_between_requests_is_the_one_the_next_request_sees() {
    let project = Project::new(
        "[functions.web]\ntriggers = [{ http = \"/web/*\" }]\ndirs = [{ host = \"site\", guest = \"/site\" }]\n",
    );
    project.function("web", &probe_http());
    project.write("site/index.txt", b"v1\n");
    let host = project.start();
    assert_eq!(host.get("/web/read/site/index.txt").body, "v1\n");
    assert_eq!(host.get("/web/read/site/index.txt").body, "v1\n");
    // Time for an instance made ahead after the request above (if one were made for a
    // function with dirs) to open the folder before it is replaced. Nothing to wait on:
    // were the machine too slow for it, the test would pass without testing.
    std::thread::sleep(Duration::from_millis(300));
    // Swapped as a deploy would: the new folder renamed into place.
    project.write("site-new/index.txt", b"v2\n");
    std::fs::rename(project.path("site"), project.path("site-old")).unwrap();
    std::fs::rename(project.path("site-new"), project.path("site")).unwrap();
    assert_eq!(host.get("/web/read/site/index.txt").body, "v2\n");
}

/// An instance made ahead of its request starts its clock when the request comes, not when
/// it was made.
#[test]
fn a_request_has_its_whole_timeout_however_long_its_instance_waited_for_it() {
    let project = Project::new(
        "[defaults]\ntimeout = \"1s\"\n[functions.web]\ntriggers = [{ http = \"/web/*\" }]\n",
    );
    project.function("web", &probe_http());
    let host = project.start();
    // Called twice in a row: the next instance is made ahead.
    assert_eq!(host.get("/web/count").status, 200);
    assert_eq!(host.get("/web/count").status, 200);
    // The wait itself is what is tested: longer than the timeout, shorter than the two
    // seconds an instance made ahead is kept.
    std::thread::sleep(Duration::from_millis(1300));
    let answer = host.post("/web/echo", "late");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "POST /web/echo late\n")
    );
    let started = Instant::now();
    let answer = host.get("/web/loop");
    assert_timed_out(&answer);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "stopped after {:?}, before its timeout",
        started.elapsed()
    );
}

#[test]
fn an_endless_loop_fails_with_timeout_and_the_host_keeps_serving() {
    let project = failing_project("");
    let host = project.start();
    for function in ["p1", "p2"] {
        let started = Instant::now();
        let answer = host.post(&format!("/{function}"), "loop");
        let elapsed = started.elapsed();
        assert_timed_out(&answer);
        assert!(
            elapsed < Duration::from_millis(1200),
            "{function} took {elapsed:?} for a 1s timeout"
        );
        assert!(
            elapsed >= Duration::from_secs(1),
            "{function} stopped early: {elapsed:?}"
        );
        assert_eq!(
            host.post(&format!("/{function}"), "echo alive").body,
            "alive\n"
        );
    }
}

#[test]
fn a_guest_blocked_in_a_host_call_fails_with_timeout() {
    let host = failing_project("").start();
    assert_timed_out(&host.post("/p2", "sleep 60000"));
}

#[test]
fn allocating_past_memory_fails_with_memory_limit() {
    let host = failing_project("").start();
    for function in ["p1", "p2"] {
        let answer = host.post(&format!("/{function}"), "alloc 64");
        assert_eq!(answer.status, 500, "{}", answer.body);
        assert!(
            answer.body.ends_with("failed: memory limit\n"),
            "{function}: {}",
            answer.body
        );
        let fits = host.post(&format!("/{function}"), "alloc 8");
        assert_eq!(fits.body, "allocated 8 MiB\n", "{function}");
    }
}

#[test]
fn a_trap_a_panic_and_an_exit_map_to_their_reasons_and_a_500_with_the_id() {
    let project = failing_project("");
    project.write(
        "functions/trap.wasm",
        &wat(r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") unreachable))"#),
    );
    let host = project.start();
    let cases = [
        (
            "/trap",
            "",
            "failed: trap: wasm `unreachable` instruction executed\n",
        ),
        (
            "/p1",
            "panic",
            "failed: trap: wasm `unreachable` instruction executed\n",
        ),
        (
            "/p2",
            "panic",
            "failed: trap: wasm `unreachable` instruction executed\n",
        ),
        ("/p1", "exit 3", "failed: exit 3\n"),
        // A status of 126 and above is the guest's too, not a trap.
        ("/p1", "exit 200", "failed: exit 200\n"),
        // WASI 0.2's `exit` carries only success or failure, and Rust's std for
        // wasm32-wasip2 uses it, so any non-zero status arrives as 1.
        ("/p2", "exit 3", "failed: exit 1\n"),
    ];
    for (path, body, reason) in cases {
        let answer = host.post(path, body);
        assert_eq!(answer.status, 500, "{path} {body}: {}", answer.body);
        let id = answer
            .header("x-jobhost-invocation-id")
            .expect("the 500 carries the id");
        assert_eq!(
            answer.body,
            format!(
                "invocation {id} failed: {}",
                reason.trim_start_matches("failed: ")
            ),
            "{path} {body}"
        );
        // The record keeps the reason, and a panic's message from stderr.
        let record = host.json(&format!("/_jobhost/invocations/{id}"));
        assert_eq!(record["state"], "failed", "{record}");
        assert_eq!(
            record["error"].as_str().map(|e| format!("failed: {e}\n")),
            Some(reason.to_string())
        );
        if body == "panic" {
            let stderr = record["stderr"].as_str().unwrap_or_default();
            assert!(stderr.contains("probe was asked to panic"), "{stderr}");
        }
    }
}

#[test]
fn fuel_exhaustion_fails_with_cpu_limit() {
    let project = Project::new(
        r#"
[functions.spin]
module = "probe.wasm"
fuel = 5000000
"#,
    );
    project.function("probe", &probe(P1));
    let host = project.start();
    let answer = host.post("/spin", "loop");
    assert!(
        answer.body.ends_with("failed: cpu limit\n"),
        "{}",
        answer.body
    );
    assert_eq!(host.post("/spin", "echo cheap").body, "cheap\n");
}

#[test]
fn the_guest_sees_none_of_the_host_environment() {
    let host = failing_project("").start_with(|cmd| {
        cmd.env("JOBHOST_TEST_HOST_SECRET", "do-not-leak");
    });
    for function in ["p1", "p2"] {
        let answer = host.post(&format!("/{function}"), "env");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("JOBHOST_FUNCTION="), "{}", answer.body);
        assert!(!answer.body.contains("do-not-leak"), "{}", answer.body);
        assert!(
            !answer
                .body
                .lines()
                .any(|l| l.starts_with("PATH=") || l.starts_with("HOME=")),
            "{}",
            answer.body
        );
    }
}

#[test]
fn the_guest_cannot_read_outside_its_dirs() {
    let project = failing_project(
        r#"
[functions.fs]
module = "probe1.wasm"
dirs = [{ host = "data/in", guest = "/in" }, { host = "data/out", guest = "/out", write = true }]
"#,
    );
    project.write("data/in/a.txt", b"inside");
    project.write("data/out/.keep", b"");
    project.write("secret.txt", b"outside");
    let host = project.start();
    let ok = host.post("/fs", "read /in/a.txt");
    assert_eq!((ok.status, ok.body.as_str()), (200, "inside"));
    for attempt in [
        "read /in/../secret.txt",
        "read /secret.txt",
        "read /etc/passwd",
        "write /in/new.txt",
    ] {
        let answer = host.post("/fs", attempt);
        assert_eq!(answer.status, 500, "{attempt} should fail: {}", answer.body);
        assert!(
            answer.body.ends_with("failed: exit 1\n"),
            "{attempt}: {}",
            answer.body
        );
    }
    let wrote = host.post("/fs", "write /out/new.txt");
    assert_eq!(wrote.status, 200, "{}", wrote.body);
    assert_eq!(
        std::fs::read_to_string(project.path("data/out/new.txt")).unwrap(),
        "written by probe"
    );
    assert!(!project.path("data/in/new.txt").exists());
    // A function without dirs sees no filesystem at all.
    assert_eq!(host.post("/p2", "read /in/a.txt").status, 500);
}

#[test]
fn stdout_past_the_cap_is_cut_and_the_host_memory_does_not_grow() {
    let project = failing_project(
        "[functions.flood]\nmodule = \"probe2.wasm\"\nmax_output = \"1KiB\"\ntimeout = \"20s\"\n",
    );
    let host = project.start();
    let cut = host.post("/flood", "flood 100000");
    assert_eq!(cut.status, 200);
    assert_eq!(cut.body.len(), 1024 - "Content-Type: text/plain\n\n".len());
    let id = cut.header("x-jobhost-invocation-id").unwrap();
    let record = host.json(&format!("/_jobhost/invocations/{id}"));
    assert_eq!(record["stdout_truncated"], true, "{record}");
    assert_eq!(record["stdout"].as_str().unwrap().len(), 1024);

    let before = rss_kib(host.pid());
    for _ in 0..3 {
        let answer = host.post("/flood", "flood 100000000");
        assert_eq!(answer.status, 200);
    }
    let after = rss_kib(host.pid());
    assert!(
        after < before + 64 * 1024,
        "host RSS grew from {before} KiB to {after} KiB after 300 MB of guest output"
    );
}

#[test]
fn config_values_reach_the_guest_through_both_import_styles() {
    let project = Project::new(
        r#"
[config]
greeting = "hello"
secret = { env = "JOBHOST_TEST_SECRET" }
[functions.cfg2]
module = "cfg2.wasm"
config = { greeting = "hi from cfg2" }
[functions.cfg1]
module = "cfg1.wasm"
"#,
    );
    project
        .function("cfg2", &example("config-reader", P2))
        .function("cfg1", &example("config-reader", P1));
    let host = project.start_with(|cmd| {
        cmd.env("JOBHOST_TEST_SECRET", "s3cret");
    });
    let p2 = host.post("/cfg2", "greeting secret missing");
    assert_eq!(
        p2.body,
        "greeting=hi from cfg2\nsecret=s3cret\nmissing is not set\n"
    );
    let p1 = host.post("/cfg1", "greeting secret missing");
    assert_eq!(
        p1.body,
        "greeting=hello\nsecret=s3cret\nmissing is not set\n"
    );
    // The probe imports the `0.2.0-draft` names of wasi:config, as Spin guests do.
    project.function("draft", &probe(P2));
    drop(host);
    let host = project.start_with(|cmd| {
        cmd.env("JOBHOST_TEST_SECRET", "s3cret");
    });
    assert_eq!(host.post("/draft", "config secret").body, "secret=s3cret\n");
    // A value longer than the guest's first buffer takes the second call of config_get.
    let long = "x".repeat(1000);
    let project = Project::new(&format!("[config]\nlong = \"{long}\"\n"));
    project.function("cfg1", &example("config-reader", P1));
    let host = project.start();
    assert_eq!(host.post("/cfg1", "long").body, format!("long={long}\n"));
}

#[test]
fn guest_stderr_is_logged_at_warn_with_the_invocation_id_and_error_is_left_to_the_host() {
    let project = Project::new("[defaults]\nretry = { attempts = 1 }\n[functions.probe]\n");
    project.function("probe", &probe(P1));
    let host = project.start();
    let sync = host.post("/probe", "read /from-http");
    assert_eq!(sync.status, 500);
    let sync_id = sync.header("x-jobhost-invocation-id").unwrap().to_string();
    let background = host.invoke("probe", "read /from-background");
    host.wait_for_record(&background, Duration::from_secs(30), |r| {
        r["state"] == "dead"
    });
    for (needle, id) in [
        ("cannot read /from-http", sync_id),
        ("cannot read /from-background", background),
    ] {
        let lines: Vec<String> = host
            .log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        assert_eq!(lines.len(), 1, "{needle}: {lines:#?}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains(&id),
            "{}",
            lines[0]
        );
    }
    let errors: Vec<String> = host
        .log()
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
