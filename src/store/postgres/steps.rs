//! The PostgreSQL statements of the engine's steps, run in a READ COMMITTED
//! transaction (`rotate_fresh` also on its own, as one atomic statement).

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::rows::{FAMILY_COLUMNS, FamilyRecord, GenerationRecord, PresentedRecord, STATE_COLUMNS};
use crate::domain::family::RevokeReason;
use crate::store::engine::{Presented, Revoked, Steps, TokenOwner};
use crate::store::{
    AuditEvent, CodeHash, Epoch, FamilyInfo, NewFamily, PasswordChange, RotateRequest,
    SessionSelector, StoreError, TokenRef,
};

/// The common case in one statement, so one round trip, atomic on its own: the
/// family advances to the next generation if the presented token is its live one (the
/// conditional `UPDATE` decides a race: a concurrent statement waits for the row and
/// then finds the generation moved), and is touched. A live token of the earlier
/// format (at generation 0) is consumed in the same statement. `None` when the token
/// was not live (unknown, an older generation, revoked, expired, another client, a
/// disabled user).
pub(super) async fn rotate_fresh(
    conn: &mut PgConnection,
    r: &RotateRequest<'_>,
) -> Result<Option<(FamilyInfo, u64)>, StoreError> {
    let (idle_cutoff, absolute_cutoff) = r.policy.cutoffs(r.now);
    let record: Option<GenerationRecord> = match r.presented {
        TokenRef::Minted { family, generation } => {
            let Ok(generation) = i64::try_from(generation) else {
                return Ok(None);
            };
            sqlx::query_as(concat!(
                "UPDATE refresh_families f
                    SET generation = generation + 1, generation_issued_at = $1,
                        last_used_at = GREATEST(f.last_used_at, $1),
                        ip = COALESCE($7, f.ip), user_agent = COALESCE($8, f.user_agent)
                  WHERE id = $2 AND generation = $3 AND revoked_at IS NULL AND client_id = $4
                    AND last_used_at > $5 AND created_at > $6
                    AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL)
                    AND (f.dpop_jkt IS NULL OR f.dpop_jkt = $9)
               AND NOT ",
                epoch_revoked!("f"),
                "
                 RETURNING f.id, f.user_id, f.client_id, f.scope, f.created_at, f.dpop_jkt, f.generation"
            ))
            .bind(r.now)
            .bind(family)
            .bind(generation)
            .bind(r.client_id)
            .bind(idle_cutoff)
            .bind(absolute_cutoff)
            .bind(r.ip)
            .bind(r.user_agent)
            .bind(r.dpop_jkt)
            .fetch_optional(&mut *conn)
            .await
        }
        TokenRef::Legacy(hash) => {
            sqlx::query_as(concat!(
                "WITH consumed AS (
                     UPDATE refresh_tokens SET consumed_at = $1
                     WHERE token_hash = $2 AND consumed_at IS NULL
                       AND family_id IN (SELECT id FROM refresh_families
                                         WHERE generation = 0 AND revoked_at IS NULL
                                           AND client_id = $3
                                           AND last_used_at > $4 AND created_at > $5
               AND NOT ",
                epoch_revoked!("refresh_families"),
                "
                                           AND user_id IN (SELECT id FROM users
                                                           WHERE disabled_at IS NULL))
                     RETURNING family_id
                 )
                 UPDATE refresh_families f
                    SET generation = 1, generation_issued_at = $1,
                        last_used_at = GREATEST(f.last_used_at, $1),
                        ip = COALESCE($6, f.ip), user_agent = COALESCE($7, f.user_agent)
                   FROM consumed
                  WHERE f.id = consumed.family_id AND f.revoked_at IS NULL
                 RETURNING f.id, f.user_id, f.client_id, f.scope, f.created_at, f.dpop_jkt, f.generation"
            ))
            .bind(r.now)
            .bind(&hash[..])
            .bind(r.client_id)
            .bind(idle_cutoff)
            .bind(absolute_cutoff)
            .bind(r.ip)
            .bind(r.user_agent)
            .fetch_optional(&mut *conn)
            .await
        }
    }
    .map_err(classify)?;
    record.map(GenerationRecord::advanced).transpose()
}

#[async_trait]
impl Steps for Transaction<'_, Postgres> {
    async fn rotate_fresh(
        &mut self,
        r: &RotateRequest<'_>,
    ) -> Result<Option<(FamilyInfo, u64)>, StoreError> {
        rotate_fresh(&mut **self, r).await
    }

    async fn presented(&mut self, r: &RotateRequest<'_>) -> Result<Option<Presented>, StoreError> {
        let record: Option<PresentedRecord> = match r.presented {
            TokenRef::Minted { family, generation } => {
                sqlx::query_as(&format!(
                    "SELECT {FAMILY_COLUMNS}, {STATE_COLUMNS}, $2::bigint AS presented_generation
                     FROM refresh_families f WHERE f.id = $1"
                ))
                .bind(family)
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .fetch_optional(&mut **self)
                .await
            }
            // Live, or consumed by the upgrade rotation (no successor of its format):
            // generation 0; consumed before the upgrade: older than any generation.
            TokenRef::Legacy(hash) => {
                sqlx::query_as(&format!(
                    "SELECT {FAMILY_COLUMNS}, {STATE_COLUMNS},
                            CASE WHEN t.consumed_at IS NULL
                                   OR NOT EXISTS (SELECT 1 FROM refresh_tokens s
                                                  WHERE s.parent_hash = t.token_hash)
                                 THEN 0::bigint END AS presented_generation
                     FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
                     WHERE t.token_hash = $1"
                ))
                .bind(&hash[..])
                .fetch_optional(&mut **self)
                .await
            }
        }
        .map_err(classify)?;
        record.map(PresentedRecord::presented).transpose()
    }

    async fn touch_family(
        &mut self,
        family_id: Uuid,
        r: &RotateRequest<'_>,
    ) -> Result<Option<FamilyInfo>, StoreError> {
        let record: Option<FamilyRecord> = sqlx::query_as(concat!(
            "UPDATE refresh_families SET last_used_at = GREATEST(last_used_at, $1),
                    ip = COALESCE($3, ip), user_agent = COALESCE($4, user_agent)
             WHERE id = $2
               AND revoked_at IS NULL
               AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL)
               AND NOT ",
            epoch_revoked!("refresh_families"),
            "
             RETURNING id, user_id, client_id, scope, created_at, dpop_jkt"
        ))
        .bind(r.now)
        .bind(family_id)
        .bind(r.ip)
        .bind(r.user_agent)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        Ok(record.map(Into::into))
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
            "UPDATE refresh_families SET generation = $3, generation_issued_at = $1,
                    last_used_at = GREATEST(last_used_at, $1),
                    ip = COALESCE($5, ip), user_agent = COALESCE($6, user_agent)
             WHERE id = $2 AND generation = $4
               AND revoked_at IS NULL
               AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL)
               AND NOT ",
            epoch_revoked!("refresh_families"),
            "
             RETURNING id, user_id, client_id, scope, created_at, dpop_jkt"
        ))
        .bind(r.now)
        .bind(family_id)
        .bind(to)
        .bind(from)
        .bind(r.ip)
        .bind(r.user_agent)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        Ok(record.map(Into::into))
    }

    async fn family_info(&mut self, family_id: Uuid) -> Result<FamilyInfo, StoreError> {
        let record: FamilyRecord = sqlx::query_as(&format!(
            "SELECT {FAMILY_COLUMNS} FROM refresh_families f WHERE f.id = $1"
        ))
        .bind(family_id)
        .fetch_one(&mut **self)
        .await
        .map_err(classify)?;
        Ok(record.into())
    }

    async fn mark_revoked(
        &mut self,
        family_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Option<Revoked>, StoreError> {
        // A concurrent revocation holds the row: this waits for its commit and then
        // finds the family revoked.
        let revoked: Option<(Uuid, String)> = sqlx::query_as(
            "UPDATE refresh_families SET revoked_at = $1, revoked_reason = $2
             WHERE id = $3 AND revoked_at IS NULL RETURNING user_id, client_id",
        )
        .bind(now)
        .bind(reason.code())
        .bind(family_id)
        .fetch_optional(&mut **self)
        .await
        .map_err(classify)?;
        Ok(revoked.map(|(user_id, client_id)| Revoked {
            family_id,
            user_id,
            client_id,
        }))
    }

    async fn mark_sessions_revoked(
        &mut self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Revoked>, StoreError> {
        let (filter, id) = match which {
            SessionSelector::One(id) => ("id = $4", Some(id)),
            SessionSelector::AllBut(id) => ("id <> $4", Some(id)),
            SessionSelector::All => ("$4::uuid IS NULL", None),
        };
        if !matches!(which, SessionSelector::One(_)) {
            // The user's row first: a session being started now (a login, a code
            // exchange: each holds the row FOR SHARE) either commits before and is
            // revoked by the UPDATE below, whose snapshot is taken after this lock, or
            // waits and sees the revocation. Without it, the UPDATE would not see a
            // family inserted by a transaction that commits while it waits. Users before
            // families, as everywhere.
            sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
                .bind(user_id)
                .execute(&mut **self)
                .await
                .map_err(classify)?;
        }
        let revoked: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            concat!(
                "UPDATE refresh_families SET revoked_at = $1, revoked_reason = $2
             WHERE user_id = $3 AND revoked_at IS NULL AND {filter} AND NOT ",
                epoch_revoked!("refresh_families"),
                "
             RETURNING id, client_id"
            ),
            filter = filter
        ))
        .bind(now)
        .bind(reason.code())
        .bind(user_id)
        .bind(id)
        .fetch_all(&mut **self)
        .await
        .map_err(classify)?;
        Ok(revoked
            .into_iter()
            .map(|(family_id, client_id)| Revoked {
                family_id,
                user_id,
                client_id,
            })
            .collect())
    }

    async fn token_owner(&mut self, token: &TokenRef) -> Result<Option<TokenOwner>, StoreError> {
        let found: Option<(Uuid, String, bool)> = match token {
            TokenRef::Minted { family, .. } => {
                sqlx::query_as(
                    "SELECT id, client_id, revoked_at IS NOT NULL FROM refresh_families
                     WHERE id = $1",
                )
                .bind(family)
                .fetch_optional(&mut **self)
                .await
            }
            TokenRef::Legacy(hash) => {
                sqlx::query_as(
                    "SELECT f.id, f.client_id, f.revoked_at IS NOT NULL FROM refresh_tokens t
                     JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = $1",
                )
                .bind(&hash[..])
                .fetch_optional(&mut **self)
                .await
            }
        }
        .map_err(classify)?;
        Ok(found.map(|(family_id, client_id, revoked)| TokenOwner {
            family_id,
            client_id,
            revoked,
        }))
    }

    async fn family_of_client(
        &mut self,
        family_id: Uuid,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let owned: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM refresh_families WHERE id = $1 AND client_id = $2")
                .bind(family_id)
                .bind(client_id)
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
        Ok(owned.is_some())
    }

    /// The user's row is locked (`FOR SHARE`) for the password check, until the
    /// commit: at READ COMMITTED an `INSERT ... WHERE EXISTS (...)` reads the user as
    /// of its snapshot and does not conflict with a password change or a disable
    /// committing meanwhile, whose "revoke every session" then cannot see the new
    /// family: a live session created with the old password. With the lock, a change
    /// or a disable waits for this login to commit (and then revokes its family), or
    /// this check waits for it and sees its outcome.
    async fn insert_family(&mut self, f: &NewFamily) -> Result<bool, StoreError> {
        if let Some(checked) = &f.checked_password_hash {
            let still: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM users
                 WHERE id = $1 AND disabled_at IS NULL AND password_hash = $2
                 FOR SHARE",
            )
            .bind(f.user_id)
            .bind(checked)
            .fetch_optional(&mut **self)
            .await
            .map_err(classify)?;
            if still.is_none() {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO refresh_families
                 (id, user_id, client_id, scope, created_at, last_used_at, user_agent, ip,
                  generation, generation_issued_at, dpop_jkt)
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7, 0, $5, $8)",
        )
        .bind(f.id)
        .bind(f.user_id)
        .bind(&f.client_id)
        .bind(&f.scope)
        .bind(f.created_at)
        .bind(&f.user_agent)
        .bind(&f.ip)
        .bind(&f.dpop_jkt)
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        Ok(true)
    }

    async fn remember_login_source(
        &mut self,
        user_id: Uuid,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO login_sources (user_id, source, last_success_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, source) DO UPDATE SET last_success_at = excluded.last_success_at",
        )
        .bind(user_id)
        .bind(source)
        .bind(at)
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
            "UPDATE users SET disabled_at = CASE WHEN $2 THEN COALESCE(disabled_at, $3) END
             WHERE id = $1",
        )
        .bind(user_id)
        .bind(disabled)
        .bind(now)
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(updated > 0)
    }

    /// The row lock taken here serialises concurrent changes; the second one finds the
    /// hash it checked gone.
    async fn replace_password(&mut self, change: &PasswordChange<'_>) -> Result<bool, StoreError> {
        let updated = sqlx::query(concat!(
            "UPDATE users SET password_hash = $1
             WHERE id = $2 AND password_hash = $3 AND disabled_at IS NULL
               AND EXISTS (SELECT 1 FROM refresh_families
                           WHERE id = $4 AND user_id = $2 AND revoked_at IS NULL
               AND NOT ",
            epoch_revoked!("refresh_families"),
            ")"
        ))
        .bind(change.new_hash)
        .bind(change.user_id)
        .bind(change.checked_hash)
        .bind(change.current)
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn insert_audit(&mut self, e: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (at, kind, user_id, family_id, client_id, detail, actor_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.at)
        .bind(e.kind.code())
        .bind(e.user_id)
        .bind(e.family_id)
        .bind(&e.client_id)
        .bind(&e.detail)
        .bind(e.actor_id)
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn raise_epoch(&mut self, epoch: &Epoch) -> Result<Epoch, StoreError> {
        sqlx::query(
            "INSERT INTO session_epochs (client_id, not_before, reason, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (client_id) DO UPDATE
                SET not_before = excluded.not_before, reason = excluded.reason,
                    set_by = excluded.set_by, set_at = excluded.set_at
              WHERE excluded.not_before > session_epochs.not_before",
        )
        .bind(epoch.scope())
        .bind(epoch.not_before)
        .bind(&epoch.reason)
        .bind(&epoch.set_by)
        .bind(epoch.set_at)
        .execute(&mut **self)
        .await
        .map_err(classify)?;
        let row: super::rows::EpochRow = sqlx::query_as(&format!(
            "SELECT {} FROM session_epochs WHERE client_id = $1",
            super::rows::EPOCH_COLUMNS
        ))
        .bind(epoch.scope())
        .fetch_one(&mut **self)
        .await
        .map_err(classify)?;
        Ok(super::rows::epoch(row))
    }

    async fn lock_live_session(&mut self, sid: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
        // The user's row, then the session's, FOR SHARE: a revocation of every session
        // of the user (a logout everywhere, a password change, a disable: each locks
        // the user's row first) waits for this transaction and then revokes the
        // session it starts too, or committed before and is seen here; a revocation of
        // this one session updates its row, with the same effect.
        let user: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM users WHERE id = $1 AND disabled_at IS NULL FOR SHARE")
                .bind(user_id)
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
        if user.is_none() {
            return Ok(false);
        }
        let live: Option<(i32,)> = sqlx::query_as(concat!(
            "SELECT 1 FROM refresh_families f JOIN users u ON u.id = f.user_id
             WHERE f.id = $1 AND f.user_id = $2 AND f.revoked_at IS NULL
               AND u.disabled_at IS NULL AND NOT ",
            epoch_revoked!("f"),
            " FOR SHARE OF f"
        ))
        .bind(sid)
        .bind(user_id)
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
        // A concurrent exchange of the same code waits for this row, then finds it used.
        let used = sqlx::query(
            "UPDATE authorization_codes SET used_at = $2, family_id = $3
             WHERE code_hash = $1 AND used_at IS NULL",
        )
        .bind(&hash[..])
        .bind(now)
        .bind(family_id)
        .execute(&mut **self)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(used > 0)
    }

    async fn code_family(&mut self, hash: &CodeHash) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Option<Uuid>,)> =
            sqlx::query_as("SELECT family_id FROM authorization_codes WHERE code_hash = $1")
                .bind(&hash[..])
                .fetch_optional(&mut **self)
                .await
                .map_err(classify)?;
        Ok(row.and_then(|(f,)| f))
    }
}
