//! `Sessions` for every backend that can open a write transaction: each method begins
//! one, runs its composition (`accounts`) and commits. An error drops the transaction,
//! which rolls it back.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Steps, TokenRef, accounts, codes};
use crate::domain::family::RevokeReason;
use crate::store::{
    AuditEvent, Epoch, NewFamily, PasswordChange, Redeem, RedeemOutcome, RevokeOutcome,
    SessionSelector, Sessions, StoreError,
};

/// A backend's write transaction: how it begins (SQLite: `BEGIN IMMEDIATE` on the one
/// writer; PostgreSQL: READ COMMITTED on a pooled connection) and commits.
#[async_trait]
pub trait Transactional: Send + Sync {
    type Tx: Steps + 'static;

    async fn begin_write(&self) -> Result<Self::Tx, StoreError>;

    async fn commit(tx: Self::Tx) -> Result<(), StoreError>;
}

#[async_trait]
impl<T: Transactional> Sessions for T {
    async fn create_family(&self, family: &NewFamily) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let created = accounts::start_session(&mut tx, family).await?;
        T::commit(tx).await?;
        Ok(created)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenRef,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = accounts::revoke_by_token(&mut tx, token, client_id, now).await?;
        T::commit(tx).await?;
        Ok(outcome)
    }

    async fn revoke_family(
        &self,
        family_id: Uuid,
        client_id: &str,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = accounts::revoke_family(&mut tx, family_id, client_id, reason, now).await?;
        T::commit(tx).await?;
        Ok(revoked)
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = accounts::revoke_sessions(&mut tx, user_id, which, reason, now).await?;
        T::commit(tx).await?;
        Ok(revoked)
    }

    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        family: &NewFamily,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = accounts::change_password(&mut tx, change, family, now).await?;
        T::commit(tx).await?;
        Ok(revoked)
    }

    async fn set_disabled(
        &self,
        user_id: Uuid,
        disabled: bool,
        actor: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = accounts::set_disabled(&mut tx, user_id, disabled, actor, now).await?;
        T::commit(tx).await?;
        Ok(revoked)
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.insert_audit(event).await?;
        T::commit(tx).await
    }

    async fn set_epoch(&self, epoch: &Epoch, event: &AuditEvent) -> Result<Epoch, StoreError> {
        let mut tx = self.begin_write().await?;
        let stored = tx.raise_epoch(epoch).await?;
        tx.insert_audit(event).await?;
        T::commit(tx).await?;
        Ok(stored)
    }

    async fn redeem_code(&self, redeem: &Redeem<'_>) -> Result<RedeemOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = codes::redeem(&mut tx, redeem).await?;
        T::commit(tx).await?;
        Ok(outcome)
    }
}
