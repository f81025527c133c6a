//! The exchange of an authorization code, as a composition of `Steps` in one
//! transaction.

use super::{Steps, accounts};
use crate::domain::family::RevokeReason;
use crate::store::{Redeem, RedeemOutcome, StoreError};

/// Starts the code's session if the sign-in session that approved it is still live
/// (held so until the commit, with its user: a logout everywhere, a password change or
/// a disable either commits first and nothing starts, or waits and ends the new session
/// too; PostgreSQL's steps lock the user's row on both sides for that), and
/// uses the code up; a code used before starts nothing and revokes the session it
/// started (RFC 6749 §4.1.2). A code whose sign-in session ended is used up and starts
/// nothing.
pub async fn redeem<S: Steps + ?Sized>(
    tx: &mut S,
    r: &Redeem<'_>,
) -> Result<RedeemOutcome, StoreError> {
    let now = r.family.created_at;
    if !tx.use_code(&r.code.hash, r.family.id, now).await? {
        let revoked = match tx.code_family(&r.code.hash).await? {
            Some(family) if accounts::revoke(tx, family, RevokeReason::CodeReused, now).await? => {
                Some(family)
            }
            _ => None,
        };
        return Ok(RedeemOutcome::Reused { revoked });
    }
    if !tx
        .lock_live_session(r.code.browser_sid, r.code.user_id)
        .await?
    {
        return Ok(RedeemOutcome::SessionEnded);
    }
    accounts::start_session(tx, r.family).await?;
    Ok(RedeemOutcome::Started)
}
