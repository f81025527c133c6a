//! JWKS and RFC 8414 metadata.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::api::ApiTags;
use crate::service::Issuer;

/// A public key (RFC 7517).
#[derive(Object)]
pub struct JwkBody {
    /// `RSA`.
    pub kty: String,
    /// `sig`.
    #[oai(rename = "use")]
    pub use_: String,
    /// `RS256`.
    pub alg: String,
    /// The RFC 7638 thumbprint of the key; the `kid` of the tokens it signs.
    pub kid: String,
    /// Modulus, base64url.
    pub n: String,
    /// Exponent, base64url.
    pub e: String,
}

/// A JWK set (RFC 7517 §5).
#[derive(Object)]
pub struct Jwks {
    pub keys: Vec<JwkBody>,
}

#[derive(ApiResponse)]
pub enum JwksResponse {
    /// The keys that verify our access tokens.
    #[oai(status = 200)]
    Ok(
        Json<Jwks>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "ETag")] String,
    ),
    /// `If-None-Match` matched: the cached set is current.
    #[oai(status = 304)]
    NotModified(
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "ETag")] String,
    ),
}

/// Authorization server metadata (RFC 8414); lists only what is supported. The same
/// document is served as `/.well-known/openid-configuration` for libraries that only
/// look there; this issuer mints no ID tokens.
#[derive(Object)]
pub struct ServerMetadata {
    /// Equal, byte for byte, to the `iss` of our tokens.
    pub issuer: String,
    /// The code flow's front channel (RFC 6749 §4.1), with the hosted sign-in page.
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    /// `code`.
    pub response_types_supported: Vec<String>,
    /// `query`: the authorization response is in the redirect URI's query.
    pub response_modes_supported: Vec<String>,
    /// `authorization_code`, `refresh_token`, `password` (first-party clients) and
    /// `client_credentials`.
    pub grant_types_supported: Vec<String>,
    /// PKCE (RFC 7636): `S256` only, required of every client.
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 9207: every authorization response carries `iss`.
    pub authorization_response_iss_parameter_supported: bool,
    /// `none` for public (first-party) clients; `client_secret_basic`,
    /// `client_secret_post` and `private_key_jwt` for `service` clients (client
    /// credentials).
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The `alg`s of `private_key_jwt` assertions.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// `client_secret_basic` and `client_secret_post`, for `service` clients.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// The `alg` of our access tokens (RFC 9068): `RS256` only.
    pub access_token_signing_alg_values_supported: Vec<String>,
    /// Every scope some client may request (per-client `scopes`).
    pub scopes_supported: Vec<String>,
    /// The DPoP proof algorithms accepted (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<String>,
    pub service_documentation: String,
}

#[derive(ApiResponse)]
pub enum MetadataResponse {
    #[oai(status = 200)]
    Ok(
        Json<ServerMetadata>,
        #[oai(header = "Cache-Control")] String,
    ),
}

pub struct DiscoveryApi;

#[OpenApi(tag = "ApiTags::Discovery")]
impl DiscoveryApi {
    /// JWKS
    ///
    /// The public keys that verify our access tokens. Cache it (`Cache-Control`,
    /// `ETag`); on a token with an unknown `kid`, refetch at most once per interval.
    #[oai(path = "/.well-known/jwks.json", method = "get", operation_id = "jwks")]
    async fn jwks(
        &self,
        issuer: Data<&Arc<Issuer>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> JwksResponse {
        let set = issuer.jwks();
        let (jwks, etag) = (set.jwks(), set.jwks_etag());
        // A rotation publishes a key as `next` for longer than this before it signs;
        // an emergency roll signs with a new key at once (verifiers refetch on its
        // unknown `kid`), and the JWKS is cached briefly for a while after it.
        let cache = format!("public, max-age={}", set.jwks_max_age().as_secs());
        let matches = if_none_match
            .0
            .as_deref()
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            return JwksResponse::NotModified(cache, etag.to_owned());
        }
        let keys = jwks
            .iter()
            .map(|k| JwkBody {
                kty: k.kty.into(),
                use_: k.use_.into(),
                alg: k.alg.into(),
                kid: k.kid.clone(),
                n: k.n.clone(),
                e: k.e.clone(),
            })
            .collect();
        JwksResponse::Ok(Json(Jwks { keys }), cache, etag.to_owned())
    }

    /// Authorization server metadata
    ///
    /// RFC 8414 metadata: the endpoints, grant types and methods this issuer supports.
    #[oai(
        path = "/.well-known/oauth-authorization-server",
        method = "get",
        operation_id = "metadata"
    )]
    async fn metadata(&self, issuer: Data<&Arc<Issuer>>) -> MetadataResponse {
        server_metadata(&issuer)
    }

    /// OpenID configuration
    ///
    /// The same document as `/.well-known/oauth-authorization-server`, for libraries
    /// that discover `jwks_uri` only here. This issuer is not an OpenID Provider: it
    /// mints access tokens, no ID tokens.
    #[oai(
        path = "/.well-known/openid-configuration",
        method = "get",
        operation_id = "openid_configuration"
    )]
    async fn openid_configuration(&self, issuer: Data<&Arc<Issuer>>) -> MetadataResponse {
        server_metadata(&issuer)
    }
}

fn server_metadata(issuer: &Issuer) -> MetadataResponse {
    let base = issuer.issuer_url();
    let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    MetadataResponse::Ok(
        Json(ServerMetadata {
            issuer: base.to_owned(),
            authorization_endpoint: format!("{base}/oauth/authorize"),
            token_endpoint: format!("{base}/oauth/token"),
            jwks_uri: format!("{base}/.well-known/jwks.json"),
            revocation_endpoint: format!("{base}/oauth/revoke"),
            introspection_endpoint: format!("{base}/oauth/introspect"),
            response_types_supported: list(&["code"]),
            response_modes_supported: list(&["query"]),
            grant_types_supported: list(&[
                "authorization_code",
                "refresh_token",
                "password",
                "client_credentials",
            ]),
            code_challenge_methods_supported: list(&["S256"]),
            authorization_response_iss_parameter_supported: true,
            token_endpoint_auth_methods_supported: list(&[
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ]),
            token_endpoint_auth_signing_alg_values_supported: list(
                &crate::crypto::dpop::ALGORITHMS,
            ),
            revocation_endpoint_auth_methods_supported: list(&["none"]),
            introspection_endpoint_auth_methods_supported: list(&[
                "client_secret_basic",
                "client_secret_post",
            ]),
            access_token_signing_alg_values_supported: list(&["RS256"]),
            scopes_supported: issuer.scopes_supported(),
            dpop_signing_alg_values_supported: list(&crate::crypto::dpop::ALGORITHMS),
            service_documentation: format!("{base}/docs"),
        }),
        "public, max-age=3600".into(),
    )
}
