//! The embedded SQLite store.
//!
//! - WAL journal, `synchronous = NORMAL` (durable across a process crash), a busy
//!   timeout and foreign keys on every connection.
//! - Every write goes through one writer connection, and every write transaction starts
//!   with `BEGIN IMMEDIATE`: the write lock is taken up front, so a transaction that
//!   reads before it writes can never fail with `SQLITE_BUSY` at the upgrade, and no
//!   `database is locked` reaches a client. Reads use a separate pool (WAL readers do
//!   not block the writer).
//! - Checkpoints run off the writer: a task of its own runs a `PASSIVE` checkpoint on
//!   its own connection every `CHECKPOINT_EVERY`. A checkpoint fsyncs the WAL and the
//!   database file (~6 ms here), and when the writer ran it (SQLite's default, every
//!   1000 pages: every ~0.5 s under refresh load) every rotation queued behind it
//!   waited that long: it was most of the refresh p99 at half load. A passive
//!   checkpoint takes no lock the writer needs, so the writer goes on appending. The
//!   WAL starts over at the writer's first commit after a checkpoint that caught up,
//!   which needs a pause in the writes; under load with no pause, the writer's own
//!   checkpoint at `WRITER_CHECKPOINT_PAGES` (32 MiB) is the backstop, and then finds
//!   most of the WAL already copied.
//! - Times are unix milliseconds.
//!
//! Files: `store.rs` (the `Store` methods: reads, and writes as the engine's
//! compositions), `steps.rs` (the engine's steps in SQLite's SQL), `batch.rs` (the
//! group commit of rotations), `rows.rs` (row types and conversions, error
//! classification); this file opens the pools and runs the checkpoints.

mod authorization;
mod batch;
mod rows;
mod steps;
mod store;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, Sqlite, SqlitePool, Transaction};

use async_trait::async_trait;

use super::engine::Transactional;
use super::{StoreError, UserWithHash};
use batch::Rotations;
use rows::{UserRecord, classify};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;
/// Families deleted per write transaction by the sweep.
const SWEEP_CHUNK: usize = 256;
/// Families the sweep reads per query, on a reader, to find the ended ones.
const SWEEP_PAGE: i64 = 4096;
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// The writer's own checkpoint, a backstop: 8192 pages of 4 KiB (32 MiB of WAL).
const WRITER_CHECKPOINT_PAGES: &str = "8192";

/// The SQLite store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    rotations: Rotations,
}

/// Checkpoints the WAL off the writer's path until the pool is closed. A failed
/// checkpoint is logged and tried again at the next tick: the WAL only grows meanwhile.
fn start_checkpoints(checkpointer: SqlitePool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if checkpointer.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&checkpointer)
                .await
            {
                if checkpointer.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    });
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Other)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No ping before each use: a local file connection does not go stale. But one
        // still in a transaction is replaced: when SQLite rolls a transaction back by
        // itself (a full disk, an I/O error), sqlx's own ROLLBACK then fails and it
        // keeps counting the transaction as open, so every later BEGIN would fail.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .acquire_timeout(acquire_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES),
            )
            .await
            .map_err(classify)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(sqlx::Error::Migrate(Box::new(e))))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(classify)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(classify)?;
        start_checkpoints(checkpointer.clone());
        let rotations = Rotations::start(writer.clone());
        Ok(Self {
            writer,
            reader,
            checkpointer,
            rotations,
        })
    }

    /// The user whose `column` (`id` or `email`, never input) equals `value`.
    async fn user_where(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<UserWithHash>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(&format!(
            "SELECT id, email, password_hash, created_at, disabled_at FROM users WHERE {column} = ?1"
        ))
        .bind(value)
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        record.map(UserRecord::with_hash).transpose()
    }
}

#[async_trait]
impl Transactional for SqliteStore {
    type Tx = Transaction<'static, Sqlite>;

    async fn begin_write(&self) -> Result<Self::Tx, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(classify)
    }
}
