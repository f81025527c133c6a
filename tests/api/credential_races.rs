//! PostgreSQL at READ COMMITTED: logins racing a password change or a disable. Once the
//! change or the disable has returned, no session created with the old password, or
//! before the disable, may be live; however the statements interleave.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sqlx::Connection as _;

use crate::helpers::{Backend, PASSWORD, TestApp, patient, segment, spawn_app_with, tokens};

/// Live sessions of `user_id` other than `except`, read straight from the database.
async fn live_sessions(app: &TestApp, user_id: &str, except: Option<&str>) -> i64 {
    let mut conn = sqlx::PgConnection::connect(app.settings.database_url.expose())
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM refresh_families
         WHERE user_id = $1::uuid AND revoked_at IS NULL AND id::text <> $2",
    )
    .bind(user_id)
    .bind(except.unwrap_or(""))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n
}

/// `n` password grants with `password`, one every 4 ms: faster than the hashing
/// threads check them, so their checks go on before, during and after whatever is
/// sent among them, and some land in the middle of its transaction.
fn logins(
    app: &Arc<TestApp>,
    email: &str,
    password: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..n)
        .map(|i| {
            let (app, email, password) = (Arc::clone(app), email.to_owned(), password.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(4 * i as u64)).await;
                app.login(&email, &password).await.status()
            })
        })
        .collect()
}

async fn racing_app() -> Arc<TestApp> {
    Arc::new(
        spawn_app_with(Backend::Postgres, |s| {
            patient(s);
            s.limits.login_per_ip = None;
            s.limits.login_per_account = None;
            s.password_hashing.concurrency = 2;
        })
        .await,
    )
}

/// Sessions to revoke make the change's transaction longer: the window a login's
/// insert could slip through.
async fn with_many_sessions(app: &TestApp, email: &str, password: &str) {
    for _ in 0..40 {
        tokens(app.login(email, password).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_login_racing_a_password_change_leaves_a_session_with_the_old_password() {
    let app = racing_app().await;
    let (email, mut current) = app.signed_in().await;
    let user_id = segment(&current.access, 1)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut password = PASSWORD.to_owned();
    for round in 0..6 {
        with_many_sessions(&app, &email, &password).await;
        let racing = logins(&app, &email, &password, 48);
        tokio::time::sleep(Duration::from_millis(40 + 10 * round)).await;
        let new_password = format!("{PASSWORD} round {round}");
        let resp = app
            .http
            .post(app.url("/v1/me/password"))
            .bearer_auth(&current.access)
            .json(&serde_json::json!({
                "current_password": password,
                "new_password": new_password,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        current = tokens(resp).await;
        let fresh_sid = segment(&current.access, 1)["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            live_sessions(&app, &user_id, Some(&fresh_sid)).await,
            0,
            "round {round}: a session with the old password is live after the change returned"
        );
        for login in racing {
            let status = login.await.unwrap();
            assert!(
                matches!(status, StatusCode::OK | StatusCode::BAD_REQUEST),
                "{status}"
            );
        }
        assert_eq!(
            live_sessions(&app, &user_id, Some(&fresh_sid)).await,
            0,
            "round {round}: a login that finished after the change left a session"
        );
        password = new_password;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_login_racing_a_disable_leaves_a_session_behind() {
    let app = racing_app().await;
    let (admin_email, admin) = app.signed_in().await;
    app.set_admin(&admin_email, true).await;
    let (email, target) = app.signed_in().await;
    let user_id = segment(&target.access, 1)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_post = |path: String| {
        let app = Arc::clone(&app);
        let access = admin.access.clone();
        async move {
            let resp = app
                .http
                .post(app.url(&path))
                .bearer_auth(access)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(
                status.is_success(),
                "{status}: {}",
                resp.text().await.unwrap()
            );
        }
    };
    for round in 0..6 {
        with_many_sessions(&app, &email, PASSWORD).await;
        let racing = logins(&app, &email, PASSWORD, 48);
        tokio::time::sleep(Duration::from_millis(40 + 10 * round)).await;
        admin_post(format!("/v1/admin/users/{user_id}/disable")).await;
        assert_eq!(
            live_sessions(&app, &user_id, None).await,
            0,
            "round {round}: a session is live after the disable returned"
        );
        for login in racing {
            login.await.unwrap();
        }
        assert_eq!(
            live_sessions(&app, &user_id, None).await,
            0,
            "round {round}: a login that finished after the disable left a session"
        );
        admin_post(format!("/v1/admin/users/{user_id}/enable")).await;
    }
}

/// Backends of this test's database waiting on a lock.
async fn waiting_on_locks(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n
}

/// A code exchange that commits while a logout everywhere waits for it: the session
/// it started is revoked too. The exchange is held in its transaction (after it has
/// checked the sign-in session and inserted its family) by a lock on the audit table;
/// the logout comes while it waits. Before the logout locked the user's row first,
/// its UPDATE did not see the new family, which stayed live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_exchange_racing_a_logout_everywhere_leaves_no_live_session() {
    use crate::helpers::{Browser, Pkce, authorize_query, exchange, location_params};
    let app = Arc::new(spawn_app_with(Backend::Postgres, patient).await);
    let email = crate::helpers::unique_email();
    app.register(&email, PASSWORD).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    let redirect = "http://127.0.0.1:4711/callback";
    let query = authorize_query("dev-native", redirect, "s", &pkce, &[]);
    let code = location_params(&browser.sign_in(&query, &email, PASSWORD).await)["code"].clone();
    let other = tokens(app.login(&email, PASSWORD).await).await;

    let url = app.settings.database_url.expose().to_owned();
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let exchanging = {
        let (app, code, verifier) = (Arc::clone(&app), code.clone(), pkce.verifier.clone());
        tokio::spawn(async move { exchange(&app, "dev-native", &code, redirect, &verifier).await })
    };
    crate::helpers::eventually("the exchange waits", || async {
        waiting_on_locks(&url).await >= 1
    })
    .await;
    let logging_out = {
        let (app, access) = (Arc::clone(&app), other.access.clone());
        tokio::spawn(async move {
            app.http
                .post(app.url("/v1/logout?scope=everywhere"))
                .bearer_auth(access)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    crate::helpers::eventually("the logout waits", || async {
        waiting_on_locks(&url).await >= 2
    })
    .await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    let started = tokens(exchanging.await.unwrap()).await;
    assert_eq!(logging_out.await.unwrap(), StatusCode::NO_CONTENT);
    crate::helpers::assert_invalid_grant(
        app.refresh_as("dev-native", &started.refresh).await,
        "revoked",
    )
    .await;
}
