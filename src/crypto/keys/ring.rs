//! The key ring: which key of the key directory signs (`active`), which is published
//! ahead of signing (`next`), and which no longer signs but is still published until
//! every token it signed has expired (`retired`, until `not_after`).
//!
//! Decisions taken here:
//! - The ring is `keyring.json` in the key directory, next to the `<kid>.pem` private
//!   keys; the `active` file mirrors the active `kid` for humans and older tools. Every
//!   change is made under an exclusive OS lock on `keyring.lock` and written to a
//!   synced temporary file renamed into place, so instances sharing the directory never
//!   read a half-written ring and two changes never interleave.
//! - `rotate` promotes `next` only once it has been published for `publish_ahead` (the
//!   JWKS `max-age` plus the reload interval, twice): every verifier that cached the
//!   JWKS has seen the new key before a token signed by it reaches them.
//! - A retired key stays published, and accepted, for `retire_grace` (the longest
//!   access-token life plus the clock leeway) after it stopped signing; then it leaves
//!   the JWKS and its file is deleted at the next change of the ring.
//! - Instances re-read the ring every `RELOAD_INTERVAL`: a rotation made by the CLI or
//!   by another instance is picked up without a restart. With
//!   `key_rotation_interval` set, the instance that first finds the active key due
//!   rotates it, under the lock, after checking again that it is still due: exactly one
//!   rotation happens however many instances look.
//! - `roll_compromised` is the emergency: the named key leaves the ring (and its file
//!   is deleted) at once, without grace; if it was the active key, a key generated now
//!   signs from now on, and the published next key stays next. Not the next key: a
//!   verifier has that one cached already, so a token it signs would not make the
//!   verifier refetch the JWKS, and the verifier would go on accepting the removed key
//!   until its cache expires. A new `kid` is unknown to every verifier: the first
//!   token it signs makes each verifier that refetches on an unknown `kid` (as ours
//!   does) fetch the JWKS without the removed key. The price: a verifier that does not
//!   refetch refuses new tokens until its cache expires. A next key is published when
//!   there is none (a next key rolled is replaced). Every instance stops accepting
//!   tokens of the removed key at its next reload (`RELOAD_INTERVAL`), and a verifier
//!   that refetches the JWKS no longer finds it. For `EMERGENCY_WINDOW` after a roll
//!   the JWKS is cached for `EMERGENCY_MAX_AGE` only, so that a further change during
//!   the incident reaches verifiers quickly. When the whole key directory may have
//!   leaked, roll every key it holds (the next one too): one `keys roll` per key.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rsa::KeySize;
use serde::{Deserialize, Serialize};

use super::KeyError;
use super::dir::{generate_key_file, locked, pem_kids, replace_file};
use super::error::io_err;

/// How often instances re-read the ring.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long verifiers may cache the JWKS (`Cache-Control: max-age`).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// How long a next key is published before it may sign: twice the JWKS cache lifetime
/// (a shared cache in front of a verifier may add its own), plus two reload intervals
/// for every instance to have published it.
pub const PUBLISH_AHEAD: Duration = Duration::from_secs(2 * 300 + 2 * 2);
/// How long verifiers may cache the JWKS during `EMERGENCY_WINDOW` after a roll.
pub const EMERGENCY_MAX_AGE: Duration = Duration::from_secs(30);
/// How long after an emergency roll the JWKS is cached briefly.
pub const EMERGENCY_WINDOW: Duration = Duration::from_secs(3600);
const RING_FILE: &str = "keyring.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Signs new tokens.
    Active,
    /// Published, not signing yet: it becomes active at the next rotation.
    Next,
    /// No longer signs; published until `not_after`.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Next => "next",
            Self::Retired => "retired",
        }
    }
}

/// One key of the ring. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub kid: String,
    pub state: KeyState,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<i64>,
    /// Retired keys: when they leave the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// The ring as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    pub keys: Vec<KeyEntry>,
    /// After an emergency roll: until when the JWKS is cached briefly (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_until: Option<i64>,
}

/// The timing rules of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// How long a `next` key must have been published before it may sign.
    pub publish_ahead: Duration,
    /// How long a retired key stays published.
    pub retire_grace: Duration,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Ring {
    fn count(&self, state: KeyState) -> usize {
        self.keys.iter().filter(|k| k.state == state).count()
    }

    pub fn active(&self) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    pub fn next(&self) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.state == KeyState::Next)
    }

    /// The keys published (and accepted) at `now`.
    pub fn published(&self, now: i64) -> impl Iterator<Item = &KeyEntry> {
        self.keys
            .iter()
            .filter(move |k| k.state != KeyState::Retired || k.not_after.is_some_and(|t| t > now))
    }

    /// The first moment after `now` when what the ring publishes changes: the set
    /// shrinks, or the emergency window ends.
    pub fn next_expiry(&self, now: i64) -> Option<i64> {
        self.keys
            .iter()
            .filter_map(|k| k.not_after)
            .chain(self.emergency_until)
            .filter(|t| *t > now)
            .min()
    }

    /// How long verifiers may cache the JWKS at `now`.
    pub fn jwks_max_age(&self, now: i64) -> Duration {
        if self.emergency_until.is_some_and(|t| t > now) {
            EMERGENCY_MAX_AGE
        } else {
            JWKS_MAX_AGE
        }
    }

    fn parse(raw: &[u8], path: &Path) -> Result<Self, KeyError> {
        let ring: Self = serde_json::from_slice(raw).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: format!("not a key ring: {e}"),
        })?;
        if ring.count(KeyState::Active) != 1 || ring.count(KeyState::Next) > 1 {
            return Err(KeyError::Invalid {
                path: path.to_owned(),
                reason: "a key ring has exactly one active key and at most one next key".into(),
            });
        }
        Ok(ring)
    }
}

/// The ring of `dir` and its raw bytes (to notice changes), or `None` before the first
/// start.
pub fn read(dir: &Path) -> Result<Option<(Ring, Vec<u8>)>, KeyError> {
    let path = dir.join(RING_FILE);
    match fs::read(&path) {
        Ok(raw) => Ok(Some((Ring::parse(&raw, &path)?, raw))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::Io { path, source: e }),
    }
}

/// Writes the ring; returns its bytes as written.
fn write(dir: &Path, ring: &Ring) -> Result<Vec<u8>, KeyError> {
    let json = serde_json::to_vec_pretty(ring).map_err(|e| KeyError::Invalid {
        path: dir.join(RING_FILE),
        reason: e.to_string(),
    })?;
    replace_file(dir, RING_FILE, &json)?;
    if let Some(active) = ring.active() {
        replace_file(dir, "active", format!("{}\n", active.kid).as_bytes())?;
    }
    Ok(json)
}

/// Drops retired keys past `not_after`, and their files.
fn prune(dir: &Path, ring: &mut Ring, now: i64) {
    ring.keys.retain(|k| {
        let gone = k.state == KeyState::Retired && k.not_after.is_some_and(|t| t <= now);
        if gone {
            let _ = fs::remove_file(dir.join(format!("{}.pem", k.kid)));
        }
        !gone
    });
}

fn no_ring(dir: &Path) -> KeyError {
    KeyError::Refused(format!(
        "no key ring in {}: start the service once, or run `keys generate`, there",
        dir.display()
    ))
}

/// The ring of `dir` as it is, for `keys list`; an error where there is none.
pub fn existing(dir: &Path) -> Result<Ring, KeyError> {
    read(dir)?.map(|(ring, _)| ring).ok_or_else(|| no_ring(dir))
}

/// The ring of `dir`, made on first start: a new RSA-2048 key becomes active (the path
/// of the new key file is returned), or keys placed there by hand are adopted (the one
/// the `active` file names, or the only one, signs; others are `next`).
pub fn ensure(dir: &Path, now: i64) -> Result<(Ring, Vec<u8>, Option<PathBuf>), KeyError> {
    crate::files::create_private_dir(dir).map_err(io_err(dir))?;
    if let Some((ring, raw)) = read(dir)? {
        return Ok((ring, raw, None));
    }
    locked(dir, || {
        if let Some((ring, raw)) = read(dir)? {
            return Ok((ring, raw, None));
        }
        let mut kids = pem_kids(dir)?;
        let mut generated = None;
        if kids.is_empty() {
            let (kid, path) = generate_key_file(dir, KeySize::Rsa2048)?;
            kids.push(kid);
            generated = Some(path);
        }
        let active = match fs::read_to_string(dir.join("active")) {
            Ok(kid) => kid.trim().to_owned(),
            Err(_) if kids.len() == 1 => kids[0].clone(),
            Err(_) => return Err(KeyError::NoActive(dir.to_owned())),
        };
        if !kids.contains(&active) {
            return Err(KeyError::MissingActive(dir.to_owned()));
        }
        let ring = Ring {
            keys: kids
                .into_iter()
                .map(|kid| {
                    let is_active = kid == active;
                    KeyEntry {
                        state: if is_active {
                            KeyState::Active
                        } else {
                            KeyState::Next
                        },
                        kid,
                        created_at: now,
                        activated_at: is_active.then_some(now),
                        not_after: None,
                    }
                })
                .collect(),
            emergency_until: None,
        };
        if ring.count(KeyState::Next) > 1 {
            return Err(KeyError::Invalid {
                path: dir.to_owned(),
                reason: "several keys besides the active one; keep at most one".into(),
            });
        }
        let raw = write(dir, &ring)?;
        Ok((ring, raw, generated))
    })
}

/// `keys generate`: a new key, published as `next` (as `active` if none signs yet).
pub fn generate(dir: &Path, size: KeySize, now: i64) -> Result<KeyEntry, KeyError> {
    if read(dir)?.is_none() && pem_kids(dir).map(|k| k.is_empty()).unwrap_or(true) {
        // A fresh directory: the new key signs at once.
        let (ring, _, _) = ensure(dir, now)?;
        return ring
            .active()
            .cloned()
            .ok_or_else(|| KeyError::NoActive(dir.to_owned()));
    }
    ensure(dir, now)?;
    locked(dir, || {
        let (mut ring, _) = read(dir)?.ok_or_else(|| KeyError::NoActive(dir.to_owned()))?;
        if let Some(next) = ring.next() {
            return Err(KeyError::Refused(format!(
                "{} is already the next key: rotate first, or retire it",
                next.kid
            )));
        }
        prune(dir, &mut ring, now);
        let (kid, _) = generate_key_file(dir, size)?;
        let entry = KeyEntry {
            kid,
            state: KeyState::Next,
            created_at: now,
            activated_at: None,
            not_after: None,
        };
        ring.keys.push(entry.clone());
        write(dir, &ring)?;
        Ok(entry)
    })
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub retired: String,
    pub active: String,
    pub next: String,
}

fn rotate_locked(
    dir: &Path,
    ring: &mut Ring,
    now: i64,
    lifetimes: Lifetimes,
    force: bool,
    size: KeySize,
) -> Result<Rotation, KeyError> {
    let next = ring
        .next()
        .cloned()
        .ok_or_else(|| KeyError::Refused("no next key: run `keys generate` first".into()))?;
    let ready_at = next.created_at + secs(lifetimes.publish_ahead);
    if !force && now < ready_at {
        return Err(KeyError::Refused(format!(
            "the next key {} has been published for {}s only; verifiers may not have it yet \
             (wait {}s, or --force)",
            next.kid,
            now - next.created_at,
            ready_at - now
        )));
    }
    prune(dir, ring, now);
    let mut retired = String::new();
    for key in &mut ring.keys {
        match key.state {
            KeyState::Active => {
                key.state = KeyState::Retired;
                key.not_after = Some(now + secs(lifetimes.retire_grace));
                retired = key.kid.clone();
            }
            KeyState::Next => {
                key.state = KeyState::Active;
                key.activated_at = Some(now);
            }
            KeyState::Retired => {}
        }
    }
    let (kid, _) = generate_key_file(dir, size)?;
    ring.keys.push(KeyEntry {
        kid: kid.clone(),
        state: KeyState::Next,
        created_at: now,
        activated_at: None,
        not_after: None,
    });
    write(dir, ring)?;
    Ok(Rotation {
        retired,
        active: next.kid,
        next: kid,
    })
}

/// `keys rotate`: next → active, active → retired, and a new next key.
pub fn rotate(
    dir: &Path,
    now: i64,
    lifetimes: Lifetimes,
    force: bool,
    size: KeySize,
) -> Result<Rotation, KeyError> {
    locked(dir, || {
        let (mut ring, _) = read(dir)?.ok_or_else(|| no_ring(dir))?;
        rotate_locked(dir, &mut ring, now, lifetimes, force, size)
    })
}

/// What an emergency roll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roll {
    /// The key removed, and the state it had.
    pub removed: String,
    pub removed_state: KeyState,
    pub active: String,
    pub next: String,
    /// The removed key's file, when it could not be deleted (the ring no longer
    /// names it: no instance uses it; delete it by hand).
    pub left_behind: Option<(PathBuf, String)>,
}

/// `keys roll --compromised <kid>`: the key leaves the ring now (see the module docs).
pub fn roll_compromised(dir: &Path, kid: &str, now: i64, size: KeySize) -> Result<Roll, KeyError> {
    locked(dir, || {
        let (mut ring, _) = read(dir)?.ok_or_else(|| no_ring(dir))?;
        let removed_state = ring
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.state)
            .ok_or_else(|| KeyError::Refused(format!("no key {kid} in the ring")))?;
        prune(dir, &mut ring, now);
        ring.keys.retain(|k| k.kid != kid);
        let fresh = |state: KeyState| -> Result<KeyEntry, KeyError> {
            let (kid, _) = generate_key_file(dir, size)?;
            Ok(KeyEntry {
                kid,
                state,
                created_at: now,
                activated_at: (state == KeyState::Active).then_some(now),
                not_after: None,
            })
        };
        if removed_state == KeyState::Active {
            ring.keys.push(fresh(KeyState::Active)?);
        }
        if ring.next().is_none() {
            ring.keys.push(fresh(KeyState::Next)?);
        }
        ring.emergency_until = Some(now + secs(EMERGENCY_WINDOW));
        write(dir, &ring)?;
        // After the ring that no longer names it: an instance never looks for it again.
        let pem = dir.join(format!("{kid}.pem"));
        let left_behind = match fs::remove_file(&pem) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some((pem, e.to_string())),
        };
        let name = |k: Option<&KeyEntry>| k.map(|k| k.kid.clone()).unwrap_or_default();
        Ok(Roll {
            removed: kid.to_owned(),
            removed_state,
            active: name(ring.active()),
            next: name(ring.next()),
            left_behind,
        })
    })
}

/// `keys retire <kid>`: a next key is dropped (it never signed); a retired key leaves
/// the JWKS now. The active key is retired by rotating.
pub fn retire(dir: &Path, kid: &str, now: i64) -> Result<(), KeyError> {
    locked(dir, || {
        let (mut ring, _) = read(dir)?.ok_or_else(|| no_ring(dir))?;
        let key = ring
            .keys
            .iter_mut()
            .find(|k| k.kid == kid)
            .ok_or_else(|| KeyError::Refused(format!("no key {kid} in the ring")))?;
        if key.state == KeyState::Active {
            return Err(KeyError::Refused(
                "the active key is retired by `keys rotate`".into(),
            ));
        }
        key.state = KeyState::Retired;
        key.not_after = Some(now);
        prune(dir, &mut ring, now);
        write(dir, &ring).map(drop)
    })
}

/// The scheduled rotation: makes sure a next key is published, and rotates when the
/// active key has signed for `interval` and the next one is ready. Checked again under
/// the lock, so of several instances exactly one rotates.
pub fn rotate_if_due(
    dir: &Path,
    now: i64,
    interval: Duration,
    lifetimes: Lifetimes,
) -> Result<Option<Rotation>, KeyError> {
    let due = |ring: &Ring| {
        let active_since = ring
            .active()
            .map(|k| k.activated_at.unwrap_or(k.created_at));
        let next_ready = ring
            .next()
            .map(|k| k.created_at + secs(lifetimes.publish_ahead) <= now);
        (
            ring.next().is_none(),
            active_since.is_some_and(|t| t + secs(interval) <= now) && next_ready == Some(true),
        )
    };
    let Some((ring, _)) = read(dir)? else {
        return Ok(None);
    };
    if due(&ring) == (false, false) {
        return Ok(None);
    }
    locked(dir, || {
        let (mut ring, _) = read(dir)?.ok_or_else(|| KeyError::NoActive(dir.to_owned()))?;
        match due(&ring) {
            (true, _) => {
                let (kid, _) = generate_key_file(dir, KeySize::Rsa2048)?;
                ring.keys.push(KeyEntry {
                    kid,
                    state: KeyState::Next,
                    created_at: now,
                    activated_at: None,
                    not_after: None,
                });
                write(dir, &ring)?;
                Ok(None)
            }
            (false, true) => {
                rotate_locked(dir, &mut ring, now, lifetimes, false, KeySize::Rsa2048).map(Some)
            }
            (false, false) => Ok(None),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "ring_tests.rs"]
mod tests;
