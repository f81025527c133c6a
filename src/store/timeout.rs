//! A store decorator that bounds every operation: a database that stops answering (or
//! answers too slowly) fails the request with `Unavailable` after `limit`, so the API
//! answers 503 instead of hanging. A transaction cut short this way is rolled back by
//! the database: nothing is ever half-written.
//!
//! A rotation is bounded differently, because a 503 must not hide a rotation that
//! happens anyway (its retry would look like a reuse): at `limit` the caller leaves only
//! if the store has not claimed the rotation's point of no return (`Ticket`); otherwise
//! it waits for the store's answer, at most `limit` plus `CLAIMED_MARGIN` more. The
//! database bounds that wait itself (PostgreSQL's `statement_timeout` is `limit`;
//! SQLite commits a batch whose write lock it holds in milliseconds), so the margin
//! runs out only when the connection dies with the statement in flight, or a disk
//! stalls a commit for seconds: then the outcome is unknown, and it is logged as such.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AuditEvent, Authorizations, CodeHash, Consent, Epoch, NewFamily, PasswordChange, Redeem,
    RedeemOutcome, RefreshTokenState, RevokeOutcome, RotateOutcome, RotateRequest, Session,
    SessionSelector, Sessions, Store, StoreError, StoredCode, SweepCursor, SweepStep, Ticket,
    TokenRef, UserWithHash,
};
use crate::crypto::refresh::TokenHash;
use crate::domain::family::{RefreshPolicy, RevokeReason};
use crate::domain::user::User;
use crate::metrics::Metrics;

/// Abandons a rotation whose caller is dropped (a client that hung up).
struct AbandonOnDrop(Ticket);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// How much longer than twice `limit` a caller waits for a claimed rotation.
const CLAIMED_MARGIN: Duration = Duration::from_secs(1);

/// Bounds every call of the inner store by `limit`.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    limit: Duration,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>, limit: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            limit,
            metrics,
        }
    }

    /// Bounds `op` by the limit; counts the failures for `/metrics` (a conflict is an
    /// answer, not a failure).
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.limit, op)
            .await
            .map_err(|_| StoreError::TimedOut(self.limit))
            .and_then(|r| r);
        if matches!(&result, Err(e) if !matches!(e, StoreError::Conflict)) {
            self.metrics.db_errors.inc();
        }
        result
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn close(&self) {
        // Bounded too: a connection stuck on a dead database must not hold up the exit.
        let _ = tokio::time::timeout(self.limit, self.inner.close()).await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.inner.ping()).await
    }

    async fn epochs(&self) -> Result<Vec<Epoch>, StoreError> {
        self.bounded(self.inner.epochs()).await
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        self.bounded(self.inner.create_user(user, password_hash))
            .await
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, StoreError> {
        self.bounded(self.inner.find_user_by_email(email)).await
    }

    async fn rotate(&self, request: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let backstop = deadline + self.limit + CLAIMED_MARGIN;
        let ticket = Ticket::until(deadline);
        // A client that hangs up drops this future: its rotation is abandoned too,
        // unless already past its point of no return.
        let _abandon_on_drop = AbandonOnDrop(ticket.clone());
        let request = RotateRequest {
            ticket: ticket.clone(),
            ..request.clone()
        };
        let rotation = self.inner.rotate(&request);
        tokio::pin!(rotation);
        let result = loop {
            tokio::select! {
                result = &mut rotation => break result,
                () = tokio::time::sleep_until(deadline) => {}
            }
            if ticket.abandon() {
                break Err(StoreError::TimedOut(self.limit));
            }
            // Claimed: a commit may be under way. Wait for it, or for the claim to be
            // released (then the next turn abandons).
            tokio::select! {
                result = &mut rotation => break result,
                () = ticket.released() => {}
                () = tokio::time::sleep_until(backstop) => {
                    tracing::error!(
                        "a rotation's database connection gave no answer after its claim; its outcome is unknown"
                    );
                    break Err(StoreError::TimedOut(self.limit));
                }
            }
        };
        if matches!(&result, Err(e) if !matches!(e, StoreError::Conflict)) {
            self.metrics.db_errors.inc();
        }
        result
    }

    async fn list_sessions(
        &self,
        user_id: Uuid,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<Session>, StoreError> {
        self.bounded(self.inner.list_sessions(user_id, policy, now))
            .await
    }

    async fn count_live_families(
        &self,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.bounded(self.inner.count_live_families(policy, now))
            .await
    }

    async fn find_user(&self, id: Uuid) -> Result<Option<UserWithHash>, StoreError> {
        self.bounded(self.inner.find_user(id)).await
    }

    async fn set_role(
        &self,
        email: &str,
        role: &str,
        granted: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.bounded(self.inner.set_role(email, role, granted, now))
            .await
    }

    async fn has_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        self.bounded(self.inner.has_role(user_id, role)).await
    }

    async fn sweep_audit(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        self.bounded(self.inner.sweep_audit(before, at_most)).await
    }

    async fn known_login_source(
        &self,
        user_id: Uuid,
        source: &str,
        since: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.bounded(self.inner.known_login_source(user_id, source, since))
            .await
    }

    async fn sweep_login_sources(
        &self,
        before: OffsetDateTime,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        self.bounded(self.inner.sweep_login_sources(before, at_most))
            .await
    }

    async fn audit_events(
        &self,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.bounded(self.inner.audit_events(user_id, limit)).await
    }

    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(Uuid, OffsetDateTime)>, StoreError> {
        self.bounded(self.inner.revoked_since(since)).await
    }

    async fn refresh_token_state(
        &self,
        token: &TokenRef,
    ) -> Result<Option<RefreshTokenState>, StoreError> {
        self.bounded(self.inner.refresh_token_state(token)).await
    }

    async fn legacy_family(&self, token: &TokenHash) -> Result<Option<Uuid>, StoreError> {
        self.bounded(self.inner.legacy_family(token)).await
    }

    async fn session_user(
        &self,
        family_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        self.bounded(self.inner.session_user(family_id, user_id))
            .await
    }

    async fn sweep_step(
        &self,
        policy: &RefreshPolicy,
        cutoff: OffsetDateTime,
        from: &SweepCursor,
    ) -> Result<SweepStep, StoreError> {
        self.bounded(self.inner.sweep_step(policy, cutoff, from))
            .await
    }
}

#[async_trait]
impl Sessions for TimedStore {
    async fn create_family(&self, family: &NewFamily) -> Result<bool, StoreError> {
        self.bounded(self.inner.create_family(family)).await
    }

    async fn revoke_by_token(
        &self,
        token: &TokenRef,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        self.bounded(self.inner.revoke_by_token(token, client_id, now))
            .await
    }

    async fn revoke_family(
        &self,
        family_id: Uuid,
        client_id: &str,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.bounded(self.inner.revoke_family(family_id, client_id, reason, now))
            .await
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.bounded(self.inner.revoke_sessions(user_id, which, reason, now))
            .await
    }

    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        family: &NewFamily,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        self.bounded(self.inner.change_password(change, family, now))
            .await
    }

    async fn set_disabled(
        &self,
        user_id: Uuid,
        disabled: bool,
        actor: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        self.bounded(self.inner.set_disabled(user_id, disabled, actor, now))
            .await
    }

    async fn set_epoch(&self, epoch: &Epoch, event: &AuditEvent) -> Result<Epoch, StoreError> {
        self.bounded(self.inner.set_epoch(epoch, event)).await
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.bounded(self.inner.record_audit(event)).await
    }

    /// A caller that stops waiting may leave an exchange that commits later: its
    /// client's retry of the code is then a reuse, which revokes the session nobody
    /// holds.
    async fn redeem_code(&self, redeem: &Redeem<'_>) -> Result<RedeemOutcome, StoreError> {
        self.bounded(self.inner.redeem_code(redeem)).await
    }
}

#[async_trait]
impl Authorizations for TimedStore {
    async fn insert_code(&self, code: &StoredCode) -> Result<(), StoreError> {
        self.bounded(self.inner.insert_code(code)).await
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<StoredCode>, StoreError> {
        self.bounded(self.inner.find_code(hash)).await
    }

    async fn sweep_codes(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        self.bounded(self.inner.sweep_codes(before, at_most)).await
    }

    async fn consents(
        &self,
        user_id: Uuid,
        client_id: Option<&str>,
    ) -> Result<Vec<Consent>, StoreError> {
        self.bounded(self.inner.consents(user_id, client_id)).await
    }

    async fn grant_consent(
        &self,
        user_id: Uuid,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.bounded(self.inner.grant_consent(user_id, client_id, scope, now))
            .await
    }

    async fn revoke_consents(&self, user_id: Uuid, client_id: &str) -> Result<u64, StoreError> {
        self.bounded(self.inner.revoke_consents(user_id, client_id))
            .await
    }
}
