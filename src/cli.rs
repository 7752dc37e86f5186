//! The `jobhost` command line: the clap definitions and what each command does. Commands
//! other than `up` work on their own, beside a running host or without one: `check`,
//! `functions` and `invoke` load the functions in this process; `invocations`, `logs`,
//! `enqueue`, `retry`, `cancel`, `hosts`, `pause`, `resume` and `kv` open the store
//! beside the host.

mod kv;
mod print;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::{self, Config, Trigger, TriggerKind};
use crate::dispatch::{self, Call, Dispatcher, Echo, Parts};
use crate::registry::{self, Registry, Specs};
use crate::sandbox::{Sandbox, Shape};
use crate::serve;
use crate::store::{
    CancelError, Cancelled, Enqueued, Filter, HostId, Reason, RetryError, State, Store,
};

/// A serverless-style function runtime for WebAssembly.
#[derive(Parser)]
#[command(name = "jobhost", version)]
pub struct Cli {
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
        /// queued, scheduled, running, succeeded, failed, dead, skipped or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// http, timer, file, manual, queue or chain.
        #[arg(long)]
        trigger: Option<String>,
        /// Only those whose error holds this text (ASCII letters in any case).
        #[arg(long)]
        error: Option<String>,
        /// Only those older than this invocation id (the last one of the page before).
        #[arg(long)]
        before: Option<String>,
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
    /// Post a message to a queue: one durable invocation of the function that listens.
    Enqueue {
        queue: String,
        /// The message: text, or `-` to read it from stdin; empty when left out.
        payload: Option<String>,
        /// Higher runs first (default: the function's `priority`).
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Run it this long from now, such as 30s or 2h.
        #[arg(long)]
        delay: Option<String>,
        /// Run it at this RFC 3339 time, such as 2026-12-24T18:00:00Z.
        #[arg(long)]
        at: Option<String>,
        /// An idempotency key: a second message with it gets the first one's invocation.
        #[arg(long)]
        key: Option<String>,
    },
    /// Queue a dead invocation again, with a fresh round of attempts.
    Retry { id: String },
    /// Cancel a queued, scheduled, waiting-to-retry or running invocation; it is never
    /// retried. A running one is interrupted by its host within a second.
    Cancel { id: String },
    /// List the hosts sharing the store: when each started, its last heartbeat, whether it
    /// is alive (heard from within the lease) and what it runs.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// Pause a function's background work: its timers fire no runs and its queued work
    /// waits, on every host sharing the store, until `resume`.
    Pause { name: String },
    /// Resume a paused function's background work.
    Resume { name: String },
    /// Read and write the key-value stores guests use (wasi:keyvalue).
    #[command(subcommand)]
    Kv(kv::Kv),
}

/// The API's words for `?delay=` and `?at=` as the CLI's flags.
fn as_flags(why: &str) -> String {
    if why.starts_with("delay ") || why.starts_with("at ") {
        format!("--{why}")
    } else {
        why.replace("give delay or at", "give --delay or --at")
    }
}

/// A message for `jobhost enqueue`.
struct Message {
    queue: String,
    payload: Bytes,
    priority: Option<i32>,
    run_after: Option<i64>,
    key: Option<String>,
}

/// `jobhost enqueue`: the message is written to the store beside the host; the function that
/// listens is found in the configuration (the first in name order, as the host picks it).
async fn enqueue(config: &Config, message: Message) -> anyhow::Result<ExitCode> {
    let Message { queue, .. } = &message;
    if message.payload.len() > dispatch::MAX_ENQUEUE_PAYLOAD {
        bail!(
            "the message is {} bytes, over {} (10 MiB): nothing was queued",
            message.payload.len(),
            dispatch::MAX_ENQUEUE_PAYLOAD
        );
    }
    if let Some(key) = &message.key {
        dispatch::check_idempotency_key(key).map_err(|why| anyhow::anyhow!("--key {why}"))?;
    }
    let specs = config::functions(config);
    let listener = specs.values().flatten().find(|spec| {
        spec.triggers
            .iter()
            .any(|t| matches!(t, Trigger::Queue(q) if q.name == *queue))
    });
    let Some(spec) = listener else {
        bail!(
            "no function listens on queue `{queue}`: give one triggers = [{{ queue = \"{queue}\" }}] in {}",
            config.path.display()
        );
    };
    let vars = vec![("JOBHOST_QUEUE".to_string(), queue.clone())];
    let mut new = dispatch::new_invocation(
        spec,
        TriggerKind::Queue,
        Reason::Message,
        message.payload,
        vars,
    );
    new.priority = message.priority.unwrap_or(spec.priority);
    new.run_after = message.run_after;
    new.idempotency_key = message.key;
    let store = Store::open_beside_host(&config.host).await?;
    match store.queue.enqueue(new).await? {
        Enqueued::New(id) => println!("{id}"),
        Enqueued::Existing {
            id,
            same_payload: true,
        } => println!("{id}"),
        Enqueued::Existing { id, .. } => bail!(
            "the key was used for invocation {id} with another payload: use a new key for a new message"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a command; its error is printed with its chain by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let path = cli.config;
    match cli.command {
        Command::Up => {
            runtime.block_on(serve::up(load(&path)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(&path),
        Command::Functions { json } => {
            let config = load(&path)?;
            let (_, registry) = load_functions(&config, &config::functions(&config), None)?;
            let store = runtime.block_on(Store::open_beside_host(&config.host))?;
            let paused = runtime.block_on(store.triggers.paused())?;
            print::functions(&api::function_views(&registry, &paused), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Invocations {
            function,
            status,
            trigger,
            error,
            before,
            limit,
            json,
        } => {
            let config = load(&path)?;
            let filter = Filter {
                function,
                state: status
                    .map(|s| {
                        State::parse(&s).with_context(|| {
                            format!("unknown status {s:?}: use one of {}", State::names())
                        })
                    })
                    .transpose()?,
                trigger: trigger
                    .map(|t| {
                        TriggerKind::parse(&t).with_context(|| {
                            format!("unknown trigger {t:?}: use one of {}", TriggerKind::names())
                        })
                    })
                    .transpose()?,
                limit: Some(limit),
                excerpt: Some(config.host.record_excerpt),
                error,
                before,
            };
            let store = runtime.block_on(Store::open_beside_host(&config.host))?;
            let list = runtime.block_on(store.history.list(&filter))?;
            print::invocations(&list, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, json } => {
            let config = load(&path)?;
            let store = runtime.block_on(Store::open_beside_host(&config.host))?;
            let Some(mut record) = runtime.block_on(store.history.get(&id))? else {
                bail!("no invocation {id} in {}", store.name);
            };
            record.children = Some(runtime.block_on(store.history.children(&id))?);
            print::record(&record, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { id } => {
            let store = runtime.block_on(Store::open_beside_host(&load(&path)?.host))?;
            let record = match runtime.block_on(store.queue.retry(&id)) {
                Ok(record) => record,
                Err(RetryError::Store(e)) => return Err(e),
                Err(e) => bail!("{e}"),
            };
            println!(
                "queued {} again ({} more attempts); a running host starts it within a second",
                record.id,
                record.max_attempts - record.attempt
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue {
            queue,
            payload,
            priority,
            delay,
            at,
            key,
        } => {
            let payload = match payload.as_deref() {
                Some("-") => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .context("reading the message from stdin")?;
                    bytes
                }
                Some(text) => text.as_bytes().to_vec(),
                None => Vec::new(),
            };
            let message = Message {
                queue,
                payload: payload.into(),
                priority,
                run_after: api::due_time(delay.as_deref(), at.as_deref(), crate::store::now_ms())
                    .map_err(|why| anyhow::anyhow!("{}", as_flags(&why)))?,
                key,
            };
            runtime.block_on(enqueue(&load(&path)?, message))
        }
        Command::Cancel { id } => {
            let store = runtime.block_on(Store::open_beside_host(&load(&path)?.host))?;
            match runtime.block_on(store.queue.cancel(&id)) {
                Ok(Cancelled::Now(record)) => println!("cancelled {}", record.id),
                Ok(Cancelled::Requested(record)) => println!(
                    "asked to cancel {}: it is running on host {}, which interrupts it within a second",
                    record.id,
                    record.host.as_deref().unwrap_or("(unknown)")
                ),
                Err(CancelError::Store(e)) => return Err(e),
                Err(e) => bail!("{e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hosts { json } => {
            let config = load(&path)?;
            let store = runtime.block_on(Store::open_beside_host(&config.host))?;
            let hosts = runtime.block_on(store.cluster.hosts(config.host.lease))?;
            print::hosts(&hosts, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { name } => runtime.block_on(pause(&load(&path)?, &name, true)),
        Command::Resume { name } => runtime.block_on(pause(&load(&path)?, &name, false)),
        Command::Kv(command) => runtime.block_on(kv::run(&load(&path)?, command)),
        Command::Invoke { name, data } => {
            let data = match data.strip_prefix('@') {
                Some(file) => {
                    std::fs::read(file).with_context(|| format!("reading --data @{file}"))?
                }
                None => data.into_bytes(),
            };
            runtime.block_on(invoke(&load(&path)?, &name, data.into()))
        }
    }
}

/// `jobhost pause NAME` and `resume NAME`, beside a running host (which sees it within a
/// second).
async fn pause(config: &Config, name: &str, paused: bool) -> anyhow::Result<ExitCode> {
    let specs = config::functions(config);
    if !specs.contains_key(name) {
        let known: Vec<&str> = specs.keys().map(String::as_str).collect();
        bail!(
            "no function named `{name}`: the functions are {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let store = Store::open_beside_host(&config.host).await?;
    let changed = store.triggers.set_paused(name, paused).await?;
    let now = if paused { "paused" } else { "resumed" };
    if changed {
        println!("{now} {name}");
    } else {
        println!("{name} was {now} already");
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|problems| anyhow::anyhow!("invalid configuration:\n{problems}"))
}

/// The functions as a host on `config` would load them; `only` loads just one.
fn load_functions(
    config: &Config,
    specs: &Specs,
    only: Option<&str>,
) -> anyhow::Result<(Sandbox, Registry)> {
    let sandbox = Sandbox::new(&registry::sandbox_settings(config, specs))?;
    let registry = registry::load(specs, &sandbox, only);
    Ok((sandbox, registry))
}

/// `jobhost check`: every configuration and load problem; exits 1 on any.
fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                println!("{p}");
            }
            println!("{}", print::count(problems.0.len(), "problem"));
            return Ok(ExitCode::FAILURE);
        }
    };
    let specs = config::functions(&config);
    let (_, registry) = load_functions(&config, &specs, None)?;
    // Each value without one once, whether in [config] or a function's own table.
    let unset: std::collections::BTreeSet<String> = config
        .shared
        .values()
        .chain(specs.values().flatten().flat_map(|s| s.config.values()))
        .filter_map(|v| Some(v.as_ref().err()?.to_string()))
        .collect();
    for unset in unset {
        println!("warning: {unset}; a guest that reads it gets an error");
    }
    if registry.problems.is_empty() {
        println!("ok: {}", print::count(registry.functions.len(), "function"));
        return Ok(ExitCode::SUCCESS);
    }
    for p in &registry.problems {
        println!("function `{}`: {}", p.function, p.message);
    }
    println!("{}", print::count(registry.problems.len(), "problem"));
    Ok(ExitCode::FAILURE)
}

/// `jobhost invoke NAME`: one manual invocation in this process, recorded in the store
/// like any other; its stdout and stderr are printed once, and its status is the exit code.
async fn invoke(config: &Config, name: &str, payload: Bytes) -> anyhow::Result<ExitCode> {
    let specs = config::functions(config);
    if !specs.contains_key(name) {
        let known: Vec<&str> = specs.keys().map(String::as_str).collect();
        bail!(
            "no function named `{name}` (known: {}): put {name}.wasm in the functions folder",
            known.join(", ")
        );
    }
    let (sandbox, registry) = load_functions(config, &specs, Some(name))?;
    let registry = Arc::new(registry);
    let Some(function) = registry.functions.get(name) else {
        let why = registry.problems.first().map(|p| p.message.as_str());
        bail!(
            "function `{name}` cannot be loaded: {}",
            why.unwrap_or("unknown")
        );
    };
    if function.prepared.shape == Shape::Http {
        bail!("`{name}` is a wasi:http component: call it over HTTP with `jobhost up` and curl");
    }
    let data_dir = &config.host.data_dir;
    let store = Store::open_beside_host(&config.host).await?;
    let dispatch = Arc::new(Dispatcher::new(Parts {
        sandbox,
        store: store.clone(),
        owner: HostId::load_or_create(data_dir)?,
        max_concurrency: 1,
        record_excerpt: config.host.record_excerpt,
        hard_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        max_chain_depth: config.host.max_chain_depth,
        outbound: Arc::new(crate::outbound::Client::new(&config.host.outbound)),
        max_kv_keys: config.host.max_kv_keys,
    }));
    // What its guest may `enqueue` to: the one function loaded here.
    dispatch.swap(registry.clone());
    let permit = dispatch
        .admit(function)
        .map_err(|busy| anyhow::anyhow!("{busy}"))?;
    let call = Call {
        function,
        trigger: TriggerKind::Manual,
        vars: Vec::new(),
        payload,
        echo: Echo::Neither,
    };
    let (id, outcome) = dispatch.run_sync(call, permit).await;
    store.history.flush().await?;
    std::io::stdout().write_all(&outcome.stdout)?;
    std::io::stderr().write_all(&outcome.stderr)?;
    match &outcome.result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(failure) => {
            eprintln!("error: invocation {id} failed: {failure}");
            let code = outcome.exit_code().unwrap_or(1);
            Ok(ExitCode::from(
                u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
            ))
        }
    }
}
