use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use aws_lc_rs::signature::RsaKeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::{Response, StatusCode};
use serde_json::Value;
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

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
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
        ..dev
    });
    settings.limits.refresh_per_family = None;
    settings.limits.register_per_ip = None;
    configure(&mut settings);
    let clock = Arc::new(ManualClock::default());
    let app = Application::build(&settings, clock.clone())
        .await
        .expect("the server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let issuer = app.issuer();
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    TestApp {
        address,
        http,
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

/// An HTTP client whose connections come from `ip`: any address of 127.0.0.0/8 is this
/// machine, so `127.0.0.2` is another client to the server.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/v1/users"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "password"),
                ("client_id", "dev"),
                ("username", email),
                ("password", password),
            ],
        )
        .await
    }

    /// A password grant of the `dev` client from another address (`client_from`).
    pub async fn login_from(&self, ip: &str, email: &str, password: &str) -> Response {
        client_from(ip)
            .post(self.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "dev"),
                ("username", email),
                ("password", password),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.refresh_as("dev", refresh_token).await
    }

    pub async fn refresh_as(&self, client_id: &str, refresh_token: &str) -> Response {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.http
            .get(self.url("/v1/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    /// Registers a fresh user and logs in with the body-mode `dev` client.
    pub async fn signed_in(&self) -> (String, Tokens) {
        let email = unique_email();
        assert_eq!(
            self.register(&email, PASSWORD).await.status(),
            StatusCode::CREATED
        );
        let resp = self.login(&email, PASSWORD).await;
        (email, tokens(resp).await)
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

pub fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// Asserts a 200 token response and returns its tokens (body mode).
pub async fn tokens(resp: Response) -> Tokens {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "token response: {body}");
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"]
            .as_str()
            .expect("a refresh token in the body")
            .to_owned(),
    }
}

/// Asserts an error answer with `status`, `error` and (when given) `error_reason`.
pub async fn assert_error(
    resp: Response,
    status: StatusCode,
    error: &str,
    reason: Option<&str>,
) -> Value {
    let got = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error body, got {text:?}"));
    assert_eq!(got, status, "body: {body}");
    assert_eq!(body["error"], error, "body: {body}");
    if let Some(reason) = reason {
        assert_eq!(body["error_reason"], reason, "body: {body}");
    }
    assert!(body["error_description"].is_string(), "body: {body}");
    // Every error names its request, as the header and the logs do.
    assert_eq!(
        body["request_id"].as_str(),
        request_id.as_deref(),
        "body: {body}"
    );
    assert!(request_id.is_some());
    body
}

/// Asserts `400 invalid_grant` with `error_reason`.
pub async fn assert_invalid_grant(resp: Response, reason: &str) -> Value {
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_grant", Some(reason)).await
}

/// Decodes the JSON of one JWS segment.
pub fn segment(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds an RS256-signed JWS over arbitrary header and claims.
pub fn sign_rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> String {
    sign_rs256_raw(key, &header.to_string(), &claims.to_string())
}

/// Builds an RS256-signed JWS over header and claims given as raw JSON text (which
/// may say things a `Value` cannot, such as a member given twice).
pub fn sign_rs256_raw(key: &RsaKeyPair, header: &str, claims: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signing_input}.{}", b64(&sig))
}

pub fn set_cookie_headers(resp: &Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// `ISSUER_TEST_REDIS_URL`, or the local Redis; fails with one line when it does not
/// answer (no silent skip).
pub async fn test_redis_url() -> String {
    let url = std::env::var("ISSUER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let answered = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    if tokio::time::timeout(Duration::from_secs(2), answered)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        panic!(
            "Redis does not answer at {url}; start it (`service redis-server start`) or set ISSUER_TEST_REDIS_URL"
        );
    }
    url
}

/// A Redis key prefix of one test, so parallel tests never see each other's keys.
pub fn unique_redis_prefix() -> String {
    format!("issuer-test:{}:", uuid::Uuid::new_v4().simple())
}

/// Polls `/readyz` until Redis is reported as `want` (`ok` or `degraded`).
pub async fn wait_for_redis(app: &TestApp, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body: Value = app.get("/readyz").await.json().await.unwrap();
        if body["redis"] == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

/// `ISSUER_TEST_POSTGRES_URL`, or the local server with trust authentication.
fn postgres_admin_url() -> String {
    std::env::var("ISSUER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection as _;
        let admin_url = postgres_admin_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL does not answer at {admin_url} ({e}); start it (`service postgresql start`) \
                 or set ISSUER_TEST_POSTGRES_URL"
            )
        });
        let name = format!("issuer_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = sqlx::query(&drop).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

impl TestApp {
    /// Runs one statement on the app's database, behind the service's back (to stage
    /// what a race would leave).
    pub async fn exec_sql(&self, sql: &str) {
        use sqlx::Connection as _;
        let url = self.settings.database_url.expose();
        if url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// Unconsumed tokens of a family, read straight from a PostgreSQL database.
pub async fn live_tokens(database_url: &str, sid: &str) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM refresh_tokens WHERE family_id = $1::uuid AND consumed_at IS NULL",
    )
    .bind(sid)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n
}

/// The kids the issuer publishes, and the JWKS's ETag.
pub async fn jwks(app: &TestApp) -> (std::collections::HashSet<String>, String) {
    let resp = app.get("/.well-known/jwks.json").await;
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let kids = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    (kids, etag)
}

/// Polls until `check` holds, for 15 s at most (instances re-read the key ring every
/// 2 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The app's clock, in unix seconds.
pub fn now(app: &TestApp) -> i64 {
    use token_issuer::domain::clock::Clock as _;
    app.clock.now().unix_timestamp()
}

/// Store-level rotations: a policy of an hour, a family of the signed-in user.
pub mod store_level {
    use std::sync::Arc;
    use std::time::Duration;

    use time::OffsetDateTime;
    use token_issuer::crypto::refresh::{self, TokenHash};
    use token_issuer::domain::family::{GrantRejection, RefreshPolicy, RevokeReason};
    use token_issuer::store::{NewFamily, RotateOutcome, RotateRequest, Store, StoreError};

    pub const POLICY: RefreshPolicy = RefreshPolicy {
        idle_timeout: Duration::from_secs(3600),
        absolute_lifetime: Duration::from_secs(3600),
        grace_period: Duration::from_secs(10),
    };

    pub fn random_hash() -> TokenHash {
        refresh::hash(&refresh::generate().unwrap())
    }

    /// A new family of `user_id` for the `dev` client; its first token's hash.
    pub async fn family(
        store: &dyn Store,
        user_id: uuid::Uuid,
        created_at: OffsetDateTime,
    ) -> TokenHash {
        let first = random_hash();
        let family = NewFamily {
            id: uuid::Uuid::new_v4(),
            user_id,
            client_id: "dev".into(),
            scope: None,
            created_at,
            user_agent: None,
            ip: None,
            first_token: first,
            checked_password_hash: None,
            login_source: None,
        };
        assert!(store.create_family(&family).await.unwrap());
        first
    }

    pub async fn rotate(
        store: &dyn Store,
        presented: TokenHash,
        successor: TokenHash,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<RotateOutcome, StoreError> {
        store
            .rotate(&RotateRequest {
                presented,
                successor,
                client_id,
                now,
                policy: POLICY,
                ip: None,
                user_agent: None,
                ticket: Default::default(),
            })
            .await
    }

    /// Runs every rotation at once, released together; their outcomes in order.
    pub async fn all_at_once(
        store: &Arc<dyn Store>,
        rotations: Vec<(TokenHash, TokenHash, &'static str)>,
        now: OffsetDateTime,
    ) -> Vec<Result<RotateOutcome, StoreError>> {
        let barrier = Arc::new(tokio::sync::Barrier::new(rotations.len()));
        let tasks: Vec<_> = rotations
            .into_iter()
            .map(|(presented, successor, client_id)| {
                let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    rotate(&*store, presented, successor, client_id, now).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    }

    /// What a rotation answered, to compare.
    #[derive(Debug, PartialEq)]
    pub enum Answer {
        Issued { replay: bool },
        Refused(GrantRejection, Option<RevokeReason>),
        Failed,
    }

    pub fn answer(outcome: &Result<RotateOutcome, StoreError>) -> Answer {
        match outcome {
            Ok(RotateOutcome::Issued { replay, .. }) => Answer::Issued { replay: *replay },
            Ok(RotateOutcome::Refused {
                rejection, revoked, ..
            }) => Answer::Refused(*rejection, *revoked),
            Err(_) => Answer::Failed,
        }
    }

    /// A signed-in user of `app`, and a store of its database.
    pub async fn user_and_store(app: &crate::helpers::TestApp) -> (uuid::Uuid, Arc<dyn Store>) {
        let (_, t) = app.signed_in().await;
        let user_id = crate::helpers::segment(&t.access, 1)["sub"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        (
            user_id,
            token_issuer::startup::open_store(&app.settings)
                .await
                .unwrap(),
        )
    }
}
