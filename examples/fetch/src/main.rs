//! Calls a URL the host allows (`allowed_outbound_hosts`) through wasi:http's
//! outgoing-handler, keeps what came back in the key-value store `default` (`last-body`,
//! `last-url`) and counts the fetches there with `increment`. The URL is the request's
//! body (by default the hello example on the host at its usual address).

use std::io::Read;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};

mod kv {
    wit_bindgen::generate!({
        path: "../../wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use kv::wasi::keyvalue::{atomics, store};

fn main() {
    let mut url = String::new();
    let _ = std::io::stdin().read_to_string(&mut url);
    let mut url = url.trim().to_string();
    if url.is_empty() {
        url = "http://127.0.0.1:8080/hello/from-fetch".to_string();
    }
    let (status, body) = match get(&url) {
        Ok(answer) => answer,
        Err(why) => fail(&format!("GET {url}: {why}")),
    };
    let bucket = store::open("").unwrap_or_else(|e| fail(&format!("cannot open the store: {e:?}")));
    let kept = bucket
        .set("last-url", url.as_bytes())
        .and_then(|()| bucket.set("last-body", &body))
        .and_then(|()| atomics::increment(&bucket, "fetches", 1));
    let n = kept.unwrap_or_else(|e| fail(&format!("cannot keep the answer: {e:?}")));
    println!("Content-Type: text/plain\n");
    println!(
        "fetch number {n}: GET {url} answered {status} with {} bytes",
        body.len()
    );
    print!("{}", String::from_utf8_lossy(&body));
}

/// A GET of `url`: its status and body.
fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unknown scheme {other}")),
    };
    let _ = request.set_scheme(Some(&scheme));
    request
        .set_authority(Some(authority))
        .map_err(|()| "invalid host")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "invalid path")?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    let response = loop {
        match future.get() {
            Some(answer) => break answer,
            None => future.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| "no response")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut read = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => read.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
    Ok((status, read))
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    println!("Status: 502\nContent-Type: text/plain\n\n{why}");
    std::process::exit(0)
}
