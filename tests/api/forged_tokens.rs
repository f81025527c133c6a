//! Every forged or mangled access token is refused with 401 invalid_token.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::helpers::{TestApp, assert_error, b64, segment, sign_rs256, sign_rs256_raw, spawn_app};

async fn refused(app: &TestApp, token: &str, case: &str) {
    let resp = app.me(token).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "{case} must be refused"
    );
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{case}: {challenge}"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_token", None).await;
}

fn with(claims: &Value, key: &str, value: Value) -> Value {
    let mut c = claims.clone();
    c[key] = value;
    c
}

fn without(claims: &Value, key: &str) -> Value {
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove(key);
    c
}

scenario! {
    async fn forged_and_mangled_access_tokens_are_refused(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let claims = segment(&t.access, 1);
        let now = claims["iat"].as_i64().unwrap();
        let (kid, key) = app.signing_key();
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});

        // Control: the forging helper itself makes tokens the server accepts, so each
        // refusal below is caused by the one thing changed.
        let control = sign_rs256(&key, &header, &claims);
        assert_eq!(app.me(&control).await.status(), StatusCode::OK);

        let none_header = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
        let alg_none = format!(
            "{}.{}.",
            b64(none_header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        refused(&app, &alg_none, "alg none").await;

        // HS256 keyed with our public key's PEM (the classic algorithm confusion).
        let spki = AsDer::<PublicKeyX509Der>::as_der(key.public_key()).unwrap();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki.as_ref())
        );
        let hs_header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
        let input = format!(
            "{}.{}",
            b64(hs_header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes()),
            input.as_bytes(),
        );
        refused(
            &app,
            &format!("{input}.{}", b64(mac.as_ref())),
            "HS256 with the public key as secret",
        )
        .await;

        let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        refused(
            &app,
            &sign_rs256(&stranger, &header, &claims),
            "RS256 by a key not in our JWKS",
        )
        .await;

        for bad_kid in ["nope", "../keys/active", "https://evil.example/jwks.json"] {
            let h = json!({"alg": "RS256", "typ": "at+jwt", "kid": bad_kid});
            refused(&app, &sign_rs256(&key, &h, &claims), "unknown kid").await;
        }
        let no_kid = json!({"alg": "RS256", "typ": "at+jwt"});
        refused(&app, &sign_rs256(&key, &no_kid, &claims), "no kid").await;

        let expired = with(
            &with(&claims, "exp", json!(now - 31)),
            "iat",
            json!(now - 700),
        );
        refused(&app, &sign_rs256(&key, &header, &expired), "expired").await;
        refused(
            &app,
            &sign_rs256(&key, &header, &with(&claims, "nbf", json!(now + 120))),
            "nbf in the future",
        )
        .await;
        refused(
            &app,
            &sign_rs256(&key, &header, &with(&claims, "iat", json!(now + 3600))),
            "iat in the future",
        )
        .await;
        refused(
            &app,
            &sign_rs256(
                &key,
                &header,
                &with(&claims, "iss", json!("https://evil.example")),
            ),
            "wrong iss",
        )
        .await;
        refused(
            &app,
            &sign_rs256(
                &key,
                &header,
                &with(&claims, "aud", json!("https://other.example")),
            ),
            "wrong aud",
        )
        .await;
        refused(
            &app,
            &sign_rs256(
                &key,
                &header,
                &with(
                    &claims,
                    "aud",
                    json!(["https://a.example", "https://b.example"]),
                ),
            ),
            "aud array without us",
        )
        .await;
        refused(
            &app,
            &sign_rs256(
                &key,
                &header,
                &with(&claims, "exp", json!((now + 600).to_string())),
            ),
            "exp as a string",
        )
        .await;
        for claim in ["exp", "nbf", "iat", "iss", "aud", "sub"] {
            refused(
                &app,
                &sign_rs256(&key, &header, &without(&claims, claim)),
                claim,
            )
            .await;
        }

        let no_typ = json!({"alg": "RS256", "kid": kid});
        refused(&app, &sign_rs256(&key, &no_typ, &claims), "missing typ").await;
        let jwt_typ = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        refused(
            &app,
            &sign_rs256(&key, &jwt_typ, &claims),
            "typ JWT (an ID token, say)",
        )
        .await;
        let crit = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid, "crit": ["exp"]});
        refused(&app, &sign_rs256(&key, &crit, &claims), "crit header").await;

        let parts: Vec<&str> = t.access.split('.').collect();
        let tampered_claims = with(&claims, "sub", json!(uuid::Uuid::new_v4().to_string()));
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(tampered_claims.to_string().as_bytes()),
            parts[2]
        );
        refused(&app, &tampered, "tampered payload").await;
        refused(&app, &format!("{}.extra", t.access), "extra segment").await;
        refused(&app, &t.access.replace('.', "!"), "not base64url").await;
        refused(&app, &"a".repeat(9000), "huge").await;

        // The access token of a revoked family.
        let resp = app
            .post_form(
                "/oauth/revoke",
                &[("client_id", "dev"), ("token", &t.refresh)],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        refused(&app, &t.access, "token of a revoked family").await;
    }
}

/// A public JWK for `key`, as an attacker would embed it.
fn jwk_of(key: &RsaKeyPair, kid: &str) -> Value {
    let public = key.public_key();
    json!({
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
    })
}

scenario! {
    async fn keys_named_by_header_members_are_never_fetched_nor_trusted(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let claims = segment(&t.access, 1);
        let (kid, key) = app.signing_key();

        // Where jku and x5u point: every connection attempt is counted.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let trap = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });

        let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let key_urls = |kid: &str| {
            json!({
                "alg": "RS256", "typ": "at+jwt", "kid": kid,
                "jku": trap, "x5u": trap, "jwk": jwk_of(&stranger, kid),
            })
        };
        // The attacker's own key, offered inline and by URL under our kid: refused.
        refused(
            &app,
            &sign_rs256(&stranger, &key_urls(&kid), &claims),
            "signed by the key in jwk/jku/x5u",
        )
        .await;
        // ... or under a kid of its own, or a kid that is itself the URL.
        refused(
            &app,
            &sign_rs256(&stranger, &key_urls("attacker"), &claims),
            "own kid with jwk/jku/x5u",
        )
        .await;
        refused(
            &app,
            &sign_rs256(&stranger, &key_urls(&trap), &claims),
            "kid is a URL",
        )
        .await;
        // The members are ignored, not errors: our own signature still decides.
        let ours = sign_rs256(&key, &key_urls(&kid), &claims);
        assert_eq!(app.me(&ours).await.status(), StatusCode::OK, "our key, extra members ignored");

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 0, "nothing was fetched");
    }
}

scenario! {
    async fn repeated_members_other_serializations_and_loose_encodings_are_refused(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let claims = segment(&t.access, 1);
        let (kid, key) = app.signing_key();
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}).to_string();
        let body = claims.to_string();
        assert_eq!(
            app.me(&sign_rs256_raw(&key, &header, &body)).await.status(),
            StatusCode::OK,
            "control"
        );

        // A member given twice: parsers disagree on which one wins, so neither does.
        let twice_alg = format!(r#"{{"alg":"none","alg":"RS256","typ":"at+jwt","kid":"{kid}"}}"#);
        refused(&app, &sign_rs256_raw(&key, &twice_alg, &body), "alg twice").await;
        let twice_kid = format!(r#"{{"alg":"RS256","typ":"at+jwt","kid":"{kid}","kid":"{kid}"}}"#);
        refused(&app, &sign_rs256_raw(&key, &twice_kid, &body), "kid twice").await;
        let victim = uuid::Uuid::new_v4();
        let twice_sub = format!(
            r#"{},"sub":"{victim}"}}"#,
            body.strip_suffix('}').unwrap()
        );
        refused(&app, &sign_rs256_raw(&key, &header, &twice_sub), "sub twice").await;
        let twice_aud = format!(
            r#"{},"aud":"https://other.example"}}"#,
            body.strip_suffix('}').unwrap()
        );
        refused(&app, &sign_rs256_raw(&key, &header, &twice_aud), "aud twice").await;

        // The JWS JSON serializations (RFC 7515 §7.2) of a valid token.
        let parts: Vec<&str> = t.access.split('.').collect();
        let flattened = json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]});
        refused(&app, &flattened.to_string(), "flattened JSON serialization").await;
        let general = json!({
            "payload": parts[1],
            "signatures": [{"protected": parts[0], "signature": parts[2]}],
        });
        refused(&app, &general.to_string(), "general JSON serialization").await;
        refused(&app, &b64(general.to_string().as_bytes()), "base64url of the JSON serialization").await;

        // Extra and missing segments.
        refused(&app, &format!("{}.", t.access), "empty fourth segment").await;
        refused(&app, &format!("{}.{}", parts[0], parts[1]), "no signature segment").await;
        refused(&app, &format!("{}..{}", parts[0], parts[2]), "empty payload").await;

        // Standard base64 (padding, '+' and '/') where base64url without padding is due.
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        refused(
            &app,
            &format!("{}.{}.{}", parts[0], parts[1], STANDARD.encode(&sig)),
            "standard base64 signature",
        )
        .await;
        refused(&app, &format!("{}=", t.access), "padded signature").await;

        // A huge header: well-formed and signed by our key, but over the size limit.
        let huge = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid, "pad": "x".repeat(10_000)});
        refused(&app, &sign_rs256(&key, &huge, &claims), "huge header").await;
        // A header bigger than the server reads at all is refused as such, not a 500.
        let resp = app
            .http
            .get(app.url("/v1/me"))
            .header("authorization", format!("Bearer {}", "a".repeat(100_000)))
            .send()
            .await
            .unwrap();
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE].contains(&resp.status()),
            "100 kB authorization header: {}",
            resp.status()
        );
        // The server is fine afterwards.
        assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
    }
}

scenario! {
    /// Without credentials, both schemes are offered, without an error (RFC 6750 §3,
    /// RFC 9449 §7.1).
    async fn no_credentials_is_a_bare_challenge_of_both_schemes(backend) {
        let app = spawn_app(backend).await;
        let resp = app.get("/v1/me").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"token-issuer\", DPoP realm=\"token-issuer\", algs=\"ES256 EdDSA Ed25519 RS256 PS256\""
        );
        assert_error(
            resp,
            StatusCode::UNAUTHORIZED,
            "authentication_required",
            None,
        )
        .await;
        let resp = app
            .http
            .get(app.url("/v1/me"))
            .header("authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}
