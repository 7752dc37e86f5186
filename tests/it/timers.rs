//! The timer rules, in real time against the real binary (the daylight-saving rules are
//! unit tests of `schedule` with fixed instants).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::support::{Host, P1, Project, probe, state, wait_until};

fn timer_project(trigger: &str, extra: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[defaults]
retry = {{ attempts = 1 }}
[functions.tick]
module = "probe.wasm"
triggers = [{trigger}]
{extra}
"#
    ));
    project.function("probe", &probe(P1));
    project
}

fn records(host: &Host) -> Vec<serde_json::Value> {
    let mut list = host
        .json("/_jobhost/invocations?function=tick&limit=1000")
        .as_array()
        .unwrap()
        .clone();
    list.reverse(); // oldest first
    list
}

/// The occurrence a run was for, from the `env` the probe printed.
fn scheduled_at(record: &serde_json::Value) -> Option<DateTime<Utc>> {
    let stdout = record["stdout"].as_str()?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JOBHOST_SCHEDULED_AT="))?;
    Some(DateTime::parse_from_rfc3339(line).ok()?.with_timezone(&Utc))
}

fn with_reason<'a>(list: &'a [serde_json::Value], reason: &str) -> Vec<&'a serde_json::Value> {
    list.iter().filter(|r| r["reason"] == reason).collect()
}

/// Waits until `host` has at least `n` succeeded runs, and returns every record.
fn until_succeeded(host: &Host, n: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(30), || {
        let list = records(host);
        (list.iter().filter(|r| state(r) == "succeeded").count() >= n).then_some(list)
    })
}

#[test]
fn every_200ms_fires_on_the_grid_without_gaps_doubles_or_early_runs() {
    let project = timer_project(r#"{ every = "200ms" }"#, "");
    let host = project.start();
    let list = until_succeeded(&host, 15);
    let times: Vec<DateTime<Utc>> = list
        .iter()
        .filter(|r| state(r) == "succeeded")
        .filter_map(scheduled_at)
        .collect();
    assert!(times.len() >= 15);
    for pair in times.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_milliseconds(), 200, "{times:?}");
    }
    assert!(
        times.iter().all(|t| t.timestamp_millis() % 200 == 0),
        "{times:?}"
    );
    for r in list.iter().filter(|r| state(r) == "succeeded") {
        let started = DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
        assert!(
            started >= scheduled_at(r).unwrap(),
            "ran before its occurrence: {r}"
        );
        assert!(
            r["stdout"]
                .as_str()
                .unwrap()
                .contains("JOBHOST_PAST_DUE=false")
        );
        assert_eq!(
            (r["trigger"].as_str(), r["reason"].as_str()),
            (Some("timer"), Some("scheduled"))
        );
    }
    // The next five runs are shown, on the 200 ms grid.
    let functions = host.json("/_jobhost/functions");
    let tick = functions
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "tick")
        .unwrap();
    let upcoming: Vec<i64> = tick["upcoming"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert_eq!(upcoming.len(), 5, "{tick}");
    assert!(upcoming.iter().all(|t| t % 200 == 0), "{upcoming:?}");
    assert!(
        upcoming.windows(2).all(|w| w[1] - w[0] == 200),
        "{upcoming:?}"
    );
}

#[test]
fn a_1s_job_on_a_200ms_timer_with_overlap_skip_never_runs_twice_and_records_skips() {
    let project = timer_project(
        r#"{ every = "200ms" }"#,
        "env = { PROBE_EVENT = \"job 1000\" }\n[host]\nmax_concurrency = 8",
    );
    let host = project.start();
    let list = wait_until(Duration::from_secs(30), || {
        let list = records(&host);
        let done = list.iter().filter(|r| state(r) == "succeeded").count();
        let skipped = list.iter().filter(|r| state(r) == "skipped").count();
        (done >= 2 && skipped >= 6).then_some(list)
    });
    let mut spans: Vec<(String, String)> = list
        .iter()
        .filter(|r| state(r) == "succeeded")
        .map(|r| {
            (
                r["started_at"].as_str().unwrap().to_string(),
                r["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs of one timer overlapped: {pair:?}"
        );
    }
}

#[test]
fn overlap_queue_keeps_at_most_one_waiting() {
    let project = timer_project(
        r#"{ every = "200ms", overlap = "queue" }"#,
        "env = { PROBE_EVENT = \"job 700\" }",
    );
    let host = project.start();
    let list = until_succeeded(&host, 3);
    assert!(
        list.iter().filter(|r| state(r) == "queued").count() <= 1,
        "{list:#?}"
    );
    assert!(list.iter().any(|r| state(r) == "skipped"));
}

/// Stops the host after at least one run and waits until `n` more occurrences of a 500 ms
/// timer have passed; returns the last occurrence that ran.
fn stop_across(host: Host, n: i64) -> DateTime<Utc> {
    let (status, _) = host.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let now = Utc::now();
    wait_until(Duration::from_secs(10), || {
        (Utc::now() > now + chrono::Duration::milliseconds(500 * n + 100)).then_some(())
    });
    now
}

fn last_scheduled(host: &Host) -> DateTime<Utc> {
    let list = until_succeeded(host, 2);
    list.iter().filter_map(scheduled_at).max().unwrap()
}

#[test]
fn after_downtime_catch_up_once_runs_exactly_one_past_due_run_with_the_first_missed_occurrence() {
    let project = timer_project(r#"{ every = "500ms" }"#, "");
    let host = project.start();
    last_scheduled(&host);
    stop_across(host, 3);
    let before: Vec<DateTime<Utc>> = {
        let output = project
            .jobhost()
            .args(["invocations", "--json", "--limit", "1000"])
            .output()
            .unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        list.iter().filter_map(scheduled_at).collect()
    };
    let last_run = *before.iter().max().unwrap();

    let host = project.start();
    let past_due = wait_until(Duration::from_secs(30), || {
        let list = records(&host);
        let due: Vec<serde_json::Value> = with_reason(&list, "past_due")
            .into_iter()
            .cloned()
            .collect();
        (!due.is_empty()
            && due.iter().all(|r| state(r) == "succeeded")
            && with_reason(&list, "scheduled").len() > before.len())
        .then_some(due)
    });
    assert_eq!(past_due.len(), 1, "{past_due:#?}");
    let at = scheduled_at(&past_due[0]).unwrap();
    assert_eq!(
        (at - last_run).num_milliseconds(),
        500,
        "the first missed occurrence after {last_run}"
    );
    assert!(
        past_due[0]["stdout"]
            .as_str()
            .unwrap()
            .contains("JOBHOST_PAST_DUE=true")
    );
}

#[test]
fn after_downtime_catch_up_none_runs_nothing_past_due() {
    let project = timer_project(r#"{ every = "500ms", catch_up = "none" }"#, "");
    let host = project.start();
    last_scheduled(&host);
    let count = records(&host).len();
    stop_across(host, 3);
    let host = project.start();
    until_succeeded(&host, count + 2);
    assert!(with_reason(&records(&host), "past_due").is_empty());
}

#[test]
fn an_edited_schedule_is_not_a_miss() {
    let project = timer_project(r#"{ every = "500ms" }"#, "");
    let host = project.start();
    last_scheduled(&host);
    let count = records(&host).len();
    stop_across(host, 3);
    let toml = std::fs::read_to_string(project.path("runtime.toml"))
        .unwrap()
        .replace("every = \"500ms\"", "every = \"700ms\"");
    project.write("runtime.toml", toml.as_bytes());
    let host = project.start();
    until_succeeded(&host, count + 2);
    assert!(with_reason(&records(&host), "past_due").is_empty());
}

#[test]
fn run_on_startup_with_a_due_catch_up_runs_once_not_twice() {
    let project = timer_project(r#"{ every = "500ms", run_on_startup = true }"#, "");
    let host = project.start();
    last_scheduled(&host);
    assert_eq!(with_reason(&records(&host), "startup").len(), 1);
    stop_across(host, 3);
    let host = project.start();
    let list = wait_until(Duration::from_secs(30), || {
        let list = records(&host);
        (!with_reason(&list, "past_due").is_empty()).then_some(list)
    });
    assert_eq!(
        with_reason(&list, "startup").len(),
        1,
        "only the first start ran a startup run"
    );
    assert_eq!(with_reason(&list, "past_due").len(), 1);
}

#[test]
fn run_on_startup_fires_once_per_start_and_not_when_a_reload_restarts_the_timer() {
    let trigger = r#"{ cron = "0 0 1 1 *", run_on_startup = true }"#;
    let project = timer_project(trigger, "env = { PROBE_EVENT = \"echo one\" }");
    let host = project.start();
    let startups = |host: &Host| with_reason(&records(host), "startup").len();
    wait_until(Duration::from_secs(30), || {
        (startups(&host) == 1).then_some(())
    });
    // An edit restarts the function's timer (it logs its next occurrences again).
    let occurrences = |host: &Host| {
        host.log()
            .iter()
            .filter(|l| l.contains("next occurrences"))
            .count()
    };
    assert_eq!(occurrences(&host), 1);
    let edited = std::fs::read_to_string(project.path("runtime.toml"))
        .unwrap()
        .replace("echo one", "echo two");
    project.write("runtime.toml", edited.as_bytes());
    wait_until(Duration::from_secs(30), || {
        (occurrences(&host) == 2).then_some(())
    });
    assert_eq!(startups(&host), 1, "{:?}", records(&host));
    // A new start is a start.
    drop(host);
    let host = project.start();
    wait_until(Duration::from_secs(30), || {
        (startups(&host) == 2).then_some(())
    });
}

#[test]
fn a_failing_run_does_not_disturb_the_next_occurrence() {
    let project = timer_project(
        r#"{ every = "200ms" }"#,
        "env = { PROBE_EVENT = \"exit 1\" }",
    );
    let host = project.start();
    let list = wait_until(Duration::from_secs(30), || {
        let list = records(&host);
        (list.iter().filter(|r| state(r) == "dead").count() >= 4).then_some(list)
    });
    let mut created: Vec<&str> = list
        .iter()
        .filter(|r| state(r) == "dead")
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    created.sort();
    created.dedup();
    assert!(created.len() >= 4);
    assert!(
        list.iter()
            .all(|r| r["error"].is_null() || r["error"] == "exit 1")
    );
}

#[test]
fn a_cron_or_zone_that_does_not_parse_names_the_trigger() {
    let project = timer_project(
        r#"{ cron = "61 * * * *" }, { cron = "* * * * *", tz = "Nowhere/Land" }"#,
        "",
    );
    let output = project.jobhost().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("`functions.tick.triggers[0]`: cron \"61 * * * *\" does not parse"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`functions.tick.triggers[1]`: unknown time zone \"Nowhere/Land\""),
        "{stdout}"
    );
}
