//! `POST /oauth/revoke` (RFC 7009): ends the session of a refresh token or of one of
//! our access tokens; a client's own token (client credentials) has none to end.

use uuid::Uuid;

use super::Issuer;
use super::tokens::{RequestMeta, Revoked, present_secret};
use crate::domain::client::Delivery;
use crate::domain::error::Error;
use crate::domain::family::RevokeReason;
use crate::domain::secret::Secret;
use crate::store::RevokeOutcome;

impl Issuer {
    /// `POST /oauth/revoke` (RFC 7009): ends the family of a refresh token, or of an
    /// access token of ours. Unknown and already-revoked tokens succeed silently.
    pub async fn revoke(
        &self,
        client_id: Option<String>,
        basic: Option<(String, Secret)>,
        token: Option<Secret>,
        meta: RequestMeta,
    ) -> Result<Revoked, Error> {
        let client = self.client(client_id, basic)?;
        client.check_browser_request(&meta.browser)?;
        let clear_cookie = client.delivery == Delivery::Cookie;
        let token = match client.delivery {
            Delivery::Cookie => present_secret(token).or(present_secret(meta.refresh_cookie)),
            Delivery::Body => present_secret(token),
        };
        let Some(token) = token else {
            return if clear_cookie {
                Ok(Revoked { clear_cookie })
            } else {
                Err(Error::InvalidRequest("token is required".into()))
            };
        };
        let now = self.now();
        if !token.expose().contains('.')
            && let Some(token) = self.refresh_ref(&token)
        {
            match self.store.revoke_by_token(&token, &client.id, now).await? {
                RevokeOutcome::Revoked(f) => {
                    tracing::info!(target: "security", event = "family_revoked", reason = "logout", sid = %f.id, user_id = %f.user_id, client_id = %client.id);
                    self.count_revoked(RevokeReason::Logout, 1);
                    // Not a session an epoch ended already (see `refused`).
                    if !self
                        .shared
                        .epochs()
                        .refuses(&f.client_id, f.created_at.unix_timestamp())
                    {
                        self.shared.revoked(f.id).await;
                    }
                }
                RevokeOutcome::OtherClient => {
                    return Err(Error::UnauthorizedClient(
                        "the token was issued to another client",
                    ));
                }
                RevokeOutcome::AlreadyRevoked(sid) => self.shared.revoked(sid).await,
                RevokeOutcome::Unknown => {}
            }
        } else if let Ok(claims) = self
            .verifier
            .verify(token.expose(), None, now.unix_timestamp())
        {
            if claims.client_id != client.id {
                return Err(Error::UnauthorizedClient(
                    "the token was issued to another client",
                ));
            }
            // A client's own token (client credentials) has no session to end: it
            // lives until `exp` (RFC 7009 §2.2.1).
            if claims.sid.is_none() {
                return Err(Error::UnsupportedTokenType);
            }
            if let Some(Ok(sid)) = claims.sid.as_deref().map(Uuid::parse_str) {
                if self
                    .store
                    .revoke_family(sid, &client.id, RevokeReason::Logout, now)
                    .await?
                {
                    tracing::info!(target: "security", event = "family_revoked", reason = "logout", sid = %sid, client_id = %client.id);
                    self.count_revoked(RevokeReason::Logout, 1);
                }
                // Revoked now or before (a retry): announced either way, unless an
                // epoch refuses the token already (see `refused`).
                if !self.epoch_refuses(&claims) {
                    self.shared.revoked(sid).await;
                }
            }
        }
        Ok(Revoked { clear_cookie })
    }
}
