//! The SQLite statements of the engine's steps, run in a `BEGIN IMMEDIATE` transaction
//! of the one writer (or a savepoint of it).

use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows::{
    self, EPOCH_COLUMNS, EpochRow, FAMILY_COLUMNS, FamilyRecord, GenerationRecord, PresentedRecord,
    STATE_COLUMNS, classify, ms, uuid,
};
use crate::domain::family::RevokeReason;
use crate::store::engine::{Presented, Revoked, Steps, TokenOwner};
use crate::store::{
    AuditEvent, CodeHash, Epoch, FamilyInfo, NewFamily, PasswordChange, RotateRequest,
    SessionSelector, StoreError, TokenRef,
};

#[async_trait]
impl Steps for Transaction<'_, Sqlite> {
    async fn rotate_fresh(
        &mut self,
        r: &RotateRequest<'_>,
    ) -> Result<Option<(FamilyInfo, u64)>, StoreError> {
        let now = ms(r.now);
        let (idle_cutoff, absolute_cutoff) = r.policy.cutoffs(r.now);
        let (family_id, from) = match r.presented {
            TokenRef::Minted { family, generation } => {
                let Ok(generation) = i64::try_from(generation) else {
                    return Ok(None);
                };
                (family.to_string(), generation)
            }
            // A live token of the earlier format, at generation 0: consumed once, and
            // answered with the minted token of generation 1.
            TokenRef::Legacy(hash) => {
                let consumed: Option<(String,)> = sqlx::query_as(concat!(
                    "UPDATE refresh_tokens SET consumed_at = ?1
                     WHERE token_hash = ?2 AND consumed_at IS NULL
                       AND EXISTS (SELECT 1 FROM refresh_families f
                                   WHERE f.id = refresh_tokens.family_id AND f.generation = 0
                                     AND f.revoked_at IS NULL AND f.client_id = ?3
                                     AND f.last_used_at > ?4 AND f.created_at > ?5
                                     AND EXISTS (SELECT 1 FROM users u
                                                 WHERE u.id = f.user_id AND u.disabled_at IS NULL)
                                     AND NOT ",
                    epoch_revoked!("f"),
                    ") RETURNING family_id"
                ))
                .bind(now)
                .bind(&hash[..])
                .bind(r.client_id)
                .bind(ms(idle_cutoff))
                .bind(ms(absolute_cutoff))
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
                let Some((family_id,)) = consumed else {
                    return Ok(None);
                };
                (family_id, 0)
            }
        };
        // Only the live generation of a live family of this client advances, and only
        // once. The checks are correlated `EXISTS`, looked up by primary key.
        let record: Option<GenerationRecord> = sqlx::query_as(concat!(
            "UPDATE refresh_families SET generation = generation + 1,
                    generation_issued_at = ?1, last_used_at = ?1,
                    ip = COALESCE(?7, ip), user_agent = COALESCE(?8, user_agent)
             WHERE id = ?2 AND generation = ?3 AND revoked_at IS NULL AND client_id = ?4
               AND last_used_at > ?5 AND created_at > ?6
               AND EXISTS (SELECT 1 FROM users u
                           WHERE u.id = refresh_families.user_id AND u.disabled_at IS NULL)
               AND (dpop_jkt IS NULL OR dpop_jkt = ?9)
               AND NOT ",
            epoch_revoked!("refresh_families"),
            " RETURNING id, user_id, client_id, scope, created_at, dpop_jkt, generation"
        ))
        .bind(now)
        .bind(&family_id)
        .bind(from)
        .bind(r.client_id)
        .bind(ms(idle_cutoff))
        .bind(ms(absolute_cutoff))
        .bind(r.ip)
        .bind(r.user_agent)
        .bind(r.dpop_jkt)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        record.map(GenerationRecord::advanced).transpose()
    }

    async fn presented(&mut self, r: &RotateRequest<'_>) -> Result<Option<Presented>, StoreError> {
        let record: Option<PresentedRecord> = match r.presented {
            TokenRef::Minted { family, generation } => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, {STATE_COLUMNS}, ?2 AS presented_generation
                 FROM refresh_families f WHERE f.id = ?1"
            ))
            .bind(family.to_string())
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .fetch_optional(&mut **self)
            .await
            .map_err(classify)?,
            // Live, or consumed by the upgrade rotation (no successor of its format):
            // generation 0; consumed before the upgrade: older than any generation.
            TokenRef::Legacy(hash) => sqlx::query_as(&format!(
                "SELECT {FAMILY_COLUMNS}, {STATE_COLUMNS},
                        CASE WHEN t.consumed_at IS NULL
                               OR NOT EXISTS (SELECT 1 FROM refresh_tokens s
                                              WHERE s.parent_hash = t.token_hash)
                             THEN 0 END AS presented_generation
                 FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
                 WHERE t.token_hash = ?1"
            ))
            .bind(&hash[..])
            .fetch_optional(&mut **self)
            .await
            .map_err(classify)?,
        };
        record.map(PresentedRecord::presented).transpose()
    }

    async fn touch_family(
        &mut self,
        family_id: Uuid,
        r: &RotateRequest<'_>,
    ) -> Result<Option<FamilyInfo>, StoreError> {
        let record: Option<FamilyRecord> = sqlx::query_as(concat!(
            "UPDATE refresh_families SET last_used_at = ?1,
                    ip = COALESCE(?3, ip), user_agent = COALESCE(?4, user_agent)
             WHERE id = ?2
               AND revoked_at IS NULL
               AND EXISTS (SELECT 1 FROM users u
                           WHERE u.id = refresh_families.user_id AND u.disabled_at IS NULL)
               AND NOT ",
            epoch_revoked!("refresh_families"),
            " RETURNING id, user_id, client_id, scope, created_at, dpop_jkt"
        ))
        .bind(ms(r.now))
        .bind(family_id.to_string())
        .bind(r.ip)
        .bind(r.user_agent)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        record.map(FamilyRecord::info).transpose()
    }

    async fn move_forward(
        &mut self,
        family_id: Uuid,
        from: u64,
        to: u64,
        r: &RotateRequest<'_>,
    ) -> Result<Option<FamilyInfo>, StoreError> {
        let (Ok(from), Ok(to)) = (i64::try_from(from), i64::try_from(to)) else {
            return Ok(None);
        };
        let record: Option<FamilyRecord> = sqlx::query_as(concat!(
            "UPDATE refresh_families SET generation = ?3, generation_issued_at = ?1,
                    last_used_at = ?1,
                    ip = COALESCE(?5, ip), user_agent = COALESCE(?6, user_agent)
             WHERE id = ?2 AND generation = ?4
               AND revoked_at IS NULL
               AND EXISTS (SELECT 1 FROM users u
                           WHERE u.id = refresh_families.user_id AND u.disabled_at IS NULL)
               AND NOT ",
            epoch_revoked!("refresh_families"),
            " RETURNING id, user_id, client_id, scope, created_at, dpop_jkt"
        ))
        .bind(ms(r.now))
        .bind(family_id.to_string())
        .bind(to)
        .bind(from)
        .bind(r.ip)
        .bind(r.user_agent)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        record.map(FamilyRecord::info).transpose()
    }

    async fn family_info(&mut self, family_id: Uuid) -> Result<FamilyInfo, StoreError> {
        let record: FamilyRecord = sqlx::query_as(&format!(
            "SELECT {FAMILY_COLUMNS} FROM refresh_families f WHERE f.id = ?1"
        ))
        .bind(family_id.to_string())
        .fetch_one(&mut **self)
        .await
        .map_err(classify)?;
        record.info()
    }

    async fn mark_revoked(
        &mut self,
        family_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Option<Revoked>, StoreError> {
        let revoked: Option<(String, String)> = sqlx::query_as(
            "UPDATE refresh_families SET revoked_at = ?1, revoked_reason = ?2
             WHERE id = ?3 AND revoked_at IS NULL RETURNING user_id, client_id",
        )
        .bind(ms(now))
        .bind(reason.code())
        .bind(family_id.to_string())
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        revoked
            .map(|(user_id, client_id)| {
                Ok(Revoked {
                    family_id,
                    user_id: uuid(&user_id)?,
                    client_id,
                })
            })
            .transpose()
    }

    async fn mark_sessions_revoked(
        &mut self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Revoked>, StoreError> {
        let (filter, id) = match which {
            SessionSelector::One(id) => ("id = ?4", Some(id.to_string())),
            SessionSelector::AllBut(id) => ("id <> ?4", Some(id.to_string())),
            SessionSelector::All => ("?4 IS NULL", None),
        };
        let revoked: Vec<(String, String)> = sqlx::query_as(&format!(
            concat!(
                "UPDATE refresh_families SET revoked_at = ?1, revoked_reason = ?2
             WHERE user_id = ?3 AND revoked_at IS NULL AND {filter} AND NOT ",
                epoch_revoked!("refresh_families"),
                "
             RETURNING id, client_id"
            ),
            filter = filter
        ))
        .bind(ms(now))
        .bind(reason.code())
        .bind(user_id.to_string())
        .bind(id)
        .fetch_all(&mut **self)
        .await
        .map_err(classify)?;
        revoked
            .into_iter()
            .map(|(family_id, client_id)| {
                Ok(Revoked {
                    family_id: uuid(&family_id)?,
                    user_id,
                    client_id,
                })
            })
            .collect()
    }

    async fn token_owner(&mut self, token: &TokenRef) -> Result<Option<TokenOwner>, StoreError> {
        let found: Option<(String, String, bool)> = match token {
            TokenRef::Minted { family, .. } => sqlx::query_as(
                "SELECT id, client_id, revoked_at IS NOT NULL FROM refresh_families
                 WHERE id = ?1",
            )
            .bind(family.to_string())
            .fetch_optional(&mut **self)
            .await
            .map_err(classify)?,
            TokenRef::Legacy(hash) => sqlx::query_as(
                "SELECT f.id, f.client_id, f.revoked_at IS NOT NULL FROM refresh_tokens t
                 JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = ?1",
            )
            .bind(&hash[..])
            .fetch_optional(&mut **self)
            .await
            .map_err(classify)?,
        };
        found
            .map(|(id, client_id, revoked)| {
                Ok(TokenOwner {
                    family_id: uuid(&id)?,
                    client_id,
                    revoked,
                })
            })
            .transpose()
    }

    async fn family_of_client(
        &mut self,
        family_id: Uuid,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let owned: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM refresh_families WHERE id = ?1 AND client_id = ?2")
                .bind(family_id.to_string())
                .bind(client_id)
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
        Ok(owned.is_some())
    }

    async fn insert_family(&mut self, f: &NewFamily) -> Result<bool, StoreError> {
        // Under the write lock, the check and the insert see the same user.
        let inserted = sqlx::query(
            "INSERT INTO refresh_families
                 (id, user_id, client_id, scope, created_at, last_used_at, user_agent, ip,
                  generation, generation_issued_at, dpop_jkt)
             SELECT ?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, 0, ?5, ?9
             WHERE ?8 IS NULL OR EXISTS (SELECT 1 FROM users
                                         WHERE id = ?2 AND disabled_at IS NULL
                                           AND password_hash = ?8)",
        )
        .bind(f.id.to_string())
        .bind(f.user_id.to_string())
        .bind(&f.client_id)
        .bind(&f.scope)
        .bind(ms(f.created_at))
        .bind(&f.user_agent)
        .bind(&f.ip)
        .bind(&f.checked_password_hash)
        .bind(&f.dpop_jkt)
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(inserted > 0)
    }

    async fn remember_login_source(
        &mut self,
        user_id: Uuid,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO login_sources (user_id, source, last_success_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, source) DO UPDATE SET last_success_at = excluded.last_success_at",
        )
        .bind(user_id.to_string())
        .bind(source)
        .bind(ms(at))
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn mark_disabled(
        &mut self,
        user_id: Uuid,
        disabled: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE users SET disabled_at = CASE WHEN ?2 THEN COALESCE(disabled_at, ?3) END
             WHERE id = ?1",
        )
        .bind(user_id.to_string())
        .bind(disabled)
        .bind(ms(now))
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn replace_password(&mut self, change: &PasswordChange<'_>) -> Result<bool, StoreError> {
        let updated = sqlx::query(concat!(
            "UPDATE users SET password_hash = ?1
             WHERE id = ?2 AND password_hash = ?3 AND disabled_at IS NULL
               AND EXISTS (SELECT 1 FROM refresh_families
                           WHERE id = ?4 AND user_id = ?2 AND revoked_at IS NULL
               AND NOT ",
            epoch_revoked!("refresh_families"),
            ")"
        ))
        .bind(change.new_hash)
        .bind(change.user_id.to_string())
        .bind(change.checked_hash)
        .bind(change.current.to_string())
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn insert_audit(&mut self, e: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (at, kind, user_id, family_id, client_id, detail, actor_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(ms(e.at))
        .bind(e.kind.code())
        .bind(e.user_id.map(|u| u.to_string()))
        .bind(e.family_id.map(|u| u.to_string()))
        .bind(&e.client_id)
        .bind(&e.detail)
        .bind(e.actor_id.map(|u| u.to_string()))
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn raise_epoch(&mut self, epoch: &Epoch) -> Result<Epoch, StoreError> {
        sqlx::query(
            "INSERT INTO session_epochs (client_id, not_before, reason, set_by, set_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (client_id) DO UPDATE
                SET not_before = excluded.not_before, reason = excluded.reason,
                    set_by = excluded.set_by, set_at = excluded.set_at
              WHERE excluded.not_before > session_epochs.not_before",
        )
        .bind(epoch.scope())
        .bind(ms(epoch.not_before))
        .bind(&epoch.reason)
        .bind(&epoch.set_by)
        .bind(ms(epoch.set_at))
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        let row: EpochRow = sqlx::query_as(&format!(
            "SELECT {EPOCH_COLUMNS} FROM session_epochs WHERE client_id = ?1"
        ))
        .bind(epoch.scope())
        .fetch_one(&mut **self)
        .await
        .map_err(classify)?;
        rows::epoch(row)
    }

    async fn lock_live_session(&mut self, sid: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
        // The write lock is held: no revocation can come between this and the commit.
        let live: Option<(i64,)> = sqlx::query_as(concat!(
            "SELECT 1 FROM refresh_families f JOIN users u ON u.id = f.user_id
             WHERE f.id = ?1 AND f.user_id = ?2 AND f.revoked_at IS NULL
               AND u.disabled_at IS NULL AND NOT ",
            epoch_revoked!("f")
        ))
        .bind(sid.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        Ok(live.is_some())
    }

    async fn use_code(
        &mut self,
        hash: &CodeHash,
        family_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE authorization_codes SET used_at = ?2, family_id = ?3
             WHERE code_hash = ?1 AND used_at IS NULL",
        )
        .bind(&hash[..])
        .bind(ms(now))
        .bind(family_id.to_string())
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(used > 0)
    }

    async fn code_family(&mut self, hash: &CodeHash) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT family_id FROM authorization_codes WHERE code_hash = ?1")
                .bind(&hash[..])
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
        row.and_then(|(f,)| f).map(|f| uuid(&f)).transpose()
    }
}
