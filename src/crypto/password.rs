//! argon2id password hashing on a bounded pool.
//!
//! Hashes run on `concurrency` dedicated threads, fed by two queues: sign-ins (logins,
//! password changes; at most `queue` waiting) and registrations (at most a quarter of
//! that). A thread takes a registration only when no sign-in waits, so a flood of
//! registrations delays a login by at most the hashes already running, and never fills
//! its queue. A full queue is refused with 503 at once instead of waiting without end.
//! The async workers that serve refreshes never hash. Each thread owns
//! its 19 MiB of argon2 memory, allocated once: allocating it per hash left the
//! allocator holding a fresh 19 MiB after every login (RSS grew to ~130 MB) and cost
//! thousands of page faults per hash.
//! An unknown user is verified against a dummy hash with the same parameters, so the
//! answer takes the same time as a wrong password.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::domain::error::Error;
use crate::domain::secret::Secret;

/// OWASP: m = 19456 KiB, t = 2, p = 1.
const M_COST: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn params() -> Result<Params, Error> {
    Params::new(M_COST, T_COST, P_COST, None).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

/// Bounds on password hashing, so a login flood cannot take every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingSettings {
    /// Hashes computed at once.
    pub concurrency: usize,
    /// Requests allowed to wait for a hashing slot; more are answered 503.
    pub queue: usize,
}

/// A job for a hashing thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// Which queue a hash waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Logins and password changes: served first.
    SignIn,
    /// Registrations: served when no sign-in waits.
    Registration,
}

#[derive(Default)]
struct Queues {
    sign_in: VecDeque<Job>,
    registration: VecDeque<Job>,
    closed: bool,
}

struct Pool {
    queues: Mutex<Queues>,
    ready: Condvar,
    sign_in_max: usize,
    registration_max: usize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job, sign-ins first; `None` once the hasher is dropped.
    fn next(&self) -> Option<Job> {
        let mut queues = self.lock();
        loop {
            if let Some(job) = queues.sign_in.pop_front() {
                return Some(job);
            }
            if let Some(job) = queues.registration.pop_front() {
                return Some(job);
            }
            if queues.closed {
                return None;
            }
            queues = self
                .ready
                .wait(queues)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The bounded hashing pool.
pub struct PasswordHasher {
    pool: Arc<Pool>,
    dummy_hash: String,
}

impl Drop for PasswordHasher {
    fn drop(&mut self) {
        self.pool.lock().closed = true;
        self.pool.ready.notify_all();
    }
}

impl PasswordHasher {
    pub fn new(settings: HashingSettings) -> Result<Self, Error> {
        let pool = Arc::new(Pool {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            sign_in_max: settings.queue,
            registration_max: (settings.queue / 4).max(1),
        });
        let blocks = params()?.block_count();
        for i in 0..settings.concurrency {
            let pool = Arc::clone(&pool);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory = vec![Block::default(); blocks];
                    while let Some(job) = pool.next() {
                        job(&mut memory);
                    }
                })
                .map_err(Error::internal)?;
        }
        let dummy = crate::crypto::refresh::generate()?;
        let mut memory = vec![Block::default(); blocks];
        let dummy_hash = hash_with(&mut memory, &dummy)?;
        Ok(Self { pool, dummy_hash })
    }

    /// Hashes a new password (PHC string).
    pub async fn hash(&self, lane: Lane, password: Secret) -> Result<String, Error> {
        self.run(lane, move |memory| hash_with(memory, &password))
            .await?
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no user,
    /// in which case the answer is always `false`. Sign-in lane.
    pub async fn verify(&self, password: Secret, hash: Option<String>) -> Result<bool, Error> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = self
            .run(Lane::SignIn, move |memory| {
                verify_with(memory, &password, &hash)
            })
            .await??;
        Ok(known && matches)
    }

    /// How many sign-ins may wait for a hashing thread.
    pub fn queue_capacity(&self) -> usize {
        self.pool.sign_in_max
    }

    /// Jobs waiting for a hashing thread.
    pub fn queue_depth(&self) -> usize {
        let queues = self.pool.lock();
        queues.sign_in.len() + queues.registration.len()
    }

    async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        job: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The requester may have gone (client disconnected): nothing to tell then.
            let _ = reply.send(job(memory));
        });
        {
            let mut queues = self.pool.lock();
            let (queue, max) = match lane {
                Lane::SignIn => (&mut queues.sign_in, self.pool.sign_in_max),
                Lane::Registration => (&mut queues.registration, self.pool.registration_max),
            };
            if queue.len() >= max {
                return Err(Error::Overloaded);
            }
            queue.push_back(job);
        }
        self.pool.ready.notify_one();
        answer
            .await
            .map_err(|_| Error::internal("a hashing job was dropped"))
    }
}

/// A new PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), computed in
/// `memory`.
fn hash_with(memory: &mut [Block], password: &Secret) -> Result<String, Error> {
    let params = params()?;
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(internal)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(password.expose().as_bytes(), salt_bytes, &mut out, memory)
        .map_err(internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(internal)?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string with the parameters it names, in `memory`
/// when it is large enough. The comparison is constant-time (`Output`'s equality).
fn verify_with(memory: &mut [Block], password: &Secret, hash: &str) -> Result<bool, Error> {
    let parsed = PasswordHash::new(hash).map_err(internal)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(internal)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(internal)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(internal)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(internal("stored password hash lacks a salt or a hash"));
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(internal)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let pwd = password.expose().as_bytes();
    if params.block_count() <= memory.len() {
        argon2
            .hash_password_into_with_memory(pwd, salt_bytes, &mut out, memory)
            .map_err(internal)?;
    } else {
        argon2
            .hash_password_into(pwd, salt_bytes, &mut out)
            .map_err(internal)?;
    }
    Ok(Output::new(&out).map_err(internal)? == expected)
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
            .hash(Lane::SignIn, Secret::new("a sound passphrase"))
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

    #[test]
    fn hashes_are_standard_phc_strings() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let mut memory = vec![Block::default(); params().unwrap().block_count()];
        let ours = hash_with(&mut memory, &Secret::new("a sound passphrase")).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"a sound passphrase", &parsed)
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params().unwrap())
            .hash_password(b"another passphrase", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, &Secret::new("another passphrase"), &theirs).unwrap());
        assert!(!verify_with(&mut memory, &Secret::new("another passphrase!"), &theirs).unwrap());
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
                tokio::spawn(async move {
                    h.hash(Lane::SignIn, Secret::new("a sound passphrase"))
                        .await
                })
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
