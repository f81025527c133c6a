//! Redis for the tests: the server's URL, a key prefix per test, waiting for the
//! issuer to see it.

use std::time::Duration;

use serde_json::Value;

use super::TestApp;

/// `ISSUER_TEST_REDIS_URL`, or the local Redis; fails with one line when it does not
/// answer (no silent skip).
pub async fn test_redis_url() -> String {
    let url = std::env::var("ISSUER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let answered = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    if tokio::time::timeout(Duration::from_secs(2), answered)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        panic!(
            "Redis does not answer at {url}; start it (`service redis-server start`) or set ISSUER_TEST_REDIS_URL"
        );
    }
    url
}

/// A Redis key prefix of one test, so parallel tests never see each other's keys.
pub fn unique_redis_prefix() -> String {
    format!("issuer-test:{}:", uuid::Uuid::new_v4().simple())
}

/// Polls `/readyz` until Redis is reported as `want` (`ok` or `degraded`).
pub async fn wait_for_redis(app: &TestApp, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body: Value = app.get("/readyz").await.json().await.unwrap();
        if body["redis"] == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` instances of the key prefix `prefix` listen on the revocation
/// channel (a message published before an instance subscribed is lost to it).
pub async fn wait_for_subscribers(prefix: &str, n: i64) {
    let url = test_redis_url().await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let channel = format!("{prefix}revocations");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, listening): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if listening >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{listening} of {n} instances subscribed to {channel}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
