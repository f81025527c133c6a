//! A database that stalls past `database_timeout` answers 503, and a 503 never hides a
//! rotation: the client that was told to retry can retry however late, without its
//! retry being taken for a reuse.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sqlx::Connection as _;

use crate::helpers::{
    Backend, PASSWORD, TestApp, assert_error, segment, spawn_app_with, tokens, unique_email,
};

/// After a 503, the token the client holds still works, however late it comes back:
/// more than the grace window later here.
async fn late_retry_succeeds(app: &TestApp, token: &str) {
    app.advance(app.settings.tokens.refresh_grace_period + Duration::from_secs(1));
    let retried = tokens(app.refresh(token).await).await;
    assert_eq!(app.me(&retried.access).await.status(), StatusCode::OK);
    // The session lives on: its new token rotates.
    tokens(app.refresh(&retried.refresh).await).await;
}

/// Another connection holds SQLite's write lock for longer than `database_timeout` but
/// shorter than the writer's busy timeout: the queued rotation could commit after its
/// caller was answered 503. It must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_answered_503_behind_a_held_sqlite_write_lock_does_not_happen() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.database_timeout = Duration::from_secs(1);
    })
    .await;
    let (_, first) = app.signed_in().await;

    let mut holder = sqlx::SqliteConnection::connect(app.settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = Instant::now();
    let resp = app.refresh(&first.refresh).await;
    assert_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        None,
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(2500));
    // Held past the caller's deadline, released well before the busy timeout (5 s): the
    // writer gets the lock and finds the caller gone.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    // Let the writer run what it queued.
    tokio::time::sleep(Duration::from_millis(300)).await;

    late_retry_succeeds(&app, &first.refresh).await;
}

/// The same on PostgreSQL. Another transaction holds the families' rows; sixteen
/// refreshes of other sessions take every pooled connection and wait on them, so the
/// refresh under test gets a connection only late in its time, and its statement is
/// still waiting on its family's row when its caller's time is up. The row is released
/// after that: the statement may commit then, so its caller must not have been told 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_stuck_behind_a_postgres_row_lock_is_answered_truthfully() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.database_timeout = Duration::from_secs(2);
    })
    .await;
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let mut sessions = Vec::new();
    for _ in 0..17 {
        sessions.push(tokens(app.login(&email, PASSWORD).await).await);
    }
    let sids: Vec<uuid::Uuid> = sessions
        .iter()
        .map(|t| {
            segment(&t.access, 1)["sid"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();

    let mut holder = sqlx::PgConnection::connect(app.settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT id FROM refresh_families WHERE id = ANY($1) FOR UPDATE")
        .bind(&sids)
        .fetch_all(&mut holder)
        .await
        .unwrap();

    let started = Instant::now();
    let app = std::sync::Arc::new(app);
    let blockers: Vec<_> = sessions[1..]
        .iter()
        .map(|t| {
            let (app, token) = (std::sync::Arc::clone(&app), t.refresh.clone());
            tokio::spawn(async move { app.refresh(&token).await.status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let target = {
        let (app, token) = (std::sync::Arc::clone(&app), sessions[0].refresh.clone());
        tokio::spawn(async move { app.refresh(&token).await })
    };
    // The target got its connection once the blockers' statements timed out (2 s), and
    // its own caller's time ended at 3 s.
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(started.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    for blocker in blockers {
        let status = blocker.await.unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a blocker timed out"
        );
    }
    let resp = target.await.unwrap();
    match resp.status() {
        // Its statement committed once the row was free, and it was waited for.
        StatusCode::OK => {
            let next = tokens(resp).await;
            late_retry_succeeds(&app, &next.refresh).await;
        }
        // Nothing happened: the token it holds is live.
        StatusCode::SERVICE_UNAVAILABLE => late_retry_succeeds(&app, &sessions[0].refresh).await,
        other => panic!(
            "the stuck refresh answered {other}: {}",
            resp.text().await.unwrap()
        ),
    }
    // The blockers' tokens are live too: their statements were cancelled whole.
    for t in &sessions[1..] {
        tokens(app.refresh(&t.refresh).await).await;
    }
}
