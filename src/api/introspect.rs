//! `POST /oauth/introspect` (RFC 7662).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};
use serde::Deserialize;

use crate::api::error::OAuthError;
use crate::api::payload::StrictJson;
use crate::api::{ApiTags, basic_credentials};
use crate::domain::claims::Audience;
use crate::domain::secret::Secret;
use crate::service::Issuer;
use crate::service::introspect::{ClientCredentials, Introspection};

/// Introspection request (RFC 7662 §2.1).
#[derive(Object, Deserialize)]
#[oai(rename = "IntrospectionRequest")]
pub struct IntrospectionParams {
    /// An access token or a refresh token.
    token: Option<String>,
    /// `access_token` or `refresh_token`; a hint only, not needed.
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    /// With `client_secret`, instead of HTTP Basic.
    client_id: Option<String>,
    /// The service client's secret, when not sent with HTTP Basic.
    client_secret: Option<String>,
}

#[derive(ApiRequest)]
pub enum IntrospectionBody {
    /// `application/x-www-form-urlencoded`, as RFC 7662 specifies.
    Form(Form<IntrospectionParams>),
    /// `application/json`; a member given twice is refused.
    Json(StrictJson<IntrospectionParams>),
}

/// Introspection response (RFC 7662 §2.2). An inactive token has `active: false` and
/// nothing else.
#[derive(Object, Default)]
#[oai(rename = "IntrospectionResponse")]
pub struct IntrospectionResponseBody {
    /// Whether the token is live: an access token of ours, unexpired, of a live
    /// session; or an unused refresh token of a live session.
    active: bool,
    /// `access_token` or `refresh_token`; `DPoP` for an access token bound to a DPoP
    /// key (RFC 9449 §6.2).
    #[oai(skip_serializing_if_is_none)]
    token_type: Option<String>,
    /// The client the token was issued to.
    #[oai(skip_serializing_if_is_none)]
    client_id: Option<String>,
    /// The user id.
    #[oai(skip_serializing_if_is_none)]
    sub: Option<String>,
    /// The session (token family).
    #[oai(skip_serializing_if_is_none)]
    sid: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    scope: Option<String>,
    /// Access tokens: their audiences.
    #[oai(skip_serializing_if_is_none)]
    aud: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    iss: Option<String>,
    /// Seconds since the epoch. For a refresh token: when it stops working unless used
    /// (idle timeout or the session's absolute end, whichever comes first).
    #[oai(skip_serializing_if_is_none)]
    exp: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    iat: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    nbf: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    jti: Option<String>,
    /// The DPoP key the token is bound to (RFC 9449 §6.2): an access token's `cnf`, or
    /// the key of a bound session's refresh token. A resource server that gets it
    /// must see a proof of that key with the token.
    #[oai(skip_serializing_if_is_none)]
    cnf: Option<ConfirmationBody>,
}

/// `cnf` (RFC 7800): the key a token is bound to.
#[derive(Object)]
#[oai(rename = "Confirmation")]
pub struct ConfirmationBody {
    /// The RFC 7638 SHA-256 thumbprint of the DPoP public key, base64url.
    jkt: String,
}

impl From<Introspection> for IntrospectionResponseBody {
    fn from(i: Introspection) -> Self {
        match i {
            Introspection::Inactive => Self::default(),
            Introspection::Access(c) => Self {
                active: true,
                token_type: Some(
                    if c.cnf.is_some() {
                        "DPoP"
                    } else {
                        "access_token"
                    }
                    .into(),
                ),
                cnf: c.cnf.map(|c| ConfirmationBody { jkt: c.jkt }),
                client_id: Some(c.client_id),
                sub: Some(c.sub),
                sid: c.sid,
                scope: c.scope,
                aud: Some(match c.aud {
                    Audience::One(one) => vec![one],
                    Audience::Many(many) => many,
                }),
                iss: Some(c.iss),
                exp: Some(c.exp),
                iat: Some(c.iat),
                nbf: Some(c.nbf),
                jti: Some(c.jti),
            },
            Introspection::Refresh { state, expires_at } => Self {
                active: true,
                token_type: Some("refresh_token".into()),
                client_id: Some(state.family.client_id),
                sub: Some(state.family.user_id.to_string()),
                sid: Some(state.family.id.to_string()),
                scope: state.family.scope,
                cnf: state.family.dpop_jkt.map(|jkt| ConfirmationBody { jkt }),
                exp: Some(expires_at.unix_timestamp()),
                iat: Some(state.issued_at.unix_timestamp()),
                ..Self::default()
            },
        }
    }
}

#[derive(ApiResponse)]
pub enum IntrospectOk {
    /// The answer; `active: false` for a revoked, expired, used, unknown or forged
    /// token, without saying which.
    #[oai(status = 200)]
    Ok(
        Json<IntrospectionResponseBody>,
        #[oai(header = "Cache-Control")] String,
    ),
}

pub struct IntrospectApi;

#[OpenApi(tag = "ApiTags::OAuth")]
impl IntrospectApi {
    /// Introspect a token
    ///
    /// RFC 7662, for confidential `service` clients: authenticate with HTTP Basic
    /// (`client_id:client_secret`) or with `client_id` and `client_secret` in the body
    /// (not both). Answers for access tokens and refresh tokens; a token whose session
    /// was revoked is `active: false` at once, on every instance. A caller that fails
    /// to authenticate gets `401 invalid_client` and learns nothing about the token.
    #[oai(
        path = "/oauth/introspect",
        method = "post",
        operation_id = "introspect"
    )]
    async fn introspect(
        &self,
        issuer: Data<&Arc<Issuer>>,
        body: IntrospectionBody,
        #[oai(name = "Authorization")] authorization: Header<Option<String>>,
    ) -> Result<IntrospectOk, OAuthError> {
        let (IntrospectionBody::Form(Form(p)) | IntrospectionBody::Json(StrictJson(p))) = body;
        let creds = ClientCredentials {
            basic: basic_credentials(authorization.0.as_deref())?,
            client_id: p.client_id.filter(|s| !s.is_empty()),
            client_secret: p.client_secret.filter(|s| !s.is_empty()).map(Secret::new),
        };
        let answer = issuer.introspect(creds, p.token.map(Secret::new)).await?;
        Ok(IntrospectOk::Ok(Json(answer.into()), "no-store".into()))
    }
}
