//! Codes and consents on PostgreSQL.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, classify};
use crate::store::{Authorizations, CodeHash, Consent, StoreError, StoredCode};

#[derive(sqlx::FromRow)]
struct CodeRecord {
    code_hash: Vec<u8>,
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    dpop_jkt: Option<String>,
    scope: Option<String>,
    user_id: Uuid,
    browser_sid: Uuid,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
}

impl CodeRecord {
    fn code(self) -> Result<StoredCode, StoreError> {
        Ok(StoredCode {
            hash: self
                .code_hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("a code hash is not 32 bytes".into()))?,
            client_id: self.client_id,
            redirect_uri: self.redirect_uri,
            code_challenge: self.code_challenge,
            dpop_jkt: self.dpop_jkt,
            scope: self.scope,
            user_id: self.user_id,
            browser_sid: self.browser_sid,
            created_at: self.created_at,
            expires_at: self.expires_at,
            used: self.used_at.is_some(),
        })
    }
}

#[async_trait]
impl Authorizations for PgStore {
    async fn insert_code(&self, c: &StoredCode) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO authorization_codes
                 (code_hash, client_id, redirect_uri, code_challenge, dpop_jkt, scope, user_id,
                  browser_sid, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.hash[..])
        .bind(&c.client_id)
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(&c.dpop_jkt)
        .bind(&c.scope)
        .bind(c.user_id)
        .bind(c.browser_sid)
        .bind(c.created_at)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<StoredCode>, StoreError> {
        let row: Option<CodeRecord> = sqlx::query_as(
            "SELECT code_hash, client_id, redirect_uri, code_challenge, dpop_jkt, scope, user_id,
                    browser_sid, created_at, expires_at, used_at
             FROM authorization_codes WHERE code_hash = $1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.map(CodeRecord::code).transpose()
    }

    async fn sweep_codes(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM authorization_codes WHERE code_hash IN (
                 SELECT code_hash FROM authorization_codes WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(deleted)
    }

    async fn consents(
        &self,
        user_id: Uuid,
        client_id: Option<&str>,
    ) -> Result<Vec<Consent>, StoreError> {
        let rows: Vec<(String, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT client_id, scope, granted_at FROM consents
             WHERE user_id = $1 AND ($2::TEXT IS NULL OR client_id = $2)
             ORDER BY client_id, scope",
        )
        .bind(user_id)
        .bind(client_id)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(client_id, scope, granted_at)| Consent {
                client_id,
                scope,
                granted_at,
            })
            .collect())
    }

    async fn grant_consent(
        &self,
        user_id: Uuid,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("DELETE FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        // Two grants at once: the second insert waits for the first's row, then
        // conflicts; the later consent wins.
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, scope, granted_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, client_id, scope) DO UPDATE SET granted_at = excluded.granted_at",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(scope)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn revoke_consents(&self, user_id: Uuid, client_id: &str) -> Result<u64, StoreError> {
        let deleted = sqlx::query("DELETE FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(deleted)
    }
}
