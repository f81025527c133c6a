//! Forging tokens: JWS segments, signatures over any header and claims, the app's own
//! signing key, and the JWKS it publishes.

use aws_lc_rs::signature::RsaKeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::TestApp;

pub fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// Decodes the JSON of one JWS segment.
pub fn segment(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds an RS256-signed JWS over arbitrary header and claims.
pub fn sign_rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> String {
    sign_rs256_raw(key, &header.to_string(), &claims.to_string())
}

/// Builds an RS256-signed JWS over header and claims given as raw JSON text (which
/// may say things a `Value` cannot, such as a member given twice).
pub fn sign_rs256_raw(key: &RsaKeyPair, header: &str, claims: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signing_input}.{}", b64(&sig))
}

/// The kids the issuer publishes, and the JWKS's ETag.
pub async fn jwks(app: &TestApp) -> (std::collections::HashSet<String>, String) {
    let resp = app.get("/.well-known/jwks.json").await;
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let kids = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    (kids, etag)
}

/// The family (its id, as the `sid`) and the generation a minted refresh token names:
/// `version ‖ key id (4) ‖ family (16) ‖ generation (8) ‖ MAC`, read without the MAC.
pub fn token_position(refresh_token: &str) -> (String, i64) {
    let bytes = URL_SAFE_NO_PAD.decode(refresh_token).unwrap();
    assert_eq!(bytes.len(), 61, "a minted refresh token");
    let family = uuid::Uuid::from_slice(&bytes[5..21]).unwrap();
    let generation = u64::from_be_bytes(bytes[21..29].try_into().unwrap());
    (family.to_string(), i64::try_from(generation).unwrap())
}

/// The generation a minted refresh token names.
pub fn token_generation(refresh_token: &str) -> i64 {
    token_position(refresh_token).1
}
