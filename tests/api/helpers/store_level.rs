//! Store-level rotations: a policy of an hour, a family of the signed-in user.
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use token_issuer::crypto::refresh::{self, TokenHash};
use token_issuer::domain::family::{GrantRejection, RefreshPolicy, RevokeReason};
use token_issuer::store::{NewFamily, RotateOutcome, RotateRequest, Store, StoreError};

pub const POLICY: RefreshPolicy = RefreshPolicy {
    idle_timeout: Duration::from_secs(3600),
    absolute_lifetime: Duration::from_secs(3600),
    grace_period: Duration::from_secs(10),
};

pub fn random_hash() -> TokenHash {
    refresh::hash(&refresh::generate().unwrap())
}

/// A new family of `user_id` for the `dev` client; its first token's hash.
pub async fn family(
    store: &dyn Store,
    user_id: uuid::Uuid,
    created_at: OffsetDateTime,
) -> TokenHash {
    let first = random_hash();
    let family = NewFamily {
        id: uuid::Uuid::new_v4(),
        user_id,
        client_id: "dev".into(),
        scope: None,
        created_at,
        user_agent: None,
        ip: None,
        first_token: first,
        checked_password_hash: None,
        login_source: None,
    };
    assert!(store.create_family(&family).await.unwrap());
    first
}

pub async fn rotate(
    store: &dyn Store,
    presented: TokenHash,
    successor: TokenHash,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<RotateOutcome, StoreError> {
    store
        .rotate(&RotateRequest {
            presented,
            successor,
            client_id,
            now,
            policy: POLICY,
            ip: None,
            user_agent: None,
            ticket: Default::default(),
        })
        .await
}

/// Runs every rotation at once, released together; their outcomes in order.
pub async fn all_at_once(
    store: &Arc<dyn Store>,
    rotations: Vec<(TokenHash, TokenHash, &'static str)>,
    now: OffsetDateTime,
) -> Vec<Result<RotateOutcome, StoreError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(rotations.len()));
    let tasks: Vec<_> = rotations
        .into_iter()
        .map(|(presented, successor, client_id)| {
            let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                rotate(&*store, presented, successor, client_id, now).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// What a rotation answered, to compare.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Issued { replay: bool },
    Refused(GrantRejection, Option<RevokeReason>),
    Failed,
}

pub fn answer(outcome: &Result<RotateOutcome, StoreError>) -> Answer {
    match outcome {
        Ok(RotateOutcome::Issued { replay, .. }) => Answer::Issued { replay: *replay },
        Ok(RotateOutcome::Refused {
            rejection, revoked, ..
        }) => Answer::Refused(*rejection, *revoked),
        Err(_) => Answer::Failed,
    }
}

/// A signed-in user of `app`, and a store of its database.
pub async fn user_and_store(app: &crate::helpers::TestApp) -> (uuid::Uuid, Arc<dyn Store>) {
    let (_, t) = app.signed_in().await;
    let user_id = crate::helpers::segment(&t.access, 1)["sub"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        user_id,
        token_issuer::startup::open_store(&app.settings)
            .await
            .unwrap(),
    )
}
