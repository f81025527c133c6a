//! Access-token checks: for our own protected endpoints (`authenticate`) and for
//! introspection (`live_access_token`).

use uuid::Uuid;

use super::Issuer;
use crate::domain::claims::AccessClaims;
use crate::domain::client::ClientKind;
use crate::domain::error::Error;
use crate::domain::user::User;

/// A caller whose access token passed every check, including a live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: AccessClaims,
    /// The session (`sid`) of the token.
    pub sid: Uuid,
    pub user: User,
}

impl Issuer {
    /// Verifies a bearer token for our own audience and checks that its family is still
    /// live, so the access tokens of a revoked family are refused at once.
    /// A token bound to a DPoP key (`cnf.jkt`) is refused here (RFC 9449 §7.2: it is
    /// not a bearer token).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let principal = self.check_access_token(token, Some(&self.audience)).await?;
        if principal.claims.cnf.is_some() {
            return Err(Error::InvalidToken(
                "the token is bound to a DPoP key; it is not a bearer token",
            ));
        }
        Ok(principal)
    }

    /// An access token of ours, for any audience, whose session is live.
    pub(crate) async fn check_access_token(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
        let claims = self.verified_claims(token, audience)?;
        self.principal(claims).await
    }

    /// An access token of ours, for any audience, that is live: a user's whose session
    /// is live, or a client's own (client credentials: no `sid`, `sub` its
    /// `client_id`) whose client is still a registered `service` client.
    pub(crate) async fn live_access_claims(&self, token: &str) -> Result<AccessClaims, Error> {
        let claims = self.verified_claims(token, None)?;
        if claims.sid.is_some() {
            return Ok(self.principal(claims).await?.claims);
        }
        let registered = claims.sub == claims.client_id
            && self
                .clients
                .get(&claims.client_id)
                .is_some_and(|c| c.kind == ClientKind::Service);
        if registered {
            Ok(claims)
        } else {
            Err(Error::InvalidToken(
                "a client token of no registered service client",
            ))
        }
    }

    /// The claims of a token signed by a key of ours, for `audience` (any: `None`),
    /// valid now, and not refused by a revocation epoch.
    fn verified_claims(&self, token: &str, audience: Option<&str>) -> Result<AccessClaims, Error> {
        let claims = self
            .verifier
            .verify(token, audience, self.now().unix_timestamp())?;
        if self.epoch_refuses(&claims) {
            return Err(Error::InvalidToken("session revoked"));
        }
        Ok(claims)
    }

    /// The caller behind a user's token: its session must be live.
    async fn principal(&self, claims: AccessClaims) -> Result<Principal, Error> {
        let sid = claims
            .sid
            .as_deref()
            .ok_or(Error::InvalidToken(
                "a client's own token: no user, no session",
            ))
            .and_then(|sid| {
                Uuid::parse_str(sid).map_err(|_| Error::InvalidToken("sid is not ours"))
            })?;
        let sub =
            Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken("sub is not ours"))?;
        match self.live_session(sid, sub, &claims).await? {
            Some(user) => Ok(Principal { claims, sid, user }),
            None => Err(Error::InvalidToken("session revoked")),
        }
    }

    /// The user of session `sid` if it is live: the local deny-list, the Redis
    /// deny-list, the session cache, then the database (see `store::shared`).
    async fn live_session(
        &self,
        sid: Uuid,
        sub: Uuid,
        claims: &AccessClaims,
    ) -> Result<Option<User>, Error> {
        if self.shared.denied_locally(sid) {
            return Ok(None);
        }
        match self
            .shared
            .refused_in_redis(sid, &claims.client_id, claims.iat)
            .await
        {
            Some(true) => return Ok(None),
            Some(false) => {
                if let Some(user) = self.shared.cached_session(sid).filter(|u| u.id == sub) {
                    return Ok(Some(user));
                }
            }
            None => {}
        }
        let epoch = self.shared.cache_epoch();
        let user = self.store.session_user(sid, sub).await?;
        if let Some(user) = &user {
            self.shared.remember_session(sid, user, epoch);
        }
        Ok(user)
    }
}
