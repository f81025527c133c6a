//! Rate limits and the Redis-backed shared state: 429 with `Retry-After`, limits shared
//! across instances, and a Redis that goes away and comes back.

use std::time::{Duration, Instant};
use token_issuer::config::SecretUrl;

use reqwest::StatusCode;
use serde_json::Value;
use token_issuer::config::RateLimit;

use crate::helpers::{
    Backend, PASSWORD, TestApp, assert_error, segment, spawn_app_with, spawn_instance_like,
    test_redis_url, tokens, unique_email, wait_for_redis,
};
use crate::proxy::{Link, TcpProxy, upstream_and_proxied_url};

fn per_minute(max: u32) -> Option<RateLimit> {
    Some(RateLimit {
        max,
        window: Duration::from_secs(60),
    })
}

/// Asserts a 429 `rate_limited` with a `Retry-After` of 1 to `window` seconds; returns it.
async fn assert_rate_limited(resp: reqwest::Response, window: u64) -> u64 {
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=window).contains(&retry_after), "{retry_after}");
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    retry_after
}

async fn login_from(app: &TestApp, forwarded_for: &str, email: &str) -> reqwest::Response {
    app.http
        .post(app.url("/oauth/token"))
        .header("x-forwarded-for", forwarded_for)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_login_limit_per_account_counts_failures_across_the_instances() {
    let a = spawn_app_with(Backend::Postgres, |s| {
        s.limits.login_per_account = per_minute(3);
        s.limits.login_per_ip = None;
    })
    .await;
    let b = spawn_instance_like(&a).await;
    wait_for_redis(&a, "ok").await;
    wait_for_redis(&b, "ok").await;
    let (email, _) = a.signed_in().await;
    let wrong = "not the password!";
    // Successful logins are not counted; failures are, on whichever instance.
    for app in [&a, &b] {
        assert_eq!(
            app.login(&email, wrong).await.status(),
            StatusCode::BAD_REQUEST
        );
        tokens(app.login(&email, PASSWORD).await).await;
    }
    assert_eq!(
        a.login(&email, wrong).await.status(),
        StatusCode::BAD_REQUEST
    );
    // Three failures: the account is refused, the right password included, everywhere
    // (but to its owner's known sources: `login_limits`).
    assert_rate_limited(a.login_from("127.0.0.66", &email, PASSWORD).await, 60).await;
    assert_rate_limited(b.login_from("127.0.0.66", &email, wrong).await, 60).await;
    // Another account is not affected; an unknown one is counted all the same.
    a.signed_in().await;
    let unknown = unique_email();
    for _ in 0..3 {
        assert_eq!(
            b.login(&unknown, PASSWORD).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    assert_rate_limited(a.login(&unknown, PASSWORD).await, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_limit_per_ip_counts_the_client_behind_trusted_proxies() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.trusted_proxies = vec![token_issuer::config::Cidr::parse("127.0.0.0/8").unwrap()];
        s.limits.login_per_ip = per_minute(2);
        s.limits.login_per_account = None;
    })
    .await;
    let (email, _) = app.signed_in().await; // from 127.0.0.1 itself
    tokens(login_from(&app, "203.0.113.7", &email).await).await;
    tokens(login_from(&app, "203.0.113.7:4711", &email).await).await;
    assert_rate_limited(login_from(&app, "203.0.113.7", &email).await, 60).await;
    // What the client claims before the first untrusted address is ignored; trusted
    // hops after it are walked past.
    assert_rate_limited(
        login_from(&app, "198.51.100.1, 203.0.113.7", &email).await,
        60,
    )
    .await;
    assert_rate_limited(login_from(&app, "203.0.113.7, 127.0.0.9", &email).await, 60).await;
    tokens(login_from(&app, "203.0.113.7, 198.51.100.1", &email).await).await;
    // Without trusted proxies the header is ignored: the peer is the client.
    let direct = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.login_per_ip = per_minute(2);
        s.limits.login_per_account = None;
    })
    .await;
    let (email, _) = direct.signed_in().await;
    tokens(login_from(&direct, "203.0.113.8", &email).await).await;
    assert_rate_limited(login_from(&direct, "203.0.113.9", &email).await, 60).await;
}

scenario! {
    async fn the_refresh_limit_per_family_refuses_before_consuming(backend) {
        let app = spawn_app_with(backend, |s| {
            s.limits.refresh_per_family = Some(RateLimit {
                max: 2,
                window: Duration::from_secs(2),
            });
        })
        .await;
        if backend == Backend::Postgres {
            wait_for_redis(&app, "ok").await;
        }
        let (_, first) = app.signed_in().await;
        let second = tokens(app.refresh(&first.refresh).await).await;
        let third = tokens(app.refresh(&second.refresh).await).await;
        let wait = assert_rate_limited(app.refresh(&third.refresh).await, 2).await;
        // Another session of the same user is not limited.
        let (_, other) = app.signed_in().await;
        tokens(app.refresh(&other.refresh).await).await;
        // The refused token was not consumed: after the window it rotates.
        tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
        tokens(app.refresh(&third.refresh).await).await;
    }
}

async fn unique_email_registered(app: &TestApp) -> String {
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    email
}

async fn me_status(app: &TestApp, access: &str) -> StatusCode {
    app.me(access).await.status()
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let resp = app.get("/readyz").await;
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_the_service_works_on_and_picks_redis_up_when_it_returns() {
    let redis_url = test_redis_url().await;
    let (upstream, _) = upstream_and_proxied_url(&redis_url, 0);
    let proxy = TcpProxy::start(upstream).await;
    let (_, proxied) = upstream_and_proxied_url(&redis_url, proxy.port);
    let a = spawn_app_with(Backend::Postgres, |s| {
        s.redis_url = Some(SecretUrl::new(proxied));
        s.limits.login_per_account = per_minute(3);
    })
    .await;
    let b = spawn_instance_like(&a).await;
    wait_for_redis(&a, "ok").await;
    wait_for_redis(&b, "ok").await;
    let (_, before) = a.signed_in().await;
    assert_eq!(me_status(&b, &before.access).await, StatusCode::OK);

    for cut in [Link::Refuse, Link::Blackhole] {
        proxy.set(cut);
        // Before the health check notices: each Redis call gives up after 300 ms.
        let started = Instant::now();
        assert_eq!(me_status(&b, &before.access).await, StatusCode::OK);
        tokens(a.login(&unique_email_registered(&a).await, PASSWORD).await).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        wait_for_redis(&a, "degraded").await;
        wait_for_redis(&b, "degraded").await;
        let (status, body) = readyz(&a).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "Redis down is not the service down: {body}"
        );
        assert_eq!(body["database"], "ok");

        // Logins and refreshes work from the database, in time.
        let started = Instant::now();
        let (_, during) = b.signed_in().await;
        let next = tokens(a.refresh(&during.refresh).await).await;
        assert_eq!(me_status(&b, &next.access).await, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // A revocation through one instance is refused by the other: the database
        // decides while Redis is away.
        let resp = a
            .post_form(
                "/oauth/revoke",
                &[("client_id", "dev"), ("token", &next.refresh)],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(me_status(&b, &next.access).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me_status(&a, &next.access).await, StatusCode::UNAUTHORIZED);

        // Rate limits fall back to each instance's own counters.
        let fresh = unique_email();
        for _ in 0..3 {
            assert_eq!(
                a.login(&fresh, PASSWORD).await.status(),
                StatusCode::BAD_REQUEST
            );
        }
        assert_rate_limited(a.login(&fresh, PASSWORD).await, 60).await;

        // Redis comes back: picked up without a restart, and the revocation made while
        // it was away is on its deny-list now.
        proxy.set(Link::Open);
        wait_for_redis(&a, "ok").await;
        wait_for_redis(&b, "ok").await;
        let sid = segment(&next.access, 1)["sid"].as_str().unwrap().to_owned();
        let key = format!("{}deny:{sid}", a.settings.redis_key_prefix);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let client = redis::Client::open(redis_url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let listed: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if listed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the revocation never reached redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And the shared state works again: a revocation on b is refused by a at once.
    let (_, after) = a.signed_in().await;
    assert_eq!(me_status(&a, &after.access).await, StatusCode::OK);
    let resp = b
        .post_form(
            "/oauth/revoke",
            &[("client_id", "dev"), ("token", &after.refresh)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(me_status(&a, &after.access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_event_alone_makes_an_instance_refuse_the_session() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    wait_for_redis(&app, "ok").await;
    let (_, t) = app.signed_in().await;
    assert_eq!(me_status(&app, &t.access).await, StatusCode::OK);
    // Announced by "another instance" only: not on the deny-list, not in the database.
    let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
    let client = redis::Client::open(test_redis_url().await.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{}revocations", app.settings.redis_key_prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Repeated until the instance has subscribed.
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(format!("{sid}:60000"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if me_status(&app, &t.access).await == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the announcement was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis goes away (refused, then blackholed) and comes back under a steady load of
/// refreshes (counted by the Redis rate limiter) and bearer calls (checked against the
/// Redis deny-list): not one request fails.
/// Four refresh streams spread over `apps`, each checking its new access token with
/// `/v1/me`, until told to finish; then every request must have succeeded.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    async fn start(apps: &[std::sync::Arc<TestApp>]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for i in 0..4 {
            let app = std::sync::Arc::clone(&apps[i % apps.len()]);
            let stop = std::sync::Arc::clone(&stop);
            let (_, first) = app.signed_in().await;
            workers.push(tokio::spawn(async move {
                let (mut current, mut served, mut failed) = (first, 0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = app.refresh(&current.refresh).await;
                    if resp.status() != StatusCode::OK {
                        failed.push(format!("refresh {}", resp.status()));
                        break;
                    }
                    current = tokens(resp).await;
                    let me = app.me(&current.access).await.status();
                    if me != StatusCode::OK {
                        failed.push(format!("me {me}"));
                    }
                    served += 2;
                }
                (served, failed)
            }));
        }
        Self { stop, workers }
    }

    async fn finish_without_failures(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for w in self.workers {
            let (served, failed) = w.await.unwrap();
            assert!(failed.is_empty(), "{failed:?}");
            total += served;
        }
        assert!(total > 100, "the load ran: {total} requests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_redis_goes_away_and_comes_back_under_load() {
    let redis_url = test_redis_url().await;
    let (upstream, _) = upstream_and_proxied_url(&redis_url, 0);
    let proxy = TcpProxy::start(upstream).await;
    let (_, proxied) = upstream_and_proxied_url(&redis_url, proxy.port);
    let app = std::sync::Arc::new(
        spawn_app_with(Backend::Postgres, |s| {
            s.redis_url = Some(SecretUrl::new(proxied));
            s.limits.refresh_per_family = Some(RateLimit {
                max: 1_000_000,
                window: Duration::from_secs(60),
            });
        })
        .await,
    );
    wait_for_redis(&app, "ok").await;
    let load = Load::start(&[std::sync::Arc::clone(&app)]).await;
    for link in [Link::Refuse, Link::Open, Link::Blackhole, Link::Open] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.set(link);
    }
    wait_for_redis(&app, "ok").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures().await;
}

/// A Redis server of the test's own, on a port of its own, that can be killed for real.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn ready(&self) -> redis::aio::MultiplexedConnection {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return conn;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_under_load_fails_no_request_and_the_deny_list_is_rebuilt() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    redis.ready().await;
    let a = std::sync::Arc::new(
        spawn_app_with(Backend::Postgres, |s| {
            s.redis_url = Some(SecretUrl::new(redis.url()));
            s.limits.refresh_per_family = Some(RateLimit {
                max: 1_000_000,
                window: Duration::from_secs(60),
            });
        })
        .await,
    );
    let b = std::sync::Arc::new(spawn_instance_like(&a).await);
    wait_for_redis(&a, "ok").await;
    wait_for_redis(&b, "ok").await;
    let (_, victim) = a.signed_in().await;
    assert_eq!(me_status(&b, &victim.access).await, StatusCode::OK);

    // Refresh streams on both instances, each checking its new access token.
    let load = Load::start(&[std::sync::Arc::clone(&a), std::sync::Arc::clone(&b)]).await;

    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    wait_for_redis(&a, "degraded").await;
    // Revoked while Redis is dead: no deny-list entry, no event reaches b.
    let resp = a
        .post_form(
            "/oauth/revoke",
            &[("client_id", "dev"), ("token", &victim.refresh)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // A new, empty Redis on the same port (it keeps nothing on disk).
    let restarted = OwnRedis::start(port);
    let mut conn = restarted.ready().await;
    wait_for_redis(&a, "ok").await;
    wait_for_redis(&b, "ok").await;
    // The deny-list is rebuilt from the database into the new Redis, so every
    // instance refuses the session revoked during the outage.
    let sid = segment(&victim.access, 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = format!("{}deny:{sid}", a.settings.redis_key_prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("EXISTS")
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "{key} never rebuilt");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for app in [&a, &b] {
        assert_eq!(
            me_status(app, &victim.access).await,
            StatusCode::UNAUTHORIZED
        );
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures().await;
    drop(restarted);
}

/// `rediss://`: Redis over TLS, with the certificate authority of a private CA
/// (`redis_ca_file`), as managed Redis services hand it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_holds_the_shared_state() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.path().join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("redis-server")
        .current_dir(dir.path())
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (Debian: apt-get install redis-server)");
    let url = format!("rediss://127.0.0.1:{port}/");
    let ca = dir.path().join("ca.pem");
    let prefix = crate::helpers::unique_redis_prefix();
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.redis_url = Some(SecretUrl::new(url.clone()));
        s.redis_ca_file = Some(ca.clone());
        s.redis_key_prefix = prefix.clone();
    })
    .await;
    wait_for_redis(&app, "ok").await;
    // A revocation lands on the deny-list over TLS.
    let (_, t) = app.signed_in().await;
    let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
    let resp = app
        .post_form(
            "/oauth/revoke",
            &[("client_id", "dev"), ("token", &t.refresh)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let denied: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}deny:{sid}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        denied,
        "the revoked session is on the deny-list in the TLS Redis"
    );
    let _ = server.kill();
    let _ = server.wait();
}
