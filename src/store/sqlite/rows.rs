//! Rows as SQLite returns them (UUIDs as text, times as unix milliseconds), the
//! conversions to the store's types, and the classification of SQLite's errors.

use sqlx::FromRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::user::User;
use crate::store::engine::Presented;
use crate::store::{
    AuditEvent, Epoch, FamilyInfo, RefreshTokenState, StoreError, UserWithHash, audit_kind,
};

pub(super) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        sqlx::Error::Database(db)
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)) =>
        {
            StoreError::Unavailable(e)
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Other(e),
    }
}

pub(super) fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(super) fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

pub(super) fn uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

#[derive(FromRow)]
pub(super) struct UserRecord {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) created_at: i64,
    pub(super) disabled_at: Option<i64>,
}

impl UserRecord {
    pub(super) fn user(&self) -> Result<User, StoreError> {
        Ok(User {
            id: uuid(&self.id)?,
            email: self.email.clone(),
            created_at: from_ms(self.created_at)?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct FamilyRecord {
    pub(super) id: String,
    pub(super) user_id: String,
    pub(super) client_id: String,
    pub(super) scope: Option<String>,
    pub(super) created_at: i64,
    pub(super) dpop_jkt: Option<String>,
}

impl FamilyRecord {
    pub(super) fn info(self) -> Result<FamilyInfo, StoreError> {
        Ok(FamilyInfo {
            id: uuid(&self.id)?,
            user_id: uuid(&self.user_id)?,
            client_id: self.client_id,
            scope: self.scope,
            created_at: from_ms(self.created_at)?,
            dpop_jkt: self.dpop_jkt,
        })
    }
}

/// A presented token that the conditional update did not rotate, with its family.
#[derive(FromRow)]
pub(super) struct PresentedRecord {
    #[sqlx(flatten)]
    pub(super) family: FamilyRecord,
    pub(super) last_used_at: i64,
    pub(super) revoked_at: Option<i64>,
    pub(super) user_disabled: bool,
    pub(super) epoch_revoked: bool,
    pub(super) generation: i64,
    pub(super) generation_issued_at: i64,
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
        Ok((self.family.info()?, generation(self.generation)?))
    }
}

/// A generation as stored (signed 64 bits, never negative).
pub(super) fn generation(stored: i64) -> Result<u64, StoreError> {
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
            family: self.family.info()?,
            last_used_at: from_ms(self.last_used_at)?,
            revoked_at: self.revoked_at.map(from_ms).transpose()?,
            user_disabled: self.user_disabled,
            epoch_revoked: self.epoch_revoked,
            generation: generation(self.generation)?,
            generation_issued_at: from_ms(self.generation_issued_at)?,
            presented_generation: self.presented_generation.map(generation).transpose()?,
        })
    }
}

impl UserRecord {
    pub(super) fn with_hash(self) -> Result<UserWithHash, StoreError> {
        Ok(UserWithHash {
            user: self.user()?,
            disabled: self.disabled_at.is_some(),
            password_hash: self.password_hash,
        })
    }
}

#[derive(FromRow)]
pub(super) struct TokenStateRecord {
    #[sqlx(flatten)]
    family: FamilyRecord,
    last_used_at: i64,
    family_revoked: bool,
    consumed: bool,
    issued_at: i64,
    user_disabled: bool,
}

impl TokenStateRecord {
    pub(super) fn state(self) -> Result<RefreshTokenState, StoreError> {
        Ok(RefreshTokenState {
            family: self.family.info()?,
            family_last_used_at: from_ms(self.last_used_at)?,
            family_revoked: self.family_revoked,
            consumed: self.consumed,
            issued_at: from_ms(self.issued_at)?,
            user_disabled: self.user_disabled,
        })
    }
}

#[derive(FromRow)]
pub(super) struct AuditRecord {
    at: i64,
    kind: String,
    user_id: Option<String>,
    family_id: Option<String>,
    client_id: Option<String>,
    detail: Option<String>,
    actor_id: Option<String>,
}

impl AuditRecord {
    pub(super) fn event(self) -> Result<AuditEvent, StoreError> {
        let id = |v: Option<String>| v.as_deref().map(uuid).transpose();
        Ok(AuditEvent {
            at: from_ms(self.at)?,
            kind: audit_kind(&self.kind)?,
            user_id: id(self.user_id)?,
            family_id: id(self.family_id)?,
            client_id: self.client_id,
            detail: self.detail,
            actor_id: id(self.actor_id)?,
        })
    }
}

/// A `session_epochs` row: scope, `not_before`, reason, set by, set at.
pub(super) type EpochRow = (String, i64, String, String, i64);

/// The columns of an `EpochRow`.
pub(super) const EPOCH_COLUMNS: &str = "client_id, not_before, reason, set_by, set_at";

pub(super) fn epoch(
    (scope, not_before, reason, set_by, set_at): EpochRow,
) -> Result<Epoch, StoreError> {
    Ok(Epoch {
        client_id: Epoch::client_of_scope(scope),
        not_before: from_ms(not_before)?,
        reason,
        set_by,
        set_at: from_ms(set_at)?,
    })
}
