//! Reads configuration through host imports and prints it: the keys named on stdin (one per
//! line), or `greeting` when stdin is empty. Missing keys print as `KEY is not set`; a key
//! whose value comes from an environment variable the host does not have prints the host's
//! error.
//!
//! The same source builds two ways: for wasm32-wasip2 it imports `wasi:config/store`, for
//! wasm32-wasip1 the core import `jobhost.config_get`.

use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    let mut keys: Vec<&str> = input.split_whitespace().collect();
    if keys.is_empty() {
        keys.push("greeting");
    }
    for key in keys {
        match config::get(key) {
            Ok(Some(value)) => println!("{key}={value}"),
            Ok(None) => println!("{key} is not set"),
            Err(why) => println!("{key}: {why}"),
        }
    }
}

#[cfg(target_env = "p2")]
mod config {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-rc.1;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world imports { import store; }
        ",
        world: "wasi:config/imports",
    });

    pub fn get(key: &str) -> Result<Option<String>, String> {
        use wasi::config::store::Error;
        wasi::config::store::get(key).map_err(|e| match e {
            Error::Upstream(why) | Error::Io(why) => why,
        })
    }
}

#[cfg(not(target_env = "p2"))]
mod config {
    #[link(wasm_import_module = "jobhost")]
    unsafe extern "C" {
        /// Returns the value's length (written only if it fits), -1 if the key is unset, or
        /// -2 if its value comes from an environment variable the host does not have.
        fn config_get(key_ptr: *const u8, key_len: i32, buf_ptr: *mut u8, buf_len: i32) -> i32;
    }

    pub fn get(key: &str) -> Result<Option<String>, String> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: the host reads `key` and writes at most `buf.len()` bytes into `buf`.
            let len = unsafe {
                config_get(
                    key.as_ptr(),
                    key.len() as i32,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                )
            };
            match len {
                -1 => return Ok(None),
                -2 => return Err("its environment variable is not set (see the host's log)".into()),
                _ if len < 0 => return Err(format!("config_get returned {len}")),
                _ => {}
            }
            let len = len as usize;
            if len <= buf.len() {
                buf.truncate(len);
                return String::from_utf8(buf).map(Some).map_err(|e| e.to_string());
            }
            buf.resize(len, 0);
        }
    }
}
