//! Refresh-token material: tokens that name their session and position in it, under
//! the server's MAC (the constant-storage model; `domain::generation` has its rules).
//!
//! - `base64url(version ‖ key id ‖ family id ‖ generation ‖ MAC)`: version `1` (one
//!   byte), the MAC key's id (4 bytes), the family's UUID (16 bytes), the generation
//!   (u64, big-endian), and `HMAC-SHA256` over the 29 bytes before it (32 bytes): 61
//!   bytes, 82 characters. Nothing secret is stored: a copy of the database forges
//!   nothing, and the store keeps one row per session however often it rotates.
//! - The key id is the first 4 bytes of `SHA-256("token-issuer refresh-mac key id" ‖
//!   key)`: every instance that shares the key directory derives the same id, and it
//!   says nothing of the key. Two keys verify during a change: `refresh-hmac.key` (the
//!   one that mints) and, when present, `refresh-hmac.previous.key`.
//! - The MAC is checked in constant time (`ring::hmac::verify`). A token of 43
//!   characters is of the earlier format (256 random bits, stored as its SHA-256 in
//!   `refresh_tokens`): `Opened::Legacy`, looked up by its hash until its session
//!   upgrades. Anything else that does not verify is `Opened::Invalid`, refused
//!   without a lookup; a well-formed token of a key we no longer hold is
//!   `Opened::UnknownKey` (refused the same way, and not taken for a forgery).
//! - `rotate_files` changes the key (`token-issuer keys rotate-refresh`): calmly, the
//!   current key becomes the previous one, so every outstanding token still verifies
//!   and each session's next rotation mints under the new key; in an emergency
//!   (`--compromised`), the previous key is dropped and the current one replaced, so
//!   every outstanding refresh token is refused. Instances re-read the two files with
//!   the signing keys (`RELOAD_INTERVAL`) and swap them in when they changed.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use uuid::Uuid;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::crypto::b64url;
use crate::crypto::keys::{KeyError, locked, read_or_create_secret_file, replace_file};
use crate::domain::clock::Throttle;
use crate::domain::error::Error;
use crate::domain::secret::Secret;

/// Longest refresh token we accept; anything longer is refused before hashing.
pub const MAX_TOKEN_LEN: usize = 512;

/// The SHA-256 of a refresh token, as stored.
pub type TokenHash = [u8; 32];

/// 256 random bits, base64url: a refresh token of the earlier format (the tests make
/// them, for sessions started before the upgrade), and the material of client secrets
/// and of the dummy password hash.
pub fn generate() -> Result<Secret, Error> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal("the system random generator failed"))?;
    Ok(Secret::new(b64url(&bytes)))
}

/// The stored form of a token of the earlier format.
pub fn hash(token: &Secret) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.expose().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The version byte of the minted format.
const VERSION: u8 = 1;
const KID_LEN: usize = 4;
/// Version, key id, family id, generation: what the MAC covers.
const BODY_LEN: usize = 1 + KID_LEN + 16 + 8;
const MAC_LEN: usize = 32;
const MINTED_LEN: usize = BODY_LEN + MAC_LEN;
/// How long a minted token is in base64url.
pub const MINTED_CHARS: usize = (MINTED_LEN * 8).div_ceil(6);
/// The length of a token of the earlier format (256 random bits, base64url).
const LEGACY_CHARS: usize = 43;

/// What a minted token says: its family and its position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minted {
    pub family: Uuid,
    pub generation: u64,
}

/// A presented refresh token, opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Minted by a key of ours: its family and generation are authentic.
    Minted(Minted),
    /// A token of the earlier, random format: known to the store by its hash, if at all.
    Legacy(TokenHash),
    /// Not ours: malformed, another version, or a MAC that does not verify under the
    /// key it names.
    Invalid,
    /// Well formed, of a key id we no longer hold (a key rotated away in an emergency,
    /// or another deployment's).
    UnknownKey,
}

const CURRENT_FILE: &str = "refresh-hmac.key";
const PREVIOUS_FILE: &str = "refresh-hmac.previous.key";

struct MacKey {
    kid: [u8; KID_LEN],
    key: hmac::Key,
}

impl MacKey {
    fn new(secret: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"token-issuer refresh-mac key id");
        ctx.update(secret);
        let mut kid = [0u8; KID_LEN];
        kid.copy_from_slice(&ctx.finish().as_ref()[..KID_LEN]);
        Self {
            kid,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }
}

/// The two keys at one moment.
struct KeyPair {
    current: MacKey,
    previous: Option<MacKey>,
    /// The secrets as read, to notice a change.
    read: (Vec<u8>, Option<Vec<u8>>),
}

/// The keys that mint and verify refresh tokens of the minted format, swapped in when
/// the files change (`reload`).
pub struct RefreshKeys {
    keys: RwLock<Arc<KeyPair>>,
    /// The key directory, when the keys came from one: a token of an unknown key id
    /// makes `open` re-read it first (at most every `UNKNOWN_KEY_RELOAD`), so that an
    /// instance that has not reloaded yet accepts a token another instance minted
    /// under a new key.
    dir: Option<std::path::PathBuf>,
    reload: Throttle,
    /// How many times the minting key changed (by `reload`, or by `open`'s re-read).
    swaps: std::sync::atomic::AtomicU64,
}

/// How often a token of an unknown key id may make `open` re-read the key files.
const UNKNOWN_KEY_RELOAD: std::time::Duration = std::time::Duration::from_millis(100);

/// What `rotate_files` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// The current key became the previous one: outstanding tokens still verify.
    Calm,
    /// The previous key was dropped and the current one replaced: every outstanding
    /// refresh token is refused.
    Emergency,
}

/// Reads the two secrets of `keys_dir`: the current one (created on first start when
/// `create`; else it must be there), and the previous one when it is there. Nothing is
/// written unless `create`.
fn read_secrets(keys_dir: &Path, create: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), KeyError> {
    let current_path = keys_dir.join(CURRENT_FILE);
    let current = if create {
        read_or_create_secret_file(&current_path)?
    } else {
        read_secret_file(&current_path)?.ok_or_else(|| KeyError::Io {
            path: current_path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?
    };
    let previous = read_secret_file(&keys_dir.join(PREVIOUS_FILE))?;
    Ok((current, previous))
}

/// A secret file's bytes; `None` when there is no such file.
fn read_secret_file(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .filter(|bytes| bytes.len() >= 32)
            .map(Some)
            .ok_or_else(|| KeyError::Invalid {
                path: path.to_owned(),
                reason: "expected at least 32 bytes, base64".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Changes the refresh-token key of `keys_dir` (see the module docs), under the key
/// directory's lock. The files are replaced whole, in an order where a reader between
/// two steps sees a pair that verifies what the old one did (calm) or no more (an
/// emergency).
pub fn rotate_files(keys_dir: &Path, change: KeyChange) -> Result<(), KeyError> {
    locked(keys_dir, || {
        let (current, _) = read_secrets(keys_dir, false)?;
        let mut fresh = [0u8; 32];
        SystemRandom::new()
            .fill(&mut fresh)
            .map_err(|_| KeyError::Generate)?;
        let encode = |secret: &[u8]| {
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )
        };
        match change {
            KeyChange::Calm => replace_file(keys_dir, PREVIOUS_FILE, encode(&current).as_bytes())?,
            KeyChange::Emergency => match std::fs::remove_file(keys_dir.join(PREVIOUS_FILE)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KeyError::Io {
                        path: keys_dir.join(PREVIOUS_FILE),
                        source,
                    });
                }
            },
        }
        replace_file(keys_dir, CURRENT_FILE, encode(&fresh).as_bytes())
    })
}

impl RefreshKeys {
    /// Reads `refresh-hmac.key` from the key directory (creating it on first start)
    /// and `refresh-hmac.previous.key` when it is there.
    pub fn load_or_create(keys_dir: &Path) -> Result<Self, KeyError> {
        let (current, previous) = read_secrets(keys_dir, true)?;
        let mut keys = Self::from_secrets(&current, previous.as_deref());
        keys.dir = Some(keys_dir.to_owned());
        Ok(keys)
    }

    pub fn from_secrets(current: &[u8], previous: Option<&[u8]>) -> Self {
        Self {
            keys: RwLock::new(Arc::new(KeyPair::new(current, previous))),
            dir: None,
            reload: Throttle::new(UNKNOWN_KEY_RELOAD),
            swaps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Re-reads the files of `keys_dir` (never writing them); swaps the keys in when
    /// they changed. Returns whether they did.
    pub fn reload(&self, keys_dir: &Path) -> Result<bool, KeyError> {
        let (current, previous) = read_secrets(keys_dir, false)?;
        let before = self.pair();
        if before.read == (current.clone(), previous.clone()) {
            return Ok(false);
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(KeyPair::new(&current, previous.as_deref()));
        // A change of the minting key; not a reload that landed between the two file
        // writes of one rotation (the previous key written, the current not yet).
        if before.read.0 != current {
            self.swaps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(true)
    }

    /// How many times the minting key changed since the keys were loaded (whichever
    /// path re-read them).
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn pair(&self) -> Arc<KeyPair> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The token of `generation` of `family`, under the current key.
    pub fn mint(&self, family: Uuid, generation: u64) -> Secret {
        self.pair().mint(family, generation)
    }

    /// What `token` is: minted by one of our keys, of the earlier format, or not ours.
    /// A token of a key id this instance does not hold makes it re-read the key files
    /// first (another instance may have rotated, and minted, already).
    pub fn open(&self, token: &Secret) -> Opened {
        let opened = self.pair().open(token);
        if opened != Opened::UnknownKey {
            return opened;
        }
        let Some(dir) = &self.dir else {
            return opened;
        };
        if !self.reload.ready() {
            return opened;
        }
        match self.reload(dir) {
            Ok(true) => self.pair().open(token),
            Ok(false) => opened,
            Err(e) => {
                tracing::error!(error = %e, "re-reading the refresh-token key failed");
                opened
            }
        }
    }
}

impl KeyPair {
    fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        Self {
            current: MacKey::new(current),
            previous: previous.map(MacKey::new),
            read: (current.to_vec(), previous.map(<[u8]>::to_vec)),
        }
    }

    /// The token of `generation` of `family`, under the current key.
    pub fn mint(&self, family: Uuid, generation: u64) -> Secret {
        let mut token = [0u8; MINTED_LEN];
        token[0] = VERSION;
        token[1..1 + KID_LEN].copy_from_slice(&self.current.kid);
        token[1 + KID_LEN..1 + KID_LEN + 16].copy_from_slice(family.as_bytes());
        token[BODY_LEN - 8..BODY_LEN].copy_from_slice(&generation.to_be_bytes());
        let mac = hmac::sign(&self.current.key, &token[..BODY_LEN]);
        token[BODY_LEN..].copy_from_slice(mac.as_ref());
        Secret::new(b64url(&token))
    }

    /// What `token` is: minted by one of our keys, of the earlier format, or not ours.
    pub fn open(&self, token: &Secret) -> Opened {
        let text = token.expose();
        if text.len() == LEGACY_CHARS {
            return Opened::Legacy(hash(token));
        }
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(text) else {
            return Opened::Invalid;
        };
        if bytes.len() != MINTED_LEN || bytes[0] != VERSION {
            return Opened::Invalid;
        }
        let (body, mac) = bytes.split_at(BODY_LEN);
        let kid = &body[1..1 + KID_LEN];
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.kid[..] == *kid);
        let Some(key) = key else {
            return Opened::UnknownKey;
        };
        if hmac::verify(&key.key, body, mac).is_err() {
            return Opened::Invalid;
        }
        let mut family = [0u8; 16];
        family.copy_from_slice(&body[1 + KID_LEN..1 + KID_LEN + 16]);
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&body[BODY_LEN - 8..]);
        Opened::Minted(Minted {
            family: Uuid::from_bytes(family),
            generation: u64::from_be_bytes(generation),
        })
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

    fn keys(current: u8, previous: Option<u8>) -> RefreshKeys {
        let previous = previous.map(|p| [p; 32]);
        RefreshKeys::from_secrets(&[current; 32], previous.as_ref().map(|p| &p[..]))
    }

    #[test]
    fn a_minted_token_opens_to_its_family_and_generation() {
        let k = keys(1, None);
        let family = Uuid::new_v4();
        for generation in [0, 1, 41, u64::MAX] {
            let token = k.mint(family, generation);
            assert_eq!(token.expose().len(), 82);
            assert_eq!(
                k.open(&token),
                Opened::Minted(Minted { family, generation })
            );
        }
        assert_ne!(k.mint(family, 1), k.mint(family, 2));
        assert_eq!(k.mint(family, 1), k.mint(family, 1), "deterministic");
    }

    #[test]
    fn any_changed_byte_or_another_key_makes_it_invalid() {
        let k = keys(1, None);
        let token = k.mint(Uuid::new_v4(), 7);
        let bytes = URL_SAFE_NO_PAD.decode(token.expose()).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let forged = Secret::new(b64url(&changed));
            // A changed key id names a key we do not hold; any other byte fails the MAC.
            let want = if (1..=KID_LEN).contains(&i) {
                Opened::UnknownKey
            } else {
                Opened::Invalid
            };
            assert_eq!(k.open(&forged), want, "byte {i}");
        }
        assert_eq!(keys(2, None).open(&token), Opened::UnknownKey);
        assert_eq!(
            k.open(&Secret::new(format!("{}A", token.expose()))),
            Opened::Invalid
        );
        assert_eq!(
            k.open(&Secret::new(String::from("not base64 at all!"))),
            Opened::Invalid
        );
        assert_eq!(k.open(&Secret::new(String::new())), Opened::Invalid);
    }

    #[test]
    fn the_previous_key_verifies_during_a_change_and_the_current_one_mints() {
        let old = keys(1, None);
        let changing = keys(2, Some(1));
        let family = Uuid::new_v4();
        let before = old.mint(family, 3);
        assert_eq!(
            changing.open(&before),
            Opened::Minted(Minted {
                family,
                generation: 3
            })
        );
        let after = changing.mint(family, 4);
        assert_eq!(old.open(&after), Opened::UnknownKey);
        assert_eq!(keys(2, None).open(&before), Opened::UnknownKey);
    }

    #[test]
    fn a_token_of_the_earlier_format_is_legacy_by_its_hash() {
        let t = generate().unwrap();
        assert_eq!(keys(1, None).open(&t), Opened::Legacy(hash(&t)));
    }

    #[test]
    fn the_key_files_are_read_and_the_previous_one_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let first = RefreshKeys::load_or_create(dir.path()).unwrap();
        let family = Uuid::new_v4();
        let token = first.mint(family, 0);
        let again = RefreshKeys::load_or_create(dir.path()).unwrap();
        assert!(matches!(again.open(&token), Opened::Minted(_)));
        std::fs::rename(
            dir.path().join("refresh-hmac.key"),
            dir.path().join("refresh-hmac.previous.key"),
        )
        .unwrap();
        let rotated = RefreshKeys::load_or_create(dir.path()).unwrap();
        assert!(matches!(rotated.open(&token), Opened::Minted(_)));
        assert_eq!(
            rotated.open(&rotated.mint(family, 1)),
            Opened::Minted(Minted {
                family,
                generation: 1
            })
        );
    }

    #[test]
    fn a_calm_rotation_keeps_tokens_valid_and_an_emergency_one_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let keys = RefreshKeys::load_or_create(dir.path()).unwrap();
        let family = Uuid::new_v4();
        let first = keys.mint(family, 0);
        assert!(!keys.reload(dir.path()).unwrap(), "nothing changed");
        rotate_files(dir.path(), KeyChange::Calm).unwrap();
        assert!(keys.reload(dir.path()).unwrap());
        assert!(
            matches!(keys.open(&first), Opened::Minted(_)),
            "still verifies"
        );
        let second = keys.mint(family, 1);
        assert_ne!(second.expose()[..8], first.expose()[..8], "another key id");
        rotate_files(dir.path(), KeyChange::Emergency).unwrap();
        assert!(keys.reload(dir.path()).unwrap());
        assert_eq!(keys.open(&first), Opened::UnknownKey);
        assert_eq!(keys.open(&second), Opened::UnknownKey);
        assert!(matches!(
            keys.open(&keys.mint(family, 2)),
            Opened::Minted(_)
        ));
        assert!(!dir.path().join(PREVIOUS_FILE).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(CURRENT_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_instance_that_has_not_reloaded_yet_accepts_a_token_of_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = RefreshKeys::load_or_create(dir.path()).unwrap();
        let second = RefreshKeys::load_or_create(dir.path()).unwrap();
        rotate_files(dir.path(), KeyChange::Calm).unwrap();
        assert!(first.reload(dir.path()).unwrap());
        let family = Uuid::new_v4();
        let token = first.mint(family, 5);
        assert_eq!(
            second.open(&token),
            Opened::Minted(Minted {
                family,
                generation: 5
            })
        );
        // A key id nobody holds stays unknown, and re-reading is rate-limited.
        let stranger = keys(9, None).mint(family, 5);
        assert_eq!(second.open(&stranger), Opened::UnknownKey);
        assert_eq!(second.open(&stranger), Opened::UnknownKey);
    }
}
