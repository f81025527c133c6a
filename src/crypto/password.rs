//! argon2id password hashing on a bounded pool.
//!
//! Hashes run on `concurrency` dedicated threads, fed by a queue of at most `queue`
//! jobs; when the queue is full a login is refused with 503 at once instead of waiting
//! without end. The async workers that serve refreshes never hash. Dedicated threads
//! (rather than tokio's blocking pool, which grows to hundreds of threads) also bound
//! memory: each hash takes 19 MiB, and each thread's allocator arena keeps it.
//! An unknown user is verified against a dummy hash with the same parameters, so the
//! answer takes the same time as a wrong password.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, PoisonError};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::oneshot;

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

type Job = Box<dyn FnOnce() + Send>;

/// The bounded hashing pool.
pub struct PasswordHasher {
    jobs: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(settings: HashingSettings) -> Result<Self, Error> {
        let (jobs, receiver) = sync_channel::<Job>(settings.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..settings.concurrency {
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = receiver
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .recv();
                        let Ok(job) = next else { return };
                        queued.fetch_sub(1, Ordering::AcqRel);
                        job();
                    }
                })
                .map_err(Error::internal)?;
        }
        let dummy = crate::crypto::refresh::generate()?;
        Ok(Self {
            jobs,
            queued,
            dummy_hash: hash_now(&dummy)?,
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
                Ok::<_, Error>(
                    argon2()?
                        .verify_password(password.expose().as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await??;
        Ok(known && matches)
    }

    /// Jobs waiting for a hashing thread.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The requester may have gone (client disconnected): nothing to tell then.
            let _ = reply.send(job());
        });
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.jobs.try_send(job) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                TrySendError::Full(_) => Error::Overloaded,
                TrySendError::Disconnected(_) => Error::internal("the hashing threads are gone"),
            });
        }
        answer
            .await
            .map_err(|_| Error::internal("a hashing job was dropped"))
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
