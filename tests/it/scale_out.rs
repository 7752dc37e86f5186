//! Several hosts on one PostgreSQL database (`[host] store = { postgres = ... }`), against a
//! real server started by `postgres_server`.

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use crate::postgres_server;
use crate::support::{Host, P1, Project, probe, state, wait_until};

/// A project whose store is the PostgreSQL database in `DATABASE_URL`.
fn project() -> Project {
    project_with("")
}

/// The same, with more `[host]` settings.
fn project_with(host: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[host]
store = {{ postgres = {{ env = "DATABASE_URL" }} }}
max_concurrency = 8
{host}
[defaults]
timeout = "60s"
[functions.probe]
triggers = []
"#
    ));
    project.function("probe", &probe(P1));
    project
}

/// Quick to notice a silent host: heartbeats every 500ms, dead after 2s of silence.
const QUICK_LEASE: &str = "heartbeat = \"500ms\"\nlease = \"2s\"";

fn host_id(project: &Project) -> String {
    std::fs::read_to_string(project.path(".jobhost/host-id"))
        .unwrap()
        .trim()
        .to_string()
}

fn signal(host: &Host, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

fn start(project: &Project, url: &str) -> Host {
    project.start_with(|cmd| {
        cmd.env("DATABASE_URL", url);
    })
}

fn cli(project: &Project, url: &str, args: &[&str]) -> Output {
    project
        .jobhost()
        .env("DATABASE_URL", url)
        .args(args)
        .output()
        .expect("jobhost runs")
}

#[test]
fn a_host_on_postgres_runs_durable_work_and_the_cli_reads_the_records() {
    let url = postgres_server::database();
    let project = project();
    let host = start(&project, &url);
    let ids: Vec<String> = (0..20).map(|_| host.invoke("probe", "job 10")).collect();
    for id in &ids {
        let record = host.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
        assert_eq!(record["attempt"], 1);
        assert_eq!(record["host"].as_str(), Some(host_id(&project).as_str()));
        assert!(
            record["stdout"]
                .as_str()
                .unwrap()
                .contains(&format!("id={id} attempt=1")),
            "{record}"
        );
    }
    // A synchronous run from the CLI is recorded in the same database.
    let invoked = cli(&project, &url, &["invoke", "probe", "--data", "echo hi"]);
    assert!(
        invoked.status.success(),
        "{}",
        String::from_utf8_lossy(&invoked.stderr)
    );
    let listed = cli(
        &project,
        &url,
        &["invocations", "--json", "--limit", "1000"],
    );
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 21);
    assert_eq!(listed[0]["trigger"], "manual");
    let logs = cli(&project, &url, &["logs", &ids[0]]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains(&ids[0]),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn three_hosts_on_one_database_run_each_of_1000_jobs_exactly_once_and_each_runs_some() {
    let url = postgres_server::database();
    let projects: Vec<Project> = (0..3).map(|_| project()).collect();
    let hosts: Vec<Host> = projects.iter().map(|p| start(p, &url)).collect();
    let ids: Vec<String> = (0..1000)
        .map(|n| hosts[n % 3].invoke("probe", "job 1"))
        .collect();
    let done = wait_until(Duration::from_secs(180), || {
        let all = records(&hosts[0], "state=succeeded");
        (all.len() == ids.len()).then_some(all)
    });
    let seen: HashSet<&str> = done.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(seen.len(), ids.len());
    for record in &done {
        assert_eq!(record["attempt"], 1, "claimed twice: {record}");
    }
    let ran: HashSet<&str> = done.iter().map(|r| r["host"].as_str().unwrap()).collect();
    let ids_of_hosts: HashSet<String> = projects.iter().map(host_id).collect();
    assert_eq!(
        ran,
        ids_of_hosts.iter().map(String::as_str).collect(),
        "every host ran some"
    );
    // Every host shows the whole cluster.
    for host in &hosts[1..] {
        assert_eq!(records(host, "state=succeeded").len(), ids.len());
    }
}

#[test]
fn a_submission_starts_on_the_host_it_lands_on_when_that_has_a_free_slot_and_else_on_another() {
    let url = postgres_server::database();
    let one_slot = |p: &Project| {
        p.write(
            "runtime.toml",
            "[host]\nstore = { postgres = { env = \"DATABASE_URL\" }, connections = 2 }\nmax_concurrency = 1\n[defaults]\ntimeout = \"60s\"\n[functions.probe]\ntriggers = []\n".as_bytes(),
        );
    };
    let (busy, free) = (project(), project());
    one_slot(&busy);
    let hosts = [start(&busy, &url), start(&free, &url)];
    let ids = [host_id(&busy), host_id(&free)];
    // Work landing on a host with room runs there, once, though both are free: the other
    // host is not woken to race for it.
    for n in 0..20 {
        let id = hosts[n % 2].invoke("probe", "job 1");
        let done =
            hosts[n % 2].wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
        assert_eq!(done["host"].as_str(), Some(ids[n % 2].as_str()), "{done}");
        assert_eq!(done["attempt"], 1);
    }
    // The first takes the busy host's one slot; the second lands there too, but is queued
    // and wakes the other host, which runs it while the first still runs.
    let long = hosts[0].invoke("probe", "job 20000");
    let started =
        hosts[0].wait_for_record(&long, Duration::from_secs(30), |r| state(r) == "running");
    assert_eq!(started["host"].as_str(), Some(ids[0].as_str()));
    let second = hosts[0].invoke("probe", "job 1");
    let moved = hosts[1].wait_for_record(&second, Duration::from_secs(30), |r| {
        state(r) == "succeeded"
    });
    assert_eq!(moved["host"].as_str(), Some(ids[1].as_str()), "{moved}");
    let first = hosts[0].json(&format!("/_jobhost/invocations/{long}"));
    assert_eq!(state(&first), "running", "{first}");
    let done =
        hosts[0].wait_for_record(&long, Duration::from_secs(60), |r| state(r) == "succeeded");
    assert_eq!(done["host"].as_str(), Some(ids[0].as_str()));
}

#[test]
fn a_store_url_from_an_unset_variable_is_named_by_check_with_its_line() {
    let project = project();
    let output = project
        .jobhost()
        .env_remove("DATABASE_URL")
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("runtime.toml:4: `host.store.postgres`: the environment variable DATABASE_URL is not set"),
        "{stdout}"
    );
}

#[test]
fn a_host_whose_database_cannot_be_reached_says_which_and_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let project = project();
    let output = project
        .jobhost()
        .env(
            "DATABASE_URL",
            format!("postgres://jobs:hunter2@127.0.0.1:{port}/jobs"),
        )
        .arg("up")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("postgres://jobs@127.0.0.1:{port}/jobs")),
        "{stderr}"
    );
    assert!(stderr.contains("is the server running"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[test]
fn a_killed_hosts_running_work_is_rescued_by_a_live_host_after_the_lease() {
    let url = postgres_server::database();
    let (a, b) = (project_with(QUICK_LEASE), project_with(QUICK_LEASE));
    let first = start(&a, &url);
    let ids: Vec<String> = (0..4).map(|_| first.invoke("probe", "job 3000")).collect();
    for id in &ids {
        first.wait_for_record(id, Duration::from_secs(30), |r| state(r) == "running");
    }
    let second = start(&b, &url);
    // Any host lists every host, with what each runs.
    let hosts = second.json("/_jobhost/hosts");
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let (a_id, b_id) = (host_id(&a), host_id(&b));
    let a_view = hosts.iter().find(|h| h["id"] == a_id.as_str()).unwrap();
    assert_eq!(
        (a_view["alive"].as_bool(), a_view["running"].as_i64()),
        (Some(true), Some(4))
    );
    let listed = cli(&b, &url, &["hosts"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&a_id) && listed.contains(&b_id), "{listed}");

    first.kill9();
    for id in &ids {
        let record =
            second.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
        assert_eq!(record["attempt"], 2, "{record}");
        assert_eq!(record["host"].as_str(), Some(b_id.as_str()));
        assert!(
            record["stdout"]
                .as_str()
                .unwrap()
                .contains(&format!("id={id} attempt=2")),
            "{record}"
        );
    }
    let hosts = second.json("/_jobhost/hosts");
    let a_view = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == a_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(a_view["alive"], false, "{a_view}");
    assert!(
        second
            .log()
            .iter()
            .any(|l| l.contains("silent for longer than the lease") && l.contains(&a_id)),
        "the rescue is logged, naming the host"
    );
}

#[test]
fn a_stopped_host_that_comes_back_after_its_work_was_rescued_cannot_overwrite_it() {
    let url = postgres_server::database();
    let (a, b) = (project_with(QUICK_LEASE), project_with(QUICK_LEASE));
    let mut stopped = start(&a, &url);
    let id = stopped.invoke("probe", "job 1500");
    stopped.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    signal(&stopped, "STOP");
    let live = start(&b, &url);
    let b_id = host_id(&b);
    let rescued = live.wait_for_record(&id, Duration::from_secs(60), |r| {
        r["attempt"] == 2 && r["host"] == b_id.as_str()
    });
    assert!(
        matches!(state(&rescued), "running" | "succeeded"),
        "{rescued}"
    );
    // Back from its pause, the first host's attempt ends, and its result is dropped.
    signal(&stopped, "CONT");
    stopped.wait_for_log("this attempt's result is dropped", Duration::from_secs(60));
    let record = live.wait_for_record(&id, Duration::from_secs(60), |r| state(r) == "succeeded");
    assert_eq!(record["attempt"], 2, "{record}");
    assert_eq!(record["host"].as_str(), Some(b_id.as_str()));
    assert!(
        record["stdout"].as_str().unwrap().contains("attempt=2"),
        "{record}"
    );
}

#[test]
fn concurrency_1_is_one_run_at_a_time_on_all_hosts_together() {
    let url = postgres_server::database();
    let projects: Vec<Project> = (0..3)
        .map(|_| {
            let project = Project::new(
                r#"
[host]
store = { postgres = { env = "DATABASE_URL" } }
[functions.probe]
triggers = []
concurrency = 1
"#,
            );
            project.function("probe", &probe(P1));
            project
        })
        .collect();
    let hosts: Vec<Host> = projects.iter().map(|p| start(p, &url)).collect();
    let ids: Vec<String> = (0..20)
        .map(|n| hosts[n % 3].invoke("probe", "job 50"))
        .collect();
    let mut runs: Vec<(i64, i64)> = ids
        .iter()
        .map(|id| {
            let record =
                hosts[0].wait_for_record(id, Duration::from_secs(120), |r| state(r) == "succeeded");
            let at = |field: &str| {
                let text = record[field].as_str().unwrap();
                let t = humantime::parse_rfc3339(text).unwrap();
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
            };
            (at("started_at"), at("finished_at"))
        })
        .collect();
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs overlapped: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// `n` projects on one database, each with the probe function and `function` settings.
fn cluster(n: usize, function: &str) -> Vec<Project> {
    (0..n)
        .map(|_| {
            let project = Project::new(&format!(
                r#"
[host]
store = {{ postgres = {{ env = "DATABASE_URL" }} }}
[functions.probe]
{function}
"#
            ));
            project.function("probe", &probe(P1));
            project
        })
        .collect()
}

/// Every record of `host`'s cluster, newest first.
fn records(host: &Host, query: &str) -> Vec<serde_json::Value> {
    host.json(&format!("/_jobhost/invocations?limit=1000&{query}"))
        .as_array()
        .unwrap()
        .clone()
}

/// The occurrence a timer run was for, from its event.
fn scheduled_at(record: &serde_json::Value) -> String {
    let event: serde_json::Value =
        serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    event["scheduled_at"].as_str().unwrap().to_string()
}

#[test]
fn a_timer_on_three_hosts_runs_each_occurrence_once_and_misses_none() {
    let url = postgres_server::database();
    let projects = cluster(3, r#"triggers = [{ every = "1s" }]"#);
    let hosts: Vec<Host> = projects.iter().map(|p| start(p, &url)).collect();
    // Six occurrences after the last host is up.
    let runs = wait_until(Duration::from_secs(60), || {
        let runs = records(&hosts[0], "trigger=timer");
        (runs.len() >= 8).then_some(runs)
    });
    let mut seen: Vec<i64> = runs
        .iter()
        .map(|r| {
            let at = humantime::parse_rfc3339(&scheduled_at(r)).unwrap();
            at.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        })
        .collect();
    seen.sort();
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "an occurrence ran twice: {seen:?}");
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "an occurrence is missing: {seen:?}"
        );
    }
}

#[test]
fn a_cron_catch_up_after_every_host_was_down_runs_once() {
    let url = postgres_server::database();
    // Daily at 03:00 UTC.
    let projects = cluster(
        3,
        r#"triggers = [{ cron = "0 0 3 * * *", catch_up = "once" }]"#,
    );
    // One host starts and stops: the timer's cursor is stored. Then the whole cluster is
    // down for two days: its last handled occurrence is set that far back.
    start(&projects[0], &url).sigterm(Duration::from_secs(30));
    postgres_server::execute(
        &url,
        "UPDATE jobhost_timers SET last = last - 2 * 86400 * 1000",
    );
    let hosts: Vec<Host> = std::thread::scope(|s| {
        let started: Vec<_> = projects
            .iter()
            .map(|p| s.spawn(|| start(p, &url)))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let caught_up = wait_until(Duration::from_secs(30), || {
        let runs = records(&hosts[0], "trigger=timer");
        (!runs.is_empty()).then_some(runs)
    });
    // Every host has tried its catch-up once it logged the timer's next runs.
    let mut hosts = hosts;
    for host in &mut hosts {
        host.wait_for_log("next occurrences", Duration::from_secs(30));
    }
    for host in &hosts {
        let runs = records(host, "trigger=timer");
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0]["reason"], "past_due");
        assert_eq!(runs[0]["id"], caught_up[0]["id"]);
    }
}

#[test]
fn a_folder_that_hosts_share_fires_once_per_file_and_a_host_scoped_watch_on_each() {
    let url = postgres_server::database();
    let shared = tempfile::tempdir().unwrap();
    let folder = shared.path().display().to_string();
    let once = cluster(2, &format!(r#"triggers = [{{ watch = "{folder}" }}]"#));
    let each = cluster(
        2,
        &format!(r#"triggers = [{{ watch = "{folder}", scope = "host" }}]"#),
    );
    let other = postgres_server::database();
    let mut hosts: Vec<Host> = once.iter().map(|p| start(p, &url)).collect();
    hosts.extend(each.iter().map(|p| start(p, &other)));
    for host in &mut hosts {
        host.wait_for_log("watching", Duration::from_secs(30));
    }
    // Each file arrives whole (written beside the folder, then renamed into it), so each
    // is one created event and nothing more.
    let staging = tempfile::tempdir_in(shared.path().parent().unwrap()).unwrap();
    for n in 0..5 {
        let name = format!("f{n}.txt");
        std::fs::write(staging.path().join(&name), "data").unwrap();
        std::fs::rename(staging.path().join(&name), shared.path().join(&name)).unwrap();
    }
    let fired = |host: &Host, want: usize| {
        wait_until(Duration::from_secs(30), || {
            let runs = records(host, "trigger=file&state=succeeded");
            (runs.len() >= want).then_some(runs.len())
        })
    };
    assert_eq!(
        fired(&hosts[2], 10),
        10,
        "scope = \"host\": each host fires"
    );
    // By now the shared watch has settled too: five runs, one per file.
    assert_eq!(fired(&hosts[0], 5), 5);
    let runs = records(&hosts[0], "trigger=file");
    let files: HashSet<&str> = runs
        .iter()
        .map(|r| r["payload"].as_str().unwrap())
        .collect();
    assert_eq!((runs.len(), files.len()), (5, 5), "{runs:?}");
}

#[test]
fn run_on_startup_runs_once_for_hosts_starting_within_the_lease() {
    let url = postgres_server::database();
    let projects = cluster(
        3,
        r#"triggers = [{ cron = "0 0 3 * * *", run_on_startup = true }]"#,
    );
    let mut hosts: Vec<Host> = projects.iter().map(|p| start(p, &url)).collect();
    for host in &mut hosts {
        host.wait_for_log("next occurrences", Duration::from_secs(30));
    }
    let runs = records(&hosts[0], "trigger=timer");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["reason"], "startup");
}

#[test]
fn a_postgresql_restart_loses_no_accepted_job_and_sync_requests_go_on_meanwhile() {
    // A server of its own, to stop and start.
    let server = postgres_server::Server::start();
    let url = server.database();
    let project = Project::new(
        r#"
[host]
store = { postgres = { env = "DATABASE_URL" } }
[functions.probe]
triggers = [{ http = "/probe" }]
"#,
    );
    project.function("probe", &probe(P1));
    let mut host = start(&project, &url);
    let before: Vec<String> = (0..20).map(|_| host.invoke("probe", "job 300")).collect();

    server.stop();
    // Durable work cannot be accepted: 503 with Retry-After, so the caller comes back.
    let refused = wait_until(Duration::from_secs(30), || {
        let answer = host.post("/_jobhost/functions/probe/invoke", "job 1");
        (answer.status != 202).then_some(answer)
    });
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    // Synchronous requests go on; their records wait.
    let answer = host.post("/probe", "echo during the outage");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sync_id = answer
        .header("x-jobhost-invocation-id")
        .unwrap()
        .to_string();
    host.wait_for_log("lost the store", Duration::from_secs(30));

    server.restart();
    host.wait_for_log("is back after", Duration::from_secs(60));
    let after = host.invoke("probe", "job 10");
    for id in before.iter().chain([&after]) {
        host.wait_for_record(id, Duration::from_secs(60), |r| state(r) == "succeeded");
    }
    let record = host.wait_for_record(&sync_id, Duration::from_secs(30), |r| {
        state(r) == "succeeded"
    });
    assert!(
        record["stdout"]
            .as_str()
            .unwrap()
            .contains("during the outage")
    );
    let lost = host
        .log()
        .iter()
        .filter(|l| l.contains("lost the store"))
        .count();
    assert_eq!(lost, 1, "one log line per outage");
}

#[test]
fn a_url_with_sslmode_require_connects_over_tls_verified_against_the_trusted_roots() {
    let server = postgres_server::Server::start_tls();
    let ca = server.ca.clone().unwrap();
    let url = format!("{}?sslmode=require", server.database());
    let project = project();
    let host = project.start_with(|cmd| {
        cmd.env("DATABASE_URL", &url).env("SSL_CERT_FILE", &ca);
    });
    let id = host.invoke("probe", "job 1");
    host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
    // Every connection of the host is encrypted.
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let plain = server.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{db}' AND NOT s.ssl"
    ));
    let encrypted = server.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{db}' AND s.ssl"
    ));
    assert_eq!(plain.trim(), "0");
    assert_ne!(encrypted.trim(), "0");
    drop(host);

    // A server whose certificate is not trusted here is refused, and the error says so.
    let output = project
        .jobhost()
        .env("DATABASE_URL", &url)
        .env_remove("SSL_CERT_FILE")
        .arg("up")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("SSL_CERT_FILE"), "{stderr}");
}

#[test]
fn a_host_finishing_its_runs_in_a_graceful_shutdown_is_alive_and_keeps_them() {
    let url = postgres_server::database();
    let quick = format!("{QUICK_LEASE}\nshutdown_timeout = \"30s\"");
    let (a, b) = (project_with(&quick), project_with(&quick));
    let stopping = start(&a, &url);
    // Longer than the lease: a host that stopped its heartbeat at SIGTERM would lose it.
    let id = stopping.invoke("probe", "job 5000");
    stopping.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    let other = start(&b, &url);
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &stopping.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, _) = stopping.sigterm_wait(Duration::from_secs(60));
    assert!(status.success());
    let record = other.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
    assert_eq!(
        record["attempt"], 1,
        "it ran once, on the host that stopped: {record}"
    );
    assert_eq!(record["host"].as_str(), Some(host_id(&a).as_str()));
}

#[test]
fn a_cancel_through_one_host_interrupts_the_run_on_another() {
    let url = postgres_server::database();
    let (a, b) = (project(), project());
    let runner = start(&a, &url);
    let id = runner.invoke("probe", "loop");
    runner.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "running");
    // The second host starts after the run is claimed, so it is the first host's.
    let other = start(&b, &url);
    let answer = other.post(&format!("/_jobhost/invocations/{id}/cancel"), "");
    assert_eq!(answer.status, 202, "{}", answer.body);
    let asked: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(asked["cancel_requested"], true, "{asked}");
    assert_eq!(asked["host"].as_str(), Some(host_id(&a).as_str()));
    // NOTIFY wakes the runner to look, besides its own polling.
    let record = other.wait_for_record(&id, Duration::from_secs(10), |r| state(r) == "cancelled");
    assert_eq!(record["attempt"], 1, "{record}");
}

#[test]
fn a_claim_whose_answer_was_lost_runs_after_the_lease_on_the_host_that_made_it() {
    let url = postgres_server::database();
    let project = project_with(QUICK_LEASE);
    let mut host = start(&project, &url);
    let own = host_id(&project);
    // Held in the queue while the store is given the state a lost answer leaves: the row
    // claimed (running, next attempt, new fence) by this live host, which never heard so.
    let paused = host.post("/_jobhost/functions/probe/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let id = host.invoke("probe", "echo hello");
    postgres_server::execute(
        &url,
        &format!(
            "UPDATE jobhost_invocations SET state = 'running', owner = '{own}',
                 attempt = attempt + 1, fence = fence + 1,
                 started_at = (extract(epoch FROM now()) * 1000)::bigint
             WHERE id = '{id}'"
        ),
    );
    let resumed = host.post("/_jobhost/functions/probe/resume", "");
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let record = host.wait_for_record(&id, Duration::from_secs(30), |r| state(r) == "succeeded");
    assert_eq!(
        record["attempt"], 1,
        "the lost claim used no attempt: {record}"
    );
    assert_eq!(record["host"].as_str(), Some(own.as_str()));
    let said = host.wait_for_log("not running here", Duration::from_secs(10));
    assert!(said.contains(&id), "the log names the invocation: {said}");
}
