//! Completion callbacks (the README's "Completion callbacks"): a durable submission's
//! record POSTed once it ends, signed, retried with backoff, durable through `kill -9`.
//! The receiver is a real server on loopback (`receiver.rs`).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::receiver::{Received, Receiver, Reply};
use crate::support::{Host, P1, Project, probe, state};

const SECRET: &str = "test-secret";

/// `probe` (background only) with callbacks allowed to `receiver`, retried every `initial`.
fn project(receiver: &Receiver, initial: &str, function: &str) -> Project {
    let project = Project::new(&format!(
        "[host]\ncallback_secret = {SECRET:?}\nallowed_callback_hosts = [\"http://{}\"]\ncallback_retry = {{ attempts = 5, initial = {initial:?}, max = \"2s\" }}\n[functions.probe]\ntriggers = []\nretry = {{ attempts = 1 }}\n{function}\n",
        receiver.addr
    ));
    project.function("probe", &probe(P1));
    project
}

/// Submits `payload` to `probe` with `X-Jobhost-Callback: url`; the invocation's id.
fn submit(host: &Host, payload: &str, url: &str) -> String {
    let answer = host.request_with(
        "POST",
        "/_jobhost/functions/probe/invoke",
        payload.as_bytes(),
        &[("X-Jobhost-Callback", url)],
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string()
}

/// Checks a callback as a receiver would: the signature over "<timestamp>.<body>" and a
/// timestamp within a minute; returns the record it carries.
fn verified(request: &Received) -> serde_json::Value {
    let timestamp = request.header("x-jobhost-timestamp").expect("a timestamp");
    let signature = request.header("x-jobhost-signature").expect("a signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let hex = signature.strip_prefix("sha256=").expect("sha256=<hex>");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    mac.verify_slice(&bytes).expect("the signature verifies");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: u64 = timestamp.parse().unwrap();
    assert!(
        now.abs_diff(sent) < 60,
        "a fresh timestamp: {sent} at {now}"
    );
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("application/json"));
    serde_json::from_slice(&request.body).expect("the record as JSON")
}

/// Waits until the record's callback is `state`, and returns the record.
fn callback_ends(host: &Host, id: &str, want: &str) -> serde_json::Value {
    host.wait_for_record(id, Duration::from_secs(30), |r| {
        r["callback"]["state"] == want
    })
}

#[test]
fn callback_receiver_failing_twice_gets_it_on_the_third_try_signed() {
    let receiver = Receiver::start(|_, n| Reply::status(if n < 2 { 503 } else { 204 }));
    let project = project(&receiver, "100ms", "");
    let host = project.start();
    let id = submit(&host, "echo hello", &receiver.url("/done"));
    let record = callback_ends(&host, &id, "delivered");
    assert_eq!(record["callback"]["attempts"], 3, "{record}");
    assert_eq!(record["callback"]["last_status"], 204, "{record}");
    assert_eq!(record["callback"]["url"], receiver.url("/done"));
    let received = receiver.received();
    assert_eq!(received.len(), 3, "{received:?}");
    for request in &received {
        let sent = verified(request);
        assert_eq!(sent["id"], id.as_str());
        assert_eq!(sent["state"], "succeeded");
        assert_eq!(
            sent["stdout"].as_str().unwrap().trim_end(),
            "Content-Type: text/plain\n\nhello"
        );
    }
    assert_eq!(received[2].uri, "/done");
}

#[test]
fn callback_survives_kill_9_between_tries() {
    let receiver = Receiver::start(|_, n| Reply::status(if n == 0 { 500 } else { 200 }));
    // The second try is due 3 s after the first: the host is killed in between.
    let project = project(&receiver, "3s", "");
    let host = project.start();
    let id = submit(&host, "echo durable", &receiver.url("/done"));
    // Killed once the first try's failure is stored: between tries.
    host.wait_for_record(&id, Duration::from_secs(30), |r| {
        r["callback"]["last_status"] == 500
    });
    assert_eq!(receiver.received().len(), 1);
    host.kill9();
    let host = project.start();
    let record = callback_ends(&host, &id, "delivered");
    assert_eq!(record["callback"]["attempts"], 2, "{record}");
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(verified(&received[1])["id"], id.as_str());
}

#[test]
fn callback_receiver_that_hangs_times_out_and_is_tried_again() {
    let receiver = Receiver::start(|_, n| Reply {
        delay: if n == 0 {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        },
        ..Reply::status(200)
    });
    let project = Project::new(&format!(
        "[host]\noutbound_timeout = \"500ms\"\ncallback_secret = {SECRET:?}\nallowed_callback_hosts = [\"http://{}\"]\ncallback_retry = {{ attempts = 3, initial = \"100ms\" }}\n[functions.probe]\ntriggers = []\n",
        receiver.addr
    ));
    project.function("probe", &probe(P1));
    let mut host = project.start();
    let id = submit(&host, "echo slow", &receiver.url("/done"));
    let record = callback_ends(&host, &id, "delivered");
    assert_eq!(record["callback"]["attempts"], 2, "{record}");
    let line = host.wait_for_log("callback to", Duration::from_secs(5));
    assert!(line.contains("no answer within the timeout"), "{line}");
}

#[test]
fn callback_reports_dead_and_cancelled_and_the_functions_own_url() {
    let receiver = Receiver::start(|_, _| Reply::status(200));
    // The function's own `callback`, for every durable invocation of it.
    let project = project(
        &receiver,
        "100ms",
        &format!("callback = \"{}\"", receiver.url("/fn")),
    );
    let host = project.start();
    let dead = host.invoke("probe", "exit 3");
    let record = callback_ends(&host, &dead, "delivered");
    assert_eq!(state(&record), "dead");
    let answer = host.post("/_jobhost/functions/probe/invoke?delay=1h", "echo never");
    let waiting = answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    let record = host.json(&format!("/_jobhost/invocations/{waiting}"));
    assert_eq!(record["callback"]["state"], "waiting", "{record}");
    let cancelled = host.post(&format!("/_jobhost/invocations/{waiting}/cancel"), "");
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    callback_ends(&host, &waiting, "delivered");
    let states: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            assert_eq!(r.uri, "/fn");
            verified(r)["state"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(states, ["dead", "cancelled"]);
    // A header overrides the function's URL.
    let id = submit(&host, "echo mine", &receiver.url("/mine"));
    callback_ends(&host, &id, "delivered");
    assert_eq!(receiver.received().last().unwrap().uri, "/mine");
}

#[test]
fn callback_url_not_allowed_is_refused_at_submission() {
    let receiver = Receiver::start(|_, _| Reply::status(200));
    let project = project(&receiver, "100ms", "");
    let host = project.start();
    let answer = host.request_with(
        "POST",
        "/_jobhost/functions/probe/invoke",
        b"echo x",
        &[("X-Jobhost-Callback", "http://127.0.0.1:1/elsewhere")],
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("is not in [host] allowed_callback_hosts"),
        "{}",
        answer.body
    );
    let answer = host.request_with(
        "POST",
        "/_jobhost/functions/probe/invoke",
        b"echo x",
        &[("X-Jobhost-Callback", "not a url")],
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(receiver.connections(), 0);

    // Without a secret, no callback can be signed: refused, saying so.
    let bare = Project::new("[functions.probe]\ntriggers = []\n");
    bare.function("probe", &probe(P1));
    let host = bare.start();
    let answer = host.request_with(
        "POST",
        "/_jobhost/functions/probe/invoke",
        b"echo x",
        &[("X-Jobhost-Callback", &receiver.url("/done"))],
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("callback_secret"), "{}", answer.body);
}

#[test]
fn callback_settings_that_cannot_work_are_refused_by_check() {
    let project = Project::new(
        "[host]\ncallback_secret = \"s\"\nallowed_callback_hosts = [\"https://hooks.example.com\"]\n[functions.probe]\ntriggers = []\ncallback = \"https://elsewhere.example.com/x\"\n",
    );
    project.function("probe", &probe(P1));
    let output = project.jobhost().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("`functions.probe.callback`: callback \"https://elsewhere.example.com/x\" is not in [host] allowed_callback_hosts (https://hooks.example.com)"),
        "{text}"
    );
}
