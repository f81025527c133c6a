//! HTTP only: poem-openapi types and thin handlers. The OpenAPI document is generated
//! from this module and committed at `openapi/openapi.json`.

pub mod admin;
pub mod app;
pub mod authorize;
pub mod consents;
pub mod error;
pub mod health;
pub mod introspect;
pub mod methods;
pub mod middleware;
pub mod pages;
pub mod payload;
pub mod problem;
pub mod security;
pub mod sessions;
pub mod sign_out;
pub mod token;
pub mod users;
pub mod wellknown;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use poem::Request;
use poem_openapi::{OpenApiService, Tags};

use crate::domain::client::{BrowserContext, DpopHeader};
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::service::tokens::RequestMeta;

/// Operation groups in the docs.
#[derive(Tags)]
pub enum ApiTags {
    /// RFC 6749 token endpoint, RFC 7009 revocation and RFC 7662 introspection.
    #[oai(rename = "OAuth")]
    OAuth,
    /// Registration and the signed-in user.
    Users,
    /// The signed-in user's sessions, logout and password change.
    Sessions,
    /// For users with the `admin` role (granted by `token-issuer admin grant`).
    Admin,
    /// JWKS and RFC 8414 metadata, for services that verify our tokens.
    Discovery,
    /// Liveness and readiness.
    Operations,
}

/// Every API of the service.
pub type Apis = (
    token::TokenApi,
    authorize::AuthorizeApi,
    sign_out::SignOutApi,
    introspect::IntrospectApi,
    users::UsersApi,
    sessions::SessionsApi,
    consents::ConsentsApi,
    admin::AdminApi,
    wellknown::DiscoveryApi,
    health::HealthApi,
);

const DESCRIPTION: &str = "Hybrid token issuer: short-lived RS256 access JWTs (RFC 9068) that \
services verify through the JWKS, and opaque refresh tokens that rotate on every use, with \
reuse detection that revokes the whole session.\n\n\
Refresh tokens travel in the JSON body for body-mode clients (mobile, CLI) and only in the \
`__Host-refresh` HttpOnly cookie for cookie-mode clients (browsers); cookie-mode requests \
must send `X-Requested-With` and an allowed `Origin`.";

/// The OpenAPI service; it does not depend on configuration, so the exported document
/// is the same on every machine.
pub fn make_openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            token::TokenApi,
            authorize::AuthorizeApi,
            sign_out::SignOutApi,
            introspect::IntrospectApi,
            users::UsersApi,
            sessions::SessionsApi,
            consents::ConsentsApi,
            admin::AdminApi,
            wellknown::DiscoveryApi,
            health::HealthApi,
        ),
        "token-issuer",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    make_openapi_service().spec()
}

/// The client's address, as the start-up middleware decided it (the TCP peer, or the
/// trusted load balancer's `X-Forwarded-For`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// The client's address as text, as the start-up middleware decided it.
fn client_ip(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ClientIp>()
        .map(|ip| ip.0.to_string())
}

/// Who is asking: peer address, user agent, the browser's `Origin`, the CSRF header and
/// the refresh cookie.
fn request_meta(req: &Request, refresh_cookie: Option<String>, csrf_header: bool) -> RequestMeta {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RequestMeta {
        ip: client_ip(req),
        user_agent: header("user-agent"),
        browser: BrowserContext {
            origin: header("origin"),
            csrf_header,
        },
        refresh_cookie: refresh_cookie.map(Secret::new),
        dpop: dpop_header(req),
    }
}

/// The request's `DPoP` headers: none, one (not UTF-8: an empty proof, refused as
/// malformed), or several (refused: RFC 9449 §4.3 allows exactly one).
pub(crate) fn dpop_header(req: &Request) -> DpopHeader {
    let mut values = req.headers().get_all("dpop").iter();
    match (values.next(), values.next()) {
        (None, _) => DpopHeader::Absent,
        (Some(one), None) => DpopHeader::One(one.to_str().unwrap_or_default().to_owned()),
        (Some(_), Some(_)) => DpopHeader::Several,
    }
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn basic_credentials(header: Option<&str>) -> Result<Option<(String, Secret)>, Error> {
    let Some(value) = header else {
        return Ok(None);
    };
    let malformed = || Error::InvalidClient;
    // RFC 9110 §11.1: the scheme is case-insensitive.
    let encoded = value
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("basic "))
        .and_then(|_| value.get(6..))
        .ok_or_else(malformed)?;
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(s.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), Secret::new(unescape(secret)))))
}
