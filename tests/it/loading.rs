//! Bad modules and bad configuration get clear errors that name the file,
//! line, key or import, and the host serves everything else.

use crate::support::{P1, P2, Project, example, probe, wait_until, wat};

#[test]
fn bad_modules_are_refused_with_their_reason_and_the_rest_still_serves() {
    let project = Project::new("");
    project.function("good", &probe(P2));
    project.write("functions/notwasm.wasm", b"#!/bin/sh\necho hi\n");
    project.write("functions/invalid.wasm", b"\0asm\x01\0\0\0\x99garbage");
    project.write(
        "functions/mystery.wasm",
        &wat(r#"(module (import "env" "mystery_function" (func)) (memory (export "memory") 1) (func (export "_start")))"#),
    );
    project.write(
        "functions/nostart.wasm",
        &wat(r#"(module (func (export "main")))"#),
    );
    project.write("functions/noworld.wasm", &wat("(component)"));
    project.write("functions/README.md", b"other files are ignored");
    let host = project.start();

    let expectations = [
        ("notwasm", "not a WebAssembly file"),
        ("invalid", "invalid WebAssembly"),
        ("mystery", "mystery_function"),
        ("nostart", "exports no `_start`"),
        ("noworld", "exports none of the known worlds"),
    ];
    let functions = host.json("/_jobhost/functions");
    let functions = functions.as_array().unwrap();
    for (name, reason) in expectations {
        let f = functions
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {functions:#?}"));
        let error = f["error"].as_str().unwrap_or_default();
        assert_eq!(f["status"], "error", "{name}");
        assert!(
            error.contains(&format!("{name}.wasm")) && error.contains(reason),
            "{name}: {error}"
        );
    }
    let names: Vec<&str> = functions
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(!names.contains(&"README"), "{names:?}");
    assert_eq!(host.post("/good", "echo fine").body, "fine\n");
    assert_eq!(host.get("/mystery").status, 404);
}

#[test]
fn an_unknown_import_names_the_import() {
    let project = Project::new("");
    project.write(
        "functions/mystery.wasm",
        &wat(r#"(module (import "env" "mystery_function" (func)) (memory (export "memory") 1) (func (export "_start")))"#),
    );
    let output = project.jobhost().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("env::mystery_function"), "{stdout}");
}

#[test]
fn configuration_errors_name_file_line_and_key_and_up_refuses_to_start() {
    let project = Project::new(
        "[defaults]\nmemory = \"64MiB\"\ntimeout = \"3x\"\n\n[functions.a]\nretries = 3\n",
    );
    let output = project.jobhost().arg("up").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = project.path("runtime.toml").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:5: `defaults.timeout`: invalid duration \"3x\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:8: `functions.a.retries`: unknown field `retries`"
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_problem_and_exits_nonzero() {
    let project = Project::new(
        r#"
[functions.a]
triggers = [{ http = "/same" }]
[functions.b]
triggers = [{ http = "/same" }]
[functions.c]
triggers = [{ http = "no-slash" }]
"#,
    );
    for name in ["a", "b", "c"] {
        project.function(name, &probe(P1));
    }
    project.write("functions/broken.wasm", b"nope");
    project.write("functions/d.toml", b"timeout = [1]\n");
    project.function("d", &probe(P1));
    let output = project.jobhost().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("route /same is claimed by both `a` and `b`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`functions.c.triggers[0]`: route \"no-slash\" must start with '/'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken.wasm: not a WebAssembly file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("d.toml:1: `functions.d.timeout`: invalid type"),
        "{stdout}"
    );
    assert!(stdout.contains("4 problems"), "{stdout}");

    let fine = Project::new("");
    fine.function("probe", &probe(P2));
    let output = fine.jobhost().arg("check").output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok: 1 function\n");
}

#[test]
fn a_sidecar_configures_the_module_beside_it() {
    let project = Project::new("");
    project.function("probe", &probe(P1));
    project.write(
        "functions/probe.toml",
        b"triggers = [{ http = \"/elsewhere\" }]\nenv = { FROM = \"sidecar\" }\n",
    );
    let host = project.start();
    assert_eq!(host.get("/probe").status, 404);
    assert!(host.post("/elsewhere", "env").body.contains("FROM=sidecar"));
}

#[test]
fn compiled_modules_are_cached_and_a_bad_cache_entry_is_ignored() {
    let project = Project::new("");
    project.function("probe", &probe(P2));
    drop(project.start());
    let cache = project.path(".jobhost/cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"corrupt").unwrap();
    let host = project.start();
    assert_eq!(host.post("/probe", "echo recompiled").body, "recompiled\n");
}

#[test]
fn a_module_named_by_a_function_belongs_to_that_function_only() {
    let project = Project::new("[functions.y]\nmodule = \"x.wasm\"\n");
    project.function("x", &probe(P1));
    let host = project.start();
    assert_eq!(host.post("/y", "echo mine").body, "mine\n");
    assert_eq!(host.post("/x", "echo mine").status, 404);
    let functions = host.json("/_jobhost/functions");
    let names: Vec<&str> = functions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["y"]);
}

#[test]
fn each_key_is_reported_against_the_file_and_line_it_is_set_in() {
    // `triggers` is in runtime.toml (line 6), `memory` in the sidecar.
    let project = Project::new(
        "[host]\nlisten = \"127.0.0.1:0\"\n[functions.a]\ntriggers = [\n  { http = \"/a\" },\n  { http = \"nope\" },\n]\n",
    );
    project.function("a", &probe(P1));
    project.write("functions/a.toml", b"memory = \"1MiB\"\n");
    let output = project.jobhost().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("runtime.toml:6: `functions.a.triggers[1]`: route \"nope\""),
        "{stdout}"
    );
    assert!(!stdout.contains("a.toml:"), "{stdout}");
    assert!(stdout.contains("\n1 problem\n"), "{stdout}");
}

#[test]
fn an_unset_environment_variable_fails_only_the_guest_that_reads_it() {
    let project = Project::new(
        r#"[host]
listen = "127.0.0.1:0"
[config]
greeting = "hello"
who = { env = "JOBHOST_TEST_NEVER_SET" }
[functions.cfg2]
module = "cfg2.wasm"
[functions.cfg1]
module = "cfg1.wasm"
"#,
    );
    project
        .function("cfg2", &example("config-reader", P2))
        .function("cfg1", &example("config-reader", P1));
    // `check` passes, and warns about the variable.
    let output = project
        .jobhost()
        .arg("check")
        .env_remove("JOBHOST_TEST_NEVER_SET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: the environment variable JOBHOST_TEST_NEVER_SET is not set")
            && stdout.contains("runtime.toml:5 config.who"),
        "{stdout}"
    );
    let host = project.start_with(|cmd| {
        cmd.env_remove("JOBHOST_TEST_NEVER_SET");
    });
    // Keys with values still read; the one without answers the guest with the reason.
    let p2 = host.post("/cfg2", "greeting who");
    assert_eq!(p2.status, 200);
    let (greeting, who) = p2.body.split_once('\n').unwrap();
    assert_eq!(greeting, "greeting=hello");
    assert!(
        who.starts_with("who: the environment variable JOBHOST_TEST_NEVER_SET is not set"),
        "{who}"
    );
    assert_eq!(
        host.post("/cfg1", "greeting who").body,
        "greeting=hello\nwho: its environment variable is not set (see the host's log)\n"
    );
    assert_eq!(host.post("/cfg1", "greeting").body, "greeting=hello\n");
    // The host's log names the function that read it (a synchronous run has no span of
    // its own unless it ends with a line to write).
    wait_until(std::time::Duration::from_secs(10), || {
        host.log()
            .iter()
            .any(|l| {
                l.contains("WARN")
                    && l.contains("function=cfg1")
                    && l.contains("`who`, which has no value")
            })
            .then_some(())
    });
}

#[test]
fn a_module_must_be_a_regular_file_within_max_module_size() {
    let project = Project::new(
        r#"
[host]
max_module_size = "1KiB"
[functions.zero]
module = "/dev/zero"
[functions.fifo]
module = "pipe.wasm"
"#,
    );
    project.function("big", &probe(P1));
    project.write(
        "functions/tiny.wasm",
        &wat(r#"(module (memory (export "memory") 1) (func (export "_start")))"#),
    );
    let status = std::process::Command::new("mkfifo")
        .arg(project.path("functions/pipe.wasm"))
        .status()
        .unwrap();
    assert!(status.success());
    // `check` neither hangs on the FIFO nor reads /dev/zero without end.
    let mut check = project
        .jobhost()
        .arg("check")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(std::time::Duration::from_secs(60), || {
        check.try_wait().unwrap()
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut check.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(1), "{stdout}");
    for expected in [
        "/dev/zero: not a regular file",
        "pipe.wasm: not a regular file",
        "big.wasm: the module is",
        "more than max_module_size (1024 bytes)",
        "3 problems",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    // The host starts, serves what it can, and shows the rest.
    let host = project.start();
    assert_eq!(host.get("/tiny").status, 200);
    let functions = host.json("/_jobhost/functions");
    let errors = functions
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "error")
        .count();
    assert_eq!(errors, 3, "{functions:#}");
}

#[test]
fn the_compile_cache_keeps_what_is_used_and_prunes_what_is_not() {
    let project = Project::new("[host]\nretention = \"1d\"\n");
    project.function("probe", &probe(P1));
    let host = project.start();
    assert_eq!(host.post("/probe", "echo cached").status, 200);
    let (status, _) = host.sigterm(std::time::Duration::from_secs(30));
    assert!(status.success());
    let cache = project.path(".jobhost/cache");
    let entries = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let used = entries(&cache);
    assert_eq!(used.len(), 1, "{used:?}");
    // Everything looks a month old; the entry the host uses is marked used again.
    std::fs::write(cache.join("old-version.cwasm"), b"stale").unwrap();
    std::fs::write(cache.join("half.cwasm.tmp42"), b"half").unwrap();
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
    for name in entries(&cache) {
        let file = std::fs::File::options()
            .write(true)
            .open(cache.join(&name))
            .unwrap();
        file.set_modified(month_ago).unwrap();
    }
    let host = project.start();
    assert_eq!(host.post("/probe", "echo cached").status, 200);
    assert_eq!(entries(&cache), used);
}
