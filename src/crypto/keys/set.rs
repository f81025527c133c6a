//! The keys published at one moment (`KeySet`: the one that signs, and every one that
//! verifies, with the JWKS document), and the current set (`Keys`), swapped in when
//! the ring changes, so there is no file I/O on the request path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use jsonwebtoken::DecodingKey;
use ring::digest;

use super::dir::read_signing_key;
use super::ring::{self as keyring, Ring};
use super::{Jwk, KeyError, SigningKey};
use crate::crypto::b64url;
use crate::domain::clock::Throttle;

/// The keys of this issuer at one moment: the one that signs, and every published one,
/// which verify.
pub struct KeySet {
    active: SigningKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Vec<Jwk>,
    jwks_json: String,
    etag: String,
    /// When what is published next changes (a retired key's `not_after`, the end of
    /// an emergency window).
    next_expiry: Option<i64>,
    /// How long verifiers may cache the JWKS.
    max_age: std::time::Duration,
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
            keys.push((
                dir.join(format!("{}.pem", entry.kid)),
                read_signing_key(dir, &entry.kid)?,
            ));
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
            max_age: ring.jwks_max_age(now),
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

    /// How long verifiers may cache the JWKS (`Cache-Control: max-age`): shorter for a
    /// while after an emergency roll.
    pub fn jwks_max_age(&self) -> std::time::Duration {
        self.max_age
    }

    /// A strong validator of the JWKS document.
    pub fn jwks_etag(&self) -> &str {
        &self.etag
    }
}

/// What a re-read of the ring did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed.
    Same,
    /// A new set is in use; `new_active` is the active `kid` when that changed.
    Swapped { new_active: Option<String> },
}

/// How often `Keys::reload_soon` may re-read the ring (an unknown `kid`, a JWKS
/// request): a new key another instance or the CLI made is served and accepted at
/// once, and a flood of made-up `kid`s costs at most this many file reads.
pub const RELOAD_SOON: std::time::Duration = std::time::Duration::from_millis(100);

/// The current key set of a key directory, swapped when the ring changes.
pub struct Keys {
    dir: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// The ring as last read, to notice a change.
    raw: Mutex<Vec<u8>>,
    /// How often `reload_soon` may re-read the ring.
    soon: Throttle,
    /// How many times the published keys or the active key changed (whichever path
    /// re-read the ring).
    changes: std::sync::atomic::AtomicU64,
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
            soon: Throttle::new(RELOAD_SOON),
            changes: std::sync::atomic::AtomicU64::new(0),
            raw: Mutex::new(raw),
        }
    }

    /// The set to sign and verify with now.
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the ring; swaps in a new set when it changed or a retired key expired.
    pub fn reload(&self, now: i64) -> Result<Reload, KeyError> {
        let Some((ring, raw)) = keyring::read(&self.dir)? else {
            return Ok(Reload::Same);
        };
        let current = self.current();
        let changed = *self.raw.lock().unwrap_or_else(PoisonError::into_inner) != raw;
        let expired = current.next_expiry.is_some_and(|t| t <= now);
        if !changed && !expired {
            return Ok(Reload::Same);
        }
        let set = KeySet::from_ring(&self.dir, &ring, now)?;
        let new_active = (set.active.kid != current.active.kid).then(|| set.active.kid.clone());
        let kids = |s: &KeySet| {
            let mut kids: Vec<String> = s.decoding.keys().cloned().collect();
            kids.sort();
            kids
        };
        if new_active.is_some() || kids(&set) != kids(&current) {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        *self.raw.lock().unwrap_or_else(PoisonError::into_inner) = raw;
        Ok(Reload::Swapped { new_active })
    }

    /// `reload`, unless this was done within `RELOAD_SOON`; whether a new set is in use.
    /// A failure is logged and leaves the set as it is (the periodic reload reports it).
    pub fn reload_soon(&self, now: i64) -> bool {
        if !self.soon.ready() {
            return false;
        }
        match self.reload(now) {
            Ok(Reload::Swapped { .. }) => true,
            Ok(Reload::Same) => false,
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the key ring failed");
                false
            }
        }
    }

    /// How many times the published keys or the active key changed since they were
    /// loaded (a retired key leaving counts; the end of an emergency window does not).
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;

    use aws_lc_rs::rsa::KeySize;

    use super::*;
    use crate::crypto::keys::read_or_create_secret_file;

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
}
