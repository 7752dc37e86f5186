//! The HTTP front: accepts connections, parses requests (hyper), and sends each to what
//! serves its path: `/healthz`, `/metrics`, the status API under `/_jobhost/`, or a
//! function's route (the HTTP trigger). During shutdown it answers 503.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::answer::{self, API_PREFIX, Body};
use crate::api;
use crate::metrics;
use crate::runtime::Runtime;
use crate::triggers;

/// Accepts connections until the runtime stops accepting, serving each on a tracked task.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>) {
    let shutdown = rt.accept.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_rt = rt.clone();
        let shutdown = shutdown.clone();
        rt.tasks.spawn(async move {
            let service = service_fn(move |req| {
                let rt = conn_rt.clone();
                async move { Ok::<_, Infallible>(handle(&rt, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
    };
    let mut response = answer::text(StatusCode::OK, metrics::get().render(&gauges));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
