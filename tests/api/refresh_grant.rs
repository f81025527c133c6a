use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    assert_error, assert_invalid_grant, segment, spawn_app, spawn_app_with, tokens,
};

scenario! {
    async fn refresh_rotates_in_the_same_family(backend) {
        let app = spawn_app(backend).await;
        let (_, first) = app.signed_in().await;
        let resp = app.refresh(&first.refresh).await;
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let second = tokens(resp).await;
        assert_ne!(second.refresh, first.refresh);
        assert_eq!(
            segment(&second.access, 1)["sid"],
            segment(&first.access, 1)["sid"]
        );
        assert_ne!(
            segment(&second.access, 1)["jti"],
            segment(&first.access, 1)["jti"]
        );
        let third = tokens(app.refresh(&second.refresh).await).await;
        assert_ne!(third.refresh, second.refresh);
        assert_eq!(app.me(&third.access).await.status(), StatusCode::OK);
    }
}

scenario! {
    async fn reuse_after_the_grace_window_revokes_the_whole_family(backend) {
        let app = spawn_app(backend).await;
        let (_, first) = app.signed_in().await;
        let second = tokens(app.refresh(&first.refresh).await).await;
        app.advance(Duration::from_secs(11));

        assert_invalid_grant(app.refresh(&first.refresh).await, "reused").await;
        // Every token of the family is dead, and so are its access tokens.
        assert_invalid_grant(app.refresh(&second.refresh).await, "revoked").await;
        let resp = app.me(&second.access).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{challenge}"
        );
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_token", None).await;
        // A later use of the reused token stays refused.
        assert_invalid_grant(app.refresh(&first.refresh).await, "revoked").await;
    }
}

scenario! {
    async fn a_retry_within_the_grace_window_gets_the_same_successor(backend) {
        let app = spawn_app(backend).await;
        let (_, first) = app.signed_in().await;
        let second = tokens(app.refresh(&first.refresh).await).await;
        app.advance(Duration::from_secs(9));
        let retry = tokens(app.refresh(&first.refresh).await).await;
        assert_eq!(
            retry.refresh, second.refresh,
            "the same successor, not a fork"
        );
        assert_ne!(retry.access, second.access, "a fresh access token");
        assert_eq!(app.me(&retry.access).await.status(), StatusCode::OK);

        // Once the successor is used, the old token is a reuse even within the window.
        let third = tokens(app.refresh(&second.refresh).await).await;
        assert_invalid_grant(app.refresh(&first.refresh).await, "reused").await;
        assert_invalid_grant(app.refresh(&third.refresh).await, "revoked").await;
    }
}

scenario! {
    async fn a_zero_grace_window_makes_any_second_use_a_reuse(backend) {
        let app = spawn_app_with(backend, |s| s.set_grace_period(Duration::ZERO)).await;
        let (_, first) = app.signed_in().await;
        let second = tokens(app.refresh(&first.refresh).await).await;
        assert_invalid_grant(app.refresh(&first.refresh).await, "reused").await;
        assert_invalid_grant(app.refresh(&second.refresh).await, "revoked").await;
    }
}

scenario! {
    async fn unknown_and_oversized_refresh_tokens_are_refused(backend) {
        let app = spawn_app(backend).await;
        let unknown = "A".repeat(43);
        assert_invalid_grant(app.refresh(&unknown).await, "unknown").await;
        let huge = "A".repeat(513);
        assert_error(
            app.refresh(&huge).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        assert_error(
            app.post_form(
                "/oauth/token",
                &[("grant_type", "refresh_token"), ("client_id", "dev")],
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
    }
}

scenario! {
    async fn a_token_shown_by_another_client_is_refused_and_burns_the_family(backend) {
        let app = spawn_app(backend).await;
        let (_, first) = app.signed_in().await;
        assert_invalid_grant(app.refresh_as("other", &first.refresh).await, "revoked").await;
        assert_invalid_grant(app.refresh(&first.refresh).await, "revoked").await;
        assert_eq!(
            app.me(&first.access).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

scenario! {
    async fn families_are_independent(backend) {
        let app = spawn_app(backend).await;
        let (email, a) = app.signed_in().await;
        let b = tokens(app.login(&email, crate::helpers::PASSWORD).await).await;
        assert_ne!(segment(&a.access, 1)["sid"], segment(&b.access, 1)["sid"]);
        tokens(app.refresh(&a.refresh).await).await;
        app.advance(Duration::from_secs(11));
        assert_invalid_grant(app.refresh(&a.refresh).await, "reused").await;
        // The other device's session lives on.
        let b2 = tokens(app.refresh(&b.refresh).await).await;
        let me: Value = app.me(&b2.access).await.json().await.unwrap();
        assert_eq!(me["email"], email.as_str());
    }
}

scenario! {
    /// A refresh token names its session and its generation under the server's MAC
    /// (README "Tokens"): nothing of it is stored, so only the MAC stands between a
    /// guess and a session.
    async fn refresh_tokens_name_their_session_under_a_mac_and_guesses_find_nothing(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
        // Every token, first or rotated: version 1, a key id, the session, the next
        // generation, a 256-bit MAC; base64url without padding.
        let mut seen = std::collections::HashSet::new();
        let mut current = t.refresh.clone();
        for generation in 0..20 {
            let raw = URL_SAFE_NO_PAD.decode(&current).expect("base64url");
            assert_eq!((raw.len(), raw[0]), (61, 1), "{current}");
            assert_eq!(crate::helpers::token_position(&current), (sid.clone(), generation));
            assert!(seen.insert(current.clone()), "a token came back twice");
            current = tokens(app.refresh(&current).await).await.refresh;
        }
        // Guesses: the real session and generation under a forged MAC, one character
        // off the real token anywhere, random tokens of the earlier format. All are
        // unknown, and the real token is left as it was.
        let raw = URL_SAFE_NO_PAD.decode(&current).unwrap();
        let mut guesses: Vec<String> = (0..20)
            .map(|_| {
                let mut forged = raw[..29].to_vec();
                forged.extend(uuid::Uuid::new_v4().as_bytes().repeat(2));
                URL_SAFE_NO_PAD.encode(forged)
            })
            .collect();
        guesses.extend((0..20).map(|_| URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2))));
        for i in [0, 3, 10, 30, 38, 60, 81] {
            let mut near: Vec<u8> = current.clone().into_bytes();
            near[i] = if near[i] == b'A' { b'B' } else { b'A' };
            guesses.push(String::from_utf8(near).unwrap());
        }
        for guess in &guesses {
            assert_invalid_grant(app.refresh(guess).await, "unknown").await;
        }
        tokens(app.refresh(&current).await).await;
    }
}
