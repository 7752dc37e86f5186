//! SPEC §2 and §3: each guest shape answers over HTTP; routing, CGI, 404, 405, 413.

use crate::support::{P1, P2, Project, example, probe};

#[test]
fn each_guest_shape_answers_over_http() {
    let project = Project::new("");
    project
        .function("hello", &example("hello_http", P2))
        .function("cgi", &example("cgi-command", P2))
        .function("wc", &example("wordcount-p1", P1));
    let host = project.start();

    let hello = host.get("/hello?x=1");
    assert_eq!(hello.status, 200, "{}", hello.body);
    assert_eq!(
        hello.body,
        "hello from a wasi:http component at /hello?x=1\n"
    );
    assert!(hello.header("x-jobhost-invocation-id").is_some());

    let cgi = host.get("/cgi");
    assert_eq!(cgi.status, 200, "{}", cgi.body);
    assert!(
        cgi.body.contains("\"greeting\":\"hello, world\""),
        "{}",
        cgi.body
    );

    let wc = host.post("/wc", "one two\nthree\n");
    assert_eq!(wc.status, 200, "{}", wc.body);
    assert_eq!(wc.body, "2 3 14\n");
}

#[test]
fn cgi_status_and_headers_are_honoured() {
    let project = Project::new("");
    project.function("cgi", &example("cgi-command", P2));
    let host = project.start();
    let answer = host.post("/cgi?a=b", "body!");
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-handled-by"), Some("cgi-command"));
    assert!(answer.body.contains("\"query\":\"a=b\""), "{}", answer.body);
    assert!(answer.body.contains("\"body_bytes\":5"), "{}", answer.body);
}

#[test]
fn cgi_variables_reach_the_command() {
    let project = Project::new(
        r#"
[functions.probe]
triggers = [{ http = "/users/{name}/*", methods = ["POST"] }]
env = { MY_SETTING = "on" }
"#,
    );
    project.function("probe", &probe(P1));
    let host = project.start();
    let answer = host.request("POST", "/users/ada/files/a.txt?size=2", b"env");
    assert_eq!(answer.status, 200, "{}", answer.body);
    for expected in [
        "REQUEST_METHOD=POST",
        "PATH_INFO=/users/ada/files/a.txt",
        "QUERY_STRING=size=2",
        "CONTENT_LENGTH=3",
        "JOBHOST_ROUTE=/users/{name}/*",
        "JOBHOST_PARAM_NAME=ada",
        "JOBHOST_FUNCTION=probe",
        "JOBHOST_TRIGGER=http",
        "JOBHOST_ATTEMPT=1",
        "MY_SETTING=on",
        "HTTP_HOST=",
    ] {
        assert!(
            answer.body.lines().any(|l| l.starts_with(expected)),
            "{expected} missing from:\n{}",
            answer.body
        );
    }
    let id = answer.header("x-jobhost-invocation-id").unwrap();
    assert!(
        answer.body.contains(&format!("JOBHOST_INVOCATION_ID={id}")),
        "{}",
        answer.body
    );
}

#[test]
fn unknown_route_is_404_wrong_method_is_405_large_body_is_413() {
    let project = Project::new(
        r#"
[functions.probe]
triggers = [{ http = "/probe", methods = ["POST"], max_body = "1KiB" }]
"#,
    );
    project.function("probe", &probe(P2));
    let host = project.start();

    assert_eq!(host.get("/nothing-here").status, 404);
    let wrong = host.get("/probe");
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    let large = host.request("POST", "/probe", &vec![b'x'; 2048]);
    assert_eq!(large.status, 413, "{}", large.body);
    // The host serves on after each of them.
    let ok = host.post("/probe", "echo still here");
    assert_eq!((ok.status, ok.body.as_str()), (200, "still here\n"));
}

#[test]
fn the_most_specific_route_wins() {
    let project = Project::new(
        r#"
[functions.a]
module = "probe.wasm"
triggers = [{ http = "/users/{id}" }]
env = { WHO = "a" }
[functions.b]
module = "probe.wasm"
triggers = [{ http = "/users/me" }]
env = { WHO = "b" }
[functions.c]
module = "probe.wasm"
triggers = [{ http = "/users/*" }]
env = { WHO = "c" }
"#,
    );
    project.function("probe", &probe(P1));
    let host = project.start();
    let who = |path: &str| {
        let answer = host.post(path, "env");
        answer
            .body
            .lines()
            .find_map(|l| l.strip_prefix("WHO="))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(who("/users/me"), "b");
    assert_eq!(who("/users/7"), "a");
    assert_eq!(who("/users/7/x"), "c");
}

#[test]
fn healthz_answers() {
    let host = Project::new("").start();
    let answer = host.get("/healthz");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
}

#[test]
fn a_module_with_no_configuration_is_served_at_its_name() {
    let project = Project::new("");
    project.function("probe", &probe(P2));
    let host = project.start();
    assert_eq!(host.post("/probe", "echo hi").body, "hi\n");
    assert_eq!(host.get("/probe/deeper").status, 404);
}
