//! Builds the application from `Settings`, binds, serves, and shuts down gracefully.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode, header};
use poem::middleware::{CookieJarManager, Cors};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::api::error::{ApiError, Problem, REQUEST_ID};
use crate::api::methods::{AllowedMethods, method_not_allowed};
use crate::api::{ClientIp, make_openapi_service};
use crate::config::{Cidr, Settings};
use crate::crypto::keys::{KeyError, Keys};
use crate::crypto::refresh::SuccessorKey;
use crate::domain::address;
use crate::domain::client::Delivery;
use crate::domain::clock::Clock;
use crate::files;
use crate::metrics::Metrics;
use crate::server::{self, HttpTimeouts};
use crate::service::Issuer;
use crate::store::postgres::PgStore;
use crate::store::redis::RedisLink;
use crate::store::shared::SharedState;
use crate::store::sqlite::SqliteStore;
use crate::store::timeout::TimedStore;
use crate::store::{Store, StoreError};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How much of an oversized streamed body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often ended sessions are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// How long in-flight requests may take to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("data directory: {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis_ca_file {path}: {source}")]
    RedisCa {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(#[from] crate::error::Error),
}

/// The shared fast state: on Redis when `redis_url` is set (connected lazily, so a Redis
/// that is down at start-up is picked up when it comes), in-process otherwise.
pub fn open_shared(
    settings: &Settings,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> Result<Arc<SharedState>, StartupError> {
    let redis = match &settings.redis_url {
        Some(url) => {
            tracing::info!(%url, prefix = %settings.redis_key_prefix, "using redis for the deny-list, revocation events and rate limits");
            let ca = match &settings.redis_ca_file {
                Some(path) => {
                    Some(std::fs::read(path).map_err(|source| StartupError::RedisCa {
                        path: path.display().to_string(),
                        source,
                    })?)
                }
                None => None,
            };
            Some(
                RedisLink::new(url.expose(), &settings.redis_key_prefix, ca, metrics).map_err(
                    |source| StartupError::Redis {
                        url: url.to_string(),
                        source,
                    },
                )?,
            )
        }
        None => None,
    };
    // The longest any access token may still be presented: the longest lifetime of any
    // client, plus the leeway.
    let longest = settings
        .clients
        .iter()
        .map(|c| c.access_lifetime)
        .chain(std::iter::once(settings.tokens.access_token_lifetime))
        .max()
        .unwrap_or(settings.tokens.access_token_lifetime);
    let deny_ttl = longest + settings.tokens.clock_leeway;
    Ok(Arc::new(SharedState::new(redis, store, deny_ttl)))
}

/// Opens the store the database URL names (`sqlite:` or `postgres://`), creating the
/// SQLite data directory if needed, and applies the migrations.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartupError> {
    open_store_with(settings, Arc::new(Metrics::default())).await
}

/// `open_store`, counting the store's failures in `metrics`.
pub async fn open_store_with(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, StartupError> {
    let failed = |source| StartupError::Database {
        url: settings.database_url.to_string(),
        source,
    };
    let url = settings.database_url.expose();
    let limit = settings.database_timeout;
    let bounded = |store: Arc<dyn Store>| -> Arc<dyn Store> {
        Arc::new(TimedStore::new(store, limit, Arc::clone(&metrics)))
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(bounded(Arc::new(
            PgStore::connect(url, limit).await.map_err(failed)?,
        )));
    }
    if let Some(path) = sqlite_path(url) {
        let db = Path::new(path);
        let tightened =
            files::private_sqlite_files(db).map_err(|(path, source)| StartupError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        if tightened {
            tracing::warn!(path = %db.display(), "the database files were readable by other users; they are now 0600");
        }
    }
    Ok(bounded(Arc::new(
        SqliteStore::connect(url, limit).await.map_err(failed)?,
    )))
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A bound, ready-to-serve application.
pub struct Application {
    issuer: Arc<Issuer>,
    listener: TcpListener,
    timeouts: HttpTimeouts,
    port: u16,
    store: Arc<dyn Store>,
    shared: Arc<SharedState>,
    endpoint: poem::endpoint::BoxEndpoint<'static, Response>,
}

impl Application {
    /// Opens the store, loads (or generates) the keys and binds the listener.
    pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::default());
        let store = open_store_with(settings, Arc::clone(&metrics)).await?;
        let (keys, generated) = Keys::load_or_generate(&settings.keys_dir)?;
        let kid = keys.current().active().kid.clone();
        if let Some(path) = generated {
            tracing::info!(path = %path.display(), %kid, "generated a new RSA-2048 signing key");
        } else {
            tracing::info!(dir = %settings.keys_dir.display(), %kid, "loaded signing keys");
        }
        let successors = SuccessorKey::load_or_create(&settings.keys_dir)?;
        let shared = open_shared(settings, Arc::clone(&store), Arc::clone(&metrics))?;
        let issuer = Arc::new(Issuer::new(
            settings.issuer(),
            Arc::clone(&store),
            Arc::clone(&shared),
            Arc::new(keys),
            successors,
            clock,
            metrics,
        )?);
        let bind_failed = |source| StartupError::Bind {
            addr: settings.bind.to_string(),
            source,
        };
        let listener = TcpListener::bind(settings.bind)
            .await
            .map_err(bind_failed)?;
        let port = listener.local_addr().map_err(bind_failed)?.port();
        Ok(Self {
            listener,
            timeouts: settings.http_timeouts,
            port,
            store,
            shared,
            endpoint: app(Arc::clone(&issuer), settings),
            issuer,
        })
    }

    /// The port actually bound (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The issuer behind the HTTP surface (tests drive the sweeper through it).
    pub fn issuer(&self) -> Arc<Issuer> {
        Arc::clone(&self.issuer)
    }

    /// Serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests
    /// finish (at most `SHUTDOWN_GRACE`) and closes the database connections. The
    /// sweeper of ended sessions (hourly) and the Redis health check and revocation
    /// subscriber run alongside.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let mut background = self.shared.start();
        background.push(tokio::spawn(Arc::clone(&self.issuer).watch_keys()));
        let issuer = Arc::clone(&self.issuer);
        let sweeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                every.tick().await;
                if let Err(e) = issuer.sweep().await {
                    tracing::warn!(error = %e, "sweeping ended sessions failed");
                }
            }
        });
        let served = server::serve(
            self.listener,
            self.endpoint,
            self.timeouts,
            shutdown_signal(),
            SHUTDOWN_GRACE,
        )
        .await;
        sweeper.abort();
        for task in background {
            task.abort();
        }
        self.store.close().await;
        tracing::info!("stopped");
        served
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = term => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// The whole HTTP application around an issuer.
pub fn app(
    issuer: Arc<Issuer>,
    settings: &Settings,
) -> poem::endpoint::BoxEndpoint<'static, Response> {
    let issuer_metrics = issuer.metrics();
    let body_timeout = settings.http_timeouts.body_timeout;
    let api = make_openapi_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let allowed = Arc::new(AllowedMethods::of_api());
    let inner = Route::new()
        .nest("/", api)
        .at("/openapi.json", poem::get(spec))
        .nest("/docs", docs)
        .around(move |ep, req| method_not_allowed(ep, req, Arc::clone(&allowed)))
        .with(CookieJarManager::new())
        .around(move |ep, req| limit_body(ep, req, body_timeout))
        .catch_all_error(render_error)
        .data(issuer);
    let with_cors = match cors(settings) {
        Some(cors) => inner.with(cors).boxed(),
        None => inner.boxed(),
    };
    let trusted: Arc<[Cidr]> = settings.trusted_proxies.clone().into();
    let metrics = issuer_metrics;
    with_cors
        .catch_all_error(render_error)
        .around(move |ep, mut req| {
            let trusted = Arc::clone(&trusted);
            async move {
                if let Some(ip) = client_ip(&req, &trusted) {
                    req.extensions_mut().insert(ClientIp(ip));
                }
                ep.call(req).await
            }
        })
        .around(oauth_no_store)
        .around(move |ep, req| observe(ep, req, Arc::clone(&metrics)))
        .boxed()
}

/// RFC 6749 §5.1 and §5.2: no answer of the OAuth endpoints may be cached. Their
/// handlers say so themselves; this covers the answers given before a handler runs (a
/// body that does not parse, a repeated parameter, an unsupported `Content-Type`).
async fn oauth_no_store<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let oauth = req.uri().path().starts_with("/oauth/");
    let mut resp = ep.call(req).await?.into_response();
    if oauth && !resp.headers().contains_key(header::CACHE_CONTROL) {
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    Ok(resp)
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then
/// `X-Forwarded-For` is walked from the right, past the trusted proxies, to the first
/// address that is not one (earlier entries are the client's own claims, never
/// believed). An entry that does not parse stops the walk at the last address known.
fn client_ip(req: &Request, trusted: &[Cidr]) -> Option<IpAddr> {
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

/// CORS for the configured origins only (none configured: no CORS at all), with
/// credentials when a cookie-mode client exists.
fn cors(settings: &Settings) -> Option<Cors> {
    let origins: BTreeSet<&str> = settings
        .clients
        .iter()
        .flat_map(|c| c.allowed_origins.iter().map(String::as_str))
        .collect();
    if origins.is_empty() {
        return None;
    }
    let credentials = settings
        .clients
        .iter()
        .any(|c| c.delivery == Delivery::Cookie);
    Some(
        Cors::new()
            .allow_origins(origins)
            .allow_methods(["GET", "POST", "DELETE"])
            .allow_headers([
                "authorization",
                "content-type",
                "x-requested-with",
                "if-none-match",
            ])
            .expose_headers(["x-request-id", "www-authenticate", "retry-after", "etag"])
            .allow_credentials(credentials)
            .max_age(600),
    )
}

/// Renders every poem-level error in the common JSON shape; responses built by our own
/// error enums pass through untouched.
async fn render_error(err: poem::Error) -> Response {
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
async fn limit_body<E: Endpoint>(
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
async fn observe<E: Endpoint>(
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
        metrics.observe_request(operation, resp.status().as_u16(), elapsed);
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
