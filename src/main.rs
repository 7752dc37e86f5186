//! The `jobhost` command: parse the CLI, start tracing, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = jobhost::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOBHOST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match jobhost::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Every request allocates and frees a few hundred small blocks (the guest's store, its
/// resources, the HTTP head and body): with mimalloc a request takes 8-17% less CPU than
/// with glibc's malloc in interleaved runs (BENCHMARKS.md), and a burst's memory is given
/// back as well (the hostile tests check RSS after one). Built without transparent huge
/// pages (Cargo.toml): with them an idle host's RSS was 76 MiB instead of 39.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
