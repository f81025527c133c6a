//! What the integration tests share, by concern: spawning the app (here), requests
//! (`client`), assertions, forging tokens, databases, Redis, store-level rotations.
//! Every helper is re-exported here: a test imports `crate::helpers::...`.

mod assertions;
mod browser;
mod client;
mod databases;
mod dpop;
mod forging;
mod redis;
pub mod store_level;

use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use aws_lc_rs::signature::RsaKeyPair;
use tempfile::TempDir;
use token_issuer::config::{SecretUrl, Settings};
use token_issuer::domain::client::{Client, ClientKind};
use token_issuer::domain::clock::ManualClock;
use token_issuer::service::Issuer;
use token_issuer::startup::Application;

pub const PASSWORD: &str = "a sound passphrase";
pub const SPA_ORIGIN: &str = "http://localhost:5173";
/// The confidential client of the tests, and its secret.
pub const SERVICE_CLIENT: &str = "resource-server";
pub const SERVICE_SECRET: &str = "rs-secret-0123456789abcdefghijklmnopqrstuvwxyz";

/// The store a test runs against: the embedded default (SQLite, in-process shared
/// state) or the production setup (PostgreSQL and Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use assertions::{assert_error, assert_invalid_grant, eventually, set_cookie_headers, tokens};
pub use browser::{
    Browser, Pkce, authorize_query, exchange, hidden_fields, location, location_params,
};
pub use client::{Api, client_from};
pub use databases::{TestDatabase, family_generation, generations, stored_family};
pub use dpop::{DpopKey, ath};
pub use forging::{
    b64, jwks, pem_body, segment, sign_rs256, sign_rs256_raw, token_generation, token_position,
};
pub use redis::{test_redis_url, unique_redis_prefix, wait_for_redis, wait_for_subscribers};

/// A spawned issuer; its requests are those of its `Api` (`Deref`).
pub struct TestApp {
    api: Api,
    pub clock: Arc<ManualClock>,
    pub settings: Settings,
    pub issuer: Arc<Issuer>,
    _database: Option<TestDatabase>,
    _dir: TempDir,
}

/// Tokens from a successful token response.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

static TRACING: Once = Once::new();

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns the server with the development settings, changed by `configure`, on a fresh
/// SQLite file, or on a fresh PostgreSQL database with Redis under a fresh key prefix.
/// The per-family refresh limit is off (tests rotate one family hundreds of times), and
/// so is the per-IP registration limit (every test registers from 127.0.0.1); the
/// rate-limit tests turn them on.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            token_issuer::telemetry::init("debug", token_issuer::config::LogFormat::Text).unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::development().unwrap();
    settings.bind = "127.0.0.1:0".parse().unwrap();
    settings.data_dir = dir.path().join("data");
    settings.keys_dir = dir.path().join("keys");
    let database = match backend {
        Backend::Sqlite => {
            settings.database_url = SecretUrl::new(format!(
                "sqlite://{}",
                dir.path().join("data/test.db").display()
            ));
            None
        }
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            settings.database_url = SecretUrl::new(db.url.clone());
            settings.redis_url = Some(SecretUrl::new(test_redis_url().await));
            settings.redis_key_prefix = unique_redis_prefix();
            Some(db)
        }
    };
    // A second body-mode client, and a resource server that may introspect.
    let dev = settings.clients[0].clone();
    settings.clients.push(Client {
        id: "other".into(),
        ..dev.clone()
    });
    settings.clients.push(Client {
        id: SERVICE_CLIENT.into(),
        kind: ClientKind::Service,
        secret_hash: Some(token_issuer::crypto::client_secret::hash_of(SERVICE_SECRET)),
        // The resource server of the tests' tokens: they are meant for the issuer's
        // audience.
        introspection_audiences: vec![settings.audience.clone()],
        client_credentials: true,
        ..dev
    });
    settings.limits.refresh_per_family = None;
    settings.limits.register_per_ip = None;
    configure(&mut settings);
    let clock = Arc::new(ManualClock::default());
    let app = Application::build(&settings, clock.clone())
        .await
        .expect("the server starts");
    let api = Api::new(format!("http://127.0.0.1:{}", app.port()));
    let issuer = app.issuer();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        api,
        clock,
        settings,
        issuer,
        _database: database,
        _dir: dir,
    }
}

/// For tests that race hundreds of requests on one row: they queue behind its lock, and
/// on a loaded 2-core CI machine the last can wait longer than the 2 s production
/// `database_timeout`. Its 503 would be a correct answer, but not what a test of the
/// race's outcome is about; the timeout itself is tested in `faults`.
pub fn patient(settings: &mut Settings) {
    settings.database_timeout = Duration::from_secs(15);
}

/// Another instance of `first`'s deployment: the same database, Redis prefix and key
/// directory, its own port and clock.
pub async fn spawn_instance_like(first: &TestApp) -> TestApp {
    let shared = first.settings.clone();
    spawn_app_with(Backend::Sqlite, move |settings| {
        let bind = settings.bind;
        *settings = shared;
        settings.bind = bind;
    })
    .await
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Grants (or takes back) the admin role, as the CLI does, through a store of its
    /// own on the app's database.
    pub async fn set_admin(&self, email: &str, granted: bool) {
        let store = token_issuer::startup::open_store(&self.settings)
            .await
            .unwrap();
        token_issuer::service::admin::set_admin_role(store.as_ref(), email, granted)
            .await
            .unwrap();
        store.close().await;
    }

    /// How many audit events of `kind` the app's database holds (read through a store
    /// of its own, as `set_admin`).
    pub async fn audit_events_of_kind(&self, kind: &str) -> usize {
        let store = token_issuer::startup::open_store(&self.settings)
            .await
            .unwrap();
        let events = store.audit_events(None, 10_000).await.unwrap();
        store.close().await;
        events.iter().filter(|e| e.kind.code() == kind).count()
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.settings.keys_dir.clone()
    }

    /// The app's own active signing key, read from its key directory (to forge tokens
    /// with a valid signature but wrong claims or headers).
    pub fn signing_key(&self) -> (String, RsaKeyPair) {
        let kid = std::fs::read_to_string(self.keys_dir().join("active"))
            .unwrap()
            .trim()
            .to_owned();
        let pem = std::fs::read_to_string(self.keys_dir().join(format!("{kid}.pem"))).unwrap();
        (kid, RsaKeyPair::from_pkcs8(&pem_body(&pem)).unwrap())
    }
}

/// The app's clock, in unix seconds.
pub fn now(app: &TestApp) -> i64 {
    use token_issuer::domain::clock::Clock as _;
    app.clock.now().unix_timestamp()
}
