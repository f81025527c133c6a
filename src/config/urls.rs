//! URLs in the configuration: the issuer's, the database's and Redis's (checked), the
//! clients' origins (normalised), and `SecretUrl`, which never prints a password.

use std::fmt;

use super::{ConfigError, invalid};

/// RFC 8414: an `https` URL with no query or fragment. Plain `http` is accepted for
/// loopback hosts only (development). No path: the metadata is served at the root.
pub(super) fn validate_issuer_url(raw: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw)
        .map_err(|e| invalid("issuer_url", format!("{raw:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.host().is_none() || !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        return Err(invalid(
            "issuer_url",
            format!("{raw:?} must be an https URL (http only for localhost)"),
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.path() != "/"
    {
        return Err(invalid(
            "issuer_url",
            format!("{raw:?} must be scheme://host[:port] with no path, query, fragment or user"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

pub(super) fn validate_database_url(raw: &str) -> Result<String, ConfigError> {
    let scheme_ok = raw.starts_with("sqlite:")
        || raw.starts_with("postgres://")
        || raw.starts_with("postgresql://");
    if scheme_ok && (raw.starts_with("sqlite:") || url::Url::parse(raw).is_ok()) {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "database_url",
            "expected sqlite://path/to/file.db or postgres://user@host:5432/database",
        ))
    }
}

pub(super) fn validate_redis_url(raw: &str) -> Result<String, ConfigError> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.host().is_some() => {
            Ok(raw.to_owned())
        }
        _ => Err(invalid(
            "redis_url",
            "expected redis://[:password@]host:6379[/db], or rediss:// for TLS",
        )),
    }
}

/// A database or Redis URL. It may carry a password, so it prints (`Debug`,
/// `Display`) with the password replaced by `***`; `expose` gives the URL itself, to
/// connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL, password included: to connect, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// A database URL as it may be logged: the password, if any, replaced by `***`.
///
/// A password can also ride in the query (`?password=`, `?sslpassword=`: sqlx reads
/// them), so every query parameter whose name says `pass`, `secret` or `token` is
/// hidden too. A URL that does not parse prints as its scheme alone (an SQLite path,
/// which has no password, prints whole).
pub fn redacted_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return if raw.starts_with("sqlite:") {
            raw.to_owned()
        } else {
            let scheme = raw.split(':').next().unwrap_or_default();
            format!("{scheme}:<unparsable URL hidden>")
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret_name = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "secret", "token"].iter().any(|s| name.contains(s))
    };
    if url.query_pairs().any(|(name, _)| secret_name(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_name(&name) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Normalises an origin (`scheme://host[:port]`) the way browsers send it.
pub(super) fn validate_origin(setting: &str, raw: &str) -> Result<String, ConfigError> {
    let url =
        url::Url::parse(raw).map_err(|_| invalid(setting, format!("{raw:?} is not an origin")))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || !bare || url.host().is_none() {
        return Err(invalid(
            setting,
            format!("{raw:?} must be an origin such as https://app.example.com, without a path"),
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// Whether a URL's host is a loopback address or `localhost`.
fn is_local(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A client's redirect URI (RFC 6749 §3.1.2, RFC 8252 §7): absolute, no fragment, no
/// user information; `https`, or `http` on a loopback host or `localhost`; a native
/// client may also use a private-use scheme with a dot in it (`com.example.app:/cb`,
/// §7.1). Script and data schemes never. Kept as written: requests must match it byte
/// for byte.
pub(super) fn validate_redirect_uri(
    setting: &str,
    raw: &str,
    kind: crate::domain::client::ClientKind,
) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw)
        .map_err(|e| invalid(setting, format!("{raw:?} is not an absolute URI: {e}")))?;
    if url.fragment().is_some() || raw.contains('#') {
        return Err(invalid(
            setting,
            format!("{raw:?} must not have a fragment"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            setting,
            format!("{raw:?} must not carry user information"),
        ));
    }
    // The parameters of the authorization response: a second `iss` or `state` in the
    // URI itself would muddle the mix-up and CSRF checks of the client (RFC 9207).
    const RESPONSE: [&str; 6] = [
        "code",
        "state",
        "iss",
        "error",
        "error_description",
        "error_uri",
    ];
    if let Some((name, _)) = url
        .query_pairs()
        .find(|(k, _)| RESPONSE.contains(&k.as_ref()))
    {
        return Err(invalid(
            setting,
            format!(
                "{raw:?}: its query must not carry {name:?}, a parameter of the authorization response"
            ),
        ));
    }
    let ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_local(&url),
        "javascript" | "data" | "vbscript" | "file" | "blob" | "about" => false,
        private => kind == crate::domain::client::ClientKind::Mobile && private.contains('.'),
    };
    if !ok {
        return Err(invalid(
            setting,
            format!(
                "{raw:?}: expected https (http only on a loopback host or localhost), or for a native client a private-use scheme such as com.example.app:/callback"
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// The logo on the sign-in pages: https (http only on a local host), no user
/// information. Returned with its origin, which the pages' CSP allows for images.
pub(super) fn validate_logo_url(raw: &str) -> Result<(String, String), ConfigError> {
    let url = url::Url::parse(raw)
        .map_err(|e| invalid("logo_url", format!("{raw:?} is not a URL: {e}")))?;
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && is_local(&url));
    if !scheme_ok || url.host().is_none() || !url.username().is_empty() {
        return Err(invalid(
            "logo_url",
            format!(
                "{raw:?} must be an https URL (http only for localhost) without user information"
            ),
        ));
    }
    Ok((url.as_str().to_owned(), url.origin().ascii_serialization()))
}

/// A client's `jwks_uri`: https (http only on a loopback host or localhost), no user
/// information, no fragment.
pub(super) fn validate_jwks_uri(setting: &str, raw: &str) -> Result<String, ConfigError> {
    let url =
        url::Url::parse(raw).map_err(|e| invalid(setting, format!("{raw:?} is not a URL: {e}")))?;
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && is_local(&url));
    if !scheme_ok
        || url.host().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(
            setting,
            format!(
                "{raw:?} must be an https URL (http only for localhost) without user information or fragment"
            ),
        ));
    }
    Ok(url.to_string())
}
