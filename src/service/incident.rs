//! Incident response: every session of every client, or of one client, created before
//! an instant ends at once, and every access token of that scope issued before it is
//! refused (`token-issuer sessions revoke-all`, `POST /v1/admin/sessions/revoke-all`).
//!
//! Decisions taken here:
//! - It is a **revocation epoch**, one row per scope (`session_epochs`), not an
//!   `UPDATE` of the sessions: the command costs the same with ten sessions or ten
//!   million. Every statement that finds a session live also asks "does no epoch of
//!   its client, or of every client, begin after the session was created" (a lookup
//!   by primary key in a table of a few rows), so refresh tokens are refused by the
//!   database itself, on every instance, from the command's commit on; the sweep
//!   deletes the covered sessions a day after the epoch was set.
//! - Access tokens are refused by `iat`. The epochs are written to Redis too (as the
//!   deny-list is: `epoch:<scope>`, read in the same round trip as the deny-list by
//!   every access-token check, and announced on the revocation channel), so with Redis
//!   every instance refuses at its next request; each instance also keeps them in
//!   memory and re-reads them from the database every `EPOCH_RELOAD` (without Redis,
//!   or while it is down, that is the delay). A session covered by an epoch is also no
//!   longer live in the database, which the access-token checks fall back to; a rising
//!   epoch empties the session cache.
//! - The instant comes from the clock of the process that runs the command (the CLI's
//!   host, or the instance of the admin request): keep the clocks in sync (NTP). A
//!   clock ahead covers the sessions started in the gap too.
//! - The instant is whole seconds (`iat` is): `--before` is truncated to its second;
//!   without it, the epoch begins at the next whole second after now, and the command
//!   answers once that second has begun, so a session started after the answer is
//!   never covered (one started in the command's last fraction of a second is: its
//!   user signs in again). Should the commit end after that second (a database slow
//!   to answer), the epoch is written again with the next second (`commit`, a few
//!   times at most): no session started between the instant and the commit escapes.
//! - An epoch only moves forward: a `--before` earlier than the epoch in force
//!   changes nothing (the answer shows the epoch in force).
//! - A covered refresh token is answered `invalid_grant` with `error_reason`
//!   `revoked`; the audit log holds the epoch with its reason and who set it (`cli`,
//!   or the admin, also its actor) (`sessions_revoked_all`);
//!   `issuer_sessions_revoked_all_total` counts those set through an instance's admin
//!   API, and every instance shows the epochs it enforces as
//!   `issuer_revocation_epoch_seconds{client_id}`.
//! - A refused refresh of a session an epoch covers is not announced on the deny-list
//!   (`Issuer::refused`): the epoch refuses its tokens everywhere already.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::Issuer;
use super::access::Principal;
use crate::domain::audit::AuditEvent;
use crate::domain::claims::AccessClaims;
use crate::domain::error::Error;
use crate::store::Epoch;

/// How often an instance re-reads the epochs from the database.
pub const EPOCH_RELOAD: Duration = Duration::from_secs(2);
/// The longest reason accepted.
const REASON_MAX: usize = 200;

/// What to revoke.
#[derive(Debug, Clone)]
pub struct RevokeAll {
    /// One client's sessions; `None`: every client's.
    pub client_id: Option<String>,
    /// Sessions created before this instant (truncated to its second); `None`: now.
    pub before: Option<OffsetDateTime>,
    pub reason: String,
}

/// The epoch a `revoke-all` sets, and its audit row, as of `now`; `known_client` says
/// whether a client id is configured.
pub fn plan(
    r: RevokeAll,
    known_client: impl Fn(&str) -> bool,
    set_by: &str,
    actor: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(Epoch, AuditEvent), Error> {
    let reason = checked_reason(&r.reason)?;
    let reason = reason.as_str();
    if let Some(client) = &r.client_id
        && !known_client(client)
    {
        return Err(Error::InvalidRequest(format!("no client {client}")));
    }
    let not_before = match r.before {
        Some(t) if t > now => {
            return Err(Error::InvalidRequest("before: not in the future".into()));
        }
        Some(t) => t.replace_nanosecond(0).unwrap_or(t),
        None => OffsetDateTime::from_unix_timestamp(now.unix_timestamp() + 1).unwrap_or(now),
    };
    let instant = not_before
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let scope = r.client_id.as_deref().unwrap_or("all clients").to_owned();
    let event = AuditEvent::sessions_revoked_all(now, &scope, &instant, set_by, reason, actor);
    let epoch = Epoch {
        client_id: r.client_id,
        not_before,
        reason: reason.to_owned(),
        set_by: set_by.to_owned(),
        set_at: now,
    };
    Ok((epoch, event))
}

/// How often `commit` writes an epoch of the default instant again after a commit
/// that ended past it.
const LATE_COMMIT_TRIES: usize = 3;

/// Plans (see `plan`) and writes an epoch as of `now()`. With the default instant, a
/// commit that ended at or after it is written again with an instant after the
/// commit, up to `LATE_COMMIT_TRIES` times: sessions started between the first
/// instant and its commit are covered too. Each write is audited.
pub async fn commit(
    store: &dyn crate::store::Store,
    r: RevokeAll,
    known_client: impl Fn(&str) -> bool,
    set_by: &str,
    actor: Option<Uuid>,
    now: impl Fn() -> OffsetDateTime,
) -> Result<Epoch, Error> {
    let default_instant = r.before.is_none();
    let mut tries = 0;
    loop {
        let (epoch, event) = plan(r.clone(), &known_client, set_by, actor, now())?;
        let stored = store.set_epoch(&epoch, &event).await?;
        tries += 1;
        if !default_instant || now() < stored.not_before {
            return Ok(stored);
        }
        if tries >= LATE_COMMIT_TRIES {
            tracing::warn!(
                not_before = stored.not_before.unix_timestamp(),
                "the revocation epoch committed after its instant again: sessions started during the last write may not be covered; run the command again"
            );
            return Ok(stored);
        }
        tracing::warn!(
            not_before = stored.not_before.unix_timestamp(),
            "the revocation epoch committed after its instant: written again with a later one"
        );
    }
}

/// A reason for the audit log: 1 to `REASON_MAX` characters, no control characters
/// (one line), trimmed.
pub fn checked_reason(reason: &str) -> Result<String, Error> {
    let reason = reason.trim();
    if reason.is_empty()
        || reason.chars().count() > REASON_MAX
        || reason.chars().any(char::is_control)
    {
        return Err(Error::InvalidRequest(format!(
            "reason: 1 to {REASON_MAX} characters, no control characters"
        )));
    }
    Ok(reason.to_owned())
}

/// Waits until the epoch's instant has begun (at most a second): a session started
/// after the caller answers is not covered.
pub async fn wait_until(left: time::Duration) {
    if let Ok(wait) = Duration::try_from(left) {
        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
    }
}

impl Issuer {
    /// Sets a revocation epoch (see the module docs); `set_by` is `cli` or the admin's
    /// id, `actor` the admin.
    pub async fn revoke_all(
        &self,
        set_by: &str,
        actor: Option<Uuid>,
        r: RevokeAll,
    ) -> Result<Epoch, Error> {
        let stored = commit(
            self.store.as_ref(),
            r,
            |c| self.clients.contains_key(c),
            set_by,
            actor,
            || self.now(),
        )
        .await?;
        self.shared
            .announce_epoch(stored.scope(), stored.not_before.unix_timestamp())
            .await;
        self.metrics.sessions_revoked_all.inc();
        tracing::warn!(
            target: "security",
            event = "sessions_revoked_all",
            client = stored.client_id.as_deref().unwrap_or("*"),
            not_before = stored.not_before.unix_timestamp(),
            reason = %stored.reason,
            set_by,
            "every session of the scope created before the instant is revoked"
        );
        wait_until(stored.not_before - self.now()).await;
        Ok(stored)
    }

    /// `POST /v1/admin/sessions/revoke-all`.
    pub async fn admin_revoke_all(&self, who: &Principal, r: RevokeAll) -> Result<Epoch, Error> {
        self.require_admin(who).await?;
        self.revoke_all(&who.user.id.to_string(), Some(who.user.id), r)
            .await
    }

    /// Whether an epoch refuses this access token (by `iat`).
    pub(crate) fn epoch_refuses(&self, claims: &AccessClaims) -> bool {
        self.shared.epochs().refuses(&claims.client_id, claims.iat)
    }

    /// Re-reads the epochs from the database every `EPOCH_RELOAD` (the epochs other
    /// instances set), until the task is dropped.
    pub async fn watch_epochs(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(EPOCH_RELOAD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.watch_epochs_once().await;
        }
    }

    /// One re-read of the epochs from the database.
    pub async fn watch_epochs_once(&self) {
        match self.store.epochs().await {
            Ok(epochs) => self.shared.merge_epochs(&epochs),
            Err(e) => tracing::warn!(error = %e, "reading the revocation epochs failed"),
        }
    }
}
