//! Codes and consents on SQLite: reads on the reader pool, writes on the one writer.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{classify, from_ms, ms, uuid};
use crate::store::engine::Transactional as _;
use crate::store::{Authorizations, CodeHash, Consent, StoreError, StoredCode};

#[derive(sqlx::FromRow)]
struct CodeRecord {
    code_hash: Vec<u8>,
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    dpop_jkt: Option<String>,
    scope: Option<String>,
    user_id: String,
    browser_sid: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
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
            user_id: uuid(&self.user_id)?,
            browser_sid: uuid(&self.browser_sid)?,
            created_at: from_ms(self.created_at)?,
            expires_at: from_ms(self.expires_at)?,
            used: self.used_at.is_some(),
        })
    }
}

#[async_trait]
impl Authorizations for SqliteStore {
    async fn insert_code(&self, c: &StoredCode) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO authorization_codes
                 (code_hash, client_id, redirect_uri, code_challenge, dpop_jkt, scope, user_id,
                  browser_sid, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&c.hash[..])
        .bind(&c.client_id)
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(&c.dpop_jkt)
        .bind(&c.scope)
        .bind(c.user_id.to_string())
        .bind(c.browser_sid.to_string())
        .bind(ms(c.created_at))
        .bind(ms(c.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<StoredCode>, StoreError> {
        let row: Option<CodeRecord> = sqlx::query_as(
            "SELECT code_hash, client_id, redirect_uri, code_challenge, dpop_jkt, scope, user_id,
                    browser_sid, created_at, expires_at, used_at
             FROM authorization_codes WHERE code_hash = ?1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        row.map(CodeRecord::code).transpose()
    }

    async fn sweep_codes(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM authorization_codes WHERE code_hash IN (
                 SELECT code_hash FROM authorization_codes WHERE expires_at < ?1 LIMIT ?2)",
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

    async fn consents(
        &self,
        user_id: Uuid,
        client_id: Option<&str>,
    ) -> Result<Vec<Consent>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT client_id, scope, granted_at FROM consents
             WHERE user_id = ?1 AND (?2 IS NULL OR client_id = ?2)
             ORDER BY client_id, scope",
        )
        .bind(user_id.to_string())
        .bind(client_id)
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(|(client_id, scope, at)| {
                Ok(Consent {
                    client_id,
                    scope,
                    granted_at: from_ms(at)?,
                })
            })
            .collect()
    }

    async fn grant_consent(
        &self,
        user_id: Uuid,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM consents WHERE user_id = ?1 AND client_id = ?2")
            .bind(user_id.to_string())
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, scope, granted_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(user_id.to_string())
        .bind(client_id)
        .bind(scope)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn revoke_consents(&self, user_id: Uuid, client_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM consents WHERE user_id = ?1 AND client_id = ?2")
            .bind(user_id.to_string())
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }
}
