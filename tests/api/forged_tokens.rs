//! Every forged or mangled access token is refused with 401 invalid_token.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, b64, segment, sign_rs256, spawn_app};

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

scenario! {
    async fn no_credentials_is_a_bare_bearer_challenge(backend) {
        let app = spawn_app(backend).await;
        let resp = app.http.get(app.url("/v1/me")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"token-issuer\""
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
