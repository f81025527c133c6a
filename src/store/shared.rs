//! The fast shared state: the session deny-list, a cache of live sessions, and rate
//! limits. With Redis configured, it is shared by every instance; without Redis (or
//! while Redis is down) an in-process version serves this instance alone.
//!
//! How an access token's session is checked (`Issuer::authenticate`):
//! 1. the local deny-list (families revoked by this instance or announced on the
//!    revocation channel): refused;
//! 2. the Redis deny-list (one `EXISTS`): refused. The revoking instance writes it
//!    before it answers, so every instance refuses at once, without waiting for the
//!    announcement;
//! 3. the session cache, only when step 2 answered: a session read from the database
//!    in the last `SESSION_CACHE_TTL` is live. It is used only while this instance is
//!    subscribed to the revocation channel, and emptied on every (re)subscription;
//! 4. the database, which is authoritative: without Redis, or with Redis down, every
//!    check ends here.
//!
//! A revocation is written to the database first, then to the local deny-list, then to
//! Redis (`SET deny:<sid> PX ttl` + `PUBLISH`). If Redis is down at that moment, the
//! other instances' subscriptions are down too (their caches are off and they ask the
//! database), and this instance writes its local deny-list back to Redis when Redis
//! returns.
//!
//! Rate limits are fixed windows: `INCR` + `PEXPIRE` in one script on Redis, a map in
//! memory otherwise. A request over the limit answers 429 with `Retry-After` = the rest
//! of the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::redis::RedisLink;
use crate::config::RateLimit;
use crate::domain::user::User;

/// How long a session read from the database is trusted without asking again.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most sessions cached; past that the cache is emptied (it refills from the database).
const SESSION_CACHE_MAX: usize = 100_000;
/// Most rate-limit windows kept in memory; past that, expired ones are dropped, and if
/// none are, the map is emptied.
const LOCAL_WINDOWS_MAX: usize = 100_000;
/// How often Redis is pinged (and a lost subscription retried).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What `/readyz` says of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisStatus {
    /// Not configured: one instance, in-process state.
    Disabled,
    Ok,
    /// Configured but unreachable: the service works on, with the fall-backs.
    Degraded,
}

impl RedisStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Ok => "ok",
            Self::Degraded => "degraded",
        }
    }
}

/// Which rate limit a hit counts against.
#[derive(Debug, Clone, Copy)]
pub enum LimitKind {
    LoginIp,
    LoginAccount,
    RefreshFamily,
}

impl LimitKind {
    fn tag(self) -> &'static str {
        match self {
            Self::LoginIp => "login-ip",
            Self::LoginAccount => "login-account",
            Self::RefreshFamily => "refresh-family",
        }
    }
}

/// A cache token: a session read from the database may be cached only if no
/// (re)subscription happened since the read began.
#[derive(Debug, Clone, Copy)]
pub struct CacheEpoch(u64);

struct CachedSession {
    user: User,
    until: Instant,
}

/// The deny-list, session cache and rate limits of this process, backed by Redis when
/// configured.
pub struct SharedState {
    redis: Option<RedisLink>,
    deny_ttl: Duration,
    denied: Mutex<HashMap<Uuid, Instant>>,
    sessions: Mutex<HashMap<Uuid, CachedSession>>,
    windows: Mutex<HashMap<String, (u64, Instant)>>,
    subscribed: AtomicBool,
    epoch: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedState {
    /// `deny_ttl`: how long a revoked family's access tokens may still be presented
    /// (the access-token lifetime plus the clock leeway).
    pub fn new(redis: Option<RedisLink>, deny_ttl: Duration) -> Self {
        Self {
            redis,
            deny_ttl,
            denied: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    /// Starts the Redis health check and the revocation subscriber (nothing without
    /// Redis).
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        if self.redis.is_none() {
            return Vec::new();
        }
        let health = Arc::clone(self);
        let events = Arc::clone(self);
        vec![
            tokio::spawn(async move { health.watch_health().await }),
            tokio::spawn(async move { events.follow_revocations().await }),
        ]
    }

    pub fn redis_status(&self) -> RedisStatus {
        match &self.redis {
            None => RedisStatus::Disabled,
            Some(link) if link.healthy() => RedisStatus::Ok,
            Some(_) => RedisStatus::Degraded,
        }
    }

    fn live_redis(&self) -> Option<&RedisLink> {
        self.redis.as_ref().filter(|link| link.healthy())
    }

    /// Announces a family revoked in the database: every instance refuses its access
    /// tokens from now on.
    pub async fn revoked(&self, sid: Uuid) {
        self.deny_locally(sid, Instant::now() + self.deny_ttl);
        if let Some(link) = self.live_redis()
            && !link.deny(sid, self.deny_ttl).await
        {
            tracing::warn!(%sid, "revocation not announced on redis; it will be when redis is back");
        }
    }

    fn deny_locally(&self, sid: Uuid, until: Instant) {
        let now = Instant::now();
        let mut denied = lock(&self.denied);
        if denied.len() >= SESSION_CACHE_MAX {
            denied.retain(|_, until| *until > now);
        }
        denied.insert(sid, until);
        drop(denied);
        lock(&self.sessions).remove(&sid);
    }

    /// Whether this instance knows `sid` is revoked (step 1).
    pub fn denied_locally(&self, sid: Uuid) -> bool {
        lock(&self.denied)
            .get(&sid)
            .is_some_and(|until| *until > Instant::now())
    }

    /// A live session read from the database a moment ago (step 3).
    pub fn cached_session(&self, sid: Uuid) -> Option<User> {
        if !self.subscribed.load(Ordering::Acquire) {
            return None;
        }
        let sessions = lock(&self.sessions);
        let cached = sessions.get(&sid)?;
        (cached.until > Instant::now()).then(|| cached.user.clone())
    }

    /// Whether Redis has `sid` on its deny-list (step 2); `None` when Redis is off or
    /// down: then the session cache is not trusted either, and the database decides.
    pub async fn denied_in_redis(&self, sid: Uuid) -> Option<bool> {
        match self.live_redis() {
            Some(link) => link.is_denied(sid).await,
            None => None,
        }
    }

    /// Taken before reading a session from the database, handed to `remember_session`.
    pub fn cache_epoch(&self) -> CacheEpoch {
        CacheEpoch(self.epoch.load(Ordering::Acquire))
    }

    /// Caches a session the database found live, unless a revocation announcement may
    /// have been missed since `epoch`.
    pub fn remember_session(&self, sid: Uuid, user: &User, epoch: CacheEpoch) {
        if !self.subscribed.load(Ordering::Acquire) {
            return;
        }
        let mut sessions = lock(&self.sessions);
        if self.epoch.load(Ordering::Acquire) != epoch.0 || self.denied_locally(sid) {
            return;
        }
        if sessions.len() >= SESSION_CACHE_MAX {
            sessions.clear();
        }
        sessions.insert(
            sid,
            CachedSession {
                user: user.clone(),
                until: Instant::now() + SESSION_CACHE_TTL,
            },
        );
    }

    fn forget_sessions(&self) {
        let mut sessions = lock(&self.sessions);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        sessions.clear();
    }

    /// Counts a hit against `limit` for `subject` (an IP, an e-mail, a family id).
    /// `Err(retry_after)` when over the limit.
    pub async fn hit(
        &self,
        kind: LimitKind,
        subject: &str,
        limit: RateLimit,
    ) -> Result<(), Duration> {
        let key = format!("rl:{}:{}", kind.tag(), hashed(subject));
        let counted = match self.live_redis() {
            Some(link) => link.hit(&key, limit.window).await,
            None => None,
        };
        let (count, left) = counted.unwrap_or_else(|| self.hit_locally(key, limit.window));
        if count > u64::from(limit.max) {
            Err(left.max(Duration::from_secs(1)))
        } else {
            Ok(())
        }
    }

    fn hit_locally(&self, key: String, window: Duration) -> (u64, Duration) {
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        if windows.len() >= LOCAL_WINDOWS_MAX && !windows.contains_key(&key) {
            windows.retain(|_, (_, end)| *end > now);
            if windows.len() >= LOCAL_WINDOWS_MAX {
                windows.clear();
            }
        }
        let entry = windows.entry(key).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        (entry.0, entry.1 - now)
    }

    /// Pings Redis every second. When it comes back, this instance's own recent
    /// revocations are written to it again (one may have failed while it was down).
    async fn watch_health(self: Arc<Self>) {
        let Some(link) = &self.redis else { return };
        let mut every = tokio::time::interval(HEALTH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = false;
        loop {
            every.tick().await;
            let healthy = link.ping().await;
            if healthy && !was_healthy {
                self.republish(link).await;
            }
            was_healthy = healthy;
        }
    }

    async fn republish(&self, link: &RedisLink) {
        let now = Instant::now();
        let pending: Vec<(Uuid, Duration)> = lock(&self.denied)
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(sid, until)| (*sid, *until - now))
            .collect();
        for (sid, ttl) in pending {
            if !link.deny(sid, ttl).await {
                return;
            }
        }
    }

    /// Follows the revocation channel; while subscribed, the session cache is on.
    async fn follow_revocations(self: Arc<Self>) {
        let Some(link) = &self.redis else { return };
        loop {
            if let Some(pubsub) = link.subscribe().await {
                self.forget_sessions();
                self.subscribed.store(true, Ordering::Release);
                tracing::debug!("subscribed to revocation events");
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                let sid = std::str::from_utf8(message.get_payload_bytes())
                                    .ok()
                                    .and_then(|s| Uuid::parse_str(s).ok());
                                if let Some(sid) = sid {
                                    self.deny_locally(sid, Instant::now() + self.deny_ttl);
                                }
                            }
                            None => break,
                        },
                        () = tokio::time::sleep(HEALTH_INTERVAL) => {
                            if !link.healthy() {
                                break;
                            }
                        }
                    }
                }
                self.subscribed.store(false, Ordering::Release);
                self.forget_sessions();
                tracing::debug!("revocation events lost; session cache off");
            }
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
    }
}

/// A short digest of a rate-limit subject: no IP or e-mail address is stored as such.
fn hashed(subject: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limits_count_per_subject_and_window() {
        let shared = SharedState::new(None, Duration::from_secs(60));
        let limit = RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        };
        assert!(
            shared
                .hit(LimitKind::LoginIp, "10.0.0.1", limit)
                .await
                .is_ok()
        );
        assert!(
            shared
                .hit(LimitKind::LoginIp, "10.0.0.1", limit)
                .await
                .is_ok()
        );
        let retry = shared
            .hit(LimitKind::LoginIp, "10.0.0.1", limit)
            .await
            .unwrap_err();
        assert!(retry > Duration::from_secs(58) && retry <= Duration::from_secs(60));
        assert!(
            shared
                .hit(LimitKind::LoginIp, "10.0.0.2", limit)
                .await
                .is_ok()
        );
        assert!(
            shared
                .hit(LimitKind::LoginAccount, "10.0.0.1", limit)
                .await
                .is_ok()
        );
    }

    #[test]
    fn without_redis_nothing_is_cached_and_revocations_are_known_locally() {
        let shared = SharedState::new(None, Duration::from_secs(60));
        let sid = Uuid::new_v4();
        let user = User {
            id: Uuid::new_v4(),
            email: "a@example.com".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        shared.remember_session(sid, &user, shared.cache_epoch());
        assert!(shared.cached_session(sid).is_none());
        assert!(!shared.denied_locally(sid));
        shared.deny_locally(sid, Instant::now() + Duration::from_secs(60));
        assert!(shared.denied_locally(sid));
        assert_eq!(shared.redis_status(), RedisStatus::Disabled);
    }
}
