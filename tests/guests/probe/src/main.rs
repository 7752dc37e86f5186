//! A test guest that does what its stdin says, to probe the sandbox from inside:
//! `env`, `read PATH`, `write PATH`, `alloc MIB`, `loop`, `sleep MS`, `panic`, `exit N`,
//! `flood BYTES`, `echo TEXT`, `config KEY`, `job MS` (sleep, then print the invocation id
//! and attempt), `mark MS PATH` (sleep, then append the id and attempt to PATH), `stamp
//! PATH` (append the time in ms to PATH, then fail), `input` (read the
//! file of a watch event), `raw TEXT` (TEXT alone, `\n` as a line break: headers of the
//! test's choosing), `relay ...` (the whole input as it came). Every other answer starts with a CGI header block. An event (JSON on stdin, from a timer or a watch) runs the
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
        other => fail(&format!("unknown command {other:?}")),
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
