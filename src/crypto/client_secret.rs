//! Secrets of confidential (`service`) clients: 256 random bits, base64url, shown once
//! by `token-issuer client-secret`; the configuration keeps only `sha256:<hex>`.
//!
//! A fast hash is enough here, unlike for passwords: the secret is random with 256
//! bits of entropy, so there is no dictionary to try against a leaked hash, and
//! introspection is a hot path that must not queue behind argon2.

use ring::digest;

use crate::crypto::refresh;
use crate::domain::error::Error;
use crate::domain::secret::Secret;

/// The built-in `dev-service` client's secret file in the key directory.
pub const DEV_SERVICE_SECRET_FILE: &str = "dev-service.secret";

/// The secret in `path` (created on first use: 256 random bits, base64url, mode 0600,
/// exclusively, so that instances starting together agree), and its hash. The secret
/// is never logged; the caller may say where it is.
pub fn read_or_create_file(
    path: &std::path::Path,
) -> Result<(Secret, SecretHash), crate::crypto::keys::KeyError> {
    use crate::crypto::keys::KeyError;
    let (fresh, _) = generate().map_err(|_| KeyError::Generate)?;
    crate::crypto::keys::create_exclusive(path, format!("{}\n", fresh.expose()).as_bytes())?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.len() < 43
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(KeyError::Invalid {
            path: path.to_owned(),
            reason: "expected a base64url secret of at least 256 bits".into(),
        });
    }
    Ok((Secret::new(secret.to_owned()), hash_of(secret)))
}

/// The stored form: the SHA-256 of the secret.
pub type SecretHash = [u8; 32];

/// A new secret and the configuration line that registers it.
pub fn generate() -> Result<(Secret, String), Error> {
    let secret = refresh::generate()?;
    let hash = format_hash(&hash_of(secret.expose()));
    Ok((secret, hash))
}

pub fn hash_of(secret: &str) -> SecretHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
    out
}

/// `sha256:<64 hex digits>`.
pub fn format_hash(hash: &SecretHash) -> String {
    format!("sha256:{}", super::hex(hash))
}

pub fn parse_hash(raw: &str) -> Option<SecretHash> {
    let hex = raw.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `presented` is the secret of `expected`, in time independent of where they
/// differ.
pub fn matches(presented: &str, expected: &SecretHash) -> bool {
    let got = hash_of(presented);
    got.iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_matches_its_hash_only() {
        let (secret, line) = generate().unwrap();
        assert!(secret.expose().len() >= 43);
        let hash = parse_hash(&line).unwrap();
        assert!(matches(secret.expose(), &hash));
        assert!(!matches("something else", &hash));
        assert_eq!(format_hash(&hash), line);
        assert_eq!(parse_hash("sha256:xyz"), None);
        assert_eq!(parse_hash(&line.replace("sha256:", "md5:")), None);
    }
}
