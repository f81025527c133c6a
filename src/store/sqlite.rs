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

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, FromRow, Sqlite, SqlitePool, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AuditEvent, FamilyInfo, NewFamily, PasswordChange, RefreshTokenState, RevokeOutcome,
    RotateOutcome, RotateRequest, Session, SessionSelector, Store, StoreError, Ticket,
    UserWithHash, audit_kind, refused_after_revoke,
};
use crate::crypto::hex;
use crate::crypto::refresh::TokenHash;
use crate::domain::family::{
    Decision, GrantRejection, PresentedToken, RefreshPolicy, RevokeReason,
};
use crate::domain::user::User;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;
/// Families deleted per write transaction by the sweep.
const SWEEP_CHUNK: i64 = 256;
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

/// A rotation waiting for the next batch, with everything it borrows owned.
struct RotationJob {
    presented: crate::crypto::refresh::TokenHash,
    successor: crate::crypto::refresh::TokenHash,
    client_id: String,
    now: OffsetDateTime,
    policy: RefreshPolicy,
    ip: Option<String>,
    user_agent: Option<String>,
    ticket: Ticket,
    reply: tokio::sync::oneshot::Sender<Result<RotateOutcome, StoreError>>,
}

impl RotationJob {
    fn request(&self) -> RotateRequest<'_> {
        RotateRequest {
            presented: self.presented,
            successor: self.successor,
            client_id: &self.client_id,
            now: self.now,
            policy: self.policy,
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            ticket: self.ticket.clone(),
        }
    }
}

/// Group commit for rotations: concurrent rotations queue here, and one task runs
/// them in batches of at most `BATCH_MAX`, in one `BEGIN IMMEDIATE` transaction. The
/// answers are those of the jobs run one by one in arrival order (see `attempt`), as
/// atomic and isolated as before: when one fails, the batch is rolled back and run
/// again with each job in a savepoint, so the failing one rolls back alone. Jobs are
/// answered only after the batch committed; a crash loses the whole uncommitted batch,
/// whose requests were never answered. A job is run only if its caller still waits
/// once the batch holds the write lock (`Ticket::claim`): a caller answered 503 while
/// the writer waited for the lock is never followed by its rotation. One commit serves many rotations, so the
/// writer's per-transaction cost is paid once per batch.
struct Rotations {
    queue: tokio::sync::mpsc::Sender<RotationJob>,
}

const BATCH_MAX: usize = 64;

impl Rotations {
    fn start(writer: SqlitePool) -> Self {
        let (queue, mut jobs) = tokio::sync::mpsc::channel::<RotationJob>(4096);
        tokio::spawn(async move {
            while let Some(first) = jobs.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                run_batch(&writer, batch).await;
            }
        });
        Self { queue }
    }

    async fn rotate(&self, r: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = RotationJob {
            presented: r.presented,
            successor: r.successor,
            client_id: r.client_id.to_owned(),
            now: r.now,
            policy: r.policy,
            ip: r.ip.map(str::to_owned),
            user_agent: r.user_agent.map(str::to_owned),
            ticket: r.ticket.clone(),
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?
    }
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

async fn run_batch(writer: &SqlitePool, mut batch: Vec<RotationJob>) {
    let failed = |e: &StoreError| {
        StoreError::Unavailable(sqlx::Error::Protocol(format!("rotation batch failed: {e}")))
    };
    // Savepoints cost two of a fresh rotation's five statements, and a job fails only
    // when the database does: run without them, and again with them if one failed.
    let outcome = match attempt_together(writer, &mut batch).await {
        Ok(Some(results)) => Ok(results),
        Ok(None) => {
            // Rolled back: nothing of the batch will commit until the next attempt has
            // the write lock again, which may take a while. Its callers may leave
            // meanwhile; the next attempt claims those that did not.
            for job in &batch {
                job.ticket.release();
            }
            attempt_isolated(writer, &mut batch).await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(failed(&e)));
            }
        }
    }
}

/// The fresh rotations of a batch in three statements, whatever its size: consume every
/// presented token that `rotate_in`'s conditional update would consume, insert their
/// successors, touch their families. A job whose token this does not rotate (in grace,
/// reused, revoked, expired, unknown, or presented a second time in the batch) is left
/// `None`, for `rotate_in` to decide afterwards under the same lock.
///
/// The answers are those of the jobs run one by one in arrival order: a token is left
/// out when an earlier job of the batch presented another token of its family (two
/// tabs: one retries the old token within the grace period, the other already uses
/// the new one; run new-first, the retry would look like reuse), and rotations of
/// different families do not touch each other's rows. Fewer statements is the point:
/// each is a round trip to SQLite's thread and two thread wake-ups, which were most of
/// the writer's time.
async fn rotate_fresh_batch(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &[RotationJob],
) -> Result<Vec<Option<RotateOutcome>>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let presented: Vec<serde_json::Value> = batch
        .iter()
        .filter(|job| seen.insert(job.presented))
        .map(|job| {
            let (idle_cutoff, absolute_cutoff) = job.policy.cutoffs(job.now);
            serde_json::json!([
                hex(&job.presented),
                job.client_id,
                ms(job.now),
                ms(idle_cutoff),
                ms(absolute_cutoff)
            ])
        })
        .collect();
    let consumed: Vec<(Vec<u8>, String)> = sqlx::query_as(
        "WITH j AS MATERIALIZED (
             SELECT key AS idx, unhex(value ->> 0) AS hash, value ->> 1 AS client_id,
                    value ->> 2 AS now, value ->> 3 AS idle_cutoff,
                    value ->> 4 AS absolute_cutoff
             FROM json_each(?1)),
         presented AS MATERIALIZED (
             SELECT j.idx, t.family_id FROM j JOIN refresh_tokens AS t ON t.token_hash = j.hash)
         UPDATE refresh_tokens SET consumed_at = j.now
         FROM j
         WHERE refresh_tokens.token_hash = j.hash AND refresh_tokens.consumed_at IS NULL
           AND EXISTS (SELECT 1 FROM refresh_families f
                       WHERE f.id = refresh_tokens.family_id AND f.revoked_at IS NULL
                         AND f.client_id = j.client_id AND f.last_used_at > j.idle_cutoff
                         AND f.created_at > j.absolute_cutoff
                         AND EXISTS (SELECT 1 FROM users u
                                     WHERE u.id = f.user_id AND u.disabled_at IS NULL))
           AND NOT EXISTS (SELECT 1 FROM presented AS p
                           WHERE p.family_id = refresh_tokens.family_id AND p.idx < j.idx)
         RETURNING token_hash, family_id",
    )
    .bind(serde_json::Value::Array(presented).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(classify)?;
    if consumed.is_empty() {
        return Ok(vec![None; batch.len()]);
    }
    let mut rotated: Vec<Option<&str>> = vec![None; batch.len()];
    for (hash, family_id) in &consumed {
        let job = batch
            .iter()
            .position(|job| job.presented[..] == hash[..])
            .ok_or_else(|| {
                StoreError::Corrupt("a batch consumed a token it was not given".into())
            })?;
        rotated[job] = Some(family_id);
    }
    let (successors, touches): (Vec<_>, Vec<_>) = batch
        .iter()
        .zip(&rotated)
        .filter_map(|(job, family_id)| Some((job, (*family_id)?)))
        .map(|(job, family_id)| {
            (
                serde_json::json!([
                    hex(&job.successor),
                    family_id,
                    hex(&job.presented),
                    ms(job.now)
                ]),
                serde_json::json!([family_id, ms(job.now), job.ip, job.user_agent]),
            )
        })
        .unzip();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, parent_hash, created_at)
         SELECT unhex(value ->> 0), value ->> 1, unhex(value ->> 2), value ->> 3
         FROM json_each(?1)",
    )
    .bind(serde_json::Value::Array(successors).to_string())
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    let families: Vec<FamilyRecord> = sqlx::query_as(
        "UPDATE refresh_families SET last_used_at = j.now,
                ip = COALESCE(j.ip, refresh_families.ip),
                user_agent = COALESCE(j.user_agent, refresh_families.user_agent)
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS now, value ->> 2 AS ip,
                      value ->> 3 AS user_agent
               FROM json_each(?1)) AS j
         WHERE refresh_families.id = j.id
         RETURNING id, user_id, client_id, scope, created_at",
    )
    .bind(serde_json::Value::Array(touches).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(classify)?;
    let mut infos = std::collections::HashMap::with_capacity(families.len());
    for record in families {
        infos.insert(record.id.clone(), record.info()?);
    }
    rotated
        .into_iter()
        .map(|family_id| {
            family_id
                .map(|id| {
                    let family = infos.get(id).cloned().ok_or_else(|| {
                        StoreError::Corrupt(format!("family {id} was not touched"))
                    })?;
                    Ok(RotateOutcome::Issued {
                        family,
                        replay: false,
                    })
                })
                .transpose()
        })
        .collect()
}

/// Rolls a batch back whole after a job failed in it, for a run job by job.
async fn roll_back_batch(
    tx: Transaction<'_, Sqlite>,
    e: &StoreError,
) -> Result<Option<Vec<Result<RotateOutcome, StoreError>>>, StoreError> {
    tracing::warn!(error = %e, "a rotation batch failed; running it again job by job");
    tx.rollback().await.map_err(classify)?;
    Ok(None)
}

/// Takes the write lock (`BEGIN IMMEDIATE`, which waits up to the busy timeout), then
/// keeps only the jobs whose callers still wait, and claims them: from here on their
/// callers wait for the answer.
async fn begin_claimed(
    writer: &SqlitePool,
    batch: &mut Vec<RotationJob>,
) -> Result<Transaction<'static, Sqlite>, StoreError> {
    let tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(classify)?;
    batch.retain(|job| job.ticket.claim());
    Ok(tx)
}

/// Runs `batch` in one `BEGIN IMMEDIATE` transaction: the fresh rotations first, all at
/// once (`rotate_fresh_batch`), then the other jobs one after the other. `None` when a
/// job failed: the batch was rolled back whole, for `attempt_isolated`.
async fn attempt_together(
    writer: &SqlitePool,
    batch: &mut Vec<RotationJob>,
) -> Result<Option<Vec<Result<RotateOutcome, StoreError>>>, StoreError> {
    let mut tx = begin_claimed(writer, batch).await?;
    let fresh = match rotate_fresh_batch(&mut tx, batch).await {
        Ok(fresh) => fresh,
        Err(e) => return roll_back_batch(tx, &e).await,
    };
    let mut results = Vec::with_capacity(batch.len());
    for (job, fresh) in batch.iter().zip(fresh) {
        let outcome = match fresh {
            Some(outcome) => outcome,
            None => match rotate_in(&mut tx, &job.request()).await {
                Ok(outcome) => outcome,
                Err(e) => return roll_back_batch(tx, &e).await,
            },
        };
        results.push(Ok(outcome));
    }
    tx.commit().await.map_err(classify)?;
    Ok(Some(results))
}

/// Runs `batch` in one `BEGIN IMMEDIATE` transaction, the jobs one after the other,
/// each in a savepoint, so a failing one rolls back alone: every job gets an answer.
async fn attempt_isolated(
    writer: &SqlitePool,
    batch: &mut Vec<RotationJob>,
) -> Result<Vec<Result<RotateOutcome, StoreError>>, StoreError> {
    let mut tx = begin_claimed(writer, batch).await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter() {
        let step: Result<_, sqlx::Error> = async {
            let mut savepoint = sqlx::Acquire::begin(&mut tx).await?;
            match rotate_in(&mut savepoint, &job.request()).await {
                Ok(outcome) => {
                    savepoint.commit().await?;
                    Ok(Ok(outcome))
                }
                Err(e) => {
                    savepoint.rollback().await?;
                    Ok(Err(e))
                }
            }
        }
        .await;
        // A savepoint that cannot be taken, released or rolled back: SQLite may have
        // rolled back the whole transaction by itself (a full disk), and going on would
        // commit the next jobs on their own while the batch answers an error. The
        // attempt ends here, with nothing committed.
        results.push(step.map_err(classify)?);
    }
    tx.commit().await.map_err(classify)?;
    Ok(results)
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
        record
            .map(|r| {
                Ok(UserWithHash {
                    user: r.user()?,
                    disabled: r.disabled_at.is_some(),
                    password_hash: r.password_hash,
                })
            })
            .transpose()
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }
}

fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        sqlx::Error::Database(db)
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)) =>
        {
            StoreError::Unavailable(e)
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Other(e),
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

fn uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

#[derive(FromRow)]
struct UserRecord {
    id: String,
    email: String,
    password_hash: String,
    created_at: i64,
    disabled_at: Option<i64>,
}

impl UserRecord {
    fn user(&self) -> Result<User, StoreError> {
        Ok(User {
            id: uuid(&self.id)?,
            email: self.email.clone(),
            created_at: from_ms(self.created_at)?,
        })
    }
}

#[derive(FromRow)]
struct FamilyRecord {
    id: String,
    user_id: String,
    client_id: String,
    scope: Option<String>,
    created_at: i64,
}

impl FamilyRecord {
    fn info(self) -> Result<FamilyInfo, StoreError> {
        Ok(FamilyInfo {
            id: uuid(&self.id)?,
            user_id: uuid(&self.user_id)?,
            client_id: self.client_id,
            scope: self.scope,
            created_at: from_ms(self.created_at)?,
        })
    }
}

/// A presented token that the conditional update did not rotate, with its family.
#[derive(FromRow)]
struct PresentedRecord {
    #[sqlx(flatten)]
    family: FamilyRecord,
    last_used_at: i64,
    revoked_at: Option<i64>,
    consumed_at: Option<i64>,
    successor_unused: bool,
    user_disabled: bool,
}

const FAMILY_COLUMNS: &str = "f.id, f.user_id, f.client_id, f.scope, f.created_at";

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.checkpointer.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(user.id.to_string())
        .bind(&user.email)
        .bind(password_hash)
        .bind(ms(user.created_at))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, StoreError> {
        self.user_where("email", email.to_owned()).await
    }

    async fn create_family(&self, f: &NewFamily) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if !insert_family(&mut tx, f).await? {
            tx.rollback().await.map_err(classify)?;
            return Ok(false);
        }
        if let Some(source) = &f.login_source {
            sqlx::query(
                "INSERT INTO login_sources (user_id, source, last_success_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, source) DO UPDATE SET last_success_at = excluded.last_success_at",
            )
            .bind(f.user_id.to_string())
            .bind(source)
            .bind(ms(f.created_at))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        insert_audit(
            &mut tx,
            &AuditEvent::login(f.created_at, f.user_id, f.id, &f.client_id, f.ip.as_deref()),
        )
        .await?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn rotate(&self, r: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        self.rotations.rotate(r).await
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let found: Option<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT f.id, f.client_id, f.revoked_at FROM refresh_tokens t
             JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = ?1",
        )
        .bind(&token[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
        let outcome = match found {
            None => RevokeOutcome::Unknown,
            Some((_, owner, _)) if owner != client_id => RevokeOutcome::OtherClient,
            Some((family_id, _, Some(_))) => RevokeOutcome::AlreadyRevoked(uuid(&family_id)?),
            Some((family_id, _, None)) => {
                revoke_in_tx(&mut tx, &family_id, RevokeReason::Logout, ms(now)).await?;
                RevokeOutcome::Revoked(family_info(&mut tx, &family_id).await?)
            }
        };
        tx.commit().await.map_err(classify)?;
        Ok(outcome)
    }

    async fn list_sessions(
        &self,
        user_id: Uuid,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<Session>, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let rows: Vec<(String, String, i64, i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT id, client_id, created_at, last_used_at, ip, user_agent
                 FROM refresh_families
                 WHERE user_id = ?1 AND revoked_at IS NULL
                   AND last_used_at > ?2 AND created_at > ?3
                 ORDER BY last_used_at DESC, id",
        )
        .bind(user_id.to_string())
        .bind(ms(idle_cutoff))
        .bind(ms(absolute_cutoff))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(
                |(id, client_id, created_at, last_used_at, ip, user_agent)| {
                    Ok(Session {
                        id: uuid(&id)?,
                        client_id,
                        created_at: from_ms(created_at)?,
                        last_used_at: from_ms(last_used_at)?,
                        ip,
                        user_agent,
                    })
                },
            )
            .collect()
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        which: SessionSelector,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = revoke_sessions_in_tx(&mut tx, user_id, which, reason, ms(now)).await?;
        tx.commit().await.map_err(classify)?;
        Ok(revoked)
    }

    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        family: &NewFamily,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE users SET password_hash = ?1
             WHERE id = ?2 AND password_hash = ?3 AND disabled_at IS NULL
               AND EXISTS (SELECT 1 FROM refresh_families
                           WHERE id = ?4 AND user_id = ?2 AND revoked_at IS NULL)",
        )
        .bind(change.new_hash)
        .bind(change.user_id.to_string())
        .bind(change.checked_hash)
        .bind(change.current.to_string())
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await.map_err(classify)?;
            return Ok(None);
        }
        let revoked = revoke_sessions_in_tx(
            &mut tx,
            change.user_id,
            SessionSelector::All,
            RevokeReason::PasswordChange,
            ms(now),
        )
        .await?;
        insert_family(&mut tx, family).await?;
        tx.commit().await.map_err(classify)?;
        Ok(Some(revoked))
    }

    async fn count_live_families(
        &self,
        policy: &RefreshPolicy,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(now);
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM refresh_families
             WHERE revoked_at IS NULL AND last_used_at > ?1 AND created_at > ?2",
        )
        .bind(ms(idle_cutoff))
        .bind(ms(absolute_cutoff))
        .fetch_one(&self.reader)
        .await
        .map_err(classify)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn find_user(&self, id: Uuid) -> Result<Option<UserWithHash>, StoreError> {
        self.user_where("id", id.to_string()).await
    }

    async fn set_role(
        &self,
        email: &str,
        role: &str,
        granted: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let user: Option<(String,)> = sqlx::query_as("SELECT id FROM users WHERE email = ?1")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
        let Some((user_id,)) = user else {
            return Ok(false);
        };
        let query = if granted {
            sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, role) DO NOTHING",
            )
            .bind(user_id)
            .bind(role)
            .bind(ms(now))
        } else {
            sqlx::query("DELETE FROM user_roles WHERE user_id = ?1 AND role = ?2")
                .bind(user_id)
                .bind(role)
        };
        query.execute(&mut *tx).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn has_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        let found: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM user_roles WHERE user_id = ?1 AND role = ?2")
                .bind(user_id.to_string())
                .bind(role)
                .fetch_optional(&self.reader)
                .await
                .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn set_disabled(
        &self,
        user_id: Uuid,
        disabled: bool,
        actor: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE users SET disabled_at = CASE WHEN ?2 THEN COALESCE(disabled_at, ?3) END
             WHERE id = ?1",
        )
        .bind(user_id.to_string())
        .bind(disabled)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        let revoked = if disabled {
            revoke_sessions_in_tx(
                &mut tx,
                user_id,
                SessionSelector::All,
                RevokeReason::UserDisabled,
                ms(now),
            )
            .await?
        } else {
            Vec::new()
        };
        insert_audit(
            &mut tx,
            &AuditEvent::user_disabled(now, user_id, disabled, actor),
        )
        .await?;
        tx.commit().await.map_err(classify)?;
        Ok(Some(revoked))
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_audit(&mut tx, event).await?;
        tx.commit().await.map_err(classify)
    }

    async fn sweep_audit(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE at < ?1")
            .bind(ms(before))
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    async fn known_login_source(
        &self,
        user_id: Uuid,
        source: &str,
        since: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM login_sources
             WHERE user_id = ?1 AND source = ?2 AND last_success_at >= ?3",
        )
        .bind(user_id.to_string())
        .bind(source)
        .bind(ms(since))
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn sweep_login_sources(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM login_sources WHERE last_success_at < ?1")
            .bind(ms(before))
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    async fn audit_events(
        &self,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        )> = sqlx::query_as(&format!(
            "SELECT at, kind, user_id, family_id, client_id, detail, actor_id FROM audit_events
             WHERE {} ORDER BY at DESC, id DESC LIMIT ?2",
            // One statement per case: SQLite answers `?1 IS NULL OR user_id = ?1` by
            // walking the whole `at` index for a user with few events (~130 ms at 100k).
            if user_id.is_some() {
                "user_id = ?1"
            } else {
                "?1 IS NULL"
            }
        ))
        .bind(user_id.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        let id = |v: Option<String>| v.as_deref().map(uuid).transpose();
        rows.into_iter()
            .map(
                |(at, kind, user_id, family_id, client_id, detail, actor_id)| {
                    Ok(AuditEvent {
                        at: from_ms(at)?,
                        kind: audit_kind(&kind)?,
                        user_id: id(user_id)?,
                        family_id: id(family_id)?,
                        client_id,
                        detail,
                        actor_id: id(actor_id)?,
                    })
                },
            )
            .collect()
    }

    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(Uuid, OffsetDateTime)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, revoked_at FROM refresh_families WHERE revoked_at >= ?1")
                .bind(ms(since))
                .fetch_all(&self.reader)
                .await
                .map_err(classify)?;
        rows.into_iter()
            .map(|(id, at)| Ok((uuid(&id)?, from_ms(at)?)))
            .collect()
    }

    async fn refresh_token_state(
        &self,
        token: &TokenHash,
    ) -> Result<Option<RefreshTokenState>, StoreError> {
        #[allow(clippy::type_complexity)]
        let row: Option<(
            String,
            String,
            String,
            Option<String>,
            i64,
            i64,
            bool,
            bool,
            i64,
            bool,
        )> = sqlx::query_as(
            "SELECT f.id, f.user_id, f.client_id, f.scope, f.created_at, f.last_used_at,
                    f.revoked_at IS NOT NULL, t.consumed_at IS NOT NULL, t.created_at,
                    u.disabled_at IS NOT NULL
             FROM refresh_tokens t
             JOIN refresh_families f ON f.id = t.family_id
             JOIN users u ON u.id = f.user_id
             WHERE t.token_hash = ?1",
        )
        .bind(&token[..])
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        row.map(
            |(
                id,
                user_id,
                client_id,
                scope,
                created_at,
                last_used,
                revoked,
                consumed,
                issued,
                disabled,
            )| {
                Ok(RefreshTokenState {
                    family: FamilyInfo {
                        id: uuid(&id)?,
                        user_id: uuid(&user_id)?,
                        client_id,
                        scope,
                        created_at: from_ms(created_at)?,
                    },
                    family_last_used_at: from_ms(last_used)?,
                    family_revoked: revoked,
                    consumed,
                    issued_at: from_ms(issued)?,
                    user_disabled: disabled,
                })
            },
        )
        .transpose()
    }

    async fn family_of(&self, token: &TokenHash) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_hash = ?1")
                .bind(&token[..])
                .fetch_optional(&self.reader)
                .await
                .map_err(classify)?;
        row.map(|(id,)| uuid(&id)).transpose()
    }

    async fn revoke_family(
        &self,
        family_id: Uuid,
        client_id: &str,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let owned: Option<(String,)> =
            sqlx::query_as("SELECT id FROM refresh_families WHERE id = ?1 AND client_id = ?2")
                .bind(family_id.to_string())
                .bind(client_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
        let revoked = match owned {
            Some((id,)) => revoke_in_tx(&mut tx, &id, reason, ms(now)).await?,
            None => false,
        };
        tx.commit().await.map_err(classify)?;
        Ok(revoked)
    }

    async fn session_user(
        &self,
        family_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let record: Option<UserRecord> = sqlx::query_as(
            "SELECT u.id, u.email, u.password_hash, u.created_at, u.disabled_at
             FROM refresh_families f JOIN users u ON u.id = f.user_id
             WHERE f.id = ?1 AND f.user_id = ?2 AND f.revoked_at IS NULL AND u.disabled_at IS NULL",
        )
        .bind(family_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        record.map(|r| r.user()).transpose()
    }

    async fn sweep(
        &self,
        policy: &RefreshPolicy,
        cutoff: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (idle_cutoff, absolute_cutoff) = policy.cutoffs(cutoff);
        // In chunks, each a write transaction of its own: one DELETE of a large backlog
        // held the single writer, and every rotation queued behind it, for seconds
        // (4-5 s for 70k families and their tokens).
        let mut total = 0;
        loop {
            let mut tx = self.begin_write().await?;
            let deleted = sqlx::query(
                "DELETE FROM refresh_families WHERE id IN (
                     SELECT id FROM refresh_families
                     WHERE revoked_at <= ?1 OR last_used_at <= ?2 OR created_at <= ?3
                     LIMIT ?4)",
            )
            .bind(ms(cutoff))
            .bind(ms(idle_cutoff))
            .bind(ms(absolute_cutoff))
            .bind(SWEEP_CHUNK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            tx.commit().await.map_err(classify)?;
            total += deleted;
            if deleted < SWEEP_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

/// Inserts the family and its first token; with `checked_password_hash`, only if the
/// user still has that hash and is not disabled (false otherwise, nothing written).
async fn insert_family(
    tx: &mut Transaction<'_, Sqlite>,
    f: &NewFamily,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO refresh_families (id, user_id, client_id, scope, created_at, last_used_at, user_agent, ip)
         SELECT ?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7
         WHERE ?8 IS NULL OR EXISTS (SELECT 1 FROM users
                                     WHERE id = ?2 AND disabled_at IS NULL
                                       AND password_hash = ?8)",
    )
    .bind(f.id.to_string())
    .bind(f.user_id.to_string())
    .bind(&f.client_id)
    .bind(&f.scope)
    .bind(ms(f.created_at))
    .bind(&f.user_agent)
    .bind(&f.ip)
    .bind(&f.checked_password_hash)
    .execute(&mut **tx)
    .await
    .map_err(classify)?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, created_at) VALUES (?1, ?2, ?3)",
    )
    .bind(&f.first_token[..])
    .bind(f.id.to_string())
    .bind(ms(f.created_at))
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(true)
}

async fn insert_audit(tx: &mut Transaction<'_, Sqlite>, e: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (at, kind, user_id, family_id, client_id, detail, actor_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(ms(e.at))
    .bind(e.kind.code())
    .bind(e.user_id.map(|u| u.to_string()))
    .bind(e.family_id.map(|u| u.to_string()))
    .bind(&e.client_id)
    .bind(&e.detail)
    .bind(e.actor_id.map(|u| u.to_string()))
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Revokes the chosen live sessions of a user, with an audit row each.
async fn revoke_sessions_in_tx(
    tx: &mut Transaction<'_, Sqlite>,
    user_id: Uuid,
    which: SessionSelector,
    reason: RevokeReason,
    now: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let (filter, id) = match which {
        SessionSelector::One(id) => ("id = ?4", Some(id.to_string())),
        SessionSelector::AllBut(id) => ("id <> ?4", Some(id.to_string())),
        SessionSelector::All => ("?4 IS NULL", None),
    };
    let revoked: Vec<(String, String)> = sqlx::query_as(&format!(
        "UPDATE refresh_families SET revoked_at = ?1, revoked_reason = ?2
         WHERE user_id = ?3 AND revoked_at IS NULL AND {filter}
         RETURNING id, client_id"
    ))
    .bind(now)
    .bind(reason.code())
    .bind(user_id.to_string())
    .bind(id)
    .fetch_all(&mut **tx)
    .await
    .map_err(classify)?;
    let mut ids = Vec::with_capacity(revoked.len());
    for (family_id, client_id) in &revoked {
        let family_id = uuid(family_id)?;
        let event =
            AuditEvent::family_revoked(from_ms(now)?, user_id, family_id, client_id, reason);
        insert_audit(tx, &event).await?;
        ids.push(family_id);
    }
    Ok(ids)
}

async fn touch_family(
    tx: &mut Transaction<'_, Sqlite>,
    family_id: &str,
    now: i64,
    r: &RotateRequest<'_>,
) -> Result<FamilyInfo, StoreError> {
    let record: FamilyRecord = sqlx::query_as(
        "UPDATE refresh_families SET last_used_at = ?1,
                ip = COALESCE(?3, ip), user_agent = COALESCE(?4, user_agent)
         WHERE id = ?2
         RETURNING id, user_id, client_id, scope, created_at",
    )
    .bind(now)
    .bind(family_id)
    .bind(r.ip)
    .bind(r.user_agent)
    .fetch_one(&mut **tx)
    .await
    .map_err(classify)?;
    record.info()
}

async fn family_info(
    tx: &mut Transaction<'_, Sqlite>,
    family_id: &str,
) -> Result<FamilyInfo, StoreError> {
    let record: FamilyRecord = sqlx::query_as(&format!(
        "SELECT {FAMILY_COLUMNS} FROM refresh_families f WHERE f.id = ?1"
    ))
    .bind(family_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(classify)?;
    record.info()
}

/// Revokes a live family and records the event; false when it was already revoked.
async fn revoke_in_tx(
    tx: &mut Transaction<'_, Sqlite>,
    family_id: &str,
    reason: RevokeReason,
    now: i64,
) -> Result<bool, StoreError> {
    let revoked: Option<(String, String)> = sqlx::query_as(
        "UPDATE refresh_families SET revoked_at = ?1, revoked_reason = ?2
         WHERE id = ?3 AND revoked_at IS NULL RETURNING user_id, client_id",
    )
    .bind(now)
    .bind(reason.code())
    .bind(family_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(classify)?;
    let Some((user_id, client_id)) = revoked else {
        return Ok(false);
    };
    let event = AuditEvent::family_revoked(
        from_ms(now)?,
        uuid(&user_id)?,
        uuid(family_id)?,
        &client_id,
        reason,
    );
    insert_audit(tx, &event).await?;
    Ok(true)
}

/// One rotation inside the batch's transaction `tx` (a savepoint of it): the
/// conditional update decides; nothing here commits.
async fn rotate_in(
    tx: &mut Transaction<'_, Sqlite>,
    r: &RotateRequest<'_>,
) -> Result<RotateOutcome, StoreError> {
    let now = ms(r.now);
    let (idle_cutoff, absolute_cutoff) = r.policy.cutoffs(r.now);

    // The conditional update decides: only a live token of a live family of this
    // client is consumed, and only once. The checks are correlated `EXISTS`, looked up
    // by primary key: SQLite answers `family_id IN (SELECT ... WHERE user_id IN
    // (SELECT id FROM users ...))` by listing every live family of every user first,
    // 100 ms a rotation at 100k users.
    let consumed: Option<(String,)> = sqlx::query_as(
        "UPDATE refresh_tokens SET consumed_at = ?1
         WHERE token_hash = ?2 AND consumed_at IS NULL
           AND EXISTS (SELECT 1 FROM refresh_families f
                       WHERE f.id = refresh_tokens.family_id AND f.revoked_at IS NULL
                         AND f.client_id = ?3 AND f.last_used_at > ?4 AND f.created_at > ?5
                         AND EXISTS (SELECT 1 FROM users u
                                     WHERE u.id = f.user_id AND u.disabled_at IS NULL))
         RETURNING family_id",
    )
    .bind(now)
    .bind(&r.presented[..])
    .bind(r.client_id)
    .bind(ms(idle_cutoff))
    .bind(ms(absolute_cutoff))
    .fetch_optional(&mut **tx)
    .await
    .map_err(classify)?;

    if let Some((family_id,)) = consumed {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, parent_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&r.successor[..])
        .bind(&family_id)
        .bind(&r.presented[..])
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
        let family = touch_family(tx, &family_id, now, r).await?;
        return Ok(RotateOutcome::Issued {
            family,
            replay: false,
        });
    }

    // Not rotatable: find out why, under the same write lock.
    let presented: Option<PresentedRecord> = sqlx::query_as(&format!(
        "SELECT {FAMILY_COLUMNS}, f.last_used_at, f.revoked_at, t.consumed_at,
                EXISTS (SELECT 1 FROM users u
                        WHERE u.id = f.user_id AND u.disabled_at IS NOT NULL) AS user_disabled,
                EXISTS (SELECT 1 FROM refresh_tokens s
                        WHERE s.parent_hash = t.token_hash AND s.token_hash = ?2
                          AND s.consumed_at IS NULL) AS successor_unused
         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
         WHERE t.token_hash = ?1"
    ))
    .bind(&r.presented[..])
    .bind(&r.successor[..])
    .fetch_optional(&mut **tx)
    .await
    .map_err(classify)?;
    let Some(p) = presented else {
        return Ok(RotateOutcome::Refused {
            rejection: GrantRejection::Unknown,
            family: None,
            revoked: None,
        });
    };
    let state = PresentedToken {
        client_id: p.family.client_id.clone(),
        family_created_at: from_ms(p.family.created_at)?,
        family_last_used_at: from_ms(p.last_used_at)?,
        // A disabled user's sessions are as good as revoked.
        family_revoked: p.revoked_at.is_some() || p.user_disabled,
        consumed_at: p.consumed_at.map(from_ms).transpose()?,
        successor_unused: p.successor_unused,
    };
    let family_id = p.family.id.clone();
    let outcome = match r.policy.decide(r.client_id, &state, r.now) {
        Decision::GraceReplay => {
            let family = touch_family(tx, &family_id, now, r).await?;
            RotateOutcome::Issued {
                family,
                replay: true,
            }
        }
        Decision::RevokeFamily(reason) => {
            let revoked_now = revoke_in_tx(tx, &family_id, reason, now).await?;
            refused_after_revoke(reason, revoked_now, p.family.info()?)
        }
        Decision::Refuse(rejection) => RotateOutcome::Refused {
            rejection,
            family: Some(p.family.info()?),
            revoked: None,
        },
        // The update above would have consumed it: the rules and the SQL disagree.
        Decision::Rotate => {
            return Err(StoreError::Corrupt(
                "rotatable token not matched by the conditional update".into(),
            ));
        }
    };
    Ok(outcome)
}
