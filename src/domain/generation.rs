//! The family rules of the constant-storage model: a minted refresh token names its family and its generation `g`
//! (`crypto::refresh::Minted`); the family's row holds its current generation `c` and
//! when `c` was issued. Once the token's MAC has been checked, the store applies these
//! rules; they are here so that both backends decide the same way.
//!
//! - `g == c`: rotate (`c := c + 1`), answer the token of `c + 1`.
//! - `g == c - 1` within the grace window of `c`'s issue: the successor is by
//!   construction unused; answer the token of `c` again (idempotent under any number of
//!   parallel presentations).
//! - `g < c - 1`, or `g == c - 1` past the window: reuse; revoke the family.
//! - `g > c`: the database is behind the tokens (restored from a backup, or its last
//!   commits lost to a power cut). The MAC proves we minted the token: move the family
//!   forward (`c := g + 1`) instead of logging the user out, and tell the operator.
//!   Any older token of the family is reuse from then on.
//!
//! As with `family::RefreshPolicy::decide`, a revoked family stays revoked, a token
//! shown by another client burns the family, and an expired or idle family is over,
//! before the generations are compared.

use time::OffsetDateTime;

use super::family::{GrantRejection, RefreshPolicy, RevokeReason};

/// What the store knows of the family a minted token names.
#[derive(Debug, Clone)]
pub struct FamilyState {
    pub client_id: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
    /// Revoked, or its user disabled.
    pub revoked: bool,
    /// `c`: the generation of the family's one live token.
    pub generation: u64,
    pub generation_issued_at: OffsetDateTime,
}

/// What to do with a presented generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `g == c`: advance to `c + 1`.
    Rotate,
    /// `g == c - 1` within the grace window: answer the token of `c` again.
    GraceReplay,
    /// `g > c`: advance to `g + 1`, and report that the database was behind.
    MoveForward,
    /// Refuse, and revoke the family.
    RevokeFamily(RevokeReason),
    /// Refuse; the family is left as it is.
    Refuse(GrantRejection),
}

impl RefreshPolicy {
    /// Decides what to do with generation `presented` of the family `f`, shown by
    /// `client_id` at `now`. `None`: a token from before the family's generation 0 (a
    /// consumed token of the earlier format, which had a successor of that format).
    pub fn decide_generation(
        &self,
        client_id: &str,
        f: &FamilyState,
        presented: Option<u64>,
        now: OffsetDateTime,
    ) -> Step {
        if f.revoked {
            return Step::Refuse(GrantRejection::Revoked);
        }
        if f.client_id != client_id {
            return Step::RevokeFamily(RevokeReason::ClientMismatch);
        }
        if now >= f.created_at + self.absolute_lifetime {
            return Step::Refuse(GrantRejection::Expired);
        }
        if now >= f.last_used_at + self.idle_timeout {
            return Step::Refuse(GrantRejection::IdleTimeout);
        }
        let Some(presented) = presented else {
            return Step::RevokeFamily(RevokeReason::Reuse);
        };
        // A family that used up every generation is over (2^63 rotations: never; the
        // databases count in signed 64 bits).
        if presented >= i64::MAX as u64 {
            return Step::Refuse(GrantRejection::Expired);
        }
        match presented.cmp(&f.generation) {
            std::cmp::Ordering::Equal => Step::Rotate,
            std::cmp::Ordering::Greater => Step::MoveForward,
            std::cmp::Ordering::Less
                if presented + 1 == f.generation
                    && now < f.generation_issued_at + self.grace_period =>
            {
                Step::GraceReplay
            }
            std::cmp::Ordering::Less => Step::RevokeFamily(RevokeReason::Reuse),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const POLICY: RefreshPolicy = RefreshPolicy {
        idle_timeout: Duration::from_secs(14 * 86_400),
        absolute_lifetime: Duration::from_secs(90 * 86_400),
        grace_period: Duration::from_secs(10),
    };

    fn family(now: OffsetDateTime, generation: u64) -> FamilyState {
        FamilyState {
            client_id: "dev".into(),
            created_at: now,
            last_used_at: now,
            revoked: false,
            generation,
            generation_issued_at: now,
        }
    }

    #[test]
    fn the_current_generation_rotates_and_a_later_one_moves_forward() {
        let now = OffsetDateTime::now_utc();
        let f = family(now, 5);
        assert_eq!(
            POLICY.decide_generation("dev", &f, Some(5), now),
            Step::Rotate
        );
        assert_eq!(
            POLICY.decide_generation("dev", &f, Some(6), now),
            Step::MoveForward
        );
        assert_eq!(
            POLICY.decide_generation("dev", &f, Some(900), now),
            Step::MoveForward
        );
    }

    #[test]
    fn the_previous_generation_replays_within_grace_and_is_reuse_after() {
        let now = OffsetDateTime::now_utc();
        let f = family(now, 5);
        let within = now + Duration::from_secs(9);
        let after = now + Duration::from_secs(10);
        assert_eq!(
            POLICY.decide_generation("dev", &f, Some(4), within),
            Step::GraceReplay
        );
        let reuse = Step::RevokeFamily(RevokeReason::Reuse);
        assert_eq!(POLICY.decide_generation("dev", &f, Some(4), after), reuse);
        assert_eq!(POLICY.decide_generation("dev", &f, Some(3), within), reuse);
        assert_eq!(POLICY.decide_generation("dev", &f, Some(0), within), reuse);
        let no_grace = RefreshPolicy {
            grace_period: Duration::ZERO,
            ..POLICY
        };
        assert_eq!(no_grace.decide_generation("dev", &f, Some(4), now), reuse);
    }

    #[test]
    fn revocation_client_and_lifetimes_come_before_the_generations() {
        let now = OffsetDateTime::now_utc();
        let revoked = FamilyState {
            revoked: true,
            ..family(now, 5)
        };
        for g in [4, 5, 6] {
            assert_eq!(
                POLICY.decide_generation("dev", &revoked, Some(g), now),
                Step::Refuse(GrantRejection::Revoked)
            );
            assert_eq!(
                POLICY.decide_generation("other", &family(now, 5), Some(g), now),
                Step::RevokeFamily(RevokeReason::ClientMismatch)
            );
        }
        let idle = now + Duration::from_secs(14 * 86_400);
        assert_eq!(
            POLICY.decide_generation("dev", &family(now, 5), Some(5), idle),
            Step::Refuse(GrantRejection::IdleTimeout)
        );
        let used = FamilyState {
            last_used_at: now + Duration::from_secs(89 * 86_400),
            ..family(now, 5)
        };
        let end = now + Duration::from_secs(90 * 86_400);
        assert_eq!(
            POLICY.decide_generation("dev", &used, Some(5), end),
            Step::Refuse(GrantRejection::Expired)
        );
        assert_eq!(
            POLICY.decide_generation("dev", &family(now, 5), Some(u64::MAX), now),
            Step::Refuse(GrantRejection::Expired)
        );
        assert_eq!(
            POLICY.decide_generation("dev", &family(now, 5), None, now),
            Step::RevokeFamily(RevokeReason::Reuse)
        );
        assert_eq!(
            POLICY.decide_generation("dev", &revoked, None, now),
            Step::Refuse(GrantRejection::Revoked)
        );
    }
}
