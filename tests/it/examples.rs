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

    // ERROR is for failures of the host, and there were none.
    let errors: Vec<String> = host
        .log()
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
