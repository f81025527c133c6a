//! Registered clients and the rules that depend on them (delivery mode, CSRF defence).

use std::time::Duration;

use serde::Deserialize;

use crate::domain::family::RefreshPolicy;

use crate::domain::error::Error;

/// What kind of application a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Spa,
    Mobile,
    Service,
}

/// How the refresh token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// In the JSON body (mobile apps, CLIs, server-side clients).
    Body,
    /// Only in the `__Host-refresh` HttpOnly cookie (browsers); never in a body.
    Cookie,
}

/// Whether a client's tokens are bound to its DPoP key (RFC 9449).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpopPolicy {
    /// `DPoP` headers are ignored: bearer tokens only.
    Off,
    /// A request with a proof gets bound tokens; one without gets bearer tokens.
    #[default]
    Allowed,
    /// Every token request needs a proof (`invalid_dpop_proof` without one).
    Required,
}

/// What a refresh with a proof of another key than the session's does (besides the
/// refusal, the audit row, the log line and the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForeignKeyPolicy {
    /// Refuse it; the session goes on for its holder of the key.
    #[default]
    Refuse,
    /// Revoke the session too.
    Revoke,
}

/// Whether a client's DPoP proofs must carry a server nonce (RFC 9449 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoncePolicy {
    /// Proofs need no nonce (one that comes is not checked).
    #[default]
    Off,
    /// Every proof must carry a current nonce; a proof without one, or with a stale
    /// one, is answered `use_dpop_nonce` with a fresh nonce in `DPoP-Nonce`.
    Required,
}

/// A registered application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub kind: ClientKind,
    pub delivery: Delivery,
    /// Normalised origins (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// The `aud` of the access tokens minted for this client.
    pub audiences: Vec<String>,
    /// `service` clients: the SHA-256 of their secret (they authenticate to
    /// introspect).
    pub secret_hash: Option<[u8; 32]>,
    /// Scopes this client may request; none by default.
    pub scopes: Vec<String>,
    /// The life of the access tokens minted for it.
    pub access_lifetime: Duration,
    /// The lifetimes and grace window of its sessions.
    pub policy: RefreshPolicy,
    /// `service` clients: the audiences whose tokens introspection answers them about,
    /// besides their own `client_id`; `*` for every token.
    pub introspection_audiences: Vec<String>,
    /// DPoP at the token endpoint.
    pub dpop: DpopPolicy,
    /// A refresh with a proof of a foreign key: refused, or the session revoked too.
    pub dpop_foreign_key: ForeignKeyPolicy,
    /// Whether its proofs must carry a server nonce.
    pub dpop_nonce: NoncePolicy,
    /// `service` clients: whether it may get tokens of its own (client credentials).
    pub client_credentials: bool,
    /// `service` clients: the public keys of its `private_key_jwt` assertions (its
    /// JWK Set's `keys`); empty: secrets only.
    pub assertion_keys: Vec<serde_json::Map<String, serde_json::Value>>,
    /// `service` clients: where their JWK Set is fetched from instead (`jwks_uri`).
    pub assertion_jwks_uri: Option<String>,
    /// Where the authorization endpoint may send its answers (RFC 6749 §3.1.2): each
    /// matched exactly; a native client's loopback URIs on any port (RFC 8252 §7.3).
    pub redirect_uris: Vec<String>,
    /// The operator's own application: no consent page, and the password grant.
    pub first_party: bool,
}

/// The `DPoP` header(s) of a request (RFC 9449).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DpopHeader {
    #[default]
    Absent,
    One(String),
    /// More than one: refused (RFC 9449 §4.3).
    Several,
}

/// What a browser request tells about where it comes from.
#[derive(Debug, Clone, Default)]
pub struct BrowserContext {
    pub origin: Option<String>,
    /// Whether the custom anti-CSRF header was present (a cross-site form cannot set it,
    /// and a cross-origin `fetch` cannot send it without passing a CORS preflight).
    pub csrf_header: bool,
}

impl Client {
    /// Checks a requested scope (space-delimited) against the client's allowed scopes;
    /// returns it normalised (sorted, no duplicates), `None` when empty.
    pub fn check_scope(&self, requested: Option<&str>) -> Result<Option<String>, Error> {
        let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let mut scopes: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        if scopes.iter().all(|s| self.scopes.iter().any(|a| a == s)) {
            Ok(Some(scopes.join(" ")))
        } else {
            Err(Error::InvalidScope)
        }
    }

    /// Whether introspection may answer this (service) client about a token meant for
    /// `audiences`: one of them is this client, or one it is configured to see.
    pub fn may_introspect(&self, audiences: &[String]) -> bool {
        audiences.iter().any(|aud| {
            *aud == self.id
                || self
                    .introspection_audiences
                    .iter()
                    .any(|mine| mine == "*" || mine == aud)
        })
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The CSRF defence for cookie-delivery clients: the custom header and an `Origin`
    /// among the client's allowed origins. Body-delivery clients carry their token
    /// explicitly, which a cross-site request cannot forge.
    pub fn check_browser_request(&self, ctx: &BrowserContext) -> Result<(), Error> {
        if self.delivery == Delivery::Body {
            return Ok(());
        }
        if !ctx.csrf_header {
            return Err(Error::CsrfRejected(
                "the X-Requested-With header is required for cookie-mode clients",
            ));
        }
        match ctx.origin.as_deref() {
            Some(origin) if self.allows_origin(origin) => Ok(()),
            Some(_) => Err(Error::CsrfRejected(
                "the Origin is not allowed for this client",
            )),
            None => Err(Error::CsrfRejected(
                "the Origin header is required for cookie-mode clients",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spa() -> Client {
        Client {
            id: "spa".into(),
            kind: ClientKind::Spa,
            delivery: Delivery::Cookie,
            allowed_origins: vec!["http://localhost:5173".into()],
            audiences: vec!["aud".into()],
            secret_hash: None,
            scopes: Vec::new(),
            access_lifetime: Duration::from_secs(600),
            introspection_audiences: Vec::new(),
            dpop: DpopPolicy::Allowed,
            dpop_foreign_key: ForeignKeyPolicy::Refuse,
            dpop_nonce: NoncePolicy::Off,
            client_credentials: false,
            assertion_keys: Vec::new(),
            assertion_jwks_uri: None,
            redirect_uris: vec!["http://localhost:5173/callback".into()],
            first_party: true,
            policy: RefreshPolicy {
                idle_timeout: Duration::from_secs(86_400),
                absolute_lifetime: Duration::from_secs(86_400),
                grace_period: Duration::from_secs(10),
            },
        }
    }

    #[test]
    fn cookie_clients_need_header_and_allowed_origin() {
        let ok = BrowserContext {
            origin: Some("http://localhost:5173".into()),
            csrf_header: true,
        };
        assert!(spa().check_browser_request(&ok).is_ok());
        let no_header = BrowserContext {
            csrf_header: false,
            ..ok.clone()
        };
        assert!(spa().check_browser_request(&no_header).is_err());
        let other = BrowserContext {
            origin: Some("http://evil.example".into()),
            csrf_header: true,
        };
        assert!(spa().check_browser_request(&other).is_err());
        let none = BrowserContext {
            origin: None,
            csrf_header: true,
        };
        assert!(spa().check_browser_request(&none).is_err());
    }

    #[test]
    fn body_clients_skip_the_browser_checks() {
        let body = Client {
            delivery: Delivery::Body,
            ..spa()
        };
        assert!(
            body.check_browser_request(&BrowserContext::default())
                .is_ok()
        );
    }
}
