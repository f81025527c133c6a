//! The classification of every error: the stable codes, the one body shape (`error`,
//! a human `error_description`, for `invalid_grant` a machine-readable `error_reason`),
//! and `Problem::from(Error)`, the one exhaustive mapping from domain errors. Internal
//! causes are logged there (inside the request's span, so with its request id) and
//! never shown. `error` turns a `Problem` into the response enums.

use poem::http::StatusCode;
use poem_openapi::error::{ParseParamError, ParseRequestPayloadError};
use poem_openapi::{Enum, Object};

use crate::domain::error::Error;
use crate::domain::family::GrantRejection;

tokio::task_local! {
    /// The id of the request being served (set by the outermost middleware), so every
    /// error body can carry it.
    pub static REQUEST_ID: String;
}

fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Seconds a client should wait after a 503.
pub(super) const RETRY_AFTER_SECS: u32 = 2;
/// The protection space named in `WWW-Authenticate`.
pub const REALM: &str = "token-issuer";

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or missing parameter, wrong content type, failed CSRF check.
    InvalidRequest,
    /// Unknown `client_id`.
    InvalidClient,
    /// The password or refresh-token grant is refused; see `error_reason`.
    InvalidGrant,
    /// The client may not use this token.
    UnauthorizedClient,
    /// `grant_type` is not `password`, `refresh_token` or `client_credentials`.
    UnsupportedGrantType,
    /// Revocation (RFC 7009 §2.2.1) of a client's own access token (client
    /// credentials): it has no session to end and lives until `exp`.
    UnsupportedTokenType,
    /// A scope the client may not request (or, refreshing, one the session lacks).
    InvalidScope,
    /// Client credentials: `resource` (RFC 8707) or `audience` names none of the
    /// client's audiences.
    InvalidTarget,
    /// The `DPoP` proof (RFC 9449) is missing, malformed, of an unsupported
    /// algorithm, for another request, too old or replayed; the description says
    /// which. Nothing was consumed.
    InvalidDpopProof,
    /// The client's DPoP proofs must carry the server's nonce (RFC 9449 §8): retry
    /// with a proof whose `nonce` is the `DPoP-Nonce` header of this answer. Nothing
    /// was consumed.
    UseDpopNonce,
    /// The bearer access token is missing its mark (RFC 6750).
    InvalidToken,
    /// No bearer access token was sent.
    AuthenticationRequired,
    /// The access token is valid but its user lacks the role (RFC 6750 §3.1).
    InsufficientScope,
    /// The e-mail address is already registered.
    EmailTaken,
    /// The password breaks the password policy; the description says how.
    WeakPassword,
    /// The current password, given to change it, is wrong.
    WrongPassword,
    /// Self-registration is turned off.
    RegistrationDisabled,
    /// The cross-origin request comes from an origin that is not allowed.
    OriginNotAllowed,
    NotFound,
    MethodNotAllowed,
    /// The request body is over 64 KiB.
    PayloadTooLarge,
    /// The request body did not arrive in time (`request_body_timeout`).
    RequestTimeout,
    /// A rate limit is reached (per IP or per account on login, per session on
    /// refresh); retry after `Retry-After` seconds.
    RateLimited,
    /// The database or the password-hashing pool is unavailable; retry after `Retry-After`.
    TemporarilyUnavailable,
    /// An unexpected failure; it is logged with the request id.
    ServerError,
}

/// Why an `invalid_grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ErrorReason {
    /// The session passed its absolute lifetime; log in again.
    Expired,
    /// The session was revoked (logout, or the token was shown by another client).
    Revoked,
    /// An already-used refresh token came back after the grace window: the session is
    /// revoked, every token of it is dead.
    Reused,
    /// No such refresh token.
    Unknown,
    /// The session was not used for longer than the idle timeout.
    IdleTimeout,
    /// Wrong e-mail or password (the two are not told apart).
    InvalidCredentials,
    /// A cookie-mode request failed the CSRF defence; nothing was consumed.
    Csrf,
    /// The session is bound to a DPoP key (RFC 9449) and the request did not prove
    /// it (no `DPoP` proof, or one of another key); nothing was consumed.
    DpopKeyMismatch,
    /// An authorization code sent with another `redirect_uri` than it was issued for;
    /// nothing was consumed.
    RedirectUriMismatch,
    /// An authorization code sent with a `code_verifier` that does not answer its
    /// `code_challenge` (RFC 7636 §4.6); nothing was consumed.
    PkceMismatch,
}

impl From<GrantRejection> for ErrorReason {
    fn from(r: GrantRejection) -> Self {
        match r {
            GrantRejection::Expired => Self::Expired,
            GrantRejection::Revoked => Self::Revoked,
            GrantRejection::Reused => Self::Reused,
            GrantRejection::Unknown => Self::Unknown,
            GrantRejection::IdleTimeout => Self::IdleTimeout,
            GrantRejection::InvalidCredentials => Self::InvalidCredentials,
            GrantRejection::DpopKeyMismatch => Self::DpopKeyMismatch,
            GrantRejection::RedirectUriMismatch => Self::RedirectUriMismatch,
            GrantRejection::PkceMismatch => Self::PkceMismatch,
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// The stable code.
    pub error: ErrorCode,
    /// What went wrong, for humans; never a secret or an internal cause.
    pub error_description: String,
    /// For `invalid_grant` (and a failed CSRF check): why, for programs.
    #[oai(skip_serializing_if_is_none)]
    pub error_reason: Option<ErrorReason>,
    /// The request's id, as in the `x-request-id` header and the server's logs: quote
    /// it when reporting a problem.
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

/// The class of an error, which decides the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    RequestTimeout,
    /// 429, with the seconds to wait.
    TooManyRequests(u32),
    Unavailable,
    Internal,
}

/// A classified error, ready to become any of the response enums.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: Kind,
    pub body: ErrorBody,
    /// The scheme the request's access token came under, where the use case knows it
    /// (`insufficient_scope` names it in its challenge).
    pub scheme: Option<Scheme>,
}

impl Problem {
    pub fn new(kind: Kind, error: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            kind,
            scheme: None,
            body: ErrorBody {
                error,
                error_description: description.into(),
                error_reason: None,
                request_id: current_request_id(),
            },
        }
    }

    fn with_reason(mut self, reason: ErrorReason) -> Self {
        self.body.error_reason = Some(reason);
        self
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A poem-level failure (parsing, routing, limits) that never reached a use case.
    pub fn from_poem(err: &poem::Error) -> Self {
        let status = err.status();
        match status {
            StatusCode::NOT_FOUND => {
                Self::new(Kind::NotFound, ErrorCode::NotFound, "no such resource")
            }
            // poem-openapi's bearer scheme found no `Authorization: Bearer` header.
            StatusCode::UNAUTHORIZED => Self::new(
                Kind::Unauthorized,
                ErrorCode::AuthenticationRequired,
                "send an access token as Authorization: Bearer <token>",
            ),
            // Only the CORS layer refuses with a bare 403.
            StatusCode::FORBIDDEN => Self::new(
                Kind::Forbidden,
                ErrorCode::OriginNotAllowed,
                "cross-origin request refused: the Origin is not allowed",
            ),
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                Kind::BadRequest,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this resource",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                Kind::PayloadTooLarge,
                ErrorCode::PayloadTooLarge,
                "request body over 64 KiB",
            ),
            StatusCode::REQUEST_TIMEOUT => Self::new(
                Kind::RequestTimeout,
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                Kind::BadRequest,
                ErrorCode::InvalidRequest,
                "unsupported Content-Type: see the operation's request body in /openapi.json",
            ),
            s if s.is_server_error() => {
                tracing::error!(error = %err, "request failed");
                Self::new(Kind::Internal, ErrorCode::ServerError, "internal error")
            }
            _ => Self::new(
                Kind::BadRequest,
                ErrorCode::InvalidRequest,
                describe_parse_error(err),
            ),
        }
    }
}

/// A fixed description of a parse failure. poem's own messages can quote the input
/// (a password sent as a number, say), so only our parameter names and a repeated
/// field's name are ever shown.
fn describe_parse_error(err: &poem::Error) -> String {
    if let Some(param) = err.downcast_ref::<ParseParamError>() {
        return format!("parameter `{}` is malformed", param.name);
    }
    if let Some(payload) = err.downcast_ref::<ParseRequestPayloadError>() {
        let repeated = payload
            .reason
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.split('`').next())
            .filter(|name| {
                name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        return match repeated {
            Some(name) => format!("parameter `{name}` is repeated"),
            None => "the request body is malformed or misses a required field; see /openapi.json"
                .to_owned(),
        };
    }
    "malformed request".to_owned()
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        use ErrorCode as C;
        match e {
            Error::InvalidRequest(m) => Self::new(Kind::BadRequest, C::InvalidRequest, m),
            Error::InvalidClient => Self::new(
                Kind::Unauthorized,
                C::InvalidClient,
                "unknown client_id, or client authentication failed",
            ),
            Error::UnauthorizedClient(m) => Self::new(Kind::BadRequest, C::UnauthorizedClient, m),
            Error::UnsupportedGrantType => Self::new(
                Kind::BadRequest,
                C::UnsupportedGrantType,
                "grant_type must be password, refresh_token or client_credentials",
            ),
            Error::UnsupportedTokenType => Self::new(
                Kind::BadRequest,
                C::UnsupportedTokenType,
                "a client's own access token cannot be revoked; it expires within minutes",
            ),
            Error::InvalidScope => Self::new(
                Kind::BadRequest,
                C::InvalidScope,
                "a scope the client may not request, or the session was not granted",
            ),
            Error::InvalidTarget => Self::new(
                Kind::BadRequest,
                C::InvalidTarget,
                "resource (or audience) is not one of the client's audiences",
            ),
            Error::InvalidGrant(r) => {
                let description = match r {
                    GrantRejection::InvalidCredentials => "wrong e-mail or password",
                    GrantRejection::Expired => "the session expired; log in again",
                    GrantRejection::IdleTimeout => "the session was idle too long; log in again",
                    GrantRejection::Revoked => "the session was revoked; log in again",
                    GrantRejection::Reused => {
                        "refresh token reuse detected; the session is revoked"
                    }
                    GrantRejection::Unknown => "unknown refresh token",
                    GrantRejection::DpopKeyMismatch => {
                        "the refresh token is bound to a DPoP key: send a DPoP proof of that key"
                    }
                    // Not a refresh token's reasons.
                    GrantRejection::RedirectUriMismatch | GrantRejection::PkceMismatch => {
                        "the grant does not match its request"
                    }
                };
                Self::new(Kind::BadRequest, C::InvalidGrant, description).with_reason(r.into())
            }
            Error::CodeRefused(r) => {
                let description = match r {
                    GrantRejection::Unknown => {
                        "unknown authorization code, or one of another client"
                    }
                    GrantRejection::Expired => "the authorization code expired (codes live 60 s)",
                    GrantRejection::Reused => {
                        "the authorization code was used before; a session it started is revoked"
                    }
                    GrantRejection::Revoked => {
                        "the sign-in that approved the code has ended; authorize again"
                    }
                    GrantRejection::RedirectUriMismatch => {
                        "redirect_uri differs from the one of the authorization request"
                    }
                    GrantRejection::PkceMismatch => {
                        "code_verifier does not answer the code_challenge (S256)"
                    }
                    GrantRejection::DpopKeyMismatch => {
                        "the code is bound to a DPoP key (dpop_jkt): send a DPoP proof of that key"
                    }
                    GrantRejection::IdleTimeout | GrantRejection::InvalidCredentials => {
                        "the authorization code is refused"
                    }
                };
                Self::new(Kind::BadRequest, C::InvalidGrant, description).with_reason(r.into())
            }
            Error::CsrfRejected(m) => {
                Self::new(Kind::BadRequest, C::InvalidRequest, m).with_reason(ErrorReason::Csrf)
            }
            Error::InvalidDpopProof(m) => Self::new(Kind::BadRequest, C::InvalidDpopProof, m),
            Error::UseDpopNonce => Self::new(
                Kind::BadRequest,
                C::UseDpopNonce,
                "make the DPoP proof again with the nonce of the DPoP-Nonce header",
            ),
            Error::InvalidToken(why) => {
                tracing::debug!(reason = why, "access token refused");
                Self::new(
                    Kind::Unauthorized,
                    C::InvalidToken,
                    "the access token is invalid, expired or revoked",
                )
            }
            Error::EmailTaken => Self::new(
                Kind::Conflict,
                C::EmailTaken,
                "this e-mail address is already registered",
            ),
            Error::WeakPassword(m) => Self::new(Kind::BadRequest, C::WeakPassword, m),
            Error::WrongPassword => Self::new(
                Kind::BadRequest,
                C::WrongPassword,
                "the current password is wrong",
            ),
            Error::RegistrationDisabled => Self::new(
                Kind::Forbidden,
                C::RegistrationDisabled,
                "self-registration is disabled",
            ),
            Error::NotFound => Self::new(Kind::NotFound, C::NotFound, "not found"),
            Error::InsufficientScope { why, dpop } => Self {
                scheme: Some(if dpop { Scheme::Dpop } else { Scheme::Bearer }),
                ..Self::new(Kind::Forbidden, C::InsufficientScope, why)
            },
            Error::RateLimited(wait) => {
                let secs = u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                    .unwrap_or(u32::MAX)
                    .max(1);
                Self::new(
                    Kind::TooManyRequests(secs),
                    C::RateLimited,
                    "too many requests; retry after the Retry-After delay",
                )
            }
            Error::Overloaded => Self::new(
                Kind::Unavailable,
                C::TemporarilyUnavailable,
                "too many requests in progress (logins, or DPoP proofs); retry shortly",
            ),
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "storage unavailable");
                Self::new(
                    Kind::Unavailable,
                    C::TemporarilyUnavailable,
                    "the database is unavailable; retry shortly",
                )
            }
            Error::Internal(cause) => {
                tracing::error!(error = %cause, source = ?cause.source(), "internal error");
                Self::new(Kind::Internal, C::ServerError, "internal error")
            }
        }
    }
}

/// The scheme a request's `Authorization` header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}
