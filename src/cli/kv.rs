//! `jobhost kv`: operators read and write the key-value stores beside a running host (or
//! without one), with the limits guests have.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::config::{self, Config, check_store_name};
use crate::keyvalue::{self, MAX_LIST, check_key, check_prefix, check_value};
use crate::store::{KvError, Store};

#[derive(Subcommand)]
pub(super) enum Kv {
    /// Print a key's value (its bytes as stored); exit 1 when there is none.
    Get { store: String, key: String },
    /// Set a key's value: text, or `-` to read it from stdin.
    Set {
        store: String,
        key: String,
        value: String,
    },
    /// List a store's keys in order, one per line.
    List {
        store: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete a key; exit 1 when there was none.
    Delete { store: String, key: String },
}

impl Kv {
    fn store(&self) -> &str {
        match self {
            Kv::Get { store, .. }
            | Kv::Set { store, .. }
            | Kv::List { store, .. }
            | Kv::Delete { store, .. } => store,
        }
    }
}

pub(super) async fn run(config: &Config, command: Kv) -> anyhow::Result<ExitCode> {
    check_store_name(command.store()).map_err(|why| anyhow::anyhow!("{why}"))?;
    let store = Store::open_beside_host(&config.host).await?;
    let kv = &store.kv;
    match command {
        Kv::Get { store: name, key } => {
            check_key(&key).map_err(|why| anyhow::anyhow!("{why}"))?;
            let Some(value) = kv
                .get(&name, std::slice::from_ref(&key))
                .await?
                .pop()
                .flatten()
            else {
                eprintln!("no key {key:?} in store {name:?}");
                return Ok(ExitCode::from(1));
            };
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            out.flush()?;
        }
        Kv::Set {
            store: name,
            key,
            value,
        } => {
            let value = match value.as_str() {
                "-" => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .context("reading the value from stdin")?;
                    bytes
                }
                text => text.as_bytes().to_vec(),
            };
            check_key(&key)
                .and_then(|()| check_value(&key, &value))
                .map_err(|why| anyhow::anyhow!("{why}"))?;
            match kv
                .set(
                    &name,
                    &[(key.clone(), value.clone())],
                    config.host.max_kv_keys,
                )
                .await
            {
                Ok(()) => {}
                Err(KvError::Store(e)) => return Err(e),
                Err(refused) => bail!("{refused}"),
            }
            println!("set {key:?} in {name:?} ({} bytes)", value.len());
            let specs = config::functions(config);
            let specs = specs.values().filter_map(|s| s.as_ref().ok());
            if let Some(note) = keyvalue::undeclared(&name, specs) {
                eprintln!("note: {note}");
            }
        }
        Kv::List {
            store: name,
            prefix,
        } => {
            check_prefix(&prefix).map_err(|why| anyhow::anyhow!("{why}"))?;
            let mut out = std::io::stdout().lock();
            let mut from = 0;
            loop {
                let keys = kv.keys(&name, &prefix, from, MAX_LIST).await?;
                for key in &keys {
                    writeln!(out, "{key}")?;
                }
                if (keys.len() as u64) < MAX_LIST {
                    break;
                }
                from += MAX_LIST;
            }
        }
        Kv::Delete { store: name, key } => {
            check_key(&key).map_err(|why| anyhow::anyhow!("{why}"))?;
            if kv.delete(&name, std::slice::from_ref(&key)).await? == 0 {
                eprintln!("no key {key:?} in store {name:?}");
                return Ok(ExitCode::from(1));
            }
            println!("deleted {key:?} from {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
