use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, TestApp, assert_invalid_grant, eventually, patient, spawn_app, spawn_app_with, tokens,
};

const PARALLEL: usize = 50;

/// Fires `parallel` refreshes of one token at once; returns (status, body) of each.
async fn race(app: &Arc<TestApp>, token: &str, parallel: usize) -> Vec<(StatusCode, Value)> {
    race_across(std::slice::from_ref(app), token, parallel).await
}

/// Fires `parallel` refreshes of one token at once, spread round-robin over `apps`
/// (instances sharing one database); returns (status, body) of each.
pub async fn race_across(
    apps: &[Arc<TestApp>],
    token: &str,
    parallel: usize,
) -> Vec<(StatusCode, Value)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(parallel));
    let tasks: Vec<_> = (0..parallel)
        .map(|i| {
            let app = Arc::clone(&apps[i % apps.len()]);
            let token = token.to_owned();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                // Separate connections, released together.
                let http = reqwest::Client::new();
                barrier.wait().await;
                let resp = http
                    .post(app.url("/oauth/token"))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("client_id", "dev"),
                        ("refresh_token", &token),
                    ])
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

scenario! {
    async fn fifty_simultaneous_refreshes_yield_one_successor_with_grace(backend) {
        let app = Arc::new(spawn_app_with(backend, patient).await);
        let (_, first) = app.signed_in().await;
        let results = race(&app, &first.refresh, PARALLEL).await;
        for (status, body) in &results {
            assert_eq!(
                *status,
                StatusCode::OK,
                "every racer is answered (one rotation, the rest grace): {body}"
            );
        }
        let successors: HashSet<&str> = results
            .iter()
            .map(|(_, b)| b["refresh_token"].as_str().unwrap())
            .collect();
        assert_eq!(successors.len(), 1, "exactly one distinct successor");
        let successor = successors.into_iter().next().unwrap().to_owned();
        // The family is live: the successor rotates normally.
        let next = tokens(app.refresh(&successor).await).await;
        assert_eq!(app.me(&next.access).await.status(), StatusCode::OK);
    }
}

scenario! {
    async fn fifty_simultaneous_refreshes_without_grace_give_one_success_and_revoke(backend) {
        let app = Arc::new(spawn_app_with(backend, |s| {
            patient(s);
            s.set_grace_period(Duration::ZERO);
        }).await);
        let (_, first) = app.signed_in().await;
        let results = race(&app, &first.refresh, PARALLEL).await;
        let ok: Vec<_> = results
            .iter()
            .filter(|(s, _)| *s == StatusCode::OK)
            .collect();
        assert_eq!(ok.len(), 1, "exactly one success");
        let mut reasons = Vec::new();
        for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                body["error"], "invalid_grant",
                "no 'database is locked' or 5xx: {body}"
            );
            reasons.push(body["error_reason"].as_str().unwrap().to_owned());
        }
        // The first loser detects the reuse and revokes; the later ones find it revoked.
        assert_eq!(
            reasons.iter().filter(|r| *r == "reused").count(),
            1,
            "{reasons:?}"
        );
        assert!(
            reasons.iter().all(|r| r == "reused" || r == "revoked"),
            "{reasons:?}"
        );
        let winner = ok[0].1["refresh_token"].as_str().unwrap();
        assert_invalid_grant(app.refresh(winner).await, "revoked").await;
    }
}

scenario! {
    async fn many_families_rotating_in_parallel_all_succeed(backend) {
        let app = Arc::new(spawn_app_with(backend, patient).await);
        let mut families = Vec::new();
        for _ in 0..4 {
            families.push(app.signed_in().await.1.refresh);
        }
        let tasks: Vec<_> = families
            .into_iter()
            .map(|mut token| {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    for _ in 0..25 {
                        token = tokens(app.refresh(&token).await).await.refresh;
                    }
                    token
                })
            })
            .collect();
        for t in tasks {
            let last = t.await.unwrap();
            tokens(app.refresh(&last).await).await;
        }
    }
}

/// Issue 4: 200 parallel refreshes of one token on PostgreSQL, with and without grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_refreshes_on_postgres_give_one_successor() {
    let app = Arc::new(spawn_app_with(Backend::Postgres, patient).await);
    let (_, first) = app.signed_in().await;
    let results = race(&app, &first.refresh, 200).await;
    for (status, body) in &results {
        assert_eq!(
            *status,
            StatusCode::OK,
            "no 5xx, no serialization failure: {body}"
        );
    }
    let successors: HashSet<&str> = results
        .iter()
        .map(|(_, b)| b["refresh_token"].as_str().unwrap())
        .collect();
    assert_eq!(successors.len(), 1, "exactly one successor");
    tokens(app.refresh(successors.into_iter().next().unwrap()).await).await;

    let app = Arc::new(
        spawn_app_with(Backend::Postgres, |s| {
            patient(s);
            s.set_grace_period(Duration::ZERO);
        })
        .await,
    );
    let (_, first) = app.signed_in().await;
    let results = race(&app, &first.refresh, 200).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 1, "exactly one success");
    let reasons: Vec<&str> = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::BAD_REQUEST, "{b}");
            b["error_reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "reused").count(),
        1,
        "{reasons:?}"
    );
}

/// Four chains rotating `ROTATIONS` times each as fast as they can; the WAL's largest
/// size meanwhile.
async fn rotation_burst(app: &Arc<TestApp>, wal: &std::path::Path) -> u64 {
    const CHAINS: usize = 4;
    const ROTATIONS: usize = 200;
    let chains: Vec<_> = (0..CHAINS)
        .map(|_| {
            let (app, wal) = (Arc::clone(app), wal.to_owned());
            tokio::spawn(async move {
                let (_, mut t) = app.signed_in().await;
                let mut largest = 0;
                for _ in 0..ROTATIONS {
                    t = tokens(app.refresh(&t.refresh).await).await;
                    largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                }
                largest
            })
        })
        .collect();
    let mut largest = 0;
    for chain in chains {
        largest = largest.max(chain.await.unwrap());
    }
    largest
}

/// Whether every frame in the WAL has been copied into the database file: the
/// wal-index header's `mxFrame` (offset 16) against the checkpoint's `nBackfill`
/// (offset 96), as SQLite's file-format document lays out the `-shm` file.
fn wal_checkpointed(shm: &std::path::Path) -> bool {
    let bytes = std::fs::read(shm).unwrap();
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    word(16) == word(96)
}

/// The SQLite writer leaves checkpoints to a task of its own (a checkpoint's fsyncs
/// would stall every rotation queued behind it). That task must catch up once the load
/// pauses, so the writer's next commit starts the WAL over: without it the WAL would
/// grow by every commit until the writer's own 32 MiB backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_wal_is_checkpointed_off_the_writer_and_starts_over_after_a_burst() {
    let app = Arc::new(spawn_app_with(Backend::Sqlite, patient).await);
    let db = app
        .settings
        .database_url
        .expose()
        .strip_prefix("sqlite://")
        .unwrap();
    let (wal, shm) = (
        std::path::PathBuf::from(format!("{db}-wal")),
        std::path::PathBuf::from(format!("{db}-shm")),
    );
    let first = rotation_burst(&app, &wal).await;
    let frames = wal_frames(&shm);
    eventually("the checkpointer catches up with the WAL", || async {
        wal_checkpointed(&shm)
    })
    .await;
    // The writer's next commits start the WAL over: its frame counter begins again
    // instead of appending to the burst's (the file keeps its size, and is rewritten
    // from its start). A burst is short now (a rotation writes one row), so the
    // checkpointer may or may not restart the WAL within a burst: the counter, not the
    // file's size, tells whether it started over.
    app.signed_in().await;
    let restarted = wal_frames(&shm);
    let second = rotation_burst(&app, &wal).await;
    println!(
        "largest WAL: {first} bytes in the first burst, {second} in the second; \
         {frames} frames after the first, {restarted} after the next commits"
    );
    // Started over: a dozen frames (a registration and a login); went on: the burst's
    // hundreds and the dozen (under 32 only if the burst itself ended just after a
    // restart within it: the WAL started over then).
    assert!(
        restarted < 32,
        "the WAL went on from {frames} frames to {restarted} instead of starting over"
    );
}

/// How many frames the WAL holds: the wal-index header's `mxFrame` (offset 16).
fn wal_frames(shm: &std::path::Path) -> u32 {
    let bytes = std::fs::read(shm).unwrap();
    u32::from_le_bytes(bytes[16..20].try_into().unwrap())
}

scenario! {
    /// A rotation that fails in the database (here a trigger refuses to update its
    /// family) fails alone: the rotations that ran with it, in the same SQLite batch,
    /// still commit, and its own family is left where it was.
    async fn a_rotation_that_fails_in_the_database_fails_alone(backend) {
        use crate::helpers::store_level::{Answer, all_at_once, answer, family, rotate, user_and_store};
        use token_issuer::store::TokenRef;
        const FAMILIES: usize = 32;
        let app = spawn_app(backend).await;
        let (user_id, store) = user_and_store(&app).await;
        let now = time::OffsetDateTime::now_utc();
        let mut firsts = Vec::new();
        for _ in 0..FAMILIES {
            firsts.push(family(&*store, user_id, now).await);
        }
        // Every fourth family is marked, and a trigger refuses to update a marked one.
        let fails = |i: usize| i.is_multiple_of(4);
        for i in (0..FAMILIES).filter(|&i| fails(i)) {
            let TokenRef::Minted { family, .. } = firsts[i] else { panic!("a minted token") };
            app.exec_sql(&format!("UPDATE refresh_families SET scope = 'fail' WHERE id = '{family}'")).await;
        }
        let (create, drop) = match backend {
            Backend::Sqlite => (
                "CREATE TRIGGER staged_failure BEFORE UPDATE OF generation ON refresh_families
                 WHEN NEW.scope = 'fail' BEGIN SELECT RAISE(ABORT, 'staged failure'); END",
                "DROP TRIGGER staged_failure",
            ),
            Backend::Postgres => (
                "CREATE FUNCTION staged_failure() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'staged failure'; END $$;
                 CREATE TRIGGER staged_failure BEFORE UPDATE ON refresh_families FOR EACH ROW
                 WHEN (NEW.scope = 'fail') EXECUTE FUNCTION staged_failure()",
                "DROP TRIGGER staged_failure ON refresh_families",
            ),
        };
        for statement in create.split_inclusive("END $$;") {
            app.exec_sql(statement.trim_end_matches(';')).await;
        }
        let rotations = (0..FAMILIES).map(|i| (firsts[i], "dev")).collect();
        let answers: Vec<Answer> = all_at_once(&store, rotations, now).await.iter().map(answer).collect();
        let expected: Vec<Answer> = (0..FAMILIES)
            .map(|i| if fails(i) { Answer::Failed } else { Answer::Issued { replay: false } })
            .collect();
        assert_eq!(answers, expected);
        // The failed rotations changed nothing: each token rotates now.
        app.exec_sql(drop).await;
        for i in (0..FAMILIES).filter(|&i| fails(i)) {
            let outcome = rotate(&*store, firsts[i], "dev", now).await;
            assert_eq!(answer(&outcome), Answer::Issued { replay: false });
        }
        store.close().await;
    }
}

scenario! {
    /// Rotations of every kind arriving together (on SQLite they share batches: the
    /// fresh ones run all at once, the others after) are each answered as alone.
    async fn rotations_of_every_kind_at_once_are_each_answered_as_alone(backend) {
        use crate::helpers::store_level::{Answer, all_at_once, answer, family, rotate, successor, unknown_token, user_and_store};
        use token_issuer::domain::family::{GrantRejection, RevokeReason};
        let app = spawn_app(backend).await;
        let (user_id, store) = user_and_store(&app).await;
        let now = time::OffsetDateTime::now_utc();
        let store_ = &*store;
        let (mut rotations, mut expected) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            // Fresh.
            rotations.push((family(store_, user_id, now).await, "dev"));
            expected.push(Answer::Issued { replay: false });
            // A retry within the grace period.
            let old = family(store_, user_id, now).await;
            rotate(store_, old, "dev", now).await.unwrap();
            rotations.push((old, "dev"));
            expected.push(Answer::Issued { replay: true });
            // A token whose successor was used too: reuse.
            let old = family(store_, user_id, now).await;
            rotate(store_, old, "dev", now).await.unwrap();
            rotate(store_, successor(old), "dev", now).await.unwrap();
            rotations.push((old, "dev"));
            expected.push(Answer::Refused(GrantRejection::Reused, Some(RevokeReason::Reuse)));
            // Another client's token.
            rotations.push((family(store_, user_id, now).await, "other"));
            expected.push(Answer::Refused(
                GrantRejection::Revoked,
                Some(RevokeReason::ClientMismatch),
            ));
            // A family past its absolute lifetime.
            let long_ago = now - crate::helpers::store_level::POLICY.absolute_lifetime;
            rotations.push((family(store_, user_id, long_ago).await, "dev"));
            expected.push(Answer::Refused(GrantRejection::Expired, None));
            // No such token.
            rotations.push((unknown_token(), "dev"));
            expected.push(Answer::Refused(GrantRejection::Unknown, None));
        }
        // One fresh token presented twice: one rotation and one grace replay, in either
        // order.
        let twice = family(store_, user_id, now).await;
        rotations.push((twice, "dev"));
        rotations.push((twice, "dev"));
        let mut answers: Vec<Answer> =
            all_at_once(&store, rotations, now).await.iter().map(answer).collect();
        let mut pair = answers.split_off(expected.len());
        assert_eq!(answers, expected);
        pair.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(pair, [Answer::Issued { replay: false }, Answer::Issued { replay: true }]);
        store.close().await;
    }
}

/// Two tabs: one retries the old token within the grace period, the other already uses
/// the new one, in that order. SQLite queues rotations for its batches in arrival
/// order, and even when the two share a batch with other rotations (whose fresh tokens
/// are rotated all at once) they are answered in that order: a grace replay, then a
/// rotation, and the session lives on. (PostgreSQL runs them side by side: there the
/// row lock decides, whatever the arrival order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grace_retry_then_the_new_token_in_one_sqlite_batch_keeps_the_session() {
    use crate::helpers::store_level::{Answer, answer, family, rotate, successor, user_and_store};
    let app = spawn_app(Backend::Sqlite).await;
    let (user_id, store) = user_and_store(&app).await;
    let now = time::OffsetDateTime::now_utc();
    let store_ = &*store;
    for _ in 0..5 {
        let old = family(store_, user_id, now).await;
        let new = successor(old);
        rotate(store_, old, "dev", now).await.unwrap();
        let mut others = Vec::new();
        for _ in 0..16 {
            others.push(family(store_, user_id, now).await);
        }
        // Polled in order, so queued in order: the others first (the batch task
        // picks up the first while the rest queue), then the retry, then the new token.
        let mut rotations: Vec<_> = others
            .iter()
            .map(|&t| Box::pin(rotate(store_, t, "dev", now)))
            .collect();
        rotations.push(Box::pin(rotate(store_, old, "dev", now)));
        rotations.push(Box::pin(rotate(store_, new, "dev", now)));
        let answers: Vec<Answer> = futures::future::join_all(rotations)
            .await
            .iter()
            .map(answer)
            .collect();
        assert_eq!(
            answers[16..],
            [
                Answer::Issued { replay: true },
                Answer::Issued { replay: false }
            ]
        );
        let after = rotate(store_, successor(new), "dev", now).await;
        assert_eq!(answer(&after), Answer::Issued { replay: false });
    }
    store.close().await;
}
