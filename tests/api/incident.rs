//! Incident response over HTTP: `revoke-all` through the admin API (every client, one
//! client, before an instant; on a second instance too), and its bad input.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TestApp, Tokens, assert_error, assert_invalid_grant, spawn_app, spawn_instance_like,
    tokens,
};

/// A signed-in admin (granted as the CLI does).
async fn admin(app: &TestApp) -> (String, Tokens) {
    let (email, t) = app.signed_in().await;
    app.set_admin(&email, true).await;
    (email, t)
}

async fn revoke_all(app: &TestApp, access: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/admin/sessions/revoke-all"))
        .bearer_auth(access)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A password grant of `client`.
async fn login_as(app: &TestApp, client: &str, email: &str) -> Tokens {
    tokens(
        app.post_form(
            "/oauth/token",
            &[
                ("grant_type", "password"),
                ("client_id", client),
                ("username", email),
                ("password", PASSWORD),
            ],
        )
        .await,
    )
    .await
}

scenario! {
    async fn revoke_all_ends_every_session_and_refuses_every_earlier_access_token(backend) {
        let app = spawn_app(backend).await;
        let (admin_email, admin_tokens) = admin(&app).await;
        let (email, user) = app.signed_in().await;
        let other = login_as(&app, "other", &email).await;
        for token in [&user.refresh, &user.access] {
            assert_eq!(app.introspect(token).await["active"], true);
        }
        let resp = revoke_all(&app, &admin_tokens.access, json!({"reason": "database leaked"})).await;
        let status = resp.status();
        let epoch: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{epoch}");
        assert_eq!(epoch["reason"], "database leaked");
        assert!(epoch.get("client_id").is_none(), "{epoch}");

        // Introspection agrees at once (before any refresh attempt), for the refresh
        // and the access token.
        for token in [&user.refresh, &user.access] {
            assert_eq!(app.introspect(token).await, json!({"active": false}));
        }
        // Every session, the admin's own too, of every client.
        assert_invalid_grant(app.refresh(&user.refresh).await, "revoked").await;
        assert_invalid_grant(app.refresh_as("other", &other.refresh).await, "revoked").await;
        assert_invalid_grant(app.refresh(&admin_tokens.refresh).await, "revoked").await;
        for access in [&user.access, &other.access, &admin_tokens.access] {
            assert_eq!(app.me(access).await.status(), StatusCode::UNAUTHORIZED);
        }
        // Refused again and again: nothing was consumed into a live state.
        assert_invalid_grant(app.refresh(&user.refresh).await, "revoked").await;

        // The epoch begins at the next whole second: sign-ins after it work.
        app.advance(Duration::from_secs(1));
        let fresh = tokens(app.login(&email, PASSWORD).await).await;
        assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);
        let fresh = tokens(app.refresh(&fresh.refresh).await).await;
        assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);

        // The audit log and the metrics say so.
        let admin_again = tokens(app.login(&admin_email, PASSWORD).await).await;
        let events = app.audit_events(&admin_again.access).await;
        let event = events
            .iter()
            .find(|e| e["kind"] == "sessions_revoked_all")
            .unwrap_or_else(|| panic!("{events:?}"));
        assert!(event["detail"].as_str().unwrap().starts_with("all clients: "), "{event}");
        assert!(event["detail"].as_str().unwrap().ends_with("reason: database leaked"), "{event}");
        assert!(event["actor_id"].is_string(), "{event}");
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(metrics.contains("issuer_sessions_revoked_all_total 1"), "{metrics}");
    }
}

scenario! {
    async fn revoke_all_of_one_client_or_before_an_instant_revokes_exactly_that(backend) {
        let app = spawn_app(backend).await;
        let (_, admin_tokens) = admin(&app).await;
        let (email, early_dev) = app.signed_in().await;
        let early_other = login_as(&app, "other", &email).await;
        app.advance(Duration::from_secs(10));
        let late_dev = tokens(app.login(&email, PASSWORD).await).await;
        let admin_tokens = tokens(app.refresh(&admin_tokens.refresh).await).await;

        // Before an instant between the two sign-ins, of the `dev` client only.
        let between = crate::helpers::now(&app) - 5;
        let before = time::OffsetDateTime::from_unix_timestamp(between)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let resp = revoke_all(
            &app,
            &admin_tokens.access,
            json!({"client_id": "dev", "before": before, "reason": "a dev build leaked tokens"}),
        )
        .await;
        let status = resp.status();
        let epoch: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{epoch}");
        assert_eq!(epoch["client_id"], "dev");

        assert_invalid_grant(app.refresh(&early_dev.refresh).await, "revoked").await;
        assert_eq!(app.me(&early_dev.access).await.status(), StatusCode::UNAUTHORIZED);
        // Created after the instant, or of another client: untouched.
        assert_eq!(app.me(&late_dev.access).await.status(), StatusCode::OK);
        let late_dev = tokens(app.refresh(&late_dev.refresh).await).await;
        assert_eq!(app.me(&early_other.access).await.status(), StatusCode::OK);
        tokens(app.refresh_as("other", &early_other.refresh).await).await;
        // The admin's session (of `dev`) was refreshed after the instant... but created
        // before it: covered, its access token issued after the instant too.
        assert_eq!(app.me(&admin_tokens.access).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.introspect(&admin_tokens.access).await, json!({"active": false}));
        assert_invalid_grant(app.refresh(&admin_tokens.refresh).await, "revoked").await;

        // An epoch only moves forward: an earlier instant changes nothing.
        let (_, admin2) = admin(&app).await;
        let resp = revoke_all(
            &app,
            &admin2.access,
            json!({"client_id": "dev", "before": "2020-01-01T00:00:00Z", "reason": "late"}),
        )
        .await;
        let epoch: Value = resp.json().await.unwrap();
        assert_eq!(epoch["reason"], "a dev build leaked tokens", "{epoch}");
        let late_dev = tokens(app.refresh(&late_dev.refresh).await).await;

        // Ending the user's sessions counts the live ones only: the epoch ended
        // `early_dev` already.
        let user_id = crate::helpers::segment(&late_dev.access, 1)["sub"].as_str().unwrap().to_owned();
        let ended: Value = app
            .http
            .delete(app.url(&format!("/v1/admin/users/{user_id}/sessions")))
            .bearer_auth(&admin2.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ended["revoked"], 2, "late_dev and early_other: {ended}");
    }
}

scenario! {
    async fn revoke_all_refuses_bad_input_and_needs_the_admin_role(backend) {
        let app = spawn_app(backend).await;
        let (_, admin_tokens) = admin(&app).await;
        let (_, user) = app.signed_in().await;
        let future = (time::OffsetDateTime::from_unix_timestamp(crate::helpers::now(&app)).unwrap()
            + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
        for body in [
            json!({"reason": ""}),
            json!({"reason": "   "}),
            json!({"reason": "x".repeat(201)}),
            json!({"reason": "line\nbreak"}),
            json!({"reason": "r", "client_id": "no-such-client"}),
            json!({"reason": "r", "before": future}),
            json!({"reason": "r", "before": "yesterday"}),
            json!({}),
        ] {
            let resp = revoke_all(&app, &admin_tokens.access, body.clone()).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        }
        let resp = revoke_all(&app, &user.access, json!({"reason": "not an admin"})).await;
        assert_error(resp, StatusCode::FORBIDDEN, "insufficient_scope", None).await;
        // Nothing was revoked.
        tokens(app.refresh(&user.refresh).await).await;
        tokens(app.refresh(&admin_tokens.refresh).await).await;
    }
}

/// Two instances sharing the database and Redis: a `revoke-all` on one is in force on
/// the other at its very next request, refresh tokens (the database) and access tokens
/// (Redis), even where the second instance had just found the session live and cached
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_all_on_one_instance_holds_on_another_at_once() {
    let first = spawn_app(crate::helpers::Backend::Postgres).await;
    let second = spawn_instance_like(&first).await;
    let (_, admin_tokens) = admin(&first).await;
    let (_, user) = second.signed_in().await;
    let (_, kept) = second.signed_in().await;
    // Both on Redis, subscribed to its announcements (the session cache is on only
    // then), and the session cached as live on the second instance.
    crate::helpers::wait_for_redis(&first, "ok").await;
    crate::helpers::wait_for_redis(&second, "ok").await;
    crate::helpers::wait_for_subscribers(&first.settings.redis_key_prefix, 2).await;
    assert_eq!(second.me(&user.access).await.status(), StatusCode::OK);
    assert_eq!(second.me(&user.access).await.status(), StatusCode::OK);
    // An instant after the sign-ins, given explicitly: the command answers at once.
    first.advance(Duration::from_secs(10));
    second.advance(Duration::from_secs(10));
    let at = crate::helpers::now(&first).min(crate::helpers::now(&second));
    let before = time::OffsetDateTime::from_unix_timestamp(at)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // A session started before the instant whose access token was issued at it (its
    // `iat` alone does not refuse it), cached as live on the second instance.
    let kept = tokens(second.refresh(&kept.refresh).await).await;
    assert!(
        crate::helpers::segment(&kept.access, 1)["iat"]
            .as_i64()
            .unwrap()
            >= at
    );
    assert_eq!(second.me(&kept.access).await.status(), StatusCode::OK);
    assert_eq!(second.me(&kept.access).await.status(), StatusCode::OK);
    let admin_tokens = tokens(first.refresh(&admin_tokens.refresh).await).await;
    let resp = revoke_all(
        &first,
        &admin_tokens.access,
        json!({"reason": "incident", "before": before}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let epoch: Value = resp.json().await.unwrap();
    assert_eq!(
        second.me(&user.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        second.me(&kept.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_invalid_grant(second.refresh(&user.refresh).await, "revoked").await;
    assert_invalid_grant(second.refresh(&kept.refresh).await, "revoked").await;
    // Neither a refused refresh nor a logout of a session the epoch covers puts it on
    // the deny-list: after a `revoke-all` of millions of sessions, that would be
    // millions of writes (clients often log out after an `invalid_grant`).
    let logout = second
        .post_form(
            "/oauth/revoke",
            &[("token", user.refresh.as_str()), ("client_id", "dev")],
        )
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    let redis_url = crate::helpers::test_redis_url().await;
    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for t in [&user, &kept] {
        let sid = crate::helpers::segment(&t.access, 1)["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let listed: bool = redis::cmd("EXISTS")
            .arg(format!("{}deny:{sid}", first.settings.redis_key_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!listed, "{sid} on the deny-list");
    }
    // Each instance's metrics show the epoch it enforces: how an operator checks
    // that every instance took it in.
    let not_before = time::OffsetDateTime::parse(
        epoch["not_before"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    for app in [&first, &second] {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let line = format!("issuer_revocation_epoch_seconds{{client_id=\"*\"}} {not_before}");
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

scenario! {
    /// The sessions an epoch covers are deleted by the sweep a day after the epoch was
    /// set, like every ended session; the others stay.
    async fn the_sweep_deletes_the_sessions_an_epoch_covers_a_day_later(backend) {
        let app = spawn_app(backend).await;
        let (_, admin_tokens) = admin(&app).await;
        let (email, _) = app.signed_in().await;
        login_as(&app, "other", &email).await;
        let resp = revoke_all(&app, &admin_tokens.access, json!({"client_id": "dev", "reason": "r"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        app.advance(Duration::from_secs(3600));
        assert_eq!(app.issuer.sweep().await.unwrap(), 0, "kept for a day");
        app.advance(Duration::from_secs(86_400));
        let other = login_as(&app, "other", &email).await;
        // The admin's and the user's `dev` sessions; not the `other` ones.
        assert_eq!(app.issuer.sweep().await.unwrap(), 2);
        tokens(app.refresh_as("other", &other.refresh).await).await;
    }
}

scenario! {
    /// With the default instant (the next second), a commit that ends after that
    /// instant (a slow database) is written again with a later one: a session started
    /// between the first instant and the commit is covered too.
    async fn an_epoch_committed_after_its_instant_is_written_again_with_a_later_one(backend) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use token_issuer::service::incident::{RevokeAll, commit};
        let app = spawn_app(backend).await;
        let store = token_issuer::startup::open_store(&app.settings).await.unwrap();
        let start = time::OffsetDateTime::from_unix_timestamp(crate::helpers::now(&app)).unwrap();
        // The instant is planned at `start`; the clock reads 5 s later from then on,
        // as if the write had taken that long.
        let readings = AtomicUsize::new(0);
        let now = || {
            if readings.fetch_add(1, Ordering::SeqCst) == 0 {
                start
            } else {
                start + time::Duration::seconds(5)
            }
        };
        let request = RevokeAll { client_id: None, before: None, reason: "slow".into() };
        let stored = commit(store.as_ref(), request, |_| true, "test", None, now).await.unwrap();
        assert_eq!(stored.not_before.unix_timestamp(), start.unix_timestamp() + 6);
        store.close().await;
        // The later instant is the one in force.
        app.issuer.watch_epochs_once().await;
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let line = format!(
            "issuer_revocation_epoch_seconds{{client_id=\"*\"}} {}",
            start.unix_timestamp() + 6
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// After an emergency roll (on disk, by the CLI or another instance), an instance
/// that has not reloaded yet accepts the new key's tokens and serves the new key in
/// its JWKS at once: it re-reads the ring on an unknown `kid` and before a JWKS answer,
/// rather than refusing until its next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_emergency_roll_every_instance_knows_the_new_key_at_once() {
    use aws_lc_rs::rsa::KeySize;
    use token_issuer::crypto::keyring;
    let first = spawn_app(crate::helpers::Backend::Sqlite).await;
    let second = spawn_instance_like(&first).await;
    let (_, t) = first.signed_in().await;
    let compromised = crate::helpers::segment(&t.access, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let roll = keyring::roll_compromised(
        &first.keys_dir(),
        &compromised,
        crate::helpers::now(&first),
        KeySize::Rsa2048,
    )
    .unwrap();
    first.issuer.refresh_keys().await.unwrap();
    let (_, fresh) = first.signed_in().await;
    assert_eq!(
        crate::helpers::segment(&fresh.access, 0)["kid"],
        roll.active.as_str()
    );
    assert_eq!(second.me(&fresh.access).await.status(), StatusCode::OK);
    let kids = second.jwks_kids().await;
    assert!(kids.contains(&roll.active), "{kids:?}");
    assert!(!kids.contains(&compromised), "{kids:?}");
    assert_eq!(
        second.me(&t.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
