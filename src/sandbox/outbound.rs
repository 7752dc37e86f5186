//! `wasi:http/outgoing-handler`: a component's outbound HTTP requests. The sandbox only
//! carries them, in plain `http` types; whether a request may go, and how it goes, is the
//! [`Outbound`] the dispatcher gives each run.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Errors of a body on its way out of the guest.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A guest's request body.
pub type OutgoingBody = UnsyncBoxBody<Bytes, BoxError>;
/// An answer's body on its way to the guest.
pub type ResponseBody = UnsyncBoxBody<Bytes, OutboundError>;

/// The waits a guest asked for in its `request-options` (the host may shorten them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub between_bytes: Option<Duration>,
}

/// Why a request failed; the guest sees the matching `error-code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboundError {
    /// No entry of the allowlist matches.
    #[error("not allowed: {0}")]
    Denied(String),
    /// The address is in a blocked network.
    #[error("blocked: {0}")]
    Blocked(String),
    #[error("cannot resolve the name: {0}")]
    Dns(String),
    #[error("connection refused")]
    ConnectionRefused,
    #[error("no connection within the connect timeout")]
    ConnectTimeout,
    #[error("no answer within the timeout")]
    ResponseTimeout,
    #[error("the answer's body stopped arriving")]
    BodyTimeout,
    #[error("the answer's body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server's certificate is not trusted: {0}")]
    Certificate(String),
    #[error("the connection ended early")]
    Terminated,
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Protocol(String),
}

impl From<OutboundError> for HttpError {
    fn from(e: OutboundError) -> HttpError {
        match e {
            OutboundError::Denied(_) | OutboundError::Blocked(_) => HttpError::HttpRequestDenied,
            OutboundError::Dns(why) => HttpError::DnsError {
                rcode: Some(why),
                info_code: None,
            },
            OutboundError::ConnectionRefused => HttpError::ConnectionRefused,
            OutboundError::ConnectTimeout => HttpError::ConnectionTimeout,
            OutboundError::ResponseTimeout => HttpError::HttpResponseTimeout,
            OutboundError::BodyTimeout => HttpError::ConnectionReadTimeout,
            OutboundError::TooLarge(limit) => HttpError::HttpResponseBodySize(Some(limit)),
            OutboundError::Tls(_) => HttpError::TlsProtocolError,
            OutboundError::Certificate(_) => HttpError::TlsCertificateError,
            OutboundError::Terminated => HttpError::ConnectionTerminated,
            OutboundError::TooMany(_) => HttpError::ConnectionLimitReached,
            OutboundError::Protocol(_) => HttpError::HttpProtocolError,
        }
    }
}

/// What a run's outbound requests do.
#[async_trait]
pub trait Outbound: Send + Sync {
    async fn send(
        &self,
        request: http::Request<OutgoingBody>,
        timeouts: Timeouts,
    ) -> Result<http::Response<ResponseBody>, OutboundError>;
}

/// A run's [`Outbound`], or none (every request is then denied).
#[derive(Clone, Default)]
pub struct OutboundLink(pub Option<Arc<dyn Outbound>>);

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundLink {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Sent {
        let outbound = self.0.clone();
        Box::new(async move {
            let Some(outbound) = outbound else {
                return Err(HttpError::HttpRequestDenied);
            };
            let options = options.unwrap_or_default();
            let timeouts = Timeouts {
                connect: options.connect_timeout,
                first_byte: options.first_byte_timeout,
                between_bytes: options.between_bytes_timeout,
            };
            let request = request.map(|body| body.map_err(BoxError::from).boxed_unsync());
            let response = outbound.send(request, timeouts).await?;
            let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
            // The client drives its connections itself: nothing more to wait for.
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}
