//! The security schemes of the `/v1` API: an access token of ours, sent as
//! `Authorization: Bearer <token>` (RFC 6750), or, when it is bound to a DPoP key,
//! as `Authorization: DPoP <token>` with a `DPoP` proof of that key (RFC 9449 §7).
//! The extractor yields a verified principal.
//!
//! poem-openapi's derive knows the `bearer` HTTP scheme only, so `AccessAuth` is an
//! extractor written out: it reads the `Authorization` header itself (the scheme name
//! is case-insensitive, RFC 9110 §11.1), registers both schemes in the OpenAPI
//! document (`AccessAuth`, `DpopAuth`: either one satisfies an operation), and answers
//! every refusal with a 401 whose `WWW-Authenticate` names the scheme that was used
//! (`challenge`).

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use crate::api::dpop_header;
use crate::api::error::{ApiError, ErrorCode, Problem, Scheme};
use crate::domain::error::Error;
use crate::service::Issuer;
use crate::service::access::Principal;

/// The `/v1` API's caller: an access token of ours that passed every check (see the
/// module docs).
pub struct AccessAuth(pub Principal);

const BEARER_SCHEME: &str = "BearerAuth";
const DPOP_SCHEME: &str = "DpopAuth";

impl<'a> ApiExtractor<'a> for AccessAuth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        let http = |scheme, description| MetaSecurityScheme {
            ty: "http",
            description: Some(description),
            name: None,
            key_in: None,
            scheme: Some(scheme),
            bearer_format: Some("JWT"),
            flows: None,
            openid_connect_url: None,
        };
        registry.create_security_scheme(
            BEARER_SCHEME,
            http(
                "bearer",
                "An RS256 access token of ours that is not bound to a DPoP key: `Authorization: Bearer <token>`.",
            ),
        );
        registry.create_security_scheme(
            DPOP_SCHEME,
            http(
                "DPoP",
                "An access token bound to a DPoP key (`token_type: DPoP`, RFC 9449): `Authorization: DPoP <token>` \
                 and a `DPoP` header with a proof of that key whose `htm` is the method, `htu` the issuer URL plus the \
                 path, and `ath` the base64url SHA-256 of the token.",
            ),
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER_SCHEME, DPOP_SCHEME]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let credentials = authorization(req);
        let scheme = credentials.as_ref().map(|(scheme, _)| *scheme);
        let refuse = |e: Error| -> poem::Error { refusal(e, scheme).into() };
        let issuer = req
            .data::<Arc<Issuer>>()
            .ok_or_else(|| refuse(Error::internal("issuer state missing")))?;
        let principal = match credentials {
            None => {
                let p = Problem::new(
                    crate::api::error::Kind::Unauthorized,
                    ErrorCode::AuthenticationRequired,
                    "send an access token as Authorization: Bearer <token>, or DPoP <token> with a DPoP proof",
                );
                return Err(ApiError::unauthorized(p, None).into());
            }
            Some((Scheme::Bearer, token)) => issuer.authenticate(token).await,
            Some((Scheme::Dpop, token)) => {
                let path = req.original_uri().path();
                issuer
                    .authenticate_dpop(token, &dpop_header(req), req.method().as_str(), path)
                    .await
            }
        };
        principal.map(Self).map_err(refuse)
    }
}

/// The refusal of a request that sent credentials of `scheme`: a 401 naming that
/// scheme (a proof refused here is a 401 too, not the token endpoint's 400).
fn refusal(e: Error, scheme: Option<Scheme>) -> ApiError {
    let mut problem = Problem::from(e);
    if matches!(
        problem.body.error,
        ErrorCode::InvalidDpopProof | ErrorCode::UseDpopNonce
    ) {
        problem.kind = crate::api::error::Kind::Unauthorized;
    }
    match problem.kind {
        crate::api::error::Kind::Unauthorized => ApiError::unauthorized(problem, scheme),
        _ => problem.into(),
    }
}

/// The `Authorization` header's scheme and token; `None` when there is none, or it is
/// of another scheme or carries no token.
fn authorization(req: &Request) -> Option<(Scheme, &str)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (name, token) = value.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if name.eq_ignore_ascii_case("bearer") {
        Some((Scheme::Bearer, token))
    } else if name.eq_ignore_ascii_case("dpop") {
        Some((Scheme::Dpop, token))
    } else {
        None
    }
}
