//! The client credentials grant (RFC 6749 §4.4) for `service` clients: a token of the
//! client's own, no refresh token, no session; refused where a user is needed, answered
//! by introspection and accepted by the verifier; bad secrets refused and audited.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    SERVICE_CLIENT, SERVICE_SECRET, TestApp, assert_error, segment, spawn_app_with,
};

const ORDERS: &str = "https://orders.example";
const BILLING: &str = "https://billing.example";

/// An app whose service client may call two APIs with two scopes, and introspect
/// anything.
async fn app_with_service(backend: crate::helpers::Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        let service = s
            .clients
            .iter_mut()
            .find(|c| c.id == SERVICE_CLIENT)
            .unwrap();
        service.audiences = vec![ORDERS.into(), BILLING.into()];
        service.scopes = vec!["orders:read".into(), "billing:read".into()];
        service.introspection_audiences = vec!["*".into()];
    })
    .await
}

/// A client-credentials request with `form` (besides the grant type), authenticated
/// with HTTP Basic when `basic` is given (else the form carries the client).
async fn grant(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    if let Some((id, secret)) = basic {
        return app.client_credentials(id, secret, form).await;
    }
    let mut body = vec![("grant_type", "client_credentials")];
    body.extend_from_slice(form);
    app.post_form("/oauth/token", &body).await
}

/// A signed-in admin's tokens (granted as the CLI does).
async fn signed_in_admin(app: &TestApp) -> crate::helpers::Tokens {
    let (email, t) = app.signed_in().await;
    app.set_admin(&email, true).await;
    t
}

async fn granted(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

scenario! {
    /// With client_secret_basic and client_secret_post: an access token whose `sub`
    /// is the client, without `sid` and without a refresh token, for the client's
    /// audiences and scopes, narrowed by `resource` / `audience` and `scope`.
    async fn a_service_client_gets_a_token_of_its_own(backend) {
        let app = app_with_service(backend).await;
        let body = granted(grant(&app, &[], Some((SERVICE_CLIENT, SERVICE_SECRET))).await).await;
        assert_eq!(body["token_type"], "Bearer");
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert_eq!(body["scope"], "billing:read orders:read");
        let lifetime = body["expires_in"].as_u64().unwrap();
        assert!((300..=900).contains(&lifetime), "{body}");
        let claims = segment(body["access_token"].as_str().unwrap(), 1);
        assert_eq!(claims["sub"], SERVICE_CLIENT);
        assert_eq!(claims["client_id"], SERVICE_CLIENT);
        assert!(claims.get("sid").is_none(), "{claims}");
        assert_eq!(claims["aud"], json!([ORDERS, BILLING]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), lifetime as i64);

        // client_secret_post, narrowed to one audience and one scope.
        let body = granted(grant(&app, &[
            ("client_id", SERVICE_CLIENT),
            ("client_secret", SERVICE_SECRET),
            ("resource", ORDERS),
            ("scope", "orders:read"),
        ], None).await).await;
        let claims = segment(body["access_token"].as_str().unwrap(), 1);
        assert_eq!(claims["aud"], ORDERS);
        assert_eq!(claims["scope"], "orders:read");
        let body = granted(grant(&app, &[("audience", BILLING)], Some((SERVICE_CLIENT, SERVICE_SECRET))).await).await;
        assert_eq!(segment(body["access_token"].as_str().unwrap(), 1)["aud"], BILLING);

        // The metadata says so.
        let meta: Value = app.get("/.well-known/oauth-authorization-server").await.json().await.unwrap();
        let grants = meta["grant_types_supported"].as_array().unwrap();
        assert!(grants.contains(&json!("client_credentials")), "{meta}");
    }
}

scenario! {
    /// Not a user's token: `/v1` refuses it; introspection answers it active (with its
    /// client as `sub`, no `sid`), until a revocation epoch of its client covers it.
    async fn the_token_is_introspected_but_never_a_user(backend) {
        let app = app_with_service(backend).await;
        let body = granted(grant(&app, &[], Some((SERVICE_CLIENT, SERVICE_SECRET))).await).await;
        let access = body["access_token"].as_str().unwrap();
        assert_error(app.me(access).await, StatusCode::UNAUTHORIZED, "invalid_token", None).await;
        let answer = app.introspect(access).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["sub"], SERVICE_CLIENT, "{answer}");
        assert_eq!(answer["client_id"], SERVICE_CLIENT, "{answer}");
        assert!(answer.get("sid").is_none(), "{answer}");
        // RFC 7009 §2.2.1: nothing to revoke, and it says so.
        let resp = app
            .http
            .post(app.url("/oauth/revoke"))
            .basic_auth(SERVICE_CLIENT, Some(SERVICE_SECRET))
            .form(&[("token", access)])
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "unsupported_token_type", None).await;
        assert_eq!(app.introspect(access).await["active"], true);
        // Revoked with every token of the client.
        app.advance(std::time::Duration::from_secs(1));
        let admin = signed_in_admin(&app).await;
        let resp = app
            .http
            .post(app.url("/v1/admin/sessions/revoke-all"))
            .bearer_auth(&admin.access)
            .json(&json!({"client_id": SERVICE_CLIENT, "reason": "test"}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.text().await);
        app.advance(std::time::Duration::from_secs(1));
        assert_eq!(app.introspect(access).await["active"], false);
    }
}

scenario! {
    /// Wrong secrets, both ways at once, a public client, an audience or scope the
    /// client does not have: refused with their codes, and a failed authentication is
    /// audited.
    async fn bad_client_credentials_are_refused(backend) {
        let app = app_with_service(backend).await;
        let resp = grant(&app, &[], Some((SERVICE_CLIENT, "not-the-secret"))).await;
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        let resp = grant(&app, &[("client_id", SERVICE_CLIENT), ("client_secret", "nope")], None).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        let resp = grant(&app, &[("client_id", SERVICE_CLIENT)], None).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        let resp = grant(&app, &[("client_secret", SERVICE_SECRET)], Some((SERVICE_CLIENT, SERVICE_SECRET))).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        let resp = grant(&app, &[("client_id", "dev")], None).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "unauthorized_client", None).await;
        let basic = Some((SERVICE_CLIENT, SERVICE_SECRET));
        for (form, code) in [
            (vec![("resource", "https://elsewhere.example")], "invalid_target"),
            (vec![("resource", ORDERS), ("audience", BILLING)], "invalid_target"),
            (vec![("scope", "orders:write")], "invalid_scope"),
        ] {
            assert_error(grant(&app, &form, basic).await, StatusCode::BAD_REQUEST, code, None).await;
        }
        let admin = signed_in_admin(&app).await;
        let failures: Vec<Value> = app
            .audit_events(&admin.access)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "client_auth_failed")
            .collect();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures.iter().all(|e| e["client_id"] == SERVICE_CLIENT), "{failures:?}");
    }
}

scenario! {
    /// `rate_limit_client_credentials`: an authenticated client past its budget gets
    /// 429; wrong secrets do not use the budget up.
    async fn the_grant_is_limited_per_client(backend) {
        use token_issuer::config::RateLimit;
        let app = spawn_app_with(backend, |s| {
            s.limits.client_credentials = Some(RateLimit {
                max: 2,
                window: std::time::Duration::from_secs(60),
            });
        })
        .await;
        for _ in 0..5 {
            let resp = grant(&app, &[], Some((SERVICE_CLIENT, "wrong"))).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        let basic = Some((SERVICE_CLIENT, SERVICE_SECRET));
        granted(grant(&app, &[], basic).await).await;
        granted(grant(&app, &[], basic).await).await;
        let resp = grant(&app, &[], basic).await;
        assert!(resp.headers().contains_key("retry-after"));
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    }
}

/// The built-in `dev-service` client: its secret is made once in the key directory
/// and shared by every instance that shares the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dev_service_secret_is_made_once_and_shared() {
    let first = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let path = first.settings.keys_dir.join("dev-service.secret");
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    let second = crate::helpers::spawn_instance_like(&first).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), secret);
    for app in [&first, &second] {
        granted(grant(app, &[], Some(("dev-service", &secret))).await).await;
        let resp = grant(app, &[], Some(("dev-service", "a guess"))).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

scenario! {
    /// A service client must be configured for the grant: one of an earlier
    /// configuration (introspection only) gets no token; failures past the address's
    /// limit are answered 429 and stop adding audit rows.
    async fn the_grant_is_opt_in_and_failures_are_limited_per_address(backend) {
        use token_issuer::config::RateLimit;
        let app = spawn_app_with(backend, |s| {
            let service = s.clients.iter_mut().find(|c| c.id == SERVICE_CLIENT).unwrap();
            service.client_credentials = false;
            s.limits.login_per_ip = Some(RateLimit {
                max: 3,
                window: std::time::Duration::from_secs(60),
            });
        })
        .await;
        // The count is in Redis once its link is up; before, in this process: the
        // failures below must all land in one place.
        if backend == crate::helpers::Backend::Postgres {
            crate::helpers::wait_for_redis(&app, "ok").await;
        }
        let resp = grant(&app, &[], Some((SERVICE_CLIENT, SERVICE_SECRET))).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "unauthorized_client", None).await;
        let secret = std::fs::read_to_string(app.settings.keys_dir.join("dev-service.secret")).unwrap();
        for _ in 0..3 {
            let resp = grant(&app, &[], Some(("dev-service", "a guess"))).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        let resp = grant(&app, &[], Some(("dev-service", "a guess"))).await;
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
        assert_eq!(app.metric("issuer_client_auth_failures_total").await, "4");
        // The right secret is not held up by the failures.
        granted(grant(&app, &[], Some(("dev-service", secret.trim()))).await).await;
        // Three audit rows, not four: read through a store of our own (this address
        // is past its login limit, so no admin signs in over HTTP).
        let store = token_issuer::startup::open_store(&app.settings).await.unwrap();
        let failures = store
            .audit_events(None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind.code() == "client_auth_failed")
            .count();
        store.close().await;
        assert_eq!(failures, 3);
    }
}

/// The service client `signer`: client credentials for `ORDERS`, no secret; the caller
/// gives it its keys (`assertion_keys` or `assertion_jwks_uri`).
fn signer_client(s: &token_issuer::config::Settings) -> token_issuer::domain::client::Client {
    let mut signer = s
        .clients
        .iter()
        .find(|c| c.id == SERVICE_CLIENT)
        .unwrap()
        .clone();
    signer.id = "signer".into();
    signer.secret_hash = None;
    signer.audiences = vec![ORDERS.into()];
    signer.client_credentials = true;
    signer
}

/// An app with a service client `signer` that authenticates with `private_key_jwt`
/// (RFC 7523) under `key`, whose `kid` is `k1`.
async fn app_with_signer(
    backend: crate::helpers::Backend,
    key: &crate::helpers::DpopKey,
) -> TestApp {
    let mut jwk = key.jwk();
    jwk["kid"] = json!("k1");
    let keys = vec![jwk.as_object().unwrap().clone()];
    spawn_app_with(backend, move |s| {
        let mut signer = signer_client(s);
        signer.assertion_keys = keys;
        s.clients.push(signer);
    })
    .await
}

/// A grant of `signer` with `assertion`.
async fn with_assertion(app: &TestApp, assertion: &str) -> reqwest::Response {
    grant(
        app,
        &[
            ("client_id", "signer"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

scenario! {
    /// `private_key_jwt`: an assertion signed by the client's key, for the token
    /// endpoint or the issuer, short-lived, used once; anything else is invalid_client
    /// and audited, and a secret beside an assertion is invalid_request.
    async fn a_service_client_authenticates_with_a_signed_assertion(backend) {
        let key = crate::helpers::DpopKey::new();
        let app = app_with_signer(backend, &key).await;
        let now = crate::helpers::now(&app);
        let token_endpoint = format!("{}/oauth/token", app.settings.issuer_url);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let claims = |changes: Value| {
            let mut c = json!({
                "iss": "signer", "sub": "signer", "aud": token_endpoint,
                "exp": now + 60, "iat": now, "jti": uuid::Uuid::new_v4().to_string(),
            });
            for (k, v) in changes.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let good = key.signed(&header, &claims(json!({})));
        let body = granted(with_assertion(&app, &good).await).await;
        let token = segment(body["access_token"].as_str().unwrap(), 1);
        assert_eq!((token["sub"].clone(), token["aud"].clone()), (json!("signer"), json!(ORDERS)));
        // The issuer as audience (RFC 7523bis), an array, and no kid with one key.
        granted(with_assertion(&app, &key.signed(&header, &claims(json!({"aud": app.settings.issuer_url})))).await).await;
        granted(with_assertion(&app, &key.signed(&header, &claims(json!({"aud": ["https://x.example", token_endpoint]})))).await).await;
        granted(with_assertion(&app, &key.signed(&json!({"alg": "ES256"}), &claims(json!({})))).await).await;

        let stranger = crate::helpers::DpopKey::new();
        let refused = [
            good.clone(),
            stranger.signed(&header, &claims(json!({}))),
            key.signed(&header, &claims(json!({"iss": SERVICE_CLIENT}))),
            key.signed(&header, &claims(json!({"sub": "someone"}))),
            key.signed(&header, &claims(json!({"aud": "https://elsewhere.example/oauth/token"}))),
            key.signed(&header, &claims(json!({"exp": now - 120}))),
            key.signed(&header, &claims(json!({"exp": now + 3600}))),
            key.signed(&header, &claims(json!({"iat": now + 600}))),
            key.signed(&header, &claims(json!({"jti": ""}))),
            key.signed(&json!({"alg": "ES256", "kid": "k2"}), &claims(json!({}))),
            key.signed(&json!({"alg": "HS256", "kid": "k1"}), &claims(json!({}))),
            key.signed(&json!({"alg": "none", "kid": "k1"}), &claims(json!({}))),
            "not.an.assertion".to_owned(),
        ];
        for (i, assertion) in refused.iter().enumerate() {
            let resp = with_assertion(&app, assertion).await;
            let body = assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
            assert!(!body.to_string().contains("signer\""), "case {i}: {body}");
        }
        let resp = grant(&app, &[
            ("client_id", "signer"),
            ("client_secret", "x"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &key.signed(&header, &claims(json!({})))),
        ], None).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        let resp = grant(&app, &[
            ("client_id", "signer"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
            ("client_assertion", &key.signed(&header, &claims(json!({})))),
        ], None).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        assert_eq!(app.metric("issuer_client_auth_failures_total").await, refused.len().to_string());
        // A client without keys cannot use an assertion; one without a secret cannot
        // use a secret.
        let resp = grant(&app, &[
            ("client_id", SERVICE_CLIENT),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &key.signed(&header, &claims(json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT})))),
        ], None).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        let resp = grant(&app, &[("client_id", "signer"), ("client_secret", "")], None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

scenario! {
    /// An assertion is used up only by a grant that is given: refused for its scope,
    /// it may be sent again; given, never again. Past the address's failure limit,
    /// assertions are refused (429) before any signature is checked.
    async fn assertions_are_used_up_by_grants_and_limited_per_address(backend) {
        use token_issuer::config::RateLimit;
        let key = crate::helpers::DpopKey::new();
        let mut jwk = key.jwk();
        jwk["kid"] = json!("k1");
        let keys = vec![jwk.as_object().unwrap().clone()];
        let app = spawn_app_with(backend, move |s| {
            let mut signer = signer_client(s);
        signer.assertion_keys = keys;
            s.clients.push(signer);
            s.limits.login_per_ip = Some(RateLimit { max: 3, window: std::time::Duration::from_secs(60) });
        })
        .await;
        let now = crate::helpers::now(&app);
        let claims = json!({
            "iss": "signer", "sub": "signer", "aud": app.settings.issuer_url,
            "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        let assertion = key.signed(&json!({"alg": "ES256", "kid": "k1"}), &claims);
        let form = |scope: &'static str, assertion: &str| {
            vec![
                ("client_id".to_owned(), "signer".to_owned()),
                ("client_assertion_type".to_owned(), "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()),
                ("client_assertion".to_owned(), assertion.to_owned()),
                ("scope".to_owned(), scope.to_owned()),
            ]
        };
        let send = |f: Vec<(String, String)>| {
            let app = &app;
            async move {
                let mut body = vec![("grant_type".to_owned(), "client_credentials".to_owned())];
                body.extend(f.into_iter().filter(|(_, v)| !v.is_empty()));
                app.http.post(app.url("/oauth/token")).form(&body).send().await.unwrap()
            }
        };
        let resp = send(form("orders:write", &assertion)).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_scope", None).await;
        granted(send(form("", &assertion)).await).await;
        let resp = send(form("", &assertion)).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_client", None).await;
        // Two more failures reach the limit of three; the next is refused unchecked.
        let stranger = crate::helpers::DpopKey::new();
        for _ in 0..2 {
            let forged = stranger.signed(&json!({"alg": "ES256", "kid": "k1"}), &claims);
            assert_eq!(send(form("", &forged)).await.status(), StatusCode::UNAUTHORIZED);
        }
        let forged = stranger.signed(&json!({"alg": "ES256", "kid": "k1"}), &claims);
        let resp = send(form("", &forged)).await;
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
        assert_eq!(app.metric("issuer_client_auth_failures_total").await, "3");
    }
}

/// A JWK Set served over HTTP on a loopback port, which a test may change; counts the
/// fetches.
struct JwksServer {
    url: String,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/jwks.json",
            listener.local_addr().unwrap().port()
        );
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (body.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let text = served.lock().unwrap().clone();
                    // "slow": a host that does not answer within the fetch timeout.
                    if text == "slow" {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    }
                    let status = if text.starts_with('{') {
                        "200 OK"
                    } else {
                        "500 Internal Server Error"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { url, body, fetches }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn jwks_of(key: &crate::helpers::DpopKey, kid: &str) -> String {
    let mut jwk = key.jwk();
    jwk["kid"] = json!(kid);
    json!({ "keys": [jwk] }).to_string()
}

/// `private_key_jwt` with the client's keys at a `jwks_uri`: fetched once and cached,
/// fetched again when an assertion names a key not seen yet (at most every 30 s, so
/// forged assertions cannot make us hammer the client's server), and after 5 minutes;
/// a failed fetch keeps the keys fetched before.
#[tokio::test]
async fn a_service_client_may_publish_its_keys_at_a_jwks_uri() {
    let (first, second, stranger) = (
        crate::helpers::DpopKey::new(),
        crate::helpers::DpopKey::new(),
        crate::helpers::DpopKey::new(),
    );
    let jwks = JwksServer::start(jwks_of(&first, "k1")).await;
    let uri = jwks.url.clone();
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, move |s| {
        let mut signer = signer_client(s);
        signer.assertion_jwks_uri = Some(uri);
        s.clients.push(signer);
    })
    .await;
    let signed_by = |key: &crate::helpers::DpopKey, kid: &str| {
        let now = crate::helpers::now(&app);
        key.signed(
            &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            &json!({
                "iss": "signer", "sub": "signer", "aud": app.settings.issuer_url,
                "exp": now + 60, "iat": now, "jti": uuid::Uuid::new_v4().to_string(),
            }),
        )
    };
    assert_eq!(jwks.fetches(), 0, "fetched on first use, not at start");
    granted(with_assertion(&app, &signed_by(&first, "k1")).await).await;
    granted(with_assertion(&app, &signed_by(&first, "k1")).await).await;
    assert_eq!(jwks.fetches(), 1, "cached");

    // The client rotates: its new key is fetched, but not twice within 30 s.
    jwks.serve(jwks_of(&second, "k2"));
    let resp = with_assertion(&app, &signed_by(&second, "k2")).await;
    assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(jwks.fetches(), 1, "fetched 0 s ago: not again");
    app.advance(std::time::Duration::from_secs(31));
    granted(with_assertion(&app, &signed_by(&second, "k2")).await).await;
    assert_eq!(jwks.fetches(), 2);
    for _ in 0..5 {
        let resp = with_assertion(&app, &signed_by(&stranger, "k3")).await;
        assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        jwks.fetches(),
        2,
        "forged assertions fetch nothing within 30 s"
    );

    // Stale after 5 minutes; a server that fails keeps the keys fetched before.
    jwks.serve("down".into());
    app.advance(std::time::Duration::from_secs(301));
    granted(with_assertion(&app, &signed_by(&second, "k2")).await).await;
    assert_eq!(jwks.fetches(), 3);
}

/// RFC 7521 §4.2: with an assertion, `client_id` may be left out; the assertion's
/// `sub` names the client, and is checked as ever.
#[tokio::test]
async fn an_assertion_alone_names_its_client() {
    let key = crate::helpers::DpopKey::new();
    let app = app_with_signer(crate::helpers::Backend::Sqlite, &key).await;
    let now = crate::helpers::now(&app);
    let assertion = |sub: &str| {
        key.signed(
            &json!({"alg": "ES256", "kid": "k1"}),
            &json!({
                "iss": sub, "sub": sub, "aud": app.settings.issuer_url,
                "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
            }),
        )
    };
    let app = &app;
    let only = |a: String| async move {
        grant(
            app,
            &[
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", a.as_str()),
            ],
            None,
        )
        .await
    };
    let body = granted(only(assertion("signer")).await).await;
    assert_eq!(
        segment(body["access_token"].as_str().unwrap(), 1)["sub"],
        "signer"
    );
    // Another client named, with this key: its keys do not verify it.
    assert_error(
        only(assertion(SERVICE_CLIENT)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        None,
    )
    .await;
    assert_error(
        only(assertion("nobody")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        None,
    )
    .await;
    assert_error(
        only("not.a.jwt".into()).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    )
    .await;
}

/// A forged assertion that names a `jwks_uri` client with an unknown key makes the
/// issuer fetch the client's set again; with the client's host slow, the client's own
/// requests go on with the keys held meanwhile (they waited the whole fetch timeout
/// behind it before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_jwks_host_does_not_hold_up_the_clients_requests() {
    let (key, stranger) = (
        crate::helpers::DpopKey::new(),
        crate::helpers::DpopKey::new(),
    );
    let jwks = JwksServer::start(jwks_of(&key, "k1")).await;
    let uri = jwks.url.clone();
    let app = std::sync::Arc::new(
        spawn_app_with(crate::helpers::Backend::Sqlite, move |s| {
            let mut signer = signer_client(s);
            signer.assertion_jwks_uri = Some(uri);
            s.clients.push(signer);
        })
        .await,
    );
    let signed_by = |key: &crate::helpers::DpopKey, kid: &str| {
        let now = crate::helpers::now(&app);
        key.signed(
            &json!({"alg": "ES256", "kid": kid}),
            &json!({
                "iss": "signer", "sub": "signer", "aud": app.settings.issuer_url,
                "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
            }),
        )
    };
    granted(with_assertion(&app, &signed_by(&key, "k1")).await).await;
    jwks.serve("slow".into());
    app.advance(std::time::Duration::from_secs(31));
    let forged = {
        let (app, assertion) = (app.clone(), signed_by(&stranger, "k9"));
        tokio::spawn(async move { with_assertion(&app, &assertion).await.status() })
    };
    crate::helpers::eventually("the refetch started", || async { jwks.fetches() == 2 }).await;
    let started = std::time::Instant::now();
    granted(with_assertion(&app, &signed_by(&key, "k1")).await).await;
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(3),
        "waited {waited:?} behind the fetch"
    );
    assert_eq!(forged.await.unwrap(), StatusCode::UNAUTHORIZED);
}
