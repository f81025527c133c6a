//! The session list, ending sessions, logout scopes and password change.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TestApp, Tokens, assert_error, assert_invalid_grant, segment, spawn_app,
    spawn_app_with, tokens,
};

const NEW_PASSWORD: &str = "another sound passphrase";

async fn login_with_agent(app: &TestApp, email: &str, agent: &str) -> Tokens {
    let resp = app
        .http
        .post(app.url("/oauth/token"))
        .header("user-agent", agent)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    tokens(resp).await
}

pub(crate) async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let resp = app
        .http
        .get(app.url("/v1/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json::<Vec<Value>>().await.unwrap()
}

async fn logout(app: &TestApp, access: &str, scope: Option<&str>) -> reqwest::Response {
    let url = match scope {
        Some(scope) => app.url(&format!("/v1/logout?scope={scope}")),
        None => app.url("/v1/logout"),
    };
    app.http.post(url).bearer_auth(access).send().await.unwrap()
}

fn sid(t: &Tokens) -> String {
    segment(&t.access, 1)["sid"].as_str().unwrap().to_owned()
}

/// Three sessions of one user, with distinct user agents.
async fn three_sessions(app: &TestApp) -> (String, [Tokens; 3]) {
    let (email, first) = app.signed_in().await;
    let second = login_with_agent(app, &email, "phone/1.0").await;
    let third = login_with_agent(app, &email, "laptop/2.0").await;
    (email, [first, second, third])
}

async fn assert_dead(app: &TestApp, t: &Tokens) {
    assert_error(
        app.me(&t.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        None,
    )
    .await;
    assert_invalid_grant(app.refresh(&t.refresh).await, "revoked").await;
}

scenario! {
    async fn my_sessions_list_the_live_ones_and_mark_the_current(backend) {
        let app = spawn_app(backend).await;
        let (_, [_a, b, c]) = three_sessions(&app).await;
        // b refreshes later from a new user agent: the list shows the last one.
        app.advance(std::time::Duration::from_secs(5));
        let b = app
            .http
            .post(app.url("/oauth/token"))
            .header("user-agent", "phone/1.1")
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "dev"),
                ("refresh_token", b.refresh.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let b = tokens(b).await;
        let list = sessions(&app, &c.access).await;
        assert_eq!(list.len(), 3, "{list:?}");
        let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0]["id"], sid(&c));
        let of_b = list.iter().find(|s| s["id"] == sid(&b)).unwrap();
        assert_eq!(of_b["user_agent"], "phone/1.1");
        assert_eq!(of_b["last_ip"], "127.0.0.1");
        assert_eq!(of_b["client_id"], "dev");
        assert!(of_b["created_at"].is_string() && of_b["last_used_at"].is_string());
        // Most recently used first: b just refreshed.
        assert_eq!(list[0]["id"], sid(&b));
        // Another user sees only their own.
        let (_, other) = app.signed_in().await;
        let theirs = sessions(&app, &other.access).await;
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0]["id"], sid(&other));
    }
}

scenario! {
    async fn ending_a_session_kills_its_tokens_and_only_mine_can_be_ended(backend) {
        let app = spawn_app(backend).await;
        let (_, [a, b, _c]) = three_sessions(&app).await;
        let (_, stranger) = app.signed_in().await;
        let end = |access: String, id: String| {
            let app = &app;
            async move {
                app.http
                    .delete(app.url(&format!("/v1/sessions/{id}")))
                    .bearer_auth(access)
                    .send()
                    .await
                    .unwrap()
            }
        };
        // Another user's session, an unknown one: 404, nothing ended.
        assert_error(end(a.access.clone(), sid(&stranger)).await, StatusCode::NOT_FOUND, "not_found", None).await;
        assert_error(end(a.access.clone(), uuid::Uuid::new_v4().to_string()).await, StatusCode::NOT_FOUND, "not_found", None).await;
        assert_eq!(app.me(&stranger.access).await.status(), StatusCode::OK);
        // Mine: 204, and b is dead at once.
        let resp = end(a.access.clone(), sid(&b)).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_dead(&app, &b).await;
        assert_eq!(sessions(&app, &a.access).await.len(), 2);
        // Twice: it already ended.
        assert_error(end(a.access.clone(), sid(&b)).await, StatusCode::NOT_FOUND, "not_found", None).await;
        // A malformed id is a 400, not a 500.
        let resp = end(a.access.clone(), "not-a-uuid".into()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}

scenario! {
    async fn logout_scopes_end_this_others_or_everything(backend) {
        let app = spawn_app(backend).await;
        let (_, [a, b, c]) = three_sessions(&app).await;
        // others: b and c end, a lives on.
        assert_eq!(logout(&app, &a.access, Some("others")).await.status(), StatusCode::NO_CONTENT);
        assert_dead(&app, &b).await;
        assert_dead(&app, &c).await;
        assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
        let a = tokens(app.refresh(&a.refresh).await).await;
        // this (the default): only the caller's.
        let (email, d) = app.signed_in().await;
        let e = login_with_agent(&app, &email, "tablet").await;
        assert_eq!(logout(&app, &d.access, None).await.status(), StatusCode::NO_CONTENT);
        assert_dead(&app, &d).await;
        assert_eq!(app.me(&e.access).await.status(), StatusCode::OK);
        // everywhere: all of them, the caller's too.
        let f = login_with_agent(&app, &email, "watch").await;
        assert_eq!(logout(&app, &e.access, Some("everywhere")).await.status(), StatusCode::NO_CONTENT);
        assert_dead(&app, &e).await;
        assert_dead(&app, &f).await;
        // An unknown scope is a 400; a's user was never touched by d's user's logouts.
        assert_eq!(logout(&app, &a.access, Some("all")).await.status(), StatusCode::BAD_REQUEST);
        assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
    }
}

scenario! {
    async fn a_password_change_ends_every_session_and_starts_a_fresh_one(backend) {
        let app = spawn_app(backend).await;
        let (email, [a, b, _c]) = three_sessions(&app).await;
        let change = |access: String, current: &'static str, new: &'static str| {
            let app = &app;
            async move {
                app.http
                    .post(app.url("/v1/me/password"))
                    .bearer_auth(access)
                    .json(&json!({"current_password": current, "new_password": new}))
                    .send()
                    .await
                    .unwrap()
            }
        };
        // A wrong current password or a weak new one changes nothing.
        assert_error(change(a.access.clone(), "not the password!", NEW_PASSWORD).await, StatusCode::BAD_REQUEST, "wrong_password", None).await;
        assert_error(change(a.access.clone(), PASSWORD, "short").await, StatusCode::BAD_REQUEST, "weak_password", None).await;
        assert_eq!(app.me(&b.access).await.status(), StatusCode::OK);

        let resp = change(a.access.clone(), PASSWORD, NEW_PASSWORD).await;
        let fresh = tokens(resp).await;
        assert_ne!(sid(&fresh), sid(&a), "a new session for this device");
        // Every old session is dead at once, this one's included.
        assert_dead(&app, &a).await;
        assert_dead(&app, &b).await;
        assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);
        let list = sessions(&app, &fresh.access).await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["id"], sid(&fresh));
        tokens(app.refresh(&fresh.refresh).await).await;
        // The old password is gone, the new one works.
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::BAD_REQUEST);
        tokens(app.login(&email, NEW_PASSWORD).await).await;
        // Another user is untouched.
        let (_, other) = app.signed_in().await;
        assert_eq!(app.me(&other.access).await.status(), StatusCode::OK);
    }
}

scenario! {
    async fn two_password_changes_at_once_let_exactly_one_win(backend) {
        let app = std::sync::Arc::new(spawn_app(backend).await);
        let (email, a) = app.signed_in().await;
        let b = login_with_agent(&app, &email, "second device").await;
        let changes: Vec<_> = [(a.access.clone(), "first new passphrase!"), (b.access.clone(), "second new passphrase!")]
            .into_iter()
            .map(|(access, new)| {
                let app = std::sync::Arc::clone(&app);
                tokio::spawn(async move {
                    app.http
                        .post(app.url("/v1/me/password"))
                        .bearer_auth(access)
                        .json(&json!({"current_password": PASSWORD, "new_password": new}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for c in changes {
            statuses.push(c.await.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == StatusCode::OK).count(),
            1,
            "{statuses:?}"
        );
        assert!(statuses.iter().all(|s| [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED].contains(s)), "{statuses:?}");
        // Exactly one new password works.
        let works = |p: &'static str| {
            let app = std::sync::Arc::clone(&app);
            let email = email.clone();
            async move { app.login(&email, p).await.status() == StatusCode::OK }
        };
        assert!(works("first new passphrase!").await ^ works("second new passphrase!").await);
    }
}

scenario! {
    async fn a_session_that_ended_by_idling_cannot_be_ended_again(backend) {
        let app = spawn_app_with(backend, |s| {
            s.clients[0].policy.idle_timeout = std::time::Duration::from_secs(3600);
            s.clients[0].policy.absolute_lifetime = std::time::Duration::from_secs(86_400);
        })
        .await;
        let (email, old) = app.signed_in().await;
        app.advance(std::time::Duration::from_secs(3000));
        let fresh = login_with_agent(&app, &email, "later").await;
        app.advance(std::time::Duration::from_secs(700));
        // `old` idled out; `fresh` (used 700 s ago) is live, refreshes, and asks.
        let fresh = tokens(app.refresh(&fresh.refresh).await).await;
        assert_eq!(sessions(&app, &fresh.access).await.len(), 1);
        let resp = app
            .http
            .delete(app.url(&format!("/v1/sessions/{}", sid(&old))))
            .bearer_auth(&fresh.access)
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
}

scenario! {
    async fn logout_reads_its_scope_from_the_body_too_and_refuses_a_body_it_does_not_understand(backend) {
        let app = spawn_app(backend).await;
        let (email, a) = app.signed_in().await;
        let b = tokens(app.login(&email, PASSWORD).await).await;
        let post = |access: &str| app.http.post(app.url("/v1/logout")).bearer_auth(access.to_owned());
        // Bodies that say something else than a scope, or disagree with the query: 400,
        // and nothing is ended.
        for resp in [
            post(&a.access).json(&serde_json::json!({"scope": "sideways"})).send().await.unwrap(),
            post(&a.access).json(&serde_json::json!({"scop": "others"})).send().await.unwrap(),
            post(&a.access).header("content-type", "text/plain").body("others").send().await.unwrap(),
            app.http
                .post(app.url("/v1/logout?scope=this"))
                .bearer_auth(&a.access)
                .json(&serde_json::json!({"scope": "others"}))
                .send()
                .await
                .unwrap(),
        ] {
            assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        }
        assert_eq!(sessions(&app, &a.access).await.len(), 2);
        // `{"scope": "others"}` ends the others, not this one.
        let resp = post(&a.access).json(&serde_json::json!({"scope": "others"})).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
        assert_eq!(app.me(&b.access).await.status(), StatusCode::UNAUTHORIZED);
        // A form body works too; an empty body is the default (this session).
        let c = tokens(app.login(&email, PASSWORD).await).await;
        let resp = post(&c.access).form(&[("scope", "this")]).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&c.access).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
        let resp = post(&a.access).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&a.access).await.status(), StatusCode::UNAUTHORIZED);
    }
}
