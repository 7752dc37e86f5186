//! Key-value state (the README's "Key-value state"): wasi:keyvalue for components, in the
//! stores a function lists, kept in the host's store; `jobhost kv` and `/_jobhost/kv/` for
//! operators.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::{P2, Project, probe};

/// `probe` on a synchronous route, listing `stores`, with `host` as extra `[host]` keys.
fn project(stores: &[&str], host: &str) -> Project {
    let list: Vec<String> = stores.iter().map(|s| format!("{s:?}")).collect();
    let project = Project::new(&format!(
        "[host]\n{host}\n[functions.probe]\ntriggers = [{{ http = \"/probe\" }}]\nkey_value_stores = [{}]\n",
        list.join(", ")
    ));
    project.function("probe", &probe(P2));
    project
}

/// What the probe's `kv ARGS` answered.
fn kv(host: &crate::support::Host, args: &str) -> String {
    let answer = host.post("/probe", &format!("kv {args}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body.trim().to_string()
}

/// `jobhost ARGS` in the project's folder: (exit code, stdout, stderr).
fn jobhost(project: &Project, args: &[&str]) -> (i32, String, String) {
    let output = project.jobhost().args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn keyvalue_get_set_delete_exists_and_batch() {
    let project = project(&["default", "other"], "");
    let host = project.start();
    assert_eq!(kv(&host, "- get a"), "none");
    assert_eq!(kv(&host, "- set a apple"), "set");
    assert_eq!(kv(&host, "default get a"), "apple", "open(\"\") is default");
    assert_eq!(kv(&host, "other get a"), "none", "each store is its own");
    assert_eq!(kv(&host, "- exists a"), "true");
    assert_eq!(kv(&host, "- delete a"), "deleted");
    assert_eq!(kv(&host, "- exists a"), "false");
    assert_eq!(
        kv(&host, "- delete a"),
        "deleted",
        "deleting nothing is no error"
    );
    assert_eq!(kv(&host, "other setmany x=1,y=2,z=3"), "set");
    assert_eq!(kv(&host, "other getmany x,nope,z"), "x=1,none,z=3");
    assert_eq!(kv(&host, "other deletemany x,z"), "deleted");
    assert_eq!(kv(&host, "other list"), "y cursor=None");
}

#[test]
fn keyvalue_list_keys_pages_with_a_cursor() {
    let project = project(&["default"], "");
    let host = project.start();
    let pairs: Vec<String> = (0..1000).map(|i| format!("k{i:04}=v")).collect();
    assert_eq!(kv(&host, &format!("- setmany {}", pairs.join(","))), "set");
    assert_eq!(kv(&host, "- set k1000 v"), "set");
    let first = kv(&host, "- list");
    let (keys, cursor) = first.rsplit_once(' ').unwrap();
    assert_eq!(keys.split(',').count(), 1000);
    assert!(keys.starts_with("k0000,k0001,"), "in order: {keys:.40}");
    assert_eq!(cursor, "cursor=Some(1000)");
    assert_eq!(kv(&host, "- list 1000"), "k1000 cursor=None");
}

#[test]
fn keyvalue_wasmtime_keyvalue_program_checks_pass() {
    let project = project(&["default"], "");
    let host = project.start();
    // wasmtime's keyvalue_main expects `atomics_key` preset to 5: an operator sets it.
    let (code, out, err) = jobhost(&project, &["kv", "set", "default", "atomics_key", "5"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer = host.post("/probe", "kvcheck");
    assert!(
        answer.body.contains("kvcheck passed"),
        "{}: {}",
        answer.status,
        answer.body
    );
    let (code, out, _) = jobhost(&project, &["kv", "get", "default", "atomics_key"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "6"),
        "increment keeps decimal text"
    );
}

#[test]
fn keyvalue_store_not_listed_is_access_denied() {
    let project = project(&["default"], "");
    let mut host = project.start();
    assert_eq!(kv(&host, "secret get a"), "error: Error::AccessDenied");
    let line = host.wait_for_log("refused", Duration::from_secs(10));
    assert!(
        line.contains("\"secret\"") && line.contains("key_value_stores of function probe"),
        "{line}"
    );
    drop(host);
    let project = project_without_stores();
    let mut host = project.start();
    assert_eq!(kv(&host, "- get a"), "error: Error::AccessDenied");
    let line = host.wait_for_log("refused", Duration::from_secs(10));
    assert!(
        line.contains("key-value store \"default\" refused"),
        "open(\"\") is default: {line}"
    );
}

fn project_without_stores() -> Project {
    let project = Project::new("[functions.probe]\ntriggers = [{ http = \"/probe\" }]\n");
    project.function("probe", &probe(P2));
    project
}

#[test]
fn keyvalue_increment_is_atomic_across_concurrent_invocations() {
    let project = project(&["default"], "");
    let host = project.start();
    std::thread::scope(|scope| {
        for _ in 0..50 {
            scope.spawn(|| {
                let answer = kv(&host, "- inc counter 1");
                assert!(answer.parse::<u64>().is_ok(), "{answer}");
            });
        }
    });
    let value = host.get("/_jobhost/kv/default/counter");
    assert_eq!((value.status, value.body.as_str()), (200, "50"));
    assert_eq!(kv(&host, "- set word five"), "set");
    assert!(
        kv(&host, "- inc word 1").contains("is not a decimal number"),
        "a value that is not a number is not incremented"
    );
}

#[test]
fn keyvalue_limits_refuse_and_store_nothing() {
    let project = project(&["default"], "max_kv_keys = 3");
    let host = project.start();
    let long_key = "k".repeat(257);
    let answer = kv(&host, &format!("- set {long_key} v"));
    assert!(
        answer.contains("more than the 256 a key may have"),
        "{answer}"
    );
    assert_eq!(kv(&host, &format!("- exists {}", "k".repeat(256))), "false");
    let answer = kv(&host, &format!("- setbytes big {}", (1 << 20) + 1));
    assert!(answer.contains("more than the 1048576 (1 MiB)"), "{answer}");
    assert_eq!(kv(&host, "- exists big"), "false", "nothing stored");
    assert_eq!(kv(&host, &format!("- setbytes big {}", 1 << 20)), "set");
    assert_eq!(kv(&host, "- setmany a=1,b=2"), "set");
    let answer = kv(&host, "- setmany a=one,c=3");
    assert!(answer.contains("its limit (max_kv_keys)"), "{answer}");
    assert_eq!(kv(&host, "- getmany a,c"), "a=1,none", "all or nothing");
    let many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let answer = kv(&host, &format!("- getmany {}", many.join(",")));
    assert!(
        answer.contains("more than the 1000 a batch may name"),
        "{answer}"
    );
    let answer = kv(&host, "- set nul\u{0}key v");
    assert!(answer.contains("NUL"), "{answer}");
}

#[test]
fn kv_cli_and_api_serve_operators() {
    let project = project(&["default"], "");
    let host = project.start();
    // The API: a key may hold `/` and spaces, percent-encoded.
    let put = host.request("PUT", "/_jobhost/kv/default/users%2Fann%20b", b"{\"n\":1}");
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!put.body.contains("note"), "{}", put.body);
    assert_eq!(kv(&host, "- get users/ann b"), "{\"n\":1}");
    let get = host.get("/_jobhost/kv/default/users%2Fann%20b");
    assert_eq!((get.status, get.body.as_str()), (200, "{\"n\":1}"));
    let page = host.json("/_jobhost/kv/default?prefix=users%2F");
    assert_eq!(page["keys"], serde_json::json!(["users/ann b"]), "{page}");
    assert_eq!(page["cursor"], serde_json::Value::Null);
    let missing = host.get("/_jobhost/kv/default/nope");
    assert_eq!(missing.status, 404, "{}", missing.body);
    // A value over 1 MiB: refused by its declared length, before any of it is sent.
    let mut big = std::net::TcpStream::connect(&host.addr).unwrap();
    big.write_all(b"PUT /_jobhost/kv/default/big HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048577\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let deleted = host.request("DELETE", "/_jobhost/kv/default/users%2Fann%20b", b"");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(kv(&host, "- get users/ann b"), "none");
    // A key may end in `/`, and may not hold a NUL.
    let put = host.request("PUT", "/_jobhost/kv/default/dir/", b"slash");
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(kv(&host, "- get dir/"), "slash");
    assert_eq!(host.get("/_jobhost/kv/default/a%00b").status, 400);
    let bad = host.get("/_jobhost/kv/no%20such");
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A store no function lists: kept, and the operator is told.
    let put = host.request("PUT", "/_jobhost/kv/orphan/k", b"v");
    assert!(
        put.body.contains("no function lists \\\"orphan\\\""),
        "{}",
        put.body
    );

    // The CLI, beside the running host.
    let (code, out, err) = jobhost(&project, &["kv", "set", "default", "color/sky", "blue"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("note"), "{err}");
    jobhost(&project, &["kv", "set", "default", "color/sea", "green"]);
    jobhost(&project, &["kv", "set", "default", "size", "9"]);
    let (code, out, _) = jobhost(&project, &["kv", "list", "default", "--prefix", "color/"]);
    assert_eq!((code, out.as_str()), (0, "color/sea\ncolor/sky\n"));
    let (_, out, _) = jobhost(&project, &["kv", "get", "default", "color/sky"]);
    assert_eq!(out, "blue");
    assert_eq!(kv(&host, "- get color/sky"), "blue", "the guest sees it");
    let (code, _, _) = jobhost(&project, &["kv", "delete", "default", "color/sky"]);
    assert_eq!(code, 0);
    let (code, _, err) = jobhost(&project, &["kv", "get", "default", "color/sky"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no key \"color/sky\" in store \"default\""),
        "{err}"
    );
    let (code, _, err) = jobhost(&project, &["kv", "set", "elsewhere", "k", "v"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: no function lists \"elsewhere\" in key_value_stores"),
        "{err}"
    );
}

#[test]
fn keyvalue_bad_store_names_are_refused_by_check() {
    let project = Project::new(
        "[functions.probe]\ntriggers = []\nkey_value_stores = [\"default\", \"no/slash\"]\n",
    );
    project.function("probe", &probe(P2));
    let (code, out, err) = jobhost(&project, &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        (out.clone() + &err).contains(
            "`functions.probe.key_value_stores[1]`: invalid key-value store name \"no/slash\""
        ),
        "{out}{err}"
    );
}
