//! Each guest shape answers over HTTP; routing, CGI, 404, 405, 413.

use std::time::Duration;

use crate::support::{Answer, P1, P2, Project, example, probe, probe_http, state, wait_until};

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

#[test]
fn a_wasi_http_component_fails_with_its_reason_and_a_500_with_the_id() {
    let project = Project::new(
        "[defaults]\ntimeout = \"1s\"\nmemory = \"32MiB\"\n[functions.web]\ntriggers = [{ http = \"/web/*\" }]\n",
    );
    project.function("web", &probe_http());
    let host = project.start();
    let cases = [
        (
            "/web/panic",
            "trap: wasm `unreachable` instruction executed",
        ),
        ("/web/loop", "timeout"),
        ("/web/alloc/64", "memory limit"),
    ];
    for (path, reason) in cases {
        let answer = host.get(path);
        assert_eq!(answer.status, 500, "{path}: {}", answer.body);
        let id = answer
            .header("x-jobhost-invocation-id")
            .expect("the 500 carries the id");
        assert_eq!(
            answer.body,
            format!("invocation {id} failed: {reason}\n"),
            "{path}"
        );
    }
    let echo = host.post("/web/echo?q=1", "body");
    assert_eq!(
        (echo.status, echo.body.as_str()),
        (200, "POST /web/echo?q=1 body\n")
    );
    // A body larger than wasi:http's buffers streams to the client while the guest writes it.
    let stream = host.get("/web/stream/5000000");
    assert_eq!((stream.status, stream.body.len()), (200, 5_000_000));
    let env = host.get("/web/env");
    assert!(env.body.contains("JOBHOST_FUNCTION=web"), "{}", env.body);
}

#[test]
fn over_max_concurrency_sync_http_answers_503_with_retry_after() {
    let project = Project::new("[host]\nmax_concurrency = 1\n[defaults]\ntimeout = \"20s\"\n");
    project.function("probe", &probe(P1));
    let host = std::sync::Arc::new(project.start());
    let slow = {
        let host = host.clone();
        // Retried while the quick requests below hold the only slot.
        std::thread::spawn(move || {
            loop {
                let answer = host.post("/probe", "sleep 3000");
                if answer.status != 503 {
                    break answer;
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let answer = host.post("/probe", "echo quick");
        if answer.status == 503 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw a 503 while the slow invocation ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(slow.join().unwrap().body, "slept 3000 ms\n");
    assert_eq!(host.post("/probe", "echo free again").body, "free again\n");
}

/// Sends one request on `stream` and reads one response: (status line, headers, body),
/// framed by the response's own Content-Length.
fn exchange(stream: &mut std::net::TcpStream, path: &str, body: &str) -> (String, String, String) {
    use std::io::{BufRead, Read, Write};
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut headers = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        headers.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

#[test]
fn the_host_owns_the_framing_a_guest_cannot_set_its_length_or_hop_by_hop_headers() {
    let project = Project::new("[functions.probe]\nmax_output = \"1KiB\"\n");
    project.function("probe", &probe(P1));
    let host = project.start();
    let mut stream = std::net::TcpStream::connect(&host.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A guest that lies about its length: the client gets the whole body, framed right,
    // and the connection stays in step for the next request.
    let (status, headers, body) = exchange(
        &mut stream,
        "/probe",
        "raw Content-Length: 3\\nConnection: close\\nX-Guest: yes\\n\\nhello world",
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("x-guest: yes"), "{headers}");
    assert!(!headers.contains("connection: close"), "{headers}");
    assert_eq!(body, "hello world");
    // Output cut at max_output after a declared length: the cut body, framed as cut.
    let long = "x".repeat(5000);
    let (status, _, body) = exchange(
        &mut stream,
        "/probe",
        &format!("raw Content-Length: 5000\\n\\n{long}"),
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body.len(), 1024 - "Content-Length: 5000\n\n".len());
    let (status, _, body) = exchange(&mut stream, "/probe", "echo still in step");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "still in step\n");
}

#[test]
fn a_synchronous_success_writes_no_log_line_at_info_while_failures_and_background_runs_do() {
    let project = Project::new("[functions.probe]\n");
    project.function("probe", &probe(P1));
    let host = project.start();
    let id_of = |answer: &Answer| {
        answer
            .header("x-jobhost-invocation-id")
            .expect("every answer names its invocation")
            .to_string()
    };
    let ok = host.post("/probe", "echo fine");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = id_of(&ok);
    let failed = host.post("/probe", "exit 3");
    assert_eq!(failed.status, 500, "{}", failed.body);
    let failed = id_of(&failed);
    let background = host.invoke("probe", "echo later");
    host.wait_for_record(&background, Duration::from_secs(30), |r| {
        state(r) == "succeeded"
    });
    let log = wait_until(Duration::from_secs(10), || {
        let log = host.log();
        let has = |id: &str, what: &str| log.iter().any(|l| l.contains(id) && l.contains(what));
        (has(&failed, "failed") && has(&background, "succeeded")).then_some(log)
    });
    assert!(
        !log.iter().any(|l| l.contains(&ok)),
        "a successful request was logged at INFO:\n{}",
        log.join("\n")
    );
}
