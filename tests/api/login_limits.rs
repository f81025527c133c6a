//! The per-account budget of password checks: a burst cannot outrun it, and a locked
//! account still lets in a caller that shows it is the owner.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, PASSWORD, SPA_ORIGIN, TestApp, assert_error, client_from, spawn_app_with, tokens,
    unique_email, wait_for_redis,
};

const WRONG: &str = "not the passphrase at all";

/// Sends `n` requests made by `send` at the same moment; their statuses.
async fn all_at_once<F, Fut>(n: usize, send: F) -> Vec<StatusCode>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, request) = (Arc::clone(&barrier), send());
            tokio::spawn(async move {
                barrier.wait().await;
                request.await.status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// The failed-login counter of `/metrics`.
async fn failed_logins(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("issuer_logins_failed_total "))
        .unwrap()
        .parse()
        .unwrap()
}

async fn app_with_account_limit_only(backend: Backend) -> TestApp {
    // The per-IP limit is off: every request here comes from this machine, and it is
    // the account's budget that is under test (default: 10 a minute).
    let app = spawn_app_with(backend, |s| s.limits.login_per_ip = None).await;
    if backend == Backend::Postgres {
        wait_for_redis(&app, "ok").await;
    }
    app
}

scenario! {
    async fn forty_simultaneous_wrong_passwords_check_at_most_ten(backend) {
        let app = Arc::new(app_with_account_limit_only(backend).await);
        let email = unique_email();
        assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::CREATED);
        let statuses = all_at_once(40, || {
            let (app, email) = (Arc::clone(&app), email.clone());
            async move { app.login(&email, WRONG).await }
        })
        .await;
        assert_eq!(count(&statuses, StatusCode::BAD_REQUEST), 10, "{statuses:?}");
        assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 30, "{statuses:?}");
        assert_eq!(failed_logins(&app).await, 10, "ten passwords were hashed and checked");
        // Right passwords do not use the budget up: a user who types it right is not
        // counted.
        let other = unique_email();
        app.register(&other, PASSWORD).await;
        for _ in 0..12 {
            tokens(app.login(&other, PASSWORD).await).await;
        }
    }
}

/// A browser (`dev-spa`) request from `ip`, with the CSRF header and maybe the cookie.
async fn spa_login_from(
    ip: &str,
    app: &TestApp,
    email: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut req = client_from(ip)
        .post(app.url("/oauth/token"))
        .header("origin", SPA_ORIGIN)
        .header("x-requested-with", "XMLHttpRequest")
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev-spa"),
            ("username", email),
            ("password", PASSWORD),
        ]);
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("__Host-refresh={cookie}"));
    }
    req.send().await.unwrap()
}

fn cookie_of(resp: &reqwest::Response) -> String {
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie
        .strip_prefix("__Host-refresh=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A `dev` password grant from `ip` that also shows `refresh_token` (read, never used).
async fn login_showing(
    app: &TestApp,
    ip: &str,
    email: &str,
    refresh_token: &str,
) -> reqwest::Response {
    client_from(ip)
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", PASSWORD),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap()
}

/// An attacker at 127.0.0.66 uses up the account's budget.
async fn lock(app: &TestApp, email: &str) {
    for _ in 0..10 {
        assert_eq!(
            app.login_from("127.0.0.66", email, WRONG).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    assert_error(
        app.login_from("127.0.0.66", email, PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
}

scenario! {
    async fn a_locked_account_lets_in_its_known_sources_and_live_sessions(backend) {
        let app = app_with_account_limit_only(backend).await;

        // Signed in from 127.0.0.1 before: that source gets through the lock...
        let email = unique_email();
        app.register(&email, PASSWORD).await;
        let body_session = tokens(app.login(&email, PASSWORD).await).await;
        lock(&app, &email).await;
        tokens(app.login(&email, PASSWORD).await).await;
        // ...a source that never signed in does not...
        assert_error(
            app.login_from("127.0.0.7", &email, PASSWORD).await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            None,
        )
        .await;
        // ...unless it presents a live refresh token of this user (read, not used up).
        tokens(login_showing(&app, "127.0.0.7", &email, &body_session.refresh).await).await;
        tokens(app.refresh(&body_session.refresh).await).await;
        // A session can change the password of a locked account.
        let resp = app
            .http
            .post(app.url("/v1/me/password"))
            .bearer_auth(&body_session.access)
            .json(&serde_json::json!({
                "current_password": PASSWORD,
                "new_password": "another sound passphrase",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());

        // The known source has a budget of its own, limited all the same.
        let email = unique_email();
        app.register(&email, PASSWORD).await;
        tokens(app.login(&email, PASSWORD).await).await;
        lock(&app, &email).await;
        for _ in 0..10 {
            assert_eq!(app.login(&email, WRONG).await.status(), StatusCode::BAD_REQUEST);
        }
        assert_error(
            app.login(&email, PASSWORD).await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            None,
        )
        .await;

        // A browser with its session cookie gets through from a new address; without
        // it, it does not.
        let email = unique_email();
        app.register(&email, PASSWORD).await;
        let first = spa_login_from("127.0.0.8", &app, &email, None).await;
        assert_eq!(first.status(), StatusCode::OK);
        let cookie = cookie_of(&first);
        lock(&app, &email).await;
        assert_eq!(
            spa_login_from("127.0.0.9", &app, &email, None).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let resp = spa_login_from("127.0.0.9", &app, &email, Some(&cookie)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert!(body["access_token"].is_string());
        // A refresh token that is no longer live does not count.
        let revoked = unique_email();
        app.register(&revoked, PASSWORD).await;
        let gone = tokens(app.login_from("127.0.0.10", &revoked, PASSWORD).await).await;
        let resp = app
            .post_form("/oauth/revoke", &[("client_id", "dev"), ("token", &gone.refresh)])
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        lock(&app, &revoked).await;
        let resp = login_showing(&app, "127.0.0.11", &revoked, &gone.refresh).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
