//! The Redis link: deny-list keys, revocation events and rate-limit counters, every
//! call bounded by `OP_TIMEOUT`. Redis is never the only record of anything: a failed
//! call reports `None` and the caller falls back (to the database for revocation, to
//! in-process counters for rate limits).
//!
//! Keys (all under the configured prefix):
//! - `deny:<sid>`: a revoked family, with a TTL equal to the longest remaining life of
//!   its access tokens;
//! - `rl:<kind>:<hash>`: a fixed-window counter (the IP, e-mail or family is hashed, so
//!   no personal data sits in Redis);
//! - `dpop:<hash>`: a DPoP proof seen (its key and `jti`, hashed), for as long as its
//!   `iat` is accepted: a replay on any instance is refused;
//! - channel `revocations`: `<sid>:<ttl in ms>` for every family revoked, for the
//!   other instances' in-process deny-lists and session caches; `epoch <not_before>
//!   <scope>` for a revocation epoch; `keys` after a key command changed the key
//!   files (instances re-read them at once).
//!
//! The connection is rebuilt after `REBUILD_AFTER` failed health checks in a row: a
//! Redis that vanished without closing the connection (a dead host, a fail-over behind
//! DNS) is dialled afresh instead of waiting for the kernel to give up on the socket.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use uuid::Uuid;

use crate::metrics::Metrics;

/// The revocation-channel message that says the key files changed.
pub const KEYS_CHANGED: &str = "keys";
/// The longest a Redis call may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_millis(300);
/// Failed health checks in a row after which the connection is dialled afresh.
const REBUILD_AFTER: u32 = 3;

/// Counts a hit in a fixed window of `ARGV[1]` ms with at most `ARGV[2]` hits:
/// `{count, milliseconds left}`. A hit over the limit is not counted (it answers
/// `max + 1`), so hits given back after a burst bring the count under the limit again.
const HIT_SCRIPT: &str = r"
local max = tonumber(ARGV[2])
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < max then
  n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
else
  n = max + 1
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

/// Takes a hit back, keeping the window's expiry, if the window is the one the hit was
/// counted in: one that has at most `ARGV[1]` ms left (a later window would have more).
const GIVE_BACK_SCRIPT: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left > 0 and left <= tonumber(ARGV[1]) then return redis.call('DECR', KEYS[1]) end
return -1
";

/// A lazily connected Redis with automatic reconnection.
pub struct RedisLink {
    client: redis::Client,
    conn: RwLock<ConnectionManager>,
    prefix: String,
    healthy: AtomicBool,
    failed_pings: AtomicU32,
    hit: redis::Script,
    give_back: redis::Script,
    metrics: Arc<Metrics>,
}

fn manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(OP_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl RedisLink {
    /// Prepares the link without connecting: a Redis that is down at start-up is
    /// picked up when it comes. `rediss://` connects over TLS (rustls), trusting the
    /// system's certificate authorities, or `ca_pem`'s when given.
    pub fn new(
        url: &str,
        prefix: &str,
        ca_pem: Option<Vec<u8>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        // redis's rustls needs a process-wide crypto provider (one already set stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match ca_pem {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let conn = RwLock::new(manager(&client)?);
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            healthy: AtomicBool::new(false),
            failed_pings: AtomicU32::new(0),
            hit: redis::Script::new(HIT_SCRIPT),
            give_back: redis::Script::new(GIVE_BACK_SCRIPT),
            metrics,
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the last call (or health check) succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records the outcome of a call, logging the transitions.
    pub fn set_healthy(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::AcqRel);
        match (was, ok) {
            (true, false) => tracing::warn!(
                "redis unreachable: rate limits are per instance and revocation checks use the database until it is back"
            ),
            (false, true) => tracing::info!("redis connected"),
            _ => {}
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The revocation-events channel.
    pub fn channel(&self) -> String {
        self.key("revocations")
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
        what: &'static str,
    ) -> Option<T> {
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.set_healthy(true);
                Some(value)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, op = what, "redis call failed");
                self.metrics.redis_errors.inc();
                self.set_healthy(false);
                None
            }
            Err(_) => {
                tracing::debug!(op = what, "redis call timed out");
                self.metrics.redis_errors.inc();
                self.set_healthy(false);
                None
            }
        }
    }

    /// `PING`; updates the health flag, and dials afresh after `REBUILD_AFTER`
    /// failures in a row.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        let ok = self
            .bounded(redis::cmd("PING").query_async::<String>(&mut conn), "ping")
            .await
            .is_some();
        if ok {
            self.failed_pings.store(0, Ordering::Relaxed);
        } else if self.failed_pings.fetch_add(1, Ordering::Relaxed) + 1 >= REBUILD_AFTER {
            self.failed_pings.store(0, Ordering::Relaxed);
            if let Ok(fresh) = manager(&self.client) {
                *self
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tracing::debug!("redis connection rebuilt");
            }
        }
        ok
    }

    /// Puts `sid` on the deny-list for `ttl` and announces it on the channel.
    pub async fn deny(&self, sid: Uuid, ttl: Duration) -> bool {
        let mut conn = self.conn();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key(&format!("deny:{sid}")))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(format!("{sid}:{ttl_ms}"))
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut conn), "deny")
            .await
            .is_some()
    }

    /// Whether `sid` is on the deny-list, and the epochs (unix seconds) of every client
    /// and of `client_id`, in one round trip; `None` when Redis did not answer.
    pub async fn check(
        &self,
        sid: Uuid,
        client_id: &str,
    ) -> Option<(bool, Option<i64>, Option<i64>)> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS")
            .arg(self.key(&format!("deny:{sid}")))
            .cmd("GET")
            .arg(self.key("epoch:*"))
            .cmd("GET")
            .arg(self.key(&format!("epoch:{client_id}")));
        // Read as text: a value that is not a number (written by hand) is ignored,
        // not taken for Redis failing.
        let (denied, every, own): (bool, Option<String>, Option<String>) =
            self.bounded(pipe.query_async(&mut conn), "check").await?;
        let number = |v: Option<String>| v.and_then(|v| v.parse().ok());
        Some((denied, number(every), number(own)))
    }

    /// Writes an epoch of `scope` (its `not_before`, unix seconds) for `ttl` and
    /// announces it on the revocation channel. Two epochs of one scope written at once
    /// may leave the earlier here: each instance keeps the later one it has seen, and
    /// the database, re-read every few seconds, has the later one.
    pub async fn set_epoch(&self, scope: &str, not_before: i64, ttl: Duration) -> bool {
        let mut conn = self.conn();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key(&format!("epoch:{scope}")))
            .arg(not_before)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(format!("epoch {not_before} {scope}"))
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut conn), "set_epoch")
            .await
            .is_some()
    }

    /// Sets `key` for `ttl` unless it exists (`SET NX`): whether this call set it;
    /// `None` when Redis did not answer.
    pub async fn set_once(&self, key: &str, ttl: Duration) -> Option<bool> {
        let mut conn = self.conn();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let set: Option<String> = self.bounded(cmd.query_async(&mut conn), "set_once").await?;
        Some(set.is_some())
    }

    /// Announces on the revocation channel that the key files changed.
    pub async fn announce_keys(&self) -> bool {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(KEYS_CHANGED);
        self.bounded(cmd.query_async::<i64>(&mut conn), "announce_keys")
            .await
            .is_some()
    }

    /// Counts a hit on `key` in a window of `window` allowing `max`: the count (`max +
    /// 1`, not counted, when over) and the time left in the window; `None` when Redis
    /// did not answer.
    pub async fn hit(&self, key: &str, window: Duration, max: u32) -> Option<(u64, Duration)> {
        let mut conn = self.conn();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.hit.key(self.key(key));
        invocation.arg(window_ms).arg(max);
        let (count, left_ms): (u64, i64) = self
            .bounded(invocation.invoke_async(&mut conn), "rate_limit")
            .await?;
        Some((
            count,
            Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)),
        ))
    }

    /// Takes one hit off `key`'s count, if its window is the one with about `left` to
    /// go (a window that ended is not recreated, a later one is not touched).
    pub async fn give_back(&self, key: &str, left: Duration) {
        // Slack for the round trips between the count and now.
        let bound = left + Duration::from_millis(500);
        let mut conn = self.conn();
        let mut invocation = self.give_back.key(self.key(key));
        invocation.arg(u64::try_from(bound.as_millis()).unwrap_or(u64::MAX));
        let _ = self
            .bounded(
                invocation.invoke_async::<i64>(&mut conn),
                "rate_limit_give_back",
            )
            .await;
    }

    /// A dedicated connection subscribed to the revocation channel.
    pub async fn subscribe(&self) -> Option<PubSub> {
        let channel = self.channel();
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(OP_TIMEOUT * 3, connect).await {
            Ok(Ok(pubsub)) => Some(pubsub),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis subscription failed");
                None
            }
            Err(_) => None,
        }
    }
}
