//! The `Store` of PostgreSQL: each write a composition of the engine's steps
//! (`super::steps`) in one transaction.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows::{AuditRecord, FAMILY_COLUMNS, TokenStateRecord, UserRecord};
use super::{PgStore, SWEEP_PAGE, classify};
use crate::crypto::refresh::TokenHash;
use crate::domain::family::RefreshPolicy;
use crate::domain::user::User;
use crate::store::{
    AuditEvent, Epoch, RefreshTokenState, RotateOutcome, RotateRequest, Session, Store, StoreError,
    SweepCursor, SweepStep, TokenRef, UserWithHash,
};

/// A revocation epoch covers the family `f` (introspection counts it as revoked).
const EPOCH_REVOKED_F: &str = epoch_revoked!("f");

#[async_trait]
impl Store for PgStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn epochs(&self) -> Result<Vec<Epoch>, StoreError> {
        let rows: Vec<super::rows::EpochRow> = sqlx::query_as(&format!(
            "SELECT {} FROM session_epochs",
            super::rows::EPOCH_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows.into_iter().map(super::rows::epoch).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user.id)
        .bind(&user.email)
        .bind(password_hash)
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(
            "SELECT id, email, password_hash, created_at, disabled_at FROM users WHERE email = $1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(record.map(UserWithHash::from))
    }

    async fn rotate(&self, request: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        self.rotate_with_retries(request).await
    }

    async fn list_sessions(
        &self,
        user_id: Uuid,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<Session>, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let rows: Vec<(
            Uuid,
            String,
            OffsetDateTime,
            OffsetDateTime,
            Option<String>,
            Option<String>,
        )> = sqlx::query_as(concat!(
            "SELECT id, client_id, created_at, last_used_at, ip, user_agent
                 FROM refresh_families
                 WHERE user_id = $1 AND revoked_at IS NULL
                   AND last_used_at > $2 AND created_at > $3
               AND NOT ",
            epoch_revoked!("refresh_families"),
            "
                 ORDER BY last_used_at DESC, id"
        ))
        .bind(user_id)
        .bind(idle_cutoff)
        .bind(absolute_cutoff)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, client_id, created_at, last_used_at, ip, user_agent)| Session {
                    id,
                    client_id,
                    created_at,
                    last_used_at,
                    ip,
                    user_agent,
                },
            )
            .collect())
    }

    async fn count_live_families(
        &self,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let (n,): (i64,) = sqlx::query_as(concat!(
            "SELECT count(*) FROM refresh_families
             WHERE revoked_at IS NULL AND last_used_at > $1 AND created_at > $2
               AND NOT ",
            epoch_revoked!("refresh_families"),
            ""
        ))
        .bind(idle_cutoff)
        .bind(absolute_cutoff)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn find_user(&self, id: Uuid) -> Result<Option<UserWithHash>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(
            "SELECT id, email, password_hash, created_at, disabled_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(record.map(UserWithHash::from))
    }

    async fn set_role(
        &self,
        email: &str,
        role: &str,
        granted: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let user: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        let Some((user_id,)) = user else {
            return Ok(false);
        };
        let query = if granted {
            sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, role) DO NOTHING",
            )
            .bind(user_id)
            .bind(role)
            .bind(now)
        } else {
            sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
                .bind(user_id)
                .bind(role)
        };
        query.execute(&self.pool).await.map_err(classify)?;
        Ok(true)
    }

    async fn has_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        let found: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM user_roles WHERE user_id = $1 AND role = $2")
                .bind(user_id)
                .bind(role)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn sweep_audit(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM audit_events
             WHERE id IN (SELECT id FROM audit_events WHERE at < $1 ORDER BY at LIMIT $2)
               AND at < $1",
        )
        .bind(before)
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(deleted)
    }

    async fn known_login_source(
        &self,
        user_id: Uuid,
        source: &str,
        since: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let found: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM login_sources
             WHERE user_id = $1 AND source = $2 AND last_success_at >= $3",
        )
        .bind(user_id)
        .bind(source)
        .bind(since)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn sweep_login_sources(
        &self,
        before: OffsetDateTime,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            // By key, and the condition again on the row deleted: a login that uses the
            // source meanwhile (its upsert waits for the row, or makes the delete wait)
            // keeps it.
            "DELETE FROM login_sources
             WHERE (user_id, source) IN (
                       SELECT user_id, source FROM login_sources
                       WHERE last_success_at < $1 ORDER BY last_success_at LIMIT $2)
               AND last_success_at < $1",
        )
        .bind(before)
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(deleted)
    }

    async fn audit_events(
        &self,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRecord> = sqlx::query_as(&format!(
            "SELECT at, kind, user_id, family_id, client_id, detail, actor_id FROM audit_events
             WHERE {} ORDER BY at DESC, id DESC LIMIT $2",
            // One statement per case: a generic plan of `$1 IS NULL OR user_id = $1`
            // walks the whole `at` index (35 ms at 100k events).
            if user_id.is_some() {
                "user_id = $1"
            } else {
                "$1::uuid IS NULL"
            }
        ))
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter().map(AuditRecord::event).collect()
    }

    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(Uuid, OffsetDateTime)>, StoreError> {
        sqlx::query_as("SELECT id, revoked_at FROM refresh_families WHERE revoked_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn refresh_token_state(
        &self,
        token: &TokenRef,
    ) -> Result<Option<RefreshTokenState>, StoreError> {
        let row: Option<TokenStateRecord> = match token {
            // Used once the family's generation is past it.
            TokenRef::Minted { family, generation } => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, f.last_used_at, (f.revoked_at IS NOT NULL OR {EPOCH_REVOKED_F}) AS family_revoked,
                        f.generation > $2 AS consumed,
                        f.generation_issued_at AS issued_at,
                        u.disabled_at IS NOT NULL AS user_disabled
                 FROM refresh_families f JOIN users u ON u.id = f.user_id
                 WHERE f.id = $1"
            ))
            .bind(*family)
            .bind(i64::try_from(*generation).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?,
            TokenRef::Legacy(hash) => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, f.last_used_at, (f.revoked_at IS NOT NULL OR {EPOCH_REVOKED_F}) AS family_revoked,
                        t.consumed_at IS NOT NULL AS consumed, t.created_at AS issued_at,
                        u.disabled_at IS NOT NULL AS user_disabled
                 FROM refresh_tokens t
                 JOIN refresh_families f ON f.id = t.family_id
                 JOIN users u ON u.id = f.user_id
                 WHERE t.token_hash = $1"
            ))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?,
        };
        Ok(row.map(Into::into))
    }

    async fn legacy_family(&self, token: &TokenHash) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Uuid,)> =
            sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(&token[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
        Ok(row.map(|(id,)| id))
    }

    async fn session_user(
        &self,
        family_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(concat!(
            "SELECT u.id, u.email, u.password_hash, u.created_at, u.disabled_at
             FROM refresh_families f JOIN users u ON u.id = f.user_id
             WHERE f.id = $1 AND f.user_id = $2 AND f.revoked_at IS NULL AND u.disabled_at IS NULL
               AND NOT ",
            epoch_revoked!("f"),
            ""
        ))
        .bind(family_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(record.map(|r| r.user()))
    }

    async fn sweep_step(
        &self,
        policy: &RefreshPolicy,
        cutoff: OffsetDateTime,
        from: &SweepCursor,
    ) -> Result<SweepStep, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(cutoff);
        let from = if from.0.is_empty() {
            Uuid::nil()
        } else {
            Uuid::parse_str(&from.0)
                .map_err(|e| StoreError::Other(sqlx::Error::Decode(e.into())))?
        };
        // A page in key order, and of it the families that ended, deleted in the same
        // statement; the condition is checked again on the row it deletes (a family
        // rotated meanwhile is live again).
        let (last, deleted): (Option<Uuid>, i64) = sqlx::query_as(
            "WITH page AS (
                 SELECT id FROM refresh_families WHERE id > $4 ORDER BY id LIMIT $5),
             gone AS (
                 DELETE FROM refresh_families f USING page
                 WHERE f.id = page.id
                   AND (f.revoked_at <= $1 OR f.last_used_at <= $2 OR f.created_at <= $3
                        OR EXISTS (SELECT 1 FROM session_epochs se
                                   WHERE se.client_id IN ('*', f.client_id)
                                     AND f.created_at < se.not_before AND se.set_at <= $1))
                 RETURNING 1)
             SELECT (SELECT id FROM page ORDER BY id DESC LIMIT 1), (SELECT count(*) FROM gone)",
        )
        .bind(cutoff)
        .bind(idle_cutoff)
        .bind(absolute_cutoff)
        .bind(from)
        .bind(SWEEP_PAGE)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(SweepStep {
            deleted: u64::try_from(deleted).unwrap_or(0),
            next: last.map(|id| SweepCursor(id.to_string())),
        })
    }
}
