//! Counts to N, a step every MS milliseconds (stdin: `N [MS]`, default `20 1000`), saving a
//! checkpoint and its progress at every step. Killed midway (`kill -9` of the host, or a
//! shutdown that runs out of time), the next attempt loads the checkpoint and goes on from
//! there instead of from zero.
//!
//! The same source builds two ways: for wasm32-wasip2 it imports `jobhost:job` from
//! `wit/job.wit`, for wasm32-wasip1 the core functions of module `jobhost`.

use std::io::Read;
use std::time::Duration;

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    let mut numbers = input.split_whitespace().map(|n| n.parse::<u64>());
    let n = numbers.next().and_then(Result::ok).unwrap_or(20);
    let ms = numbers.next().and_then(Result::ok).unwrap_or(1000);
    let from: u64 = job::checkpoint_load()
        .and_then(|c| String::from_utf8(c).ok()?.parse().ok())
        .unwrap_or(0);
    if from > 0 {
        eprintln!(
            "resuming at {from} (attempt {})",
            std::env::var("JOBHOST_ATTEMPT").unwrap_or_default()
        );
    }
    for i in from..n {
        std::thread::sleep(Duration::from_millis(ms));
        if let Err(why) = job::checkpoint_save((i + 1).to_string().as_bytes()) {
            eprintln!("cannot save the checkpoint: {why}");
            std::process::exit(1);
        }
        let _ = job::set_progress(
            ((i + 1) * 100 / n.max(1)) as u8,
            &format!("counted {} of {n}", i + 1),
        );
    }
    println!("counted from {from} to {n}");
}

#[cfg(target_env = "p2")]
mod job {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "jobhost:job/imports",
    });

    use jobhost::job::job as host;

    pub fn checkpoint_load() -> Option<Vec<u8>> {
        host::checkpoint_load()
    }

    pub fn checkpoint_save(data: &[u8]) -> Result<(), String> {
        host::checkpoint_save(data)
    }

    pub fn set_progress(percent: u8, message: &str) -> Result<(), String> {
        host::set_progress(percent, message)
    }
}

#[cfg(not(target_env = "p2"))]
mod job {
    /// The imports as the README documents them.
    mod raw {
        #[link(wasm_import_module = "jobhost")]
        unsafe extern "C" {
            pub fn checkpoint_load(ptr: *mut u8, len: i32) -> i32;
            pub fn checkpoint_save(ptr: *const u8, len: i32, err_ptr: *mut u8, err_len: i32)
            -> i32;
            pub fn set_progress(percent: i32, ptr: *const u8, len: i32) -> i32;
        }
    }

    pub fn checkpoint_load() -> Option<Vec<u8>> {
        // SAFETY: with a zero-length buffer the host only says the length.
        let len = usize::try_from(unsafe { raw::checkpoint_load(std::ptr::null_mut(), 0) }).ok()?;
        let mut buf = vec![0u8; len];
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
        unsafe { raw::checkpoint_load(buf.as_mut_ptr(), buf.len() as i32) };
        Some(buf)
    }

    pub fn checkpoint_save(data: &[u8]) -> Result<(), String> {
        let mut why = vec![0u8; 512];
        // SAFETY: the host reads `data` and writes at most `why.len()` bytes into `why`.
        let n = unsafe {
            raw::checkpoint_save(
                data.as_ptr(),
                data.len() as i32,
                why.as_mut_ptr(),
                why.len() as i32,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        why.truncate((n.unsigned_abs() as usize).min(why.len()));
        Err(String::from_utf8_lossy(&why).into_owned())
    }

    pub fn set_progress(percent: u8, message: &str) -> Result<(), String> {
        // SAFETY: the host reads the message's bytes.
        match unsafe { raw::set_progress(percent as i32, message.as_ptr(), message.len() as i32) } {
            0 => Ok(()),
            _ => Err("progress not recorded".to_string()),
        }
    }
}
