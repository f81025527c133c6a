//! The HTTP server loop: hyper serving the poem application, with a bound on how long a
//! client may take to send a request's headers, and a graceful shutdown.
//!
//! poem's own `Server` sets no timer on hyper, so a client that sends half a request
//! head (or one byte every few seconds, or nothing) holds its connection, and a task,
//! for ever. Here hyper's HTTP/1 `header_read_timeout` closes such a connection after
//! `header_timeout`, counted from the connection's start or the end of the previous
//! response; so it also closes a keep-alive connection left idle that long, as clients
//! expect of servers. HTTP/1 only (see `serve`). The body's own bound (`body_timeout`) is enforced where
//! the body is read (`api::middleware::limit_body`), which answers 408.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::net::TcpListener;

/// What the server waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// From the first byte of a request (or the end of the last response on a
    /// keep-alive connection) to the end of its headers.
    pub header_timeout: Duration,
    /// To read a request's whole body.
    pub body_timeout: Duration,
}

/// Serves `endpoint` on `listener` until `shutdown` completes; then stops accepting and
/// lets the connections finish their requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    endpoint: poem::endpoint::BoxEndpoint<'static, Response>,
    timeouts: HttpTimeouts,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    // HTTP/1 only: hyper-util's protocol detection (`auto`) reads the first bytes
    // without any bound, and HTTP/2 (h2c, which no browser speaks in clear) has no
    // header timeout. TLS and HTTP/2 belong to the proxy in front.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_timeout);
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: the next accept may work.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let endpoint = Arc::clone(&endpoint);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let endpoint = Arc::clone(&endpoint);
            async move { Ok::<_, Infallible>(answer(&endpoint, req, local, peer).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the shutdown grace; stopping anyway");
    }
    Ok(())
}

async fn answer(
    endpoint: &poem::endpoint::BoxEndpoint<'static, Response>,
    req: hyper::Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> hyper::Response<BoxBody<Bytes, std::io::Error>> {
    let req = poem::Request::from((
        req,
        LocalAddr(Addr::SocketAddr(local)),
        RemoteAddr(Addr::SocketAddr(peer)),
        poem::http::uri::Scheme::HTTP,
    ));
    endpoint.get_response(req).await.into()
}
