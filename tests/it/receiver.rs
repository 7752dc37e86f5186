//! A real HTTP server on loopback for the host to call: the far end of guests' outbound
//! requests and of completion callbacks. It counts every TCP connection it accepts (so a
//! test can prove none was made), keeps every request, and answers what the test says.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer: a status, headers and a body, or a wait (a receiver that hangs).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Received, usize) -> Reply + Send + Sync;

pub struct Receiver {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// wasmtime's test server: the method and the URI back as `x-wasmtime-test-method` and
    /// `x-wasmtime-test-uri`, the body back as the body.
    pub fn echo() -> Receiver {
        Receiver::start(|r, _| Reply {
            status: 200,
            headers: vec![
                ("x-wasmtime-test-method".to_string(), r.method.clone()),
                ("x-wasmtime-test-uri".to_string(), r.uri.clone()),
            ],
            body: r.body.clone(),
            delay: Duration::ZERO,
        })
    }

    /// A server on 127.0.0.1 that answers request number `n` (from 0) with `handler`.
    pub fn start(handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::serve(None, handler)
    }

    /// The same over TLS, with `chain` (PEM certificates, the server's first) and `key`.
    pub fn start_tls(
        chain: &str,
        key: &str,
        handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Receiver::serve(
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            handler,
        )
    }

    fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (count, log) = (connections.clone(), received.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, tls, count, log, handler, stopped));
        });
        Receiver {
            addr,
            connections,
            received,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    handler: Arc<Handler>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let (received, handler, tls) = (received.clone(), handler.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (received, handler) = (received.clone(), handler.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let request = Received {
                        method: parts.method.to_string(),
                        uri: parts.uri.to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: body.to_vec(),
                    };
                    let n = {
                        let mut log = received.lock().unwrap();
                        log.push(request.clone());
                        log.len() - 1
                    };
                    let reply = handler(&request, n);
                    tokio::time::sleep(reply.delay).await;
                    let mut response = hyper::Response::builder().status(reply.status);
                    for (k, v) in &reply.headers {
                        response = response.header(k, v);
                    }
                    Ok::<_, std::convert::Infallible>(
                        response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                    )
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}
