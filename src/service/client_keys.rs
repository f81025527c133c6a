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
//! - One fetch at a time per client, and nobody waits for it who has keys: the
//!   assertions that come meanwhile are checked against the keys fetched before.
//!   Only while a client has no keys at all (its first assertions) do they wait for
//!   the fetch (5 s at most). So an assertion forged to name a client cannot hold up
//!   that client's own requests behind a slow JWKS host.
//! - Keys last fetched more than `MAX_STALE` (a day) ago are dropped when a fetch fails:
//!   a key the client removed (compromised) is not accepted for ever because its host
//!   cannot be reached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::client::Client;

const FRESH_FOR: Duration = Duration::from_secs(300);
const REFETCH_AFTER: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_STALE: Duration = Duration::from_secs(86_400);
const MAX_BODY: usize = 64 * 1024;

type Keys = Arc<Vec<Map<String, Value>>>;

#[derive(Default)]
struct Cached {
    keys: Option<Keys>,
    fetched_at: Option<OffsetDateTime>,
    tried_at: Option<OffsetDateTime>,
}

/// One client's set: what was fetched (a short lock, never held across a fetch) and
/// the fetch in flight (held across it).
#[derive(Default)]
struct Slot {
    cached: std::sync::Mutex<Cached>,
    fetching: tokio::sync::Mutex<()>,
}

/// The fetched key sets, one slot per client with a `jwks_uri`.
pub(crate) struct RemoteKeySets {
    http: Option<reqwest::Client>,
    sets: HashMap<String, Slot>,
}

impl RemoteKeySets {
    pub(crate) fn new<'a>(clients: impl Iterator<Item = &'a Client>) -> Self {
        let sets: HashMap<_, _> = clients
            .filter(|c| c.assertion_jwks_uri.is_some())
            .map(|c| (c.id.clone(), Slot::default()))
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
    /// the last `REFETCH_AFTER`. `None` when no set could be fetched.
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
        let (keys, due) = slot.decide(now, again);
        if !due {
            return keys;
        }
        // One fetch at a time; a caller that holds keys does not wait for it.
        let _fetching = match slot.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) if keys.is_some() => return keys,
            Err(_) => {
                drop(slot.fetching.lock().await);
                return slot.current();
            }
        };
        let fetched = self.fetch(uri).await;
        let mut cached = slot.lock();
        match fetched {
            Ok(keys) => {
                cached.keys = Some(Arc::new(keys));
                cached.fetched_at = Some(now);
            }
            Err(why) => {
                let too_old = cached.fetched_at.is_some_and(|at| now - at > MAX_STALE);
                if too_old {
                    cached.keys = None;
                }
                tracing::warn!(client_id = %client.id, jwks_uri = %uri, reason = %why, dropped_stale_keys = too_old, "could not fetch a client's JWK Set; its assertions are checked against the keys fetched before, if any");
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

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // A panic while holding it leaves plain data: keep using it.
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Option<Keys> {
        self.lock().keys.clone()
    }

    /// The keys held now, and whether a fetch is due (then marked tried, so that the
    /// callers that come meanwhile do not start another).
    fn decide(&self, now: OffsetDateTime, again: bool) -> (Option<Keys>, bool) {
        let mut cached = self.lock();
        let fresh = cached.fetched_at.is_some_and(|at| now - at < FRESH_FOR);
        let tried_lately = cached.tried_at.is_some_and(|at| now - at < REFETCH_AFTER);
        let due = if again {
            !tried_lately
        } else {
            !fresh && !tried_lately
        };
        if due {
            cached.tried_at = Some(now);
        }
        (cached.keys.clone(), due)
    }
}
