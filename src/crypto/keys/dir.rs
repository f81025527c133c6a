//! The key directory as files: an exclusive lock for changes, atomic writes, the PEM
//! private keys (`<kid>.pem`, mode 0600) and 32-byte secrets.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::RsaKeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::io_err;
use super::{KeyError, SigningKey};
use crate::crypto::b64url;

const LOCK_FILE: &str = "keyring.lock";
/// How long a change waits for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The private key `<kid>.pem` of `dir`, checked to be the key its name says.
pub(crate) fn read_signing_key(dir: &Path, kid: &str) -> Result<SigningKey, KeyError> {
    let path = dir.join(format!("{kid}.pem"));
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let der = pem_decode(&text, "PRIVATE KEY").ok_or_else(|| KeyError::Invalid {
        path: path.clone(),
        reason: "expected a PEM `PRIVATE KEY` (PKCS#8) block".into(),
    })?;
    let key = SigningKey::from_pkcs8(&der, &path)?;
    if key.kid != kid {
        return Err(KeyError::Invalid {
            path,
            reason: format!("the key's thumbprint is {}, not its file name", key.kid),
        });
    }
    Ok(key)
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

/// Writes `bytes` to a private (0600) temporary file of a random name, syncs it, and
/// renames it over `name`: readers see the old file or the new one, never a part.
pub(crate) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| KeyError::Generate)?;
    let tmp = dir.join(format!(".{name}.{}", crate::crypto::b64url(&nonce)));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
        let _ = fs::remove_file(&tmp);
        return Err(KeyError::Io { path, source: e });
    }
    Ok(())
}

/// Runs `change` holding an exclusive OS lock (`flock`) on `keyring.lock`: released
/// when the holder finishes or dies, so there is no stale lock to break. The key
/// directory must be on a file system with working locks (local, or NFSv4).
pub(crate) fn locked<T>(
    dir: &Path,
    change: impl FnOnce() -> Result<T, KeyError>,
) -> Result<T, KeyError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(KeyError::Locked(path)),
            Err(fs::TryLockError::Error(e)) => return Err(KeyError::Io { path, source: e }),
        }
    }
    let result = change();
    let _ = file.unlock();
    result
}

/// The `kid`s of the private keys in `dir`, sorted.
pub(crate) fn pem_kids(dir: &Path) -> Result<Vec<String>, KeyError> {
    let mut kids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("pem")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            kids.push(stem.to_owned());
        }
    }
    kids.sort();
    Ok(kids)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
