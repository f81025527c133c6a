//! The PostgreSQL store, for production and for several instances sharing one database.
//!
//! - Transactions run at READ COMMITTED. The rotation is decided by its first
//!   statement, a conditional `UPDATE ... WHERE consumed_at IS NULL ... RETURNING`: the
//!   row lock makes concurrent uses of one token wait, and once the winner commits the
//!   others re-check the condition and find the token consumed, so exactly one
//!   successor is ever inserted (and `parent_hash UNIQUE` would refuse a second).
//! - A serialization failure or deadlock (neither expected at this isolation level)
//!   is retried a few times, never shown to a client.
//! - A database that cannot be reached, or does not answer within the acquire timeout,
//!   is `Unavailable`: the API answers 503.
//!
//! Files: `store.rs` (the `Store` methods), `steps.rs` (the engine's steps in
//! PostgreSQL's SQL), `rows.rs` (row types); this file connects, classifies errors and
//! runs the rotation's transaction.

mod authorization;
mod rows;
mod steps;
mod store;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use async_trait::async_trait;

use super::engine::Transactional;
use super::engine::rotation::{self, Settled};
use super::{RotateOutcome, RotateRequest, StoreError};
use crate::domain::family::GrantRejection;

const MAX_CONNECTIONS: u32 = 16;
const ATTEMPTS: usize = 3;
/// Families one step of the sweep reads (and deletes those that ended).
const SWEEP_PAGE: i64 = 4096;

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and applies the migrations (several instances starting together
    /// are serialised by the migrator's advisory lock).
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self, StoreError> {
        // Server-side bounds too: a statement that runs past the timeout is cancelled,
        // and a session left idle inside a transaction (its client vanished behind a
        // dead network) is ended, so its row locks cannot block a token for long.
        let timeout_ms = acquire_timeout.as_millis();
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::Other)?
            .options([
                ("statement_timeout", timeout_ms.to_string()),
                (
                    "idle_in_transaction_session_timeout",
                    (timeout_ms * 3).to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(classify)?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Other(sqlx::Error::Migrate(Box::new(e))))?;
        Ok(Self { pool })
    }
}

fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        // Class 08: connection exceptions; 57P0x: the server is shutting down;
        // 53xxx: out of resources (too many connections); 57014: statement timeout.
        sqlx::Error::Database(db)
            if db.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "57014"
            }) =>
        {
            StoreError::Unavailable(e)
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Other(e),
    }
}

/// A serialization failure or a deadlock: the transaction may simply be run again.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Other(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

impl PgStore {
    /// A rotation, run again (a few times) after a race between its two statements or
    /// a serialization failure.
    async fn rotate_with_retries(
        &self,
        r: &RotateRequest<'_>,
    ) -> Result<RotateOutcome, StoreError> {
        let mut attempt = 1;
        loop {
            match self.rotate_once(r).await {
                Err(e)
                    if attempt < ATTEMPTS && (matches!(e, StoreError::Retry) || retryable(&e)) =>
                {
                    attempt += 1
                }
                Err(StoreError::Retry) => {
                    return Err(StoreError::Corrupt(
                        "rotation kept racing; giving up".into(),
                    ));
                }
                other => return other,
            }
        }
    }

    /// One try at a rotation: the fresh rotation's statement (it commits on its own),
    /// else a transaction that settles the presented token by the engine's rules. Its
    /// points of no return are that statement and the `COMMIT`: each is started only
    /// under a claim of the request's ticket, so a caller that stopped waiting before
    /// is never followed by a rotation it was told did not happen. The steps between
    /// them are abandoned with the request: their transaction rolls back.
    async fn rotate_once(&self, r: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        if !r.ticket.claim() {
            return Err(StoreError::Abandoned);
        }
        let fresh = steps::rotate_fresh(&mut conn, r).await;
        r.ticket.release();
        if let Some((family, generation)) = fresh? {
            return Ok(RotateOutcome::Issued {
                family,
                generation,
                replay: false,
                moved_from: None,
            });
        }
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(classify)?;
        let outcome = match rotation::settle(&mut tx, r).await? {
            // Unknown: nothing was read that could change, nothing written, no claim
            // needed to answer it.
            Settled::Done(
                outcome @ RotateOutcome::Refused {
                    rejection: GrantRejection::Unknown,
                    ..
                },
            ) => {
                tx.rollback().await.map_err(classify)?;
                return Ok(outcome);
            }
            Settled::Done(outcome) => outcome,
            // The token is live now but the fresh statement did not match it: a
            // concurrent change between the two. Run the whole rotation again.
            Settled::Rotatable => {
                tx.rollback().await.map_err(classify)?;
                return Err(StoreError::Retry);
            }
        };
        if !r.ticket.claim() {
            tx.rollback().await.map_err(classify)?;
            return Err(StoreError::Abandoned);
        }
        let committed = tx.commit().await.map_err(classify);
        r.ticket.release();
        committed?;
        Ok(outcome)
    }
}

#[async_trait]
impl Transactional for PgStore {
    type Tx = Transaction<'static, Postgres>;

    async fn begin_write(&self) -> Result<Self::Tx, StoreError> {
        self.pool.begin().await.map_err(classify)
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(classify)
    }
}
