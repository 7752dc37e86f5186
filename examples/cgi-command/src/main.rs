//! A command with no SDK at all: a plain `fn main` that reads the request body on stdin,
//! the request from CGI variables, and answers with CGI headers and a body on stdout.

use std::io::Read;

fn main() {
    let mut body = String::new();
    std::io::stdin()
        .read_to_string(&mut body)
        .expect("stdin is readable");
    let method = std::env::var("REQUEST_METHOD").unwrap_or_default();
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let name = std::env::var("JOBHOST_PARAM_NAME").unwrap_or_else(|_| "world".to_string());
    eprintln!("cgi-command: {method} {path}");

    let status = if method == "POST" { 201 } else { 200 };
    print!("Status: {status}\r\n");
    print!("Content-Type: application/json\r\n");
    print!("X-Handled-By: cgi-command\r\n\r\n");
    println!(
        "{{\"greeting\":\"hello, {}\",\"method\":\"{}\",\"path\":\"{}\",\"query\":\"{}\",\"body_bytes\":{}}}",
        escape(&name),
        escape(&method),
        escape(&path),
        escape(&query),
        body.len()
    );
}

/// Enough JSON string escaping for an example; real guests would use serde_json.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}
