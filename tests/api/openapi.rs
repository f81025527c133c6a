//! The committed spec is the generated one; `UPDATE_OPENAPI=1` rewrites it.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

fn committed() -> (std::path::PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    (path, text)
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = format!("{}\n", token_issuer::api::openapi_json());
    let (path, committed) = committed();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --test api openapi` \
         (or `cargo run -- openapi > openapi/openapi.json`) and commit it"
    );
}

#[test]
fn the_cli_prints_the_same_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-issuer"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", token_issuer::api::openapi_json())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document_and_documents_every_operation() {
    let app = spawn_app(crate::helpers::Backend::Sqlite).await;
    let resp = app.get("/openapi.json").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let served: Value = resp.json().await.unwrap();
    let generated: Value = serde_json::from_str(&token_issuer::api::openapi_json()).unwrap();
    assert_eq!(served, generated);
    let reasons = &served["components"]["schemas"]["ErrorReason"]["enum"];
    for reason in ["expired", "revoked", "reused", "unknown", "idle_timeout"] {
        assert!(
            reasons.as_array().unwrap().iter().any(|r| r == reason),
            "error_reason {reason} documented"
        );
    }
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has an operation id"
            );
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{method} {path} is described"
            );
        }
    }
}
