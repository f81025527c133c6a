//! The use cases. `Issuer` holds everything they need, built once at start-up.

pub mod access;
pub mod admin;
pub mod attempts;
pub mod authorize;
pub mod browser;
mod client_credentials;
mod client_keys;
mod code_grant;
mod consents;
pub mod dpop;
pub mod incident;
pub mod introspect;
pub mod keys;
mod request;
mod revoke;
pub mod sessions;
pub mod sweep;
pub mod tokens;
pub mod users;

use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::dpop::Nonces;
use crate::crypto::jwt::Verifier;
use crate::crypto::keys::{KeySet, Keys};
use crate::crypto::password::{HashingSettings, PasswordHasher};
use crate::crypto::refresh::{Opened, RefreshKeys};
use crate::domain::client::Client;
use crate::domain::clock::Clock;
use crate::domain::error::Error;
use crate::domain::family::RefreshPolicy;
use crate::domain::secret::Secret;
use crate::metrics::{Gauges, Metrics};
use crate::store::shared::{RateLimit, RedisStatus, SharedState};
use crate::store::{Store, TokenRef};

/// Rate limits; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Password grants per client IP.
    pub login_per_ip: Option<RateLimit>,
    /// Password grants per account (e-mail address, known or not).
    pub login_per_account: Option<RateLimit>,
    /// Refresh grants per session (family).
    pub refresh_per_family: Option<RateLimit>,
    /// Registrations per client IP (IPv6 per /64): an e-mail address that is taken
    /// answers 409, so registration is an oracle of who has an account; and each one
    /// costs a password hash.
    pub register_per_ip: Option<RateLimit>,
    /// Client-credentials grants per `service` client.
    pub client_credentials: Option<RateLimit>,
    /// Authorization code exchanges per client IP (each starts a session).
    pub code_exchange_per_ip: Option<RateLimit>,
}

/// What the issuer is configured with (`config` builds it from the settings).
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `iss`; no trailing slash.
    pub issuer_url: String,
    /// The audience our own endpoints require.
    pub audience: String,
    pub clock_leeway: std::time::Duration,
    pub hashing: HashingSettings,
    pub limits: RateLimits,
    pub clients: Vec<Client>,
    /// The session rules of the defaults (clients may override them).
    pub policy: RefreshPolicy,
    pub allow_registration: bool,
    pub key_rotation_interval: Option<std::time::Duration>,
    pub audit_retention: std::time::Duration,
    /// The hosted pages and the browser's sign-in session.
    pub sign_in: browser::SignInSettings,
}

impl IssuerSettings {
    /// The widest rules of the defaults and of any client: a session ends for good
    /// only when it has ended under every client's rules.
    pub fn widest_policy(&self) -> RefreshPolicy {
        let sign_in = self.sign_in.policy();
        RefreshPolicy::widest(
            [&self.policy, &sign_in]
                .into_iter()
                .chain(self.clients.iter().map(|c| &c.policy)),
        )
        .unwrap_or(self.policy)
    }
}

/// The server's MAC keys, shared by every instance through the key directory.
pub struct MacKeys {
    /// What mints and opens refresh tokens.
    pub refresh: RefreshKeys,
    /// What mints and checks DPoP nonces (`dpop-nonce.key`).
    pub dpop_nonces: Nonces,
    /// The anti-CSRF fields of the hosted forms (derived from the same key).
    pub forms: crate::crypto::forms::FormTokens,
}

/// The issuer: configuration, keys, store and clock.
pub struct Issuer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) limits: RateLimits,
    pub(crate) keys: Arc<Keys>,
    pub(crate) verifier: Verifier,
    pub(crate) hasher: PasswordHasher,
    pub(crate) refresh_keys: RefreshKeys,
    /// The DPoP nonces (RFC 9449 §8) of clients that require them.
    pub(crate) dpop_nonces: Nonces,
    pub(crate) forms: crate::crypto::forms::FormTokens,
    pub(crate) sign_in: browser::SignInSettings,
    /// The fetched JWK Sets of `private_key_jwt` clients with a `jwks_uri`.
    pub(crate) remote_keys: client_keys::RemoteKeySets,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) clients: HashMap<String, Client>,
    /// The default session rules (clients may override them).
    pub(crate) policy: RefreshPolicy,
    /// The widest rules of any client: what the sweeper and the store's lists use.
    pub(crate) widest_policy: RefreshPolicy,
    pub(crate) issuer_url: String,
    pub(crate) audience: String,
    /// The clock leeway (DPoP proofs' `iat`).
    pub(crate) clock_leeway: std::time::Duration,
    pub(crate) allow_registration: bool,
    pub(crate) key_rotation_interval: Option<std::time::Duration>,
    /// How long audit events are kept.
    pub(crate) audit_retention: std::time::Duration,
    /// The active-sessions gauge and when it was counted: a scrape counts at most
    /// every `GAUGE_TTL`, so `/metrics` cannot be used to load the database.
    active_families: tokio::sync::Mutex<Option<(std::time::Instant, Option<u64>)>>,
    /// Held while a sweep runs.
    sweeping: tokio::sync::Mutex<()>,
    /// Whether the last re-read of the key files failed.
    pub(crate) key_reads: keys::KeyReads,
}

/// How long the active-sessions count is reused.
const GAUGE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

impl Issuer {
    /// What the store looks a presented refresh token up by: a minted token whose MAC
    /// verifies, by its family and generation; one of the earlier format, by its hash.
    /// `None`: not a token of ours (too long, malformed, forged).
    pub(crate) fn refresh_ref(&self, token: &Secret) -> Option<TokenRef> {
        if token.expose().len() > crate::crypto::refresh::MAX_TOKEN_LEN {
            return None;
        }
        match self.refresh_keys.open(token) {
            Opened::Minted(m) => Some(TokenRef::Minted {
                family: m.family,
                generation: m.generation,
            }),
            Opened::Legacy(hash) => Some(TokenRef::Legacy(hash)),
            Opened::Invalid => {
                // The shape of ours, and yet not ours: a forgery, or an instance with
                // another `refresh-hmac.key`.
                if token.expose().len() == crate::crypto::refresh::MINTED_CHARS {
                    tracing::warn!(target: "security", event = "refresh_token_forged", "a refresh token of our format whose MAC does not verify");
                }
                None
            }
            Opened::UnknownKey => {
                tracing::info!(target: "security", event = "refresh_token_of_unknown_key", "a refresh token of a key this instance does not hold (rotated away, or another deployment's)");
                None
            }
        }
    }

    pub fn new(
        settings: IssuerSettings,
        store: Arc<dyn Store>,
        shared: Arc<SharedState>,
        keys: Arc<Keys>,
        secrets: MacKeys,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let widest_policy = settings.widest_policy();
        Ok(Self {
            verifier: Verifier::new(
                Arc::clone(&keys),
                settings.issuer_url.clone(),
                settings.clock_leeway.as_secs(),
            ),
            hasher: PasswordHasher::new(settings.hashing)?,
            store,
            metrics,
            shared,
            limits: settings.limits,
            keys,
            refresh_keys: secrets.refresh,
            dpop_nonces: secrets.dpop_nonces,
            forms: secrets.forms,
            remote_keys: client_keys::RemoteKeySets::new(settings.clients.iter()),
            sign_in: settings.sign_in,
            clock,
            clients: settings
                .clients
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            policy: settings.policy,
            widest_policy,
            issuer_url: settings.issuer_url,
            audience: settings.audience,
            clock_leeway: settings.clock_leeway,
            allow_registration: settings.allow_registration,
            key_rotation_interval: settings.key_rotation_interval,
            audit_retention: settings.audit_retention,
            active_families: tokio::sync::Mutex::new(None),
            sweeping: tokio::sync::Mutex::new(()),
            key_reads: keys::KeyReads::default(),
        })
    }

    /// Now, to the millisecond: the precision both stores keep, so that what is written
    /// and what is compared or answered agree.
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        let now = self.clock.now();
        now.replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
            .unwrap_or(now)
    }

    /// The published keys (with the set's ETag) as of now: the ring is re-read first
    /// (at most every `RELOAD_SOON`), so that a verifier refetching on the `kid` of a
    /// key made a moment ago elsewhere (an emergency roll) gets it from any instance.
    pub fn jwks(&self) -> Arc<KeySet> {
        self.keys.reload_soon(self.now().unix_timestamp());
        self.keys.current()
    }

    /// Every scope some client may request, sorted.
    pub fn scopes_supported(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .clients
            .values()
            .flat_map(|c| c.scopes.iter().cloned())
            .collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// The issuer identifier (`iss`).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// Deletes what has ended (`sweep::run`): sessions that ended more than
    /// `SWEEP_MARGIN` ago, old audit events, forgotten login sources.
    pub async fn sweep(&self) -> Result<u64, Error> {
        Ok(self.sweep_now().await?.sessions)
    }

    /// One sweep at a time in this instance: the hourly one and the admin's.
    pub(crate) async fn sweep_now(&self) -> Result<sweep::Swept, Error> {
        let _one = self.sweeping.lock().await;
        sweep::run(
            self.store.as_ref(),
            &self.widest_policy,
            self.audit_retention,
            self.now(),
        )
        .await
    }

    /// Readiness: the database answers.
    pub async fn ready(&self) -> Result<(), Error> {
        self.store.ping().await.map_err(Error::from)
    }

    /// The session rules of the client a family belongs to.
    pub(crate) fn policy_of(&self, client_id: &str) -> RefreshPolicy {
        if client_id == browser::SIGN_IN_CLIENT {
            return self.sign_in.policy();
        }
        self.clients
            .get(client_id)
            .map_or(self.policy, |c| c.policy)
    }

    /// A request refused by a rate limit: counted, then answered 429.
    pub(crate) fn rate_limited(&self, wait: std::time::Duration) -> Error {
        self.metrics.rate_limited.inc();
        Error::RateLimited(wait)
    }

    /// Counts the sessions ended for `reason`.
    pub(crate) fn count_revoked(
        &self,
        reason: crate::domain::family::RevokeReason,
        sessions: usize,
    ) {
        for _ in 0..sessions {
            self.metrics.revoked(reason.code());
        }
    }

    /// The counters, for the HTTP layer to count requests.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// `/metrics`: the counters and the gauges read now.
    pub async fn render_metrics(&self) -> String {
        let active_families = {
            let mut cached = self.active_families.lock().await;
            match *cached {
                Some((at, count)) if at.elapsed() < GAUGE_TTL => count,
                _ => {
                    // The widest client rules: an upper bound when clients differ.
                    let count = self
                        .store
                        .count_live_families(&self.widest_policy, self.now())
                        .await
                        .ok();
                    *cached = Some((std::time::Instant::now(), count));
                    count
                }
            }
        };
        let redis_up = match self.shared.redis_status() {
            RedisStatus::Disabled => None,
            RedisStatus::Ok => Some(1),
            RedisStatus::Degraded => Some(0),
        };
        self.count_key_changes();
        self.metrics.render(Gauges {
            active_families,
            argon2_queue_depth: self.hasher.queue_depth() as u64,
            argon2_queue_capacity: self.hasher.queue_capacity() as u64,
            redis_up,
            epochs: self.shared.epochs().snapshot(),
            jwks_max_age: self.keys.current().jwks_max_age().as_secs(),
            keys_stale: u64::from(self.key_reads.stale()),
        })
    }

    /// Redis: off, ok, or degraded (the service works on without it).
    pub fn redis_status(&self) -> RedisStatus {
        self.shared.redis_status()
    }
}
