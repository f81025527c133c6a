//! Builds the application from `Settings`, binds, serves, and shuts down gracefully.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use poem::Response;
use tokio::net::TcpListener;

use crate::api::app::{HttpOptions, app};
use crate::config::Settings;
use crate::crypto::dpop::{NONCE_KEY_FILE, Nonces};
use crate::crypto::keys::{KeyError, Keys, read_or_create_secret_file};
use crate::crypto::refresh::RefreshKeys;
use crate::domain::client::{Client, Delivery};
use crate::domain::clock::Clock;
use crate::files;
use crate::metrics::Metrics;
use crate::server::{self, HttpTimeouts};
use crate::service::{Issuer, MacKeys};
use crate::store::postgres::PgStore;
use crate::store::redis::RedisLink;
use crate::store::shared::SharedState;
use crate::store::sqlite::SqliteStore;
use crate::store::timeout::TimedStore;
use crate::store::{Store, StoreError};

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
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Other(#[from] crate::domain::error::Error),
}

fn new_metrics() -> Result<Metrics, StartupError> {
    Ok(Metrics::new()?)
}

/// The shared fast state: on Redis when `redis_url` is set (connected lazily, so a Redis
/// that is down at start-up is picked up when it comes), in-process otherwise.
pub fn open_shared(
    settings: &Settings,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> Result<Arc<SharedState>, StartupError> {
    let redis = open_redis(settings, metrics)?;
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

/// The Redis link `redis_url` names (not connected yet), or `None` without one.
pub fn open_redis(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Option<RedisLink>, StartupError> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    tracing::info!(%url, prefix = %settings.redis_key_prefix, "using redis for the deny-list, revocation events and rate limits");
    let ca = match &settings.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| StartupError::RedisCa {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    RedisLink::new(url.expose(), &settings.redis_key_prefix, ca, metrics)
        .map(Some)
        .map_err(|source| StartupError::Redis {
            url: url.to_string(),
            source,
        })
}

/// Opens the store the database URL names (`sqlite:` or `postgres://`), creating the
/// SQLite data directory if needed, and applies the migrations.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartupError> {
    open_store_with(settings, Arc::new(new_metrics()?)).await
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
        let metrics = Arc::new(new_metrics()?);
        let store = open_store_with(settings, Arc::clone(&metrics)).await?;
        let (keys, generated) = Keys::load_or_generate(&settings.keys_dir)?;
        let kid = keys.current().active().kid.clone();
        if let Some(path) = generated {
            tracing::info!(path = %path.display(), %kid, "generated a new RSA-2048 signing key");
        } else {
            tracing::info!(dir = %settings.keys_dir.display(), %kid, "loaded signing keys");
        }
        // The nonce key also keys the hosted forms' anti-CSRF fields (under its own
        // label): one more secret the instances share, without one more file.
        let nonce_key = read_or_create_secret_file(&settings.keys_dir.join(NONCE_KEY_FILE))?;
        let secrets = MacKeys {
            refresh: RefreshKeys::load_or_create(&settings.keys_dir)?,
            dpop_nonces: Nonces::new(&nonce_key),
            forms: crate::crypto::forms::FormTokens::new(&nonce_key),
        };
        let shared = open_shared(settings, Arc::clone(&store), Arc::clone(&metrics))?;
        let mut issuer_settings = settings.issuer();
        dev_service_secret(&settings.keys_dir, &mut issuer_settings.clients)?;
        let issuer = Arc::new(Issuer::new(
            issuer_settings,
            Arc::clone(&store),
            Arc::clone(&shared),
            Arc::new(keys),
            secrets,
            clock,
            metrics,
        )?);
        // The epochs in force before the first request (then re-read in the background).
        let epochs = store
            .epochs()
            .await
            .map_err(|source| StartupError::Database {
                url: settings.database_url.to_string(),
                source,
            })?;
        shared.merge_epochs(&epochs);
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
            endpoint: app(Arc::clone(&issuer), http_options(settings)),
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
        background.push(tokio::spawn(Arc::clone(&self.issuer).watch_epochs()));
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

/// The HTTP layers' options, from the settings.
fn http_options(settings: &Settings) -> HttpOptions {
    HttpOptions {
        body_timeout: settings.http_timeouts.body_timeout,
        trusted_proxies: settings.trusted_proxies.clone(),
        cors_origins: cors_origins(settings),
        cors_credentials: settings
            .clients
            .iter()
            .any(|c| c.delivery == Delivery::Cookie),
    }
}

/// The built-in `dev-service` client (registered without a secret) gets the one in
/// `keys/dev-service.secret`, made on first start. Only the path is logged.
fn dev_service_secret(keys_dir: &Path, clients: &mut [Client]) -> Result<(), KeyError> {
    let Some(client) = clients
        .iter_mut()
        .find(|c| c.id == crate::config::DEV_SERVICE && c.secret_hash.is_none())
    else {
        return Ok(());
    };
    crate::files::create_private_dir(keys_dir).map_err(|source| KeyError::Io {
        path: keys_dir.to_owned(),
        source,
    })?;
    let path = keys_dir.join(crate::crypto::client_secret::DEV_SERVICE_SECRET_FILE);
    let (_, hash) = crate::crypto::client_secret::read_or_create_file(&path)?;
    client.secret_hash = Some(hash);
    tracing::info!(client_id = %client.id, path = %path.display(), "the development service client's secret is in this file");
    Ok(())
}

/// The origins CORS allows: the clients'; and, when there are any, the issuer's own,
/// because a browser sends an `Origin` with a same-origin form post too (the hosted
/// sign-in pages), which the CORS layer would otherwise refuse.
fn cors_origins(settings: &Settings) -> std::collections::BTreeSet<String> {
    let mut origins: std::collections::BTreeSet<String> = settings
        .clients
        .iter()
        .flat_map(|c| c.allowed_origins.iter().cloned())
        .collect();
    if !origins.is_empty() {
        origins.insert(settings.issuer_url.clone());
    }
    origins
}
