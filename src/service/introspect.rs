//! Token introspection (RFC 7662) for confidential `service` clients.
//!
//! The caller authenticates with its secret (HTTP Basic or `client_id` +
//! `client_secret` in the body, not both); anything else is `invalid_client` and
//! reveals nothing about the token. An authenticated caller learns whether the token is
//! active, and for an active one its claims; never why an inactive one is inactive.
//!
//! A caller is answered only about tokens meant for it: an access token whose `aud`
//! names its `client_id` or one of its `introspection_audiences` (`*`: all), or a
//! refresh token whose client's access tokens would. Any other token is
//! `active: false`, so a service cannot learn about the sessions of another's users.
//! An access token is active within the same clock leeway as at our own endpoints:
//! a verifier that asks about a token it accepted by the leeway is not told the session
//! was revoked.
//! `token_type_hint` is accepted and not needed: a token with dots is a JWS, anything
//! else is looked up as a refresh token.

use time::OffsetDateTime;

use super::Issuer;
use crate::crypto::client_secret;
use crate::domain::claims::AccessClaims;
use crate::domain::client::{Client, ClientKind};
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::store::RefreshTokenState;

/// How a client authenticated.
#[derive(Debug, Default)]
pub struct ClientCredentials {
    /// From `Authorization: Basic`.
    pub basic: Option<(String, Secret)>,
    /// From the body.
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
}

/// The answer about one token.
#[derive(Debug)]
pub enum Introspection {
    Inactive,
    Access(AccessClaims),
    Refresh {
        state: RefreshTokenState,
        /// When the token stops working unless used: the sooner of the idle timeout
        /// and the family's absolute end.
        expires_at: OffsetDateTime,
    },
}

impl Issuer {
    /// The confidential client behind `creds`.
    pub fn authenticate_client(&self, creds: ClientCredentials) -> Result<&Client, Error> {
        let (id, secret) = match (creds.basic, creds.client_id, creds.client_secret) {
            (Some(basic), None, None) => basic,
            (Some(_), _, _) => {
                return Err(Error::InvalidRequest(
                    "send the client credentials once: in Authorization or in the body".into(),
                ));
            }
            (None, Some(id), Some(secret)) => (id, secret),
            (None, id, _) => {
                tracing::info!(target: "security", event = "client_auth_failed", client_id = ?id, "no client secret");
                return Err(Error::InvalidClient);
            }
        };
        let client = self.clients.get(&id).ok_or(Error::InvalidClient)?;
        let expected = client.secret_hash.as_ref().ok_or(Error::InvalidClient)?;
        if client.kind != ClientKind::Service || !client_secret::matches(secret.expose(), expected)
        {
            tracing::info!(target: "security", event = "client_auth_failed", client_id = %id);
            return Err(Error::InvalidClient);
        }
        Ok(client)
    }

    /// `POST /oauth/introspect`.
    pub async fn introspect(
        &self,
        creds: ClientCredentials,
        token: Option<Secret>,
    ) -> Result<Introspection, Error> {
        let caller = self.authenticate_client(creds)?;
        let token = token
            .filter(|t| !t.expose().is_empty())
            .ok_or_else(|| Error::InvalidRequest("token is required".into()))?;
        let token = token.expose();
        if token.contains('.') {
            return match self.live_access_claims(token).await {
                Ok(claims) if caller.may_introspect(&claims.aud.to_vec()) => {
                    Ok(Introspection::Access(claims))
                }
                Ok(_) | Err(Error::InvalidToken(_)) => Ok(Introspection::Inactive),
                Err(e) => Err(e),
            };
        }
        let Some(token) = self.refresh_ref(&Secret::new(token.to_owned())) else {
            return Ok(Introspection::Inactive);
        };
        let Some(state) = self.store.refresh_token_state(&token).await? else {
            return Ok(Introspection::Inactive);
        };
        let now = self.now();
        let policy = self.policy_of(&state.family.client_id);
        let expires_at = (state.family_last_used_at + policy.idle_timeout)
            .min(state.family.created_at + policy.absolute_lifetime);
        let audiences = self
            .clients
            .get(&state.family.client_id)
            .map(|c| c.audiences.as_slice())
            .unwrap_or_default();
        let active = caller.may_introspect(audiences)
            && !state.consumed
            && !state.family_revoked
            && !state.user_disabled
            && now < expires_at
            && !self.shared.denied_locally(state.family.id);
        Ok(if active {
            Introspection::Refresh { state, expires_at }
        } else {
            Introspection::Inactive
        })
    }
}
