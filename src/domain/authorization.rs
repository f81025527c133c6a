//! The rules of the authorization endpoint that need no I/O: redirect URIs (RFC 6749
//! §3.1.2, RFC 8252 §7.3), PKCE values (RFC 7636 §4), `prompt`, and which consent
//! covers a request.

use crate::domain::client::{Client, ClientKind};

/// The loopback hosts of RFC 8252 §7.3, on which a native client's redirect matches
/// on any port. `localhost` is not one: it may resolve elsewhere (§8.3).
const LOOPBACK_PREFIXES: [&str; 2] = ["http://127.0.0.1", "http://[::1]"];

/// A loopback URI without its port (`http://127.0.0.1:51004/cb` → `http://127.0.0.1/cb`);
/// `None` when `uri` is not `http://` on a loopback address followed by an optional
/// port and then a path, a query or nothing (so `http://127.0.0.1.evil.example/` and
/// `http://127.0.0.1:80@evil.example/` are not loopback).
pub fn loopback_without_port(uri: &str) -> Option<String> {
    let prefix = LOOPBACK_PREFIXES.iter().find(|p| uri.starts_with(*p))?;
    let mut rest = &uri[prefix.len()..];
    if let Some(after) = rest.strip_prefix(':') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if after[..digits].parse::<u16>().is_ok_and(|p| p > 0) {
            rest = &after[digits..];
        } else {
            return None;
        }
    }
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
        return None;
    }
    Some(format!("{prefix}{rest}"))
}

impl Client {
    /// Whether `uri` is one of the client's redirect URIs: exactly, byte for byte; or,
    /// for a native (`mobile`) client, a registered loopback URI on another port.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        if uri.contains('#') {
            return false;
        }
        if self.redirect_uris.iter().any(|r| r == uri) {
            return true;
        }
        if self.kind != ClientKind::Mobile {
            return false;
        }
        let Some(given) = loopback_without_port(uri) else {
            return false;
        };
        self.redirect_uris
            .iter()
            .filter_map(|r| loopback_without_port(r))
            .any(|r| r == given)
    }
}

/// The characters of a `code_verifier` (RFC 7636 §4.1: unreserved).
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// A `code_verifier`: 43 to 128 unreserved characters.
pub fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len()) && verifier.bytes().all(unreserved)
}

/// An S256 `code_challenge`: a SHA-256 in base64url without padding (43 characters).
pub fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// A `dpop_jkt` (RFC 9449 §10): a SHA-256 thumbprint in base64url.
pub fn valid_jkt(jkt: &str) -> bool {
    valid_challenge(jkt)
}

/// What `prompt` asks of the authorization endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prompt {
    /// Sign in when there is no session; ask consent when none covers the request.
    #[default]
    Default,
    /// Never show a page: `login_required` / `consent_required` instead.
    None,
    /// Sign in again even with a session.
    Login,
    /// Ask consent again (a client that is not first-party).
    Consent,
}

impl Prompt {
    /// The value that asks for it (none for the default).
    pub fn value(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::None => Some("none"),
            Self::Login => Some("login"),
            Self::Consent => Some("consent"),
        }
    }

    /// `None` for a value this server does not know.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Some(Self::Default),
            Some("none") => Some(Self::None),
            Some("login") => Some(Self::Login),
            Some("consent") => Some(Self::Consent),
            Some(_) => None,
        }
    }
}

/// Whether a consent given for `granted` (sorted, space-separated) covers the
/// normalised `requested` scopes: every requested scope was granted.
pub fn consent_covers(granted: &str, requested: Option<&str>) -> bool {
    let granted: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
    requested
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .all(|s| granted.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports_are_dropped_and_lookalikes_refused() {
        let plain = Some("http://127.0.0.1/cb".to_owned());
        assert_eq!(loopback_without_port("http://127.0.0.1:51004/cb"), plain);
        assert_eq!(loopback_without_port("http://127.0.0.1/cb"), plain);
        assert_eq!(
            loopback_without_port("http://[::1]:8/cb?x=1").as_deref(),
            Some("http://[::1]/cb?x=1")
        );
        for bad in [
            "http://127.0.0.1.evil.example/cb",
            "http://127.0.0.1:80@evil.example/cb",
            "http://127.0.0.1:0/cb",
            "http://127.0.0.1:70000/cb",
            "http://127.0.0.1:/cb",
            "https://127.0.0.1/cb",
            "http://localhost:80/cb",
            "http://127.0.0.2/cb",
        ] {
            assert_eq!(loopback_without_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn verifiers_and_challenges() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"A-._~9".repeat(22)[..128]));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!valid_verifier(&format!("{} ", "a".repeat(43))));
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"
        ));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"
        ));
    }

    #[test]
    fn prompts() {
        assert_eq!(Prompt::parse(None), Some(Prompt::Default));
        assert_eq!(Prompt::parse(Some("none")), Some(Prompt::None));
        assert_eq!(Prompt::parse(Some("login")), Some(Prompt::Login));
        assert_eq!(Prompt::parse(Some("select_account")), None);
        assert_eq!(Prompt::parse(Some("none login")), None);
    }

    #[test]
    fn a_consent_covers_its_scopes_and_fewer() {
        assert!(consent_covers("a b", Some("a")));
        assert!(consent_covers("a b", None));
        assert!(consent_covers("", None));
        assert!(!consent_covers("a", Some("a b")));
        assert!(!consent_covers("", Some("a")));
    }
}
