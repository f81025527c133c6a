//! A service protecting its routes with `token_issuer::verifier`.
//!
//! ```sh
//! cargo run --release                                  # the issuer, on :8080
//! cargo run --example resource_server                  # this service, on :8081
//! AT=...   # an access token from POST /oauth/token (see the README)
//! curl -s localhost:8081/orders -H "authorization: Bearer $AT"
//! ```
//!
//! Environment: `ISSUER_URL` (default `http://localhost:8080`), `AUDIENCE` (default the
//! issuer URL, as the issuer's built-in clients use), `BIND` (default
//! `127.0.0.1:8081`); `INTROSPECTION_CLIENT_ID` and `INTROSPECTION_CLIENT_SECRET`
//! (a `service` client) turn on revocation checks through introspection.
//!
//! In a service of your own, depend on the crate with
//! `default-features = false, features = ["verifier"]`: no server dependency comes with
//! it.

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::{Data, Json};
use poem::{EndpointExt, IntoResponse, Request, Response, Route, Server, get, handler};
use serde_json::json;
use token_issuer::domain::claims::AccessClaims;
use token_issuer::verifier::{Verifier, VerifierConfig, VerifyError};

/// The verified caller, or the answer RFC 6750 prescribes.
async fn authenticate(verifier: &Verifier, req: &Request) -> Result<AccessClaims, Response> {
    // RFC 6750 §2.1: the scheme is case-insensitive.
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Err(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Bearer realm=\"orders\"")
            .finish());
    };
    verifier.verify(token).await.map_err(|e| match e {
        VerifyError::Unauthorized(why) => {
            // The reason is for our logs; the caller learns only that the token is bad.
            eprintln!("refused a token: {why}");
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(
                    "www-authenticate",
                    "Bearer realm=\"orders\", error=\"invalid_token\"",
                )
                .finish()
        }
        VerifyError::Unavailable(_) | VerifyError::Config(_) => {
            eprintln!("cannot verify tokens now: {e}");
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("retry-after", "2")
                .finish()
        }
    })
}

#[handler]
async fn orders(req: &Request, verifier: Data<&Arc<Verifier>>) -> Response {
    match authenticate(&verifier, req).await {
        Ok(caller) => Json(json!({
            "user": caller.sub,
            "session": caller.sid,
            "scope": caller.scope,
            "orders": [],
        }))
        .into_response(),
        Err(refused) => refused,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let issuer = env("ISSUER_URL", "http://localhost:8080");
    let audience = env("AUDIENCE", &issuer);
    let bind = env("BIND", "127.0.0.1:8081");
    let mut config = VerifierConfig::new(&issuer, audience);
    if let (Ok(id), Ok(secret)) = (
        std::env::var("INTROSPECTION_CLIENT_ID"),
        std::env::var("INTROSPECTION_CLIENT_SECRET"),
    ) {
        config = config.introspection(id, secret, Duration::from_secs(5));
    }
    // Discovery fails fast: a service that cannot verify tokens should not start.
    let verifier = Arc::new(Verifier::discover(config).await?);
    eprintln!("verifying tokens of {issuer}; listening on http://{bind}");
    let app = Route::new().at("/orders", get(orders)).data(verifier);
    Server::new(TcpListener::bind(bind)).run(app).await?;
    Ok(())
}
