//! The `Store` of SQLite: reads on the reader pool, writes on the one writer, each
//! write a composition of the engine's steps (`super::steps`).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows::{
    AuditRecord, EPOCH_COLUMNS, EpochRow, FAMILY_COLUMNS, TokenStateRecord, UserRecord, classify,
    from_ms, ms, uuid,
};
use super::{SWEEP_CHUNK, SWEEP_PAGE, SqliteStore};
use crate::crypto::refresh::TokenHash;
use crate::domain::family::RefreshPolicy;
use crate::domain::user::User;
use crate::store::engine::Transactional as _;
use crate::store::{
    AuditEvent, Epoch, RefreshTokenState, RotateOutcome, RotateRequest, Session, Store, StoreError,
    SweepCursor, SweepStep, TokenRef, UserWithHash,
};

/// A revocation epoch covers the family `f` (introspection counts it as revoked).
const EPOCH_REVOKED_F: &str = epoch_revoked!("f");

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.checkpointer.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn epochs(&self) -> Result<Vec<Epoch>, StoreError> {
        let rows: Vec<EpochRow> =
            sqlx::query_as(&format!("SELECT {EPOCH_COLUMNS} FROM session_epochs"))
                .fetch_all(&self.reader)
                .await
                .map_err(classify)?;
        rows.into_iter().map(super::rows::epoch).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(user.id.to_string())
        .bind(&user.email)
        .bind(password_hash)
        .bind(ms(user.created_at))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, StoreError> {
        self.user_where("email", email.to_owned()).await
    }

    async fn rotate(&self, r: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        self.rotations.rotate(r).await
    }

    async fn list_sessions(
        &self,
        user_id: Uuid,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<Session>, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let rows: Vec<(String, String, i64, i64, Option<String>, Option<String>)> =
            sqlx::query_as(concat!(
                "SELECT id, client_id, created_at, last_used_at, ip, user_agent
                 FROM refresh_families
                 WHERE user_id = ?1 AND revoked_at IS NULL
                   AND last_used_at > ?2 AND created_at > ?3
               AND NOT ",
                epoch_revoked!("refresh_families"),
                "
                 ORDER BY last_used_at DESC, id"
            ))
            .bind(user_id.to_string())
            .bind(ms(idle_cutoff))
            .bind(ms(absolute_cutoff))
            .fetch_all(&self.reader)
            .await
            .map_err(classify)?;
        rows.into_iter()
            .map(
                |(id, client_id, created_at, last_used_at, ip, user_agent)| {
                    Ok(Session {
                        id: uuid(&id)?,
                        client_id,
                        created_at: from_ms(created_at)?,
                        last_used_at: from_ms(last_used_at)?,
                        ip,
                        user_agent,
                    })
                },
            )
            .collect()
    }

    async fn count_live_families(
        &self,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let (n,): (i64,) = sqlx::query_as(concat!(
            "SELECT count(*) FROM refresh_families
             WHERE revoked_at IS NULL AND last_used_at > ?1 AND created_at > ?2
               AND NOT ",
            epoch_revoked!("refresh_families"),
            ""
        ))
        .bind(ms(idle_cutoff))
        .bind(ms(absolute_cutoff))
        .fetch_one(&self.reader)
        .await
        .map_err(classify)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn find_user(&self, id: Uuid) -> Result<Option<UserWithHash>, StoreError> {
        self.user_where("id", id.to_string()).await
    }

    async fn set_role(
        &self,
        email: &str,
        role: &str,
        granted: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let user: Option<(String,)> = sqlx::query_as("SELECT id FROM users WHERE email = ?1")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
        let Some((user_id,)) = user else {
            return Ok(false);
        };
        let query = if granted {
            sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, role) DO NOTHING",
            )
            .bind(user_id)
            .bind(role)
            .bind(ms(now))
        } else {
            sqlx::query("DELETE FROM user_roles WHERE user_id = ?1 AND role = ?2")
                .bind(user_id)
                .bind(role)
        };
        query.execute(&mut *tx).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn has_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        let found: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM user_roles WHERE user_id = ?1 AND role = ?2")
                .bind(user_id.to_string())
                .bind(role)
                .fetch_optional(&self.reader)
                .await
                .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn sweep_audit(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM audit_events WHERE rowid IN (
                 SELECT rowid FROM audit_events WHERE at < ?1 LIMIT ?2)",
        )
        .bind(ms(before))
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    async fn known_login_source(
        &self,
        user_id: Uuid,
        source: &str,
        since: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM login_sources
             WHERE user_id = ?1 AND source = ?2 AND last_success_at >= ?3",
        )
        .bind(user_id.to_string())
        .bind(source)
        .bind(ms(since))
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn sweep_login_sources(
        &self,
        before: OffsetDateTime,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM login_sources WHERE (user_id, source) IN (
                 SELECT user_id, source FROM login_sources WHERE last_success_at < ?1 LIMIT ?2)",
        )
        .bind(ms(before))
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    async fn audit_events(
        &self,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRecord> = sqlx::query_as(&format!(
            "SELECT at, kind, user_id, family_id, client_id, detail, actor_id FROM audit_events
             WHERE {} ORDER BY at DESC, id DESC LIMIT ?2",
            // One statement per case: SQLite answers `?1 IS NULL OR user_id = ?1` by
            // walking the whole `at` index for a user with few events (~130 ms at 100k).
            if user_id.is_some() {
                "user_id = ?1"
            } else {
                "?1 IS NULL"
            }
        ))
        .bind(user_id.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.into_iter().map(AuditRecord::event).collect()
    }

    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(Uuid, OffsetDateTime)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, revoked_at FROM refresh_families WHERE revoked_at >= ?1")
                .bind(ms(since))
                .fetch_all(&self.reader)
                .await
                .map_err(classify)?;
        rows.into_iter()
            .map(|(id, at)| Ok((uuid(&id)?, from_ms(at)?)))
            .collect()
    }

    async fn refresh_token_state(
        &self,
        token: &TokenRef,
    ) -> Result<Option<RefreshTokenState>, StoreError> {
        let row: Option<TokenStateRecord> = match token {
            // Used once the family's generation is past it.
            TokenRef::Minted { family, generation } => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, f.last_used_at, (f.revoked_at IS NOT NULL OR {EPOCH_REVOKED_F}) AS family_revoked,
                        f.generation > ?2 AS consumed,
                        f.generation_issued_at AS issued_at,
                        u.disabled_at IS NOT NULL AS user_disabled
                 FROM refresh_families f JOIN users u ON u.id = f.user_id
                 WHERE f.id = ?1"
            ))
            .bind(family.to_string())
            .bind(i64::try_from(*generation).unwrap_or(i64::MAX))
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?,
            TokenRef::Legacy(hash) => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, f.last_used_at, (f.revoked_at IS NOT NULL OR {EPOCH_REVOKED_F}) AS family_revoked,
                        t.consumed_at IS NOT NULL AS consumed, t.created_at AS issued_at,
                        u.disabled_at IS NOT NULL AS user_disabled
                 FROM refresh_tokens t
                 JOIN refresh_families f ON f.id = t.family_id
                 JOIN users u ON u.id = f.user_id
                 WHERE t.token_hash = ?1"
            ))
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?,
        };
        row.map(TokenStateRecord::state).transpose()
    }

    async fn legacy_family(&self, token: &TokenHash) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_hash = ?1")
                .bind(&token[..])
                .fetch_optional(&self.reader)
                .await
                .map_err(classify)?;
        row.map(|(id,)| uuid(&id)).transpose()
    }

    async fn session_user(
        &self,
        family_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(concat!(
            "SELECT u.id, u.email, u.password_hash, u.created_at, u.disabled_at
             FROM refresh_families f JOIN users u ON u.id = f.user_id
             WHERE f.id = ?1 AND f.user_id = ?2 AND f.revoked_at IS NULL AND u.disabled_at IS NULL
               AND NOT ",
            epoch_revoked!("f"),
            ""
        ))
        .bind(family_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        record.map(|r| r.user()).transpose()
    }

    async fn sweep_step(
        &self,
        policy: &RefreshPolicy,
        cutoff: OffsetDateTime,
        from: &SweepCursor,
    ) -> Result<SweepStep, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(cutoff);
        // Revoked, idle, past its lifetime, or covered by an epoch set before the cutoff.
        const ENDED: &str = "(revoked_at <= ?1 OR last_used_at <= ?2 OR created_at <= ?3
            OR EXISTS (SELECT 1 FROM session_epochs se
                       WHERE se.client_id IN ('*', refresh_families.client_id)
                         AND refresh_families.created_at < se.not_before AND se.set_at <= ?1))";
        let after: i64 = if from.0.is_empty() {
            0
        } else {
            from.0.parse().map_err(|e: std::num::ParseIntError| {
                StoreError::Other(sqlx::Error::Decode(e.into()))
            })?
        };
        // A page read on a reader in rowid order, and of it the families that ended
        // deleted by rowid in write transactions of at most `SWEEP_CHUNK` that check the
        // condition again (a family used in between stays). The single writer is held
        // only for the deletes: scanning in it held every rotation behind the scan.
        let page: Vec<(i64, bool)> = sqlx::query_as(&format!(
            "SELECT rowid, IFNULL({ENDED}, 0) FROM refresh_families
             WHERE rowid > ?4 ORDER BY rowid LIMIT ?5"
        ))
        .bind(ms(cutoff))
        .bind(ms(idle_cutoff))
        .bind(ms(absolute_cutoff))
        .bind(after)
        .bind(SWEEP_PAGE)
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        let ended: Vec<i64> = page.iter().filter(|(_, e)| *e).map(|(r, _)| *r).collect();
        let mut deleted = 0;
        for chunk in ended.chunks(SWEEP_CHUNK) {
            let rowids = chunk.iter().map(i64::to_string).collect::<Vec<_>>();
            let mut tx = self.begin_write().await?;
            deleted += sqlx::query(&format!(
                "DELETE FROM refresh_families
                 WHERE rowid IN (SELECT value FROM json_each(?4)) AND {ENDED}"
            ))
            .bind(ms(cutoff))
            .bind(ms(idle_cutoff))
            .bind(ms(absolute_cutoff))
            .bind(format!("[{}]", rowids.join(",")))
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            tx.commit().await.map_err(classify)?;
        }
        Ok(SweepStep {
            deleted,
            next: page.last().map(|(rowid, _)| SweepCursor(rowid.to_string())),
        })
    }
}
