//! A native hyper client (hyper-util's pooled client, as jobhost's outbound HTTP uses):
//! N GETs of a URL one after another on a kept-alive connection, each one's time in µs on
//! its own line. The floor that bench/outbound.py measures a guest's outbound call against.
//!   cargo run --release --example native-client -- http://127.0.0.1:8090/ 1000

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().ok_or("give a URL")?.parse()?;
    let n: usize = args.next().map_or(Ok(1000), |n| n.parse())?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url.clone()).await?;
        response.into_body().collect().await?;
        println!("{}", started.elapsed().as_micros());
    }
    Ok(())
}
