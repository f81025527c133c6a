//! The rotation rules applied inside a transaction: the conditional update first, and
//! when it did not rotate, the lookup, the decision (`domain::generation`) and its
//! settlement. A session bound to a DPoP key (`FamilyInfo::dpop_jkt`) rotates only
//! for a request that proved that key: the conditional update requires it, and the
//! lookup refuses anything else first (`dpop_key_mismatch`), consuming nothing.

use super::Steps;
use crate::domain::audit::AuditEvent;
use crate::domain::family::{GrantRejection, RevokeReason};
use crate::domain::generation::Step;
use crate::store::{FamilyInfo, RotateOutcome, RotateRequest, StoreError};

/// How a presented token that the conditional update did not rotate was settled.
#[derive(Debug)]
pub enum Settled {
    Done(RotateOutcome),
    /// The rules say "rotate" (or "move forward") but the family changed between the
    /// conditional update and now (a concurrent change). PostgreSQL runs the rotation
    /// again; under SQLite's write lock it cannot happen, so it is corruption there.
    Rotatable,
}

/// One whole rotation inside `tx`: the conditional update, then `settle` if it did not
/// rotate. Nothing here commits.
pub async fn rotate<S: Steps + ?Sized>(
    tx: &mut S,
    r: &RotateRequest<'_>,
) -> Result<Settled, StoreError> {
    if let Some((family, generation)) = tx.rotate_fresh(r).await? {
        return Ok(Settled::Done(RotateOutcome::Issued {
            family,
            generation,
            replay: false,
            moved_from: None,
        }));
    }
    settle(tx, r).await
}

/// Looks the presented token up, decides with the generation rules and settles the
/// decision: a grace replay touches the family and answers its live generation again,
/// a token ahead of the database moves the family forward (with an audit row), a reuse
/// (or a token of another client) revokes it with its audit row, the rest is refused as
/// it is.
pub async fn settle<S: Steps + ?Sized>(
    tx: &mut S,
    r: &RotateRequest<'_>,
) -> Result<Settled, StoreError> {
    let Some(p) = tx.presented(r).await? else {
        return Ok(Settled::Done(RotateOutcome::Refused {
            rejection: GrantRejection::Unknown,
            family: None,
            revoked: None,
        }));
    };
    // A session bound to a DPoP key answers nothing else (its state, a grace replay)
    // to a request without a proof of that key, and consumes nothing.
    // (Another client's presentation is the client mismatch the rules revoke for.)
    if let Some(bound) = p.family.dpop_jkt.as_deref()
        && r.dpop_jkt != Some(bound)
        && p.family.client_id == r.client_id
    {
        return Ok(Settled::Done(RotateOutcome::Refused {
            rejection: GrantRejection::DpopKeyMismatch,
            family: Some(p.family),
            revoked: None,
        }));
    }
    let family_id = p.family.id;
    let step = r
        .policy
        .decide_generation(r.client_id, &p.state(), p.presented_generation, r.now);
    let outcome = match step {
        Step::GraceReplay => {
            // Revoked since the lookup (a concurrent commit): decided again.
            let Some(family) = tx.touch_family(family_id, r).await? else {
                return Ok(Settled::Rotatable);
            };
            RotateOutcome::Issued {
                family,
                generation: p.generation,
                replay: true,
                moved_from: None,
            }
        }
        Step::MoveForward => {
            let Some(to) = p.presented_generation.and_then(|g| g.checked_add(1)) else {
                return Ok(Settled::Rotatable);
            };
            let Some(family) = tx.move_forward(family_id, p.generation, to, r).await? else {
                return Ok(Settled::Rotatable);
            };
            let event = AuditEvent::family_moved_forward(
                r.now,
                family.user_id,
                family.id,
                &family.client_id,
                p.generation,
                to,
            );
            tx.insert_audit(&event).await?;
            RotateOutcome::Issued {
                family,
                generation: to,
                replay: false,
                moved_from: Some(p.generation),
            }
        }
        Step::RevokeFamily(reason) => {
            let revoked_now = super::accounts::revoke(tx, family_id, reason, r.now).await?;
            refused_after_revoke(reason, revoked_now, p.family)
        }
        Step::Refuse(rejection) => RotateOutcome::Refused {
            rejection,
            family: Some(p.family),
            revoked: None,
        },
        Step::Rotate => return Ok(Settled::Rotatable),
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
