//! Three instances behind an imaginary load balancer: one PostgreSQL database, one
//! Redis prefix, one key directory.

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;

use crate::concurrency::race_across;
use crate::helpers::{
    Backend, TestApp, assert_error, assert_invalid_grant, family_generation, patient, segment,
    spawn_app_with, spawn_instance_like, token_generation, tokens, wait_for_redis,
};

async fn three_instances() -> Vec<Arc<TestApp>> {
    let first = spawn_app_with(Backend::Postgres, patient).await;
    let second = spawn_instance_like(&first).await;
    let third = spawn_instance_like(&first).await;
    for app in [&first, &second, &third] {
        wait_for_redis(app, "ok").await;
    }
    vec![Arc::new(first), Arc::new(second), Arc::new(third)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_agree_on_tokens_keys_rotations_and_revocations() {
    let apps = three_instances().await;

    // All three publish the same key set.
    let mut sets = HashSet::new();
    for app in &apps {
        let resp = app.get("/.well-known/jwks.json").await;
        assert_eq!(resp.status(), StatusCode::OK);
        sets.insert(resp.text().await.unwrap());
    }
    assert_eq!(
        sets.len(),
        1,
        "the instances publish different JWKS: {sets:?}"
    );

    // A token minted by one verifies on the others.
    let (_, first) = apps[0].signed_in().await;
    for app in &apps {
        assert_eq!(app.me(&first.access).await.status(), StatusCode::OK);
    }

    // 300 parallel refreshes of one token, spread over the three: one successor.
    let results = race_across(&apps, &first.refresh, 300).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::OK, "every racer is answered: {body}");
    }
    let successors: HashSet<&str> = results
        .iter()
        .map(|(_, b)| b["refresh_token"].as_str().unwrap())
        .collect();
    assert_eq!(successors.len(), 1, "exactly one successor");
    let sid = segment(&first.access, 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let database_url = apps[0].settings.database_url.expose().to_owned();
    let successor = successors.into_iter().next().unwrap().to_owned();
    assert_eq!(
        family_generation(&database_url, &sid).await,
        token_generation(&successor),
        "the one successor is the family's live token"
    );
    let current = tokens(apps[2].refresh(&successor).await).await;

    // Every instance has the session cached; a revocation through one is refused by
    // the others at once.
    for app in &apps {
        assert_eq!(app.me(&current.access).await.status(), StatusCode::OK);
    }
    let resp = apps[0]
        .post_form(
            "/oauth/revoke",
            &[("client_id", "dev"), ("token", &current.refresh)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for app in &apps[1..] {
        assert_error(
            app.me(&current.access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            None,
        )
        .await;
        assert_invalid_grant(app.refresh(&current.refresh).await, "revoked").await;
    }
    assert_eq!(
        family_generation(&database_url, &sid).await,
        token_generation(&current.refresh)
    );
}
