//! Outbound HTTP (the README's "Calling out"): `allowed_outbound_hosts` per function,
//! `[host] block_networks` on the addresses a name resolves to, the log line and metrics.
//! The far end is a real server on loopback (`receiver.rs`).

use std::time::Duration;

use crate::receiver::Receiver;
use crate::support::{P2, Project, probe, wait_until};

/// `probe` (a wasi:cli command) on a synchronous route, with `allowed` as its allowlist
/// and `host` as extra `[host]` keys.
fn project(allowed: &[String], host: &str) -> Project {
    let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    let project = Project::new(&format!(
        "[host]\n{host}\n[functions.probe]\ntriggers = [{{ http = \"/probe\" }}]\nallowed_outbound_hosts = [{}]\n",
        list.join(", ")
    ));
    project.function("probe", &probe(P2));
    project
}

#[test]
fn outbound_denied_by_default() {
    let server = Receiver::echo();
    let project = project(&[], "");
    let mut host = project.start();
    let url = server.url("/get");
    let answer = host.post("/probe", &format!("fetch GET {url}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body.contains("error: ErrorCode::HttpRequestDenied"),
        "{}",
        answer.body
    );
    let line = host.wait_for_log("refused", Duration::from_secs(10));
    assert!(
        line.contains(&url) && line.contains("allowed_outbound_hosts of function probe"),
        "{line}"
    );
    assert_eq!(server.connections(), 0, "no connection is made");
    assert_eq!(
        host.metric("jobhost_outbound_requests_total{function=\"probe\",status=\"denied\"}"),
        Some(1.0)
    );
}

#[test]
fn outbound_allowed_by_ip_literal_reaches_loopback() {
    let server = Receiver::echo();
    let project = project(&[format!("http://{}", server.addr)], "");
    let mut host = project.start();
    // wasmtime's p2_http_outbound_request_get and _post checks: method, URI and body.
    let answer = host.post(
        "/probe",
        &format!("fetch GET {}", server.url("/get?some=arg&goes=here")),
    );
    assert!(answer.body.contains("status 200"), "{}", answer.body);
    let answer = host.post(
        "/probe",
        &format!("fetch POST {} {{\"foo\": \"bar\"}}", server.url("/post")),
    );
    assert!(
        answer.body.contains("status 200\n{\"foo\": \"bar\"}"),
        "{}",
        answer.body
    );
    let received = server.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(
        (received[0].method.as_str(), received[0].uri.as_str()),
        ("GET", "/get?some=arg&goes=here")
    );
    assert_eq!(
        received[0].header("host"),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(received[1].method, "POST");
    assert_eq!(received[1].body, b"{\"foo\": \"bar\"}");
    // Kept alive and used again: two requests, one connection.
    assert_eq!(server.connections(), 1, "the connection is reused");
    let line = host.wait_for_log("outbound POST", Duration::from_secs(10));
    assert!(line.contains(": 200 in "), "{line}");
    assert!(
        line.contains("id="),
        "the log line names the invocation: {line}"
    );
    assert_eq!(
        host.metric("jobhost_outbound_requests_total{function=\"probe\",status=\"200\"}"),
        Some(2.0)
    );
    // Another port on the same address is not allowed.
    let answer = host.post("/probe", "fetch GET http://127.0.0.1:9/");
    assert!(answer.body.contains("HttpRequestDenied"), "{}", answer.body);
}

#[test]
fn outbound_block_networks_apply_to_the_address_a_name_resolves_to() {
    let server = Receiver::echo();
    let port = server.addr.port();
    // `localhost` is allowed by name, but resolves into the blocked loopback network.
    let project = project(&[format!("http://localhost:{port}")], "");
    let mut host = project.start();
    let answer = host.post("/probe", &format!("fetch GET http://localhost:{port}/"));
    assert!(answer.body.contains("HttpRequestDenied"), "{}", answer.body);
    let line = host.wait_for_log("refused", Duration::from_secs(10));
    assert!(line.contains("which is in block_networks"), "{line}");
    assert!(line.contains("allow its address itself"), "{line}");
    assert_eq!(
        server.connections(),
        0,
        "no TCP connect reached the listener"
    );
    drop(host);

    // With loopback taken off the list, the same name reaches the server.
    let project = project_with_blocks(port, "[\"private\", \"link-local\"]");
    let host = project.start();
    let answer = host.post("/probe", &format!("fetch GET http://localhost:{port}/x"));
    assert!(answer.body.contains("status 200"), "{}", answer.body);
    assert_eq!(server.connections(), 1);
}

fn project_with_blocks(port: u16, blocks: &str) -> Project {
    project(
        &[format!("http://localhost:{port}")],
        &format!("block_networks = {blocks}"),
    )
}

#[test]
fn outbound_wildcard_does_not_exempt_an_address_from_block_networks() {
    let server = Receiver::echo();
    // `*` matches any host, 127.0.0.1 too, but only an entry naming the address exempts it.
    let project = project(&["http://*:*".to_string()], "");
    let host = project.start();
    let answer = host.post("/probe", &format!("fetch GET {}", server.url("/")));
    assert!(answer.body.contains("HttpRequestDenied"), "{}", answer.body);
    assert_eq!(server.connections(), 0);
}

#[test]
fn outbound_answer_larger_than_the_cap_fails_the_read() {
    let server = Receiver::start(|_, _| crate::receiver::Reply {
        status: 200,
        headers: Vec::new(),
        body: vec![b'x'; 300 << 10],
        delay: Duration::ZERO,
    });
    let project = project(
        &[format!("http://{}", server.addr)],
        "max_outbound_response = \"256KiB\"",
    );
    let mut host = project.start();
    let answer = host.post("/probe", &format!("fetch GET {}", server.url("/big")));
    assert!(
        answer.body.contains("error: reading the body"),
        "{}",
        answer.body
    );
    let line = host.wait_for_log("the answer's body is larger", Duration::from_secs(10));
    assert!(line.contains("than 262144 bytes"), "{line}");
}

#[test]
fn outbound_slow_answer_times_out() {
    let server = Receiver::start(|_, _| crate::receiver::Reply {
        delay: Duration::from_secs(30),
        ..crate::receiver::Reply::status(200)
    });
    let project = project(
        &[format!("http://{}", server.addr)],
        "outbound_timeout = \"300ms\"",
    );
    let host = project.start();
    let answer = host.post("/probe", &format!("fetch GET {}", server.url("/slow")));
    assert!(
        answer.body.contains("HttpResponseTimeout"),
        "{}",
        answer.body
    );
    wait_until(Duration::from_secs(10), || {
        host.metric("jobhost_outbound_requests_total{function=\"probe\",status=\"error\"}")
    });
}

#[test]
fn outbound_bad_entries_are_refused_by_check() {
    let refused = |toml: &str| {
        let project = Project::new(toml);
        project.function("probe", &probe(P2));
        let output = project.jobhost().arg("check").output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    let text = refused("[host]\nblock_networks = [\"private\", \"intranet\"]\n");
    assert!(
        text.contains(
            "runtime.toml:3: `host.block_networks[1]`: \"intranet\" is neither a network name"
        ),
        "{text}"
    );
    let text = refused(
        "[functions.probe]\ntriggers = []\nallowed_outbound_hosts = [\"https://api.*.example.com\", \"example.com\", \"https://ok.example.com\"]\n",
    );
    assert!(
        text.contains("`functions.probe.allowed_outbound_hosts[0]`: \"https://api.*.example.com\": a wildcard goes only first"),
        "{text}"
    );
    assert!(
        text.contains("`functions.probe.allowed_outbound_hosts[1]`: \"example.com\" is not a URL"),
        "{text}"
    );
    assert!(!text.contains("allowed_outbound_hosts[2]"), "{text}");
}

#[test]
fn outbound_https_is_verified_against_the_trusted_roots() {
    // A CA of the test's own, made with openssl as for the PostgreSQL TLS test.
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::postgres_server::certificates(certs.path(), &None);
    let read = |name: &str| std::fs::read_to_string(certs.path().join(name)).unwrap();
    let server = Receiver::start_tls(&read("server.crt"), &read("server.key"), |_, _| {
        crate::receiver::Reply {
            body: b"over TLS".to_vec(),
            ..crate::receiver::Reply::status(200)
        }
    });
    let project = project(&[format!("https://{}", server.addr)], "");
    project.write("ca.pem", &std::fs::read(ca).unwrap());
    let url = format!("https://{}/secure", server.addr);
    // Trusted (SSL_CERT_FILE names the CA, as for a private CA in production).
    let host = project.start_with(|cmd| {
        cmd.env("SSL_CERT_FILE", "ca.pem");
    });
    let answer = host.post("/probe", &format!("fetch GET {url}"));
    assert_eq!(answer.body.trim_end(), "status 200\nover TLS");
    drop(host);
    // Not trusted: the handshake fails, and the guest is told it was the certificate.
    let mut host = project.start_with(|cmd| {
        cmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem");
    });
    let answer = host.post("/probe", &format!("fetch GET {url}"));
    assert!(
        answer.body.contains("TlsCertificateError"),
        "{}",
        answer.body
    );
    let line = host.wait_for_log("failed after", Duration::from_secs(10));
    assert!(line.contains("certificate"), "{line}");
}

#[test]
fn outbound_connection_refused_is_told_as_such() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let project = project(&["http://127.0.0.1:*".to_string()], "");
    let host = project.start();
    let answer = host.post("/probe", &format!("fetch GET http://127.0.0.1:{port}/"));
    assert!(answer.body.contains("ConnectionRefused"), "{}", answer.body);
}

#[test]
fn outbound_a_guest_cannot_use_its_hosts_status_api() {
    // Allowed to reach its own host by address, as examples/fetch is.
    let project = project(&["http://127.0.0.1:*".to_string()], "");
    let host = project.start();
    let answer = host.post(
        "/probe",
        &format!("fetch GET http://{}/_jobhost/functions", host.addr),
    );
    assert!(answer.body.contains("status 403"), "{}", answer.body);
    assert!(
        answer.body.contains("not open to guests"),
        "{}",
        answer.body
    );
    // Its functions' routes are another matter.
    let answer = host.post("/probe", &format!("fetch GET http://{}/healthz", host.addr));
    assert!(answer.body.contains("status 200"), "{}", answer.body);
}
