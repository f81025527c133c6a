//! The domain error. It knows nothing of HTTP: `api::error` maps each variant to a status
//! and a stable code, exhaustively.

use crate::domain::family::GrantRejection;

/// Everything a use case can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message is safe to show.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Unknown `client_id` (or wrong client credentials).
    #[error("unknown client")]
    InvalidClient,
    /// The client may not do this (e.g. revoke another client's token).
    #[error("unauthorized client: {0}")]
    UnauthorizedClient(&'static str),
    /// A scope the client may not request (or, refreshing, one the session lacks).
    #[error("invalid scope")]
    InvalidScope,
    /// `resource` / `audience` names none of the client's audiences (RFC 8707).
    #[error("invalid target")]
    InvalidTarget,
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    /// Revocation of a token that cannot be revoked (a client's own token: no session).
    #[error("unsupported token type")]
    UnsupportedTokenType,
    /// The grant (password or refresh token) is refused.
    #[error("invalid grant: {}", .0.code())]
    InvalidGrant(GrantRejection),
    /// An authorization code is refused (RFC 6749 §4.1.3, `invalid_grant`).
    #[error("invalid authorization code: {}", .0.code())]
    CodeRefused(GrantRejection),
    /// A cookie-mode request failed the CSRF defence; nothing was consumed.
    #[error("csrf check failed: {0}")]
    CsrfRejected(&'static str),
    /// The DPoP proof is refused (RFC 9449 `invalid_dpop_proof`); nothing was consumed.
    #[error("invalid DPoP proof: {0}")]
    InvalidDpopProof(&'static str),
    /// The client's DPoP proofs must carry a current server nonce, and this one did not
    /// (RFC 9449 §8 `use_dpop_nonce`); nothing was consumed.
    #[error("the DPoP proof needs a current server nonce")]
    UseDpopNonce,
    /// The access token is missing its mark; the reason is for logs only.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// The current password given to change it is wrong.
    #[error("wrong current password")]
    WrongPassword,
    #[error("e-mail already registered")]
    EmailTaken,
    #[error("password refused: {0}")]
    WeakPassword(String),
    /// The access token is fine but its user may not do this (RFC 6750
    /// `insufficient_scope`).
    #[error("insufficient scope: {why}")]
    InsufficientScope {
        why: &'static str,
        /// Whether the caller's token is DPoP-bound (its challenge names that scheme).
        dpop: bool,
    },
    #[error("self-registration is disabled")]
    RegistrationDisabled,
    #[error("not found")]
    NotFound,
    /// A rate limit is reached; try again after the duration.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// Too many requests wait for a password hash, or this process remembers as many
    /// DPoP proofs as it may; try again shortly.
    #[error("overloaded")]
    Overloaded,
    /// The database cannot be reached or answered too slowly.
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or an unexpected failure; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }
}
