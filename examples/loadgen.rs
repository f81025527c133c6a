//! The benchmark harness: starts a release token-issuer on loopback, measures the
//! machine's own limits, then drives each scenario with keep-alive HTTP/1.1 workers and
//! prints a Markdown table (requests/s, p50/p99/p99.9, errors by status, server RSS,
//! ratio to the limit that bounds it).
//!
//! ```sh
//! cargo run --release --example loadgen -- --backend sqlite --seconds 10 --workers 8
//! cargo run --release --example loadgen -- --backend postgres --out bench-postgres.md
//! cargo run --release --example loadgen -- --only refresh   # healthz + the refresh scenarios (bearer and DPoP)
//! cargo run --release --example loadgen -- --population 0      # on an empty database
//! cargo run --release --example loadgen -- --only refresh --ended 500000  # + the sweep
//! ```
//!
//! It builds the server binary first (`cargo build --release --bin token-issuer`). The
//! PostgreSQL backend makes a fresh database on `ISSUER_TEST_POSTGRES_URL` (default the
//! local server) and drops it after. Nothing here asserts a time: it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use token_issuer::config::{SecretUrl, Settings};
use token_issuer::domain::family::RefreshPolicy;
use token_issuer::domain::user::User;
use token_issuer::store::{NewFamily, RotateOutcome, RotateRequest, TokenRef};

const PASSWORD: &str = "a sound benchmark passphrase";

struct Args {
    backend: String,
    seconds: u64,
    workers: usize,
    out: Option<PathBuf>,
    /// Only the scenarios whose name starts with this (healthz always runs).
    only: Option<String>,
    /// Other users already in the database, each with one live session.
    population: u64,
    /// Sessions that end before the sweep, spread among the live ones: with it, the
    /// refresh scenarios end with one run while the server sweeps them
    /// (`POST /v1/admin/sweep`).
    ended: u64,
}

fn args() -> Args {
    let mut a = Args {
        backend: "sqlite".into(),
        seconds: 10,
        workers: 8,
        out: None,
        only: None,
        population: 100_000,
        ended: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "loadgen [--backend sqlite|postgres] [--seconds N] [--workers N] [--out FILE]\n        \
                 [--only SCENARIO-PREFIX] [--population N] [--ended N]\n\n\
                 Defaults: sqlite, 10 s, 8 workers, 100000 other users; the table goes to stdout, and to FILE with --out."
            );
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = value,
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--workers" => a.workers = value.parse().expect("--workers N"),
            "--out" => a.out = Some(value.into()),
            "--only" => a.only = Some(value),
            "--population" => a.population = value.parse().expect("--population N"),
            "--ended" => a.ended = value.parse().expect("--ended N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        matches!(a.backend.as_str(), "sqlite" | "postgres"),
        "--backend sqlite|postgres"
    );
    assert!(
        a.ended == 0 || a.population > 0,
        "--ended needs a --population to own the sessions"
    );
    a
}

/// One scenario's result.
struct Outcome {
    name: String,
    requests: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    errors: BTreeMap<u16, u64>,
    rss_kb: u64,
    /// The server's CPU time (user + system) during the scenario.
    server_cpu: Duration,
    /// PostgreSQL's (every `postgres` process on the machine) during the scenario.
    database_cpu: Duration,
    limit: Option<(&'static str, f64)>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The server's CPU time per request, in µs.
    fn cpu_per_request_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    /// PostgreSQL's CPU time per request, in µs.
    fn database_cpu_per_request_us(&self) -> f64 {
        self.database_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU time so far, user + system, of every process whose command is `name`.
fn processes_cpu(name: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains(&format!("({name})")))
        .map(|stat| cpu_of_stat(&stat))
        .sum()
}

/// utime + stime of a `/proc/PID/stat` line.
fn cpu_of_stat(stat: &str) -> Duration {
    // The fields after the command name, which is in parentheses: utime and stime are
    // the 12th and 13th, in clock ticks.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

impl Server {
    /// The server's CPU time so far, user + system (`/proc/PID/stat`).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        cpu_of_stat(&stat)
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The server binary with the environment of the benchmark's server: its config, data,
/// keys and database.
fn issuer_command(dir: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new("target/release/token-issuer");
    cmd.env("ISSUER_CONFIG", dir.join("issuer.toml"))
        .env("ISSUER_BIND", "127.0.0.1:0")
        .env("ISSUER_LOG", "info")
        .env("ISSUER_DATA_DIR", dir.join("data"))
        .env("ISSUER_KEYS_DIR", dir.join("keys"))
        .env("ISSUER_DATABASE_URL", database_url)
        .env_remove("ISSUER_REDIS_URL")
        .env("NO_COLOR", "1");
    cmd
}

fn start_server(dir: &Path, database_url: &str, secret_hash: &str) -> Server {
    let config = dir.join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "rate_limit_login_per_ip = \"off\"\nrate_limit_login_per_account = \"off\"\n\
             rate_limit_refresh_per_family = \"off\"\nrate_limit_client_credentials = \"off\"\n\
             rate_limit_code_exchange_per_ip = \"off\"\n\
             password_hash_queue = 4096\n\
             [[clients]]\nclient_id = \"dev\"\nkind = \"mobile\"\n\
             [[clients]]\nclient_id = \"{NATIVE}\"\nkind = \"mobile\"\nfirst_party = true\n\
             redirect_uris = [\"http://127.0.0.1/callback\"]\n\
             [[clients]]\nclient_id = \"bench-rs\"\nkind = \"service\"\nclient_secret_hash = \"{secret_hash}\"\n\
             introspection_audiences = [\"*\"]\nclient_credentials = true\naudiences = [\"https://orders.example\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = issuer_command(dir, database_url);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("target/release/token-issuer runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening")
                && let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next())
            {
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server listens");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// RSA-2048 signatures per second with a pre-parsed key, one thread per core.
fn signing_limit(seconds: f64) -> f64 {
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let key = Arc::new(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap());
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (key, total) = (Arc::clone(&key), Arc::clone(&total));
            std::thread::spawn(move || {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let mut sig = vec![0u8; key.public_modulus_len()];
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut n = 0;
                while Instant::now() < end {
                    key.sign(&RSA_PKCS1_SHA256, &rng, b"header.claims", &mut sig)
                        .unwrap();
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / seconds
}

/// Access-token verifications per second (jsonwebtoken, RS256, every check on), one
/// thread per core: the ceiling for anything that checks a bearer token.
fn verify_limit(token: &str, n: &str, e: &str, seconds: f64) -> f64 {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let key = Arc::new(DecodingKey::from_rsa_components(n, e).unwrap());
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (key, total, token) = (Arc::clone(&key), Arc::clone(&total), token.to_owned());
            std::thread::spawn(move || {
                let mut validation = Validation::new(Algorithm::RS256);
                validation.validate_aud = false;
                validation.required_spec_claims.clear();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut count = 0;
                while Instant::now() < end {
                    jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
                    count += 1;
                }
                total.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / seconds
}

/// Adds `n` users to the database (migrated first), each with one live session of the
/// `dev` client, so that every scenario runs against tables of a real size: a query
/// that scans a table shows here, not on an empty database. `ended` more sessions of
/// those users, spread evenly among the others, are live too until `end_sessions`
/// makes them 400 days old (the rows the sweep deletes). Then the statistics are
/// brought up to date (and PostgreSQL's visibility map: `VACUUM ANALYZE`), as in a
/// database that has been running.
async fn populate(database_url: &str, n: u64, ended: u64) {
    use sqlx::{Connection as _, Executor as _};
    let mut settings = Settings::development().unwrap();
    settings.database_url = SecretUrl::new(database_url);
    token_issuer::startup::open_store(&settings)
        .await
        .unwrap()
        .close()
        .await;
    let (n, ended) = (i64::try_from(n).unwrap(), i64::try_from(ended).unwrap());
    let now = time::OffsetDateTime::now_utc();
    if database_url.starts_with("sqlite:") {
        const ROWS: &str =
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)";
        let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        tx.execute(
            sqlx::query(&format!(
                "{ROWS} INSERT INTO users (id, email, password_hash, created_at)
                 SELECT printf('00000000-0000-4000-8000-%012d', i),
                        printf('population-%d@bench.example', i), '$argon2id$unused', ?2 FROM n"
            ))
            .bind(n)
            .bind(ms(now)),
        )
        .await
        .unwrap();
        tx.execute(
            sqlx::query(&format!(
                "{ROWS} INSERT INTO refresh_families
                     (id, user_id, client_id, created_at, last_used_at, generation_issued_at)
                 SELECT printf('00000000-0000-4000-9000-%012d', i),
                        printf('00000000-0000-4000-8000-%012d', (i - 1) % ?3 + 1), 'dev', ?2, ?2, ?2
                 FROM n"
            ))
            .bind(n + ended)
            .bind(ms(now))
            .bind(n.max(1)),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        conn.execute("ANALYZE").await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        tx.execute(
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, created_at)
                 SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid,
                        'population-' || i || '@bench.example', '$argon2id$unused', now()
                 FROM generate_series(1, $1) AS i",
            )
            .bind(n),
        )
        .await
        .unwrap();
        tx.execute(
            sqlx::query(
                "INSERT INTO refresh_families
                     (id, user_id, client_id, created_at, last_used_at, generation_issued_at)
                 SELECT ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid,
                        ('00000000-0000-4000-8000-' || lpad(((i - 1) % $2 + 1)::text, 12, '0'))::uuid,
                        'dev', now(), now(), now()
                 FROM generate_series(1::bigint, $1) AS i",
            )
            .bind(n + ended)
            .bind(n.max(1)),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        conn.execute("VACUUM ANALYZE").await.unwrap();
    }
}

/// Makes `ended` of the `n + ended` families of `populate` 400 days old, spread evenly
/// (family i when `i * ended / (n + ended)` steps up at i), then brings the statistics
/// up to date again.
async fn end_sessions(database_url: &str, n: u64, ended: u64) {
    use sqlx::{Connection as _, Executor as _};
    let (total, ended) = (
        i64::try_from(n + ended).unwrap(),
        i64::try_from(ended).unwrap(),
    );
    let long_ago = time::OffsetDateTime::now_utc() - Duration::from_secs(400 * 86_400);
    if database_url.starts_with("sqlite:") {
        let long_ago = (long_ago.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        conn.execute(
            sqlx::query(
                "UPDATE refresh_families SET created_at = ?3, last_used_at = ?3,
                     generation_issued_at = ?3
                 WHERE id LIKE '00000000-0000-4000-9000-%'
                   AND CAST(substr(id, 25) AS INTEGER) * ?2 / ?1
                       <> (CAST(substr(id, 25) AS INTEGER) - 1) * ?2 / ?1",
            )
            .bind(total)
            .bind(ended)
            .bind(long_ago),
        )
        .await
        .unwrap();
        conn.execute("ANALYZE").await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        conn.execute(
            sqlx::query(
                "UPDATE refresh_families SET created_at = $3, last_used_at = $3,
                     generation_issued_at = $3
                 WHERE id::text LIKE '00000000-0000-4000-9000-%'
                   AND substr(id::text, 25)::bigint * $2 / $1
                       <> (substr(id::text, 25)::bigint - 1) * $2 / $1",
            )
            .bind(total)
            .bind(ended)
            .bind(long_ago),
        )
        .await
        .unwrap();
        conn.execute("VACUUM ANALYZE").await.unwrap();
    }
}

/// The store's bare rotation transactions per second: the same SQL, no HTTP.
async fn store_limit(settings: &Settings, workers: usize, seconds: f64) -> f64 {
    let store = token_issuer::startup::open_store(settings).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let user = User {
        id: uuid::Uuid::new_v4(),
        email: format!("store-{}@bench.example", uuid::Uuid::new_v4().simple()),
        created_at: now,
    };
    store.create_user(&user, "$argon2id$unused").await.unwrap();
    let policy = RefreshPolicy {
        idle_timeout: Duration::from_secs(86_400),
        absolute_lifetime: Duration::from_secs(86_400),
        grace_period: Duration::from_secs(10),
    };
    let total = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (store, total) = (Arc::clone(&store), Arc::clone(&total));
        let family = NewFamily {
            id: uuid::Uuid::new_v4(),
            user_id: user.id,
            client_id: "dev".into(),
            scope: None,
            created_at: now,
            user_agent: None,
            ip: None,
            checked_password_hash: None,
            login_source: None,
            dpop_jkt: None,
        };
        store.create_family(&family).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut generation = 0;
            while Instant::now() < end {
                let outcome = store
                    .rotate(&RotateRequest {
                        presented: TokenRef::Minted {
                            family: family.id,
                            generation,
                        },
                        client_id: "dev",
                        now: time::OffsetDateTime::now_utc(),
                        policy,
                        ip: None,
                        user_agent: None,
                        dpop_jkt: None,
                        ticket: Default::default(),
                    })
                    .await
                    .unwrap();
                let RotateOutcome::Issued {
                    generation: next, ..
                } = outcome
                else {
                    panic!("a bare rotation was refused: {outcome:?}");
                };
                generation = next;
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    store.close().await;
    total.load(Ordering::Relaxed) as f64 / seconds
}

/// What one worker sends next.
#[derive(Clone)]
enum Request {
    Get(&'static str, Option<String>),
    Me(String),
    Login,
    Refresh,
    Introspect(String),
    /// A refresh with a DPoP proof, of a session bound to the worker's key (the
    /// issuer's URL, which proofs name).
    RefreshDpop(String),
    /// `/v1/me` under the DPoP scheme with a bound token (the issuer's URL).
    MeDpop(String),
    /// A client-credentials grant of the service client (HTTP Basic).
    ClientCredentials,
    /// An authorization code exchange (PKCE) of the native client; the codes were
    /// issued before the window, as browsers would have been sent back with them.
    CodeExchange,
}

/// The native client of the code exchange, its redirect URI and one PKCE pair.
const NATIVE: &str = "bench-native";
const NATIVE_REDIRECT: &str = "http://127.0.0.1:4711/callback";
const VERIFIER: &str = "bench-verifier-0123456789-0123456789-0123456789";

/// Signs `email` in on the hosted page (cookies by hand: reqwest keeps no `Secure`
/// cookie over http), then asks the authorization endpoint for `count` codes with the
/// sign-in session (each a 302 with a new code).
async fn codes(base: &str, email: &str, count: usize) -> Vec<String> {
    // The redirects are read, not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, VERIFIER.as_bytes()),
    );
    let query = format!(
        "{base}/oauth/authorize?response_type=code&client_id={NATIVE}&redirect_uri={}&code_challenge={challenge}&code_challenge_method=S256",
        NATIVE_REDIRECT.replace(':', "%3A").replace('/', "%2F")
    );
    let cookie_of = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    };
    let page = http.get(&query).send().await.unwrap();
    let form_cookie = cookie_of(&page, "__Host-form").unwrap();
    let html = page.text().await.unwrap();
    let mut fields: Vec<(String, String)> = html
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix(" value=\"")?.split('"').next()?;
            Some((name.to_owned(), value.replace("&amp;", "&")))
        })
        .collect();
    fields.push(("username".into(), email.into()));
    fields.push(("password".into(), PASSWORD.into()));
    let signed_in = http
        .post(format!("{base}/oauth/authorize"))
        .header("cookie", format!("__Host-form={form_cookie}"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "the sign-in form");
    let session = cookie_of(&signed_in, "__Host-session").unwrap();
    let mut codes = Vec::with_capacity(count);
    for _ in 0..count {
        let resp = http
            .get(&query)
            .header("cookie", format!("__Host-session={session}"))
            .send()
            .await
            .unwrap();
        let location = resp.headers()["location"].to_str().unwrap();
        let code = location
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        codes.push(code.to_owned());
    }
    codes
}

/// A client's DPoP key (ES256), making proofs as a client library does: a fresh `jti`
/// and `iat` for each request.
struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    header: String,
}

impl DpopKey {
    fn new() -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        });
        Self {
            pair,
            header: b64(header.to_string().as_bytes()),
        }
    }

    fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": url, "iat": iat,
        });
        if let Some(token) = access_token {
            claims["ath"] = token_issuer::crypto::dpop::access_token_hash(token).into();
        }
        let input = format!("{}.{}", self.header, b64(claims.to_string().as_bytes()));
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }
}

/// CPU time of one proof check at the token endpoint (`dpop::check`: parse, key,
/// ES256 signature, claims), on one thread, in µs.
fn proof_check_us(issuer: &str) -> f64 {
    let key = DpopKey::new();
    let url = format!("{issuer}/oauth/token");
    let proofs: Vec<String> = (0..2000).map(|_| key.proof("POST", &url, None)).collect();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let expected = token_issuer::crypto::dpop::Expected {
        method: "POST",
        url: &url,
        now,
        leeway: 30,
        access_token: None,
    };
    let started = Instant::now();
    for p in &proofs {
        token_issuer::crypto::dpop::check(p, &expected).unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / proofs.len() as f64
}

struct Plan {
    name: String,
    requests: Vec<Request>,
    /// DPoP proofs each worker makes before the window (then one per request):
    /// a client signs on its own device, not on the server's cores.
    prepared: usize,
    /// Requests per second per worker, when paced.
    pace: Option<f64>,
    limit: Option<(&'static str, f64)>,
}

async fn post_form(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    http.post(url).form(form).send().await.unwrap()
}

async fn login(http: &reqwest::Client, base: &str, email: &str) -> Value {
    post_form(
        http,
        &format!("{base}/oauth/token"),
        &[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", PASSWORD),
        ],
    )
    .await
    .json()
    .await
    .unwrap()
}

/// A login of the `dev` client with a proof of `key`: a session bound to it.
async fn login_bound(
    http: &reqwest::Client,
    base: &str,
    issuer: &str,
    email: &str,
    key: &DpopKey,
) -> Value {
    let proof = key.proof("POST", &format!("{issuer}/oauth/token"), None);
    http.post(format!("{base}/oauth/token"))
        .header("dpop", proof)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn run(server: &Server, email: &str, plan: &Plan, seconds: f64, secret: &str) -> Outcome {
    let window = || tokio::time::sleep(Duration::from_secs_f64(seconds));
    run_while(server, email, plan, secret, window).await.0
}

/// Runs `plan` while the future `window` makes (it is made once every worker is
/// ready), and what the future answered.
async fn run_while<T, F: Future<Output = T>>(
    server: &Server,
    email: &str,
    plan: &Plan,
    secret: &str,
    window: impl FnOnce() -> F,
) -> (Outcome, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Barrier::new(plan.requests.len() + 1));
    let mut tasks = Vec::new();
    for request in plan.requests.iter().cloned() {
        let (base, stop, email, secret, ready) = (
            server.base.clone(),
            Arc::clone(&stop),
            email.to_owned(),
            secret.to_owned(),
            Arc::clone(&ready),
        );
        let (pace, prepared) = (plan.pace, plan.prepared);
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per worker.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let key = DpopKey::new();
            let mut chain = match &request {
                Request::Refresh => login(&http, &base, &email).await["refresh_token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                Request::RefreshDpop(issuer) => login_bound(&http, &base, issuer, &email, &key)
                    .await["refresh_token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                Request::MeDpop(issuer) => {
                    login_bound(&http, &base, issuer, &email, &key).await["access_token"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                }
                _ => String::new(),
            };
            let mut codes = match &request {
                Request::CodeExchange => codes(&base, &email, prepared).await,
                _ => Vec::new(),
            };
            let mut proofs: Vec<String> = match &request {
                Request::RefreshDpop(issuer) => {
                    let url = format!("{issuer}/oauth/token");
                    (0..prepared)
                        .map(|_| key.proof("POST", &url, None))
                        .collect()
                }
                Request::MeDpop(issuer) => {
                    let url = format!("{issuer}/v1/me");
                    (0..prepared)
                        .map(|_| key.proof("GET", &url, Some(&chain)))
                        .collect()
                }
                _ => Vec::new(),
            };
            ready.wait().await;
            let (mut lat, mut errors, mut n) = (Vec::new(), BTreeMap::new(), 0u64);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(rate) = pace {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                let resp = match &request {
                    Request::Get(path, etag) => {
                        let mut r = http.get(format!("{base}{path}"));
                        if let Some(etag) = etag {
                            r = r.header("if-none-match", etag);
                        }
                        r.send().await.unwrap()
                    }
                    Request::Me(access) => http
                        .get(format!("{base}/v1/me"))
                        .bearer_auth(access)
                        .send()
                        .await
                        .unwrap(),
                    Request::Login => {
                        post_form(
                            &http,
                            &format!("{base}/oauth/token"),
                            &[
                                ("grant_type", "password"),
                                ("client_id", "dev"),
                                ("username", &email),
                                ("password", PASSWORD),
                            ],
                        )
                        .await
                    }
                    Request::Refresh => {
                        post_form(
                            &http,
                            &format!("{base}/oauth/token"),
                            &[
                                ("grant_type", "refresh_token"),
                                ("client_id", "dev"),
                                ("refresh_token", &chain),
                            ],
                        )
                        .await
                    }
                    Request::RefreshDpop(issuer) => http
                        .post(format!("{base}/oauth/token"))
                        .header(
                            "dpop",
                            proofs.pop().unwrap_or_else(|| {
                                key.proof("POST", &format!("{issuer}/oauth/token"), None)
                            }),
                        )
                        .form(&[
                            ("grant_type", "refresh_token"),
                            ("client_id", "dev"),
                            ("refresh_token", &chain),
                        ])
                        .send()
                        .await
                        .unwrap(),
                    Request::MeDpop(issuer) => http
                        .get(format!("{base}/v1/me"))
                        .header("authorization", format!("DPoP {chain}"))
                        .header(
                            "dpop",
                            proofs.pop().unwrap_or_else(|| {
                                key.proof("GET", &format!("{issuer}/v1/me"), Some(&chain))
                            }),
                        )
                        .send()
                        .await
                        .unwrap(),
                    Request::CodeExchange => {
                        // Out of codes: the plan prepared too few (counted as 400s).
                        let code = codes.pop().unwrap_or_default();
                        post_form(
                            &http,
                            &format!("{base}/oauth/token"),
                            &[
                                ("grant_type", "authorization_code"),
                                ("client_id", NATIVE),
                                ("code", &code),
                                ("redirect_uri", NATIVE_REDIRECT),
                                ("code_verifier", VERIFIER),
                            ],
                        )
                        .await
                    }
                    Request::ClientCredentials => http
                        .post(format!("{base}/oauth/token"))
                        .basic_auth("bench-rs", Some(&secret))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await
                        .unwrap(),
                    Request::Introspect(token) => http
                        .post(format!("{base}/oauth/introspect"))
                        .basic_auth("bench-rs", Some(&secret))
                        .form(&[("token", token.as_str())])
                        .send()
                        .await
                        .unwrap(),
                };
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap();
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                n += 1;
                if status >= 400 {
                    *errors.entry(status).or_insert(0) += 1;
                } else if matches!(request, Request::Refresh | Request::RefreshDpop(_)) {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    chain = v["refresh_token"].as_str().unwrap().to_owned();
                }
            }
            (lat, errors, n, started.elapsed())
        }));
    }
    ready.wait().await;
    let (cpu_before, database_before) = (server.cpu(), processes_cpu("postgres"));
    let answer = window().await;
    stop.store(true, Ordering::Relaxed);
    let server_cpu = server.cpu().saturating_sub(cpu_before);
    let database_cpu = processes_cpu("postgres").saturating_sub(database_before);
    let mut out = Outcome {
        name: plan.name.clone(),
        requests: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        errors: BTreeMap::new(),
        rss_kb: 0,
        server_cpu,
        database_cpu,
        limit: plan.limit,
    };
    for t in tasks {
        let (lat, errors, n, elapsed) = t.await.unwrap();
        out.latencies_us.extend(lat);
        for (s, c) in errors {
            *out.errors.entry(s).or_insert(0) += c;
        }
        out.requests += n;
        out.seconds = out.seconds.max(elapsed.as_secs_f64());
    }
    out.latencies_us.sort_unstable();
    out.rss_kb = server.rss_kb();
    (out, answer)
}

fn row(o: &Outcome) -> String {
    let errors = if o.errors.is_empty() {
        "0".to_owned()
    } else {
        o.errors
            .iter()
            .map(|(s, c)| format!("{c}×{s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio = o.limit.map_or("–".to_owned(), |(name, limit)| {
        format!("{:.2} × {name} ({limit:.0}/s)", o.rate() / limit)
    });
    format!(
        "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {errors} | {} | {:.0} | {:.0} | {ratio} |",
        o.name,
        o.rate(),
        o.pct(0.50),
        o.pct(0.99),
        o.pct(0.999),
        o.rss_kb / 1024,
        o.cpu_per_request_us(),
        o.database_cpu_per_request_us()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let built = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "token-issuer"])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "building the server failed");
    let seconds = a.seconds as f64;
    let dir = tempfile::tempdir().unwrap();

    // The database: a temp SQLite file, or a fresh PostgreSQL database.
    let (database_url, pg_admin) = if a.backend == "postgres" {
        use sqlx::Connection as _;
        let admin = std::env::var("ISSUER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("issuer_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL answers");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        (Some(url.to_string()), Some((admin, name)))
    } else {
        (None, None)
    };

    // The server's database and the store limit's: one PostgreSQL database, or two
    // SQLite files (the limit is measured before the server starts).
    let (server_db, limit_db) = match &database_url {
        Some(url) => (url.clone(), url.clone()),
        None => {
            std::fs::create_dir_all(dir.path().join("data")).unwrap();
            let file = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
            (file("data/issuer.db"), file("store-limit.db"))
        }
    };
    eprintln!("adding {} users, each with a live session…", a.population);
    eprintln!("and {} more that will end before the sweep…", a.ended);
    populate(&server_db, a.population, a.ended).await;
    if limit_db != server_db {
        populate(&limit_db, a.population, 0).await;
    }

    eprintln!("measuring limits…");
    let signing = signing_limit(seconds.min(5.0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let signature_us = cores as f64 * 1e6 / signing;
    let mut store_settings = Settings::development().unwrap();
    store_settings.database_url = SecretUrl::new(limit_db);
    let store = store_limit(&store_settings, a.workers, seconds.min(5.0)).await;
    let (secret, secret_hash) = token_issuer::crypto::client_secret::generate().unwrap();
    let secret = secret.expose().to_owned();
    let server = start_server(dir.path(), &server_db, &secret_hash);
    let idle_rss = server.rss_kb();

    let http = reqwest::Client::new();
    let email = format!("bench-{}@bench.example", uuid::Uuid::new_v4().simple());
    let resp = http
        .post(format!("{}/v1/users", server.base))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let tokens = login(&http, &server.base, &email).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let jwks = http
        .get(format!("{}/.well-known/jwks.json", server.base))
        .send()
        .await
        .unwrap();
    let etag = jwks.headers()["etag"].to_str().unwrap().to_owned();
    let jwks: Value = jwks.json().await.unwrap();
    let verification = verify_limit(
        &access,
        jwks["keys"][0]["n"].as_str().unwrap(),
        jwks["keys"][0]["e"].as_str().unwrap(),
        seconds.min(5.0),
    );

    let issuer = http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["issuer"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof_us = proof_check_us(&issuer);
    // Enough for 2,500 requests a second per worker through the window (all made in
    // well under a minute: every one is still within the proofs' `iat` window).
    let prepared_proofs = (seconds * 2500.0) as usize;

    let w = a.workers;
    let trivial = Plan {
        name: "healthz (trivial route)".into(),
        requests: vec![Request::Get("/healthz", None); w],
        prepared: 0,
        pace: None,
        limit: None,
    };
    let healthz = run(&server, &email, &trivial, seconds, &secret).await;
    let trivial_rate = healthz.rate();
    let mut outcomes = vec![healthz];
    let plans = [
        Plan {
            name: "refresh".into(),
            requests: vec![Request::Refresh; w],
            prepared: 0,
            pace: None,
            limit: Some(("min(signing, store)", signing.min(store))),
        },
        Plan {
            name: "refresh with DPoP".into(),
            requests: vec![Request::RefreshDpop(issuer.clone()); w],
            prepared: prepared_proofs,
            pace: None,
            limit: Some(("min(signing, store)", signing.min(store))),
        },
        Plan {
            name: "login (argon2id)".into(),
            requests: vec![Request::Login; w],
            prepared: 0,
            pace: None,
            limit: None,
        },
        Plan {
            name: "jwks".into(),
            requests: vec![Request::Get("/.well-known/jwks.json", None); w],
            prepared: 0,
            pace: None,
            limit: Some(("healthz", trivial_rate)),
        },
        Plan {
            name: "jwks If-None-Match → 304".into(),
            requests: vec![Request::Get("/.well-known/jwks.json", Some(etag)); w],
            prepared: 0,
            pace: None,
            limit: Some(("healthz", trivial_rate)),
        },
        Plan {
            name: "me (bearer verification)".into(),
            requests: vec![Request::Me(access.clone()); w],
            prepared: 0,
            pace: None,
            limit: Some(("verification", verification)),
        },
        Plan {
            name: "me with DPoP".into(),
            requests: vec![Request::MeDpop(issuer.clone()); w],
            prepared: prepared_proofs,
            pace: None,
            limit: Some(("verification", verification)),
        },
        Plan {
            name: "code exchange".into(),
            requests: vec![Request::CodeExchange; w],
            // Codes live 60 s: made before the window, enough for 1,000 exchanges a
            // second per worker.
            prepared: (seconds * 1000.0) as usize,
            pace: None,
            limit: Some(("min(signing, store)", signing.min(store))),
        },
        Plan {
            name: "client credentials".into(),
            requests: vec![Request::ClientCredentials; w],
            prepared: 0,
            pace: None,
            limit: Some(("signing", signing)),
        },
        Plan {
            name: "introspect (access token)".into(),
            requests: vec![Request::Introspect(access.clone()); w],
            prepared: 0,
            pace: None,
            limit: Some(("healthz", trivial_rate)),
        },
    ];
    let wanted = |name: &str| a.only.as_deref().is_none_or(|only| name.starts_with(only));
    let mut refresh_peak = 0.0;
    for plan in plans.iter().filter(|p| wanted(&p.name)) {
        eprintln!("{}…", plan.name);
        let o = run(&server, &email, plan, seconds, &secret).await;
        if plan.name == "refresh" {
            refresh_peak = o.rate();
        }
        outcomes.push(o);
    }
    // Refresh at half its peak, alone and under a login flood. (with the refresh scenario)
    if wanted("refresh at") && refresh_peak > 0.0 {
        let half = refresh_peak / 2.0 / w as f64;

        let calm = Plan {
            name: "refresh at ½ peak".into(),
            requests: vec![Request::Refresh; w],
            prepared: 0,
            pace: Some(half),
            limit: None,
        };
        outcomes.push(run(&server, &email, &calm, seconds, &secret).await);
        let flood_server = &server;
        let flood_plan = Plan {
            name: "login flood".into(),
            requests: vec![Request::Login; w],
            prepared: 0,
            pace: None,
            limit: None,
        };
        let calm_under_flood = Plan {
            name: "refresh at ½ peak + login flood".into(),
            requests: vec![Request::Refresh; w],
            prepared: 0,
            pace: Some(half),
            limit: None,
        };
        let (under_flood, flood) = tokio::join!(
            run(flood_server, &email, &calm_under_flood, seconds, &secret),
            run(flood_server, &email, &flood_plan, seconds, &secret)
        );
        outcomes.push(under_flood);
        outcomes.push(flood);
    }

    // Refresh while the server sweeps the ended sessions (its hourly sweep, asked for
    // now through the admin API): the window is the sweep's own duration.
    let mut swept = None;
    if a.ended > 0 && wanted("refresh during") {
        eprintln!(
            "ending {} sessions, then refresh during the sweep…",
            a.ended
        );
        end_sessions(&server_db, a.population, a.ended).await;
        let admin = format!("admin-{}@bench.example", uuid::Uuid::new_v4().simple());
        let resp = http
            .post(format!("{}/v1/users", server.base))
            .json(&serde_json::json!({"email": admin, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let granted = issuer_command(dir.path(), &server_db)
            .args(["admin", "grant", &admin])
            .output()
            .unwrap();
        assert!(granted.status.success(), "{granted:?}");
        let admin_access = login(&http, &server.base, &admin).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let plan = Plan {
            name: "refresh during the sweep".into(),
            requests: vec![Request::Refresh; w],
            prepared: 0,
            pace: None,
            limit: None,
        };
        let (http, base) = (http.clone(), server.base.clone());
        let sweep = || async move {
            let started = Instant::now();
            let resp = http
                .post(format!("{base}/v1/admin/sweep"))
                .bearer_auth(admin_access)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let said: Value = resp.json().await.unwrap();
            (started.elapsed(), said)
        };
        let (o, (took, said)) = run_while(&server, &email, &plan, &secret, sweep).await;
        outcomes.push(o);
        swept = Some((took, said));
    }

    let mut md = String::new();
    md.push_str(&format!(
        "Backend **{}**, {} workers, {} s per scenario, {} cores; {} other users in the database, \
         each with a live session{}.\n\n\
         Limits measured in the same run: RSA-2048 signing **{signing:.0}/s** (all cores, pre-parsed key); \
         bare store rotation **{store:.0}/s** ({} workers, no HTTP); access-token verification \
         **{verification:.0}/s** (all cores); healthz **{trivial_rate:.0}/s**. \
         Server RSS idle: **{} MB**.\n\n\
         One RSA-2048 signature costs **{signature_us:.0} µs** of CPU (from the signing limit); \
         one DPoP proof check (ES256) **{proof_us:.0} µs** (one thread). DPoP scenarios: each \
         worker makes its proofs (one ES256 signature each) before the window, as a client \
         signs on its own device, not on the server's cores.\n\n\
         | scenario | req/s | p50 ms | p99 ms | p99.9 ms | errors | RSS MB | server CPU µs/req | PostgreSQL CPU µs/req | vs limit |\n|---|---|---|---|---|---|---|---|---|---|\n",
        a.backend,
        a.workers,
        a.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        a.population,
        if a.ended > 0 {
            format!(", and {} more live sessions that end before the sweep", a.ended)
        } else {
            String::new()
        },
        a.workers,
        idle_rss / 1024
    ));
    for o in &outcomes {
        md.push_str(&row(o));
        md.push('\n');
    }
    if let Some((took, said)) = swept {
        md.push_str(&format!(
            "\nThe sweep (`POST /v1/admin/sweep`, {} ended sessions among {} live ones): \
             **{:.2} s**; it answered {said}\n",
            a.ended,
            a.population,
            took.as_secs_f64()
        ));
    }
    println!("{md}");
    if let Some(out) = a.out {
        std::fs::write(out, &md).unwrap();
    }
    drop(server);
    if let Some((admin, name)) = pg_admin {
        use sqlx::Connection as _;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}
