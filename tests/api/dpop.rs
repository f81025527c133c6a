//! DPoP at the token endpoint (RFC 9449): sessions bound to the client's key, refused
//! and not consumed without a proof of it, bad proofs refused with
//! `invalid_dpop_proof`, replays refused across instances.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    DpopKey, PASSWORD, TestApp, Tokens, assert_error, assert_invalid_grant, segment, spawn_app,
    spawn_app_with, spawn_instance_like, tokens, unique_email,
};

/// The token endpoint's URL as the issuer names it (`htu`).
fn token_url(app: &TestApp) -> String {
    format!("{}/oauth/token", app.settings.issuer_url)
}

/// A token request with `proofs` as `DPoP` headers.
async fn token_request(app: &TestApp, form: &[(&str, &str)], proofs: &[&str]) -> reqwest::Response {
    app.token_with_proofs(form, proofs).await
}

async fn login(app: &TestApp, email: &str, proofs: &[&str]) -> reqwest::Response {
    app.login_with_proofs(email, proofs).await
}

async fn refresh(app: &TestApp, refresh_token: &str, proofs: &[&str]) -> reqwest::Response {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "dev"),
        ("refresh_token", refresh_token),
    ];
    token_request(app, &form, proofs).await
}

/// A fresh proof of `key` for the token endpoint, now.
fn proof(app: &TestApp, key: &DpopKey) -> String {
    key.proof("POST", &token_url(app), crate::helpers::now(app))
}

/// Tokens of a DPoP response: `token_type: DPoP`, the access token bound to `key`.
async fn bound_tokens(resp: reqwest::Response, key: &DpopKey) -> Tokens {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(segment(&access, 1)["cnf"], json!({"jkt": key.thumbprint()}));
    Tokens {
        access,
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// A registered user signed in with `key`: a session bound to it.
async fn bound_session(app: &TestApp, key: &DpopKey) -> Tokens {
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    bound_tokens(login(app, &email, &[&proof(app, key)]).await, key).await
}

scenario! {
    /// A login with a proof gets a DPoP-bound access token and a session bound to the
    /// key: every refresh with a proof of it rotates, and stays bound; a login without
    /// a proof still gets bearer tokens.
    async fn a_login_with_a_proof_binds_the_session_to_the_key(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let mut t = bound_session(&app, &key).await;
        for _ in 0..3 {
            t = bound_tokens(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, &key).await;
        }
        // Introspection says what both tokens are bound to (RFC 9449 §6.2).
        for (token, token_type) in [(&t.access, "DPoP"), (&t.refresh, "refresh_token")] {
            let answer = app.introspect(token).await;
            assert_eq!(answer["active"], true, "{answer}");
            assert_eq!(answer["token_type"], token_type, "{answer}");
            assert_eq!(answer["cnf"], json!({"jkt": key.thumbprint()}), "{answer}");
        }
        // Still bound after every rotation: the latest token without a proof is refused.
        assert_invalid_grant(refresh(&app, &t.refresh, &[]).await, "dpop_key_mismatch").await;
        let (_, bearer) = app.signed_in().await;
        assert!(segment(&bearer.access, 1).get("cnf").is_none());
        assert_eq!(app.me(&bearer.access).await.status(), StatusCode::OK);
        // A bound access token is not a bearer token (RFC 9449 §7.2).
        assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
        let metadata: Value = app
            .get("/.well-known/oauth-authorization-server")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            metadata["dpop_signing_alg_values_supported"],
            json!(["ES256", "EdDSA", "Ed25519", "RS256", "PS256"])
        );
    }
}

scenario! {
    /// A bound refresh token without a proof, or with a proof of another key, is
    /// refused and not consumed; the grace replay needs the key too. The other key is a
    /// theft signal: audited and counted.
    async fn a_bound_refresh_token_is_refused_without_its_key_and_not_consumed(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let thief = DpopKey::new();
        let t = bound_session(&app, &key).await;
        assert_invalid_grant(refresh(&app, &t.refresh, &[]).await, "dpop_key_mismatch").await;
        assert_invalid_grant(
            refresh(&app, &t.refresh, &[&proof(&app, &thief)]).await,
            "dpop_key_mismatch",
        )
        .await;
        assert_eq!(app.metric("issuer_dpop_foreign_keys_total").await, "1");
        assert_eq!(
            app.metric(r#"issuer_refresh_refused_total{reason="dpop_key_mismatch"}"#).await,
            "2"
        );
        // Nothing was consumed: the holder of the key rotates, once.
        let next = bound_tokens(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, &key).await;
        // Within the grace window, the used token again: without the key, refused...
        assert_invalid_grant(refresh(&app, &t.refresh, &[]).await, "dpop_key_mismatch").await;
        // ...with it, the same successor.
        let again = bound_tokens(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, &key).await;
        assert_eq!(again.refresh, next.refresh);

        // The audit log has the theft signal.
        let admin_email = unique_email();
        assert_eq!(app.register(&admin_email, PASSWORD).await.status(), StatusCode::CREATED);
        app.set_admin(&admin_email, true).await;
        let admin = tokens(app.login(&admin_email, PASSWORD).await).await;
        let events = app.audit_events(&admin.access).await;
        let event = events
            .iter()
            .find(|e| e["kind"] == "dpop_foreign_key")
            .unwrap_or_else(|| panic!("{events:?}"));
        let detail = event["detail"].as_str().unwrap();
        assert!(detail.contains(&thief.thumbprint()), "{detail}");
        assert!(detail.ends_with("refused"), "{detail}");
    }
}

scenario! {
    /// Every malformed, misdirected, stale or replayed proof is `invalid_dpop_proof`
    /// (400), and the session's refresh token is still good afterwards.
    async fn bad_proofs_are_refused_and_consume_nothing(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        let now = crate::helpers::now(&app);
        let url = token_url(&app);
        let claims = |changes: Value| {
            let mut c = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": url, "iat": now});
            for (k, v) in changes.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let mut private = key.jwk();
        private["d"] = json!("c2VjcmV0");
        let header_with = |k: &str, v: Value| {
            let mut h = key.header();
            h[k] = v;
            h
        };
        let replayed = proof(&app, &key);
        let used = bound_tokens(refresh(&app, &t.refresh, &[&replayed]).await, &key).await;
        // Each with the description it must get.
        let bad: Vec<(String, &str)> = vec![
            (key.signed(&header_with("alg", json!("none")), &claims(json!({}))), "alg is not one of"),
            (key.signed(&header_with("alg", json!("HS256")), &claims(json!({}))), "alg is not one of"),
            (key.signed(&header_with("typ", json!("JWT")), &claims(json!({}))), "typ must be dpop+jwt"),
            (key.signed(&header_with("jwk", private), &claims(json!({}))), "private key"),
            (key.signed(&DpopKey::new().header(), &claims(json!({}))), "signature does not verify"),
            (key.signed(&key.header(), &claims(json!({"htm": "GET"}))), "htm is not"),
            (key.signed(&key.header(), &claims(json!({"htu": "https://elsewhere.example/oauth/token"}))), "htu is not"),
            (key.signed(&key.header(), &claims(json!({"htu": format!("{url}?x=1")}))), "htu is not"),
            (key.signed(&key.header(), &claims(json!({"iat": now - 300}))), "too old"),
            (key.signed(&key.header(), &claims(json!({"iat": now + 300}))), "in the future"),
            (replayed, "used before"),
            ("not.a.proof".to_owned(), "header is not JSON"),
        ];
        for (bad_proof, want) in &bad {
            let resp = refresh(&app, &used.refresh, &[bad_proof]).await;
            let body = assert_error(resp, StatusCode::BAD_REQUEST, "invalid_dpop_proof", None).await;
            let description = body["error_description"].as_str().unwrap();
            assert!(description.contains(want), "{want}: {body}");
        }
        // Two DPoP headers, even good ones.
        let resp = refresh(&app, &used.refresh, &[&proof(&app, &key), &proof(&app, &key)]).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_dpop_proof", None).await;
        assert_eq!(app.metric("issuer_dpop_proofs_refused_total").await, (bad.len() + 1).to_string());
        // None of them consumed the token.
        bound_tokens(refresh(&app, &used.refresh, &[&proof(&app, &key)]).await, &key).await;
    }
}

scenario! {
    /// `dpop = "required"`: a token request without a proof is refused; with
    /// `dpop_foreign_key = "revoke"`, a proof of another key ends the session; with
    /// `dpop = "off"`, the header is ignored.
    async fn the_client_policies_require_revoke_or_ignore(backend) {
        use token_issuer::domain::client::{DpopPolicy, ForeignKeyPolicy};
        let app = spawn_app_with(backend, |s| {
            let dev = &mut s.clients[0];
            dev.dpop = DpopPolicy::Required;
            dev.dpop_foreign_key = ForeignKeyPolicy::Revoke;
            let other = s.clients.iter_mut().find(|c| c.id == "other").unwrap();
            other.dpop = DpopPolicy::Off;
        })
        .await;
        let email = unique_email();
        assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::CREATED);
        let resp = login(&app, &email, &[]).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_dpop_proof", None).await;
        let key = DpopKey::new();
        let t = bound_tokens(login(&app, &email, &[&proof(&app, &key)]).await, &key).await;
        assert_invalid_grant(
            refresh(&app, &t.refresh, &[&proof(&app, &DpopKey::new())]).await,
            "dpop_key_mismatch",
        )
        .await;
        assert_invalid_grant(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, "revoked").await;
        assert_eq!(app.metric(r#"issuer_revocations_total{reason="dpop_foreign_key"}"#).await, "1");

        // `other` ignores the header: bearer tokens.
        let form = [
            ("grant_type", "password"),
            ("client_id", "other"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ];
        let resp = token_request(&app, &form, &[&proof(&app, &key)]).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer", "{body}");
    }
}

/// Two instances sharing PostgreSQL and Redis: a proof used on one is refused on the
/// other (its `jti` is recorded in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proof_replayed_on_another_instance_is_refused() {
    let first = spawn_app(crate::helpers::Backend::Postgres).await;
    let second = spawn_instance_like(&first).await;
    crate::helpers::wait_for_redis(&first, "ok").await;
    crate::helpers::wait_for_redis(&second, "ok").await;
    let key = DpopKey::new();
    let t = bound_session(&first, &key).await;
    let once = proof(&first, &key);
    let next = bound_tokens(refresh(&first, &t.refresh, &[&once]).await, &key).await;
    let resp = refresh(&second, &next.refresh, &[&once]).await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_dpop_proof", None).await;
    bound_tokens(
        refresh(&second, &next.refresh, &[&proof(&second, &key)]).await,
        &key,
    )
    .await;
}

scenario! {
    /// Whoever holds a copy of a bound refresh token but not the key cannot spend the
    /// session's refresh budget: the holder of the key still refreshes.
    async fn refusals_for_the_key_leave_the_sessions_rate_limit_alone(backend) {
        use token_issuer::config::RateLimit;
        let app = spawn_app_with(backend, |s| {
            s.limits.refresh_per_family = Some(RateLimit {
                max: 2,
                window: std::time::Duration::from_secs(60),
            });
        })
        .await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        for _ in 0..5 {
            assert_invalid_grant(refresh(&app, &t.refresh, &[]).await, "dpop_key_mismatch").await;
            assert_invalid_grant(
                refresh(&app, &t.refresh, &[&proof(&app, &DpopKey::new())]).await,
                "dpop_key_mismatch",
            )
            .await;
        }
        bound_tokens(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, &key).await;
    }
}

scenario! {
    /// A bound token presented by another client is the client mismatch it always was:
    /// the session is revoked, whatever key came with it.
    async fn a_bound_token_at_another_client_revokes_the_session(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", "other"),
            ("refresh_token", t.refresh.as_str()),
        ];
        let resp = token_request(&app, &form, &[&proof(&app, &DpopKey::new())]).await;
        assert_invalid_grant(resp, "revoked").await;
        assert_invalid_grant(refresh(&app, &t.refresh, &[&proof(&app, &key)]).await, "revoked").await;
    }
}

/// `GET /v1/me` with `Authorization: <scheme> <token>` and `proofs` as `DPoP` headers.
async fn me_with(app: &TestApp, scheme: &str, token: &str, proofs: &[&str]) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url("/v1/me"))
        .header("Authorization", format!("{scheme} {token}"));
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    request.send().await.unwrap()
}

/// A proof of `key` for `method` at `path` of the issuer's URL, presenting `token`.
fn resource_proof(app: &TestApp, key: &DpopKey, method: &str, path: &str, token: &str) -> String {
    let url = format!("{}{path}", app.settings.issuer_url);
    key.proof_with_token(method, &url, crate::helpers::now(app), token)
}

/// A 401 with `code`, whose `WWW-Authenticate` starts with `challenge` and offers
/// the DPoP scheme with its algorithms.
async fn refused_at_resource(resp: reqwest::Response, code: &str, challenge: &str) -> Value {
    let header = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(header.starts_with(challenge), "{header}");
    assert!(header.contains(&format!("error=\"{code}\"")), "{header}");
    assert!(header.contains("DPoP realm=\"token-issuer\""), "{header}");
    assert!(
        header.contains("algs=\"ES256 EdDSA Ed25519 RS256 PS256\""),
        "{header}"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED, code, None).await
}

scenario! {
    /// A bound access token works at `/v1` under the DPoP scheme with a proof of its
    /// key for this request (RFC 9449 §7.1), and nowhere else: not as Bearer, not
    /// with another key's proof, not with a proof of another request or token, not
    /// twice with one proof. An unbound token is not accepted under the DPoP scheme.
    async fn protected_endpoints_take_a_bound_token_with_a_proof_of_its_key(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        let good = resource_proof(&app, &key, "GET", "/v1/me", &t.access);
        let resp = me_with(&app, "DPoP", &t.access, &[&good]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let resp = me_with(&app, "dpop", &t.access, &[&resource_proof(&app, &key, "GET", "/v1/me", &t.access)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        // Other endpoints, other methods, a path with an id.
        let sessions: Value = app
            .http
            .get(app.url("/v1/sessions"))
            .header("Authorization", format!("DPoP {}", t.access))
            .header("DPoP", resource_proof(&app, &key, "GET", "/v1/sessions", &t.access))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");

        // Replayed: refused.
        let body = refused_at_resource(me_with(&app, "DPoP", &t.access, &[&good]).await, "invalid_dpop_proof", "DPoP ").await;
        assert!(body["error_description"].as_str().unwrap().contains("used before"), "{body}");
        // As a bearer token: refused, and the challenge offers DPoP.
        refused_at_resource(me_with(&app, "Bearer", &t.access, &[]).await, "invalid_token", "Bearer ").await;
        refused_at_resource(app.me(&t.access).await, "invalid_token", "Bearer ").await;

        let (_, bearer) = app.signed_in().await;
        let other = bound_session(&app, &key).await;
        let now = crate::helpers::now(&app);
        let me_url = format!("{}/v1/me", app.settings.issuer_url);
        let with_claims = |claims: Value| key.signed(&key.header(), &claims);
        let base = |token: &str| json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": "GET", "htu": me_url, "iat": now,
            "ath": crate::helpers::ath(token),
        });
        let without_ath = {
            let mut c = base(&t.access);
            c.as_object_mut().unwrap().remove("ath");
            with_claims(c)
        };
        let mut wrong_method = base(&t.access);
        wrong_method["htm"] = json!("POST");
        let mut wrong_path = base(&t.access);
        wrong_path["htu"] = json!(format!("{}/v1/sessions", app.settings.issuer_url));
        let mut with_query = base(&t.access);
        with_query["htu"] = json!(format!("{me_url}?a=b"));
        let mut old = base(&t.access);
        old["iat"] = json!(now - 300);
        let proofs: Vec<(String, &str)> = vec![
            (without_ath, "ath is missing"),
            (with_claims(base(&other.access)), "ath is not"),
            (with_claims(wrong_method), "htm is not"),
            (with_claims(wrong_path), "htu is not"),
            (with_claims(with_query), "htu is not"),
            (with_claims(old), "too old"),
            ("garbage".to_owned(), "not a JWS"),
        ];
        for (proof, want) in &proofs {
            let body = refused_at_resource(me_with(&app, "DPoP", &t.access, &[proof]).await, "invalid_dpop_proof", "DPoP ").await;
            assert!(body["error_description"].as_str().unwrap().contains(want), "{want}: {body}");
        }
        // No proof, two proofs.
        refused_at_resource(me_with(&app, "DPoP", &t.access, &[]).await, "invalid_dpop_proof", "DPoP ").await;
        let two = [
            resource_proof(&app, &key, "GET", "/v1/me", &t.access),
            resource_proof(&app, &key, "GET", "/v1/me", &t.access),
        ];
        refused_at_resource(me_with(&app, "DPoP", &t.access, &[&two[0], &two[1]]).await, "invalid_dpop_proof", "DPoP ").await;
        // A good proof of another key: the token is not bound to it.
        let thief = DpopKey::new();
        let stolen = resource_proof(&app, &thief, "GET", "/v1/me", &t.access);
        refused_at_resource(me_with(&app, "DPoP", &t.access, &[&stolen]).await, "invalid_token", "DPoP ").await;
        // A bearer token under the DPoP scheme, even with a good proof for it.
        let unbound = resource_proof(&app, &key, "GET", "/v1/me", &bearer.access);
        refused_at_resource(me_with(&app, "DPoP", &bearer.access, &[&unbound]).await, "invalid_token", "DPoP ").await;

        // None of it touched the session: a fresh proof still works.
        let resp = me_with(&app, "DPoP", &t.access, &[&resource_proof(&app, &key, "GET", "/v1/me", &t.access)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// A proof of `key` for the token endpoint carrying `nonce`.
fn proof_with_nonce(app: &TestApp, key: &DpopKey, nonce: &str) -> String {
    let claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": "POST",
        "htu": token_url(app),
        "iat": crate::helpers::now(app),
        "nonce": nonce,
    });
    key.signed(&key.header(), &claims)
}

/// The `DPoP-Nonce` header of an answer.
fn nonce_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("dpop-nonce")
        .unwrap_or_else(|| panic!("no DPoP-Nonce: {:?}", resp.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

scenario! {
    /// `dpop_nonce = "required"` (RFC 9449 §8): a proof without the server's nonce, or
    /// with a stale or forged one, is answered `use_dpop_nonce` with a fresh nonce in
    /// `DPoP-Nonce`, and consumes nothing; the retry with it succeeds. At `/v1` the
    /// answer is a 401 with `DPoP error="use_dpop_nonce"`.
    async fn clients_that_require_nonces_get_one_and_retry(backend) {
        use token_issuer::domain::client::NoncePolicy;
        let app = spawn_app_with(backend, |s| s.clients[0].dpop_nonce = NoncePolicy::Required).await;
        let email = unique_email();
        assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::CREATED);
        let key = DpopKey::new();
        let resp = login(&app, &email, &[&proof(&app, &key)]).await;
        let nonce = nonce_of(&resp);
        let body = assert_error(resp, StatusCode::BAD_REQUEST, "use_dpop_nonce", None).await;
        assert!(body["error_description"].as_str().unwrap().contains("DPoP-Nonce"), "{body}");
        let resp = login(&app, &email, &[&proof_with_nonce(&app, &key, &nonce)]).await;
        let next_nonce = nonce_of(&resp);
        let t = bound_tokens(resp, &key).await;

        // A refresh whose nonce is missing, forged or from the past consumes nothing.
        let mut forged = nonce.clone();
        forged.replace_range(nonce.len() - 1.., if nonce.ends_with('A') { "B" } else { "A" });
        for bad in [None, Some(forged.as_str()), Some("n-1")] {
            let p = match bad {
                None => proof(&app, &key),
                Some(n) => proof_with_nonce(&app, &key, n),
            };
            let resp = refresh(&app, &t.refresh, &[&p]).await;
            assert!(!nonce_of(&resp).is_empty());
            assert_error(resp, StatusCode::BAD_REQUEST, "use_dpop_nonce", None).await;
        }
        app.advance(std::time::Duration::from_secs(125));
        let resp = refresh(&app, &t.refresh, &[&proof_with_nonce(&app, &key, &next_nonce)]).await;
        let fresh = nonce_of(&resp);
        assert_ne!(fresh, next_nonce);
        assert_error(resp, StatusCode::BAD_REQUEST, "use_dpop_nonce", None).await;
        let t = bound_tokens(refresh(&app, &t.refresh, &[&proof_with_nonce(&app, &key, &fresh)]).await, &key).await;
        assert_eq!(app.metric("issuer_dpop_nonces_asked_total").await, "5");

        // At a protected endpoint: a 401 naming the DPoP scheme, then the retry.
        let resp = me_with(&app, "DPoP", &t.access, &[&resource_proof(&app, &key, "GET", "/v1/me", &t.access)]).await;
        let nonce = nonce_of(&resp);
        refused_at_resource(resp, "use_dpop_nonce", "DPoP ").await;
        let claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
            "htu": format!("{}/v1/me", app.settings.issuer_url),
            "iat": crate::helpers::now(&app), "ath": crate::helpers::ath(&t.access), "nonce": nonce,
        });
        let resp = me_with(&app, "DPoP", &t.access, &[&key.signed(&key.header(), &claims)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(!nonce_of(&resp).is_empty());
    }
}

/// Instances that share the key directory accept each other's nonces.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_of_one_instance_is_good_at_another() {
    use token_issuer::domain::client::NoncePolicy;
    let first = spawn_app_with(crate::helpers::Backend::Postgres, |s| {
        s.clients[0].dpop_nonce = NoncePolicy::Required;
    })
    .await;
    let second = spawn_instance_like(&first).await;
    let email = unique_email();
    assert_eq!(
        first.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let key = DpopKey::new();
    let nonce = nonce_of(&login(&first, &email, &[&proof(&first, &key)]).await);
    let t = bound_tokens(
        login(&second, &email, &[&proof_with_nonce(&second, &key, &nonce)]).await,
        &key,
    )
    .await;
    assert!(!t.refresh.is_empty());
}

scenario! {
    /// A proof is recorded as used only once the request shows a refresh token of ours:
    /// requests with made-up tokens cannot fill the list of proofs (which, full,
    /// answers every DPoP request 503). The proof of such a request stays usable.
    async fn a_request_without_a_token_of_ours_records_no_proof(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        let p = proof(&app, &key);
        assert_invalid_grant(refresh(&app, "not-a-token-of-ours", &[&p]).await, "unknown").await;
        bound_tokens(refresh(&app, &t.refresh, &[&p]).await, &key).await;
    }
}

scenario! {
    /// A DPoP-bound caller without the admin role: the 403's challenge names the DPoP
    /// scheme it used (RFC 6750 §3 / RFC 9449 §7.1), not Bearer.
    async fn insufficient_scope_names_the_dpop_scheme(backend) {
        let app = spawn_app(backend).await;
        let key = DpopKey::new();
        let t = bound_session(&app, &key).await;
        let resp = app
            .http
            .get(app.url("/v1/admin/audit"))
            .header("Authorization", format!("DPoP {}", t.access))
            .header("DPoP", resource_proof(&app, &key, "GET", "/v1/admin/audit", &t.access))
            .send()
            .await
            .unwrap();
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("DPoP realm=\"token-issuer\", error=\"insufficient_scope\""), "{challenge}");
        assert_error(resp, StatusCode::FORBIDDEN, "insufficient_scope", None).await;
    }
}
