use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{segment, spawn_app};

scenario! {
    async fn jwks_publishes_the_signing_key_with_caching_headers(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let resp = app.get("/.well-known/jwks.json").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(cache.contains("max-age="), "{cache}");
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let jwks: Value = resp.json().await.unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
        assert_eq!(key["kid"], segment(&t.access, 0)["kid"]);
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none(), "no private member {private}");
        }
        let again = app
            .http
            .get(app.url("/.well-known/jwks.json"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }
}

scenario! {
    async fn metadata_names_the_issuer_of_our_tokens(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let meta: Value = app.get("/.well-known/oauth-authorization-server").await
            .json()
            .await
            .unwrap();
        let issuer = meta["issuer"].as_str().unwrap();
        assert_eq!(
            issuer,
            segment(&t.access, 1)["iss"].as_str().unwrap(),
            "byte for byte"
        );
        assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth/token"));
        assert_eq!(meta["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
        assert_eq!(
            meta["revocation_endpoint"],
            format!("{issuer}/oauth/revoke")
        );
        assert_eq!(
            meta["authorization_endpoint"],
            format!("{issuer}/oauth/authorize")
        );
        assert_eq!(meta["response_types_supported"], serde_json::json!(["code"]));
        assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
        assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
        assert_eq!(
            meta["grant_types_supported"],
            serde_json::json!(["authorization_code", "refresh_token", "password", "client_credentials"])
        );
        assert_eq!(
            meta["token_endpoint_auth_methods_supported"],
            serde_json::json!(["none", "client_secret_basic", "client_secret_post", "private_key_jwt"])
        );
    }
}

scenario! {
    async fn health_readiness_and_docs(backend) {
        let app = spawn_app(backend).await;
        let health: Value = app.get("/healthz").await
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), StatusCode::OK);
        let ready: Value = ready.json().await.unwrap();
        assert_eq!(ready["database"], "ok");
        let docs = app.get("/docs").await;
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().to_lowercase().contains("<html"));
    }
}

scenario! {
    async fn metrics_count_requests_tokens_rotations_reuse_and_sessions(backend) {
        let app = crate::helpers::spawn_app(backend).await;
        let (email, t) = app.signed_in().await;
        let next = crate::helpers::tokens(app.refresh(&t.refresh).await).await;
        assert_eq!(app.login(&email, "not the passphrase!").await.status(), StatusCode::BAD_REQUEST);
        app.advance(std::time::Duration::from_secs(60));
        crate::helpers::assert_invalid_grant(app.refresh(&t.refresh).await, "reused").await;
        let (_, live) = app.signed_in().await;
        assert_eq!(app.me(&live.access).await.status(), StatusCode::OK);
        let _ = next;
        let resp = app.get("/metrics").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let types: Vec<_> = resp.headers().get_all("content-type").iter().collect();
        assert_eq!(types.len(), 1, "{types:?}");
        assert!(types[0].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = resp.text().await.unwrap();
        for line in [
            "issuer_http_requests_total{operation=\"token\",status=\"200\"} 3",
            "issuer_http_requests_total{operation=\"token\",status=\"400\"} 2",
            "issuer_http_requests_total{operation=\"me\",status=\"200\"} 1",
            "issuer_logins_total 2",
            "issuer_logins_failed_total 1",
            "issuer_rotations_total 1",
            "issuer_reuse_detections_total 1",
            "issuer_tokens_issued_total 3",
            "issuer_revocations_total{reason=\"reuse\"} 1",
            "issuer_active_families 1",
            "issuer_argon2_queue_depth 0",
            "issuer_db_errors_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("issuer_http_request_duration_seconds_bucket{operation=\"token\",le=\"+Inf\"} 5"));
        assert_eq!(text.contains("issuer_redis_up 1"), backend == crate::helpers::Backend::Postgres, "{text}");
    }
}
