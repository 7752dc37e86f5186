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
    /// List the functions, their shapes and triggers, and any that failed to load.
    Functions {
        #[arg(long)]
        json: bool,
    },
    /// List invocations, newest first.
    Invocations {
        #[arg(long)]
        function: Option<String>,
        /// queued, running, succeeded, failed, dead or skipped.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        trigger: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one invocation with its captured stdout and stderr.
    Logs {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead invocation again, with a fresh round of attempts.
    Retry { id: String },
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
        Command::Functions { json } => {
            let config = load_config(&cli.config)?;
            let functions = jobhost::host::list_functions(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&functions)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<26} TRIGGERS / ERROR",
                    "NAME", "STATUS", "SHAPE"
                );
                for f in &functions {
                    let detail = f.error.clone().unwrap_or_else(|| f.triggers.join("; "));
                    println!(
                        "{:<24} {:<8} {:<26} {detail}",
                        f.name,
                        f.status,
                        f.shape.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Invocations {
            function,
            status,
            trigger,
            limit,
            json,
        } => {
            let config = load_config(&cli.config)?;
            let records = jobhost::records::Records::open_shared(&config.host.data_dir)?;
            if let Some(s) = &status
                && !jobhost::records::STATES.contains(&s.as_str())
            {
                anyhow::bail!(
                    "unknown status {s:?}: use one of {}",
                    jobhost::records::STATES.join(", ")
                );
            }
            let filter = jobhost::records::Filter {
                function,
                state: status,
                trigger,
                limit: Some(limit),
            };
            let list = records.list(&filter)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<36} {:<20} {:<8} {:<9} {:>7} {:<10} {:>9}  ERROR",
                    "ID", "FUNCTION", "TRIGGER", "REASON", "ATTEMPT", "STATE", "MS"
                );
                for r in &list {
                    println!(
                        "{:<36} {:<20} {:<8} {:<9} {:>7} {:<10} {:>9}  {}",
                        r.id,
                        r.function,
                        r.trigger,
                        r.reason,
                        r.attempt,
                        r.state,
                        r.duration_ms.map_or("-".to_string(), |d| d.to_string()),
                        r.error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, json } => {
            let config = load_config(&cli.config)?;
            let records = jobhost::records::Records::open_shared(&config.host.data_dir)?;
            let Some(r) = records.get(&id)? else {
                anyhow::bail!("no invocation {id} in {}", config.host.data_dir.display());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "invocation {} of {} ({} / {}), attempt {} of {}",
                    r.id, r.function, r.trigger, r.reason, r.attempt, r.max_attempts
                );
                println!(
                    "state: {}{}",
                    r.state,
                    r.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                println!(
                    "created {}, started {}, finished {}",
                    r.created_at,
                    r.started_at.as_deref().unwrap_or("-"),
                    r.finished_at.as_deref().unwrap_or("-")
                );
                println!(
                    "--- stdout{} ---",
                    if r.stdout_truncated {
                        " (cut at max_output)"
                    } else {
                        ""
                    }
                );
                print!("{}", r.stdout);
                println!(
                    "--- stderr{} ---",
                    if r.stderr_truncated {
                        " (cut at max_output)"
                    } else {
                        ""
                    }
                );
                print!("{}", r.stderr);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { id } => {
            let config = load_config(&cli.config)?;
            let records = jobhost::records::Records::open_shared(&config.host.data_dir)?;
            let attempts = records
                .get(&id)?
                .and_then(|r| jobhost::host::function_limits(&config, &r.function))
                .map_or(config.defaults.retry.attempts, |l| l.retry.attempts);
            let r = records.retry(&id, attempts)?;
            println!(
                "queued {} again ({} more attempts); a running host starts it within a second",
                r.id, attempts
            );
            Ok(ExitCode::SUCCESS)
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
