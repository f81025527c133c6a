//! The fast shared state: the session deny-list, a cache of live sessions, and rate
//! limits. With Redis configured, it is shared by every instance; without Redis (or
//! while Redis is down) an in-process version serves this instance alone.
//!
//! How an access token's session is checked (`Issuer::authenticate`):
//! 1. the local deny-list (families revoked by this instance or announced on the
//!    revocation channel) and the local revocation epochs (`epochs`: an access token
//!    issued before the epoch of its client, or of every client): refused;
//! 2. the Redis deny-list and epochs (`EXISTS deny:<sid>`, `GET epoch:*`, `GET
//!    epoch:<client>`, one round trip): refused. The revoking instance writes them
//!    before it answers, so every instance refuses at once;
//! 3. the session cache, only when step 2 answered: a session the database found live
//!    in the last `SESSION_CACHE_TTL` (5 s) is live. It is used only while this
//!    instance is subscribed to the revocation channel, and emptied whenever the
//!    subscription is lost or restored;
//! 4. the database, which is authoritative: with Redis down, every check ends here.
//!
//! Without Redis the process is taken to be the only instance: its own deny-list sees
//! every revocation, so the session cache is on. Several instances without Redis would
//! see each other's revocations only through the database, up to `SESSION_CACHE_TTL`
//! late: run several instances with Redis.
//!
//! A revocation is written to the database, then to the local deny-list, then to
//! Redis (`SET deny:<sid> PX ttl` + `PUBLISH`), in a task of its own so that a client
//! hanging up cannot cut it short; a repeated revocation (a retry after a timeout) is
//! announced again. When the Redis write fails, or Redis comes back after being away,
//! or at start, the deny-list is rebuilt from the database (every family revoked
//! within the last access-token lifetime), so a revocation is never lost. The one
//! window left: an instance that cannot reach Redis while the others can has its
//! revocations refused by them through step 2 only once Redis is reachable again;
//! until then they may answer from their session cache for at most
//! `SESSION_CACHE_TTL`.
//!
//! Rate limits are fixed windows: `INCR` + `PEXPIRE` in one script on Redis, a map in
//! memory otherwise. A request over the limit answers 429 with `Retry-After` = the rest
//! of the window, and is not counted (so a hit given back after a burst brings the
//! count under the limit again). Clients are counted per source (an IPv4 address, an
//! IPv6 /64: `domain::address`). Subjects are hashed before they become keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use uuid::Uuid;

mod epochs;
mod limits;

pub use epochs::Epochs;
use limits::{Counted, LocalLimits, limit_key, over};
pub use limits::{LimitKind, RateLimit, Taken};

use super::Store;
use super::redis::RedisLink;
use crate::domain::clock::Throttle;
use crate::domain::user::User;

/// How long a session read from the database is trusted without asking it again.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most sessions cached, and most revoked sessions remembered locally; past that the
/// cache is emptied (it refills from the database) and expired denials are dropped.
const CACHE_MAX: usize = 100_000;
/// The most DPoP proofs one process remembers (each for `dpop::replay_ttl`, two
/// minutes with the default leeway): 1,000,000 is over 8,000 proofs a second, about
/// what two cores can sign access tokens for. An entry is 16 bytes of hash and an
/// `Instant`: about 40 MB when full.
const PROOFS_MAX: usize = 1_000_000;
/// The in-process list's key of a proof's replay id: 128 bits of its SHA-256.
fn proof_key(id: &str) -> u128 {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_le_bytes(first)
}

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
    redis: Option<Arc<RedisLink>>,
    store: Arc<dyn Store>,
    deny_ttl: Duration,
    denied: Mutex<HashMap<Uuid, Instant>>,
    sessions: Mutex<HashMap<Uuid, CachedSession>>,
    /// The rate limits counted in this process (without Redis, or while it is down).
    local: LocalLimits,
    subscribed: AtomicBool,
    epoch: AtomicU64,
    /// The Redis deny-list may miss a revocation: rebuild it from the database.
    rebuild_pending: AtomicBool,
    /// The revocation epochs in force.
    epochs: Epochs,
    /// Another process announced a change of the key files.
    keys_changed: tokio::sync::Notify,
    /// DPoP proofs seen by this process (without Redis, or while it is down), until
    /// when.
    proofs: Mutex<HashMap<u128, Instant>>,
    /// How often a full list of proofs may be scanned for expired ones.
    proofs_prune: Throttle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedState {
    /// `deny_ttl`: how long a revoked family's access tokens may still be presented
    /// (the access-token lifetime plus the clock leeway). `store` is read to rebuild
    /// the Redis deny-list.
    pub fn new(redis: Option<RedisLink>, store: Arc<dyn Store>, deny_ttl: Duration) -> Self {
        Self {
            subscribed: AtomicBool::new(redis.is_none()),
            redis: redis.map(Arc::new),
            store,
            deny_ttl,
            denied: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            local: LocalLimits::new(),
            epoch: AtomicU64::new(0),
            rebuild_pending: AtomicBool::new(true),
            epochs: Epochs::default(),
            keys_changed: tokio::sync::Notify::new(),
            proofs: Mutex::new(HashMap::new()),
            proofs_prune: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Starts the Redis health check (which also rebuilds the deny-list) and the
    /// revocation subscriber (nothing without Redis).
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
        self.redis.as_deref().filter(|link| link.healthy())
    }

    /// Announces a family revoked in the database (now or before: announcing twice is
    /// harmless): every instance refuses its access tokens from now on.
    pub async fn revoked(&self, sid: Uuid) {
        self.deny_locally(sid, self.deny_ttl);
        let Some(link) = &self.redis else { return };
        // Tried even when the last call failed; in a task of its own, so a request
        // cancelled here (the client hung up) still completes the announcement.
        let link = Arc::clone(link);
        let ttl = self.deny_ttl;
        let announced = tokio::spawn(async move { link.deny(sid, ttl).await }).await;
        if !matches!(announced, Ok(true)) {
            self.rebuild_pending.store(true, Ordering::Release);
            tracing::warn!(%sid, "revocation not written to redis; the deny-list is rebuilt from the database when redis answers");
        }
    }

    /// Announces several revocations in a task of its own: a client hanging up halfway
    /// cannot leave some of them unannounced.
    pub async fn revoked_all(self: &Arc<Self>, sids: Vec<Uuid>) {
        if sids.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        let done = tokio::spawn(async move {
            for sid in sids {
                shared.revoked(sid).await;
            }
        })
        .await;
        if done.is_err() {
            self.rebuild_pending.store(true, Ordering::Release);
        }
    }

    /// Remembers `sid` as revoked for `ttl` (at most the deny TTL); an existing entry
    /// is never lengthened.
    fn deny_locally(&self, sid: Uuid, ttl: Duration) {
        let now = Instant::now();
        let until = now + ttl.min(self.deny_ttl);
        let mut denied = lock(&self.denied);
        let mut cleared = false;
        if denied.len() >= CACHE_MAX {
            denied.retain(|_, until| *until > now);
            // Still full of live entries: start over rather than scan on every insert.
            // The sessions cached as live go too (and a database read in flight is not
            // cached), so nothing forgotten here is served from the cache; Redis or
            // the database answer for the rest.
            if denied.len() >= CACHE_MAX / 2 {
                denied.clear();
                cleared = true;
            }
        }
        denied.entry(sid).or_insert(until);
        drop(denied);
        if cleared {
            self.forget_sessions();
        } else {
            lock(&self.sessions).remove(&sid);
        }
    }

    /// Whether this instance knows `sid` is revoked (step 1).
    pub fn denied_locally(&self, sid: Uuid) -> bool {
        lock(&self.denied)
            .get(&sid)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Whether Redis has `sid` on its deny-list, or an epoch of Redis refuses a token
    /// of `client_id` issued at `iat` (step 2, one round trip; the epochs read are kept
    /// locally too); `None` when Redis is down: then the session cache is not trusted
    /// either, and the database decides. Without Redis, `Some(false)`: the local
    /// deny-list and epochs (step 1) were the whole lists.
    pub async fn refused_in_redis(&self, sid: Uuid, client_id: &str, iat: i64) -> Option<bool> {
        match (&self.redis, self.live_redis()) {
            (None, _) => Some(false),
            (Some(_), Some(link)) => {
                let (denied, every, own) = link.check(sid, client_id).await?;
                for (scope, not_before) in [("*", every), (client_id, own)] {
                    if let Some(t) = not_before
                        && self.epochs.merge_one(scope, t)
                    {
                        self.forget_sessions();
                    }
                }
                Some(denied || self.epochs.refuses(client_id, iat))
            }
            (Some(_), None) => None,
        }
    }

    /// The revocation epochs this instance knows.
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Takes in the epochs read from the database; a session cached as live may have
    /// ended when one rose.
    pub fn merge_epochs(&self, epochs: &[crate::store::Epoch]) {
        if self.epochs.merge(epochs) {
            self.forget_sessions();
        }
    }

    /// Takes in an epoch just written to the database, empties the session cache, and
    /// announces it through Redis (`epoch:<scope>`, kept as long as an access token it
    /// refuses can live, and a message on the revocation channel), in a task of its
    /// own. Without Redis, or when it fails, other instances read it from the database
    /// within `incident::EPOCH_RELOAD`.
    pub async fn announce_epoch(&self, scope: &str, not_before: i64) {
        self.epochs.merge_one(scope, not_before);
        self.forget_sessions();
        let Some(link) = &self.redis else { return };
        let (link, scope, ttl) = (Arc::clone(link), scope.to_owned(), self.deny_ttl);
        let announced =
            tokio::spawn(async move { link.set_epoch(&scope, not_before, ttl).await }).await;
        if !matches!(announced, Ok(true)) {
            tracing::warn!(
                "revocation epoch not written to redis; other instances read it from the database within seconds"
            );
        }
    }

    /// Records the DPoP proof `id` (a hash of its key and `jti`) as used for `ttl`:
    /// `Some(true)` the first time, `Some(false)` for a replay; in this process, and
    /// across instances through Redis (`SET NX`) when it answers (while it does not,
    /// a replay on another instance goes unseen). `None` when this process holds
    /// `PROOFS_MAX` live proofs already: refused rather than forgotten.
    pub async fn first_use_of_proof(&self, id: &str, ttl: Duration) -> Option<bool> {
        // In this process always (a proof Redis took stays refused here if Redis goes
        // away), then in Redis.
        {
            let now = Instant::now();
            let mut proofs = lock(&self.proofs);
            if proofs.len() >= PROOFS_MAX {
                // At most one scan a second, however many requests find it full.
                if self.proofs_prune.ready() {
                    proofs.retain(|_, until| *until > now);
                }
                if proofs.len() >= PROOFS_MAX {
                    return None;
                }
            }
            let key = proof_key(id);
            if proofs.get(&key).is_some_and(|until| *until > now) {
                return Some(false);
            }
            proofs.insert(key, now + ttl);
        }
        match self.live_redis() {
            Some(link) => Some(
                link.set_once(&format!("dpop:{id}"), ttl)
                    .await
                    .unwrap_or(true),
            ),
            None => Some(true),
        }
    }

    /// Resolves when another process announced a change of the key files (never
    /// without Redis).
    pub async fn keys_announced(&self) {
        self.keys_changed.notified().await;
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

    /// Taken before reading a session from the database, handed to `remember_session`.
    pub fn cache_epoch(&self) -> CacheEpoch {
        CacheEpoch(self.epoch.load(Ordering::Acquire))
    }

    /// Caches a session the database found live, unless a revocation announcement may
    /// have been missed since `epoch`.
    pub fn remember_session(&self, sid: Uuid, user: &User, epoch: CacheEpoch) {
        if !self.subscribed.load(Ordering::Acquire) || self.denied_locally(sid) {
            return;
        }
        let mut sessions = lock(&self.sessions);
        if self.epoch.load(Ordering::Acquire) != epoch.0 {
            return;
        }
        if sessions.len() >= CACHE_MAX {
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
        self.take(kind, subject, limit).await.map(drop)
    }

    /// Takes one from `subject`'s budget, atomically: however many requests arrive at
    /// once, at most `limit.max` get `Ok` in a window. The `Taken` can be given back
    /// (`give_back`) when the attempt turned out not to count (a right password).
    pub async fn take(
        &self,
        kind: LimitKind,
        subject: &str,
        limit: RateLimit,
    ) -> Result<Taken, Duration> {
        let key = limit_key(kind, subject);
        let counted = match self.live_redis() {
            Some(link) => link.hit(&key, limit.window, limit.max).await,
            None => None,
        };
        let (count, left, where_) = match counted {
            Some((count, left)) => (
                count,
                left,
                Counted::OnRedis {
                    at: Instant::now(),
                    left,
                },
            ),
            None => {
                let (count, left, end) = self.local.count(kind, &key, limit)?;
                (count, left, Counted::Locally(end))
            }
        };
        over(count, left, limit)?;
        Ok(Taken { kind, key, where_ })
    }

    /// Gives back what `take` took, where it took it (Redis or this process), if its
    /// window is still the same: a give-back never lands in a later window.
    pub async fn give_back(&self, taken: Taken) {
        match taken.where_ {
            Counted::OnRedis { at, left } => {
                if let Some(link) = &self.redis {
                    link.give_back(&taken.key, left.saturating_sub(at.elapsed()))
                        .await;
                }
            }
            Counted::Locally(end) => self.local.give_back(taken.kind, &taken.key, end),
        }
    }

    /// Pings Redis every second; rebuilds the deny-list from the database when Redis
    /// answers after being away, at start, and after a failed announcement.
    async fn watch_health(self: Arc<Self>) {
        let Some(link) = self.redis.clone() else {
            return;
        };
        let mut every = tokio::time::interval(HEALTH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let was_healthy = link.healthy();
            if !link.ping().await {
                continue;
            }
            let pending = self.rebuild_pending.swap(false, Ordering::AcqRel);
            if (pending || !was_healthy)
                && let Err(e) = self.rebuild_deny_list(&link).await
            {
                self.rebuild_pending.store(true, Ordering::Release);
                tracing::warn!(error = %e, "rebuilding the redis deny-list failed; retrying");
            }
        }
    }

    /// Writes every family revoked within the deny TTL to Redis, with what is left of
    /// its TTL.
    async fn rebuild_deny_list(&self, link: &RedisLink) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let since = now - self.deny_ttl;
        let revoked = self
            .store
            .revoked_since(since)
            .await
            .map_err(|e| e.to_string())?;
        for (sid, at) in &revoked {
            let left = Duration::try_from(*at + self.deny_ttl - now)
                .unwrap_or(Duration::from_millis(1))
                .clamp(Duration::from_millis(1), self.deny_ttl);
            if !link.deny(*sid, left).await {
                return Err("redis did not answer".into());
            }
        }
        if !revoked.is_empty() {
            tracing::info!(
                families = revoked.len(),
                "redis deny-list rebuilt from the database"
            );
        }
        Ok(())
    }

    /// Follows the revocation channel; while subscribed, the session cache is on.
    async fn follow_revocations(self: Arc<Self>) {
        let Some(link) = self.redis.clone() else {
            return;
        };
        loop {
            if let Some(pubsub) = link.subscribe().await {
                self.forget_sessions();
                self.subscribed.store(true, Ordering::Release);
                tracing::debug!("subscribed to revocation events");
                let mut messages = pubsub.into_on_message();
                let mut check = tokio::time::interval(HEALTH_INTERVAL);
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload = message.get_payload_bytes();
                                if let Some((sid, ttl)) = parse_announcement(payload) {
                                    self.deny_locally(sid, ttl);
                                } else if let Some((scope, not_before)) = parse_epoch(payload) {
                                    self.epochs.merge_one(&scope, not_before);
                                    self.forget_sessions();
                                } else if payload == crate::store::redis::KEYS_CHANGED.as_bytes() {
                                    self.keys_changed.notify_one();
                                }
                            }
                            None => break,
                        },
                        _ = check.tick() => {
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

/// `epoch <not_before> <scope>`.
fn parse_epoch(payload: &[u8]) -> Option<(String, i64)> {
    let rest = std::str::from_utf8(payload).ok()?.strip_prefix("epoch ")?;
    let (not_before, scope) = rest.split_once(' ')?;
    Some((scope.to_owned(), not_before.parse().ok()?))
}

/// `<sid>:<ttl ms>`.
fn parse_announcement(payload: &[u8]) -> Option<(Uuid, Duration)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (sid, ttl) = text.split_once(':')?;
    Some((
        Uuid::parse_str(sid).ok()?,
        Duration::from_millis(ttl.parse().ok()?),
    ))
}

#[cfg(test)]
mod tests;
