//! `jobhost:job` (`wit/job.wit`): what a guest asks of its job beyond WASI (queue more
//! work, keep a checkpoint, say how far it has come), for components through the WIT
//! interface and for preview 1 modules as core functions of module `jobhost`. The sandbox
//! only carries the calls; what they do is the [`Job`] the dispatcher gives each run.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::component::HasData;
use wasmtime::{Caller, Extern, Linker};

use super::{ComponentState, ModuleState};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/job.wit",
        world: "jobhost:job/imports",
        imports: { default: async },
    });
}

use bindings::jobhost::job::job as wit;

/// How to queue a new invocation (see `enqueue-options` in `wit/job.wit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    pub delay_ms: Option<u64>,
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
}

/// What the guest's calls do, for one run. Errors are texts for the guest.
#[async_trait]
pub trait Job: Send + Sync {
    async fn enqueue(
        &self,
        target: &str,
        payload: Vec<u8>,
        options: EnqueueOptions,
    ) -> Result<String, String>;
    async fn checkpoint_save(&self, data: Vec<u8>) -> Result<(), String>;
    async fn checkpoint_load(&self) -> Option<Vec<u8>>;
    async fn set_progress(&self, percent: u8, message: String) -> Result<(), String>;
}

/// A run's [`Job`], or none where there is none to ask (every call then fails).
#[derive(Clone, Default)]
pub struct JobLink(pub Option<Arc<dyn Job>>);

impl JobLink {
    fn get(&self) -> Result<&dyn Job, String> {
        self.0
            .as_deref()
            .ok_or_else(|| "jobhost:job is not available to this run".to_string())
    }
}

impl wit::Host for &JobLink {
    async fn enqueue(
        &mut self,
        target: String,
        payload: Vec<u8>,
        options: wit::EnqueueOptions,
    ) -> Result<String, String> {
        let options = EnqueueOptions {
            delay_ms: options.delay_ms,
            priority: options.priority,
            idempotency_key: options.idempotency_key,
        };
        self.get()?.enqueue(&target, payload, options).await
    }

    async fn checkpoint_save(&mut self, data: Vec<u8>) -> Result<(), String> {
        self.get()?.checkpoint_save(data).await
    }

    async fn checkpoint_load(&mut self) -> Option<Vec<u8>> {
        self.get().ok()?.checkpoint_load().await
    }

    async fn set_progress(&mut self, percent: u8, message: String) -> Result<(), String> {
        self.get()?.set_progress(percent, message).await
    }
}

struct JobData;

impl HasData for JobData {
    type Data<'a> = &'a JobLink;
}

pub(crate) fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<ComponentState, JobData>(linker, |s| &s.job)
}

/// Longest target name and idempotency key a core module may pass.
const MAX_NAME: usize = 4 << 10;
/// Longest payload or checkpoint read from a core module's memory; a longer one is refused
/// by its length, unread. (The job's own limits are lower.)
const MAX_DATA: usize = 16 << 20;

/// The guest's exported memory.
fn memory(
    caller: &mut Caller<'_, ModuleState>,
    function: &str,
) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("jobhost.{function}: the module exports no memory named `memory`"),
    }
}

/// `len` bytes at `ptr`, or `None` when longer than `max`.
fn read(
    caller: &Caller<'_, ModuleState>,
    memory: wasmtime::Memory,
    (ptr, len): (i32, i32),
    max: usize,
) -> wasmtime::Result<Option<Vec<u8>>> {
    let len = len as u32 as usize;
    if len > max {
        return Ok(None);
    }
    let mut bytes = vec![0; len];
    memory.read(caller, ptr as u32 as usize, &mut bytes)?;
    Ok(Some(bytes))
}

/// Writes `bytes` to the guest's buffer when they fit; returns their length either way.
fn answer(
    caller: &mut Caller<'_, ModuleState>,
    memory: wasmtime::Memory,
    (ptr, len): (i32, i32),
    bytes: &[u8],
) -> wasmtime::Result<i32> {
    if bytes.len() <= len as u32 as usize {
        memory.write(caller, ptr as u32 as usize, bytes)?;
    }
    Ok(i32::try_from(bytes.len()).unwrap_or(i32::MAX))
}

/// An error for a core module: its text written to the buffer when it fits, and minus its
/// length returned.
fn failed(
    caller: &mut Caller<'_, ModuleState>,
    memory: wasmtime::Memory,
    out: (i32, i32),
    why: &str,
) -> wasmtime::Result<i32> {
    Ok(-answer(caller, memory, out, why.as_bytes())?.max(1))
}

/// The core functions of module `jobhost` (their signatures are in the README):
/// `enqueue`, `checkpoint_save`, `checkpoint_load`, `set_progress`.
pub(crate) fn add_to_module_linker(linker: &mut Linker<ModuleState>) -> wasmtime::Result<()> {
    type EnqueueArgs = (i32, i32, i32, i32, i64, i32, i32, i32, i32, i32, i32);
    linker.func_wrap_async(
        "jobhost",
        "enqueue",
        |mut caller: Caller<'_, ModuleState>,
         (
            t_ptr,
            t_len,
            p_ptr,
            p_len,
            delay_ms,
            priority,
            has_priority,
            k_ptr,
            k_len,
            o_ptr,
            o_len,
        ): EnqueueArgs| {
            Box::new(async move {
                let memory = memory(&mut caller, "enqueue")?;
                let out = (o_ptr, o_len);
                let Some(target) = read(&caller, memory, (t_ptr, t_len), MAX_NAME)? else {
                    return failed(&mut caller, memory, out, "the target name is too long");
                };
                let Some(payload) = read(&caller, memory, (p_ptr, p_len), MAX_DATA)? else {
                    return failed(&mut caller, memory, out, "the payload is over 10 MiB");
                };
                let Some(key) = read(&caller, memory, (k_ptr, k_len), MAX_NAME)? else {
                    return failed(
                        &mut caller,
                        memory,
                        out,
                        "the idempotency key is over 255 bytes",
                    );
                };
                let options = EnqueueOptions {
                    delay_ms: u64::try_from(delay_ms).ok().filter(|d| *d > 0),
                    priority: (has_priority != 0).then_some(priority),
                    idempotency_key: (!key.is_empty())
                        .then(|| String::from_utf8_lossy(&key).into_owned()),
                };
                let link = caller.data().job.clone();
                let target = String::from_utf8_lossy(&target).into_owned();
                let enqueued = match link.get() {
                    Ok(job) => job.enqueue(&target, payload, options).await,
                    Err(why) => Err(why),
                };
                match enqueued {
                    Ok(id) => answer(&mut caller, memory, out, id.as_bytes()),
                    Err(why) => failed(&mut caller, memory, out, &why),
                }
            })
        },
    )?;
    linker.func_wrap_async(
        "jobhost",
        "checkpoint_save",
        |mut caller: Caller<'_, ModuleState>, (ptr, len, e_ptr, e_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let memory = memory(&mut caller, "checkpoint_save")?;
                let out = (e_ptr, e_len);
                let Some(data) = read(&caller, memory, (ptr, len), MAX_DATA)? else {
                    return failed(&mut caller, memory, out, "the checkpoint is over 1 MiB");
                };
                let link = caller.data().job.clone();
                let saved = match link.get() {
                    Ok(job) => job.checkpoint_save(data).await,
                    Err(why) => Err(why),
                };
                match saved {
                    Ok(()) => Ok(0),
                    Err(why) => failed(&mut caller, memory, out, &why),
                }
            })
        },
    )?;
    linker.func_wrap_async(
        "jobhost",
        "checkpoint_load",
        |mut caller: Caller<'_, ModuleState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                let memory = memory(&mut caller, "checkpoint_load")?;
                let link = caller.data().job.clone();
                let loaded = match link.get() {
                    Ok(job) => job.checkpoint_load().await,
                    Err(_) => None,
                };
                match loaded {
                    Some(data) => answer(&mut caller, memory, (ptr, len), &data),
                    None => Ok(-1),
                }
            })
        },
    )?;
    linker.func_wrap_async(
        "jobhost",
        "set_progress",
        |mut caller: Caller<'_, ModuleState>, (percent, m_ptr, m_len): (i32, i32, i32)| {
            Box::new(async move {
                let memory = memory(&mut caller, "set_progress")?;
                let Some(message) = read(&caller, memory, (m_ptr, m_len), MAX_NAME)? else {
                    return Ok(-1);
                };
                let Ok(percent) = u8::try_from(percent) else {
                    return Ok(-1);
                };
                let link = caller.data().job.clone();
                let message = String::from_utf8_lossy(&message).into_owned();
                let set = match link.get() {
                    Ok(job) => job.set_progress(percent, message).await,
                    Err(why) => Err(why),
                };
                Ok(if set.is_ok() { 0 } else { -1 })
            })
        },
    )?;
    Ok(())
}
