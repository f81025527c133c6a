//! Persistence. The SQL store is the authoritative record of users, refresh-token
//! families and tokens.
//!
//! - `Store` (with its supertrait `Sessions`) is what the service calls; `timeout`
//!   bounds every call, `ticket` decides whether a rotation still happens once its
//!   caller stops waiting.
//! - `engine` is what the store does, written once: the rotation's rules and every
//!   write composed of steps; `Sessions` is implemented there for every backend that
//!   can open a write transaction (`engine::Transactional`).
//! - `sqlite/` and `postgres/` supply their statements (`engine::Steps`), their reads
//!   and sweeps, and how a transaction begins and ends; SQLite adds its group commit.
//! - `shared/` and `redis` are the fast shared state: the deny-list, the session
//!   cache and the rate limits.

/// The SQL condition "a revocation epoch covers the family `$f`" (`session_epochs`:
/// the family was created before the `not_before` of its client's epoch or of the
/// epoch of every client), the same text on both backends. A literal, for `concat!`.
macro_rules! epoch_revoked {
    ($f:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM session_epochs se WHERE se.client_id IN ('*', ",
            $f,
            ".client_id) AND ",
            $f,
            ".created_at < se.not_before)"
        )
    };
}

pub mod authorization;
pub mod engine;
pub mod postgres;
pub mod redis;
pub mod shared;
pub mod sqlite;
pub mod ticket;
pub mod timeout;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::refresh::TokenHash;
pub use crate::domain::audit::AuditEvent;
use crate::domain::error::Error;
use crate::domain::family::{GrantRejection, RefreshPolicy, RevokeReason};
use crate::domain::user::User;
pub use authorization::{Authorizations, CodeHash, Consent, Redeem, RedeemOutcome, StoredCode};
pub use ticket::Ticket;

/// A store failure, classified so the service can answer 409 / 503 / 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write.
    #[error("unique constraint violated")]
    Conflict,
    /// The database cannot be reached, is busy past its timeout, or timed out.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The operation did not finish within the configured database timeout.
    #[error("database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// A concurrent change between two statements; the transaction is run again.
    #[error("transaction must be retried")]
    Retry,
    /// The caller stopped waiting before the operation's point of no return: nothing
    /// was done.
    #[error("the caller stopped waiting; nothing was done")]
    Abandoned,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::TimedOut(_) | StoreError::Abandoned => {
                Error::Unavailable(Box::new(e))
            }
            StoreError::Conflict
            | StoreError::Other(_)
            | StoreError::Corrupt(_)
            | StoreError::Retry => Error::internal(e),
        }
    }
}

/// A revocation epoch (`session_epochs`): the sessions of `client_id` (of every client
/// when `None`) created before `not_before` are revoked, and the access tokens of those
/// clients issued before it are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub client_id: Option<String>,
    pub not_before: OffsetDateTime,
    pub reason: String,
    /// `cli`, or the id of the admin who set it.
    pub set_by: String,
    pub set_at: OffsetDateTime,
}

impl Epoch {
    /// How the scope is stored: the client id, or `*` for every client.
    pub(crate) fn scope(&self) -> &str {
        self.client_id.as_deref().unwrap_or("*")
    }

    pub(crate) fn client_of_scope(scope: String) -> Option<String> {
        (scope != "*").then_some(scope)
    }
}

/// Where the next step of a sweep starts: opaque, read only by the store that gave it;
/// the default is the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepCursor(pub(crate) String);

/// What one step of a sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepStep {
    pub deleted: u64,
    /// Where the next step starts; `None`: the whole table has been seen.
    pub next: Option<SweepCursor>,
}

/// A user as stored, with the password hash.
#[derive(Debug, Clone)]
pub struct UserWithHash {
    pub user: User,
    pub password_hash: String,
    pub disabled: bool,
}

/// A new family; its first token is the one of generation 0.
#[derive(Debug, Clone)]
pub struct NewFamily {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub scope: Option<String>,
    pub created_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The password hash the login was checked against: the family is created only if
    /// it is still the user's and the user is not disabled (a disable or a password
    /// change that committed meanwhile wins). `None` inside a password change.
    pub checked_password_hash: Option<String>,
    /// A login: where from (an IPv4 address or an IPv6 /64), remembered as a source
    /// this user signed in from (`known_login_source`).
    pub login_source: Option<String>,
    /// The DPoP key (RFC 7638 thumbprint) the session's refresh tokens are bound to,
    /// for the whole life of the session.
    pub dpop_jkt: Option<String>,
}

/// A presented refresh token, as the store finds it: a minted token by its family and
/// generation (its MAC checked by the service), a token of the earlier format by its
/// hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRef {
    Minted { family: Uuid, generation: u64 },
    Legacy(TokenHash),
}

impl From<NewFamily> for FamilyInfo {
    fn from(f: NewFamily) -> Self {
        Self {
            id: f.id,
            user_id: f.user_id,
            client_id: f.client_id,
            scope: f.scope,
            created_at: f.created_at,
            dpop_jkt: f.dpop_jkt,
        }
    }
}

/// What a rotation needs to mint the access token and set the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub scope: Option<String>,
    pub created_at: OffsetDateTime,
    /// The DPoP key (RFC 7638 thumbprint) its refresh tokens are bound to.
    pub dpop_jkt: Option<String>,
}

/// One rotation attempt.
#[derive(Debug, Clone)]
pub struct RotateRequest<'a> {
    pub presented: TokenRef,
    pub client_id: &'a str,
    pub now: OffsetDateTime,
    pub policy: RefreshPolicy,
    /// Where the request came from: kept as the session's last IP and user agent.
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The key of the request's DPoP proof (its thumbprint), if it came with one: a
    /// bound session rotates only with a proof of its key.
    pub dpop_jkt: Option<&'a str>,
    /// Claimed by the store before the rotation's point of no return; abandoned by a
    /// caller that stops waiting (see `ticket`). `Ticket::default()` for a caller that
    /// always waits.
    pub ticket: Ticket,
}

/// The result of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token of `generation` is the family's live one: mint it. `replay` is true
    /// when this answered a retry within the grace window (the same successor as an
    /// earlier request), `moved_from` is the family's generation when the presented
    /// token was ahead of the database (restored from a backup): moved forward.
    Issued {
        family: FamilyInfo,
        generation: u64,
        replay: bool,
        moved_from: Option<u64>,
    },
    /// Refused; `revoked` names why the family was revoked by this very request.
    Refused {
        rejection: GrantRejection,
        family: Option<FamilyInfo>,
        revoked: Option<RevokeReason>,
    },
}

/// A password change, with what it was checked against.
#[derive(Debug, Clone, Copy)]
pub struct PasswordChange<'a> {
    pub user_id: Uuid,
    pub checked_hash: &'a str,
    pub new_hash: &'a str,
    /// The session asking.
    pub current: Uuid,
}

/// A live session, as its user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub client_id: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What the store knows of a refresh token, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenState {
    pub family: FamilyInfo,
    pub family_last_used_at: OffsetDateTime,
    pub family_revoked: bool,
    pub consumed: bool,
    /// When the token was issued (a minted token: when its family's live generation
    /// was).
    pub issued_at: OffsetDateTime,
    pub user_disabled: bool,
}

/// The kind of a stored audit row.
pub(crate) fn audit_kind(code: &str) -> Result<crate::domain::audit::AuditKind, StoreError> {
    crate::domain::audit::AuditKind::from_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown audit event kind {code:?}")))
}

/// Which of a user's sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSelector {
    One(Uuid),
    AllBut(Uuid),
    All,
}

/// The result of revoking by refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked(FamilyInfo),
    /// The family was revoked before (its id, to announce the revocation again).
    AlreadyRevoked(Uuid),
    Unknown,
    /// The token belongs to another client; nothing was changed.
    OtherClient,
}

/// The writes of sessions and users that are compositions of the engine's steps:
/// written once (`engine`), for every SQL backend. Each method is atomic.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Creates a family at generation 0, and records the `login`;
    /// false (nothing written) when the user was disabled or changed password since
    /// the check.
    async fn create_family(&self, family: &NewFamily) -> Result<bool, StoreError>;

    /// Revokes the family of a refresh token if it belongs to `client_id`.
    async fn revoke_by_token(
        &self,
        token: &TokenRef,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError>;

    /// Revokes a family by id if it belongs to `client_id`; true when this call revoked it.
    async fn revoke_family(
        &self,
        family_id: Uuid,
        client_id: &str,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Revokes the user's sessions that `which` names and are not revoked yet, with an
    /// audit row each; returns their ids.
    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// In one transaction: replaces the password hash (if it is still `checked_hash`,
    /// the user is not disabled and the session `current` is live), revokes every
    /// session of the user and starts `family`. Returns the ids revoked, or `None`
    /// when a precondition failed (nothing written).
    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        family: &NewFamily,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError>;

    /// Disables (revoking every session, reason `user_disabled`) or re-enables a user,
    /// with an audit row naming `actor`; `None` when the user is unknown, else the
    /// sessions revoked.
    async fn set_disabled(
        &self,
        user_id: Uuid,
        disabled: bool,
        actor: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError>;

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Sets the epoch of its scope, with `event` in the audit log, in one transaction.
    /// An epoch only moves forward: an earlier `not_before` leaves the stored one (and
    /// its reason) as it is. Returns the epoch as stored.
    async fn set_epoch(&self, epoch: &Epoch, event: &AuditEvent) -> Result<Epoch, StoreError>;

    /// Exchanges an authorization code: uses it up and starts `redeem.family` (with its
    /// `login` audit row) if the sign-in session that approved it is live; a code used
    /// before starts nothing and revokes the session it started.
    async fn redeem_code(&self, redeem: &Redeem<'_>) -> Result<RedeemOutcome, StoreError>;
}

/// The persistence operations of the issuer. Each method is atomic.
#[async_trait]
pub trait Store: Sessions + Authorizations + Send + Sync + 'static {
    /// Answers when the database can be queried.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every revocation epoch.
    async fn epochs(&self) -> Result<Vec<Epoch>, StoreError>;

    /// Closes the connections (shutdown): waits for the ones in use to come back.
    async fn close(&self);

    /// Inserts a user; `Conflict` when the e-mail is taken.
    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError>;

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, StoreError>;

    /// Rotates, replays within grace, or refuses (revoking the family on reuse), in one
    /// transaction decided by a conditional update.
    async fn rotate(&self, request: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError>;

    /// The families revoked at or after `since`, with when (to rebuild the deny-list).
    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(Uuid, OffsetDateTime)>, StoreError>;

    /// A refresh token and its family, used or not; `None` when unknown.
    async fn refresh_token_state(
        &self,
        token: &TokenRef,
    ) -> Result<Option<RefreshTokenState>, StoreError>;

    /// The family a token of the earlier format belongs to (for the per-family rate
    /// limit), used or not. A minted token names its family itself.
    async fn legacy_family(&self, token: &TokenHash) -> Result<Option<Uuid>, StoreError>;

    /// The live sessions of a user (not revoked, idle or expired), most recently used
    /// first.
    async fn list_sessions(
        &self,
        user_id: Uuid,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<Session>, StoreError>;

    /// How many sessions are live (for `/metrics`).
    async fn count_live_families(
        &self,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError>;

    /// A user by id.
    async fn find_user(&self, id: Uuid) -> Result<Option<UserWithHash>, StoreError>;

    /// Grants (or takes back) a role; false when no user has that e-mail.
    async fn set_role(
        &self,
        email: &str,
        role: &str,
        granted: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    async fn has_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError>;

    /// Deletes at most `at_most` of the audit events older than `before`; returns how
    /// many (fewer than `at_most`: none is left).
    async fn sweep_audit(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError>;

    /// Whether the user signed in from `source` (see `NewFamily::login_source`) at or
    /// after `since`.
    async fn known_login_source(
        &self,
        user_id: Uuid,
        source: &str,
        since: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Forgets at most `at_most` of the login sources last used before `before`; returns
    /// how many (fewer than `at_most`: none is left).
    async fn sweep_login_sources(
        &self,
        before: OffsetDateTime,
        at_most: u64,
    ) -> Result<u64, StoreError>;

    /// The newest `limit` events, of one user or of all.
    async fn audit_events(
        &self,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// The user of a live session: `None` when the family is revoked or unknown, or the
    /// user is not the family's.
    async fn session_user(
        &self,
        family_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<User>, StoreError>;

    /// One step of the sweep: of the families after `from` in the store's own order (a
    /// page of a few thousand), deletes those (and their tokens) that ended before
    /// `cutoff`: revoked, idle or past their absolute lifetime. A family used in
    /// between stays. A step's work is bounded by the page (tens of milliseconds at
    /// most), so that no step holds the database long and each fits in the store's
    /// time limit, whatever the size of the table.
    async fn sweep_step(
        &self,
        policy: &RefreshPolicy,
        cutoff: OffsetDateTime,
        from: &SweepCursor,
    ) -> Result<SweepStep, StoreError>;
}
