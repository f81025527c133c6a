//! The sweep of what has ended: sessions that ended more than `SWEEP_MARGIN` ago
//! (revoked, idle or past their absolute lifetime), audit events older than the
//! retention, login sources not seen for `KNOWN_SOURCE_FOR`, authorization codes
//! expired more than `CODE_MARGIN` ago.
//!
//! The server runs it hourly; `token-issuer sessions sweep` runs it once, from another
//! process, against the same database (after a `revoke-all`, or where the operator
//! wants to choose the hour), and `POST /v1/admin/sweep` runs it now in the instance
//! that answers (with SQLite, the server holds the one writer: a second process
//! competes with it for the lock, and under load may wait past its busy timeout).
//!
//! The sweep is a series of short steps, each bounded by the store's time limit
//! (`database_timeout`): a page of families, of which the ended ones are deleted; a
//! few thousand audit events or login sources at a time. So its length grows with the
//! table, but no step does: one statement over a whole table outlived the time limit
//! at a few hundred thousand ended sessions (PostgreSQL rolled it back, every hour),
//! and SQLite's scan held the single writer, and every rotation behind it. What a
//! step deleted stays deleted when a later step fails (or the admin request that ran
//! it is cut short).
//!
//! After each step the sweep pauses as long as the step took: a backlog (the first
//! sweep after a `revoke-all`, half a million sessions) goes at half speed, and the
//! requests keep most of the machine meanwhile (BENCHMARKS.md: refresh during the
//! sweep).

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::attempts::KNOWN_SOURCE_FOR;
use crate::domain::error::Error;
use crate::domain::family::RefreshPolicy;
use crate::store::{Store, SweepCursor};

/// Audit events or login sources deleted per step.
const ROWS_PER_STEP: u64 = 4096;

/// How long an ended session is kept before the sweeper deletes it. Until then a token
/// of it is still answered with the precise reason (`revoked`, `idle_timeout`,
/// `expired`); after, `unknown`. Its access tokens are long expired by then.
pub const SWEEP_MARGIN: Duration = Duration::from_secs(86_400);

/// How long an expired authorization code is kept: a used one brought back meanwhile
/// still revokes the session it started (RFC 6749 §4.1.2).
pub const CODE_MARGIN: Duration = Duration::from_secs(3600);

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub audit_events: u64,
}

/// Sweeps `store` as of `now`, under the widest session rules of any client. Old
/// audit events go even when the session sweep failed (its error is returned after).
pub async fn run(
    store: &dyn Store,
    policy: &RefreshPolicy,
    audit_retention: Duration,
    now: OffsetDateTime,
) -> Result<Swept, Error> {
    let sessions = sweep_sessions(store, policy, now - SWEEP_MARGIN).await;
    if let Ok(deleted @ 1..) = sessions {
        tracing::info!(deleted, "swept ended sessions");
    }
    let audit_events = in_steps(|n| store.sweep_audit(now - audit_retention, n)).await?;
    in_steps(|n| store.sweep_login_sources(now - KNOWN_SOURCE_FOR, n)).await?;
    in_steps(|n| store.sweep_codes(now - CODE_MARGIN, n)).await?;
    if audit_events > 0 {
        tracing::info!(deleted = audit_events, "swept old audit events");
    }
    Ok(Swept {
        sessions: sessions?,
        audit_events,
    })
}

async fn sweep_sessions(
    store: &dyn Store,
    policy: &RefreshPolicy,
    cutoff: OffsetDateTime,
) -> Result<u64, Error> {
    let (mut from, mut deleted) = (SweepCursor::default(), 0);
    loop {
        let started = Instant::now();
        let step = store.sweep_step(policy, cutoff, &from).await?;
        tokio::time::sleep(started.elapsed()).await;
        deleted += step.deleted;
        match step.next {
            Some(next) => from = next,
            None => return Ok(deleted),
        }
    }
}

/// Deletes `ROWS_PER_STEP` rows at a time until a step deletes fewer.
async fn in_steps<F: Future<Output = Result<u64, crate::store::StoreError>>>(
    step: impl Fn(u64) -> F,
) -> Result<u64, Error> {
    let mut deleted = 0;
    loop {
        let started = Instant::now();
        let n = step(ROWS_PER_STEP).await?;
        tokio::time::sleep(started.elapsed()).await;
        deleted += n;
        if n < ROWS_PER_STEP {
            return Ok(deleted);
        }
    }
}
