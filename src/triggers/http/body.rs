//! Request bodies as they arrive: never more than the route's `max_body`, never waiting
//! longer than `client_timeout` for the next part, and, when a command needs the whole body
//! (its stdin), held against the host's budget for bodies in memory (`max_body_memory`), so
//! that many clients sending big bodies at once cannot take the host's memory.

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

/// A body read within its limits; it fails with `TooLarge` past `max_body`, `TimedOut`
/// when the client sends nothing for `timeout`, and `ShuttingDown` when the host stops
/// accepting work while the client is still sending.
pub(super) struct Bounded {
    inner: Incoming,
    max_body: u64,
    read: u64,
    timeout: Duration,
    stop: CancellationToken,
    /// Made the first time the client keeps the body waiting: most bodies (and every
    /// empty one) never do, and cost no timer.
    waiting: Option<Waiting>,
}

/// What a body that keeps its reader waiting is watched for.
struct Waiting {
    idle: Pin<Box<Sleep>>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Bounded {
    pub(super) fn new(
        inner: Incoming,
        max_body: u64,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Bounded {
        Bounded {
            inner,
            max_body,
            read: 0,
            timeout,
            stop,
            waiting: None,
        }
    }

    /// For a wasi:http guest, which reads it as it streams in.
    pub(super) fn streamed(self) -> IncomingBody {
        self.boxed_unsync()
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
                    if this.read > this.max_body {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.max_body))));
                    }
                }
                if let Some(waiting) = &mut this.waiting {
                    waiting.idle.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (timeout, stop) = (this.timeout, &this.stop);
                let waiting = this.waiting.get_or_insert_with(|| Waiting {
                    idle: Box::pin(tokio::time::sleep(timeout)),
                    stop: Box::pin(stop.clone().cancelled_owned()),
                });
                if waiting.stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(RequestBodyError::ShuttingDown)));
                }
                match waiting.idle.as_mut().poll(cx) {
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

/// Why a whole body could not be had.
pub(super) enum Refused {
    Body(RequestBodyError),
    /// The budget for bodies in memory stayed spent for `client_timeout`.
    Busy,
}

/// A whole body, and its share of the budget for bodies in memory, given back when the
/// share is dropped (when the invocation that reads the body has ended).
pub(super) async fn collect(
    mut body: Bounded,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refused> {
    let declared = body.size_hint().exact();
    let mut bytes = Buffer::new(declared);
    let mut held: Option<OwnedSemaphorePermit> = None;
    let timeout = body.timeout;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Refused::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: a command has no use for them
        };
        let share = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout(timeout, budget.clone().acquire_many_owned(share))
            .await
            .map_err(|_| Refused::Busy)?
            .map_err(|_| Refused::Busy)?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
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
