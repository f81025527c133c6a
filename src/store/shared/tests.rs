//! The shared state's unit tests, on the in-process version.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::sqlite::SqliteStore;

async fn in_process() -> (SharedState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::connect(&url, Duration::from_secs(2))
        .await
        .unwrap();
    let shared = SharedState::new(None, Arc::new(store), Duration::from_secs(60));
    (shared, dir)
}

const TWO_PER_MINUTE: RateLimit = RateLimit {
    max: 2,
    window: Duration::from_secs(60),
};

#[tokio::test]
async fn local_limits_count_per_subject_and_window() {
    let (shared, _dir) = in_process().await;
    let hit = |subject: &'static str| shared.hit(LimitKind::LoginIp, subject, TWO_PER_MINUTE);
    assert!(hit("10.0.0.1").await.is_ok());
    assert!(hit("10.0.0.1").await.is_ok());
    let retry = hit("10.0.0.1").await.unwrap_err();
    assert!(retry > Duration::from_secs(58) && retry <= Duration::from_secs(60));
    assert!(hit("10.0.0.2").await.is_ok());
    let other_kind = shared.hit(LimitKind::LoginAccount, "10.0.0.1", TWO_PER_MINUTE);
    assert!(other_kind.await.is_ok());
    // One IPv6 host holds a /64: its addresses share a counter.
    assert!(hit("2001:db8::1").await.is_ok());
    assert!(hit("2001:db8::ffff:2").await.is_ok());
    assert!(hit("2001:db8::3").await.is_err());
    assert!(hit("2001:db8:0:1::1").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takes_are_atomic_and_can_be_given_back() {
    let (shared, _dir) = in_process().await;
    let shared = Arc::new(shared);
    let limit = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                shared
                    .take(LimitKind::LoginAccount, "a@example.com", limit)
                    .await
            })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        if let Ok(t) = task.await.unwrap() {
            taken.push(t);
        }
    }
    assert_eq!(taken.len(), 10, "forty at once, ten taken");
    // A success gives its attempt back: one more may be taken, not two.
    shared.give_back(taken.pop().unwrap()).await;
    let take = || shared.take(LimitKind::LoginAccount, "a@example.com", limit);
    assert!(take().await.is_ok());
    assert!(take().await.is_err());
}

async fn hit(shared: &SharedState, subject: String) -> Result<(), Duration> {
    shared
        .hit(LimitKind::LoginIp, &subject, TWO_PER_MINUTE)
        .await
}

#[tokio::test]
async fn a_full_table_keeps_subjects_over_their_limit_and_drops_the_oldest_others() {
    let (mut shared, _dir) = in_process().await;
    shared.local.windows_max = 10;
    // Five attackers use up their budget; five others come once each.
    for i in 0..5 {
        for _ in 0..3 {
            let _ = hit(&shared, format!("10.0.0.{i}")).await;
        }
    }
    for i in 0..5 {
        assert!(hit(&shared, format!("10.0.1.{i}")).await.is_ok());
    }
    // The table is full: newcomers push out the oldest of the others, never an
    // attacker, who stays refused.
    for i in 0..20 {
        assert!(hit(&shared, format!("10.0.2.{i}")).await.is_ok());
    }
    for i in 0..5 {
        assert!(
            hit(&shared, format!("10.0.0.{i}")).await.is_err(),
            "an attacker over the limit was let through by a full table"
        );
    }
    // Subjects of one kind never push out another kind's: an account's window
    // survives a flood of new addresses.
    let (mut shared, _dir3) = in_process().await;
    shared.local.windows_max = 10;
    let account = RateLimit {
        max: 3,
        window: Duration::from_secs(60),
    };
    for _ in 0..2 {
        assert!(
            shared
                .hit(LimitKind::LoginAccount, "a@example.com", account)
                .await
                .is_ok()
        );
    }
    for i in 0..50 {
        let _ = hit(&shared, format!("10.0.5.{i}")).await;
    }
    assert!(
        shared
            .hit(LimitKind::LoginAccount, "a@example.com", account)
            .await
            .is_ok()
    );
    assert!(
        shared
            .hit(LimitKind::LoginAccount, "a@example.com", account)
            .await
            .is_err()
    );
    // A table full of subjects over their limit refuses a newcomer rather than
    // let it through uncounted.
    let (mut shared, _dir2) = in_process().await;
    shared.local.windows_max = 3;
    for i in 0..3 {
        for _ in 0..2 {
            assert!(hit(&shared, format!("10.0.3.{i}")).await.is_ok());
        }
    }
    assert!(hit(&shared, "10.0.4.1".to_owned()).await.is_err());
}

#[tokio::test]
async fn without_redis_sessions_are_cached_until_revoked_here() {
    let (shared, _dir) = in_process().await;
    let sid = Uuid::new_v4();
    let user = User {
        id: Uuid::new_v4(),
        email: "a@example.com".into(),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    shared.remember_session(sid, &user, shared.cache_epoch());
    assert_eq!(shared.cached_session(sid), Some(user));
    assert_eq!(shared.refused_in_redis(sid, "dev", 0).await, Some(false));
    assert!(!shared.denied_locally(sid));
    shared.revoked(sid).await;
    assert!(shared.denied_locally(sid));
    assert!(shared.cached_session(sid).is_none());
    assert_eq!(shared.redis_status(), RedisStatus::Disabled);
}

/// A deny-list full of live entries starts over instead of scanning itself on every
/// revocation (a `revoke-all`-sized wave would make each insert cost the whole list),
/// and the sessions cached as live go with it.
#[tokio::test]
async fn a_full_local_deny_list_starts_over_with_the_session_cache() {
    let (shared, _dir) = in_process().await;
    let first = Uuid::new_v4();
    shared.revoked(first).await;
    for _ in 1..CACHE_MAX {
        shared.revoked(Uuid::new_v4()).await;
    }
    assert!(shared.denied_locally(first), "not full yet");
    let cached = Uuid::new_v4();
    let user = User {
        id: Uuid::new_v4(),
        email: "a@example.com".into(),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    shared.remember_session(cached, &user, shared.cache_epoch());
    assert!(shared.cached_session(cached).is_some());
    let last = Uuid::new_v4();
    shared.revoked(last).await;
    assert!(shared.denied_locally(last));
    assert!(!shared.denied_locally(first), "started over");
    assert!(
        shared.cached_session(cached).is_none(),
        "the cache went too"
    );
}

/// Without Redis a proof is used once in this process; a process holding as many live
/// proofs as it may refuses (`None`, answered 503) rather than forgets one.
#[tokio::test]
async fn a_proof_is_used_once_and_a_full_list_refuses_rather_than_forgets() {
    let (shared, _dir) = in_process().await;
    let minute = Duration::from_secs(60);
    assert_eq!(shared.first_use_of_proof("p-1", minute).await, Some(true));
    assert_eq!(shared.first_use_of_proof("p-1", minute).await, Some(false));
    for i in 1..PROOFS_MAX {
        assert_eq!(
            shared.first_use_of_proof(&format!("q-{i}"), minute).await,
            Some(true)
        );
    }
    assert_eq!(shared.first_use_of_proof("one-more", minute).await, None);
    assert_eq!(shared.first_use_of_proof("p-1", minute).await, None);
}

#[test]
fn announcements_parse() {
    let sid = Uuid::new_v4();
    assert_eq!(
        parse_announcement(format!("{sid}:1500").as_bytes()),
        Some((sid, Duration::from_millis(1500)))
    );
    assert_eq!(parse_announcement(sid.to_string().as_bytes()), None);
    assert_eq!(parse_announcement(b"x:1"), None);
}
