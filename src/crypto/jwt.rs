//! Minting and verifying access tokens (JWS compact, RS256, RFC 9068).
//!
//! Verification is pinned: the header must be exactly `alg: RS256` with `typ: at+jwt`,
//! a `kid` from our own key set and no `crit`; `jku`, `x5u`, `jwk` and friends are never
//! looked at. jsonwebtoken checks the signature, `iss`, `aud` and the presence of `exp`,
//! `nbf`, `iat`, `iss`, `aud`, `sub`; the time checks run here against the injected clock
//! with the configured leeway (30 s at most), because jsonwebtoken reads the system clock.

use std::collections::HashSet;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::crypto::b64url;
use crate::crypto::keys::{Keys, SigningKey};
use crate::domain::claims::AccessClaims;
use crate::error::Error;

/// Longest access token we try to parse.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Signs `claims` with the held key pair: one RSA signature, no key parsing.
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

/// Verifies our access tokens.
pub struct Verifier {
    keys: Arc<Keys>,
    issuer: String,
    leeway: i64,
}

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
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidToken("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::InvalidToken("not a JWS compact serialization"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice::<JoseHeader>(&h).ok())
            .ok_or(Error::InvalidToken("malformed header"))?;
        if header.alg != "RS256" {
            return Err(Error::InvalidToken("algorithm not allowed"));
        }
        if !matches!(header.typ.as_deref(), Some(t) if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"))
        {
            return Err(Error::InvalidToken("typ is not at+jwt"));
        }
        if header.crit.is_some() {
            return Err(Error::InvalidToken("crit header not supported"));
        }
        let set = self.keys.current();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| set.decoding_key(kid))
            .ok_or(Error::InvalidToken("unknown kid"))?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.required_spec_claims = ["exp", "nbf", "iat", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect();
        validation.iss = Some(HashSet::from([self.issuer.clone()]));
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map_err(|_| Error::InvalidToken("signature or claims rejected"))?
            .claims;

        if claims.exp + self.leeway <= now {
            return Err(Error::InvalidToken("expired"));
        }
        if claims.nbf - self.leeway > now {
            return Err(Error::InvalidToken("not yet valid"));
        }
        if claims.iat - self.leeway > now {
            return Err(Error::InvalidToken("issued in the future"));
        }
        Ok(claims)
    }
}
