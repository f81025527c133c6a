//! A service protecting its routes with `token_issuer::verifier`.
//!
//! ```sh
//! cargo run --release                                  # the issuer, on :8080
//! cargo run --example resource_server                  # this service, on :8081
//! AT=...   # an access token from POST /oauth/token (see the README)
//! curl -s localhost:8081/orders -H "authorization: Bearer $AT"
//! # a DPoP-bound token (token_type DPoP): the scheme DPoP and a proof of its key
//! curl -s localhost:8081/orders -H "authorization: DPoP $AT" -H "DPoP: $PROOF"
//! ```
//!
//! Environment: `ISSUER_URL` (default `http://localhost:8080`), `AUDIENCE` (default the
//! issuer URL, as the issuer's built-in clients use), `BIND` (default
//! `127.0.0.1:8081`), `PUBLIC_URL` (the URL clients use for this service, which DPoP
//! proofs' `htu` names; default `http://` + `BIND`); `INTROSPECTION_CLIENT_ID` and `INTROSPECTION_CLIENT_SECRET`
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

/// The challenges of a 401: both schemes, `error` on the one that was used (RFC 6750
/// §3, RFC 9449 §7.1).
fn unauthorized(scheme: Option<&str>, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!(", error=\"{e}\""))
        .unwrap_or_default();
    let algs = token_issuer::crypto::dpop::ALGORITHMS.join(" ");
    let challenge = match scheme {
        Some("DPoP") => format!("DPoP realm=\"orders\"{error}, algs=\"{algs}\""),
        _ => format!("Bearer realm=\"orders\"{error}, DPoP realm=\"orders\", algs=\"{algs}\""),
    };
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", challenge)
        .finish()
}

/// The verified caller, or the answer RFC 6750 / RFC 9449 prescribe.
async fn authenticate(verifier: &Verifier, req: &Request) -> Result<AccessClaims, Response> {
    // RFC 9110 §11.1: the scheme is case-insensitive.
    let credentials = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(scheme, token)| (scheme.to_ascii_lowercase(), token.trim()));
    let (scheme, verified) = match &credentials {
        Some((scheme, token)) if scheme == "bearer" => ("Bearer", verifier.verify(token).await),
        Some((scheme, token)) if scheme == "dpop" => {
            // A DPoP-bound token: the `DPoP` proofs of the request, its method and path.
            let proofs: Vec<&str> = req
                .headers()
                .get_all("dpop")
                .iter()
                .map(|v| v.to_str().unwrap_or_default())
                .collect();
            // The path as the client sent it, also under a `Route::nest`.
            let path = req.original_uri().path();
            (
                "DPoP",
                verifier
                    .verify_dpop(token, &proofs, req.method().as_str(), path)
                    .await,
            )
        }
        _ => return Err(unauthorized(None, None)),
    };
    verified.map_err(|e| match e {
        VerifyError::Unauthorized(why) => {
            // The reason is for our logs; the caller learns only that the token is bad.
            eprintln!("refused a token: {why}");
            unauthorized(Some(scheme), Some("invalid_token"))
        }
        VerifyError::InvalidProof(why) => {
            eprintln!("refused a DPoP proof: {why}");
            unauthorized(Some(scheme), Some("invalid_dpop_proof"))
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
    // The URL clients reach this service at: DPoP proofs name it (`htu`).
    let public_url = env("PUBLIC_URL", &format!("http://{bind}"));
    let mut config = VerifierConfig::new(&issuer, audience).dpop(public_url);
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
