//! Authorization codes (RFC 6749 §4.1.2) and PKCE (RFC 7636 §4.2).
//!
//! A code is 256 bits from the CSPRNG in base64url (43 characters); the store keeps
//! only its SHA-256, so a copy of the database redeems nothing.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::crypto::b64url;
use crate::domain::error::Error;
use crate::domain::secret::Secret;

/// The SHA-256 of an authorization code: what the store keeps of it.
pub type CodeHash = [u8; 32];

/// The length of a code we mint.
pub const CODE_CHARS: usize = 43;

/// A fresh code.
pub fn mint() -> Result<Secret, Error> {
    Ok(Secret::new(b64url(&random_bytes()?)))
}

/// 32 bytes from the CSPRNG.
pub fn random_bytes() -> Result<[u8; 32], Error> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal(std::io::Error::other("the CSPRNG failed")))?;
    Ok(bytes)
}

/// What the store finds a code by.
pub fn hash(code: &str) -> CodeHash {
    let d = digest::digest(&digest::SHA256, code.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The S256 challenge of a verifier: base64url(SHA-256(verifier)).
pub fn s256(verifier: &str) -> String {
    b64url(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Whether `verifier` answers `challenge`, compared in constant time.
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(
        s256(verifier).as_bytes(),
        challenge.as_bytes(),
    )
    .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(verifier_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!verifier_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
    }

    #[test]
    fn codes_are_43_characters_and_differ() {
        let (a, b) = (mint().unwrap(), mint().unwrap());
        assert_eq!(a.expose().len(), CODE_CHARS);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(hash(a.expose()), hash(b.expose()));
    }
}
