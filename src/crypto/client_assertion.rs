//! Client assertions (`private_key_jwt`, RFC 7523 §2.2 and §3): a `service` client
//! authenticates with a JWT it signed with a private key whose public half is in its
//! configuration (`jwks`), instead of a shared secret.
//!
//! An assertion is accepted when all of these hold (anything else is `invalid_client`;
//! the reason goes to the log only):
//! - at most `MAX_ASSERTION_LEN` bytes, a JWS compact serialization; no `crit`; `alg`
//!   one of `dpop::ALGORITHMS` (asymmetric only), and the key of the client's `jwks`
//!   named by `kid` (or, without `kid`, its only key) fits it, as for DPoP proofs;
//!   the signature verifies;
//! - `iss` and `sub` are the client's id; `aud` (a string or an array) names the
//!   token endpoint (`issuer_url` + `/oauth/token`) or the issuer identifier (RFC 7523
//!   §3 allows either; the issuer is what RFC 7523bis recommends);
//! - `exp` an integer in the future (within the leeway) and at most `MAX_LIFETIME`
//!   seconds ahead; `nbf` and `iat`, when present, not ahead of now (within the
//!   leeway);
//! - `jti` a string of 1 to `MAX_JTI_LEN` characters, used once: the caller
//!   remembers it until `exp` (`Assertion::replay_id`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::crypto::dpop::{ALGORITHMS, json_object, public_key};

/// The `client_assertion_type` of a JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion accepted, in bytes.
pub const MAX_ASSERTION_LEN: usize = 8192;
/// Longest `jti` accepted, in characters.
pub const MAX_JTI_LEN: usize = 256;
/// How far ahead an assertion's `exp` may be, in seconds: a short-lived credential,
/// and the replay list holds its `jti` no longer.
pub const MAX_LIFETIME: i64 = 300;

/// What the assertion must say.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub client_id: &'a str,
    /// The token endpoint's URL and the issuer identifier.
    pub audiences: [&'a str; 2],
    pub now: i64,
    pub leeway: i64,
}

/// An assertion that passed every check of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub jti: String,
    pub exp: i64,
}

impl Assertion {
    /// What the replay list remembers: the client and the `jti`, hashed.
    pub fn replay_id(&self, client_id: &str) -> String {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            // The id's length first: `a:b` with `c` and `a` with `b:c` differ.
            format!("assertion:{}:{client_id}:{}", client_id.len(), self.jti).as_bytes(),
        );
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }
}

/// Why an assertion was refused (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAssertion(pub &'static str);

/// Checks `assertion` against the client's `keys` (its JWKS's `keys`) and `expected`.
pub fn check(
    assertion: &str,
    keys: &[Map<String, Value>],
    expected: &Expected<'_>,
) -> Result<Assertion, InvalidAssertion> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(InvalidAssertion("the assertion is too long"));
    }
    let mut segments = assertion.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(InvalidAssertion("the assertion is not a JWS"));
    };
    let signing_input = &assertion[..header.len() + 1 + payload.len()];
    let header = json_object(header).ok_or(InvalidAssertion("the header is not JSON"))?;
    if header.contains_key("crit") {
        return Err(InvalidAssertion("crit is not supported"));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or(InvalidAssertion(
            "alg is not one of the supported algorithms",
        ))?;
    let jwk = match header.get("kid") {
        Some(Value::String(kid)) => keys
            .iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid.as_str())),
        Some(_) => None,
        None => match keys {
            [only] => Some(only),
            _ => None,
        },
    }
    .ok_or(InvalidAssertion("no key of the client has this kid"))?;
    let (key, _) = public_key(alg, jwk).map_err(|e| InvalidAssertion(e.0))?;
    let verified = URL_SAFE_NO_PAD
        .decode(signature)
        .is_ok_and(|signature| key.verifies(signing_input.as_bytes(), &signature));
    if !verified {
        return Err(InvalidAssertion("the signature does not verify"));
    }
    let claims = json_object(payload).ok_or(InvalidAssertion("the claims are not JSON"))?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(expected.client_id) || text("sub") != Some(expected.client_id) {
        return Err(InvalidAssertion("iss and sub must be the client's id"));
    }
    let audience_named = match claims.get("aud") {
        Some(Value::String(aud)) => expected.audiences.contains(&aud.as_str()),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| expected.audiences.contains(&aud)),
        _ => false,
    };
    if !audience_named {
        return Err(InvalidAssertion(
            "aud names neither the token endpoint nor the issuer",
        ));
    }
    let (now, leeway) = (expected.now, expected.leeway);
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(InvalidAssertion("exp is missing or not an integer"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(InvalidAssertion("the assertion expired"));
    }
    if exp > now.saturating_add(MAX_LIFETIME + leeway) {
        return Err(InvalidAssertion("exp is too far ahead"));
    }
    for name in ["nbf", "iat"] {
        match claims.get(name) {
            None => {}
            Some(v) => match v.as_i64() {
                Some(t) if t <= now.saturating_add(leeway) => {}
                Some(_) => return Err(InvalidAssertion("nbf or iat is ahead of now")),
                None => return Err(InvalidAssertion("nbf or iat is not an integer")),
            },
        }
    }
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.chars().count() <= MAX_JTI_LEN)
        .ok_or(InvalidAssertion("jti is missing or too long"))?;
    Ok(Assertion {
        jti: jti.to_owned(),
        exp,
    })
}

/// The client an assertion says it is from (its `sub`), read without any check: RFC
/// 7521 §4.2 lets a request that authenticates with an assertion leave `client_id`
/// out (Authlib's `PrivateKeyJWT` does). `check` then verifies that claim like any
/// other.
pub fn claimed_client(assertion: &str) -> Option<String> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return None;
    }
    let payload = assertion.split('.').nth(1)?;
    let claims = json_object(payload)?;
    claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_owned)
}

/// Whether `jwks` (a client's configured JWK Set) holds only public keys of the types
/// assertions may use, each usable with some allowed `alg`; the keys, or why not.
pub fn public_keys(jwks: &Value) -> Result<Vec<Map<String, Value>>, &'static str> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|keys| !keys.is_empty())
        .ok_or("must be a JWK Set with at least one key: {keys = [...]}")?;
    keys.iter()
        .map(|key| {
            let key = key.as_object().ok_or("every key must be a JWK object")?;
            const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
            if PRIVATE.iter().any(|m| key.contains_key(*m)) {
                return Err("holds a private key or a secret: list public keys only");
            }
            let usable = ALGORITHMS.iter().any(|alg| public_key(alg, key).is_ok());
            if !usable {
                return Err("a key is not an EC P-256, Ed25519 or RSA (2048–4096 bits) public key");
            }
            Ok(key.clone())
        })
        .collect()
}
