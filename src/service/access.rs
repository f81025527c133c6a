//! Access-token checks for our own protected endpoints.

use uuid::Uuid;

use super::Issuer;
use crate::domain::claims::AccessClaims;
use crate::domain::user::User;
use crate::error::Error;

/// A caller whose access token passed every check, including a live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: AccessClaims,
    pub user: User,
}

impl Issuer {
    /// Verifies a bearer token for our own audience and checks that its family is still
    /// live in the store, so the access tokens of a revoked family are refused at once.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let claims =
            self.verifier
                .verify(token, Some(&self.audience), self.now().unix_timestamp())?;
        let sid =
            Uuid::parse_str(&claims.sid).map_err(|_| Error::InvalidToken("sid is not ours"))?;
        let sub =
            Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken("sub is not ours"))?;
        match self.store.session_user(sid, sub).await? {
            Some(user) => Ok(Principal { claims, user }),
            None => Err(Error::InvalidToken("session revoked")),
        }
    }
}
