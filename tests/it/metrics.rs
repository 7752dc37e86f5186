//! `/metrics`: Prometheus text with invocations, durations, queue depth, running
//! invocations, timer lateness, watch latency, compile and instantiation times, claims.

use std::time::Duration;

use crate::support::{P1, Project, metric, probe, wait_until};

#[test]
fn metrics_count_invocations_by_function_trigger_and_outcome() {
    let project = Project::new(
        r#"
[functions.web]
module = "probe.wasm"
[functions.tick]
module = "probe.wasm"
triggers = [{ every = "100ms" }]
[functions.files]
module = "probe.wasm"
triggers = [{ watch = "inbox" }]
"#,
    );
    project.function("probe", &probe(P1));
    std::fs::create_dir_all(project.path("inbox")).unwrap();
    let host = project.start();
    host.post("/web", "echo one");
    host.post("/web", "echo two");
    host.post("/web", "exit 3");
    project.write("inbox/a.txt", b"a");
    let text = wait_until(Duration::from_secs(20), || {
        let answer = host.get("/metrics");
        assert_eq!(answer.status, 200);
        let text = answer.body;
        let ready = text.contains(
            r#"jobhost_invocations_total{function="files",trigger="file",outcome="succeeded"} 1"#,
        ) && text.contains(
            r#"jobhost_invocations_total{function="tick",trigger="timer",outcome="succeeded"}"#,
        );
        ready.then_some(text)
    });
    for expected in [
        r#"jobhost_invocations_total{function="web",trigger="http",outcome="succeeded"} 2"#,
        r#"jobhost_invocations_total{function="web",trigger="http",outcome="exit"} 1"#,
        r#"jobhost_invocation_duration_seconds_count{function="web",trigger="http"} 3"#,
        "# TYPE jobhost_queue_depth gauge",
        "# TYPE jobhost_running_invocations gauge",
        "jobhost_timer_lateness_seconds_count",
        "jobhost_watch_latency_seconds_count 1",
        "jobhost_instantiation_seconds_count",
        // The timer's runs were claimed from the queue; a claim's p99 can be held to 20 ms.
        r#"jobhost_claim_seconds_bucket{le="0.02"}"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    // Each of the three functions compiled (or read from the cache) and linked its module.
    assert_eq!(
        metric(&text, "jobhost_module_compile_seconds_count"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"jobhost_watches{state="watching"}"#),
        Some(1.0),
        "{text}"
    );
}
