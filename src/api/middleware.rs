//! The HTTP layers around the API: request ids, logs and metrics (`observe`), the
//! client's address behind trusted proxies (`client_ip`), `no-store` on every OAuth
//! answer, a DPoP nonce on every answer to a request with a proof (`dpop_nonce`), the
//! body limit and timeout (`limit_body`), and the one JSON shape of every
//! error poem itself raises (`render_error`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument as _;

use crate::api::error::{ApiError, Problem, REQUEST_ID};
use crate::domain::address::{self, Cidr};
use crate::metrics::Metrics;
use crate::service::Issuer;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How much of an oversized streamed body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// RFC 6749 §5.1 and §5.2: no answer of the OAuth endpoints may be cached. Their
/// handlers say so themselves; this covers the answers given before a handler runs (a
/// body that does not parse, a repeated parameter, an unsupported `Content-Type`).
pub(crate) async fn oauth_no_store<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let oauth = req.uri().path().starts_with("/oauth/");
    let mut resp = ep.call(req).await?.into_response();
    if oauth && !resp.headers().contains_key(header::CACHE_CONTROL) {
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    Ok(resp)
}

/// A fresh DPoP nonce (RFC 9449 §8.2) on every answer to a request that carried a
/// `DPoP` proof, refusals included: a client that must send nonces always holds a
/// current one, and retries at most once when its nonce went stale. A client that
/// needs none may put it in its proofs; it is not checked then.
pub(crate) async fn dpop_nonce<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    issuer: Arc<Issuer>,
) -> poem::Result<Response> {
    let proof = req.headers().contains_key("dpop");
    let mut resp = ep.call(req).await?.into_response();
    if proof && let Ok(nonce) = HeaderValue::from_str(&issuer.dpop_nonce()) {
        resp.headers_mut().insert("dpop-nonce", nonce);
    }
    Ok(resp)
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then
/// `X-Forwarded-For` is walked from the right, past the trusted proxies, to the first
/// address that is not one (earlier entries are the client's own claims, never
/// believed). An entry that does not parse stops the walk at the last address known.
pub(crate) fn client_ip(req: &Request, trusted: &[Cidr]) -> Option<IpAddr> {
    // An IPv4 client of a dual-stack socket (`[::]`) is the IPv4 address it is.
    let peer = req
        .remote_addr()
        .as_socket_addr()
        .map(|a| address::canonical(a.ip()))?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match parse_forwarded_address(entry) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    Some(client)
}

/// `203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1` or `[2001:db8::1]:4711`, in
/// canonical form.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip = match entry.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => entry.parse::<std::net::SocketAddr>().ok()?.ip(),
    };
    Some(address::canonical(ip))
}

/// Renders every poem-level error in the common JSON shape; responses built by our own
/// error enums pass through untouched.
pub(crate) async fn render_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    ApiError::from(Problem::from_poem(&err)).into_response()
}

/// Refuses bodies over `BODY_LIMIT`, whether announced by `Content-Length` or streamed.
/// A body that runs over is read on (and dropped) up to `DRAIN_LIMIT`, so the client is
/// done sending, reads the 413 and can keep its connection; a body announced larger than
/// that is refused before reading. A body that takes longer than `timeout` to arrive is
/// answered 408, and its connection closed: a client that stops sending halfway holds
/// nothing for long.
pub(crate) async fn limit_body<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    timeout: Duration,
) -> poem::Result<Response> {
    use futures_util::StreamExt as _;

    let too_large = || poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE);
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let mut stream = req.take_body().into_bytes_stream();
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| poem::Error::new(e, StatusCode::BAD_REQUEST))?;
            if body.len() + chunk.len() > BODY_LIMIT {
                let mut seen = body.len() + chunk.len();
                let drain = async {
                    while let Some(Ok(chunk)) = stream.next().await {
                        seen += chunk.len();
                        if seen > DRAIN_LIMIT {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(body) => body?,
        Err(_) => {
            let mut resp =
                render_error(poem::Error::from_status(StatusCode::REQUEST_TIMEOUT)).await;
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        }
    };
    req.set_body(body);
    ep.call(req).await.map(IntoResponse::into_response)
}

/// Gives every request an id (span field, `x-request-id` header, error bodies), logs
/// it and counts it by operation and status.
pub(crate) async fn observe<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    metrics: Arc<Metrics>,
) -> poem::Result<Response> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let scoped_id = id.clone();
    let served = async move {
        let start = Instant::now();
        let mut resp = ep.get_response(req).await;
        let elapsed = start.elapsed();
        let operation = resp
            .data::<poem_openapi::OperationId>()
            .map_or("other", |op| op.0);
        metrics.observe_request(operation, resp.status().as_str(), elapsed);
        tracing::debug!(
            status = resp.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            "served"
        );
        if let Ok(value) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", value);
        }
        Ok(resp)
    };
    REQUEST_ID.scope(scoped_id, served.instrument(span)).await
}

/// The hosted pages (`/oauth/authorize`, `/oauth/logout`) are never framed (besides
/// their CSP's `frame-ancestors`, for older browsers), never sniffed, and send no
/// `Referer` to another origin (the client's redirect URI gets none; a same-origin form
/// post keeps its `Origin`, which `no-referrer` would turn into `null`). Every answer
/// there has a CSP: a page brings its own; the rest (a redirect, the JSON error of a
/// body that does not parse) get one that allows nothing.
pub(crate) async fn page_headers<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let path = req.uri().path();
    let pages = path == "/oauth/authorize" || path == "/oauth/logout";
    let mut resp = ep.call(req).await?.into_response();
    if pages {
        let headers = resp.headers_mut();
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
                ),
            );
        }
    }
    Ok(resp)
}
