//! What the tests assert about answers: token responses, error bodies, cookies, and
//! conditions that hold eventually.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::Tokens;

/// Asserts a 200 token response and returns its tokens (body mode).
pub async fn tokens(resp: Response) -> Tokens {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "token response: {body}");
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"]
            .as_str()
            .expect("a refresh token in the body")
            .to_owned(),
    }
}

/// Asserts an error answer with `status`, `error` and (when given) `error_reason`.
pub async fn assert_error(
    resp: Response,
    status: StatusCode,
    error: &str,
    reason: Option<&str>,
) -> Value {
    let got = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error body, got {text:?}"));
    assert_eq!(got, status, "body: {body}");
    assert_eq!(body["error"], error, "body: {body}");
    if let Some(reason) = reason {
        assert_eq!(body["error_reason"], reason, "body: {body}");
    }
    assert!(body["error_description"].is_string(), "body: {body}");
    // Every error names its request, as the header and the logs do.
    assert_eq!(
        body["request_id"].as_str(),
        request_id.as_deref(),
        "body: {body}"
    );
    assert!(request_id.is_some());
    body
}

/// Asserts `400 invalid_grant` with `error_reason`.
pub async fn assert_invalid_grant(resp: Response, reason: &str) -> Value {
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_grant", Some(reason)).await
}

pub fn set_cookie_headers(resp: &Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Polls until `check` holds, for 15 s at most (instances re-read the key ring every
/// 2 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
