//! Per-client settings: allowed scopes, access-token lifetime, session lifetimes and
//! grace window.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    PASSWORD, TestApp, assert_error, assert_invalid_grant, segment, spawn_app_with, tokens,
};

async fn login_as(
    app: &TestApp,
    client_id: &str,
    email: &str,
    scope: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "password"),
        ("client_id", client_id),
        ("username", email),
        ("password", PASSWORD),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    app.post_form("/oauth/token", &form).await
}

async fn refresh_with_scope(app: &TestApp, token: &str, scope: &str) -> reqwest::Response {
    app.post_form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "dev"),
            ("refresh_token", token),
            ("scope", scope),
        ],
    )
    .await
}

scenario! {
    async fn scopes_are_checked_against_the_client_and_never_widened(backend) {
        let app = spawn_app_with(backend, |s| {
            s.clients[0].scopes = vec!["read".into(), "write".into()];
        })
        .await;
        let (email, _) = app.signed_in().await;
        assert_error(login_as(&app, "dev", &email, Some("read admin")).await, StatusCode::BAD_REQUEST, "invalid_scope", None).await;
        assert_error(login_as(&app, "other", &email, Some("read")).await, StatusCode::BAD_REQUEST, "invalid_scope", None).await;

        let resp = login_as(&app, "dev", &email, Some("write read read")).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["scope"], "read write", "{body}");
        let first = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(segment(body["access_token"].as_str().unwrap(), 1)["scope"], "read write");

        // Without scope: the session's scope. Narrower: allowed. Wider: refused, and
        // the token is not used up.
        let second = tokens(app.refresh(&first).await).await;
        assert_eq!(segment(&second.access, 1)["scope"], "read write");
        let resp = refresh_with_scope(&app, &second.refresh, "read").await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["scope"], "read", "{body}");
        let third = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(segment(body["access_token"].as_str().unwrap(), 1)["scope"], "read");
        assert_error(refresh_with_scope(&app, &third, "read delete").await, StatusCode::BAD_REQUEST, "invalid_scope", None).await;
        let fourth = tokens(app.refresh(&third).await).await;
        assert_eq!(segment(&fourth.access, 1)["scope"], "read write", "the session keeps its scope");

        // A session granted only "read" cannot refresh into "write".
        let resp = login_as(&app, "dev", &email, Some("read")).await;
        let narrow = resp.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_owned();
        assert_error(refresh_with_scope(&app, &narrow, "write").await, StatusCode::BAD_REQUEST, "invalid_scope", None).await;
        tokens(app.refresh(&narrow).await).await;
    }
}

scenario! {
    async fn each_client_has_its_own_lifetimes_and_grace_window(backend) {
        let app = spawn_app_with(backend, |s| {
            let other = s.clients.iter_mut().find(|c| c.id == "other").unwrap();
            other.access_lifetime = Duration::from_secs(300);
            other.policy.idle_timeout = Duration::from_secs(3600);
            other.policy.grace_period = Duration::ZERO;
        })
        .await;
        let (email, dev) = app.signed_in().await;
        let resp = login_as(&app, "other", &email, None).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["expires_in"], 300);
        let claims = segment(body["access_token"].as_str().unwrap(), 1);
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
        let other = body["refresh_token"].as_str().unwrap().to_owned();

        // No grace window for "other": an immediate second use is a reuse.
        let next = tokens(app.refresh_as("other", &other).await).await;
        assert_invalid_grant(app.refresh_as("other", &other).await, "reused").await;

        // An hour idle ends an "other" session; the "dev" session (14 days) lives on.
        let (_, fresh) = {
            let resp = login_as(&app, "other", &email, None).await;
            ((), tokens(resp).await)
        };
        app.advance(Duration::from_secs(3601));
        assert_invalid_grant(app.refresh_as("other", &fresh.refresh).await, "idle_timeout").await;
        tokens(app.refresh(&dev.refresh).await).await;
        let _ = next;
    }
}

scenario! {
    async fn a_public_client_may_identify_itself_with_basic_and_an_empty_secret(backend) {
        let app = crate::helpers::spawn_app(backend).await;
        let email = crate::helpers::unique_email();
        app.register(&email, PASSWORD).await;
        // What stock requests-oauthlib sends: `Authorization: Basic dev:` and no
        // client_id in the body.
        let basic = |id: &str, secret: &str| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
            )
        };
        let post = |authorization: String, form: Vec<(&'static str, String)>| {
            app.http
                .post(app.url("/oauth/token"))
                .header("authorization", authorization)
                .form(&form)
                .send()
        };
        let login = || {
            vec![
                ("grant_type", "password".to_owned()),
                ("username", email.clone()),
                ("password", PASSWORD.to_owned()),
            ]
        };
        let t = tokens(post(basic("dev", ""), login()).await.unwrap()).await;
        assert_eq!(segment(&t.access, 1)["client_id"], "dev");
        let next = tokens(
            post(
                basic("dev", ""),
                vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", t.refresh.clone()),
                ],
            )
            .await
            .unwrap(),
        )
        .await;
        // The same client named in the body too is fine; another is not.
        let mut both = login();
        both.push(("client_id", "dev".to_owned()));
        tokens(post(basic("dev", ""), both).await.unwrap()).await;
        let mut other = login();
        other.push(("client_id", "other".to_owned()));
        assert_error(
            post(basic("dev", ""), other).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        // A public client has no secret to present.
        let resp = post(basic("dev", "a guess"), login()).await.unwrap();
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        // Revocation takes Basic too.
        let resp = app
            .http
            .post(app.url("/oauth/revoke"))
            .header("authorization", basic("dev", ""))
            .form(&[("token", next.refresh.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        crate::helpers::assert_invalid_grant(app.refresh(&next.refresh).await, "revoked").await;
    }
}
