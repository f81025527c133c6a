//! The key lifecycle on running instances: a rotation is picked up without a restart,
//! old tokens keep verifying until their key retires, and a scheduled rotation happens
//! exactly once however many instances share the key directory.

use std::collections::HashSet;
use std::time::Duration;

use aws_lc_rs::rsa::KeySize;
use reqwest::StatusCode;
use token_issuer::crypto::keyring::{self, KeyState};
use token_issuer::service::keys::LIFETIMES;

use crate::helpers::{
    Backend, PASSWORD, eventually, jwks, now, segment, sign_rs256, spawn_app, spawn_app_with,
    spawn_instance_like, tokens,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_reaches_every_instance_without_a_restart() {
    let a = spawn_app(Backend::Postgres).await;
    let b = spawn_instance_like(&a).await;
    let dir = a.keys_dir();
    let (email, before) = a.signed_in().await;
    let old_kid = segment(&before.access, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (initial, old_etag) = jwks(&a).await;
    assert_eq!(initial, HashSet::from([old_kid.clone()]));
    let (_, old_key) = a.signing_key();

    // Published ahead: both instances show the next key before it signs.
    let next = keyring::generate(&dir, KeySize::Rsa2048, now(&a)).unwrap();
    for app in [&a, &b] {
        eventually("the next key is published", || async {
            jwks(app).await.0.contains(&next.kid)
        })
        .await;
    }
    let resp = a
        .http
        .get(a.url("/.well-known/jwks.json"))
        .header("if-none-match", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the set changed: a new ETag");

    // Rotated (as `keys rotate` does): both sign with the new key, no restart.
    let rotation = keyring::rotate(&dir, now(&a), LIFETIMES, true, KeySize::Rsa2048).unwrap();
    assert_eq!(rotation.active, next.kid);
    for app in [&a, &b] {
        eventually("new tokens carry the new kid", || async {
            let t = tokens(app.login(&email, PASSWORD).await).await;
            segment(&t.access, 0)["kid"] == next.kid.as_str()
        })
        .await;
    }
    // The old key is retired, still published: its tokens still verify everywhere.
    let (a_set, _) = jwks(&a).await;
    assert_eq!(
        a_set,
        HashSet::from([old_kid.clone(), next.kid.clone(), rotation.next.clone()])
    );
    assert_eq!(jwks(&b).await.0, a_set);
    for app in [&a, &b] {
        assert_eq!(app.me(&before.access).await.status(), StatusCode::OK);
    }
    // Once every token it signed has expired, it leaves the set.
    for app in [&a, &b] {
        app.advance(LIFETIMES.retire_grace + Duration::from_secs(1));
    }
    for app in [&a, &b] {
        eventually("the retired key leaves the JWKS", || async {
            !jwks(app).await.0.contains(&old_kid)
        })
        .await;
    }
    // Past its grace the retired key verifies nothing, not even a token with fresh
    // claims (as a thief of the old key file would sign).
    let fresh = tokens(a.login(&email, PASSWORD).await).await;
    let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": old_kid});
    let forged = sign_rs256(&old_key, &header, &segment(&fresh.access, 1));
    for app in [&a, &b] {
        assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);
        assert_eq!(app.me(&forged).await.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_rotation_happens_exactly_once_across_instances() {
    let hour = Duration::from_secs(3600);
    let a = spawn_app_with(Backend::Postgres, |s| s.key_rotation_interval = Some(hour)).await;
    let b = spawn_instance_like(&a).await;
    let dir = a.keys_dir();
    let ring = || keyring::read(&dir).unwrap().unwrap().0;
    // A next key is published ahead of the rotation, by one of them.
    eventually("a next key is published", || async {
        ring().next().is_some()
    })
    .await;
    let first_next = ring().next().unwrap().kid.clone();
    for app in [&a, &b] {
        app.advance(hour + Duration::from_secs(60));
    }
    eventually("the key rotated", || async {
        ring().active().unwrap().kid == first_next
    })
    .await;
    // Give the other instance its chances to rotate again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ring = ring();
    let count = |state| ring.keys.iter().filter(|k| k.state == state).count();
    assert_eq!(
        (
            count(KeyState::Active),
            count(KeyState::Next),
            count(KeyState::Retired)
        ),
        (1, 1, 1),
        "{ring:?}"
    );
    // Recorded once in the audit log.
    let (admin_email, admin) = a.signed_in().await;
    a.set_admin(&admin_email, true).await;
    let audit = a.audit_events(&admin.access).await;
    let rotations = audit.iter().filter(|e| e["kind"] == "key_rotated").count();
    assert_eq!(rotations, 1, "{audit:?}");
    // Both sign with the new key.
    for app in [&a, &b] {
        eventually("the instance signs with the new key", || async {
            let (_, t) = app.signed_in().await;
            segment(&t.access, 0)["kid"] == first_next.as_str()
        })
        .await;
    }
}
