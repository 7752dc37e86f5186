//! A wasi:http test guest that misbehaves on request, by the path after its first segment
//! (the route): `/panic` before answering, `/loop` forever, `/alloc/MIB`, `/stream/BYTES`
//! (a long streamed body), `/partial/BYTES` (that much of a body, then a loop until the
//! timeout), `/partial-panic/BYTES` (that much, then a panic), `/env`, `/count` (how many
//! requests this instance has seen: 1 in a fresh one), `/read/PATH...` (the file at /PATH);
//! anything else echoes the method, path and body.

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Probe);

struct Probe;

static SEEN: AtomicU64 = AtomicU64::new(0);

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let out_body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = out_body.write().expect("the stream is taken once");
    for chunk in body.chunks(4096) {
        let _ = out.write_all(chunk);
    }
    let _ = out.flush();
    drop(out);
    let _ = OutgoingBody::finish(out_body, None);
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the body is consumed once");
    let mut bytes = Vec::new();
    {
        let mut stream = body.stream().expect("the stream is taken once");
        let _ = stream.read_to_end(&mut bytes);
    }
    IncomingBody::finish(body);
    bytes
}

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let bare = path.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = bare.trim_start_matches('/').split('/').skip(1).collect();
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        match parts.as_slice() {
            ["panic"] => panic!("probe-http was asked to panic"),
            ["loop"] => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ["alloc", mib] => {
                let mib: usize = mib.parse().unwrap_or(0);
                let blocks: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
                respond(
                    response_out,
                    200,
                    format!("allocated {} MiB\n", blocks.len()).as_bytes(),
                );
            }
            ["stream", bytes] => {
                let bytes: usize = bytes.parse().unwrap_or(0);
                respond(response_out, 200, &vec![b'y'; bytes]);
            }
            ["partial" | "partial-panic", bytes] => {
                let bytes: usize = bytes.parse().unwrap_or(0);
                let response = OutgoingResponse::new(Fields::new());
                let out_body = response.body().expect("the body is taken once");
                ResponseOutparam::set(response_out, Ok(response));
                let mut out = out_body.write().expect("the stream is taken once");
                for chunk in vec![b'p'; bytes].chunks(4096) {
                    let _ = out.write_all(chunk);
                }
                let _ = out.flush();
                if parts[0] == "partial-panic" {
                    panic!("probe-http was asked to panic mid-body");
                }
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ["read", path @ ..] => match std::fs::read(format!("/{}", path.join("/"))) {
                Ok(bytes) => respond(response_out, 200, &bytes),
                Err(e) => respond(response_out, 404, format!("{e}\n").as_bytes()),
            },
            ["count"] => respond(response_out, 200, format!("{seen}\n").as_bytes()),
            ["env"] => {
                let env: String = std::env::vars()
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect();
                respond(response_out, 200, env.as_bytes());
            }
            _ => {
                let method = match request.method() {
                    Method::Get => "GET".to_string(),
                    Method::Post => "POST".to_string(),
                    other => format!("{other:?}"),
                };
                let body = read_body(&request);
                let text = format!("{method} {path} {}\n", String::from_utf8_lossy(&body));
                respond(response_out, 200, text.as_bytes());
            }
        }
    }
}
