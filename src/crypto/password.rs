//! argon2id password hashing on a bounded pool.
//!
//! Hashes run on tokio's blocking threads, at most `concurrency` at once, with at most
//! `queue` requests waiting; beyond that a login is refused with 503 at once instead of
//! queueing without end. The async workers that serve refreshes never hash.
//! An unknown user is verified against a dummy hash with the same parameters, so the
//! answer takes the same time as a wrong password.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::HashingSettings;
use crate::domain::secret::Secret;
use crate::error::Error;

/// OWASP: m = 19456 KiB, t = 2, p = 1.
const M_COST: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn argon2() -> Result<Argon2<'static>, Error> {
    let params =
        Params::new(M_COST, T_COST, P_COST, None).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The bounded hashing pool.
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(settings: HashingSettings) -> Result<Self, Error> {
        let dummy = crate::crypto::refresh::generate()?;
        let dummy_hash = hash_now(&dummy)?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            waiting: AtomicUsize::new(0),
            max_waiting: settings.queue,
            dummy_hash,
        })
    }

    /// Hashes a new password (PHC string).
    pub async fn hash(&self, password: Secret) -> Result<String, Error> {
        self.run(move || hash_now(&password)).await?
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no user,
    /// in which case the answer is always `false`.
    pub async fn verify(&self, password: Secret, hash: Option<String>) -> Result<bool, Error> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = self
            .run(move || {
                let parsed =
                    PasswordHash::new(&hash).map_err(|e| Error::internal(e.to_string()))?;
                let argon2 = argon2()?;
                Ok::<_, Error>(
                    argon2
                        .verify_password(password.expose().as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await??;
        Ok(known && matches)
    }

    /// Requests currently waiting for a hashing slot.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::Overloaded);
                }
                let permit = Arc::clone(&self.permits).acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.map_err(Error::internal)?
            }
        };
        tokio::task::spawn_blocking(move || {
            let out = job();
            drop(permit);
            out
        })
        .await
        .map_err(Error::internal)
    }
}

fn hash_now(password: &Secret) -> Result<String, Error> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()?
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let hasher = PasswordHasher::new(HashingSettings {
            concurrency: 1,
            queue: 4,
        })
        .unwrap();
        let hash = hasher
            .hash(Secret::new("a sound passphrase"))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hasher
                .verify(Secret::new("a sound passphrase"), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(Secret::new("a wrong passphrase"), Some(hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(Secret::new("anything at all!"), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_not_queued() {
        let hasher = Arc::new(
            PasswordHasher::new(HashingSettings {
                concurrency: 1,
                queue: 1,
            })
            .unwrap(),
        );
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let h = Arc::clone(&hasher);
                tokio::spawn(async move { h.hash(Secret::new("a sound passphrase")).await })
            })
            .collect();
        let mut overloaded = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(Error::Overloaded)) {
                overloaded += 1;
            }
        }
        assert!(
            overloaded >= 1,
            "six hashes with one slot and a queue of one must refuse some"
        );
    }
}
