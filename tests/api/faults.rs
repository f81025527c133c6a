//! The database stops answering, then comes back: requests answer 503 in time, never
//! hang or 500, nothing is half-written, and the service recovers by itself. The
//! database sits behind a TCP proxy the test can cut.

use std::time::{Duration, Instant};
use token_issuer::config::SecretUrl;

use reqwest::StatusCode;

use crate::helpers::{
    Backend, TestApp, TestDatabase, assert_error, family_generation, segment, spawn_app_with,
    token_generation, tokens,
};
use crate::proxy::{Link, TcpProxy, upstream_and_proxied_url};

/// Retries a refresh until the database answers again; every answer meanwhile is a 503.
async fn refresh_until_recovered(app: &TestApp, token: &str) -> crate::helpers::Tokens {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = app.refresh(token).await;
        if resp.status() == StatusCode::OK {
            return tokens(resp).await;
        }
        assert!(Instant::now() < deadline, "the service did not recover");
        assert_error(
            resp,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts a 503 `temporarily_unavailable` that came within the database timeout
/// (2 s) plus a margin: the request neither hung nor failed with a 500.
async fn assert_unavailable_in_time(started: Instant, resp: reqwest::Response) {
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_stops_answering_gives_503_in_time_and_the_service_recovers() {
    let database = TestDatabase::create().await;
    let (upstream, _) = upstream_and_proxied_url(&database.url, 0);
    let proxy = TcpProxy::start(upstream).await;
    let (_, proxied) = upstream_and_proxied_url(&database.url, proxy.port);
    // The SQLite default is replaced by the proxied PostgreSQL database.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.database_url = SecretUrl::new(proxied)
    })
    .await;
    let (email, first) = app.signed_in().await;
    let sid = segment(&first.access, 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let current = tokens(app.refresh(&first.refresh).await).await;

    // The database stops answering: every kind of request gets its 503 in time.
    proxy.set(Link::Blackhole);
    let started = Instant::now();
    assert_unavailable_in_time(started, app.refresh(&current.refresh).await).await;
    let started = Instant::now();
    assert_unavailable_in_time(started, app.login(&email, crate::helpers::PASSWORD).await).await;
    let started = Instant::now();
    let resp = app.me(&current.access).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Back: the service recovers by itself. The token whose rotation was cut is either
    // still live (rolled back) or answered by the grace window: never lost, never forked.
    proxy.set(Link::Open);
    let next = refresh_until_recovered(&app, &current.refresh).await;
    assert_eq!(
        family_generation(&database.url, &sid).await,
        token_generation(&next.refresh),
        "the token the client holds is the family's one live token"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);

    // Connections refused outright: 503 at once, and recovery again.
    proxy.set(Link::Refuse);
    let started = Instant::now();
    assert_unavailable_in_time(started, app.refresh(&next.refresh).await).await;
    proxy.set(Link::Open);
    let last = refresh_until_recovered(&app, &next.refresh).await;
    assert_eq!(
        family_generation(&database.url, &sid).await,
        token_generation(&last.refresh)
    );
    assert_eq!(app.me(&last.access).await.status(), StatusCode::OK);
}

/// The database connection is cut again and again in the middle of a stream of
/// rotations: every answer is a 200 or a 503, and afterwards every family has exactly
/// one live token, which its client (holding the last token it saw) can still use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_cut_mid_rotation_leave_every_family_whole() {
    let database = TestDatabase::create().await;
    let (upstream, _) = upstream_and_proxied_url(&database.url, 0);
    let proxy = TcpProxy::start(upstream).await;
    let (_, proxied) = upstream_and_proxied_url(&database.url, proxy.port);
    let app = std::sync::Arc::new(
        spawn_app_with(Backend::Sqlite, |s| {
            s.database_url = SecretUrl::new(proxied)
        })
        .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (app, stop) = (std::sync::Arc::clone(&app), std::sync::Arc::clone(&stop));
        let (_, first) = app.signed_in().await;
        workers.push(tokio::spawn(async move {
            let sid = segment(&first.access, 1)["sid"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut current = first.refresh;
            let mut rotated = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = app.refresh(&current).await;
                match resp.status() {
                    StatusCode::OK => {
                        current = tokens(resp).await.refresh;
                        rotated += 1;
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {}
                    other => panic!("a cut gave {other}: {}", resp.text().await.unwrap()),
                }
            }
            (sid, current, rotated)
        }));
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.set(Link::Refuse);
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.set(Link::Open);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (sid, last, rotated) = w.await.unwrap();
        total += rotated;
        // The last token seen is live, or its rotation committed unseen (the family is
        // one generation on) and the grace window hands the same successor.
        let seen = token_generation(&last);
        let stored = family_generation(&database.url, &sid).await;
        assert!(
            stored == seen || stored == seen + 1,
            "family {sid}: {stored} after {seen}"
        );
        let next = refresh_until_recovered(&app, &last).await;
        assert_eq!(
            family_generation(&database.url, &sid).await,
            token_generation(&next.refresh),
            "family {sid}"
        );
    }
    assert!(total > 20, "the rotations ran: {total}");
}
