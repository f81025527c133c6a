//! The use cases. `Issuer` holds everything they need, built once at start-up.

pub mod access;
pub mod admin;
pub mod introspect;
pub mod keys;
pub mod sessions;
pub mod tokens;
pub mod users;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::RateLimits;
use crate::config::Settings;
use crate::crypto::jwt::Verifier;
use crate::crypto::keys::{KeySet, Keys};
use crate::crypto::password::PasswordHasher;
use crate::crypto::refresh::SuccessorKey;
use crate::domain::client::Client;
use crate::domain::clock::Clock;
use crate::domain::family::RefreshPolicy;
use crate::error::Error;
use crate::store::Store;
use crate::store::shared::{RedisStatus, SharedState};

/// How long an ended session is kept before the sweeper deletes it.
pub const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The issuer: configuration, keys, store and clock.
pub struct Issuer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) limits: RateLimits,
    pub(crate) keys: Arc<Keys>,
    pub(crate) verifier: Verifier,
    pub(crate) hasher: PasswordHasher,
    pub(crate) successors: SuccessorKey,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) policy: RefreshPolicy,
    pub(crate) access_lifetime: std::time::Duration,
    pub(crate) issuer_url: String,
    pub(crate) audience: String,
    pub(crate) allow_registration: bool,
    pub(crate) key_rotation_interval: Option<std::time::Duration>,
}

impl Issuer {
    pub fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        shared: Arc<SharedState>,
        keys: Arc<Keys>,
        successors: SuccessorKey,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        Ok(Self {
            verifier: Verifier::new(
                Arc::clone(&keys),
                settings.issuer_url.clone(),
                settings.tokens.clock_leeway.as_secs(),
            ),
            hasher: PasswordHasher::new(settings.password_hashing)?,
            store,
            shared,
            limits: settings.limits,
            keys,
            successors,
            clock,
            clients: settings
                .clients
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            policy: RefreshPolicy {
                idle_timeout: settings.tokens.refresh_idle_timeout,
                absolute_lifetime: settings.tokens.refresh_absolute_lifetime,
                grace_period: settings.tokens.refresh_grace_period,
            },
            access_lifetime: settings.tokens.access_token_lifetime,
            issuer_url: settings.issuer_url.clone(),
            audience: settings.audience.clone(),
            allow_registration: settings.allow_registration,
            key_rotation_interval: settings.key_rotation_interval,
        })
    }

    /// Now, to the millisecond: the precision both stores keep, so that what is written
    /// and what is compared or answered agree.
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        let now = self.clock.now();
        now.replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
            .unwrap_or(now)
    }

    /// The published keys (with the set's ETag) as of now.
    pub fn jwks(&self) -> Arc<KeySet> {
        self.keys.current()
    }

    /// The issuer identifier (`iss`).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// Deletes the sessions that ended more than `SWEEP_MARGIN` ago (revoked, idle or
    /// past their absolute lifetime). Until then a token of theirs is still answered
    /// with the precise reason (`revoked`, `idle_timeout`, `expired`); after, `unknown`.
    /// Their access tokens are long expired by then.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let cutoff = self.now() - SWEEP_MARGIN;
        let deleted = self.store.sweep(&self.policy, cutoff).await?;
        if deleted > 0 {
            tracing::info!(deleted, "swept ended sessions");
        }
        Ok(deleted)
    }

    /// Readiness: the database answers.
    pub async fn ready(&self) -> Result<(), Error> {
        self.store.ping().await.map_err(Error::from)
    }

    /// Redis: off, ok, or degraded (the service works on without it).
    pub fn redis_status(&self) -> RedisStatus {
        self.shared.redis_status()
    }
}
