//! The refresh-token family rules: what to do with a presented refresh token.
//!
//! A family is one login on one device (the `sid`). Each rotation consumes the presented
//! token and issues its successor; at most one token of a family is unconsumed. The store
//! applies these rules inside the rotation transaction; they are here so that both
//! backends decide the same way.

use std::time::Duration;

use time::OffsetDateTime;

/// Lifetimes of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
    /// Zero disables the grace window.
    pub grace_period: Duration,
}

/// Why a refresh token is refused; the `error_reason` of an `invalid_grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRejection {
    /// The family passed its absolute lifetime.
    Expired,
    /// The family was revoked (logout, admin, earlier reuse, client mismatch).
    Revoked,
    /// A consumed token came back after the grace window: the family is now revoked.
    Reused,
    /// No such token.
    Unknown,
    /// The family was not used for longer than the idle timeout.
    IdleTimeout,
    /// Wrong username or password (password grant).
    InvalidCredentials,
}

impl GrantRejection {
    /// The reasons a refresh token can be refused for.
    pub const OF_REFRESH: [Self; 5] = [
        Self::Expired,
        Self::Revoked,
        Self::Reused,
        Self::Unknown,
        Self::IdleTimeout,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Reused => "reused",
            Self::Unknown => "unknown",
            Self::IdleTimeout => "idle_timeout",
            Self::InvalidCredentials => "invalid_credentials",
        }
    }
}

/// What the store knows about a presented token that could not simply be rotated.
#[derive(Debug, Clone)]
pub struct PresentedToken {
    pub client_id: String,
    pub family_created_at: OffsetDateTime,
    pub family_last_used_at: OffsetDateTime,
    pub family_revoked: bool,
    pub consumed_at: Option<OffsetDateTime>,
    /// The successor was issued and has not been used yet.
    pub successor_unused: bool,
}

/// The decision for a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Consume it and issue its successor.
    Rotate,
    /// Retry within the grace window: answer the same successor again.
    GraceReplay,
    /// Refuse it and revoke the family (the token may be in the wrong hands).
    RevokeFamily(RevokeReason),
    /// Refuse it; the family is left as it is.
    Refuse(GrantRejection),
}

/// Why a family was revoked; stored with the family and written to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Reuse,
    ClientMismatch,
    Logout,
    /// Ended from the session list (`DELETE /v1/sessions/{id}`).
    SessionEnded,
    /// `POST /v1/logout` with `scope=others`.
    LogoutOthers,
    /// `POST /v1/logout` with `scope=everywhere`.
    LogoutEverywhere,
    /// The password changed: every session of the user ends.
    PasswordChange,
    /// An admin ended every session of the user.
    AdminRevoke,
    /// An admin disabled the user.
    UserDisabled,
}

impl RevokeReason {
    pub const ALL: [Self; 9] = [
        Self::Reuse,
        Self::ClientMismatch,
        Self::Logout,
        Self::SessionEnded,
        Self::LogoutOthers,
        Self::LogoutEverywhere,
        Self::PasswordChange,
        Self::AdminRevoke,
        Self::UserDisabled,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Reuse => "reuse",
            Self::ClientMismatch => "client_mismatch",
            Self::Logout => "logout",
            Self::SessionEnded => "session_ended",
            Self::LogoutOthers => "logout_others",
            Self::LogoutEverywhere => "logout_everywhere",
            Self::PasswordChange => "password_change",
            Self::AdminRevoke => "admin_revoke",
            Self::UserDisabled => "user_disabled",
        }
    }
}

impl RefreshPolicy {
    /// Decides what to do with a presented token. The order matters: a revoked family
    /// stays revoked, a token shown by the wrong client burns the family, an expired
    /// family is simply over, and only then is a consumed token a retry or a reuse.
    pub fn decide(&self, client_id: &str, t: &PresentedToken, now: OffsetDateTime) -> Decision {
        if t.family_revoked {
            return Decision::Refuse(GrantRejection::Revoked);
        }
        if t.client_id != client_id {
            return Decision::RevokeFamily(RevokeReason::ClientMismatch);
        }
        if now >= t.family_created_at + self.absolute_lifetime {
            return Decision::Refuse(GrantRejection::Expired);
        }
        if now >= t.family_last_used_at + self.idle_timeout {
            return Decision::Refuse(GrantRejection::IdleTimeout);
        }
        match t.consumed_at {
            None => Decision::Rotate,
            Some(consumed) if t.successor_unused && now < consumed + self.grace_period => {
                Decision::GraceReplay
            }
            Some(_) => Decision::RevokeFamily(RevokeReason::Reuse),
        }
    }

    /// The oldest `last_used_at` and `created_at` a family may have to be rotated now.
    pub fn cutoffs(&self, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
        (now - self.idle_timeout, now - self.absolute_lifetime)
    }

    /// Whether a session created and last used at these times is still live.
    pub fn is_live(
        &self,
        created_at: OffsetDateTime,
        last_used_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> bool {
        let (idle_cutoff, absolute_cutoff) = self.cutoffs(now);
        last_used_at > idle_cutoff && created_at > absolute_cutoff
    }

    /// The widest of several policies: a family dead under it is dead under each.
    pub fn widest<'a>(policies: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        policies.into_iter().copied().reduce(|a, b| Self {
            idle_timeout: a.idle_timeout.max(b.idle_timeout),
            absolute_lifetime: a.absolute_lifetime.max(b.absolute_lifetime),
            grace_period: a.grace_period.max(b.grace_period),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RefreshPolicy = RefreshPolicy {
        idle_timeout: Duration::from_secs(14 * 86_400),
        absolute_lifetime: Duration::from_secs(90 * 86_400),
        grace_period: Duration::from_secs(10),
    };

    fn token(now: OffsetDateTime) -> PresentedToken {
        PresentedToken {
            client_id: "dev".into(),
            family_created_at: now,
            family_last_used_at: now,
            family_revoked: false,
            consumed_at: None,
            successor_unused: false,
        }
    }

    #[test]
    fn fresh_token_rotates() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(POLICY.decide("dev", &token(now), now), Decision::Rotate);
    }

    #[test]
    fn consumed_token_within_grace_replays_until_successor_used() {
        let now = OffsetDateTime::now_utc();
        let mut t = token(now);
        t.consumed_at = Some(now);
        t.successor_unused = true;
        let later = now + Duration::from_secs(9);
        assert_eq!(POLICY.decide("dev", &t, later), Decision::GraceReplay);
        let after = now + Duration::from_secs(10);
        assert_eq!(
            POLICY.decide("dev", &t, after),
            Decision::RevokeFamily(RevokeReason::Reuse)
        );
        t.successor_unused = false;
        assert_eq!(
            POLICY.decide("dev", &t, later),
            Decision::RevokeFamily(RevokeReason::Reuse)
        );
    }

    #[test]
    fn zero_grace_makes_every_second_use_a_reuse() {
        let now = OffsetDateTime::now_utc();
        let policy = RefreshPolicy {
            grace_period: Duration::ZERO,
            ..POLICY
        };
        let mut t = token(now);
        t.consumed_at = Some(now);
        t.successor_unused = true;
        assert_eq!(
            policy.decide("dev", &t, now),
            Decision::RevokeFamily(RevokeReason::Reuse)
        );
    }

    #[test]
    fn lifetimes_and_revocation_and_client() {
        let now = OffsetDateTime::now_utc();
        let t = token(now);
        let idle = now + Duration::from_secs(14 * 86_400);
        assert_eq!(
            POLICY.decide("dev", &t, idle),
            Decision::Refuse(GrantRejection::IdleTimeout)
        );
        let mut used = t.clone();
        used.family_last_used_at = now + Duration::from_secs(89 * 86_400);
        let abs = now + Duration::from_secs(90 * 86_400);
        assert_eq!(
            POLICY.decide("dev", &used, abs),
            Decision::Refuse(GrantRejection::Expired)
        );
        assert_eq!(
            POLICY.decide("other", &t, now),
            Decision::RevokeFamily(RevokeReason::ClientMismatch)
        );
        let revoked = PresentedToken {
            family_revoked: true,
            ..t
        };
        assert_eq!(
            POLICY.decide("dev", &revoked, now),
            Decision::Refuse(GrantRejection::Revoked)
        );
    }
}
