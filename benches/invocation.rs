//! Per-invocation overhead with the pooling allocator: instantiate, call and tear down a
//! trivial command module (its `_start` returns at once) and a wasi:http hello component.
//! Everything but the guest's own work: the store, WASI context, limits, capture.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use jobhost::config::{self, Limits};
use jobhost::sandbox::{HttpServed, Run, Sandbox, SandboxSettings};

fn limits() -> Limits {
    config::load(Path::new("/nonexistent/runtime.toml"))
        .expect("defaults")
        .defaults
}

fn run<'a>(limits: &'a Limits) -> Run<'a> {
    Run {
        limits,
        env: vec![("JOBHOST_FUNCTION".into(), "bench".into())],
        stdin: Bytes::new(),
        dirs: Vec::new(),
        config: jobhost::sandbox::GuestConfig::default(),
        program: "bench",
        cancel: None,
        job: jobhost::sandbox::JobLink::default(),
        outbound: jobhost::sandbox::OutboundLink::default(),
        kv: jobhost::sandbox::KvLink::default(),
    }
}

/// The hello component, built from `examples/` as the tests build it.
fn hello_component() -> Vec<u8> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "hello-http",
            "--manifest-path",
        ])
        .arg(repo.join("examples/Cargo.toml"))
        .arg("--target-dir")
        .arg(repo.join("target/guests"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building examples/hello-http failed");
    std::fs::read(repo.join("target/guests/wasm32-wasip2/release/hello_http.wasm"))
        .expect("the component")
}

fn invocation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let sandbox = Sandbox::new(&SandboxSettings {
        max_concurrency: 64,
        fuel: false,
        cache_dir: None,
        max_module_size: 256 << 20,
    })
    .unwrap();
    let limits = limits();

    let trivial = wat::parse_str(
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (memory (export "memory") 1)
            (func (export "_start")))"#,
    )
    .unwrap();
    let module = sandbox.load(&trivial).unwrap();
    c.bench_function("command module (wasip1), trivial _start", |b| {
        b.iter(|| {
            let outcome = runtime.block_on(sandbox.run_command(&module, run(&limits)));
            assert!(outcome.result.is_ok());
        })
    });

    let hello = sandbox.load(&hello_component()).unwrap();
    c.bench_function("wasi:http component, hello", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = http::Request::builder()
                    .uri("http://localhost/hello")
                    .header("host", "localhost")
                    .body(
                        Full::new(Bytes::new())
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    )
                    .unwrap();
                let HttpServed::Responded(response, done) = sandbox
                    .serve_http(&hello, request, run(&limits), None)
                    .await
                else {
                    panic!("the component failed");
                };
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert!(!body.is_empty());
                assert!(done.await.unwrap().result.is_ok());
            })
        })
    });
}

criterion_group!(benches, invocation);
criterion_main!(benches);
