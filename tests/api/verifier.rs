//! The `verifier` module that services embed, against a running issuer: discovery,
//! the issuer's own rules, a key rotation picked up without an error, no fetch storm
//! from forged `kid`s, and revocation through introspection.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::RsaKeyPair;
use serde_json::json;
use token_issuer::crypto::keyring;
use token_issuer::service::keys::LIFETIMES;
use token_issuer::verifier::{Verifier, VerifierConfig, VerifyError};

use crate::helpers::{
    Backend, DpopKey, PASSWORD, SERVICE_CLIENT, SERVICE_SECRET, TestApp, eventually, jwks, now,
    segment, sign_rs256, spawn_app_with, tokens, unique_email,
};

/// An issuer whose `issuer_url` is its real address, so that the metadata's `jwks_uri`
/// and `introspection_endpoint` can be followed.
async fn issuer_at_its_own_url(backend: Backend) -> TestApp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    spawn_app_with(backend, |s| {
        s.bind = format!("127.0.0.1:{port}").parse().unwrap();
        s.issuer_url = format!("http://127.0.0.1:{port}");
    })
    .await
}

fn config(app: &TestApp) -> VerifierConfig {
    VerifierConfig::new(&app.settings.issuer_url, &app.settings.audience)
}

fn refused(result: Result<token_issuer::domain::claims::AccessClaims, VerifyError>, case: &str) {
    assert!(
        matches!(result, Err(VerifyError::Unauthorized(_))),
        "{case}: {result:?}"
    );
}

/// JWKS requests the issuer has answered (with `status`, or with any), from its own
/// `/metrics`.
async fn jwks_answered(app: &TestApp, status: Option<u16>) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    let prefix = match status {
        Some(status) => {
            format!("issuer_http_requests_total{{operation=\"jwks\",status=\"{status}\"}} ")
        }
        None => "issuer_http_requests_total{operation=\"jwks\"".to_owned(),
    };
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

scenario! {
    async fn a_verifier_discovers_the_keys_and_accepts_what_the_issuer_accepts(backend) {
        let app = issuer_at_its_own_url(backend).await;
        let verifier = Verifier::discover(config(&app)).await.unwrap();
        let (_, t) = app.signed_in().await;
        let claims = verifier.verify(&t.access).await.unwrap();
        assert_eq!(claims.sid.as_deref(), segment(&t.access, 1)["sid"].as_str());

        // What the issuer refuses, the verifier refuses.
        let body = segment(&t.access, 1);
        let (kid, key) = app.signing_key();
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
        let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let mut wrong_aud = body.clone();
        wrong_aud["aud"] = json!("https://other.example");
        let mut expired = body.clone();
        expired["exp"] = json!(now(&app) - 31);
        let cases = [
            (sign_rs256(&stranger, &header, &body), "another key under our kid"),
            (sign_rs256(&key, &header, &wrong_aud), "another audience"),
            (sign_rs256(&key, &header, &expired), "expired"),
            (sign_rs256(&key, &json!({"alg": "RS256", "typ": "JWT", "kid": kid}), &body), "typ JWT"),
            (format!("{}.", t.access), "extra segment"),
        ];
        for (token, case) in &cases {
            refused(verifier.verify(token).await, case);
            assert_eq!(app.me(token).await.status(), reqwest::StatusCode::UNAUTHORIZED, "{case}");
        }

        // Metadata that names another issuer (here: ours with a trailing slash, which
        // RFC 8414 §3.3 says is another identifier) is refused at start-up.
        let mut wrong_issuer = config(&app);
        wrong_issuer.issuer = format!("{}/", app.settings.issuer_url);
        assert!(matches!(Verifier::discover(wrong_issuer).await, Err(VerifyError::Config(_))));
        // Plain http is for loopback only.
        let mut plain = config(&app);
        plain.issuer = "http://auth.example.com".into();
        assert!(matches!(Verifier::discover(plain).await, Err(VerifyError::Config(_))));
        let mut other_audience = config(&app);
        other_audience.audience = "https://orders.example".into();
        let other = Verifier::discover(other_audience).await.unwrap();
        refused(other.verify(&t.access).await, "a token for another audience");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotation_reaches_a_running_verifier_before_its_first_token() {
    let app = issuer_at_its_own_url(Backend::Sqlite).await;
    // Scaled-down time: the verifier revalidates every second (in production, the
    // issuer's max-age of 300 s, against a key published ≥ 10 min before it signs), and
    // an unknown kid would not be fetched again within the test: only the publication
    // ahead of time can make the rotation error-free.
    let mut cfg = config(&app);
    cfg.max_cache_age = Duration::from_secs(1);
    cfg.unknown_kid_interval = Duration::from_secs(3600);
    let verifier = std::sync::Arc::new(Verifier::discover(cfg).await.unwrap());
    let (_, first) = app.signed_in().await;
    let old_kid = segment(&first.access, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    // A client refreshing and a service verifying each new access token, throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = std::sync::Arc::new(app);
    let worker = {
        let (app, verifier, stop) = (app.clone(), verifier.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut current, mut kids, mut failures, mut verified) =
                (first, HashSet::new(), Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                current = tokens(app.refresh(&current.refresh).await).await;
                kids.insert(
                    segment(&current.access, 0)["kid"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
                match verifier.verify(&current.access).await {
                    Ok(_) => verified += 1,
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (kids, failures, verified)
        })
    };

    let dir = app.keys_dir();
    let next = keyring::generate(&dir, KeySize::Rsa2048, now(&app)).unwrap();
    // The issuer re-reads the ring every 2 s: wait until it publishes the next key,
    // then for two of the verifier's 1 s cache lifetimes (it revalidates in the
    // background as requests arrive). Rotating earlier than that is what `keys rotate`
    // refuses to do without `--force`.
    eventually("the issuer publishes the next key", || async {
        jwks(&app).await.0.contains(&next.kid)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rotation = keyring::rotate(&dir, now(&app), LIFETIMES, true, KeySize::Rsa2048).unwrap();
    assert_eq!(rotation.active, next.kid);
    eventually("the issuer signs with the new key", || async {
        let t = app.signed_in().await.1;
        segment(&t.access, 0)["kid"] == next.kid.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (kids, failures, verified) = worker.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        kids,
        HashSet::from([old_kid, next.kid.clone()]),
        "both keys were used"
    );
    assert!(verified > 20, "{verified} tokens verified");
}

scenario! {
    async fn a_thousand_forged_kids_cause_at_most_one_jwks_fetch_per_interval(backend) {
        let app = issuer_at_its_own_url(backend).await;
        let verifier = std::sync::Arc::new(Verifier::discover(config(&app)).await.unwrap());
        let (_, t) = app.signed_in().await;
        verifier.verify(&t.access).await.unwrap();
        let (fetched, served) = (verifier.jwks_fetches(), jwks_answered(&app, None).await);
        assert_eq!(fetched, 1, "discovery fetched the JWKS once");

        let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let body = segment(&t.access, 1);
        let forged: Vec<String> = (0..1000)
            .map(|_| {
                let kid = uuid::Uuid::new_v4().simple().to_string();
                sign_rs256(&stranger, &json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}), &body)
            })
            .collect();
        // All at once, 100 at a time in parallel.
        for batch in forged.chunks(100) {
            let results = futures::future::join_all(batch.iter().map(|token| {
                let verifier = verifier.clone();
                async move { verifier.verify(token).await }
            }))
            .await;
            for result in results {
                refused(result, "forged kid");
            }
        }
        // The interval (30 s) started at discovery: not one more fetch.
        assert_eq!(verifier.jwks_fetches(), fetched);
        assert_eq!(jwks_answered(&app, None).await, served);
        // The real tokens still verify, from the cache.
        verifier.verify(&t.access).await.unwrap();

        // With a 1 s interval, once it is due: 100 forged tokens at the same moment
        // share one fetch ...
        let mut cfg = config(&app);
        cfg.unknown_kid_interval = Duration::from_secs(1);
        let short = Verifier::discover(cfg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let results = futures::future::join_all(forged[..100].iter().map(|token| {
            let short = short.clone();
            async move { short.verify(token).await }
        }))
        .await;
        for result in results {
            refused(result, "forged kid");
        }
        assert_eq!(short.jwks_fetches(), 2, "discovery, then one shared refetch");
        // ... and a stream of them gets one fetch per interval.
        let started = Instant::now();
        for token in forged.iter().cycle().take(3000) {
            refused(short.verify(token).await, "forged kid");
        }
        let intervals = u64::try_from(started.elapsed().as_millis() / 1000).unwrap() + 1;
        assert!(
            short.jwks_fetches() - 2 <= intervals,
            "{} refetches in {} ms (at most one per second)",
            short.jwks_fetches() - 2,
            started.elapsed().as_millis()
        );
    }
}

scenario! {
    async fn with_introspection_a_revoked_session_is_refused_at_once(backend) {
        let app = issuer_at_its_own_url(backend).await;
        let verifier = Verifier::discover(
            config(&app).introspection(SERVICE_CLIENT, SERVICE_SECRET, Duration::ZERO),
        )
        .await
        .unwrap();
        let (_, t) = app.signed_in().await;
        verifier.verify(&t.access).await.unwrap();
        let resp = app
            .post_form("/oauth/revoke", &[("client_id", "dev"), ("token", &t.refresh)])
            .await;
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert!(
            matches!(verifier.verify(&t.access).await, Err(VerifyError::Unauthorized("session revoked"))),
            "refused as soon as the session is revoked"
        );
        // Without introspection, the signature alone still passes until `exp`: that is
        // what a stateless access token is.
        let stateless = Verifier::discover(config(&app)).await.unwrap();
        stateless.verify(&t.access).await.unwrap();

        // A wrong service secret is a configuration error the service sees (503), not
        // a silently accepted token.
        let wrong = Verifier::discover(
            config(&app).introspection(SERVICE_CLIENT, "not the secret", Duration::ZERO),
        )
        .await
        .unwrap();
        let (_, fresh) = app.signed_in().await;
        assert!(matches!(wrong.verify(&fresh.access).await, Err(VerifyError::Unavailable(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_verifier_revalidates_by_etag_and_rides_out_an_issuer_outage() {
    use crate::proxy::{Link, TcpProxy};
    // The verifier reaches the issuer through a proxy the test can cut; the issuer's
    // URL (and so every URL in its metadata) is the proxy's.
    let bind = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TcpProxy::start(bind).await;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.bind = bind;
        s.issuer_url = format!("http://127.0.0.1:{}", proxy.port);
    })
    .await;
    let mut cfg = config(&app);
    cfg.max_cache_age = Duration::from_secs(1);
    cfg.unknown_kid_interval = Duration::from_secs(1);
    let verifier = Verifier::discover(cfg).await.unwrap();
    let (_, t) = app.signed_in().await;
    verifier.verify(&t.access).await.unwrap();

    // Stale after a second: revalidated with If-None-Match, answered 304.
    assert_eq!(jwks_answered(&app, Some(304)).await, 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    verifier.verify(&t.access).await.unwrap();
    eventually("a conditional revalidation answered 304", || async {
        jwks_answered(&app, Some(304)).await > 0
    })
    .await;
    let fetched = verifier.jwks_fetches();

    // The issuer goes away: tokens of known keys still verify, from the cached keys,
    // each answered at once (revalidation runs in the background).
    proxy.set(Link::Refuse);
    let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let forged = sign_rs256(
        &stranger,
        &json!({"alg": "RS256", "typ": "at+jwt", "kid": "not-a-kid-of-ours"}),
        &segment(&t.access, 1),
    );
    let until = Instant::now() + Duration::from_secs(3);
    let mut unavailable = 0;
    while Instant::now() < until {
        let started = Instant::now();
        verifier.verify(&t.access).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        // An unknown kid while the keys cannot be fetched: 503, not 401.
        match verifier.verify(&forged).await {
            Err(VerifyError::Unavailable(_)) => unavailable += 1,
            Err(VerifyError::Unauthorized(_)) => {}
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unavailable > 0,
        "an unknown kid during the outage is Unavailable"
    );
    assert!(verifier.jwks_fetches() > fetched, "it kept trying");
    assert!(
        verifier.jwks_fetches() <= fetched + 8,
        "about once a second: {}",
        verifier.jwks_fetches() - fetched
    );

    // Back: the next fetch succeeds and a forged kid is a plain 401 again.
    proxy.set(Link::Open);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match verifier.verify(&forged).await {
            Err(VerifyError::Unauthorized(_)) => break,
            Err(VerifyError::Unavailable(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    verifier.verify(&t.access).await.unwrap();
}

/// After `keys roll --compromised`, a running verifier accepts the removed key's tokens
/// only until its next JWKS fetch (the window the README documents); the first token
/// of the key that signs now (an unknown `kid`) makes it fetch, and from then on the
/// removed key's tokens are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_emergency_roll_the_verifier_refuses_the_removed_key_from_its_next_fetch() {
    let app = issuer_at_its_own_url(Backend::Sqlite).await;
    let mut cfg = config(&app);
    cfg.max_cache_age = Duration::from_secs(3600);
    cfg.unknown_kid_interval = Duration::from_secs(1);
    // A next key published before the verifier fetches the JWKS, as on any day after
    // the first rotation: it is in the verifier's cache.
    let next = keyring::generate(&app.keys_dir(), KeySize::Rsa2048, now(&app)).unwrap();
    app.issuer.refresh_keys().await.unwrap();
    let verifier = Verifier::discover(cfg).await.unwrap();
    let (_, old) = app.signed_in().await;
    verifier.verify(&old.access).await.unwrap();
    let compromised = segment(&old.access, 0)["kid"].as_str().unwrap().to_owned();

    let roll =
        keyring::roll_compromised(&app.keys_dir(), &compromised, now(&app), KeySize::Rsa2048)
            .unwrap();
    // Not the cached next key: a token it signed would not make the verifier fetch.
    assert_ne!(roll.active, next.kid);
    // Until the verifier fetches the JWKS again, its cached copy still has the key.
    verifier.verify(&old.access).await.unwrap();
    eventually("the issuer signs with the key that replaced it", || async {
        let t = app.signed_in().await.1;
        segment(&t.access, 0)["kid"] == roll.active.as_str()
    })
    .await;
    // The verifier refetches on an unknown `kid` once a second here: past that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = app.signed_in().await.1;
    verifier.verify(&fresh.access).await.unwrap();
    refused(
        verifier.verify(&old.access).await,
        "a token of the removed key",
    );
}

/// A DPoP-bound access token of a new user, bound to `key`.
async fn bound_access_token(app: &TestApp, key: &DpopKey) -> String {
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        reqwest::StatusCode::CREATED
    );
    let htu = format!("{}/oauth/token", app.settings.issuer_url);
    let body: serde_json::Value = app
        .login_with_proofs(&email, &[&key.proof("POST", &htu, now(app))])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["token_type"], "DPoP", "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

scenario! {
    /// RFC 9449 §7 at a resource server: a bound token is taken with one proof of its
    /// key for this request at the service's own public URL, once; never as Bearer,
    /// never with another key's proof or a proof for another request.
    async fn the_verifier_takes_a_bound_token_with_a_proof_for_its_own_url(backend) {
        let app = issuer_at_its_own_url(backend).await;
        let mut dpop_config = config(&app).dpop("https://api.example.com/");
        dpop_config.max_proofs = 3;
        let verifier = Verifier::discover(dpop_config).await.unwrap();
        let key = DpopKey::new();
        let access = bound_access_token(&app, &key).await;
        let orders = "https://api.example.com/orders";
        let proof = key.proof_with_token("GET", orders, now(&app), &access);
        // The query of the request is not part of htu.
        let claims = verifier.verify_dpop(&access, &[&proof], "GET", "/orders?page=2").await.unwrap();
        assert_eq!(claims.cnf.unwrap().jkt, key.thumbprint());
        let invalid_proof = |r: Result<_, VerifyError>, case: &str| {
            assert!(matches!(r, Err(VerifyError::InvalidProof(_))), "{case}: {r:?}");
        };
        invalid_proof(verifier.verify_dpop(&access, &[&proof], "GET", "/orders").await, "replayed");
        refused(verifier.verify(&access).await, "a bound token as Bearer");
        let thief = key_proof(&DpopKey::new(), "GET", orders, &app, &access);
        refused(verifier.verify_dpop(&access, &[&thief], "GET", "/orders").await, "another key");
        let issuer_url = format!("{}/orders", app.settings.issuer_url);
        for (p, method, path, case) in [
            (key_proof(&key, "GET", &issuer_url, &app, &access), "GET", "/orders", "the issuer's URL"),
            (key_proof(&key, "GET", orders, &app, &access), "POST", "/orders", "another method"),
            (key_proof(&key, "GET", orders, &app, &access), "GET", "/invoices", "another path"),
            (key_proof(&key, "GET", orders, &app, "another token"), "GET", "/orders", "ath of another token"),
        ] {
            invalid_proof(verifier.verify_dpop(&access, &[&p], method, path).await, case);
        }
        invalid_proof(verifier.verify_dpop(&access, &[], "GET", "/orders").await, "no proof");
        let two = key_proof(&key, "GET", orders, &app, &access);
        invalid_proof(verifier.verify_dpop(&access, &[&two, &two], "GET", "/orders").await, "two proofs");
        // An unbound token under the DPoP scheme.
        let (_, bearer) = app.signed_in().await;
        let p = key_proof(&key, "GET", orders, &app, &bearer.access);
        refused(verifier.verify_dpop(&bearer.access, &[&p], "GET", "/orders").await, "unbound under DPoP");
        assert!(verifier.verify(&bearer.access).await.is_ok());

        // The replay cache is bounded and fails closed: the first proof and two more
        // are remembered (refused ones never are); a fourth good proof must wait for
        // one of them to expire.
        for _ in 0..2 {
            let p = key_proof(&key, "GET", orders, &app, &access);
            assert!(verifier.verify_dpop(&access, &[&p], "GET", "/orders").await.is_ok());
        }
        assert_eq!(verifier.proofs_remembered(), 3);
        let p = key_proof(&key, "GET", orders, &app, &access);
        let r = verifier.verify_dpop(&access, &[&p], "GET", "/orders").await;
        assert!(matches!(r, Err(VerifyError::Unavailable(_))), "{r:?}");

        // Without a public URL, DPoP is not accepted: the request is refused, the
        // service is not made to fail.
        let plain = Verifier::discover(config(&app)).await.unwrap();
        let p = key_proof(&key, "GET", orders, &app, &access);
        refused(plain.verify_dpop(&access, &[&p], "GET", "/orders").await, "DPoP not configured");
    }
}

fn key_proof(key: &DpopKey, method: &str, url: &str, app: &TestApp, token: &str) -> String {
    key.proof_with_token(method, url, now(app), token)
}

scenario! {
    /// A service client's own token (client credentials): no `sid`, verified like any
    /// other, and active at introspection.
    async fn the_verifier_accepts_a_client_credentials_token(backend) {
        let app = issuer_at_its_own_url(backend).await;
        let verifier = Verifier::discover(config(&app).introspection(
            SERVICE_CLIENT,
            SERVICE_SECRET,
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
        let body: serde_json::Value = app
            .client_credentials(SERVICE_CLIENT, SERVICE_SECRET, &[])
            .await
            .json()
            .await
            .unwrap();
        let claims = verifier.verify(body["access_token"].as_str().unwrap()).await.unwrap();
        assert_eq!(claims.sub, SERVICE_CLIENT);
        assert_eq!(claims.sid, None);
    }
}
