//! The SQLite group commit: concurrent rotations share one write transaction.

use sqlx::{Sqlite, SqlitePool, Transaction};
use time::OffsetDateTime;

use super::rows::{GenerationRecord, classify, ms};
use crate::domain::family::RefreshPolicy;
use crate::store::engine::rotation::{self, Settled};
use crate::store::{RotateOutcome, RotateRequest, StoreError, Ticket, TokenRef};

/// A rotation waiting for the next batch, with everything it borrows owned.
struct RotationJob {
    presented: TokenRef,
    client_id: String,
    now: OffsetDateTime,
    policy: RefreshPolicy,
    ip: Option<String>,
    user_agent: Option<String>,
    dpop_jkt: Option<String>,
    ticket: Ticket,
    reply: tokio::sync::oneshot::Sender<Result<RotateOutcome, StoreError>>,
}

impl RotationJob {
    fn request(&self) -> RotateRequest<'_> {
        RotateRequest {
            presented: self.presented,
            client_id: &self.client_id,
            now: self.now,
            policy: self.policy,
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            dpop_jkt: self.dpop_jkt.as_deref(),
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
/// the writer waited for the lock is never followed by its rotation. One commit serves
/// many rotations, so the writer's per-transaction cost is paid once per batch.
pub(super) struct Rotations {
    queue: tokio::sync::mpsc::Sender<RotationJob>,
}

const BATCH_MAX: usize = 64;

impl Rotations {
    pub(super) fn start(writer: SqlitePool) -> Self {
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

    pub(super) async fn rotate(&self, r: &RotateRequest<'_>) -> Result<RotateOutcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = RotationJob {
            presented: r.presented,
            client_id: r.client_id.to_owned(),
            now: r.now,
            policy: r.policy,
            ip: r.ip.map(str::to_owned),
            user_agent: r.user_agent.map(str::to_owned),
            dpop_jkt: r.dpop_jkt.map(str::to_owned),
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

/// The fresh rotations of a batch in one statement, whatever its size: every family
/// whose live generation a job presents advances (the conditional update of
/// `Steps::rotate_fresh`, for many jobs at once). A job this does not rotate (in grace,
/// reused, ahead, revoked, expired, unknown, of the earlier format, or not the first of
/// its family in the batch) is left `None`, for `rotate_in` to decide afterwards under
/// the same lock.
///
/// The answers are those of the jobs run one by one in arrival order: a job is left
/// out when an earlier job of the batch presented a token of its family (two tabs: one
/// retries the old token within the grace period, the other already uses the new one;
/// run new-first, the retry would look like reuse), and rotations of different families
/// do not touch each other's rows. Fewer statements is the point: each is a round trip
/// to SQLite's thread and two thread wake-ups, which were most of the writer's time.
async fn rotate_fresh_batch(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &[RotationJob],
) -> Result<Vec<Option<RotateOutcome>>, StoreError> {
    // Up to the first token of the earlier format: the jobs after it are decided one by
    // one (`rotate_in`), in arrival order, whatever family it turns out to be of.
    let minted = batch
        .iter()
        .position(|job| matches!(job.presented, TokenRef::Legacy(_)))
        .unwrap_or(batch.len());
    let jobs: Vec<serde_json::Value> = batch[..minted]
        .iter()
        .enumerate()
        .filter_map(|(idx, job)| {
            let TokenRef::Minted { family, generation } = job.presented else {
                return None;
            };
            let generation = i64::try_from(generation).ok()?;
            let (idle_cutoff, absolute_cutoff) = job.policy.cutoffs(job.now);
            Some(serde_json::json!([
                idx,
                family.to_string(),
                generation,
                job.client_id,
                ms(job.now),
                ms(idle_cutoff),
                ms(absolute_cutoff),
                job.ip,
                job.user_agent,
                job.dpop_jkt
            ]))
        })
        .collect();
    if jobs.is_empty() {
        return Ok(vec![None; batch.len()]);
    }
    let advanced: Vec<GenerationRecord> = sqlx::query_as(concat!(
        "WITH j AS MATERIALIZED (
             SELECT value ->> 0 AS idx, value ->> 1 AS id, value ->> 2 AS generation,
                    value ->> 3 AS client_id, value ->> 4 AS now,
                    value ->> 5 AS idle_cutoff, value ->> 6 AS absolute_cutoff,
                    value ->> 7 AS ip, value ->> 8 AS user_agent,
                    value ->> 9 AS dpop_jkt
             FROM json_each(?1))
         UPDATE refresh_families
            SET generation = refresh_families.generation + 1, generation_issued_at = j.now,
                last_used_at = j.now,
                ip = COALESCE(j.ip, refresh_families.ip),
                user_agent = COALESCE(j.user_agent, refresh_families.user_agent)
         FROM j
         WHERE refresh_families.id = j.id AND refresh_families.generation = j.generation
           AND refresh_families.revoked_at IS NULL
           AND refresh_families.client_id = j.client_id
           AND refresh_families.last_used_at > j.idle_cutoff
           AND refresh_families.created_at > j.absolute_cutoff
           AND EXISTS (SELECT 1 FROM users u
                       WHERE u.id = refresh_families.user_id AND u.disabled_at IS NULL)
           AND (refresh_families.dpop_jkt IS NULL OR refresh_families.dpop_jkt = j.dpop_jkt)
           AND NOT EXISTS (SELECT 1 FROM j AS e WHERE e.id = j.id AND e.idx < j.idx)
           AND NOT ",
        epoch_revoked!("refresh_families"),
        "
         RETURNING id, user_id, client_id, scope, created_at, dpop_jkt, generation"
    ))
    .bind(serde_json::Value::Array(jobs).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(classify)?;
    // At most one job a family advanced: its first in the batch (SQLite's RETURNING
    // names only the updated table, so the job is found again by its family).
    let mut outcomes = vec![None; batch.len()];
    for record in advanced {
        let (family, generation) = record.advanced()?;
        let idx = batch[..minted]
            .iter()
            .position(
                |job| matches!(job.presented, TokenRef::Minted { family: f, .. } if f == family.id),
            )
            .ok_or_else(|| StoreError::Corrupt("a batch advanced a job it was not given".into()))?;
        outcomes[idx] = Some(RotateOutcome::Issued {
            family,
            generation,
            replay: false,
            moved_from: None,
        });
    }
    Ok(outcomes)
}

/// One rotation under the batch's write lock, by the engine's rules.
async fn rotate_in(
    tx: &mut Transaction<'_, Sqlite>,
    r: &RotateRequest<'_>,
) -> Result<RotateOutcome, StoreError> {
    match rotation::rotate(tx, r).await? {
        Settled::Done(outcome) => Ok(outcome),
        // Nothing changes under the write lock between the update and the lookup: the
        // rules and the SQL disagree.
        Settled::Rotatable => Err(StoreError::Corrupt(
            "rotatable token not matched by the conditional update".into(),
        )),
    }
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
