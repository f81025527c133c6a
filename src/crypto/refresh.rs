//! Refresh-token material. A token is 256 bits from the CSPRNG, base64url (43
//! characters). The store keeps only its SHA-256 (a 256-bit random value needs no salt,
//! and lookup by hash leaks nothing through timing).
//!
//! The successor of a token is `HMAC-SHA256(key, presented token)`: deterministic, so a
//! retry within the grace window is answered with the very same successor without any
//! token being stored in plaintext, and unpredictable without the server-side key.

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

use crate::crypto::b64url;
use crate::crypto::keys::{KeyError, read_or_create_secret_file};
use crate::domain::error::Error;
use crate::domain::secret::Secret;

/// Longest refresh token we accept; anything longer is refused before hashing.
pub const MAX_TOKEN_LEN: usize = 512;

/// The SHA-256 of a refresh token, as stored.
pub type TokenHash = [u8; 32];

/// A fresh refresh token for a new family.
pub fn generate() -> Result<Secret, Error> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal("the system random generator failed"))?;
    Ok(Secret::new(b64url(&bytes)))
}

/// The stored form of a token.
pub fn hash(token: &Secret) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.expose().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Derives successors with the server-side HMAC key.
pub struct SuccessorKey {
    key: hmac::Key,
}

impl SuccessorKey {
    /// Reads `refresh-hmac.key` from the key directory, creating it on first start.
    /// Every instance sharing the directory derives the same successors.
    pub fn load_or_create(keys_dir: &Path) -> Result<Self, KeyError> {
        let secret = read_or_create_secret_file(&keys_dir.join("refresh-hmac.key"))?;
        Ok(Self::from_bytes(&secret))
    }

    pub fn from_bytes(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The successor of `presented`.
    pub fn successor(&self, presented: &Secret) -> Secret {
        Secret::new(b64url(
            hmac::sign(&self.key, presented.expose().as_bytes()).as_ref(),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn successor_is_deterministic_per_key() {
        let t = generate().unwrap();
        let k1 = SuccessorKey::from_bytes(&[1; 32]);
        let k2 = SuccessorKey::from_bytes(&[2; 32]);
        assert_eq!(k1.successor(&t), k1.successor(&t));
        assert_ne!(k1.successor(&t), k2.successor(&t));
        assert_ne!(k1.successor(&t), t);
    }
}
