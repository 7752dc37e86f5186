//! The `jobhost` command: parse the CLI, start tracing, run, map the result to an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// A serverless-style function runtime for WebAssembly.
#[derive(Parser)]
#[command(name = "jobhost", version)]
struct Cli {
    /// The configuration file; relative paths in it are relative to its folder.
    #[arg(long, global = true, default_value = "runtime.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: serve HTTP triggers until SIGINT or SIGTERM.
    Up,
    /// Validate the configuration and compile every module; exit non-zero on any problem.
    Check,
    /// Run one invocation now, print its stdout and exit with its status.
    Invoke {
        /// The function's name.
        name: String,
        /// The payload on stdin: text, or @FILE to read a file.
        #[arg(long, default_value = "")]
        data: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOBHOST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<jobhost::config::Config> {
    jobhost::config::load(path)
        .map_err(|problems| anyhow::anyhow!("invalid configuration:\n{problems}"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Up => {
            let config = load_config(&cli.config)?;
            runtime.block_on(jobhost::host::up(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let (functions, problems) = jobhost::host::check(&cli.config)?;
            if problems.is_empty() {
                println!("ok: {functions} functions");
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &problems {
                    println!("{p}");
                }
                println!("{} problems", problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Invoke { name, data } => {
            let config = load_config(&cli.config)?;
            let data = match data.strip_prefix('@') {
                Some(file) => {
                    std::fs::read(file).with_context(|| format!("reading --data @{file}"))?
                }
                None => data.into_bytes(),
            };
            let outcome = runtime.block_on(jobhost::host::invoke(&config, &name, data.into()))?;
            std::io::stdout().write_all(&outcome.stdout)?;
            std::io::stderr().write_all(&outcome.stderr)?;
            match &outcome.result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(failure) => {
                    eprintln!("error: invocation failed: {failure}");
                    let code = outcome.exit_code().unwrap_or(1);
                    Ok(ExitCode::from(
                        u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
                    ))
                }
            }
        }
    }
}
