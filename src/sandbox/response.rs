//! A wasi:http guest's response body on its way to hyper: its pieces gathered into as few
//! writes as the guest's pace allows (a small answer goes out in one, head, body and end,
//! with a `Content-Length`), and an end that is not clean when the guest failed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot::{self, error::TryRecvError};

use super::Body as GuestBody;

/// The most bytes gathered into one piece.
const GATHER: usize = 64 << 10;

/// How many times a body holding bytes lets the guest run before it hands them on. The
/// guest's writes each wake this body and yield to it (wasi:http's body stream holds a
/// piece or two), so hyper would write every `print!` in a `write(2)` of its own; letting
/// the guest, which is just behind in the run queue, go first a few times gathers a small
/// answer and its end into one. A guest that really waits (a timer, a request of its own)
/// is not woken meanwhile, so its bytes go out after these few rounds: microseconds.
const YIELDS: u8 = 4;

/// The body hyper sends. It ends in an error, so the connection is cut short and the
/// client knows the body is incomplete, when the guest failed before it finished (a trap,
/// a timeout, a limit): wasmtime-wasi-http ends such a body as if it were whole.
pub(super) struct Response {
    body: GuestBody,
    /// Whether the guest failed, sent before its store (the body's sender) is dropped.
    failed: oneshot::Receiver<bool>,
    held: Held,
    yields: u8,
    trailers: Option<HeaderMap>,
    /// The guest's body failed; said once the held bytes are out.
    error: Option<wasmtime_wasi_http::Error>,
    end: End,
}

#[derive(PartialEq)]
enum End {
    /// The guest's body goes on.
    Open,
    /// It ended; this is what to say once the held bytes are out.
    Clean,
    Cut,
    /// Said.
    Done,
}

/// Bytes taken from the guest, not yet handed to hyper: one piece as it came, or many
/// copied together.
#[derive(Default)]
enum Held {
    #[default]
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Nothing => 0,
            Held::One(b) => b.len(),
            Held::Many(b) => b.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Held::Nothing => Held::One(data),
            Held::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Held::Many(many)
            }
            Held::Many(mut many) => {
                many.extend_from_slice(&data);
                Held::Many(many)
            }
        };
    }

    fn take(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Held::Nothing => None,
            Held::One(b) => Some(b),
            Held::Many(b) => Some(b.freeze()),
        }
    }
}

impl Response {
    pub(super) fn new(body: GuestBody, failed: oneshot::Receiver<bool>) -> Response {
        Response {
            body,
            failed,
            held: Held::Nothing,
            yields: 0,
            trailers: None,
            error: None,
            end: End::Open,
        }
    }

    /// How the guest's body ended: cut when the guest said it failed, or said nothing at
    /// all (its task itself failed); clean when it finished the body (it may still run,
    /// and has said nothing yet).
    fn verdict(&mut self) -> End {
        match self.failed.try_recv() {
            Ok(true) | Err(TryRecvError::Closed) => End::Cut,
            Ok(false) | Err(TryRecvError::Empty) => End::Clean,
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>>;

impl Response {
    /// Takes what the guest has written until there is something to hand on: gathered
    /// bytes once the guest has had its rounds, the trailers, or the end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.end == End::Open && self.trailers.is_none() && self.error.is_none() {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.held.push(data);
                        if self.held.len() >= GATHER {
                            break;
                        }
                    }
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => self.error = Some(e),
                Poll::Ready(None) => self.end = self.verdict(),
                Poll::Pending if self.held.len() == 0 => return Poll::Pending,
                Poll::Pending if self.yields < YIELDS => {
                    self.yields += 1;
                    yield_once(cx);
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        self.yields = 0;
        Poll::Ready(())
    }

    /// Whether the guest failed before it finished the body.
    pub(super) fn cut(&self) -> bool {
        self.end == End::Cut
    }

    /// Gathers the start of the body before hyper gets the response, so that the head
    /// goes out with it (hyper writes what it has whenever the body keeps it waiting). A
    /// guest that sends its head and then waits has it sent after the same few rounds.
    pub(super) async fn gather(mut self) -> Response {
        let mut rounds = 0;
        std::future::poll_fn(|cx| {
            if self.fill(cx).is_ready() || rounds == YIELDS {
                return Poll::Ready(());
            }
            rounds += 1;
            yield_once(cx);
            Poll::Pending
        })
        .await;
        self
    }
}

/// Has the current task polled again once the tasks ready now, the guest's among them, have
/// had their turn. tokio's `yield_now` defers the wake-up to the worker's next round, where
/// waking the task directly would also wake an idle worker to come and steal it.
fn yield_once(cx: &mut Context<'_>) {
    let yielded = std::pin::pin!(tokio::task::yield_now());
    let _ = std::future::Future::poll(yielded, cx);
}

impl Body for Response {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        if this.fill(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(data) = this.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(e) = this.error.take() {
            this.end = End::Done;
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match std::mem::replace(&mut this.end, End::Done) {
            End::Cut => Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseIncomplete))),
            End::Open | End::Clean | End::Done => Poll::Ready(None),
        }
    }

    /// True as soon as the last bytes are handed on, so hyper writes them and the end of
    /// the body at once.
    fn is_end_stream(&self) -> bool {
        match self.end {
            End::Clean | End::Done => {
                self.held.len() == 0 && self.trailers.is_none() && self.error.is_none()
            }
            // Only the guest's end says how it ended: polled, not assumed.
            End::Open | End::Cut => false,
        }
    }

    /// Exact once the guest has ended: a body gathered whole before hyper sees it goes out
    /// with a `Content-Length` rather than in chunks.
    fn size_hint(&self) -> SizeHint {
        match self.end {
            End::Clean if self.trailers.is_none() && self.error.is_none() => {
                SizeHint::with_exact(self.held.len() as u64)
            }
            End::Done => SizeHint::with_exact(0),
            _ => self.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A guest's body whose pieces are all written already.
    struct Written(std::collections::VecDeque<&'static str>);

    impl Body for Written {
        type Data = Bytes;
        type Error = wasmtime_wasi_http::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Polled {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))),
            )
        }
    }

    /// The body of a guest that wrote `pieces` and then ended, failed or not.
    fn written(pieces: &[&'static str], failed: bool) -> Response {
        let (verdict, told) = oneshot::channel();
        verdict.send(failed).unwrap();
        Response::new(
            Written(pieces.iter().copied().collect()).boxed_unsync(),
            told,
        )
    }

    #[tokio::test]
    async fn an_answer_written_at_once_goes_out_whole_with_its_length() {
        let response = written(&["hello ", "from ", "a guest\n"], false)
            .gather()
            .await;
        assert_eq!(response.size_hint().exact(), Some(19));
        let body = response.collect().await.expect("whole").to_bytes();
        assert_eq!(&body[..], b"hello from a guest\n");
    }

    #[tokio::test]
    async fn a_body_the_guest_failed_to_finish_ends_in_an_error() {
        let response = written(&["part of it"], true).gather().await;
        assert!(response.cut());
        assert!(response.collect().await.is_err());
    }
}
