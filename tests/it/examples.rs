//! The README's promise: `./run` builds every example into `functions/` and the repository's
//! own `runtime.toml` serves them.

use std::process::Command;
use std::time::Duration;

use crate::support::{Project, wait_until};

#[test]
fn the_repository_runtime_toml_serves_every_example() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let toml = std::fs::read_to_string(format!("{repo}/runtime.toml")).unwrap();
    let project = Project::new(&toml);
    let status = Command::new(format!("{repo}/run"))
        .arg("build")
        .arg(project.path("functions"))
        .status()
        .expect("./run starts");
    assert!(status.success(), "./run build failed");
    // Containers, CI and systemd often leave USER unset; runtime.toml's default covers it.
    let host = project.start_with(|cmd| {
        cmd.env_remove("USER");
    });

    let hello = host.get("/hello/there?x=1");
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (
            200,
            "hello from a wasi:http component at /hello/there?x=1\n"
        )
    );

    let greet = host.post("/greet/ada", "payload");
    assert_eq!(greet.status, 201, "{}", greet.body);
    assert!(
        greet.body.contains("\"greeting\":\"hello, ada\""),
        "{}",
        greet.body
    );

    let wc = host.post("/wordcount", "the quick brown fox\n");
    assert_eq!(wc.body, "1 4 20\n");
    // The same function in the background: 202, and its record at the Location.
    let later = host.post("/wordcount/later", "one two");
    assert_eq!(later.status, 202, "{}", later.body);
    let location = later.header("location").unwrap().to_string();
    let record = wait_until(Duration::from_secs(30), || {
        let r = host.json(&location);
        (r["state"] == "succeeded").then_some(r)
    });
    assert_eq!(record["stdout"], "1 2 7\n");

    let config = host.post("/config-reader", "greeting who");
    assert_eq!(
        config.body,
        "greeting=hello from the function's own config\nwho=friend\n"
    );
    let config = host.post("/config-reader-p1", "");
    assert_eq!(config.body, "greeting=hello from runtime.toml\n");

    // examples/pipeline: the three steps, each the child of the one before, then the
    // handler for a text that makes the middle step fail every attempt.
    let follow = |id: &str| -> serde_json::Value {
        wait_until(Duration::from_secs(60), || {
            let r = host.json(&format!("/_jobhost/invocations/{id}"));
            let ended = r["state"] == "succeeded" || r["state"] == "dead";
            let started = r["children"].as_array().is_some_and(|c| !c.is_empty());
            (ended && (started || r["function"] == "pipeline-report")).then_some(r)
        })
    };
    let child = |record: &serde_json::Value| record["children"][0].as_str().unwrap().to_string();
    let split = host.invoke("pipeline-split", "The cat saw the dog, and the bird.");
    let count = follow(&child(&follow(&split)));
    assert_eq!(count["state"], "succeeded", "{count}");
    let report = follow(&child(&count));
    assert_eq!(report["stdout"], "top words: the (3), and (1), bird (1)\n");
    let doomed = host.invoke("pipeline-split", "this text will fail");
    let count = follow(&child(&follow(&doomed)));
    assert_eq!(
        (&count["state"], &count["attempt"]),
        (&serde_json::json!("dead"), &serde_json::json!(3))
    );
    let alert = wait_until(Duration::from_secs(60), || {
        let r = host.json(&format!("/_jobhost/invocations/{}", child(&count)));
        (r["state"] == "succeeded").then_some(r)
    });
    let said = alert["stdout"].as_str().unwrap();
    assert!(
        said.starts_with(&format!(
            "ALERT: pipeline-count invocation {} is dead: exit 1",
            count["id"].as_str().unwrap()
        )),
        "{said}"
    );

    // examples/checkpoint, both ways: it counts, saving its progress.
    for counter in ["counter", "counter-p1"] {
        let id = host.invoke(counter, "3 10");
        let record = wait_until(Duration::from_secs(30), || {
            let r = host.json(&format!("/_jobhost/invocations/{id}"));
            (r["state"] == "succeeded").then_some(r)
        });
        assert_eq!(
            record["stdout"], "counted from 0 to 3\n",
            "{counter}: {record}"
        );
        assert_eq!(record["progress"]["message"], "counted 3 of 3", "{record}");
    }

    // examples/fetch: calls the hello example on this host (allowed by address) and keeps
    // the answer in the key-value store; examples/visits counts with `increment`.
    let url = host.url("/hello/fetched");
    let fetched = host.post("/fetch", &url);
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert!(
        fetched
            .body
            .starts_with(&format!("fetch number 1: GET {url} answered 200")),
        "{}",
        fetched.body
    );
    let kept = host.get("/_jobhost/kv/default/last-body");
    assert_eq!(
        kept.body,
        "hello from a wasi:http component at /hello/fetched\n"
    );
    let denied = host.post("/fetch", "http://localhost:9/");
    assert_eq!(denied.status, 502, "{}", denied.body);
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    assert_eq!(host.get("/visits").body, "visit number 1\n");
    assert_eq!(host.get("/visits").body, "visit number 2\n");

    // ERROR is for failures of the host, and there were none.
    let errors: Vec<String> = host
        .log()
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
