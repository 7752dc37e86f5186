//! SPEC §1 steps 2 and 4, §6 hot reload: `functions/` and `runtime.toml` change under a
//! running host.

use std::time::{Duration, Instant};

use crate::support::{Host, P1, P2, Project, example, probe, state, wait_until};

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
    let mut host = project.start();
    assert_eq!(host.get("/fn").status, 404);

    std::fs::copy(probe(P1), project.path("functions/fn.wasm")).unwrap();
    let took = until_answer(&host, "/fn", "echo v1", "v1\n", Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(1),
        "served {took:?} after the drop"
    );
    host.wait_for_log("loaded", Duration::from_secs(5));

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
    assert!(host.log().iter().any(|l| l.contains("reloaded")));
}

#[test]
fn a_large_module_copied_slowly_is_never_an_error_and_is_served_once_complete() {
    let project = Project::new("");
    let host = project.start();
    let bytes = std::fs::read(example("thumbnail", P2)).unwrap();
    let chunk = bytes.len() / 8 + 1;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(project.path("functions/slow.wasm")).unwrap();
        for part in bytes.chunks(chunk) {
            file.write_all(part).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(200)); // the copier's pace, not a wait
        }
    }
    let project_path = project.path("functions/slow.wasm");
    wait_until(Duration::from_secs(10), || {
        let functions = host.json("/_jobhost/functions");
        functions
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "slow" && f["status"] == "ready")
            .then_some(())
    });
    let errors: Vec<String> = host
        .log()
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(
        errors.is_empty(),
        "a partial module was reported: {errors:#?} ({})",
        project_path.display()
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
    let (project, mut host) = config_project();

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
    host.wait_for_log("the previous one keeps running", Duration::from_secs(10));
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v2\n");
}

#[test]
fn a_runtime_toml_moved_away_or_emptied_for_a_moment_keeps_the_previous_configuration() {
    // Some editors save by moving the old file away (or truncating it) and writing anew.
    let (project, mut host) = config_project();

    std::fs::rename(project.path("runtime.toml"), project.path("runtime.toml~")).unwrap();
    host.wait_for_log("is gone or empty", Duration::from_secs(10));
    assert_eq!(host.post("/cfg", "config greeting").body, "greeting=v1\n");
    // Truncated and not yet written again: the same.
    project.write("runtime.toml", b"");
    wait_until(Duration::from_secs(10), || {
        let said = host
            .log()
            .iter()
            .filter(|l| l.contains("is gone or empty"))
            .count();
        (said >= 2).then_some(())
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
    let host = project.start_with(|cmd| {
        cmd.env("JOBHOST_LOG", "info,jobhost::reload=debug");
    });
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
        .log()
        .iter()
        .filter(|l| l.contains("reloading:"))
        .count();
    // One for the copy (two if a loaded machine spread its writes past the quiet period);
    // reloading on reads showed as a reload every 10 ms.
    assert!(
        (1..=2).contains(&reloads),
        "{reloads} reloads: {:#?}",
        host.log()
    );
}
