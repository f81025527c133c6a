//! `POST /oauth/token` (RFC 6749 §5) and `POST /oauth/revoke` (RFC 7009).

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Cookie, Header};
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};
use serde::Deserialize;

use crate::api::error::OAuthError;
use crate::api::payload::StrictJson;
use crate::api::{ApiTags, basic_credentials, request_meta};
use crate::domain::client::Delivery;
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::service::Issuer;
use crate::service::tokens::{Issued, TokenParams};

/// The refresh cookie of cookie-mode clients.
pub const REFRESH_COOKIE: &str = "__Host-refresh";

/// Token request parameters (RFC 6749 §4.3.2 and §6). Empty values count as absent; a
/// repeated parameter is `invalid_request`; unknown parameters are ignored.
#[derive(Object, Deserialize)]
#[oai(rename = "TokenRequest")]
pub struct TokenRequestParams {
    /// `authorization_code`, `refresh_token`, `password` (first-party clients), or
    /// (service clients) `client_credentials`.
    grant_type: Option<String>,
    /// A registered client, e.g. `dev` or `dev-spa`.
    client_id: Option<String>,
    /// Password grant: the e-mail address.
    username: Option<String>,
    /// Password grant: the password.
    password: Option<String>,
    /// Refresh grant, body-mode clients only: the refresh token (at most 512 bytes).
    /// Cookie-mode clients send it in the `__Host-refresh` cookie instead.
    refresh_token: Option<String>,
    /// Space-separated scopes, among those the client may request (`invalid_scope`
    /// otherwise). Client credentials: omitted, every scope of the client.
    scope: Option<String>,
    /// Client credentials with `client_secret_post`: the client's secret (instead of
    /// HTTP Basic).
    client_secret: Option<String>,
    /// Client credentials with `private_key_jwt` (RFC 7523):
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
    client_assertion_type: Option<String>,
    /// Client credentials with `private_key_jwt`: a JWT signed by one of the client's
    /// configured keys (`iss` = `sub` = its `client_id`, `aud` the token endpoint or the
    /// issuer, `exp` within 5 minutes, a `jti` used once).
    client_assertion: Option<String>,
    /// Client credentials (RFC 8707): the one audience the token is for, among the
    /// client's; another is `invalid_target`. Omitted: all the client's audiences.
    resource: Option<String>,
    /// The same as `resource`, by the name some libraries use.
    audience: Option<String>,
    /// `authorization_code`: the code from the authorization response (single use,
    /// 60 s).
    code: Option<String>,
    /// `authorization_code`: the `redirect_uri` of the authorization request, the same
    /// byte for byte.
    redirect_uri: Option<String>,
    /// `authorization_code`: the PKCE verifier (RFC 7636), 43 to 128 characters of
    /// `A-Z a-z 0-9 - . _ ~`, whose S256 hash was the `code_challenge`.
    code_verifier: Option<String>,
}

/// RFC 6749 uses form encoding; the same parameters are accepted as JSON.
#[derive(ApiRequest)]
pub enum TokenRequestBody {
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies.
    Form(Form<TokenRequestParams>),
    /// `application/json`; a member given twice is refused.
    Json(StrictJson<TokenRequestParams>),
}

impl TokenRequestBody {
    fn into_params(self, basic: Option<(String, Secret)>) -> TokenParams {
        let (Self::Form(Form(p)) | Self::Json(StrictJson(p))) = self;
        TokenParams {
            grant_type: p.grant_type,
            client_id: p.client_id,
            username: p.username,
            password: p.password.map(Secret::new),
            refresh_token: p.refresh_token.map(Secret::new),
            scope: p.scope,
            basic,
            client_secret: p.client_secret.map(Secret::new),
            client_assertion_type: p.client_assertion_type,
            client_assertion: p.client_assertion.map(Secret::new),
            resource: p.resource,
            audience: p.audience,
            code: p.code.map(Secret::new),
            redirect_uri: p.redirect_uri,
            code_verifier: p.code_verifier,
        }
    }
}

/// Tokens (RFC 6749 §5.1).
#[derive(Object)]
#[oai(rename = "TokenResponse")]
pub struct TokenResponseBody {
    /// An RS256 JWT (`typ: at+jwt`, RFC 9068), to send as `Authorization: Bearer`; with
    /// a DPoP proof (RFC 9449), bound to its key (`cnf.jkt`).
    access_token: String,
    /// `Bearer`, or `DPoP` when the request came with a DPoP proof.
    token_type: String,
    /// Seconds until the access token expires (300 to 900).
    expires_in: u64,
    /// Body-mode clients only: the new refresh token; the one presented is now used.
    /// Cookie-mode clients get it in the `__Host-refresh` cookie and never here.
    #[oai(skip_serializing_if_is_none)]
    refresh_token: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    scope: Option<String>,
}

#[derive(ApiResponse)]
pub enum TokenOk {
    /// Tokens issued. Cookie-mode clients also get
    /// `Set-Cookie: __Host-refresh=...; HttpOnly; Secure; SameSite=Strict; Path=/`.
    #[oai(status = 200)]
    Ok(
        Json<TokenResponseBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
}

impl From<Issued> for TokenOk {
    fn from(issued: Issued) -> Self {
        let (refresh_token, cookie) = match (&issued.refresh_token, issued.delivery) {
            (None, _) => (None, None),
            (Some(token), Delivery::Body) => (Some(token.expose().to_owned()), None),
            (Some(token), Delivery::Cookie) => (
                None,
                Some(refresh_cookie(
                    token.expose(),
                    issued.refresh_max_age.as_secs(),
                )),
            ),
        };
        Self::Ok(
            Json(TokenResponseBody {
                access_token: issued.access_token,
                token_type: if issued.dpop_bound { "DPoP" } else { "Bearer" }.into(),
                expires_in: issued.expires_in,
                refresh_token,
                scope: issued.scope,
            }),
            "no-store".into(),
            "no-cache".into(),
            cookie,
        )
    }
}

/// The `Set-Cookie` that clears the refresh cookie.
pub fn clear_refresh_cookie() -> String {
    refresh_cookie("", 0)
}

fn refresh_cookie(value: &str, max_age: u64) -> String {
    format!(
        "{REFRESH_COOKIE}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict"
    )
}

/// Revocation request (RFC 7009 §2.1).
#[derive(Object, Deserialize)]
#[oai(rename = "RevokeRequest")]
pub struct RevokeRequestParams {
    /// A refresh token, or an access token of ours (its session is revoked).
    /// Cookie-mode clients may omit it: the `__Host-refresh` cookie is used.
    token: Option<String>,
    /// `refresh_token` or `access_token`; a hint only: the type is told by the token's
    /// shape (RFC 7009 §2.1 lets the server ignore it).
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    /// The client the token was issued to.
    client_id: Option<String>,
}

#[derive(ApiRequest)]
pub enum RevokeRequestBody {
    /// `application/x-www-form-urlencoded`, as RFC 7009 specifies.
    Form(Form<RevokeRequestParams>),
    /// `application/json`; a member given twice is refused.
    Json(StrictJson<RevokeRequestParams>),
}

#[derive(ApiResponse)]
pub enum RevokeOk {
    /// Revoked, or the token was unknown or already revoked (RFC 7009 §2.2).
    /// Cookie-mode clients get the cookie cleared.
    #[oai(status = 200)]
    Ok(
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
}

/// HTTP Basic client credentials; an `Authorization` of another scheme says nothing
/// about the client here.
fn basic_client(authorization: Option<&str>) -> Result<Option<(String, Secret)>, Error> {
    let basic = authorization.filter(|v| {
        v.get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic "))
    });
    basic_credentials(basic)
}

pub struct TokenApi;

#[OpenApi(tag = "ApiTags::OAuth")]
impl TokenApi {
    /// Issue tokens
    ///
    /// `grant_type=password` logs in (first-party clients only, RFC 9700) and starts a
    /// session; `grant_type=refresh_token` rotates: the presented refresh token is used
    /// up and its successor returned. Presenting a used refresh token again within the
    /// grace window (default 10 s) returns the same successor, as long as the successor
    /// itself was never used; after that it is a reuse, and the whole session is
    /// revoked (`invalid_grant`, `error_reason: reused`).
    ///
    /// Cookie-mode clients (e.g. `dev-spa`) send `X-Requested-With` (any value) and an
    /// `Origin` among their allowed origins on every request, and the refresh token
    /// only in the `__Host-refresh` cookie; a request that fails this check is refused
    /// without using the token.
    ///
    /// With a `DPoP` proof (RFC 9449), the access token is bound to the proof's key and
    /// a login binds the session: its refresh tokens then need a proof of that key
    /// (`invalid_grant`, `error_reason: dpop_key_mismatch` otherwise, nothing used up).
    #[oai(path = "/oauth/token", method = "post", operation_id = "token")]
    // Each header is a parameter so that the OpenAPI document lists it.
    #[allow(clippy::too_many_arguments)]
    async fn token(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        body: TokenRequestBody,
        #[oai(name = "__Host-refresh")] refresh: Cookie<Option<String>>,
        #[oai(name = "X-Requested-With")] requested_with: Header<Option<String>>,
        /// HTTP Basic client credentials (RFC 6749 §2.3.1), instead of `client_id` in
        /// the body: a public client sends `client_id:` with an empty password.
        #[oai(name = "Authorization")]
        authorization: Header<Option<String>>,
        /// A DPoP proof (RFC 9449 §4) for `POST` on this endpoint's URL under the
        /// issuer's `issuer_url`: the tokens are then bound to its key (`token_type:
        /// DPoP`). Exactly one; required for clients with `dpop = "required"`.
        #[oai(name = "DPoP")]
        _dpop: Header<Option<String>>,
    ) -> Result<TokenOk, OAuthError> {
        let meta = request_meta(req, refresh.0, requested_with.0.is_some());
        let basic = basic_client(authorization.0.as_deref())?;
        Ok(issuer.token(body.into_params(basic), meta).await?.into())
    }

    /// Revoke a session
    ///
    /// RFC 7009: ends the session (token family) of a refresh token or of one of our
    /// access tokens. Answers 200 for unknown and already revoked tokens too.
    /// Cookie-mode clients pass the CSRF check, may rely on the cookie, and get it
    /// cleared.
    #[oai(path = "/oauth/revoke", method = "post", operation_id = "revoke")]
    async fn revoke(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        body: RevokeRequestBody,
        #[oai(name = "__Host-refresh")] refresh: Cookie<Option<String>>,
        #[oai(name = "X-Requested-With")] requested_with: Header<Option<String>>,
        /// HTTP Basic client credentials, instead of `client_id` in the body.
        #[oai(name = "Authorization")]
        authorization: Header<Option<String>>,
    ) -> Result<RevokeOk, OAuthError> {
        let (RevokeRequestBody::Form(Form(p)) | RevokeRequestBody::Json(StrictJson(p))) = body;
        let meta = request_meta(req, refresh.0, requested_with.0.is_some());
        let basic = basic_client(authorization.0.as_deref())?;
        let revoked = issuer
            .revoke(p.client_id, basic, p.token.map(Secret::new), meta)
            .await?;
        let clear = revoked.clear_cookie.then(clear_refresh_cookie);
        Ok(RevokeOk::Ok("no-store".into(), clear))
    }
}
