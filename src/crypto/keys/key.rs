//! One RSA signing key: parsed once into an `aws_lc_rs` key pair, with its RFC 7638
//! thumbprint as `kid`, its JWK and its precomputed JWS header.

use std::path::Path;

use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use ring::digest;
use serde::Serialize;

use super::KeyError;
use crate::crypto::b64url;

/// One public key in JWKS form (RFC 7517/7518); never a private member.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// A private key, parsed once, with its precomputed JWS header.
pub struct SigningKey {
    pub kid: String,
    pub(crate) key_pair: RsaKeyPair,
    /// base64url of `{"alg":"RS256","typ":"at+jwt","kid":"..."}`.
    pub(crate) header_b64: String,
    pub jwk: Jwk,
}

impl SigningKey {
    /// Parses a PKCS#8 RSA private key (`path` names it in errors); 2048 bits at least.
    pub(crate) fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, KeyError> {
        let key_pair = RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: format!("not an RSA PKCS#8 private key ({e})"),
        })?;
        if key_pair.public_modulus_len() < 256 {
            return Err(KeyError::Invalid {
                path: path.to_owned(),
                reason: "RSA keys must be at least 2048 bits".into(),
            });
        }
        let public = key_pair.public_key();
        let n = b64url(public.modulus().big_endian_without_leading_zero());
        let e = b64url(public.exponent().big_endian_without_leading_zero());
        // RFC 7638: members in lexicographic order, no whitespace.
        let thumbprint_input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = b64url(digest::digest(&digest::SHA256, thumbprint_input.as_bytes()).as_ref());
        let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
        Ok(Self {
            header_b64: b64url(header.to_string().as_bytes()),
            jwk: Jwk {
                kty: "RSA",
                use_: "sig",
                alg: "RS256",
                kid: kid.clone(),
                n,
                e,
            },
            kid,
            key_pair,
        })
    }
}
