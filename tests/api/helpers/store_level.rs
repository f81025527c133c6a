//! Store-level rotations: a policy of an hour, a family of the signed-in user.
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use token_issuer::domain::family::{GrantRejection, RefreshPolicy, RevokeReason};
use token_issuer::store::{NewFamily, RotateOutcome, RotateRequest, Store, StoreError, TokenRef};

pub const POLICY: RefreshPolicy = RefreshPolicy {
    idle_timeout: Duration::from_secs(3600),
    absolute_lifetime: Duration::from_secs(3600),
    grace_period: Duration::from_secs(10),
};

/// A token no family has: a family that does not exist.
pub fn unknown_token() -> TokenRef {
    TokenRef::Minted {
        family: uuid::Uuid::new_v4(),
        generation: 0,
    }
}

/// The token that follows `t` in its family: what a rotation of `t` answers.
pub fn successor(t: TokenRef) -> TokenRef {
    match t {
        TokenRef::Minted { family, generation } => TokenRef::Minted {
            family,
            generation: generation + 1,
        },
        TokenRef::Legacy(_) => panic!("a token of the earlier format has no minted successor here"),
    }
}

/// A new family of `user_id` for the `dev` client; its first token (generation 0).
pub async fn family(
    store: &dyn Store,
    user_id: uuid::Uuid,
    created_at: OffsetDateTime,
) -> TokenRef {
    let family = NewFamily {
        id: uuid::Uuid::new_v4(),
        user_id,
        client_id: "dev".into(),
        scope: None,
        created_at,
        user_agent: None,
        ip: None,
        checked_password_hash: None,
        login_source: None,
        dpop_jkt: None,
    };
    assert!(store.create_family(&family).await.unwrap());
    TokenRef::Minted {
        family: family.id,
        generation: 0,
    }
}

pub async fn rotate(
    store: &dyn Store,
    presented: TokenRef,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<RotateOutcome, StoreError> {
    store
        .rotate(&RotateRequest {
            presented,
            client_id,
            now,
            policy: POLICY,
            ip: None,
            user_agent: None,
            dpop_jkt: None,
            ticket: Default::default(),
        })
        .await
}

/// Runs every rotation at once, released together; their outcomes in order.
pub async fn all_at_once(
    store: &Arc<dyn Store>,
    rotations: Vec<(TokenRef, &'static str)>,
    now: OffsetDateTime,
) -> Vec<Result<RotateOutcome, StoreError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(rotations.len()));
    let tasks: Vec<_> = rotations
        .into_iter()
        .map(|(presented, client_id)| {
            let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                rotate(&*store, presented, client_id, now).await
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
