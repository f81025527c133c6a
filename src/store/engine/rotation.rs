//! The rotation rules applied inside a transaction: the conditional update first, and
//! when it did not rotate, the lookup, the decision and its settlement.

use super::Steps;
use crate::domain::family::{Decision, GrantRejection, RevokeReason};
use crate::store::{FamilyInfo, RotateOutcome, RotateRequest, StoreError};

/// How a presented token that the conditional update did not rotate was settled.
#[derive(Debug)]
pub enum Settled {
    Done(RotateOutcome),
    /// The rules say "rotate": the token became live between the conditional update and
    /// the lookup (a concurrent change). PostgreSQL runs the rotation again; under
    /// SQLite's write lock it cannot happen, so it is corruption there.
    Rotatable,
}

/// One whole rotation inside `tx`: the conditional update, then `settle` if it did not
/// rotate. Nothing here commits.
pub async fn rotate<S: Steps + ?Sized>(
    tx: &mut S,
    r: &RotateRequest<'_>,
) -> Result<Settled, StoreError> {
    if let Some(family) = tx.rotate_fresh(r).await? {
        return Ok(Settled::Done(RotateOutcome::Issued {
            family,
            replay: false,
        }));
    }
    settle(tx, r).await
}

/// Looks the presented token up, decides with the family rules and settles the
/// decision: a grace replay touches the family, a reuse (or a token of another client)
/// revokes it with its audit row, the rest is refused as it is.
pub async fn settle<S: Steps + ?Sized>(
    tx: &mut S,
    r: &RotateRequest<'_>,
) -> Result<Settled, StoreError> {
    let Some(presented) = tx.presented(r).await? else {
        return Ok(Settled::Done(RotateOutcome::Refused {
            rejection: GrantRejection::Unknown,
            family: None,
            revoked: None,
        }));
    };
    let family_id = presented.family.id;
    let outcome = match r.policy.decide(r.client_id, &presented.token(), r.now) {
        Decision::GraceReplay => RotateOutcome::Issued {
            family: tx.touch_family(family_id, r).await?,
            replay: true,
        },
        Decision::RevokeFamily(reason) => {
            let revoked_now = super::accounts::revoke(tx, family_id, reason, r.now).await?;
            refused_after_revoke(reason, revoked_now, presented.family)
        }
        Decision::Refuse(rejection) => RotateOutcome::Refused {
            rejection,
            family: Some(presented.family),
            revoked: None,
        },
        Decision::Rotate => return Ok(Settled::Rotatable),
    };
    Ok(Settled::Done(outcome))
}

/// The answer to a token whose family this request decided to revoke: `reused` from
/// the request that revoked it, `revoked` when a concurrent request already had.
fn refused_after_revoke(
    reason: RevokeReason,
    revoked_now: bool,
    family: FamilyInfo,
) -> RotateOutcome {
    let rejection = match (reason, revoked_now) {
        (RevokeReason::Reuse, true) => GrantRejection::Reused,
        _ => GrantRejection::Revoked,
    };
    RotateOutcome::Refused {
        rejection,
        family: Some(family),
        revoked: revoked_now.then_some(reason),
    }
}
