//! Rows as PostgreSQL returns them, and their conversions to the store's types.

use sqlx::FromRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::user::User;
use crate::store::engine::Presented;
use crate::store::{
    AuditEvent, Epoch, FamilyInfo, RefreshTokenState, StoreError, UserWithHash, audit_kind,
};

#[derive(FromRow)]
pub(super) struct UserRecord {
    pub(super) id: Uuid,
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) created_at: OffsetDateTime,
    pub(super) disabled_at: Option<OffsetDateTime>,
}

impl From<UserRecord> for UserWithHash {
    fn from(r: UserRecord) -> Self {
        Self {
            user: r.user(),
            disabled: r.disabled_at.is_some(),
            password_hash: r.password_hash,
        }
    }
}

impl UserRecord {
    pub(super) fn user(&self) -> User {
        User {
            id: self.id,
            email: self.email.clone(),
            created_at: self.created_at,
        }
    }
}

#[derive(FromRow)]
pub(super) struct FamilyRecord {
    pub(super) id: Uuid,
    pub(super) user_id: Uuid,
    pub(super) client_id: String,
    pub(super) scope: Option<String>,
    pub(super) created_at: OffsetDateTime,
    pub(super) dpop_jkt: Option<String>,
}

impl From<FamilyRecord> for FamilyInfo {
    fn from(r: FamilyRecord) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            client_id: r.client_id,
            scope: r.scope,
            created_at: r.created_at,
            dpop_jkt: r.dpop_jkt,
        }
    }
}

#[derive(FromRow)]
pub(super) struct PresentedRecord {
    #[sqlx(flatten)]
    pub(super) family: FamilyRecord,
    pub(super) last_used_at: OffsetDateTime,
    pub(super) revoked_at: Option<OffsetDateTime>,
    pub(super) user_disabled: bool,
    pub(super) epoch_revoked: bool,
    pub(super) generation: i64,
    pub(super) generation_issued_at: OffsetDateTime,
    pub(super) presented_generation: Option<i64>,
}

/// A family that advanced, with its new generation.
#[derive(FromRow)]
pub(super) struct GenerationRecord {
    #[sqlx(flatten)]
    pub(super) family: FamilyRecord,
    pub(super) generation: i64,
}

impl GenerationRecord {
    pub(super) fn advanced(self) -> Result<(FamilyInfo, u64), StoreError> {
        Ok((self.family.into(), generation(self.generation)?))
    }
}

/// A generation as stored (signed 64 bits, never negative).
fn generation(stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::Corrupt(format!("generation {stored}")))
}

/// The family's state that a rotation decides on, after `FAMILY_COLUMNS`.
pub(super) const STATE_COLUMNS: &str = concat!(
    "f.last_used_at, f.revoked_at,
    EXISTS (SELECT 1 FROM users u WHERE u.id = f.user_id AND u.disabled_at IS NOT NULL)
        AS user_disabled, ",
    epoch_revoked!("f"),
    " AS epoch_revoked, f.generation, f.generation_issued_at"
);

pub(super) const FAMILY_COLUMNS: &str =
    "f.id, f.user_id, f.client_id, f.scope, f.created_at, f.dpop_jkt";

impl PresentedRecord {
    pub(super) fn presented(self) -> Result<Presented, StoreError> {
        Ok(Presented {
            family: self.family.into(),
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
            user_disabled: self.user_disabled,
            epoch_revoked: self.epoch_revoked,
            generation: generation(self.generation)?,
            generation_issued_at: self.generation_issued_at,
            presented_generation: self.presented_generation.map(generation).transpose()?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct TokenStateRecord {
    #[sqlx(flatten)]
    family: FamilyRecord,
    last_used_at: OffsetDateTime,
    family_revoked: bool,
    consumed: bool,
    issued_at: OffsetDateTime,
    user_disabled: bool,
}

impl From<TokenStateRecord> for RefreshTokenState {
    fn from(r: TokenStateRecord) -> Self {
        Self {
            family: r.family.into(),
            family_last_used_at: r.last_used_at,
            family_revoked: r.family_revoked,
            consumed: r.consumed,
            issued_at: r.issued_at,
            user_disabled: r.user_disabled,
        }
    }
}

#[derive(FromRow)]
pub(super) struct AuditRecord {
    at: OffsetDateTime,
    kind: String,
    user_id: Option<Uuid>,
    family_id: Option<Uuid>,
    client_id: Option<String>,
    detail: Option<String>,
    actor_id: Option<Uuid>,
}

impl AuditRecord {
    pub(super) fn event(self) -> Result<AuditEvent, StoreError> {
        Ok(AuditEvent {
            at: self.at,
            kind: audit_kind(&self.kind)?,
            user_id: self.user_id,
            family_id: self.family_id,
            client_id: self.client_id,
            detail: self.detail,
            actor_id: self.actor_id,
        })
    }
}

/// A `session_epochs` row: scope, `not_before`, reason, set by, set at.
pub(super) type EpochRow = (String, OffsetDateTime, String, String, OffsetDateTime);

/// The columns of an `EpochRow`.
pub(super) const EPOCH_COLUMNS: &str = "client_id, not_before, reason, set_by, set_at";

pub(super) fn epoch((scope, not_before, reason, set_by, set_at): EpochRow) -> Epoch {
    Epoch {
        client_id: Epoch::client_of_scope(scope),
        not_before,
        reason,
        set_by,
        set_at,
    }
}
