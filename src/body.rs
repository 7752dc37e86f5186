//! Request bodies as they arrive: never more than `max_body`, never a client that keeps the
//! reader waiting for `client_timeout` or sends slower than `MIN_RATE` once that long has
//! passed (a slow client would hold its invocation slot), and, when the whole body is needed
//! (a command's stdin, a durable payload), held against the host's budget for bodies in
//! memory (`max_body_memory`), so that many clients sending big bodies at once cannot take
//! the host's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::sandbox::{IncomingBody, RequestBodyError};

/// The slowest a body may arrive, on average, once `client_timeout` has passed: slower, and
/// a client could hold an invocation slot for as long as it likes, a byte at a time.
pub const MIN_RATE: u64 = 16 << 10;

/// How long a body still arriving when the host stops accepting work may go on.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What a body is read within.
#[derive(Clone)]
pub struct BodyLimits {
    pub max_body: u64,
    pub timeout: Duration,
    /// Cancelled when the host stops accepting work.
    pub stop: CancellationToken,
}

/// A body read within its limits; it fails with `TooLarge` past `max_body`, `TimedOut`
/// when the client keeps it waiting for `timeout` (or, after that long, sends slower than
/// `MIN_RATE`), and `ShuttingDown` when the host stops while the client is still sending.
pub struct Bounded {
    inner: Incoming,
    limits: BodyLimits,
    read: u64,
    started: Instant,
    /// Made the first time the client keeps the body waiting: most bodies (and every
    /// empty one) never do, and cost no timer.
    waiting: Option<Waiting>,
}

/// What a body that keeps its reader waiting is watched for.
struct Waiting {
    idle: Pin<Box<Sleep>>,
    /// Whether `idle` counts the current wait; a frame ends a wait, and the time the reader
    /// itself spends elsewhere is not the client's.
    armed: bool,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: bool,
}

impl Bounded {
    pub fn new(inner: Incoming, limits: BodyLimits) -> Bounded {
        Bounded {
            inner,
            limits,
            read: 0,
            started: Instant::now(),
            waiting: None,
        }
    }

    /// For a wasi:http guest, which reads it as it streams in.
    pub fn streamed(self) -> IncomingBody {
        self.boxed_unsync()
    }

    /// Whether the client, past its first `timeout`, is sending slower than `MIN_RATE`.
    fn too_slow(&self) -> bool {
        let elapsed = self.started.elapsed();
        let grace = self.limits.timeout;
        elapsed > grace && self.read < (elapsed - grace).as_secs() * MIN_RATE
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.limits.max_body {
                        let limit = this.limits.max_body;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(limit))));
                    }
                }
                if this.too_slow() {
                    return Poll::Ready(Some(Err(RequestBodyError::TimedOut)));
                }
                if let Some(waiting) = &mut this.waiting {
                    waiting.armed = false;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let limits = &this.limits;
                let waiting = this.waiting.get_or_insert_with(|| Waiting {
                    idle: Box::pin(tokio::time::sleep(limits.timeout)),
                    armed: true,
                    stop: Box::pin(limits.stop.clone().cancelled_owned()),
                    stopping: false,
                });
                if !waiting.armed {
                    waiting.armed = true;
                    let wait = if waiting.stopping {
                        STOP_GRACE
                    } else {
                        limits.timeout
                    };
                    waiting.idle.as_mut().reset(Instant::now() + wait);
                }
                // The host stopping leaves a body that is still coming a moment to finish.
                if !waiting.stopping && waiting.stop.as_mut().poll(cx).is_ready() {
                    waiting.stopping = true;
                    let deadline = waiting.idle.deadline().min(Instant::now() + STOP_GRACE);
                    waiting.idle.as_mut().reset(deadline);
                }
                match waiting.idle.as_mut().poll(cx) {
                    Poll::Ready(()) if waiting.stopping => {
                        Poll::Ready(Some(Err(RequestBodyError::ShuttingDown)))
                    }
                    Poll::Ready(()) => Poll::Ready(Some(Err(RequestBodyError::TimedOut))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The budget for request bodies held in memory, all requests together
/// (`max_body_memory`), counted in bytes.
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: u64,
}

impl Budget {
    pub fn new(total: u64) -> Budget {
        // A semaphore's permits are taken at most u32::MAX at once: the budget stops at
        // 4 GiB, far beyond what a host should hold in request bodies.
        let total = total.min(u64::from(u32::MAX));
        Budget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes of request bodies held in memory now.
    pub fn held(&self) -> u64 {
        self.total - self.bytes.available_permits() as u64
    }
}

/// Why a whole body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Body(RequestBodyError),
    /// The body is bigger than the whole budget for bodies in memory: it could never be
    /// held.
    #[error(
        "the request body is larger than {0} bytes, all the host holds in memory at once (max_body_memory)"
    )]
    OverBudget(u64),
    /// The budget for bodies in memory stayed spent for `client_timeout`.
    #[error("the host holds as many request bodies as max_body_memory allows; try again")]
    Busy,
}

impl Refused {
    /// The answer's status: 413, 408, 400, or 503 (the host cannot take it now).
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Refused::Body(RequestBodyError::TooLarge(_)) | Refused::OverBudget(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refused::Body(RequestBodyError::TimedOut) => StatusCode::REQUEST_TIMEOUT,
            Refused::Body(RequestBodyError::Client(_)) => StatusCode::BAD_REQUEST,
            Refused::Body(RequestBodyError::ShuttingDown) | Refused::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// A whole body, and its share of the budget for bodies in memory, given back when the
/// share is dropped (when the invocation that reads the body has ended). A body of declared
/// length takes its share at once, so that bodies never each hold part of the budget while
/// waiting for more of it; one sent in chunks takes it as they come.
pub async fn collect(
    mut body: Bounded,
    budget: &Budget,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refused> {
    let timeout = body.limits.timeout;
    let take = |bytes: u64, held: u64| {
        let semaphore = budget.bytes.clone();
        let total = budget.total;
        async move {
            if held + bytes > total {
                return Err(Refused::OverBudget(total));
            }
            let share = u32::try_from(bytes).map_err(|_| Refused::OverBudget(total))?;
            tokio::time::timeout(timeout, semaphore.acquire_many_owned(share))
                .await
                .map_err(|_| Refused::Busy)?
                .map_err(|_| Refused::Busy)
        }
    };
    let declared = body.size_hint().exact();
    if declared.is_some_and(|len| len > body.limits.max_body) {
        // Refused before the client sends it, and before it takes any of the budget.
        return Err(Refused::Body(RequestBodyError::TooLarge(
            body.limits.max_body,
        )));
    }
    let mut held: Option<OwnedSemaphorePermit> = match declared {
        Some(len) if len > 0 => Some(take(len, 0).await?),
        _ => None,
    };
    let mut bytes = Buffer::new(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Refused::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: a command has no use for them
        };
        if declared.is_none() {
            let already = held.as_ref().map_or(0, |h| h.num_permits() as u64);
            let permit = take(data.len() as u64, already).await?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        bytes.extend(&data).map_err(|_| Refused::Busy)?;
    }
    Ok((bytes.freeze(), held))
}

/// Bodies up to this size are kept on the heap; bigger ones in a mapping of their own.
const SMALL: usize = 64 << 10;

/// A body's bytes as they arrive. A big body lives in an anonymous mapping of its own
/// rather than on the allocator's heap: when it is dropped its memory goes back to the
/// system at once, where the allocator would keep the memory of a burst of big uploads
/// long after they ended. (A mapping's pages are taken only as they are written, so
/// mapping a declared length costs nothing until the bytes come.)
enum Buffer {
    Heap(BytesMut),
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl Buffer {
    fn new(declared: Option<u64>) -> Buffer {
        match declared.map(|d| usize::try_from(d).unwrap_or(usize::MAX)) {
            Some(len) if len > SMALL => match memmap2::MmapMut::map_anon(len) {
                Ok(map) => Buffer::Mapped { map, len: 0 },
                Err(_) => Buffer::Heap(BytesMut::new()),
            },
            Some(len) => Buffer::Heap(BytesMut::with_capacity(len)),
            None => Buffer::Heap(BytesMut::new()),
        }
    }

    fn extend(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Buffer::Heap(heap) if heap.len() + data.len() <= SMALL => {
                heap.extend_from_slice(data);
                Ok(())
            }
            Buffer::Heap(heap) => {
                let mut map =
                    memmap2::MmapMut::map_anon((2 * (heap.len() + data.len())).max(SMALL))?;
                map[..heap.len()].copy_from_slice(heap);
                *self = Buffer::Mapped {
                    map,
                    len: heap.len(),
                };
                self.extend(data)
            }
            Buffer::Mapped { map, len } => {
                let end = *len + data.len();
                if end > map.len() {
                    let mut bigger = memmap2::MmapMut::map_anon((2 * map.len()).max(end))?;
                    bigger[..*len].copy_from_slice(&map[..*len]);
                    *map = bigger;
                }
                map[*len..end].copy_from_slice(data);
                *len = end;
                Ok(())
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Buffer::Heap(heap) => heap.freeze(),
            Buffer::Mapped { map, len } => Bytes::from_owner(Mapped { map, len }),
        }
    }
}

/// A mapped body, read-only from here on.
struct Mapped {
    map: memmap2::MmapMut,
    len: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}
