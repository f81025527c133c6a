//! The signing keys and the JWKS that publishes them.
//!
//! Layout of the key directory:
//! - `<kid>.pem`: an RSA private key, PKCS#8 PEM, mode 0600. The `kid` is the RFC 7638
//!   JWK thumbprint of its public key.
//! - `keyring.json`: which key is active, next or retired (see `keyring`); `active`
//!   mirrors the active `kid`.
//! - `refresh-hmac.key`: the secret that derives refresh-token successors.
//!
//! The published keys (active, next, and retired ones until their `not_after`) are
//! parsed into a `KeySet`; `Keys` holds the current set and swaps in a new one when the
//! ring changes, so there is no file I/O on the request path.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::DecodingKey;
use ring::digest;
use serde::Serialize;

use crate::crypto::b64url;
use crate::crypto::keyring::{self, Ring};

/// A key-directory problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("key directory {0}: several keys and no `active` file naming the one that signs")]
    NoActive(PathBuf),
    #[error("key directory {0}: `active` names a key that is not there")]
    MissingActive(PathBuf),
    #[error("RSA key generation failed")]
    Generate,
    #[error("the key ring is locked by another process ({0}); try again")]
    Locked(PathBuf),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

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
    fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, KeyError> {
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

/// The keys of this issuer at one moment: the one that signs, and every published one,
/// which verify.
pub struct KeySet {
    active: SigningKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Vec<Jwk>,
    jwks_json: String,
    etag: String,
    /// When the published set next shrinks (a retired key's `not_after`).
    next_expiry: Option<i64>,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl KeySet {
    /// The set a ring publishes at `now`.
    pub fn from_ring(dir: &Path, ring: &Ring, now: i64) -> Result<Self, KeyError> {
        let active_kid = ring
            .active()
            .map(|k| k.kid.clone())
            .ok_or_else(|| KeyError::NoActive(dir.to_owned()))?;
        let mut keys = Vec::new();
        for entry in ring.published(now) {
            let path = dir.join(format!("{}.pem", entry.kid));
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let der = pem_decode(&text, "PRIVATE KEY").ok_or_else(|| KeyError::Invalid {
                path: path.clone(),
                reason: "expected a PEM `PRIVATE KEY` (PKCS#8) block".into(),
            })?;
            let key = SigningKey::from_pkcs8(&der, &path)?;
            if key.kid != entry.kid {
                return Err(KeyError::Invalid {
                    path,
                    reason: format!("the key's thumbprint is {}, not its file name", key.kid),
                });
            }
            keys.push((path, key));
        }
        let decoding = keys
            .iter()
            .map(|(path, k)| {
                DecodingKey::from_rsa_components(&k.jwk.n, &k.jwk.e)
                    .map(|d| (k.kid.clone(), d))
                    .map_err(|e| KeyError::Invalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let mut jwks: Vec<Jwk> = keys.iter().map(|(_, k)| k.jwk.clone()).collect();
        jwks.sort_by(|a, b| a.kid.cmp(&b.kid));
        let jwks_json = serde_json::json!({ "keys": &jwks }).to_string();
        let etag = format!(
            "\"{}\"",
            &b64url(digest::digest(&digest::SHA256, jwks_json.as_bytes()).as_ref())[..22]
        );
        let active = keys
            .into_iter()
            .map(|(_, k)| k)
            .find(|k| k.kid == active_kid)
            .ok_or_else(|| KeyError::MissingActive(dir.to_owned()))?;
        Ok(Self {
            active,
            decoding,
            jwks,
            jwks_json,
            etag,
            next_expiry: ring.next_expiry(now),
        })
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The verification key for a `kid` of ours; `None` for anything else.
    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.decoding.get(kid)
    }

    /// The published public keys, ordered by `kid`.
    pub fn jwks(&self) -> &[Jwk] {
        &self.jwks
    }

    /// The JWKS document, serialised once.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// A strong validator of the JWKS document.
    pub fn jwks_etag(&self) -> &str {
        &self.etag
    }
}

/// The current key set of a key directory, swapped when the ring changes.
pub struct Keys {
    dir: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// The ring as last read, to notice a change.
    raw: Mutex<Vec<u8>>,
}

impl Keys {
    /// Loads the key directory, generating an RSA-2048 key on first start. Returns the
    /// keys and, when a key was generated, the path it was written to. The ring is
    /// read once: the set that signs and the bytes later reloads compare against come
    /// from the same read, so a rotation made meanwhile by another instance is picked
    /// up by the next reload instead of being taken for the ring already loaded.
    pub fn load_or_generate(dir: &Path) -> Result<(Self, Option<PathBuf>), KeyError> {
        let now = unix_now();
        let (ring, raw, generated) = keyring::ensure(dir, now)?;
        let set = KeySet::from_ring(dir, &ring, now)?;
        Ok((Self::from_read(dir, set, raw), generated))
    }

    /// Keys whose `set` was built from the ring bytes `raw`.
    fn from_read(dir: &Path, set: KeySet, raw: Vec<u8>) -> Self {
        Self {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(set)),
            raw: Mutex::new(raw),
        }
    }

    /// The set to sign and verify with now.
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the ring; swaps in a new set when it changed or a retired key expired.
    /// Returns the new active `kid` when it changed.
    pub fn reload(&self, now: i64) -> Result<Option<String>, KeyError> {
        let Some((ring, raw)) = keyring::read(&self.dir)? else {
            return Ok(None);
        };
        let current = self.current();
        let changed = *self.raw.lock().unwrap_or_else(PoisonError::into_inner) != raw;
        let expired = current.next_expiry.is_some_and(|t| t <= now);
        if !changed && !expired {
            return Ok(None);
        }
        let set = KeySet::from_ring(&self.dir, &ring, now)?;
        let new_active = (set.active.kid != current.active.kid).then(|| set.active.kid.clone());
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        *self.raw.lock().unwrap_or_else(PoisonError::into_inner) = raw;
        Ok(new_active)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Generates a key into `dir` as `<kid>.pem` (mode 0600); returns its `kid` and path.
pub(crate) fn generate_key_file(dir: &Path, size: KeySize) -> Result<(String, PathBuf), KeyError> {
    let key_pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Generate)?;
    let der = AsDer::<Pkcs8V1Der>::as_der(&key_pair).map_err(|_| KeyError::Generate)?;
    let key = SigningKey::from_pkcs8(der.as_ref(), dir)?;
    let path = dir.join(format!("{}.pem", key.kid));
    create_exclusive(&path, pem_encode(der.as_ref(), "PRIVATE KEY").as_bytes())?;
    Ok((key.kid, path))
}

/// Reads a 32-byte secret (base64) from `path`, creating it if missing. Creation is
/// exclusive and atomic, so instances starting together end up with the same secret.
pub fn read_or_create_secret_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut fresh = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| KeyError::Generate)?;
    if create_exclusive(path, format!("{}\n", STANDARD.encode(fresh)).as_bytes())? {
        return Ok(fresh.to_vec());
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Invalid {
            path: path.to_owned(),
            reason: "expected base64".into(),
        })?;
    if bytes.len() < 32 {
        return Err(KeyError::Invalid {
            path: path.to_owned(),
            reason: "secret shorter than 32 bytes".into(),
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` (mode 0600) unless it exists: the content goes to a private
/// temporary file first and is hard-linked into place, so a reader never sees a partial
/// file and exactly one of several racing writers wins. Returns whether this call did.
pub(crate) fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| KeyError::Generate)?;
    let tmp = path.with_file_name(format!(".tmp-{}-{}", std::process::id(), b64url(&nonce)));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(KeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = text[start..].find(&end)? + start;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_and_second_start_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = Keys::load_or_generate(dir.path()).unwrap();
        let first = first.current();
        assert!(generated.is_some());
        let (second, generated) = Keys::load_or_generate(dir.path()).unwrap();
        let second = second.current();
        assert!(generated.is_none());
        assert_eq!(first.active().kid, second.active().kid);
        assert_eq!(first.jwks_json(), second.jwks_json());
        assert!(!first.jwks_json().contains("\"d\""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(generated_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    fn generated_path(dir: &Path) -> PathBuf {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "pem"))
            .unwrap()
    }

    #[test]
    fn instances_starting_together_agree_on_one_key_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    let (keys, _) = Keys::load_or_generate(&dir).unwrap();
                    let secret = read_or_create_secret_file(&dir.join("s.key")).unwrap();
                    (keys.current().active().kid.clone(), secret)
                })
            })
            .collect();
        let results: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "every instance sees the same key and secret"
        );
        let pems = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pem")
            })
            .count();
        assert_eq!(pems, 1, "the losers removed their keys");
    }

    /// Another instance (or the CLI) rotates while this one starts: the set it signs
    /// with and the ring it compares later reloads against must come from one read,
    /// or it keeps signing with the retired key until the ring next changes.
    #[test]
    fn a_rotation_during_start_up_is_picked_up_by_the_next_reload() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        // What start-up reads: the ring once, the set built from it.
        let (ring, raw, _) = keyring::ensure(dir.path(), now).unwrap();
        let set = KeySet::from_ring(dir.path(), &ring, now).unwrap();
        let first = set.active().kid.clone();
        keyring::generate(dir.path(), KeySize::Rsa2048, now).unwrap();
        let lifetimes = keyring::Lifetimes {
            publish_ahead: std::time::Duration::ZERO,
            retire_grace: std::time::Duration::from_secs(60),
        };
        let rotated = keyring::rotate(dir.path(), now, lifetimes, true, KeySize::Rsa2048).unwrap();
        let keys = Keys::from_read(dir.path(), set, raw);
        keys.reload(now).unwrap();
        assert_eq!(keys.current().active().kid, rotated.active);
        assert_ne!(keys.current().active().kid, first);
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.key");
        let a = read_or_create_secret_file(&path).unwrap();
        let b = read_or_create_secret_file(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
    }
}
