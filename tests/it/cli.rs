//! SPEC §7: `jobhost invoke` runs one invocation in-process.

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
