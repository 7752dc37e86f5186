//! SPEC §3 and §8: bad modules and bad configuration get clear errors that name the file,
//! line, key or import, and the host serves everything else.

use std::time::Duration;

use crate::support::{P1, P2, Project, probe, wat};

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
    let mut host = project.start();

    let expectations = [
        ("notwasm.wasm", "not a WebAssembly file"),
        ("invalid.wasm", "invalid WebAssembly"),
        ("mystery.wasm", "mystery_function"),
        ("nostart.wasm", "exports no `_start`"),
        ("noworld.wasm", "exports none of the known worlds"),
    ];
    for (file, reason) in expectations {
        let line = host.wait_for_log(file, Duration::from_secs(5));
        assert!(
            line.contains("ERROR") && line.contains(reason),
            "{file}: {line}"
        );
    }
    assert!(!host.log().join("\n").contains("README"));
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
