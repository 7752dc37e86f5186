//! HTTP requests the host makes for guests (`wasi:http/outgoing-handler`): each checked
//! against its function's `allowed_outbound_hosts`, every name's addresses against
//! `[host] block_networks` at the moment of connecting, sent on one shared pool of
//! connections (hyper-util's client, TLS through rustls with the system's roots), bounded
//! in time and size, and logged and counted once per request.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::config::{BlockNetworks, OutboundSettings, Permit, permit};
use crate::metrics;
use crate::registry::Function;
use crate::sandbox::{Outbound, OutboundError, OutboundLink, OutgoingBody, ResponseBody, Timeouts};

type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// The `Forwarded` header of every request a guest makes.
pub const GUEST_FORWARDED: &str = "for=\"jobhost-guest\"";

/// Requests of one invocation open at once (head sent, body not yet read to its end).
const MAX_PER_RUN: usize = 16;
/// Requests of all guests open at once: each holds a connection, so this keeps guests from
/// taking the descriptors the host's listener and store need. More wait their turn.
const MAX_IN_FLIGHT: usize = 256;

/// The host's one outbound client: its connections are kept and reused across invocations.
pub struct Client {
    pool: Pool<Connector, OutgoingBody>,
    settings: OutboundSettings,
    in_flight: Arc<Semaphore>,
}

impl Client {
    pub fn new(settings: &OutboundSettings) -> Client {
        let block = Arc::new(settings.block_networks.clone());
        let mut http = HttpConnector::new_with_resolver(Resolver { block });
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pool = Pool::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(https);
        Client {
            pool,
            settings: settings.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// What one run's outbound requests do: `function`'s allowlist, logged with `id`.
    pub fn for_run(self: &Arc<Client>, function: &Arc<Function>, id: &str) -> OutboundLink {
        OutboundLink(Some(Arc::new(Caller {
            client: self.clone(),
            function: function.clone(),
            id: id.to_string(),
            open: Arc::new(Semaphore::new(MAX_PER_RUN)),
        })))
    }

    /// Sends `request` whose target `permit` allows, within the host's timeouts. The
    /// addresses of a name are checked against `block_networks` when connecting; an address
    /// written in the URL is checked here, unless `permit` names it exactly.
    pub async fn send(
        &self,
        request: http::Request<OutgoingBody>,
        permit: Permit,
        timeouts: Timeouts,
    ) -> Result<http::Response<ResponseBody>, OutboundError> {
        if permit == Permit::Denied {
            return Err(OutboundError::Denied("not in the allowlist".to_string()));
        }
        let host = request.uri().host().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        if let Ok(ip) = literal
            && permit != Permit::AllowedAddress
            && self.settings.block_networks.blocks(ip)
        {
            return Err(OutboundError::Blocked(format!("{ip} is in block_networks")));
        }
        // The guest may ask for shorter waits than the host's, never for longer ones. A
        // pooled connection needs no connect, so both waits bound the answer's head.
        let connect = shorter(timeouts.connect, self.settings.connect_timeout);
        let first_byte = shorter(timeouts.first_byte, self.settings.timeout);
        let between = shorter(timeouts.between_bytes, self.settings.timeout);
        let response = tokio::time::timeout(connect + first_byte, self.pool.request(request))
            .await
            .map_err(|_| OutboundError::ResponseTimeout)?
            .map_err(|e| classify(&e))?;
        Ok(response.map(|body| {
            Capped {
                body,
                read: 0,
                max: self.settings.max_response,
                between,
                idle: Box::pin(tokio::time::sleep(between)),
                waiting: false,
            }
            .boxed_unsync()
        }))
    }
}

/// `uri` as logs show it: scheme, host, port and path, without a user's name and password
/// or the query, which may hold secrets.
pub fn shown(uri: &str) -> String {
    match uri.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme_str().unwrap_or("http"),
            u.host().unwrap_or_default(),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(not a URL)".to_string(),
    }
}

fn shorter(asked: Option<Duration>, most: Duration) -> Duration {
    asked.map_or(most, |a| a.min(most))
}

/// One run's view of the client.
struct Caller {
    client: Arc<Client>,
    function: Arc<Function>,
    id: String,
    /// Its requests open now (at most `MAX_PER_RUN`).
    open: Arc<Semaphore>,
}

#[async_trait]
impl Outbound for Caller {
    async fn send(
        &self,
        request: http::Request<OutgoingBody>,
        timeouts: Timeouts,
    ) -> Result<http::Response<ResponseBody>, OutboundError> {
        let spec = &self.function.spec;
        let mut request = request;
        // Set over whatever the guest sent: a guest's request to this very host (allowed by
        // address) is one a local proxy passed on, so the status API asks it for the token.
        request.headers_mut().insert(
            http::header::FORWARDED,
            http::HeaderValue::from_static(GUEST_FORWARDED),
        );
        let uri = request.uri().clone();
        let method = request.method().clone();
        let shown = shown(&uri.to_string());
        let permit = permit(
            &spec.allowed_outbound_hosts,
            uri.scheme_str().unwrap_or_default(),
            uri.host().unwrap_or_default(),
            uri.port_u16(),
        );
        let Ok(mine) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(function = %spec.name, id = %self.id, "outbound {method} {shown} refused: {MAX_PER_RUN} requests of this invocation are open (read their bodies to the end, or drop them)");
            metrics::get().outbound(&spec.name, "denied".to_string(), Duration::ZERO);
            return Err(OutboundError::TooMany(format!(
                "{MAX_PER_RUN} requests are open at once"
            )));
        };
        let started = Instant::now();
        let all = self.client.in_flight.clone().acquire_owned().await;
        let result = self.client.send(request, permit, timeouts).await;
        let elapsed = started.elapsed();
        let status = match &result {
            Ok(response) => {
                tracing::info!(
                    function = %spec.name,
                    id = %self.id,
                    "outbound {method} {shown}: {} in {} ms",
                    response.status().as_u16(),
                    elapsed.as_millis()
                );
                response.status().as_str().to_string()
            }
            Err(OutboundError::Denied(_)) => {
                tracing::warn!(
                    function = %spec.name,
                    id = %self.id,
                    "outbound {method} {shown} refused: add its scheme://host[:port] to allowed_outbound_hosts of function {}",
                    spec.name
                );
                "denied".to_string()
            }
            Err(OutboundError::Blocked(why)) => {
                tracing::warn!(
                    function = %spec.name,
                    id = %self.id,
                    "outbound {method} {shown} refused: {why}: to reach it, allow its address itself (an entry such as http://10.0.0.5:8080 is exempt), or take its network off [host] block_networks"
                );
                "denied".to_string()
            }
            Err(e) => {
                tracing::warn!(
                    function = %spec.name,
                    id = %self.id,
                    "outbound {method} {shown} failed after {} ms: {e}",
                    elapsed.as_millis()
                );
                "error".to_string()
            }
        };
        metrics::get().outbound(&spec.name, status, elapsed);
        // A body cut short is the guest's to see, but it cannot always tell why (wasi:http
        // 0.2 gives a stream's error no code): say it here.
        let (function, id) = (spec.name.clone(), self.id.clone());
        result.map(|response| {
            response.map(|body| {
                // The request counts as open until its body is dropped.
                let permits = (mine, all);
                body.map_err(move |e| {
                    let _open = &permits;
                    tracing::warn!(function = %function, id = %id, "outbound {method} {shown}: {e}");
                    e
                })
                .boxed_unsync()
            })
        })
    }
}

/// Resolves names for the client and drops every address in `block_networks`: the check
/// is on the addresses the connection is then made to, so a name that changes what it
/// resolves to (DNS rebinding) cannot lead inside.
#[derive(Clone)]
struct Resolver {
    block: Arc<BlockNetworks>,
}

/// The error of a name whose every address is blocked.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves to {address}, which is in block_networks")]
struct Blocked {
    name: String,
    address: IpAddr,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let block = self.block.clone();
        Box::pin(async move {
            let name = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let open: Vec<SocketAddr> = found
                .iter()
                .filter(|a| !block.blocks(a.ip()))
                .copied()
                .collect();
            match (open.is_empty(), found.first()) {
                (false, _) => Ok(open.into_iter()),
                (true, Some(first)) => Err(io::Error::other(Blocked {
                    name,
                    address: first.ip(),
                })),
                (true, None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} has no address"),
                )),
            }
        })
    }
}

/// What went wrong in the client, as the guest is told.
fn classify(e: &hyper_util::client::legacy::Error) -> OutboundError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(blocked) = err.downcast_ref::<Blocked>() {
            return OutboundError::Blocked(blocked.to_string());
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_error(tls);
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return OutboundError::ConnectionRefused,
                io::ErrorKind::TimedOut => return OutboundError::ConnectTimeout,
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                    return OutboundError::Terminated;
                }
                _ => {}
            }
            // An io::Error's `source` skips the error it wraps (which may be another
            // io::Error, wrapping rustls's): look into it instead.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = err.source();
    }
    if e.is_connect() {
        // Left: the resolver's own failure.
        return OutboundError::Dns(chain_text(e));
    }
    OutboundError::Protocol(chain_text(e))
}

fn tls_error(e: &rustls::Error) -> OutboundError {
    match e {
        rustls::Error::InvalidCertificate(_) => OutboundError::Certificate(e.to_string()),
        other => OutboundError::Tls(other.to_string()),
    }
}

fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The rustls settings: the system's roots (or `SSL_CERT_FILE`'s), on ring.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no trusted certificates found: guests' https requests will fail; install the system's CA certificates or set SSL_CERT_FILE"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An answer's body within `max` bytes, each part arriving within `between` of the guest
/// asking for it (time the guest spends elsewhere does not count).
struct Capped {
    body: Incoming,
    read: u64,
    max: u64,
    between: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// Whether the last poll found nothing: the wait for the next part has begun.
    waiting: bool,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = OutboundError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        let this = &mut *self;
        if !this.waiting {
            let deadline = tokio::time::Instant::now() + this.between;
            this.idle.as_mut().reset(deadline);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        this.waiting = polled.is_pending();
        match polled {
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(OutboundError::BodyTimeout)));
                }
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(OutboundError::Protocol(chain_text(&e)))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.max {
                        return Poll::Ready(Some(Err(OutboundError::TooLarge(this.max))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
