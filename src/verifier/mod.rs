//! Verifying token-issuer access tokens in a service (feature `verifier`).
//!
//! ```no_run
//! # async fn demo(bearer: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use token_issuer::verifier::{Verifier, VerifierConfig};
//!
//! // Once, at start-up: discovers the JWKS through the issuer's RFC 8414 metadata.
//! let verifier = Verifier::discover(VerifierConfig::new(
//!     "https://auth.example.com", // the issuer URL, exactly as in the tokens' `iss`
//!     "https://api.example.com",  // the audience this service accepts
//! ))
//! .await?;
//! // Per request: `Unauthorized` → 401 invalid_token, `Unavailable` → 503.
//! let claims = verifier.verify(bearer).await?;
//! println!("user {} in session {:?}", claims.sub, claims.sid);
//! # Ok(()) }
//! ```
//!
//! What it does, and why:
//! - **Discovery.** `{issuer}/.well-known/oauth-authorization-server` (RFC 8414); the
//!   document's `issuer` must equal the configured one (§3.3), then `jwks_uri` and
//!   `introspection_endpoint` are taken from it. A failure here fails start-up.
//! - **The issuer's own rules.** [`crate::crypto::jwt::check`] is the function the issuer
//!   runs on its own endpoints: `alg` pinned to RS256, `typ` `at+jwt`, `kid` looked up
//!   in our JWKS only (`jku`, `x5u`, `jwk` are never fetched), `iss`, `aud`, `exp`, `nbf`,
//!   `iat` and `sub` required and checked with a leeway of 30 s at most.
//! - **JWKS cache.** Kept for the response's `Cache-Control: max-age` (clamped to
//!   `max_cache_age`, 5 min by default, the issuer's own max-age), then revalidated with
//!   `If-None-Match` by one background task while requests go on with the keys they have
//!   (stale keys are still the issuer's keys). The issuer publishes a key before it signs
//!   with it for longer than that, so a rotation reaches a running verifier before the
//!   first token it signs.
//! - **Unknown `kid`.** The JWKS is fetched again at most once per `unknown_kid_interval`
//!   (30 s by default, at least 1 s) however many tokens name a key it does not know;
//!   concurrent requests wait for that one fetch, which runs in a task of its own (a
//!   caller that gives up does not cancel it). Forged `kid`s cannot turn the verifier
//!   into a fetch storm against the issuer.
//! - **Issuer unreachable.** A failed fetch keeps the keys it had and is retried after
//!   the shorter of the two intervals: tokens signed by known keys still verify. A token
//!   whose `kid` is unknown while the JWKS cannot be fetched is `Unavailable` (503), not
//!   `Unauthorized`: the client should retry, not throw its session away.
//! - **Transport.** The issuer must be `https://` (plain `http` only on loopback), and
//!   the introspection endpoint must be on the issuer's origin: the service's secret and
//!   the bearer tokens go nowhere else. Redirects are not followed.
//! - **DPoP (RFC 9449 §7).** A token with `cnf.jkt` is bound to its client's key:
//!   [`Verifier::verify`] (the `Bearer` scheme) refuses it, and
//!   [`Verifier::verify_dpop`] (the `DPoP` scheme) accepts it with exactly one proof
//!   that [`crate::crypto::dpop::check`] accepts for this request: `htm` the method,
//!   `htu` the service's public URL ([`VerifierConfig::dpop`]) plus the path (behind a
//!   proxy, the URL the client used), `iat` within 60 s plus the leeway, `ath` the
//!   token's hash, the key's thumbprint equal to `cnf.jkt`; then its `jti` is
//!   remembered for as long as the proof could be accepted (in memory, at most
//!   `max_proofs`; when that many live proofs are remembered, requests are
//!   `Unavailable` until some expire: fail closed, never forget one). A refused proof is
//!   [`VerifyError::InvalidProof`] (401 `DPoP error="invalid_dpop_proof"`); a proof of
//!   another key, or an unbound token under `DPoP`, is `Unauthorized`. Several
//!   replicas of a service each remember their own proofs: a proof replayed to another
//!   replica within its minute is not seen, and what it gets is that one request.
//! - **Revocation (optional).** Access tokens are stateless until they expire (5–15
//!   min). A service that must refuse a revoked session at once configures a `service`
//!   client ([`VerifierConfig::introspection`]): each token is then also checked at the
//!   RFC 7662 introspection endpoint, and the answer kept `cache_ttl` (5 s by default)
//!   per token. When the issuer cannot be asked, the request is `Unavailable` (fail
//!   closed), never silently accepted.

mod dpop;
mod web;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::crypto::jwt::{self, Expect, Rejected};
use crate::domain::claims::AccessClaims;
use web::{JwkSet, http_client, is_loopback_http, max_age, origin, rsa_signing_keys, unix_now};

/// How a [`Verifier`] checks tokens.
#[derive(Clone)]
pub struct VerifierConfig {
    /// The issuer URL, as in the tokens' `iss` and the metadata's `issuer`.
    pub issuer: String,
    /// The audience this service accepts (one of the token's `aud`).
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (at most 30 s). Use the issuer's
    /// `clock_leeway` (30 s by default) so that both accept the same tokens.
    pub leeway: Duration,
    /// The least time between two JWKS fetches caused by unknown `kid`s (at least 1 s).
    pub unknown_kid_interval: Duration,
    /// The longest the JWKS is used before it is revalidated.
    pub max_cache_age: Duration,
    /// Timeout of each request to the issuer.
    pub http_timeout: Duration,
    /// Check every token with RFC 7662 introspection as well (revocation at once).
    pub introspection: Option<Introspection>,
    /// DPoP: the service's public base URL (`https://api.example.com`, a path prefix
    /// allowed), which proofs' `htu` must name. `None`: `verify_dpop` refuses every
    /// token (`Unauthorized`).
    pub public_url: Option<String>,
    /// The most DPoP proofs remembered at once (for the replay check): 16 bytes of
    /// hash and 8 of time each. A proof is kept two minutes (with a 30 s leeway), so
    /// the default, 1,000,000, holds over 8,000 proofs a second (about 40 MB full).
    pub max_proofs: usize,
}

/// Credentials of a `service` client for introspection, and how long an answer is kept.
#[derive(Clone)]
pub struct Introspection {
    pub client_id: String,
    pub client_secret: String,
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("unknown_kid_interval", &self.unknown_kid_interval)
            .field("max_cache_age", &self.max_cache_age)
            .field(
                "introspection_client",
                &self.introspection.as_ref().map(|i| &i.client_id),
            )
            .finish_non_exhaustive()
    }
}

impl VerifierConfig {
    /// The defaults: 30 s leeway, one unknown-`kid` fetch per 30 s, JWKS revalidated
    /// after 5 min at most, 5 s HTTP timeout, no introspection.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            unknown_kid_interval: Duration::from_secs(30),
            max_cache_age: Duration::from_secs(300),
            http_timeout: Duration::from_secs(5),
            introspection: None,
            public_url: None,
            max_proofs: 1_000_000,
        }
    }

    /// Accepts DPoP-bound tokens ([`Verifier::verify_dpop`]) with proofs for
    /// `public_url` (this service's public base URL) plus the request's path.
    pub fn dpop(mut self, public_url: impl Into<String>) -> Self {
        self.public_url = Some(public_url.into().trim_end_matches('/').to_owned());
        self
    }

    /// Also asks the issuer whether each token is still active, keeping each answer
    /// `cache_ttl` (at most 60 s: it is how late a revocation may be seen).
    pub fn introspection(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        cache_ttl: Duration,
    ) -> Self {
        self.introspection = Some(Introspection {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            cache_ttl,
        });
        self
    }
}

/// Why start-up failed or a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token is not one of the issuer's valid tokens for this audience (answer 401
    /// `invalid_token`). The reason is for logs.
    #[error("invalid token: {0}")]
    Unauthorized(&'static str),
    /// The DPoP proof is refused (`invalid_dpop_proof`).
    #[error("invalid DPoP proof: {0}")]
    InvalidProof(&'static str),
    /// The issuer could not be asked (discovery, JWKS or introspection): answer 503.
    #[error("issuer unavailable: {0}")]
    Unavailable(String),
    /// The configuration does not fit the issuer (discovery only).
    #[error("verifier configuration: {0}")]
    Config(String),
}

/// The keys of one JWKS response and how long they are good for.
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    etag: Option<String>,
    fresh_until: Instant,
    /// When the JWKS was last asked for, successfully or not.
    fetched_at: Instant,
    /// The last attempt failed: these are the keys of an earlier answer.
    failed: bool,
}

/// Verifies the issuer's access tokens; share one per process (it is `Send + Sync`,
/// and cheap to clone).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: VerifierConfig,
    leeway: i64,
    jwks_uri: String,
    introspection_endpoint: Option<String>,
    cache: RwLock<Arc<KeyCache>>,
    /// Held by the one JWKS fetch in progress (in a task of its own, so that a caller
    /// that gives up does not cancel it).
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// Introspection answers by `jti`: active or not, until when.
    answers: Mutex<HashMap<String, (bool, Instant)>>,
    fetches: AtomicU64,
    /// The DPoP proofs seen, by replay key, until when (unix seconds) they are kept.
    proofs: Mutex<HashMap<u128, i64>>,
    /// How often a full list of proofs may be scanned for expired ones.
    proofs_prune: crate::domain::clock::Throttle,
}

/// The part of the RFC 8414 metadata we read.
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
    introspection_endpoint: Option<String>,
}

/// Most introspection answers kept before expired ones are dropped.
const MAX_ANSWERS: usize = 10_000;
/// The shortest `unknown_kid_interval`: zero would mean a fetch per forged token.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest an introspection answer is trusted: it is how late a revocation is seen.
const MAX_ANSWER_TTL: Duration = Duration::from_secs(60);
impl Verifier {
    /// Reads the issuer's metadata and its JWKS. Fails when the issuer cannot be
    /// reached, its metadata names another issuer, or the configuration is unsafe
    /// (`http` anywhere but on loopback; an introspection endpoint on another origin).
    pub async fn discover(mut config: VerifierConfig) -> Result<Self, VerifyError> {
        config.unknown_kid_interval = config.unknown_kid_interval.max(MIN_INTERVAL);
        config.max_cache_age = config.max_cache_age.max(MIN_INTERVAL);
        if let Some(intro) = &mut config.introspection {
            intro.cache_ttl = intro.cache_ttl.min(MAX_ANSWER_TTL);
        }
        let issuer_origin = origin(&config.issuer)
            .filter(|o| o.starts_with("https://") || is_loopback_http(o))
            .ok_or_else(|| {
                VerifyError::Config(format!(
                    "the issuer {:?} must be an https:// URL (http only on loopback)",
                    config.issuer
                ))
            })?
            .to_owned();
        let http = http_client(config.http_timeout)?;
        let issuer = config.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/oauth-authorization-server");
        let metadata: Metadata = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| VerifyError::Unavailable(format!("{url}: {e}")))?
            .json()
            .await
            .map_err(|e| VerifyError::Unavailable(format!("{url}: {e}")))?;
        if metadata.issuer != config.issuer {
            return Err(VerifyError::Config(format!(
                "the metadata at {url} is for issuer {:?}, not {:?}",
                metadata.issuer, config.issuer
            )));
        }
        if config.introspection.is_some() {
            // The client secret and every bearer token go there: only to the issuer.
            let endpoint = metadata
                .introspection_endpoint
                .as_deref()
                .unwrap_or_default();
            if origin(endpoint) != Some(issuer_origin.as_str()) {
                return Err(VerifyError::Config(format!(
                    "introspection is configured but the issuer's introspection_endpoint {endpoint:?} is not on {issuer_origin}"
                )));
            }
        }
        let leeway = i64::try_from(config.leeway.as_secs().min(30)).unwrap_or(30);
        let never = Instant::now();
        let inner = Arc::new(Inner {
            http,
            leeway,
            jwks_uri: metadata.jwks_uri,
            introspection_endpoint: metadata.introspection_endpoint,
            cache: RwLock::new(Arc::new(KeyCache {
                keys: HashMap::new(),
                etag: None,
                fresh_until: never,
                fetched_at: never,
                failed: true,
            })),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            answers: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            proofs: Mutex::new(HashMap::new()),
            proofs_prune: crate::domain::clock::Throttle::new(Duration::from_secs(1)),
            config,
        });
        let first = inner.fetch(&inner.snapshot()).await?;
        inner.store(first);
        Ok(Self { inner })
    }

    /// Verifies a token sent as `Authorization: Bearer <token>`; the claims when it is
    /// valid for our audience now. A DPoP-bound token is refused
    /// here (RFC 9449 §7.2): it needs [`Verifier::verify_dpop`].
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let claims = self.verify_token(token).await?;
        if claims.cnf.is_some() {
            return Err(VerifyError::Unauthorized(
                "the token is bound to a DPoP key: it needs the DPoP scheme and a proof",
            ));
        }
        Ok(claims)
    }

    /// The token's claims when it is ours, for our audience, now (and, with
    /// introspection, of a live session), whatever its binding.
    pub(super) async fn verify_token(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let inner = &self.inner;
        let keys = inner.snapshot();
        if Instant::now() >= keys.fresh_until {
            // Stale keys are still the issuer's keys: use them while one task
            // revalidates, rather than make every request wait for the issuer.
            self.revalidate_in_background();
        }
        let claims = match inner.check(&keys, token) {
            Err(Rejected::UnknownKid) => {
                let newer = self.refetch_for_unknown_kid(&keys).await;
                match inner.check(&newer, token) {
                    Err(Rejected::UnknownKid) if newer.failed => {
                        return Err(VerifyError::Unavailable(
                            "the token's kid is not among the cached keys and the JWKS cannot be fetched".into(),
                        ));
                    }
                    checked => checked,
                }
            }
            checked => checked,
        }
        .map_err(|e| match e {
            Rejected::UnknownKid => VerifyError::Unauthorized("unknown kid"),
            Rejected::Invalid(why) => VerifyError::Unauthorized(why),
        })?;
        if inner.config.introspection.is_some() && !inner.active(token, &claims).await? {
            return Err(VerifyError::Unauthorized("session revoked"));
        }
        Ok(claims)
    }

    /// How many times the JWKS has been requested from the issuer (for metrics).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Starts a revalidation unless one is running.
    fn revalidate_in_background(&self) {
        let Ok(guard) = Arc::clone(&self.inner.fetching).try_lock_owned() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let _one_at_a_time = guard;
            let current = inner.snapshot();
            if Instant::now() >= current.fresh_until {
                inner.fetch_and_store(&current).await;
            }
        });
    }

    /// Fetches the JWKS again for a `kid` we do not know, unless another request just
    /// did or the last fetch is more recent than `unknown_kid_interval`: forged `kid`s
    /// cause at most one fetch per interval, and concurrent ones share it.
    async fn refetch_for_unknown_kid(&self, seen: &Arc<KeyCache>) -> Arc<KeyCache> {
        let inner = &self.inner;
        let guard = Arc::clone(&inner.fetching).lock_owned().await;
        let current = inner.snapshot();
        if !Arc::ptr_eq(&current, seen)
            || Instant::now() < current.fetched_at + inner.config.unknown_kid_interval
        {
            return current;
        }
        // In a task of its own: if this caller gives up (its client went away), the
        // fetch still completes and is recorded, so the interval holds.
        let task = {
            let inner = Arc::clone(inner);
            tokio::spawn(async move {
                let _one_at_a_time = guard;
                inner.fetch_and_store(&current).await
            })
        };
        task.await.unwrap_or_else(|_| inner.snapshot())
    }
}

impl Inner {
    fn check(&self, keys: &KeyCache, token: &str) -> Result<AccessClaims, Rejected> {
        let expect = Expect {
            issuer: &self.config.issuer,
            audience: Some(&self.config.audience),
            leeway: self.leeway,
            now: unix_now(),
        };
        jwt::check(token, |kid| keys.keys.get(kid), expect)
    }

    fn snapshot(&self) -> Arc<KeyCache> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn store(&self, keys: KeyCache) {
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// One fetch, recorded whatever its outcome: a failure keeps the keys we have
    /// (they are still the issuer's) and is retried after the shorter of
    /// `unknown_kid_interval` and `max_cache_age`.
    async fn fetch_and_store(&self, current: &KeyCache) -> Arc<KeyCache> {
        let next = match self.fetch(current).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, jwks_uri = %self.jwks_uri, "JWKS fetch failed; keeping the keys we have");
                let now = Instant::now();
                KeyCache {
                    keys: current.keys.clone(),
                    etag: current.etag.clone(),
                    fresh_until: now
                        + self
                            .config
                            .unknown_kid_interval
                            .min(self.config.max_cache_age),
                    fetched_at: now,
                    failed: true,
                }
            }
        };
        self.store(next);
        self.snapshot()
    }

    /// One conditional GET of the JWKS.
    async fn fetch(&self, current: &KeyCache) -> Result<KeyCache, VerifyError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let unavailable = |e: reqwest::Error| VerifyError::Unavailable(format!("JWKS: {e}"));
        let mut request = self.http.get(&self.jwks_uri);
        if let Some(etag) = &current.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let resp = request.send().await.map_err(unavailable)?;
        let now = Instant::now();
        let fresh_for = max_age(resp.headers())
            .unwrap_or(self.config.max_cache_age)
            .clamp(MIN_INTERVAL, self.config.max_cache_age);
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(KeyCache {
                keys: current.keys.clone(),
                etag: current.etag.clone(),
                fresh_until: now + fresh_for,
                fetched_at: now,
                failed: false,
            });
        }
        let resp = resp.error_for_status().map_err(unavailable)?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set: JwkSet = resp.json().await.map_err(unavailable)?;
        Ok(KeyCache {
            keys: rsa_signing_keys(set),
            etag,
            fresh_until: now + fresh_for,
            fetched_at: now,
            failed: false,
        })
    }

    /// Whether the issuer still calls the token active (RFC 7662), cached per `jti`.
    async fn active(&self, token: &str, claims: &AccessClaims) -> Result<bool, VerifyError> {
        let (Some(intro), Some(endpoint)) =
            (&self.config.introspection, &self.introspection_endpoint)
        else {
            return Ok(true);
        };
        let now = Instant::now();
        if let Some((active, until)) = self.answers().get(&claims.jti)
            && now < *until
        {
            return Ok(*active);
        }
        #[derive(Deserialize)]
        struct Answer {
            active: bool,
        }
        let unavailable =
            |e: reqwest::Error| VerifyError::Unavailable(format!("introspection: {e}"));
        let answer: Answer = self
            .http
            .post(endpoint)
            .basic_auth(&intro.client_id, Some(&intro.client_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let mut answers = self.answers();
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (_, until)| now < *until);
            if answers.len() >= MAX_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(claims.jti.clone(), (answer.active, now + intro.cache_ttl));
        Ok(answer.active)
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
