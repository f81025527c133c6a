use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{
    PASSWORD, SPA_ORIGIN, TestApp, assert_error, assert_invalid_grant, set_cookie_headers,
    spawn_app, tokens, unique_email,
};

/// A browser-like request from the SPA origin with the CSRF header and a cookie.
async fn spa_post(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    cookie: Option<&str>,
    origin: Option<&str>,
    csrf: bool,
) -> Response {
    let mut req = app.http.post(app.url(path)).form(form);
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    if csrf {
        req = req.header("x-requested-with", "XMLHttpRequest");
    }
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("__Host-refresh={cookie}"));
    }
    req.send().await.unwrap()
}

fn refresh_cookie(resp: &Response) -> String {
    let cookies = set_cookie_headers(resp);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    for attr in ["; HttpOnly", "; Secure", "; SameSite=Strict", "; Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "__Host- cookies have no Domain"
    );
    let value = cookie
        .strip_prefix("__Host-refresh=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert!(value.len() >= 43);
    value.to_owned()
}

async fn spa_login(app: &TestApp) -> (String, String) {
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let resp = spa_post(
        app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("client_id", "dev-spa"),
            ("username", &email),
            ("password", PASSWORD),
        ],
        None,
        Some(SPA_ORIGIN),
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], SPA_ORIGIN);
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    let cookie = refresh_cookie(&resp);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "never in the body for cookie mode: {body}"
    );
    (body["access_token"].as_str().unwrap().to_owned(), cookie)
}

fn refresh_form() -> [(&'static str, &'static str); 2] {
    [("grant_type", "refresh_token"), ("client_id", "dev-spa")]
}

scenario! {
    async fn cookie_mode_login_and_refresh_use_only_the_cookie(backend) {
        let app = spawn_app(backend).await;
        let (access, cookie) = spa_login(&app).await;
        assert_eq!(app.me(&access).await.status(), StatusCode::OK);
        let resp = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some(SPA_ORIGIN),
            true,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let next = refresh_cookie(&resp);
        assert_ne!(next, cookie);
        let body: Value = resp.json().await.unwrap();
        assert!(body.get("refresh_token").is_none());

        // The token in the body is refused for a cookie-mode client.
        let mut form = refresh_form().to_vec();
        form.push(("refresh_token", &next));
        let resp = spa_post(&app, "/oauth/token", &form, None, Some(SPA_ORIGIN), true).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
    }
}

scenario! {
    async fn a_request_failing_csrf_is_refused_without_consuming_the_token(backend) {
        let app = spawn_app(backend).await;
        let (_, cookie) = spa_login(&app).await;

        let no_header = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some(SPA_ORIGIN),
            false,
        )
        .await;
        assert_error(
            no_header,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("csrf"),
        )
        .await;
        let no_origin = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            None,
            true,
        )
        .await;
        assert_error(
            no_origin,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("csrf"),
        )
        .await;
        let evil = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some("http://evil.example"),
            true,
        )
        .await;
        assert_error(evil, StatusCode::FORBIDDEN, "origin_not_allowed", None).await;

        // Past the grace window: had any of those consumed the token, this would be a reuse.
        app.advance(Duration::from_secs(11));
        let resp = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some(SPA_ORIGIN),
            true,
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().await.unwrap()
        );
    }
}

scenario! {
    async fn cors_preflight_allows_only_the_configured_origin(backend) {
        let app = spawn_app(backend).await;
        let preflight = |origin: &'static str| {
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/oauth/token"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, x-requested-with",
                )
                .send()
        };
        let ok = preflight(SPA_ORIGIN).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["access-control-allow-origin"], SPA_ORIGIN);
        assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
        let refused = preflight("http://localhost:5174").await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
}

scenario! {
    async fn cookie_mode_logout_revokes_and_clears_the_cookie(backend) {
        let app = spawn_app(backend).await;
        let (access, cookie) = spa_login(&app).await;
        let resp = spa_post(
            &app,
            "/oauth/revoke",
            &[("client_id", "dev-spa")],
            Some(&cookie),
            Some(SPA_ORIGIN),
            true,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let cleared = set_cookie_headers(&resp);
        assert_eq!(cleared.len(), 1);
        assert!(
            cleared[0].starts_with("__Host-refresh=;") && cleared[0].contains("Max-Age=0"),
            "{cleared:?}"
        );
        assert!(cleared[0].contains("Secure") && cleared[0].contains("Path=/"));

        let resp = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some(SPA_ORIGIN),
            true,
        )
        .await;
        assert_invalid_grant(resp, "revoked").await;
        assert_eq!(app.me(&access).await.status(), StatusCode::UNAUTHORIZED);

        // Logout also needs the CSRF defence.
        let (_, cookie) = spa_login(&app).await;
        let resp = spa_post(
            &app,
            "/oauth/revoke",
            &[("client_id", "dev-spa")],
            Some(&cookie),
            Some(SPA_ORIGIN),
            false,
        )
        .await;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("csrf"),
        )
        .await;
        let resp = spa_post(
            &app,
            "/oauth/token",
            &refresh_form(),
            Some(&cookie),
            Some(SPA_ORIGIN),
            true,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

scenario! {
    async fn cookie_mode_v1_logout_and_password_change_handle_the_cookie(backend) {
        let app = spawn_app(backend).await;
        let (access, cookie) = spa_login(&app).await;
        // A password change hands the new session's refresh token in the cookie only.
        let resp = app
            .http
            .post(app.url("/v1/me/password"))
            .bearer_auth(&access)
            .json(&serde_json::json!({
                "current_password": PASSWORD,
                "new_password": "another sound passphrase",
            }))
            .send()
            .await
            .unwrap();
        let fresh_cookie = refresh_cookie(&resp);
        assert_ne!(fresh_cookie, cookie);
        let body: Value = resp.json().await.unwrap();
        assert!(body.get("refresh_token").is_none(), "{body}");
        let access = body["access_token"].as_str().unwrap().to_owned();
        // Logging out this session clears the cookie; the cookie's token is dead.
        let resp = app
            .http
            .post(app.url("/v1/logout"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let cleared = set_cookie_headers(&resp);
        assert_eq!(cleared.len(), 1, "{cleared:?}");
        assert!(cleared[0].starts_with("__Host-refresh=;") && cleared[0].contains("Max-Age=0"));
        let resp = spa_post(&app, "/oauth/token", &refresh_form(), Some(&fresh_cookie), Some(SPA_ORIGIN), true).await;
        assert_invalid_grant(resp, "revoked").await;
    }
}

scenario! {
    async fn a_body_mode_token_in_the_cookie_is_not_read_nor_consumed(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        // The `dev` client's token, sent where only a cookie-mode client's would be.
        for origin in [None, Some(SPA_ORIGIN)] {
            let resp = spa_post(
                &app,
                "/oauth/token",
                &[("grant_type", "refresh_token"), ("client_id", "dev")],
                Some(&t.refresh),
                origin,
                true,
            )
            .await;
            assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        }
        // Past the grace window: had either consumed the token, this would be a reuse.
        app.advance(Duration::from_secs(11));
        let next = tokens(app.refresh(&t.refresh).await).await;
        // Under the cookie-mode client's id, in the cookie: another client's token,
        // which burns its family.
        let resp = spa_post(&app, "/oauth/token", &refresh_form(), Some(&next.refresh), Some(SPA_ORIGIN), true).await;
        assert_invalid_grant(resp, "revoked").await;
        assert_invalid_grant(app.refresh(&next.refresh).await, "revoked").await;
    }
}

scenario! {
    async fn ending_ones_own_session_from_the_list_clears_the_cookie(backend) {
        let app = spawn_app(backend).await;
        let (access, cookie) = spa_login(&app).await;
        let sid = crate::helpers::segment(&access, 1)["sid"].as_str().unwrap().to_owned();
        let end = |id: String| {
            let (app, access) = (&app, access.clone());
            async move {
                app.http
                    .delete(app.url(&format!("/v1/sessions/{id}")))
                    .bearer_auth(access)
                    .header("origin", SPA_ORIGIN)
                    .send()
                    .await
                    .unwrap()
            }
        };
        // Another session of the same user (a body-mode device): the cookie stays.
        let other = {
            let me: Value = app.http.get(app.url("/v1/me")).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
            let t = tokens(app.login(me["email"].as_str().unwrap(), PASSWORD).await).await;
            crate::helpers::segment(&t.access, 1)["sid"].as_str().unwrap().to_owned()
        };
        let resp = end(other).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(set_cookie_headers(&resp).is_empty(), "another session's end leaves the cookie");

        // Its own session: the cookie is cleared, as by logout.
        let resp = end(sid).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let cleared = set_cookie_headers(&resp);
        assert_eq!(cleared.len(), 1, "{cleared:?}");
        assert!(cleared[0].starts_with("__Host-refresh=;") && cleared[0].contains("Max-Age=0"), "{cleared:?}");
        let resp = spa_post(&app, "/oauth/token", &refresh_form(), Some(&cookie), Some(SPA_ORIGIN), true).await;
        assert_invalid_grant(resp, "revoked").await;
    }
}
