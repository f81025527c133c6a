//! What the authorization endpoint keeps: codes (RFC 6749 §4.1) and consents.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{NewFamily, StoreError};

pub use crate::crypto::codes::CodeHash;

/// A code as issued, and as the store finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    pub hash: CodeHash,
    pub client_id: String,
    pub redirect_uri: String,
    /// The S256 `code_challenge`.
    pub code_challenge: String,
    /// The DPoP key (RFC 7638 thumbprint) the code is bound to (`dpop_jkt`).
    pub dpop_jkt: Option<String>,
    pub scope: Option<String>,
    pub user_id: Uuid,
    /// The sign-in session that approved it.
    pub browser_sid: Uuid,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Whether it was used.
    pub used: bool,
}

/// The exchange of a code for a session.
#[derive(Debug, Clone)]
pub struct Redeem<'a> {
    pub code: &'a StoredCode,
    /// The session it starts (its `created_at` is now).
    pub family: &'a NewFamily,
}

/// What an exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// The code is used up and the family started.
    Started,
    /// The code was used before: nothing started; the session it started then, if it
    /// was live, is revoked now (its id).
    Reused { revoked: Option<Uuid> },
    /// The sign-in session that approved the code ended (a logout, a password change,
    /// a disable): the code is used up, nothing started.
    SessionEnded,
}

/// A consent a user gave a client for a set of scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub client_id: String,
    /// Sorted and space-separated; empty for no scope.
    pub scope: String,
    pub granted_at: OffsetDateTime,
}

/// Codes and consents. Each method is atomic; the exchange itself is
/// `Sessions::redeem_code` (it starts a session).
#[async_trait]
pub trait Authorizations: Send + Sync {
    async fn insert_code(&self, code: &StoredCode) -> Result<(), StoreError>;

    /// A code by its hash, used or not; `None` when unknown (or swept).
    async fn find_code(&self, hash: &CodeHash) -> Result<Option<StoredCode>, StoreError>;

    /// Deletes at most `at_most` of the codes that expired before `before`; returns how
    /// many (fewer than `at_most`: none is left).
    async fn sweep_codes(&self, before: OffsetDateTime, at_most: u64) -> Result<u64, StoreError>;

    /// The consents of a user, of one client or of all.
    async fn consents(
        &self,
        user_id: Uuid,
        client_id: Option<&str>,
    ) -> Result<Vec<Consent>, StoreError>;

    /// Records the user's consent to the client as `scope`, replacing the one before
    /// (the caller passes the union of both): one row per user and client.
    async fn grant_consent(
        &self,
        user_id: Uuid,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Forgets every consent of a user to a client; how many there were.
    async fn revoke_consents(&self, user_id: Uuid, client_id: &str) -> Result<u64, StoreError>;
}
