//! The whole HTTP application: the API and its documents, inside the layers of
//! `middleware`, put together once from `HttpOptions` (which `startup` builds from the
//! settings).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use poem::endpoint::BoxEndpoint;
use poem::middleware::{CookieJarManager, Cors};
use poem::{Endpoint, EndpointExt, Response, Route};

use crate::api::methods::{AllowedMethods, method_not_allowed};
use crate::api::middleware::{
    client_ip, dpop_nonce, limit_body, oauth_no_store, observe, page_headers, render_error,
};
use crate::api::{ClientIp, make_openapi_service};
use crate::domain::address::Cidr;
use crate::service::Issuer;

/// What the HTTP layers are configured with.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
    /// Load balancers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The origins CORS allows (none: no CORS at all).
    pub cors_origins: BTreeSet<String>,
    /// Whether CORS allows credentials (a cookie-mode client exists).
    pub cors_credentials: bool,
}

/// The whole HTTP application around an issuer.
pub fn app(issuer: Arc<Issuer>, options: HttpOptions) -> BoxEndpoint<'static, Response> {
    let issuer_metrics = issuer.metrics();
    let nonces = Arc::clone(&issuer);
    let body_timeout = options.body_timeout;
    let api = make_openapi_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let allowed = Arc::new(AllowedMethods::of_api());
    let inner = Route::new()
        .nest("/", api)
        .at("/openapi.json", poem::get(spec))
        .nest("/docs", docs)
        .around(move |ep, req| method_not_allowed(ep, req, Arc::clone(&allowed)))
        .with(CookieJarManager::new())
        .around(move |ep, req| limit_body(ep, req, body_timeout))
        .catch_all_error(render_error)
        .data(issuer);
    let with_cors = match cors(&options.cors_origins, options.cors_credentials) {
        Some(cors) => inner.with(cors).boxed(),
        None => inner.boxed(),
    };
    let trusted: Arc<[Cidr]> = options.trusted_proxies.into();
    let metrics = issuer_metrics;
    with_cors
        .catch_all_error(render_error)
        .around(move |ep, mut req| {
            let trusted = Arc::clone(&trusted);
            async move {
                if let Some(ip) = client_ip(&req, &trusted) {
                    req.extensions_mut().insert(ClientIp(ip));
                }
                ep.call(req).await
            }
        })
        .around(oauth_no_store)
        .around(page_headers)
        .around(move |ep, req| dpop_nonce(ep, req, Arc::clone(&nonces)))
        .around(move |ep, req| observe(ep, req, Arc::clone(&metrics)))
        .boxed()
}

/// CORS for the configured origins only (none configured: no CORS at all), with
/// credentials when a cookie-mode client exists.
fn cors(origins: &BTreeSet<String>, credentials: bool) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    Some(
        Cors::new()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "DELETE"])
            .allow_headers([
                "authorization",
                "content-type",
                "x-requested-with",
                "if-none-match",
                // RFC 9449: a browser client's proof.
                "dpop",
            ])
            .expose_headers([
                "x-request-id",
                "www-authenticate",
                "retry-after",
                "etag",
                "dpop-nonce",
            ])
            .allow_credentials(credentials)
            .max_age(600),
    )
}
