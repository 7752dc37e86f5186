//! Hot reload: `functions/` and `runtime.toml` change under a running host, which picks the
//! change up within a second with no restart.

use std::time::{Duration, Instant};

use crate::support::{Host, P1, P2, Project, example, probe, probe_http, state, wait_until};

/// Polls `path` until the answer's body is `body`; returns how long that took.
fn until_answer(host: &Host, path: &str, payload: &str, body: &str, within: Duration) -> Duration {
    let started = Instant::now();
    wait_until(within, || {
        (host.post(path, payload).body == body).then_some(())
    });
    started.elapsed()
}

#[test]
fn a_dropped_module_is_served_within_a_second_and_a_replaced_one_swaps_after_requests_in_flight() {
    let project = Project::new("[defaults]\ntimeout = \"20s\"\n");
    let host = project.start();
    assert_eq!(host.get("/fn").status, 404);

    std::fs::copy(probe(P1), project.path("functions/fn.wasm")).unwrap();
    let took = until_answer(&host, "/fn", "echo v1", "v1\n", Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(1),
        "served {took:?} after the drop"
    );

    // A request in flight during the swap completes on the version it started with.
    let slow = {
        let url = host.url("/fn");
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            agent
                .post(&url)
                .send("sleep 1500")
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap()
        })
    };
    wait_until(Duration::from_secs(10), || {
        let metrics = host.get("/metrics").body;
        metrics
            .contains("\njobhost_running_invocations 1\n")
            .then_some(())
    });
    std::fs::copy(
        example("wordcount-p1", P1),
        project.path("functions/fn.wasm"),
    )
    .unwrap();
    let took = until_answer(&host, "/fn", "echo v1", "1 2 7\n", Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(1),
        "the new version answered {took:?} after the replace"
    );
    assert_eq!(slow.join().unwrap(), "slept 1500 ms\n");
}

/// A wasi:http function called often has its next instance made ahead; one made for the
/// version before a reload is never used: the first request after it sees the new version.
#[test]
fn a_reloaded_wasi_http_function_answers_as_its_new_version_from_the_first_request() {
    let version = |n: u32, routes: &str| {
        format!("[functions.web]\ntriggers = [{routes}]\nenv = {{ VERSION = \"{n}\" }}\n")
    };
    let project = Project::new(&version(1, r#"{ http = "/web/*" }"#));
    project.function("web", &probe_http());
    let host = project.start();
    for _ in 0..3 {
        assert!(host.get("/web/env").body.contains("\nVERSION=1\n"));
    }
    // The second route shows when the new version is installed, without calling it.
    let v2 = version(2, r#"{ http = "/web/*" }, { http = "/v2/*" }"#);
    let toml = format!("[host]\nlisten = \"127.0.0.1:0\"\n{v2}");
    std::fs::write(project.path("runtime.toml.new"), toml).unwrap();
    std::fs::rename(
        project.path("runtime.toml.new"),
        project.path("runtime.toml"),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let functions = host.json("/_jobhost/functions");
        let triggers = functions[0]["triggers"].as_array().map_or(0, Vec::len);
        (triggers == 2).then_some(())
    });
    for _ in 0..3 {
        let env = host.get("/web/env").body;
        assert!(env.contains("\nVERSION=2\n"), "{env}");
    }
}

#[test]
fn a_large_module_copied_slowly_is_never_an_error_and_is_served_once_complete() {
    let project = Project::new("");
    let host = project.start();
    let bytes = std::fs::read(example("thumbnail", P2)).unwrap();
    let chunk = bytes.len() / 8 + 1;
    let slow = |functions: &serde_json::Value| -> Option<serde_json::Value> {
        functions
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "slow")
            .cloned()
    };
    // What the API shows while the module is copied, watched from another thread.
    let copying = std::sync::atomic::AtomicBool::new(true);
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen = Vec::new();
            while copying.load(std::sync::atomic::Ordering::Acquire) {
                if let Some(f) = slow(&host.json("/_jobhost/functions")) {
                    seen.push(f);
                }
            }
            seen
        });
        {
            use std::io::Write;
            let mut file = std::fs::File::create(project.path("functions/slow.wasm")).unwrap();
            for part in bytes.chunks(chunk) {
                file.write_all(part).unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(200)); // the copier's pace, not a wait
            }
        }
        copying.store(false, std::sync::atomic::Ordering::Release);
        watcher.join().unwrap()
    });
    let ready = wait_until(Duration::from_secs(10), || {
        slow(&host.json("/_jobhost/functions")).filter(|f| f["status"] == "ready")
    });
    assert!(ready["error"].is_null(), "{ready}");
    let errors: Vec<&serde_json::Value> = seen.iter().filter(|f| !f["error"].is_null()).collect();
    assert!(
        errors.is_empty(),
        "a partial module was reported: {errors:#?}"
    );
}

#[test]
fn a_module_replaced_with_garbage_keeps_the_old_version_and_shows_the_error() {
    let project = Project::new("");
    project.function("fn", &probe(P2));
    let host = project.start();
    assert_eq!(host.post("/fn", "echo old").body, "old\n");
    project.write("functions/fn.wasm", b"this is not wasm");
    let view = wait_until(Duration::from_secs(10), || {
        let functions = host.json("/_jobhost/functions");
        let f = functions
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "fn")
            .cloned()
            .unwrap();
        f["error"].is_string().then_some(f)
    });
    let error = view["error"].as_str().unwrap();
    assert!(
        error.contains("not a WebAssembly file")
            && error.contains("previous version keeps serving"),
        "{error}"
    );
    assert_eq!(view["status"], "ready");
    assert_eq!(host.post("/fn", "echo still old").body, "still old\n");
    let output = project.jobhost().arg("functions").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("not a WebAssembly file"));
}

#[test]
fn a_removed_module_answers_404_and_its_timer_stops() {
    let project = Project::new("");
    project.function("gone", &probe(P1));
    project.write(
        "functions/gone.toml",
        b"triggers = [{ http = \"/gone\" }, { every = \"200ms\" }]\n",
    );
    let host = project.start();
    let timer_runs = || {
        let list = host.json("/_jobhost/invocations?function=gone&trigger=timer&limit=1000");
        list.as_array().unwrap().len()
    };
    wait_until(Duration::from_secs(10), || {
        (timer_runs() >= 2).then_some(())
    });
    std::fs::remove_file(project.path("functions/gone.wasm")).unwrap();
    std::fs::remove_file(project.path("functions/gone.toml")).unwrap();
    wait_until(Duration::from_secs(10), || {
        (host.get("/gone").status == 404).then_some(())
    });
    let after = timer_runs();
    let quiet_until = Instant::now() + Duration::from_secs(1);
    wait_until(Duration::from_secs(5), || {
        assert_eq!(timer_runs(), after, "the timer of a removed function fired");
        (Instant::now() > quiet_until).then_some(())
    });
}

/// A host serving `cfg` at `/cfg`, which answers with the shared `greeting` ("v1").
fn config_project() -> (Project, Host) {
    let toml = "[config]\ngreeting = \"v1\"\n[functions.cfg]\nmodule = \"probe.wasm\"\ntriggers = [{ http = \"/cfg\" }]\n";
    let project = Project::new(toml);
    project.function("probe", &probe(P1));
    let host = project.start();
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v1\n");
    (project, host)
}

#[test]
fn runtime_toml_edits_take_effect_and_an_invalid_edit_keeps_the_old_configuration() {
    let (project, host) = config_project();

    let edited = std::fs::read_to_string(project.path("runtime.toml"))
        .unwrap()
        .replace("\"v1\"", "\"v2\"")
        .replace(
            "triggers = [{ http = \"/cfg\" }]",
            "triggers = [{ http = \"/cfg\" }, { every = \"200ms\" }]",
        );
    project.write("runtime.toml", edited.as_bytes());
    until_answer(
        &host,
        "/cfg",
        "config greeting",
        "greeting=v2\n",
        Duration::from_secs(10),
    );
    wait_until(Duration::from_secs(10), || {
        let list = host.json("/_jobhost/invocations?function=cfg&trigger=timer");
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| state(r) == "succeeded")
            .then_some(())
    });

    project.write("runtime.toml", format!("{edited}\n[broken\n").as_bytes());
    host.wait_for_metric(
        r#"jobhost_reloads_total{result="invalid_configuration"}"#,
        1.0,
    );
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v2\n");
}

#[test]
fn a_runtime_toml_moved_away_or_emptied_for_a_moment_keeps_the_previous_configuration() {
    // Some editors save by moving the old file away (or truncating it) and writing anew.
    let (project, host) = config_project();
    let missing = r#"jobhost_reloads_total{result="configuration_missing"}"#;

    std::fs::rename(project.path("runtime.toml"), project.path("runtime.toml~")).unwrap();
    host.wait_for_metric(missing, 1.0);
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v1\n");
    // Truncated and not yet written again: the same.
    project.write("runtime.toml", b"");
    wait_until(Duration::from_secs(10), || {
        (host.metric(missing).unwrap_or(0.0) >= 2.0).then_some(())
    });
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v1\n");

    let edited = std::fs::read_to_string(project.path("runtime.toml~"))
        .unwrap()
        .replace("\"v1\"", "\"v2\"");
    project.write("runtime.toml", edited.as_bytes());
    until_answer(
        &host,
        "/cfg",
        "config greeting",
        "greeting=v2\n",
        Duration::from_secs(10),
    );
}

#[test]
fn a_change_reloads_once_and_reading_the_files_does_not_reload() {
    let project = Project::new("");
    let host = project.start();
    project.function("echo", &probe(P1));
    until_answer(&host, "/echo", "echo hi", "hi\n", Duration::from_secs(10));
    // What a backup tool or an editor does: open and read, change nothing.
    let quiet_until = Instant::now() + Duration::from_millis(500);
    wait_until(Duration::from_secs(5), || {
        std::fs::read(project.path("runtime.toml")).unwrap();
        std::fs::read(project.path("functions/echo.wasm")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        (Instant::now() > quiet_until).then_some(())
    });
    let reloads = host
        .metric(r#"jobhost_reloads_total{result="applied"}"#)
        .unwrap_or(0.0);
    // One for the copy (two if a loaded machine spread its writes past the quiet period);
    // reloading on reads showed as a reload every 10 ms.
    assert!((1.0..=2.0).contains(&reloads), "{reloads} reloads");
}

#[test]
fn relative_paths_are_relative_to_the_folder_of_runtime_toml_not_the_working_directory() {
    // Started from the folder above the project with a relative --config: the drop of a
    // module and a watched folder are found all the same.
    let project = Project::new(
        r#"
[functions.onfile]
module = "probe.wasm"
triggers = [{ watch = "inbox" }]
"#,
    );
    project.function("probe", &probe(P1));
    std::fs::create_dir_all(project.path("inbox")).unwrap();
    let dir = project.dir.path();
    let (parent, name) = (dir.parent().unwrap(), dir.file_name().unwrap());
    let config = std::path::Path::new(name).join("runtime.toml");
    let host = project.start_with(|cmd| {
        cmd.current_dir(parent).arg("--config").arg(&config);
    });
    project.function("dropped", &probe(P2));
    until_answer(
        &host,
        "/dropped",
        "echo here",
        "here\n",
        Duration::from_secs(10),
    );
    project.write("inbox/a.txt", b"a");
    wait_until(Duration::from_secs(20), || {
        let list = host.json("/_jobhost/invocations?function=onfile&trigger=file");
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| state(r) == "succeeded")
            .then_some(())
    });
    assert!(project.path(".jobhost/jobhost.db").exists());
}
