//! Error responses. One body shape everywhere (`problem`); on the OAuth endpoints the
//! codes are those of RFC 6749 §5.2. The response enums of the OAuth endpoints and of
//! `/v1`, each built from a `Problem`, and the `WWW-Authenticate` challenges.

use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

use super::problem::RETRY_AFTER_SECS;
pub use super::problem::{
    ErrorBody, ErrorCode, ErrorReason, Kind, Problem, REALM, REQUEST_ID, Scheme,
};
use crate::domain::error::Error;

fn no_store() -> String {
    "no-store".to_owned()
}

/// Errors of the OAuth endpoints (RFC 6749 §5.2), never cached.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "oauth_bad_request")]
pub enum OAuthError {
    /// `invalid_request`, `invalid_grant` (with `error_reason`), `unauthorized_client`,
    /// `unsupported_grant_type` or `invalid_scope`.
    #[oai(status = 400)]
    BadRequest(
        Json<ErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `invalid_client`: unknown `client_id`, or a confidential client that failed to
    /// authenticate (RFC 6749 §5.2: with `WWW-Authenticate: Basic`).
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
        #[oai(header = "WWW-Authenticate")] String,
    ),
    /// `payload_too_large`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `request_timeout`: the body did not arrive within `request_body_timeout`.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// `rate_limited`: retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        #[oai(header = "Retry-After")] u32,
        #[oai(header = "Cache-Control")] String,
    ),
    /// `temporarily_unavailable`: retry after `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
    /// `server_error`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl From<Problem> for OAuthError {
    fn from(p: Problem) -> Self {
        let body = Json(p.body);
        match p.kind {
            Kind::BadRequest | Kind::Forbidden | Kind::NotFound | Kind::Conflict => {
                Self::BadRequest(body, no_store(), "no-cache".into())
            }
            Kind::Unauthorized => Self::Unauthorized(
                body,
                no_store(),
                "no-cache".into(),
                format!("Basic realm=\"{REALM}\""),
            ),
            Kind::PayloadTooLarge => Self::PayloadTooLarge(body),
            Kind::RequestTimeout => Self::RequestTimeout(body),
            Kind::TooManyRequests(secs) => Self::TooManyRequests(body, secs, no_store()),
            Kind::Unavailable => Self::Unavailable(body, RETRY_AFTER_SECS),
            Kind::Internal => Self::Internal(body),
        }
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        Problem::from(e).into()
    }
}

fn oauth_bad_request(err: poem::Error) -> OAuthError {
    let mut p = Problem::from_poem(&err);
    if p.kind == Kind::NotFound {
        p.kind = Kind::BadRequest;
        p.body.error = ErrorCode::InvalidRequest;
    }
    p.into()
}

/// Errors of the `/v1` API.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "api_bad_request")]
pub enum ApiError {
    /// `invalid_request`, `weak_password`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `invalid_token` or `authentication_required` (RFC 6750).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// `registration_disabled`, or `insufficient_scope` (with `WWW-Authenticate`).
    #[oai(status = 403)]
    Forbidden(
        Json<ErrorBody>,
        #[oai(header = "WWW-Authenticate")] Option<String>,
    ),
    /// `not_found`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `email_taken`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `payload_too_large`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `request_timeout`: the body did not arrive within `request_body_timeout`.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// `rate_limited`: retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
    /// `temporarily_unavailable`: retry after `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
    /// `server_error`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// `WWW-Authenticate` for a 401 (RFC 6750 §3, RFC 9449 §7.1): the scheme that was used
/// carries the error (none when no token was sent); both schemes are offered, the
/// DPoP one with the proof algorithms we accept (`algs`).
pub fn www_authenticate(body: &ErrorBody, scheme: Option<Scheme>) -> String {
    let error = match body.error {
        ErrorCode::InvalidToken => Some("invalid_token"),
        ErrorCode::InvalidDpopProof => Some("invalid_dpop_proof"),
        ErrorCode::UseDpopNonce => Some("use_dpop_nonce"),
        _ => None,
    };
    let detail = error
        .map(|e| {
            format!(
                ", error=\"{e}\", error_description=\"{}\"",
                body.error_description
            )
        })
        .unwrap_or_default();
    let algs = crate::crypto::dpop::ALGORITHMS.join(" ");
    match scheme {
        Some(Scheme::Dpop) => format!("DPoP realm=\"{REALM}\"{detail}, algs=\"{algs}\""),
        Some(Scheme::Bearer) => {
            format!("Bearer realm=\"{REALM}\"{detail}, DPoP realm=\"{REALM}\", algs=\"{algs}\"")
        }
        None => format!("Bearer realm=\"{REALM}\", DPoP realm=\"{REALM}\", algs=\"{algs}\""),
    }
}

impl ApiError {
    /// A 401 for a request that used `scheme` (`None`: no credentials).
    pub fn unauthorized(p: Problem, scheme: Option<Scheme>) -> Self {
        let header = www_authenticate(&p.body, scheme);
        Self::Unauthorized(Json(p.body), header)
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        let body = Json(p.body);
        match p.kind {
            Kind::BadRequest => Self::BadRequest(body),
            Kind::Unauthorized => {
                let scheme =
                    (body.error != ErrorCode::AuthenticationRequired).then_some(Scheme::Bearer);
                let header = www_authenticate(&body, scheme);
                Self::Unauthorized(body, header)
            }
            Kind::Forbidden => {
                let header = (body.error == ErrorCode::InsufficientScope).then(|| {
                    let scheme = match p.scheme {
                        Some(Scheme::Dpop) => "DPoP",
                        _ => "Bearer",
                    };
                    format!(
                        "{scheme} realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                        body.error_description
                    )
                });
                Self::Forbidden(body, header)
            }
            Kind::NotFound => Self::NotFound(body),
            Kind::Conflict => Self::Conflict(body),
            Kind::PayloadTooLarge => Self::PayloadTooLarge(body),
            Kind::RequestTimeout => Self::RequestTimeout(body),
            Kind::TooManyRequests(secs) => Self::TooManyRequests(body, secs),
            Kind::Unavailable => Self::Unavailable(body, RETRY_AFTER_SECS),
            Kind::Internal => Self::Internal(body),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Problem::from(e).into()
    }
}

fn api_bad_request(err: poem::Error) -> ApiError {
    Problem::from_poem(&err).into()
}
