//! RFC 7662 introspection for the confidential `resource-server` client, and the
//! discovery documents that announce it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    SERVICE_CLIENT, SERVICE_SECRET, TestApp, assert_error, segment, spawn_app, tokens,
};

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn introspect(app: &TestApp, token: &str) -> Value {
    let resp = app
        .http
        .post(app.url("/oauth/introspect"))
        .header("authorization", basic(SERVICE_CLIENT, SERVICE_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.unwrap()
}

fn assert_inactive(answer: &Value) {
    assert_eq!(
        answer,
        &serde_json::json!({"active": false}),
        "nothing but active: false"
    );
}

scenario! {
    async fn introspection_answers_for_live_tokens_and_inactive_for_the_rest(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let claims = segment(&t.access, 1);

        let access = introspect(&app, &t.access).await;
        assert_eq!(access["active"], true);
        assert_eq!(access["token_type"], "access_token");
        for claim in ["sub", "sid", "client_id", "iss", "exp", "iat", "nbf", "jti"] {
            assert_eq!(access[claim], claims[claim], "{claim}");
        }
        assert_eq!(access["aud"], serde_json::json!([claims["aud"]]));

        let refresh = introspect(&app, &t.refresh).await;
        assert_eq!(refresh["active"], true);
        assert_eq!(refresh["token_type"], "refresh_token");
        assert_eq!(refresh["sid"], claims["sid"]);
        assert_eq!(refresh["sub"], claims["sub"]);
        assert_eq!(refresh["client_id"], "dev");
        assert!(refresh["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

        // A used refresh token is inactive; its successor is active.
        let next = tokens(app.refresh(&t.refresh).await).await;
        assert_inactive(&introspect(&app, &t.refresh).await);
        assert_eq!(introspect(&app, &next.refresh).await["active"], true);

        // Forged, unknown, malformed: inactive, nothing said about why.
        let mut forged = next.access.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert_inactive(&introspect(&app, &forged).await);
        assert_inactive(&introspect(&app, "no-such-refresh-token").await);
        assert_inactive(&introspect(&app, "a.b.c").await);

        // Revoked: inactive at once, both kinds.
        let resp = app
            .post_form("/oauth/revoke", &[("client_id", "dev"), ("token", &next.refresh)])
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_inactive(&introspect(&app, &next.access).await);
        assert_inactive(&introspect(&app, &next.refresh).await);

        // Expired access token of a live session: inactive.
        let (_, other) = app.signed_in().await;
        app.advance(Duration::from_secs(11 * 60));
        assert_inactive(&introspect(&app, &other.access).await);
        assert_eq!(introspect(&app, &other.refresh).await["active"], true);
    }
}

scenario! {
    async fn only_an_authenticated_service_client_may_introspect(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let post = |auth: Option<String>, form: Vec<(&'static str, String)>| {
            let app = &app;
            async move {
                let mut req = app.http.post(app.url("/oauth/introspect")).form(&form);
                if let Some(auth) = auth {
                    req = req.header("authorization", auth);
                }
                req.send().await.unwrap()
            }
        };
        let token = ("token", t.access.clone());
        for (auth, form) in [
            (None, vec![token.clone()]),
            (Some(basic(SERVICE_CLIENT, "wrong")), vec![token.clone()]),
            (Some(basic("dev", "anything")), vec![token.clone()]),
            (Some(basic("nobody", SERVICE_SECRET)), vec![token.clone()]),
            (Some("Bearer x".to_owned()), vec![token.clone()]),
            (None, vec![token.clone(), ("client_id", SERVICE_CLIENT.into())]),
        ] {
            let resp = post(auth, form).await;
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Basic realm=\"token-issuer\""
            );
            let body = assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
            assert!(body.get("active").is_none(), "{body}");
        }
        // Credentials in the body work; in both places is a 400.
        let resp = post(
            None,
            vec![
                token.clone(),
                ("client_id", SERVICE_CLIENT.into()),
                ("client_secret", SERVICE_SECRET.into()),
            ],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
        let resp = post(
            Some(basic(SERVICE_CLIENT, SERVICE_SECRET)),
            vec![token.clone(), ("client_secret", SERVICE_SECRET.into())],
        )
        .await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        // A service client cannot log users in.
        let resp = app
            .post_form(
                "/oauth/token",
                &[
                    ("grant_type", "password"),
                    ("client_id", SERVICE_CLIENT),
                    ("username", "a@example.com"),
                    ("password", "whatever it is here"),
                ],
            )
            .await;
        assert_error(resp, StatusCode::BAD_REQUEST, "unauthorized_client", None).await;
    }
}

scenario! {
    async fn both_discovery_documents_announce_introspection(backend) {
        let app = spawn_app(backend).await;
        let get = |path: &'static str| {
            let app = &app;
            async move {
                app.get(path).await
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let oauth = get("/.well-known/oauth-authorization-server").await;
        let openid = get("/.well-known/openid-configuration").await;
        assert_eq!(oauth, openid);
        let issuer = oauth["issuer"].as_str().unwrap();
        assert_eq!(oauth["introspection_endpoint"], format!("{issuer}/oauth/introspect"));
        assert_eq!(
            oauth["introspection_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post"])
        );
        assert_eq!(
            oauth["access_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );
    }
}

scenario! {
    async fn introspection_uses_the_clock_leeway_of_our_own_endpoints(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        // Ten seconds past `exp`, within the 30 s leeway: our endpoints accept it, and
        // introspection says so too (a verifier relying on it would otherwise call the
        // session revoked).
        app.advance(Duration::from_secs(10 * 60 + 10));
        assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
        assert_eq!(introspect(&app, &t.access).await["active"], true);
        // Past the leeway: refused by both.
        app.advance(Duration::from_secs(30));
        assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
        assert_inactive(&introspect(&app, &t.access).await);
    }
}

/// `client_id` introspects with HTTP Basic and `secret`.
async fn introspect_as(app: &TestApp, client_id: &str, secret: &str, token: &str) -> Value {
    let resp = app
        .http
        .post(app.url("/oauth/introspect"))
        .header("authorization", basic(client_id, secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

scenario! {
    async fn a_service_learns_only_about_tokens_meant_for_it(backend) {
        use token_issuer::domain::client::{Client, ClientKind};
        const SECRET: &str = "billing-secret-0123456789abcdefghijklmnopqrstuvwxyz";
        let app = crate::helpers::spawn_app_with(backend, |s| {
            let service = s.clients.iter().find(|c| c.id == SERVICE_CLIENT).unwrap().clone();
            let dev = s.clients[0].clone();
            s.clients.push(Client {
                id: "billing".into(),
                secret_hash: Some(token_issuer::crypto::client_secret::hash_of(SECRET)),
                introspection_audiences: Vec::new(),
                ..service.clone()
            });
            s.clients.push(Client {
                id: "auditor".into(),
                secret_hash: Some(token_issuer::crypto::client_secret::hash_of(SECRET)),
                introspection_audiences: vec!["*".into()],
                ..service
            });
            // An app whose tokens are meant for billing.
            s.clients.push(Client {
                id: "billing-app".into(),
                kind: ClientKind::Mobile,
                audiences: vec!["billing".into()],
                ..dev
            });
        })
        .await;
        let (email, t) = app.signed_in().await;
        // Tokens for the issuer's audience: not billing's business.
        assert_inactive(&introspect_as(&app, "billing", SECRET, &t.access).await);
        assert_inactive(&introspect_as(&app, "billing", SECRET, &t.refresh).await);
        assert_eq!(introspect(&app, &t.access).await["active"], true);
        assert_eq!(introspect_as(&app, "auditor", SECRET, &t.refresh).await["active"], true);
        // Tokens whose `aud` names billing.
        let resp = app
            .post_form(
                "/oauth/token",
                &[
                    ("grant_type", "password"),
                    ("client_id", "billing-app"),
                    ("username", &email),
                    ("password", crate::helpers::PASSWORD),
                ],
            )
            .await;
        let b = tokens(resp).await;
        assert_eq!(introspect_as(&app, "billing", SECRET, &b.access).await["active"], true);
        assert_eq!(introspect_as(&app, "billing", SECRET, &b.refresh).await["active"], true);
        assert_inactive(&introspect(&app, &b.access).await);
        assert_eq!(introspect_as(&app, "auditor", SECRET, &b.access).await["active"], true);
    }
}
