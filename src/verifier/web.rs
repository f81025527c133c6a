//! The verifier's web plumbing: URLs, `Cache-Control`, the HTTP client and the JWKS
//! document.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use super::VerifyError;

#[derive(Deserialize)]
pub(super) struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// `scheme://authority` of a URL, without path, query or fragment.
pub(super) fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() {
        return None;
    }
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    (!authority.is_empty()).then(|| &url[..scheme.len() + 3 + authority.len()])
}

/// `http://` to a loopback host, where plain HTTP cannot be intercepted.
pub(super) fn is_loopback_http(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The RS256 signing keys of a JWKS; other kinds of keys are skipped.
pub(super) fn rsa_signing_keys(set: JwkSet) -> HashMap<String, DecodingKey> {
    set.keys
        .into_iter()
        .filter(|k| k.kty == "RSA")
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == "RS256"))
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let key = DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
            Some((k.kid?, key))
        })
        .collect()
}

/// `max-age` of a `Cache-Control` header; zero for `no-store`/`no-cache`.
pub(super) fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An HTTP client with rustls and the Mozilla roots (reqwest's `rustls-tls`): a service
/// needs no system TLS library. Redirects are not followed: the metadata names the
/// endpoints exactly.
pub(super) fn http_client(timeout: Duration) -> Result<reqwest::Client, VerifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| VerifyError::Config(format!("HTTP client: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(value: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::CACHE_CONTROL, value.parse().unwrap());
        h
    }

    #[test]
    fn origins_and_loopback() {
        assert_eq!(
            origin("https://auth.example.com/oauth/introspect"),
            Some("https://auth.example.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8080"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin("https://a.example?x=/"), Some("https://a.example"));
        assert_eq!(origin("auth.example.com"), None);
        assert_eq!(origin("https://"), None);
        for yes in [
            "http://localhost:8080",
            "http://127.0.0.1",
            "http://[::1]:80",
        ] {
            assert!(is_loopback_http(yes), "{yes}");
        }
        for no in [
            "http://example.com",
            "https://localhost",
            "http://10.0.0.1:80",
            "http://localhost.evil.example",
        ] {
            assert!(!is_loopback_http(no), "{no}");
        }
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            max_age(&headers("public, max-age=300")),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age(&headers("Max-Age = 60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&headers("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&headers("public")), None);
        assert_eq!(max_age(&reqwest::header::HeaderMap::new()), None);
    }
}
