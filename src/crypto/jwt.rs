//! Minting and verifying access tokens (JWS compact, RS256, RFC 9068).
//!
//! Verification is pinned: the header must be exactly `alg: RS256` with `typ: at+jwt`,
//! a `kid` from our own key set and no `crit`; `jku`, `x5u`, `jwk` and friends are never
//! looked at. jsonwebtoken checks the signature, `iss`, `aud` and the presence of `exp`,
//! `nbf`, `iat`, `iss`, `aud`, `sub`; the time checks run here against the given clock
//! with the configured leeway (30 s at most), because jsonwebtoken reads the system clock.
//!
//! [`check`] holds these rules once: the issuer's own endpoints (through [`Verifier`],
//! feature `server`) and the `verifier` module that services embed both call it, so a
//! service accepts exactly what the issuer accepts.

use std::collections::HashSet;
#[cfg(feature = "server")]
use std::sync::Arc;

#[cfg(feature = "server")]
use aws_lc_rs::rand::SystemRandom;
#[cfg(feature = "server")]
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[cfg(feature = "server")]
use crate::crypto::b64url;
#[cfg(feature = "server")]
use crate::crypto::keys::{Keys, SigningKey};
use crate::domain::claims::AccessClaims;
#[cfg(feature = "server")]
use crate::domain::error::Error;

/// Longest access token we try to parse.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Signs `claims` with the held key pair: one RSA signature, no key parsing.
#[cfg(feature = "server")]
pub fn sign(key: &SigningKey, claims: &AccessClaims) -> Result<String, Error> {
    let payload = serde_json::to_vec(claims).map_err(Error::internal)?;
    let mut token = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 350);
    token.push_str(&key.header_b64);
    token.push('.');
    token.push_str(&b64url(&payload));
    let mut signature = vec![0u8; key.key_pair.public_modulus_len()];
    key.key_pair
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            token.as_bytes(),
            &mut signature,
        )
        .map_err(|_| Error::internal("RSA signing failed"))?;
    token.push('.');
    token.push_str(&b64url(&signature));
    Ok(token)
}

/// The JOSE header members we read. Unknown members are ignored (never fetched); a
/// member given twice fails to parse.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Why a token was refused. The reason is for logs; callers answer `invalid_token`
/// whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The header names no key of the set (a verifier may refetch the JWKS once).
    #[error("unknown kid")]
    UnknownKid,
    /// Anything else: malformed, wrong algorithm or type, bad signature or claims.
    #[error("{0}")]
    Invalid(&'static str),
}

/// What a token must say besides being signed by a key of ours.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The exact `iss`.
    pub issuer: &'a str,
    /// An `aud` the token must contain, or `None` for any (revocation does this).
    pub audience: Option<&'a str>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: i64,
    /// Unix time now.
    pub now: i64,
}

/// Verifies `token` against our pinned rules, with the key `key_for(kid)`.
pub fn check<'k>(
    token: &str,
    key_for: impl FnOnce(&str) -> Option<&'k DecodingKey>,
    expect: Expect<'_>,
) -> Result<AccessClaims, Rejected> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejected::Invalid("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejected::Invalid("not a JWS compact serialization"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<JoseHeader>(&h).ok())
        .ok_or(Rejected::Invalid("malformed header"))?;
    if header.alg != "RS256" {
        return Err(Rejected::Invalid("algorithm not allowed"));
    }
    if !matches!(header.typ.as_deref(), Some(t) if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"))
    {
        return Err(Rejected::Invalid("typ is not at+jwt"));
    }
    if header.crit.is_some() {
        return Err(Rejected::Invalid("crit header not supported"));
    }
    let key = header
        .kid
        .as_deref()
        .ok_or(Rejected::Invalid("no kid"))
        .and_then(|kid| key_for(kid).ok_or(Rejected::UnknownKid))?;

    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms = vec![Algorithm::RS256];
    validation.required_spec_claims = ["exp", "nbf", "iat", "iss", "aud", "sub"]
        .into_iter()
        .map(String::from)
        .collect();
    validation.iss = Some(HashSet::from([expect.issuer.to_owned()]));
    match expect.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
        .map_err(|_| Rejected::Invalid("signature or claims rejected"))?
        .claims;

    let (leeway, now) = (expect.leeway, expect.now);
    if claims.exp + leeway <= now {
        return Err(Rejected::Invalid("expired"));
    }
    if claims.nbf - leeway > now {
        return Err(Rejected::Invalid("not yet valid"));
    }
    if claims.iat - leeway > now {
        return Err(Rejected::Invalid("issued in the future"));
    }
    Ok(claims)
}

/// Verifies our access tokens with the issuer's own key set.
#[cfg(feature = "server")]
pub struct Verifier {
    keys: Arc<Keys>,
    issuer: String,
    leeway: i64,
}

#[cfg(feature = "server")]
impl Verifier {
    pub fn new(keys: Arc<Keys>, issuer: String, leeway_secs: u64) -> Self {
        Self {
            keys,
            issuer,
            leeway: i64::try_from(leeway_secs).unwrap_or(30),
        }
    }

    /// Verifies `token` for `audience` (or for any audience when `None`, as revocation
    /// does) at unix time `now`. The error says why, for logs only.
    pub fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
        now: i64,
    ) -> Result<AccessClaims, Error> {
        let expect = Expect {
            issuer: &self.issuer,
            audience,
            leeway: self.leeway,
            now,
        };
        let set = self.keys.current();
        let mut checked = check(token, |kid| set.decoding_key(kid), expect);
        // A key this instance has not loaded yet (another instance or the CLI changed
        // the ring a moment ago, an emergency roll): the ring is re-read first, at most
        // every `RELOAD_SOON`.
        if matches!(checked, Err(Rejected::UnknownKid)) && self.keys.reload_soon(now) {
            let set = self.keys.current();
            checked = check(token, |kid| set.decoding_key(kid), expect);
        }
        checked.map_err(|e| match e {
            Rejected::UnknownKid => Error::InvalidToken("unknown kid"),
            Rejected::Invalid(why) => Error::InvalidToken(why),
        })
    }
}
