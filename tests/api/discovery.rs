use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{segment, spawn_app};

scenario! {
    async fn jwks_publishes_the_signing_key_with_caching_headers(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let resp = app
            .http
            .get(app.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
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
        let meta: Value = app
            .http
            .get(app.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap()
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
        assert_eq!(meta["response_types_supported"], serde_json::json!([]));
        assert_eq!(
            meta["grant_types_supported"],
            serde_json::json!(["password", "refresh_token"])
        );
    }
}

scenario! {
    async fn health_readiness_and_docs(backend) {
        let app = spawn_app(backend).await;
        let health: Value = app
            .http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let ready: Value = ready.json().await.unwrap();
        assert_eq!(ready["database"], "ok");
        let docs = app.http.get(app.url("/docs")).send().await.unwrap();
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().to_lowercase().contains("<html"));
    }
}
