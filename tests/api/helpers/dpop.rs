//! DPoP proofs for the tests (RFC 9449 §4), made with aws-lc-rs as a client would
//! with WebCrypto or a platform key store: an ES256 key pair that never leaves here.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// A client's DPoP key.
pub struct DpopKey {
    pair: EcdsaKeyPair,
}

impl Default for DpopKey {
    fn default() -> Self {
        Self::new()
    }
}

impl DpopKey {
    pub fn new() -> Self {
        Self {
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    /// The public key, as a proof's header carries it.
    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// The RFC 7638 thumbprint, computed here by hand (not by the issuer's code).
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// A fresh proof for `method` `url` at unix time `iat`.
    pub fn proof(&self, method: &str, url: &str, iat: i64) -> String {
        self.signed(&self.header(), &fresh_claims(method, url, iat))
    }

    /// A fresh proof for `method` `url` at unix time `iat`, presenting `access_token`
    /// (`ath`), as a protected endpoint needs.
    pub fn proof_with_token(
        &self,
        method: &str,
        url: &str,
        iat: i64,
        access_token: &str,
    ) -> String {
        let mut claims = fresh_claims(method, url, iat);
        claims["ath"] = json!(ath(access_token));
        self.signed(&self.header(), &claims)
    }

    /// The header of a good proof of this key.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()})
    }

    /// `header` and `claims` signed by this key, whatever they say.
    pub fn signed(&self, header: &Value, claims: &Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(header), b64(claims));
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// The `ath` of an access token: its base64url SHA-256.
pub fn ath(access_token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The claims of a proof with a new `jti`.
fn fresh_claims(method: &str, url: &str, iat: i64) -> Value {
    json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": method,
        "htu": url,
        "iat": iat,
    })
}
