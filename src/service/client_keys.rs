//! The public keys of `private_key_jwt` clients configured with a `jwks_uri` (RFC 7591
//! §2) instead of an inline `jwks`: fetched over HTTPS and cached per client.
//!
//! - A set is used for `FRESH_FOR` (5 minutes), then fetched again on the next
//!   assertion. An assertion that the cached set does not verify (the client rotated to
//!   a key not yet seen) fetches it again at once, at most every `REFETCH_AFTER` (30 s)
//!   per client: a stream of forged assertions costs the client's server one request
//!   per 30 s.
//! - A fetch has `FETCH_TIMEOUT` (5 s), follows no redirect, and reads at most
//!   `MAX_BODY` (64 KiB); the set must hold public keys only, as an inline `jwks`. A
//!   failed fetch keeps the keys fetched before (logged as a warning); with none, the
//!   client's assertions are refused (`invalid_client`) until a fetch succeeds.
//! - Each client's set has its own lock, held during its fetch: the assertions of
//!   that client wait for it (5 s at most), no other client does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::client::Client;

const FRESH_FOR: Duration = Duration::from_secs(300);
const REFETCH_AFTER: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 64 * 1024;

type Keys = Arc<Vec<Map<String, Value>>>;

#[derive(Default)]
struct Cached {
    keys: Option<Keys>,
    fetched_at: Option<OffsetDateTime>,
    tried_at: Option<OffsetDateTime>,
}

/// The fetched key sets, one slot per client with a `jwks_uri`.
pub(crate) struct RemoteKeySets {
    http: Option<reqwest::Client>,
    sets: HashMap<String, tokio::sync::Mutex<Cached>>,
}

impl RemoteKeySets {
    pub(crate) fn new<'a>(clients: impl Iterator<Item = &'a Client>) -> Self {
        let sets: HashMap<_, _> = clients
            .filter(|c| c.assertion_jwks_uri.is_some())
            .map(|c| (c.id.clone(), tokio::sync::Mutex::new(Cached::default())))
            .collect();
        let http = if sets.is_empty() {
            None
        } else {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| tracing::error!(error = %e, "no HTTP client for jwks_uri"))
                .ok()
        };
        Self { http, sets }
    }

    /// The client's keys: the cached set while fresh, else fetched now. With `again`
    /// (the cached set did not verify an assertion), fetched now unless it was tried in
    /// the last `REFETCH_AFTER`. `None` when no set could ever be fetched.
    pub(crate) async fn keys(
        &self,
        client: &Client,
        now: OffsetDateTime,
        again: bool,
    ) -> Option<Keys> {
        let (Some(uri), Some(slot)) = (&client.assertion_jwks_uri, self.sets.get(&client.id))
        else {
            return None;
        };
        let mut cached = slot.lock().await;
        let fresh = cached.fetched_at.is_some_and(|at| now - at < FRESH_FOR);
        let tried_lately = cached.tried_at.is_some_and(|at| now - at < REFETCH_AFTER);
        let fetch = if again {
            !tried_lately
        } else {
            !fresh && !tried_lately
        };
        if fetch {
            cached.tried_at = Some(now);
            match self.fetch(uri).await {
                Ok(keys) => {
                    cached.keys = Some(Arc::new(keys));
                    cached.fetched_at = Some(now);
                }
                Err(why) => {
                    tracing::warn!(client_id = %client.id, jwks_uri = %uri, reason = %why, "could not fetch a client's JWK Set; its assertions are checked against the keys fetched before, if any");
                }
            }
        }
        cached.keys.clone()
    }

    async fn fetch(&self, uri: &str) -> Result<Vec<Map<String, Value>>, String> {
        let http = self.http.as_ref().ok_or("no HTTP client")?;
        let mut resp = http
            .get(uri)
            .header("accept", "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("body failed: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err("the JWK Set is over 64 KiB".into());
            }
        }
        let set: Value =
            serde_json::from_slice(&body).map_err(|_| "the answer is not JSON".to_owned())?;
        crate::crypto::client_assertion::public_keys(&set)
            .map_err(|why| format!("the JWK Set {why}"))
    }
}
