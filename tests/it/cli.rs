//! `jobhost invoke` runs one invocation in-process, as the README runs it.

use crate::support::{P1, Project, example, probe};

#[test]
fn invoke_prints_stdout_and_exits_with_the_guest_status() {
    let project = Project::new("");
    project
        .function("wc", &example("wordcount-p1", P1))
        .function("probe", &probe(P1));
    project.write("input.txt", b"a b c\n");

    let output = project
        .jobhost()
        .args(["invoke", "wc", "--data", "one two"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1 2 7\n");

    let file = project.path("input.txt");
    let output = project
        .jobhost()
        .args(["invoke", "wc", "--data"])
        .arg(format!("@{}", file.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1 3 6\n");

    let output = project
        .jobhost()
        .args(["invoke", "probe", "--data", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));

    let output = project
        .jobhost()
        .args(["invoke", "probe", "--data", "env"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("JOBHOST_TRIGGER=manual"));

    let output = project
        .jobhost()
        .args(["invoke", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no function named `nosuch`"));
}

#[test]
fn invoke_prints_the_output_once_and_is_recorded_as_a_manual_invocation() {
    let project = Project::new("");
    project.function("probe", &probe(P1));
    let output = project
        .jobhost()
        .args(["invoke", "probe", "--data", "echo printed once"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "Content-Type: text/plain\n\nprinted once\n");
    assert!(!stderr.contains("printed once"), "{stderr}");

    let output = project
        .jobhost()
        .args(["invoke", "probe", "--data", "read /nowhere"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr.matches("cannot read /nowhere").count(),
        1,
        "{stderr}"
    );

    let output = project
        .jobhost()
        .args(["invocations", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:#?}");
    for r in list {
        assert_eq!(
            (r["function"].as_str(), r["trigger"].as_str()),
            (Some("probe"), Some("manual"))
        );
        assert_eq!(r["reason"], "manual");
    }
    assert_eq!(list[0]["state"], "failed");
    assert_eq!(list[0]["error"], "exit 1");
    assert_eq!(list[1]["state"], "succeeded");
    assert_eq!(
        list[1]["stdout"],
        "Content-Type: text/plain\n\nprinted once\n"
    );

    // The dashboard's filters, from the command line: text in the error, and the page
    // after an id.
    let ids = |args: &[&str]| -> Vec<String> {
        let output = project.jobhost().args(args).output().unwrap();
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let failed = list[0]["id"].as_str().unwrap().to_string();
    let succeeded = list[1]["id"].as_str().unwrap().to_string();
    let json = ["invocations", "--json"];
    assert_eq!(
        ids(&[&json[..], &["--error", "EXIT"]].concat()),
        [failed.as_str()]
    );
    assert_eq!(
        ids(&[&json[..], &["--before", &failed]].concat()),
        [succeeded]
    );
}
