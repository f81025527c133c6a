//! What the store does, written once; the backends supply only their SQL.
//!
//! Every write of the store is a composition of a few steps inside one transaction:
//! look up the presented token, decide with the family rules
//! (`domain::family::RefreshPolicy::decide`), settle the decision (touch, revoke with
//! its audit row, refuse); start a session with its login source and audit row;
//! revoke sessions with an audit row each; disable a user; change a password. The
//! compositions live here (`rotation`, `accounts`; `sessions` runs the latter as the
//! store's `Sessions`), generic over `Steps`: the
//! statements one backend runs inside its write transaction. A backend implements
//! `Steps` for its transaction type (SQL, bindings, row decoding) and decides only how
//! a transaction starts and ends (SQLite: `BEGIN IMMEDIATE` on its one writer, and the
//! group commit of rotations; PostgreSQL: READ COMMITTED on a pooled connection, row
//! locks, retries).
//!
//! Adding a column to a family (as DPoP binding will): `FamilyInfo` or `Presented`
//! here, the rule in `domain::family`, and each backend's statements.

pub mod accounts;
pub mod codes;
pub mod rotation;
mod sessions;

pub use sessions::Transactional;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AuditEvent, CodeHash, Epoch, FamilyInfo, NewFamily, PasswordChange, RotateRequest,
    SessionSelector, StoreError, TokenRef,
};
use crate::domain::family::RevokeReason;
use crate::domain::generation::FamilyState;

/// A presented token that the conditional update did not rotate, with its family, as
/// the rotation's transaction reads it.
#[derive(Debug, Clone)]
pub struct Presented {
    pub family: FamilyInfo,
    pub last_used_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub user_disabled: bool,
    /// A revocation epoch covers the family (`sessions revoke-all`).
    pub epoch_revoked: bool,
    /// The family's current generation `c`, and when it was issued.
    pub generation: u64,
    pub generation_issued_at: OffsetDateTime,
    /// The generation the presented token stands for: a minted token's own; 0 for a
    /// token of the earlier format that is live or that the upgrade rotation consumed;
    /// `None` for one consumed before the upgrade (it had a successor of that format).
    pub presented_generation: Option<u64>,
}

impl Presented {
    /// What the generation rules look at.
    pub fn state(&self) -> FamilyState {
        FamilyState {
            client_id: self.family.client_id.clone(),
            created_at: self.family.created_at,
            last_used_at: self.last_used_at,
            // A disabled user's sessions, and those an epoch covers, are as good as
            // revoked.
            revoked: self.revoked_at.is_some() || self.user_disabled || self.epoch_revoked,
            generation: self.generation,
            generation_issued_at: self.generation_issued_at,
        }
    }
}

/// A family found by one of its tokens, for a revocation by token.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub family_id: Uuid,
    pub client_id: String,
    pub revoked: bool,
}

/// A family this transaction just revoked.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
}

/// The statements of one backend, run inside its write transaction. Each is one SQL
/// statement (or, for `insert_family`, the few a backend needs for one row and its
/// check); none commits.
#[async_trait]
pub trait Steps: Send {
    /// Advances the family of the presented token to the next generation if the token
    /// is its live one (a minted token of the current generation, or a live token of
    /// the earlier format at generation 0, which it consumes), and touches it: the
    /// conditional update that decides a race. The family and its new generation;
    /// `None` when the token is not live (unknown, an older generation, revoked,
    /// expired, another client, a disabled user).
    async fn rotate_fresh(
        &mut self,
        r: &RotateRequest<'_>,
    ) -> Result<Option<(FamilyInfo, u64)>, StoreError>;

    /// The presented token and its family, used or not.
    async fn presented(&mut self, r: &RotateRequest<'_>) -> Result<Option<Presented>, StoreError>;

    /// Marks the family used now, from the request's address and user agent, if it is
    /// still live (not revoked, its user not disabled: PostgreSQL re-checks the row
    /// once a concurrent revocation has committed); `None` otherwise.
    async fn touch_family(
        &mut self,
        family_id: Uuid,
        r: &RotateRequest<'_>,
    ) -> Result<Option<FamilyInfo>, StoreError>;

    /// Moves the family from generation `from` to `to` (a token ahead of the database)
    /// and touches it; `None` when its generation is no longer `from` or it is no longer
    /// live.
    async fn move_forward(
        &mut self,
        family_id: Uuid,
        from: u64,
        to: u64,
        r: &RotateRequest<'_>,
    ) -> Result<Option<FamilyInfo>, StoreError>;

    async fn family_info(&mut self, family_id: Uuid) -> Result<FamilyInfo, StoreError>;

    /// Marks a live family revoked; `None` when it was revoked already.
    async fn mark_revoked(
        &mut self,
        family_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Option<Revoked>, StoreError>;

    /// Marks the live sessions of a user that `which` names revoked.
    async fn mark_sessions_revoked(
        &mut self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Revoked>, StoreError>;

    /// The family a token belongs to, used or not.
    async fn token_owner(&mut self, token: &TokenRef) -> Result<Option<TokenOwner>, StoreError>;

    /// Whether the family exists and belongs to `client_id`.
    async fn family_of_client(
        &mut self,
        family_id: Uuid,
        client_id: &str,
    ) -> Result<bool, StoreError>;

    /// Inserts the family at generation 0; with `checked_password_hash`, only if the
    /// user still has that hash and is not disabled (false otherwise, nothing written).
    async fn insert_family(&mut self, family: &NewFamily) -> Result<bool, StoreError>;

    /// Remembers that the user signed in from `source` at `at`.
    async fn remember_login_source(
        &mut self,
        user_id: Uuid,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Sets or clears the user's `disabled_at`; false when the user is unknown.
    async fn mark_disabled(
        &mut self,
        user_id: Uuid,
        disabled: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Replaces the password hash if it is still `checked_hash`, the user is not
    /// disabled and the session `current` is live; false otherwise.
    async fn replace_password(&mut self, change: &PasswordChange<'_>) -> Result<bool, StoreError>;

    async fn insert_audit(&mut self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Raises the epoch of its scope to `epoch` (never lowers it); returns it as stored.
    async fn raise_epoch(&mut self, epoch: &Epoch) -> Result<Epoch, StoreError>;

    /// Whether the sign-in session `sid` of `user_id` is live (not revoked, not covered
    /// by an epoch, its user not disabled), holding it so (PostgreSQL: `FOR SHARE`)
    /// until the transaction ends: a concurrent revocation waits for it.
    async fn lock_live_session(&mut self, sid: Uuid, user_id: Uuid) -> Result<bool, StoreError>;

    /// Marks an unused code used by `family_id`: the conditional update that decides a
    /// race between two exchanges. False when it was used (or is gone).
    async fn use_code(
        &mut self,
        hash: &CodeHash,
        family_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// The session a used code started.
    async fn code_family(&mut self, hash: &CodeHash) -> Result<Option<Uuid>, StoreError>;
}
