//! The HTTP front: accepts connections (at most `max_connections`, backing off when the
//! system has no file descriptors left), parses requests (hyper; a client that sends no
//! headers for `client_timeout` is closed, an idle kept-alive connection too, and so is one
//! that stops reading its answer for that long), and
//! sends each to what serves its path: `/healthz`, `/metrics`, the status API under
//! `/_jobhost/`, or a function's route (the HTTP trigger). During shutdown it answers 503.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::answer::{self, API_PREFIX, Body};
use crate::api;
use crate::metrics;
use crate::runtime::Runtime;
use crate::triggers;
use crate::ui::{self, UI_PREFIX};

/// How long accepting waits after it failed for want of a resource (file descriptors,
/// memory): the failure is not this connection's, so trying again at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until the runtime stops accepting, at most `max_connections` at
/// once, serving each on a tracked task.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>) {
    let shutdown = rt.accept.clone();
    let max = rt.host.max_connections;
    let open = Arc::new(Semaphore::new(max));
    // Since when accepting fails, so that it is logged once an episode, not once a try.
    let mut failing: Option<Instant> = None;
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = open.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before it was accepted: nothing to wait for.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(e) => {
                if failing.is_none() {
                    tracing::error!(
                        open_connections = max - open.available_permits() - 1,
                        "cannot accept connections ({e}); trying again every {ACCEPT_BACKOFF:?} until it can"
                    );
                    failing = Some(Instant::now());
                }
                drop(slot);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
        };
        if let Some(since) = failing.take() {
            tracing::info!("accepting connections again after {:?}", since.elapsed());
        }
        let _ = stream.set_nodelay(true);
        // A client that stops reading its answer would hold its connection slot for as
        // long as it liked: writes that cannot go on for client_timeout end the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(rt.host.client_timeout));
        let conn_rt = rt.clone();
        let shutdown = shutdown.clone();
        let client_timeout = rt.host.client_timeout;
        rt.tasks.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let rt = conn_rt.clone();
                async move { Ok::<_, Infallible>(handle(&rt, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(client_timeout)
                .serve_connection(TokioIo::new(Box::pin(stream)), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Sends a request to what serves its path.
pub async fn handle(rt: &Runtime, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/healthz" {
        return answer::text(StatusCode::OK, "ok\n");
    }
    if path == "/metrics" {
        return metrics_text(rt).await;
    }
    if rt.accept.is_cancelled() {
        return answer::unavailable("the host is shutting down");
    }
    if path
        .strip_prefix(UI_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return ui::handle(req.method(), path);
    }
    if path.starts_with(API_PREFIX) {
        return api::handle(rt, req).await;
    }
    triggers::http::handle(rt, req).await
}

async fn metrics_text(rt: &Runtime) -> Response<Body> {
    let gauges = metrics::Gauges {
        queue_depth: rt.store.queue.depth().await.unwrap_or(0),
        running: rt.dispatch.running() as i64,
        store_bytes: rt.store.history.bytes().await.unwrap_or(0) as i64,
        body_bytes: rt.bodies.held() as i64,
    };
    let mut response = answer::text(StatusCode::OK, metrics::get().render(&gauges));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
