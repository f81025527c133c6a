//! Sessions and users, as compositions of `Steps` inside one transaction: each audit
//! row is written with the change it records. Nothing here commits; a function that
//! answers "nothing done" (`false`, `None`) wrote nothing.

use time::OffsetDateTime;
use uuid::Uuid;

use super::Steps;
use crate::domain::family::RevokeReason;
use crate::store::{
    AuditEvent, NewFamily, PasswordChange, RevokeOutcome, SessionSelector, StoreError, TokenRef,
};

/// Revokes a live family with its audit row; false when it was revoked already
/// (possibly by a concurrent request whose commit this one waited for).
pub async fn revoke<S: Steps + ?Sized>(
    tx: &mut S,
    family_id: Uuid,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let Some(r) = tx.mark_revoked(family_id, reason, now).await? else {
        return Ok(false);
    };
    let event = AuditEvent::family_revoked(now, r.user_id, r.family_id, &r.client_id, reason);
    tx.insert_audit(&event).await?;
    Ok(true)
}

/// Revokes the chosen live sessions of a user, with an audit row each; their ids.
pub async fn revoke_sessions<S: Steps + ?Sized>(
    tx: &mut S,
    user_id: Uuid,
    which: SessionSelector,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, StoreError> {
    let revoked = tx
        .mark_sessions_revoked(user_id, which, reason, now)
        .await?;
    for r in &revoked {
        let event = AuditEvent::family_revoked(now, user_id, r.family_id, &r.client_id, reason);
        tx.insert_audit(&event).await?;
    }
    Ok(revoked.into_iter().map(|r| r.family_id).collect())
}

/// Starts a session after a login: the family and its first token, the login source,
/// the `login` audit row. False (nothing written) when the user was disabled or changed
/// password since the check.
pub async fn start_session<S: Steps + ?Sized>(
    tx: &mut S,
    f: &NewFamily,
) -> Result<bool, StoreError> {
    if !tx.insert_family(f).await? {
        return Ok(false);
    }
    if let Some(source) = &f.login_source {
        tx.remember_login_source(f.user_id, source, f.created_at)
            .await?;
    }
    let event = AuditEvent::login(f.created_at, f.user_id, f.id, &f.client_id, f.ip.as_deref());
    tx.insert_audit(&event).await?;
    Ok(true)
}

/// Replaces the password, revokes every session of the user and starts `family`; the
/// ids revoked, or `None` when a precondition failed (nothing written).
pub async fn change_password<S: Steps + ?Sized>(
    tx: &mut S,
    change: &PasswordChange<'_>,
    family: &NewFamily,
    now: OffsetDateTime,
) -> Result<Option<Vec<Uuid>>, StoreError> {
    if !tx.replace_password(change).await? {
        return Ok(None);
    }
    let revoked = revoke_sessions(
        tx,
        change.user_id,
        SessionSelector::All,
        RevokeReason::PasswordChange,
        now,
    )
    .await?;
    tx.insert_family(family).await?;
    Ok(Some(revoked))
}

/// Disables a user (revoking every session) or enables them again, with an audit row
/// naming `actor`; `None` when the user is unknown, else the sessions revoked.
pub async fn set_disabled<S: Steps + ?Sized>(
    tx: &mut S,
    user_id: Uuid,
    disabled: bool,
    actor: Uuid,
    now: OffsetDateTime,
) -> Result<Option<Vec<Uuid>>, StoreError> {
    if !tx.mark_disabled(user_id, disabled, now).await? {
        return Ok(None);
    }
    let revoked = if disabled {
        let reason = RevokeReason::UserDisabled;
        revoke_sessions(tx, user_id, SessionSelector::All, reason, now).await?
    } else {
        Vec::new()
    };
    let event = AuditEvent::user_disabled(now, user_id, disabled, actor);
    tx.insert_audit(&event).await?;
    Ok(Some(revoked))
}

/// Revokes the family of a refresh token (a logout) if it belongs to `client_id`.
pub async fn revoke_by_token<S: Steps + ?Sized>(
    tx: &mut S,
    token: &TokenRef,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<RevokeOutcome, StoreError> {
    let outcome = match tx.token_owner(token).await? {
        None => RevokeOutcome::Unknown,
        Some(owner) if owner.client_id != client_id => RevokeOutcome::OtherClient,
        Some(owner) if owner.revoked => RevokeOutcome::AlreadyRevoked(owner.family_id),
        Some(owner) => {
            if revoke(tx, owner.family_id, RevokeReason::Logout, now).await? {
                RevokeOutcome::Revoked(tx.family_info(owner.family_id).await?)
            } else {
                RevokeOutcome::AlreadyRevoked(owner.family_id)
            }
        }
    };
    Ok(outcome)
}

/// Revokes a family by id if it belongs to `client_id`; true when this call revoked it.
pub async fn revoke_family<S: Steps + ?Sized>(
    tx: &mut S,
    family_id: Uuid,
    client_id: &str,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    if !tx.family_of_client(family_id, client_id).await? {
        return Ok(false);
    }
    revoke(tx, family_id, reason, now).await
}
