//! The consents a user gave to clients that are not first-party: listed, and taken
//! back (which also ends the client's sessions of that user: an application the user
//! no longer allows keeps no access).

use super::Issuer;
use super::access::Principal;
use crate::domain::error::Error;
use crate::domain::family::RevokeReason;
use crate::store::{Consent, SessionSelector};

impl Issuer {
    /// `GET /v1/me/consents`.
    pub async fn consents(&self, who: &Principal) -> Result<Vec<Consent>, Error> {
        Ok(self.store.consents(who.user.id, None).await?)
    }

    /// `DELETE /v1/me/consents/{client_id}`: forgets every consent of the caller to
    /// the client and ends the client's sessions of the caller; `NotFound` when there
    /// was none.
    pub async fn revoke_consent(&self, who: &Principal, client_id: &str) -> Result<(), Error> {
        let user_id = who.user.id;
        if self.store.revoke_consents(user_id, client_id).await? == 0 {
            return Err(Error::NotFound);
        }
        tracing::info!(target: "security", event = "consent_revoked", user_id = %user_id, client_id = %client_id);
        let now = self.now();
        let sessions = self
            .store
            .list_sessions(user_id, &self.widest_policy, now)
            .await?;
        let reason = RevokeReason::ConsentRevoked;
        let mut revoked = Vec::new();
        for session in sessions.iter().filter(|s| s.client_id == client_id) {
            revoked.extend(
                self.store
                    .revoke_sessions(user_id, SessionSelector::One(session.id), reason, now)
                    .await?,
            );
        }
        self.count_revoked(reason, revoked.len());
        self.shared.revoked_all(revoked).await;
        Ok(())
    }
}
