//! A test guest that does what its stdin says, to probe the sandbox from inside:
//! `env`, `read PATH`, `write PATH`, `alloc MIB`, `loop`, `sleep MS`, `panic`, `exit N`,
//! `flood BYTES`, `echo TEXT`, `config KEY`, `job MS` (sleep, then print the invocation id
//! and attempt), `mark MS PATH` (sleep, then append the id and attempt to PATH), `stamp
//! PATH` (append the time in ms to PATH, then fail), `fanout N TARGET PAYLOAD` (queue N
//! children through jobhost:job, then trap on the first attempt), `spawn N TARGET PAYLOAD`
//! (queue N children), `enqueue TARGET KEY
//! DELAY_MS PAYLOAD`, `again` (queue itself), `count N MS` (count from the last checkpoint,
//! saving one and the progress at each step), `checkpoint BYTES`, `input` (read the
//! file of a watch event), `raw TEXT` (TEXT alone, `\n` as a line break: headers of the
//! test's choosing), `relay ...` (the whole input as it came), `fetch METHOD URL [BODY]`
//! (an outbound HTTP request: `status N` and the body, or `error: CODE`), `kv STORE OP
//! ARGS` (one wasi:keyvalue call: get, set, delete, exists, list, inc, getmany, setmany,
//! deletemany; the answer or `error: ...`), `kvcheck` (wasmtime's keyvalue test program's
//! checks, on the store `open("")` opens), `fetchn N URL` and `kvbench OP N` (the
//! benchmark's loops: each call's time in µs, one per line; `kvbench` OP is set, get or
//! inc). Every other answer starts with a CGI header block. An event (JSON on stdin, from a timer or a watch) runs the
//! command in the function's `PROBE_EVENT` variable, `env` by default.

use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    // A trigger's event (JSON) runs the command in the function's PROBE_EVENT, or `env`.
    if input.trim_start().starts_with('{') {
        input = std::env::var("PROBE_EVENT").unwrap_or_else(|_| "env".to_string());
    }
    let (command, arg) = input.trim().split_once(' ').unwrap_or((input.trim(), ""));
    let mut out = std::io::stdout().lock();
    if command == "raw" {
        let _ = write!(out, "{}", arg.replace("\\n", "\n"));
        return;
    }
    if command == "relay" {
        // The whole input, as it came: a chain of relays hands it on unchanged.
        let _ = write!(out, "{input}");
        return;
    }
    let _ = write!(out, "Content-Type: text/plain\n\n");
    match command {
        "env" => {
            for (k, v) in std::env::vars() {
                let _ = writeln!(out, "{k}={v}");
            }
        }
        "read" => match std::fs::read_to_string(arg) {
            Ok(text) => {
                let _ = write!(out, "{text}");
            }
            Err(e) => fail(&format!("cannot read {arg}: {e}")),
        },
        "write" => match std::fs::write(arg, "written by probe") {
            Ok(()) => {
                let _ = writeln!(out, "wrote {arg}");
            }
            Err(e) => fail(&format!("cannot write {arg}: {e}")),
        },
        "alloc" => {
            let mib: usize = arg.parse().expect("alloc takes MiB");
            let mut blocks = Vec::new();
            for _ in 0..mib {
                blocks.push(vec![1u8; 1 << 20]);
            }
            let _ = writeln!(out, "allocated {} MiB", blocks.len());
        }
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "sleep" => {
            let ms: u64 = arg.parse().expect("sleep takes milliseconds");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let _ = writeln!(out, "slept {ms} ms");
        }
        "panic" => panic!("probe was asked to panic"),
        "exit" => {
            let _ = out.flush();
            std::process::exit(arg.parse().expect("exit takes a status"))
        }
        "flood" => {
            let mut left: usize = arg.parse().expect("flood takes bytes");
            let chunk = vec![b'x'; 64 * 1024];
            while left > 0 {
                let n = left.min(chunk.len());
                if out.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
        "config" => match config::get(arg) {
            Some(value) => {
                let _ = writeln!(out, "{arg}={value}");
            }
            None => fail(&format!("{arg} is not set")),
        },
        "job" => {
            let ms: u64 = arg.parse().expect("job takes milliseconds");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let id = std::env::var("JOBHOST_INVOCATION_ID").unwrap_or_default();
            let attempt = std::env::var("JOBHOST_ATTEMPT").unwrap_or_default();
            let _ = writeln!(out, "id={id} attempt={attempt}");
        }
        "stamp" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(arg)
                .expect("the stamp file opens");
            let _ = writeln!(file, "{now}");
            fail("stamped, and failing on purpose");
        }
        "mark" => {
            // `mark MS PATH`: work for MS, then append "ID ATTEMPT" to PATH in one write.
            let (ms, path) = arg.split_once(' ').expect("mark takes MS and a path");
            std::thread::sleep(std::time::Duration::from_millis(
                ms.parse().expect("mark takes milliseconds"),
            ));
            let id = std::env::var("JOBHOST_INVOCATION_ID").unwrap_or_default();
            let attempt = std::env::var("JOBHOST_ATTEMPT").unwrap_or_default();
            let line = format!("{id} {attempt}\n");
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .expect("the mark file opens");
            file.write_all(line.as_bytes())
                .expect("the mark is written");
            let _ = write!(out, "{line}");
        }
        "input" => {
            let path = std::env::var("JOBHOST_FILE_PATH").unwrap_or_default();
            let event = std::env::var("JOBHOST_FILE_EVENT").unwrap_or_default();
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let _ = writeln!(out, "read {} bytes of {path} ({event})", bytes.len());
                }
                Err(e) => fail(&format!("cannot read {path}: {e}")),
            }
        }
        "echo" => {
            let _ = writeln!(out, "{arg}");
        }
        "fanout" => {
            // `fanout N TARGET PAYLOAD`: queue N children, then trap on the first attempt.
            let mut parts = arg.splitn(3, ' ');
            let n: usize = parts.next().unwrap().parse().expect("fanout takes N");
            let target = parts.next().expect("fanout takes a target");
            let payload = parts.next().unwrap_or("");
            for _ in 0..n {
                match job::enqueue(target, payload.as_bytes(), None, 0) {
                    Ok(id) => {
                        let _ = writeln!(out, "queued {id}");
                    }
                    Err(why) => fail(&format!("enqueue failed: {why}")),
                }
            }
            if std::env::var("JOBHOST_ATTEMPT").as_deref() == Ok("1") {
                let _ = out.flush();
                panic!("failing after the enqueues, on purpose");
            }
        }
        "spawn" => {
            // `spawn N TARGET PAYLOAD`: queue N children (the enqueue benchmark's parent).
            let mut parts = arg.splitn(3, ' ');
            let n: usize = parts.next().unwrap().parse().expect("spawn takes N");
            let target = parts.next().expect("spawn takes a target");
            let payload = parts.next().unwrap_or("");
            for _ in 0..n {
                if let Err(why) = job::enqueue(target, payload.as_bytes(), None, 0) {
                    fail(&format!("enqueue failed: {why}"));
                }
            }
            let _ = writeln!(out, "queued {n}");
        }
        "enqueue" => {
            // `enqueue TARGET KEY DELAY_MS PAYLOAD`: one child; KEY `-` for the default.
            let mut parts = arg.splitn(4, ' ');
            let target = parts.next().unwrap();
            let key = parts.next().filter(|k| *k != "-");
            let delay: u64 = parts.next().map_or(0, |d| d.parse().unwrap());
            let payload = parts.next().unwrap_or("");
            let _ = writeln!(
                out,
                "{}",
                said(job::enqueue(target, payload.as_bytes(), key, delay))
            );
        }
        "again" => {
            // Queues itself with the same input: a chain that would never end.
            let me = std::env::var("JOBHOST_FUNCTION").unwrap();
            let _ = writeln!(
                out,
                "{}",
                said(job::enqueue(&me, input.as_bytes(), None, 0))
            );
        }
        "count" => {
            // `count N MS`: count to N from the last checkpoint, a step every MS.
            let (n, ms) = arg.split_once(' ').expect("count takes N and MS");
            let n: u64 = n.parse().unwrap();
            let ms: u64 = ms.parse().unwrap();
            let from: u64 = job::checkpoint_load()
                .and_then(|c| String::from_utf8(c).ok()?.parse().ok())
                .unwrap_or(0);
            let _ = writeln!(out, "resumed at {from}");
            for i in from..n {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                if let Err(why) = job::checkpoint_save((i + 1).to_string().as_bytes()) {
                    fail(&format!("checkpoint failed: {why}"));
                }
                let percent = ((i + 1) * 100 / n) as u8;
                let _ = job::set_progress(percent, &format!("counted {} of {n}", i + 1));
            }
            let _ = writeln!(out, "counted from {from} to {n}");
        }
        "checkpoint" => {
            // `checkpoint BYTES`: save that many bytes; say what the host answered.
            let bytes: usize = arg.parse().unwrap();
            match job::checkpoint_save(&vec![b'c'; bytes]) {
                Ok(()) => {
                    let _ = writeln!(out, "saved {bytes}");
                }
                Err(why) => {
                    let _ = writeln!(out, "not saved: {why}");
                }
            }
            let kept = job::checkpoint_load().map_or(0, |c| c.len());
            let _ = writeln!(out, "kept {kept}");
        }
        "fetch" => {
            let mut parts = arg.splitn(3, ' ');
            let method = parts.next().unwrap_or("GET");
            let url = parts.next().expect("fetch takes METHOD URL [BODY]");
            let body = parts.next().unwrap_or("");
            match fetch::fetch(method, url, body.as_bytes()) {
                Ok((status, body)) => {
                    let _ = writeln!(out, "status {status}");
                    let _ = out.write_all(&body);
                }
                Err(why) => {
                    let _ = writeln!(out, "error: {why}");
                }
            }
        }
        "kv" => {
            let _ = writeln!(out, "{}", kv::call(arg));
        }
        "fetchn" => {
            let (n, url) = arg.split_once(' ').expect("fetchn takes N and a URL");
            for _ in 0..n.parse::<usize>().unwrap() {
                let started = std::time::Instant::now();
                if let Err(why) = fetch::fetch("GET", url, b"") {
                    fail(&format!("fetch failed: {why}"));
                }
                let _ = writeln!(out, "{}", started.elapsed().as_micros());
            }
        }
        "kvbench" => {
            let (op, n) = arg.split_once(' ').expect("kvbench takes OP and N");
            for i in 0..n.parse::<usize>().unwrap() {
                let started = std::time::Instant::now();
                let answer = match op {
                    "set" => kv::call(&format!("- set k{} value-{i}", i % 100)),
                    "get" => kv::call(&format!("- get k{}", i % 100)),
                    _ => kv::call("- inc counter 1"),
                };
                if answer.starts_with("error") {
                    fail(&answer);
                }
                let _ = writeln!(out, "{}", started.elapsed().as_micros());
            }
        }
        "kvcheck" => {
            kv::check();
            let _ = writeln!(out, "kvcheck passed");
        }
        other => fail(&format!("unknown command {other:?}")),
    }
}

/// wasi:keyvalue through the repository's copy of its `0.2.0-draft` WIT.
#[cfg(target_env = "p2")]
mod kv {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });

    use wasi::keyvalue::{atomics, batch, store};

    fn list(arg: &str) -> Vec<String> {
        arg.split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `STORE OP ARGS`: one call, its answer as a line.
    pub fn call(arg: &str) -> String {
        let mut parts = arg.splitn(3, ' ');
        let name = parts.next().unwrap_or("");
        let name = if name == "-" { "" } else { name };
        let op = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        let bucket = match store::open(name) {
            Ok(bucket) => bucket,
            Err(e) => return format!("error: {e:?}"),
        };
        let answer = match op {
            "get" => bucket
                .get(rest)
                .map(|v| v.map_or("none".to_string(), |v| String::from_utf8_lossy(&v).into())),
            "set" => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                bucket
                    .set(key, value.as_bytes())
                    .map(|()| "set".to_string())
            }
            "setbytes" => {
                let (key, n) = rest.split_once(' ').unwrap_or((rest, "0"));
                let value = vec![b'v'; n.parse().unwrap()];
                bucket.set(key, &value).map(|()| "set".to_string())
            }
            "delete" => bucket.delete(rest).map(|()| "deleted".to_string()),
            "exists" => bucket.exists(rest).map(|e| e.to_string()),
            "list" => {
                let cursor = rest.parse().ok();
                bucket
                    .list_keys(cursor)
                    .map(|r| format!("{} cursor={:?}", r.keys.join(","), r.cursor))
            }
            "inc" => {
                let (key, delta) = rest.split_once(' ').unwrap_or((rest, "1"));
                atomics::increment(&bucket, key, delta.parse().unwrap()).map(|n| n.to_string())
            }
            "getmany" => batch::get_many(&bucket, &list(rest)).map(|values| {
                values
                    .into_iter()
                    .map(|v| match v {
                        Some((k, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                        None => "none".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            "setmany" => {
                let pairs: Vec<(String, Vec<u8>)> = list(rest)
                    .into_iter()
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((&p, ""));
                        (k.to_string(), v.as_bytes().to_vec())
                    })
                    .collect();
                batch::set_many(&bucket, &pairs).map(|()| "set".to_string())
            }
            "deletemany" => {
                batch::delete_many(&bucket, &list(rest)).map(|()| "deleted".to_string())
            }
            other => return format!("error: unknown kv op {other:?}"),
        };
        answer.unwrap_or_else(|e| format!("error: {e:?}"))
    }

    /// What wasmtime's `keyvalue_main` test program checks, with `atomics_key` preset to 5.
    pub fn check() {
        let bucket = store::open("").unwrap();
        assert_eq!(atomics::increment(&bucket, "atomics_key", 1).unwrap(), 6);
        let resp = bucket.list_keys(None).unwrap();
        assert_eq!(resp.keys, vec!["atomics_key".to_string()]);
        bucket.set("hello", "world".as_bytes()).unwrap();
        let v = bucket.get("hello").unwrap();
        assert_eq!(String::from_utf8(v.unwrap()).unwrap(), "world");
        assert!(bucket.exists("hello").unwrap());
        bucket.delete("hello").unwrap();
        assert!(!bucket.exists("hello").unwrap());
        batch::set_many(
            &bucket,
            &[
                ("a1".to_string(), "v1".as_bytes().to_vec()),
                ("b1".to_string(), "v1".as_bytes().to_vec()),
                ("c1".to_string(), "v1".as_bytes().to_vec()),
            ],
        )
        .unwrap();
        batch::delete_many(&bucket, &["a1".to_string(), "c1".to_string()]).unwrap();
        let values = batch::get_many(
            &bucket,
            &["a1".to_string(), "b1".to_string(), "c1".to_string()],
        )
        .unwrap();
        assert_eq!(
            values,
            vec![
                None,
                Some(("b1".to_string(), "v1".as_bytes().to_vec())),
                None
            ]
        );
    }
}

#[cfg(not(target_env = "p2"))]
mod kv {
    pub fn call(_: &str) -> String {
        "error: a wasip1 module has no wasi:keyvalue".to_string()
    }

    pub fn check() {
        panic!("a wasip1 module has no wasi:keyvalue");
    }
}

/// An outbound request through wasi:http/outgoing-handler.
#[cfg(target_env = "p2")]
mod fetch {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    pub fn fetch(method: &str, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        let method = match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        };
        request.set_method(&method).map_err(|()| "bad method")?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| "bad scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "bad authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| "bad path")?;
        let outgoing = request.body().map_err(|()| "no body")?;
        let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        {
            let stream = outgoing.write().map_err(|()| "no body stream")?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
        let response = loop {
            match future.get() {
                Some(result) => break result,
                None => future.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| "the response was taken already")?
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let incoming = response.consume().map_err(|()| "no response body")?;
        let stream = incoming.stream().map_err(|()| "no response stream")?;
        let mut read = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => read.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                    let code = wasip2::http::types::http_error_code(&e);
                    return Err(format!("reading the body: {code:?}"));
                }
            }
        }
        Ok((status, read))
    }
}

#[cfg(not(target_env = "p2"))]
mod fetch {
    pub fn fetch(_: &str, _: &str, _: &[u8]) -> Result<(u16, Vec<u8>), String> {
        Err("a wasip1 module has no outbound HTTP".to_string())
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    let _ = std::io::stdout().flush();
    std::process::exit(1)
}

#[cfg(target_env = "p2")]
mod config {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-draft;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world imports { import store; }
        ",
        world: "wasi:config/imports",
    });

    pub fn get(key: &str) -> Option<String> {
        wasi::config::store::get(key).ok().flatten()
    }
}

#[cfg(not(target_env = "p2"))]
mod config {
    #[link(wasm_import_module = "jobhost")]
    unsafe extern "C" {
        fn config_get(key_ptr: *const u8, key_len: i32, buf_ptr: *mut u8, buf_len: i32) -> i32;
    }

    pub fn get(key: &str) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        // SAFETY: the host reads `key` and writes at most `buf.len()` bytes into `buf`.
        let len = unsafe {
            config_get(
                key.as_ptr(),
                key.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as i32,
            )
        };
        let len = usize::try_from(len).ok()?;
        buf.truncate(len.min(buf.len()));
        String::from_utf8(buf).ok()
    }
}

/// What the host answered an enqueue, as the tests read it.
fn said(enqueued: Result<String, String>) -> String {
    match enqueued {
        Ok(id) => format!("queued {id}"),
        Err(why) => format!("enqueue failed: {why}"),
    }
}

/// `jobhost:job`, through the repository's own WIT for a component.
#[cfg(target_env = "p2")]
mod job {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "jobhost:job/imports",
    });

    use jobhost::job::job as host;

    pub fn enqueue(
        target: &str,
        payload: &[u8],
        key: Option<&str>,
        delay_ms: u64,
    ) -> Result<String, String> {
        let options = host::EnqueueOptions {
            delay_ms: (delay_ms > 0).then_some(delay_ms),
            priority: None,
            idempotency_key: key.map(str::to_string),
        };
        host::enqueue(target, payload, &options)
    }

    pub fn checkpoint_save(data: &[u8]) -> Result<(), String> {
        host::checkpoint_save(data)
    }

    pub fn checkpoint_load() -> Option<Vec<u8>> {
        host::checkpoint_load()
    }

    pub fn set_progress(percent: u8, message: &str) -> Result<(), String> {
        host::set_progress(percent, message)
    }
}

/// `jobhost:job` as the core functions of module `jobhost`, as the README documents them.
#[cfg(not(target_env = "p2"))]
mod job {
    #[link(wasm_import_module = "jobhost")]
    unsafe extern "C" {
        #[link_name = "enqueue"]
        fn enqueue_raw(
            target_ptr: *const u8,
            target_len: i32,
            payload_ptr: *const u8,
            payload_len: i32,
            delay_ms: i64,
            priority: i32,
            has_priority: i32,
            key_ptr: *const u8,
            key_len: i32,
            out_ptr: *mut u8,
            out_len: i32,
        ) -> i32;
        #[link_name = "checkpoint_save"]
        fn checkpoint_save_raw(ptr: *const u8, len: i32, err_ptr: *mut u8, err_len: i32) -> i32;
        #[link_name = "checkpoint_load"]
        fn checkpoint_load_raw(ptr: *mut u8, len: i32) -> i32;
        #[link_name = "set_progress"]
        fn set_progress_raw(percent: i32, ptr: *const u8, len: i32) -> i32;
    }

    /// The text in `buf` that the host said is `n` bytes long (cut to the buffer).
    fn text(buf: &[u8], n: i32) -> String {
        let n = (n.unsigned_abs() as usize).min(buf.len());
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    pub fn enqueue(
        target: &str,
        payload: &[u8],
        key: Option<&str>,
        delay_ms: u64,
    ) -> Result<String, String> {
        let key = key.unwrap_or("");
        let mut out = vec![0u8; 1024];
        // SAFETY: the host reads the given ranges and writes at most `out.len()` bytes.
        let n = unsafe {
            enqueue_raw(
                target.as_ptr(),
                target.len() as i32,
                payload.as_ptr(),
                payload.len() as i32,
                delay_ms as i64,
                0,
                0,
                key.as_ptr(),
                key.len() as i32,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        if n >= 0 {
            Ok(text(&out, n))
        } else {
            Err(text(&out, n))
        }
    }

    pub fn checkpoint_save(data: &[u8]) -> Result<(), String> {
        let mut err = vec![0u8; 1024];
        // SAFETY: as above.
        let n = unsafe {
            checkpoint_save_raw(
                data.as_ptr(),
                data.len() as i32,
                err.as_mut_ptr(),
                err.len() as i32,
            )
        };
        if n >= 0 { Ok(()) } else { Err(text(&err, n)) }
    }

    pub fn checkpoint_load() -> Option<Vec<u8>> {
        // SAFETY: a zero-length buffer: the host only says the length.
        let n = unsafe { checkpoint_load_raw(std::ptr::null_mut(), 0) };
        let len = usize::try_from(n).ok()?;
        let mut buf = vec![0u8; len];
        // SAFETY: the host writes at most `buf.len()` bytes.
        unsafe { checkpoint_load_raw(buf.as_mut_ptr(), buf.len() as i32) };
        Some(buf)
    }

    pub fn set_progress(percent: u8, message: &str) -> Result<(), String> {
        // SAFETY: the host reads the message's bytes.
        let n = unsafe { set_progress_raw(percent as i32, message.as_ptr(), message.len() as i32) };
        if n == 0 {
            Ok(())
        } else {
            Err("progress not recorded".to_string())
        }
    }
}
