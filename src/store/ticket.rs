//! Who decides whether a rotation still happens once its caller stops waiting.
//!
//! A rotation whose caller was answered 503 must not happen behind its back: the client
//! was told to retry, and a retry after the grace window would be judged a reuse (the
//! session revoked, a false theft alarm). So a rotation carries a `Ticket`, and exactly
//! one of two things wins it:
//! - the store *claims* it just before a point of no return (SQLite: once the batch
//!   holds the write lock; PostgreSQL: before the statement that consumes the token is
//!   sent, and before a `COMMIT`), and *releases* it once that step is over;
//! - the caller *abandons* it when its deadline passes, but only while it is not
//!   claimed; and once the deadline has passed, no new claim is granted (a retry the
//!   store starts late, after a released claim, never reaches its commit either).
//!
//! Abandoned first: the store never starts the irreversible step, and the 503 tells the
//! truth (nothing happened). Claimed first: the caller waits for the store's answer
//! instead of answering 503 while a commit may be under way. The wait is bounded
//! (`store::timeout`): the database's own statement timeout ends a claimed PostgreSQL
//! statement, and SQLite commits a batch it holds the lock for in milliseconds; only
//! a connection that dies with the statement in flight leaves the outcome unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

/// Shared by a rotation's caller and the store; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    released: Notify,
    /// After it, no claim is granted; `None`: the caller waits for ever.
    deadline: Option<Instant>,
}

impl Ticket {
    /// A ticket whose caller stops waiting at `deadline`.
    pub fn until(deadline: Instant) -> Self {
        Self(Arc::new(Inner {
            deadline: Some(deadline),
            ..Inner::default()
        }))
    }

    /// The store, before a point of no return: true when it may go on (the caller still
    /// waits, and now waits for the answer); false when the caller has gone, or its
    /// deadline has passed (it is leaving).
    pub fn claim(&self) -> bool {
        if self.0.deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = self.0.state.compare_exchange(
                WAITING,
                ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        match self
            .0
            .state
            .compare_exchange(WAITING, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == CLAIMED,
        }
    }

    /// The store, once the irreversible step is over: the caller may leave again.
    pub fn release(&self) {
        if self
            .0
            .state
            .compare_exchange(CLAIMED, WAITING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.0.released.notify_one();
        }
    }

    /// The caller, at its deadline: true when it may answer 503 (nothing will happen);
    /// false while the store holds a claim (the caller must wait for the answer).
    pub fn abandon(&self) -> bool {
        match self
            .0
            .state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == ABANDONED,
        }
    }

    /// Completes after a `release` (one that happened before this call counts too).
    pub async fn released(&self) {
        self.0.released.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_and_abandon_exclude_each_other() {
        let t = Ticket::default();
        assert!(t.claim());
        assert!(t.claim(), "a claim is held, not taken twice");
        assert!(
            !t.abandon(),
            "the caller waits while the store holds a claim"
        );
        t.release();
        assert!(t.abandon());
        assert!(!t.claim(), "an abandoned rotation never reaches its commit");
        assert!(t.abandon());
    }

    #[tokio::test]
    async fn no_claim_is_granted_after_the_deadline() {
        let t = Ticket::until(Instant::now() + std::time::Duration::from_millis(20));
        assert!(t.claim());
        t.release();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(
            !t.claim(),
            "a retry started after the deadline does not commit"
        );
        assert!(t.abandon());
    }
}
