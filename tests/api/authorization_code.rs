//! The authorization code flow with PKCE, over HTTP: the hosted sign-in page, the
//! browser's sign-in session, codes and their exchange.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, Browser, DpopKey, PASSWORD, Pkce, SPA_ORIGIN, TestApp, assert_error,
    assert_invalid_grant, authorize_query, exchange, location, location_params, set_cookie_headers,
    spawn_app, spawn_app_with, tokens, unique_email,
};

pub const NATIVE: &str = "dev-native";
pub const NATIVE_REDIRECT: &str = "http://127.0.0.1:51004/callback";
pub const SPA_REDIRECT: &str = "http://localhost:5173/callback";

/// A registered user, and a browser on the app's origin.
pub async fn user_and_browser(app: &TestApp) -> (String, Browser) {
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    (email, Browser::new(app, &app.settings.issuer_url))
}

/// Signs in through the form and returns the code of the redirect.
pub async fn code_for(
    browser: &mut Browser,
    email: &str,
    client: &str,
    redirect: &str,
    pkce: &Pkce,
) -> String {
    let query = authorize_query(client, redirect, "st", pkce, &[]);
    let resp = browser.sign_in(&query, email, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let params = location_params(&resp);
    assert_eq!(params["state"], "st");
    params["code"].clone()
}

scenario! {
    async fn the_code_flow_signs_in_and_starts_a_session(backend) {
        let app = spawn_app(backend).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        let query = authorize_query(NATIVE, NATIVE_REDIRECT, "xyz", &pkce, &[]);

        let page = browser.get(&query).await;
        assert_eq!(page.status(), StatusCode::OK);
        let header = |name: &str| page.headers().get(name).unwrap().to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with("text/html"));
        let csp = header("content-security-policy");
        for directive in ["default-src 'none'", "frame-ancestors 'none'", "form-action 'self' http://127.0.0.1:51004", "base-uri 'none'"] {
            assert!(csp.contains(directive), "{csp} lacks {directive}");
        }
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("cache-control"), "no-store");
        let form_cookie = set_cookie_headers(&page).join("\n");
        for attr in ["__Host-form=", "; Path=/", "; Secure", "; HttpOnly", "; SameSite=Lax"] {
            assert!(form_cookie.contains(attr), "{form_cookie} lacks {attr}");
        }
        let html = page.text().await.unwrap();
        for part in ["autocomplete=\"username\"", "autocomplete=\"current-password\"", "<label for=\"username\"", "name=\"viewport\"", "name=\"csrf\""] {
            assert!(html.contains(part), "the page lacks {part}");
        }

        let resp = browser
            .submit(&html, "/oauth/authorize", &[("username", &email), ("password", PASSWORD)])
            .await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let session_cookie = set_cookie_headers(&resp).join("\n");
        for attr in ["__Host-session=", "; Path=/", "; Secure", "; HttpOnly", "; SameSite=Lax", "; Max-Age=86400"] {
            assert!(session_cookie.contains(attr), "{session_cookie} lacks {attr}");
        }
        assert!(location(&resp).starts_with("http://127.0.0.1:51004/callback?"));
        let params = location_params(&resp);
        assert_eq!(params["state"], "xyz");
        assert_eq!(params["iss"], app.settings.issuer_url);
        assert_eq!(params["code"].len(), 43);

        let tokens = tokens(exchange(&app, NATIVE, &params["code"], NATIVE_REDIRECT, &pkce.verifier).await).await;
        let me = app.me(&tokens.access).await;
        assert_eq!(me.status(), StatusCode::OK);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["email"], email);
        // A normal session: it rotates.
        let next = crate::helpers::tokens(app.refresh_as(NATIVE, &tokens.refresh).await).await;
        assert_ne!(next.refresh, tokens.refresh);
        // Listed with the sign-in session of the browser.
        let sessions: Value = app
            .http
            .get(app.url("/v1/sessions"))
            .bearer_auth(&next.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut clients: Vec<&str> = sessions.as_array().unwrap().iter().map(|s| s["client_id"].as_str().unwrap()).collect();
        clients.sort_unstable();
        assert_eq!(clients, ["dev-native", "sign-in"]);
    }
}

scenario! {
    async fn a_code_used_twice_revokes_the_session_it_started(backend) {
        let app = spawn_app(backend).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
        let first = tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
        assert_invalid_grant(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await, "reused").await;
        assert_invalid_grant(app.refresh_as(NATIVE, &first.refresh).await, "revoked").await;
        assert_eq!(app.me(&first.access).await.status(), StatusCode::UNAUTHORIZED);
    }
}

scenario! {
    async fn concurrent_exchanges_of_one_code_start_one_session_then_revoke_it(backend) {
        let app = spawn_app_with(backend, crate::helpers::patient).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
        let answers = futures::future::join_all((0..8).map(|_| exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier))).await;
        let mut issued = Vec::new();
        for resp in answers {
            if resp.status() == StatusCode::OK {
                issued.push(tokens(resp).await);
            } else {
                assert_invalid_grant(resp, "reused").await;
            }
        }
        assert_eq!(issued.len(), 1, "exactly one exchange wins");
        // The others were reuses: the one session the code started is revoked.
        assert_invalid_grant(app.refresh_as(NATIVE, &issued[0].refresh).await, "revoked").await;
    }
}

scenario! {
    async fn a_signed_in_browser_skips_the_form_until_it_signs_out(backend) {
        let app = spawn_app(backend).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;

        // Single sign-on: straight back with a code, for another client too.
        let again = browser.get(&authorize_query("dev-spa", SPA_REDIRECT, "s2", &pkce, &[])).await;
        assert_eq!(again.status(), StatusCode::FOUND);
        let params = location_params(&again);
        assert!(params.contains_key("code"));
        assert_eq!(params["state"], "s2");
        // prompt=login shows the form all the same; prompt=none answers at once.
        let login = browser.get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[("prompt", "login")])).await;
        assert_eq!(login.status(), StatusCode::OK);
        let none = browser.get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[("prompt", "none")])).await;
        assert!(location_params(&none).contains_key("code"));

        // The sign-out page ends it.
        let page = browser.get("/oauth/logout").await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let out = browser.submit(&html, "/oauth/logout", &[]).await;
        assert_eq!(out.status(), StatusCode::OK);
        assert!(set_cookie_headers(&out).join("").contains("__Host-session=; Max-Age=0"));
        let none = browser.get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s3", &pkce, &[("prompt", "none")])).await;
        let params = location_params(&none);
        assert_eq!(params["error"], "login_required");
        assert_eq!(params["state"], "s3");
        assert_eq!(params["iss"], app.settings.issuer_url);
    }
}

scenario! {
    async fn logout_everywhere_and_a_password_change_end_the_browser_session(backend) {
        let app = spawn_app(backend).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
        let t = tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
        let resp = app
            .http
            .post(app.url("/v1/logout?scope=everywhere"))
            .bearer_auth(&t.access)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let page = browser.get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[])).await;
        assert_eq!(page.status(), StatusCode::OK, "signed out: the form again");

        // A code issued before a password change starts nothing after it.
        let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
        let (_, other) = (0, crate::helpers::tokens(app.login(&email, PASSWORD).await).await);
        let changed = app
            .http
            .post(app.url("/v1/me/password"))
            .bearer_auth(&other.access)
            .json(&serde_json::json!({"current_password": PASSWORD, "new_password": "another sound passphrase"}))
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), StatusCode::OK);
        assert_invalid_grant(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await, "revoked").await;
        let page = browser.get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[("prompt", "none")])).await;
        assert_eq!(location_params(&page)["error"], "login_required");
    }
}

#[tokio::test]
async fn a_bad_exchange_consumes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    let other = Pkce::new();
    assert_invalid_grant(
        exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &other.verifier).await,
        "pkce_mismatch",
    )
    .await;
    assert_invalid_grant(
        exchange(
            &app,
            NATIVE,
            &code,
            "http://127.0.0.1:51005/callback",
            &pkce.verifier,
        )
        .await,
        "redirect_uri_mismatch",
    )
    .await;
    assert_invalid_grant(
        exchange(&app, "dev", &code, NATIVE_REDIRECT, &pkce.verifier).await,
        "unknown",
    )
    .await;
    for bad in ["short", &"a".repeat(129), &format!("{}+/", "a".repeat(43))] {
        assert_error(
            exchange(&app, NATIVE, &code, NATIVE_REDIRECT, bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
    }
    assert_invalid_grant(
        exchange(&app, NATIVE, "not-a-code", NATIVE_REDIRECT, &pkce.verifier).await,
        "unknown",
    )
    .await;
    let resp = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", NATIVE),
                ("code", &code),
                ("redirect_uri", NATIVE_REDIRECT),
            ],
        )
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
    // After every refusal the code still works, once.
    tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
}

#[tokio::test]
async fn a_code_expires_after_60_seconds() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    app.advance(Duration::from_secs(61));
    assert_invalid_grant(
        exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await,
        "expired",
    )
    .await;
}

#[tokio::test]
async fn redirect_uris_that_do_not_match_are_pages_never_redirects() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    let spa_bad = [
        "http://localhost:5173/callback/",
        "http://LOCALHOST:5173/callback",
        "http://localhost:5173/Callback",
        "http://localhost:5174/callback",
        "http://localhost:5173/callback2",
        "http://localhost:5173/callback?x=1",
        "http://user@localhost:5173/callback",
        "http://localhost:5173/callback#frag",
        "https://localhost:5173/callback",
        "javascript:alert(1)//localhost:5173/callback",
        "data:text/html,<script>alert(1)</script>",
        "https://evil.example/callback",
        "//evil.example/callback",
    ];
    let native_bad = [
        "http://127.0.0.1:51004/other",
        "http://127.0.0.1.evil.example/callback",
        "http://127.0.0.1:80@evil.example/callback",
        "http://localhost:51004/callback",
        "https://127.0.0.1:51004/callback",
        "http://127.0.0.1:51004/callback#x",
    ];
    let cases = spa_bad
        .iter()
        .map(|u| ("dev-spa", *u))
        .chain(native_bad.iter().map(|u| (NATIVE, *u)))
        .chain([
            ("nobody", SPA_REDIRECT),
            ("dev", SPA_REDIRECT),
            ("dev-service", SPA_REDIRECT),
        ]);
    for (client, uri) in cases {
        let resp = browser
            .get(&authorize_query(client, uri, "s", &pkce, &[]))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{client} {uri}");
        assert!(
            resp.headers().get("location").is_none(),
            "{client} {uri}: never redirected"
        );
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
    // No redirect_uri, or one given twice: a page too.
    let resp = browser.get(&format!("/oauth/authorize?response_type=code&client_id=dev-spa&code_challenge={}&code_challenge_method=S256", pkce.challenge)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let twice = format!(
        "{}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
        authorize_query("dev-spa", SPA_REDIRECT, "s", &pkce, &[])
    );
    let resp = browser.get(&twice).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("location").is_none());
}

#[tokio::test]
async fn a_native_client_gets_loopback_redirects_on_any_port() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    for uri in [
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:65535/callback",
        "http://127.0.0.1/callback",
        "http://[::1]:8123/callback",
    ] {
        let resp = browser
            .get(&authorize_query(NATIVE, uri, "s", &pkce, &[]))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn other_request_errors_go_back_with_state_and_iss() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    let base = |extra: &str| {
        format!(
            "/oauth/authorize?client_id=dev-spa&redirect_uri=http%3A%2F%2Flocalhost%3A5173%2Fcallback&state=s%3Cb%3E{extra}"
        )
    };
    let challenge = pkce.challenge.clone();
    let cases = [
        (
            "&response_type=code&code_challenge_method=S256".to_owned(),
            "invalid_request",
        ),
        (
            format!("&response_type=code&code_challenge={challenge}"),
            "invalid_request",
        ),
        (
            format!("&response_type=code&code_challenge={challenge}&code_challenge_method=plain"),
            "invalid_request",
        ),
        (
            "&response_type=code&code_challenge=short&code_challenge_method=S256".to_owned(),
            "invalid_request",
        ),
        (
            format!("&response_type=token&code_challenge={challenge}&code_challenge_method=S256"),
            "unsupported_response_type",
        ),
        (
            format!("&code_challenge={challenge}&code_challenge_method=S256"),
            "invalid_request",
        ),
        (
            format!(
                "&response_type=code&code_challenge={challenge}&code_challenge_method=S256&scope=admin"
            ),
            "invalid_scope",
        ),
        (
            format!(
                "&response_type=code&code_challenge={challenge}&code_challenge_method=S256&prompt=select_account"
            ),
            "invalid_request",
        ),
        (
            format!(
                "&response_type=code&code_challenge={challenge}&code_challenge_method=S256&dpop_jkt=abc"
            ),
            "invalid_request",
        ),
        (
            format!(
                "&response_type=code&response_type=code&code_challenge={challenge}&code_challenge_method=S256"
            ),
            "invalid_request",
        ),
    ];
    for (extra, error) in cases {
        let resp = browser.get(&base(&extra)).await;
        assert_eq!(resp.status(), StatusCode::FOUND, "{extra}");
        assert!(location(&resp).starts_with("http://localhost:5173/callback?"));
        let params = location_params(&resp);
        assert_eq!(params["error"], error, "{extra}");
        assert_eq!(params["state"], "s<b>");
        assert_eq!(params["iss"], app.settings.issuer_url);
        assert!(params.contains_key("error_description"));
        assert!(!params.contains_key("code"));
    }
}

#[tokio::test]
async fn state_with_markup_is_never_reflected_unescaped() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    let state = "\"><script>alert(1)</script>";
    let html = browser
        .get(&authorize_query(NATIVE, NATIVE_REDIRECT, state, &pkce, &[]))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&quot;&gt;&lt;script&gt;"), "{html}");
    let fields = crate::helpers::hidden_fields(&html);
    assert!(fields.contains(&("state".to_owned(), state.to_owned())));
}

#[tokio::test]
async fn forged_and_cross_site_posts_are_refused_before_the_password_is_checked() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let html = browser
        .get(&authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]))
        .await
        .text()
        .await
        .unwrap();
    let mut form = crate::helpers::hidden_fields(&html);
    form.extend([
        ("username".to_owned(), email.clone()),
        ("password".to_owned(), PASSWORD.to_owned()),
    ]);

    let forged: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "csrf" {
                    "A".repeat(43)
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    let resp = browser.post("/oauth/authorize", &forged).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!browser.cookies.contains_key("__Host-session"));
    assert!(resp.text().await.unwrap().contains("This page expired"));

    for headers in [
        [("origin", "https://evil.example")],
        [("sec-fetch-site", "cross-site")],
        [("origin", "null")],
    ] {
        let resp = browser.post_with("/oauth/authorize", &form, &headers).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert!(resp.headers().get("location").is_none());
        assert!(!browser.cookies.contains_key("__Host-session"));
    }
    // Without the form cookie (a post from a page another site made) the field
    // matches nothing.
    browser.cookies.clear();
    let resp = browser.post("/oauth/authorize", &form).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // No password was checked: no failed login, no login.
    let audit =
        app.audit_events_of_kind("login").await + app.audit_events_of_kind("login_failed").await;
    assert_eq!(audit, 0);
}

#[tokio::test]
async fn wrong_passwords_show_the_form_again_and_hit_the_same_limits() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.login_per_ip = Some(token_issuer::config::RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        });
    })
    .await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let query = authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]);
    for _ in 0..3 {
        let resp = browser.sign_in(&query, &email, "wrong password!!").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().get("location").is_none());
        let html = resp.text().await.unwrap();
        assert!(html.contains("Wrong e-mail address or password"), "{html}");
        assert!(html.contains("role=\"alert\""));
    }
    assert_eq!(app.audit_events_of_kind("login_failed").await, 3);
    let resp = browser.sign_in(&query, &email, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(resp.text().await.unwrap().contains("Too many attempts"));
}

#[tokio::test]
async fn a_code_bound_to_a_dpop_key_needs_a_proof_of_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let key = DpopKey::new();
    let query = authorize_query(
        NATIVE,
        NATIVE_REDIRECT,
        "s",
        &pkce,
        &[("dpop_jkt", &key.thumbprint())],
    );
    let resp = browser.sign_in(&query, &email, PASSWORD).await;
    let code = location_params(&resp)["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", NATIVE),
        ("code", code.as_str()),
        ("redirect_uri", NATIVE_REDIRECT),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let url = format!("{}/oauth/token", app.settings.issuer_url);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_invalid_grant(
        app.post_form("/oauth/token", &form).await,
        "dpop_key_mismatch",
    )
    .await;
    let other = DpopKey::new().proof("POST", &url, now);
    assert_invalid_grant(
        app.token_with_proofs(&form, &[&other]).await,
        "dpop_key_mismatch",
    )
    .await;
    let resp = app
        .token_with_proofs(&form, &[&key.proof("POST", &url, now)])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
}

#[tokio::test]
async fn a_cookie_mode_spa_gets_its_refresh_cookie_from_the_exchange() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, "dev-spa", SPA_REDIRECT, &pkce).await;
    let resp = app
        .http
        .post(app.url("/oauth/token"))
        .header("origin", SPA_ORIGIN)
        .header("x-requested-with", "fetch")
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "dev-spa"),
            ("code", code.as_str()),
            ("redirect_uri", SPA_REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookies = set_cookie_headers(&resp).join("\n");
    assert!(
        cookies.contains("__Host-refresh=") && cookies.contains("SameSite=Strict"),
        "{cookies}"
    );
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
}

const THIRD: &str = "third";
const THIRD_REDIRECT: &str = "https://third.example/cb";
const THIRD_NATIVE: &str = "third-native";

/// An app with a third-party client `third` (scopes `read`, `write`).
async fn app_with_a_third_party(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        let dev = s.clients[0].clone();
        s.clients.push(token_issuer::domain::client::Client {
            id: THIRD.into(),
            // A web app (its consent is remembered; a native app's is not).
            kind: token_issuer::domain::client::ClientKind::Spa,
            redirect_uris: vec![THIRD_REDIRECT.into()],
            first_party: false,
            scopes: vec!["read".into(), "write".into()],
            ..dev.clone()
        });
        s.clients.push(token_issuer::domain::client::Client {
            id: THIRD_NATIVE.into(),
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            first_party: false,
            ..dev
        });
    })
    .await
}

scenario! {
    async fn a_third_party_client_needs_consent_which_is_remembered_and_revocable(backend) {
        let app = app_with_a_third_party(backend).await;
        let (email, mut browser) = user_and_browser(&app).await;
        let pkce = Pkce::new();
        let read = authorize_query(THIRD, THIRD_REDIRECT, "c1", &pkce, &[("scope", "read")]);

        // Signed in, then asked; denying goes back with access_denied.
        let consent = browser.sign_in(&read, &email, PASSWORD).await;
        assert_eq!(consent.status(), StatusCode::OK);
        let csp = consent.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("form-action 'self' https://third.example"), "{csp}");
        let html = consent.text().await.unwrap();
        assert!(html.contains("<strong>third</strong>") && html.contains("<code>read</code>"), "{html}");
        let denied = browser.submit(&html, "/oauth/authorize", &[("decision", "deny")]).await;
        let params = location_params(&denied);
        assert_eq!(params["error"], "access_denied");
        assert_eq!(params["state"], "c1");
        assert_eq!(app.audit_events_of_kind("login").await, 1, "the sign-in only");

        // Asked again (nothing remembered), allowed: a code.
        let html = browser.get(&read).await.text().await.unwrap();
        assert!(html.contains("name=\"decision\""));
        let allowed = browser.submit(&html, "/oauth/authorize", &[("decision", "allow")]).await;
        assert_eq!(allowed.status(), StatusCode::SEE_OTHER);
        let code = location_params(&allowed)["code"].clone();
        let t = tokens(exchange(&app, THIRD, &code, THIRD_REDIRECT, &pkce.verifier).await).await;

        // Remembered for that scope (and fewer); a wider scope asks again, and
        // prompt=none answers consent_required.
        let again = browser.get(&read).await;
        assert_eq!(again.status(), StatusCode::FOUND);
        assert!(location_params(&again).contains_key("code"));
        let none = browser.get(&authorize_query(THIRD, THIRD_REDIRECT, "c2", &pkce, &[("scope", "read write"), ("prompt", "none")])).await;
        assert_eq!(location_params(&none)["error"], "consent_required");
        let wider = browser.get(&authorize_query(THIRD, THIRD_REDIRECT, "c3", &pkce, &[("scope", "read write")])).await;
        assert_eq!(wider.status(), StatusCode::OK);

        // Listed, and taken back: the client's session ends and the next request asks.
        let (_, mine) = (0, tokens(app.login(&email, PASSWORD).await).await);
        let listed: Value = app.http.get(app.url("/v1/me/consents")).bearer_auth(&mine.access).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed[0]["client_id"], THIRD);
        assert_eq!(listed[0]["scope"], "read");
        let resp = app.http.delete(app.url("/v1/me/consents/third")).bearer_auth(&mine.access).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_invalid_grant(app.refresh_as(THIRD, &t.refresh).await, "revoked").await;
        assert!(app.refresh_as("dev", &mine.refresh).await.status().is_success(), "other sessions go on");
        let resp = app.http.delete(app.url("/v1/me/consents/third")).bearer_auth(&mine.access).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(browser.get(&read).await.status(), StatusCode::OK, "asked again");
    }
}

#[tokio::test]
async fn the_password_grant_is_for_first_party_clients_only() {
    let app = app_with_a_third_party(Backend::Sqlite).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let resp = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "password"),
                ("client_id", THIRD),
                ("username", &email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "unauthorized_client", None).await;
    assert_eq!(
        app.audit_events_of_kind("login_failed").await,
        0,
        "no password was checked"
    );
}

#[tokio::test]
async fn a_consent_form_needs_its_csrf_field_and_a_signed_in_browser() {
    let app = app_with_a_third_party(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let read = authorize_query(THIRD, THIRD_REDIRECT, "c1", &pkce, &[("scope", "read")]);
    let html = browser
        .sign_in(&read, &email, PASSWORD)
        .await
        .text()
        .await
        .unwrap();
    let forged: Vec<(String, String)> = crate::helpers::hidden_fields(&html)
        .into_iter()
        .map(|(k, v)| {
            if k == "csrf" {
                (k, "B".repeat(43))
            } else {
                (k, v)
            }
        })
        .chain([("decision".to_owned(), "allow".to_owned())])
        .collect();
    let resp = browser.post("/oauth/authorize", &forged).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Without the session cookie, an allow shows the sign-in form.
    browser.cookies.remove("__Host-session");
    let resp = browser
        .submit(&html, "/oauth/authorize", &[("decision", "allow")])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("name=\"password\""));
    let (_, mine) = (0, tokens(app.login(&email, PASSWORD).await).await);
    let listed: Value = app
        .http
        .get(app.url("/v1/me/consents"))
        .bearer_auth(&mine.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, serde_json::json!([]), "nothing was allowed");
}

#[tokio::test]
async fn codes_of_one_sign_in_are_limited_like_its_refreshes() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.refresh_per_family = Some(token_issuer::config::RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        });
    })
    .await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    let query = authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]);
    for _ in 0..2 {
        assert!(location_params(&browser.get(&query).await).contains_key("code"));
    }
    let params = location_params(&browser.get(&query).await);
    assert_eq!(params["error"], "temporarily_unavailable");
    assert!(!params.contains_key("code"));
    // Another sign-in has a budget of its own.
    browser.cookies.remove("__Host-session");
    assert!(browser.sign_in(&query, &email, PASSWORD).await.status() == StatusCode::SEE_OTHER);
}

/// RFC 8252 §8.6: any app on the device may claim a native client's id and a loopback
/// port, so a third-party native client is asked every time.
#[tokio::test]
async fn a_third_party_native_client_is_asked_every_time() {
    let app = app_with_a_third_party(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let query = authorize_query(THIRD_NATIVE, "http://127.0.0.1:50001/cb", "n", &pkce, &[]);
    let html = browser
        .sign_in(&query, &email, PASSWORD)
        .await
        .text()
        .await
        .unwrap();
    let allowed = browser
        .submit(&html, "/oauth/authorize", &[("decision", "allow")])
        .await;
    assert!(location_params(&allowed).contains_key("code"));
    let again = browser
        .get(&authorize_query(
            THIRD_NATIVE,
            "http://127.0.0.1:61234/cb",
            "n",
            &pkce,
            &[],
        ))
        .await;
    assert_eq!(again.status(), StatusCode::OK, "asked again");
    assert!(again.text().await.unwrap().contains("name=\"decision\""));
    let none = browser
        .get(&authorize_query(
            THIRD_NATIVE,
            "http://127.0.0.1:61234/cb",
            "n",
            &pkce,
            &[("prompt", "none")],
        ))
        .await;
    assert_eq!(location_params(&none)["error"], "consent_required");
}

/// `prompt=consent` is kept across the sign-in form: a remembered consent is asked
/// again after the user signs in.
#[tokio::test]
async fn prompt_consent_is_kept_across_the_sign_in_form() {
    let app = app_with_a_third_party(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let read = authorize_query(THIRD, THIRD_REDIRECT, "c", &pkce, &[("scope", "read")]);
    let html = browser
        .sign_in(&read, &email, PASSWORD)
        .await
        .text()
        .await
        .unwrap();
    browser
        .submit(&html, "/oauth/authorize", &[("decision", "allow")])
        .await;
    browser.cookies.remove("__Host-session");
    let ask = authorize_query(
        THIRD,
        THIRD_REDIRECT,
        "c",
        &pkce,
        &[("scope", "read"), ("prompt", "consent")],
    );
    let resp = browser.sign_in(&ask, &email, PASSWORD).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the consent page, not a code"
    );
    assert!(resp.text().await.unwrap().contains("name=\"decision\""));
}

#[tokio::test]
async fn a_state_that_could_not_come_back_byte_for_byte_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let pkce = Pkce::new();
    for state in ["a\nb", "a\rb", "a\u{0}b", "caf\u{e9}"] {
        let resp = browser
            .get(&authorize_query(NATIVE, NATIVE_REDIRECT, state, &pkce, &[]))
            .await;
        let params = location_params(&resp);
        assert_eq!(params["error"], "invalid_request", "{state:?}");
        assert!(!params.contains_key("state"));
    }
}

/// Only the holder of a used code (its verifier and redirect URI) makes its reuse
/// revoke the session: not whoever saw the code in a log.
#[tokio::test]
async fn a_used_code_revokes_only_when_its_verifier_comes_with_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    let t = tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
    assert_invalid_grant(
        exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &Pkce::new().verifier).await,
        "pkce_mismatch",
    )
    .await;
    assert_invalid_grant(
        exchange(
            &app,
            NATIVE,
            &code,
            "http://127.0.0.1:1/callback",
            &pkce.verifier,
        )
        .await,
        "redirect_uri_mismatch",
    )
    .await;
    let t = tokens(app.refresh_as(NATIVE, &t.refresh).await).await;
    assert_invalid_grant(
        exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await,
        "reused",
    )
    .await;
    assert_invalid_grant(app.refresh_as(NATIVE, &t.refresh).await, "revoked").await;
}

/// Each exchange starts a session: limited per address, on a budget of its own (the
/// password grant's failures from the same address do not block it).
#[tokio::test]
async fn exchanges_are_limited_per_address_on_their_own_budget() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.code_exchange_per_ip = Some(token_issuer::config::RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        });
        s.limits.login_per_ip = Some(token_issuer::config::RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        });
    })
    .await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    // The address's login budget used up by wrong passwords: exchanges go on.
    for _ in 0..3 {
        app.login(&email, "a wrong passphrase!!").await;
    }
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
    let query = authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]);
    let code = location_params(&browser.get(&query).await)["code"].clone();
    tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
    let code = location_params(&browser.get(&query).await)["code"].clone();
    // A code of another's, or a wrong verifier, costs nothing.
    assert_invalid_grant(
        exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &Pkce::new().verifier).await,
        "pkce_mismatch",
    )
    .await;
    let resp = exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await;
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    // (The limiter's windows run on the real clock: the recovery is not waited for.)
}

/// CSP has no IPv6 literal: a redirect to [::1] is allowed by its scheme, or Chromium
/// would block the redirect that follows the form post.
#[tokio::test]
async fn an_ipv6_loopback_redirect_is_allowed_by_scheme_in_the_csp() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Browser::new(&app, &app.settings.issuer_url);
    let resp = browser
        .get(&authorize_query(
            NATIVE,
            "http://[::1]:8123/callback",
            "s",
            &Pkce::new(),
            &[],
        ))
        .await;
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("form-action 'self' http:;"), "{csp}");
    assert!(!csp.contains("[::1]"), "{csp}");
}

/// Every answer of the hosted pages has a CSP, the JSON error of a form that does not
/// parse too (as the OpenAPI document says).
#[tokio::test]
async fn every_answer_of_the_pages_has_a_csp() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/oauth/authorize", "/oauth/logout"] {
        let resp = app
            .http
            .post(app.url(path))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(
            resp.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"),
            "{path}"
        );
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
    }
}

/// A failure once the redirect URI is the client's goes back to it
/// (`temporarily_unavailable`, with `state` and `iss`), not to a page of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_failure_after_the_checks_is_sent_back_to_the_client() {
    use sqlx::Connection as _;
    let app = spawn_app(Backend::Postgres).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    let mut blocker = sqlx::PgConnection::connect(app.settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE authorization_codes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let resp = browser
        .get(&authorize_query(NATIVE, NATIVE_REDIRECT, "st8", &pkce, &[]))
        .await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let params = location_params(&resp);
    assert_eq!(params["error"], "temporarily_unavailable");
    assert_eq!(params["state"], "st8");
    assert_eq!(params["iss"], app.settings.issuer_url);
}

/// A disabled user's sign-in session ends with their other sessions: the next
/// authorization shows the form (and the form refuses them).
#[tokio::test]
async fn disabling_a_user_ends_their_browser_session() {
    let app = spawn_app(Backend::Sqlite).await;
    let (email, mut browser) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let code = code_for(&mut browser, &email, NATIVE, NATIVE_REDIRECT, &pkce).await;
    let mine = tokens(exchange(&app, NATIVE, &code, NATIVE_REDIRECT, &pkce.verifier).await).await;
    let user_id = crate::helpers::segment(&mine.access, 1)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let (admin_email, admin) = app.signed_in().await;
    app.set_admin(&admin_email, true).await;
    let resp = app
        .http
        .post(app.url(&format!("/v1/admin/users/{user_id}/disable")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let none = browser
        .get(&authorize_query(
            NATIVE,
            NATIVE_REDIRECT,
            "s",
            &pkce,
            &[("prompt", "none")],
        ))
        .await;
    assert_eq!(location_params(&none)["error"], "login_required");
    let again = browser
        .sign_in(
            &authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]),
            &email,
            PASSWORD,
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "a disabled user cannot sign in"
    );
}

/// With the password hashing saturated, the sign-in form comes back with "busy"
/// (503), and the user keeps it: never a redirect to the app with `server_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_password_hashing_shows_the_form_again() {
    let app = std::sync::Arc::new(
        spawn_app_with(Backend::Sqlite, |s| {
            s.password_hashing.concurrency = 1;
            s.password_hashing.queue = 1;
            s.limits.login_per_ip = None;
            s.limits.login_per_account = None;
        })
        .await,
    );
    let (email, _) = user_and_browser(&app).await;
    let pkce = Pkce::new();
    let query = authorize_query(NATIVE, NATIVE_REDIRECT, "s", &pkce, &[]);
    let answers = futures::future::join_all((0..12).map(|_| {
        let (app, email, query) = (app.clone(), email.clone(), query.clone());
        async move {
            let mut browser = Browser::new(&app, &app.settings.issuer_url);
            let resp = browser.sign_in(&query, &email, PASSWORD).await;
            let status = resp.status();
            let location = resp
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            (status, location, resp.text().await.unwrap())
        }
    }))
    .await;
    let mut busy = 0;
    for (status, location, body) in answers {
        match status {
            StatusCode::SEE_OTHER => {
                let location = location.unwrap();
                assert!(
                    location.contains("code=") && !location.contains("error="),
                    "{location}"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("The service is busy") && body.contains("name=\"password\""));
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "the queue of one was never full: the test did not test"
    );
}
