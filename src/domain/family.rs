//! The refresh-token family: one login on one device (the `sid`), its lifetimes, why it
//! ends, and why a refresh token is refused. What to do with a presented token is decided by
//! `generation` (each rotation moves the family to its next generation; its one live
//! token is the one of the current generation).

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
    /// The session is bound to a DPoP key and the request came without a proof of it
    /// (no proof, or a proof of another key). Nothing was consumed.
    DpopKeyMismatch,
    /// An authorization code presented with another `redirect_uri` than it was issued
    /// for. Nothing was consumed.
    RedirectUriMismatch,
    /// An authorization code presented with a `code_verifier` that does not answer its
    /// challenge (RFC 7636 §4.6). Nothing was consumed.
    PkceMismatch,
}

impl GrantRejection {
    /// The reasons a refresh token can be refused for.
    pub const OF_REFRESH: [Self; 6] = [
        Self::Expired,
        Self::Revoked,
        Self::Reused,
        Self::Unknown,
        Self::IdleTimeout,
        Self::DpopKeyMismatch,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Reused => "reused",
            Self::Unknown => "unknown",
            Self::IdleTimeout => "idle_timeout",
            Self::InvalidCredentials => "invalid_credentials",
            Self::DpopKeyMismatch => "dpop_key_mismatch",
            Self::RedirectUriMismatch => "redirect_uri_mismatch",
            Self::PkceMismatch => "pkce_mismatch",
        }
    }
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
    /// Its refresh token came with a DPoP proof of another key than the session's
    /// (a stolen token), and the client's `dpop_foreign_key` is `revoke`.
    DpopForeignKey,
    /// An authorization code that started it was presented again (RFC 6749 §4.1.2).
    CodeReused,
    /// Its user took back their consent to its client.
    ConsentRevoked,
}

impl RevokeReason {
    pub const ALL: [Self; 12] = [
        Self::Reuse,
        Self::ClientMismatch,
        Self::Logout,
        Self::SessionEnded,
        Self::LogoutOthers,
        Self::LogoutEverywhere,
        Self::PasswordChange,
        Self::AdminRevoke,
        Self::UserDisabled,
        Self::DpopForeignKey,
        Self::CodeReused,
        Self::ConsentRevoked,
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
            Self::DpopForeignKey => "dpop_foreign_key",
            Self::CodeReused => "code_reused",
            Self::ConsentRevoked => "consent_revoked",
        }
    }
}

impl RefreshPolicy {
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
