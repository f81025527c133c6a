//! The admin API: the role check, a user's sessions, revoke all, disable and enable,
//! and the audit log.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{
    PASSWORD, TestApp, Tokens, assert_error, assert_invalid_grant, spawn_app, tokens,
};

async fn admin_call(app: &TestApp, method: Method, path: &str, access: &str) -> reqwest::Response {
    app.http
        .request(method, app.url(path))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// An admin (granted as the CLI does) and a target user with two sessions.
async fn admin_and_target(app: &TestApp) -> (Tokens, String, String, [Tokens; 2]) {
    let (admin_email, admin) = app.signed_in().await;
    app.set_admin(&admin_email, true).await;
    let (target_email, first) = app.signed_in().await;
    let second = tokens(app.login(&target_email, PASSWORD).await).await;
    let found = json(
        admin_call(
            app,
            Method::GET,
            &format!("/v1/admin/users?email={target_email}"),
            &admin.access,
        )
        .await,
    )
    .await;
    assert_eq!(found["email"], target_email.as_str());
    assert_eq!(found["disabled"], false);
    let target_id = found["id"].as_str().unwrap().to_owned();
    (admin, target_email, target_id, [first, second])
}

scenario! {
    async fn without_the_admin_role_the_admin_api_is_403_insufficient_scope(backend) {
        let app = spawn_app(backend).await;
        let (email, user) = app.signed_in().await;
        for (method, path) in [
            (Method::GET, format!("/v1/admin/users?email={email}")),
            (Method::GET, "/v1/admin/audit".to_owned()),
            (Method::DELETE, format!("/v1/admin/users/{}/sessions", uuid::Uuid::new_v4())),
            (Method::POST, "/v1/admin/sweep".to_owned()),
        ] {
            let resp = admin_call(&app, method, &path, &user.access).await;
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
            assert_error(resp, StatusCode::FORBIDDEN, "insufficient_scope", None).await;
        }
        // Granted, then taken back: the role is read on every request.
        app.set_admin(&email, true).await;
        assert_eq!(admin_call(&app, Method::GET, "/v1/admin/audit", &user.access).await.status(), StatusCode::OK);
        // The documented bounds of `limit` are enforced, not silently clamped.
        for limit in ["1", "500"] {
            let resp = admin_call(&app, Method::GET, &format!("/v1/admin/audit?limit={limit}"), &user.access).await;
            assert_eq!(resp.status(), StatusCode::OK, "limit={limit}");
        }
        for limit in ["0", "501", "16644874618"] {
            let resp = admin_call(&app, Method::GET, &format!("/v1/admin/audit?limit={limit}"), &user.access).await;
            assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        }
        app.set_admin(&email, false).await;
        assert_eq!(admin_call(&app, Method::GET, "/v1/admin/audit", &user.access).await.status(), StatusCode::FORBIDDEN);
        // No token at all is a 401, as everywhere.
        let resp = app.get("/v1/admin/audit").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

scenario! {
    async fn an_admin_lists_and_ends_a_users_sessions_with_an_audit_trail(backend) {
        let app = spawn_app(backend).await;
        let (admin, _, target_id, [first, second]) = admin_and_target(&app).await;
        let sessions_path = format!("/v1/admin/users/{target_id}/sessions");
        let listed = json(admin_call(&app, Method::GET, &sessions_path, &admin.access).await).await;
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

        let revoked = json(admin_call(&app, Method::DELETE, &sessions_path, &admin.access).await).await;
        assert_eq!(revoked["revoked"], 2);
        for t in [&first, &second] {
            assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
            assert_invalid_grant(app.refresh(&t.refresh).await, "revoked").await;
        }
        let listed = json(admin_call(&app, Method::GET, &sessions_path, &admin.access).await).await;
        assert_eq!(listed, serde_json::json!([]));
        // The admin's own session is untouched.
        assert_eq!(app.me(&admin.access).await.status(), StatusCode::OK);

        let audit = json(
            admin_call(&app, Method::GET, &format!("/v1/admin/audit?user_id={target_id}"), &admin.access).await,
        )
        .await;
        let events = audit.as_array().unwrap();
        let admin_id = crate::helpers::segment(&admin.access, 1)["sub"].clone();
        let action = events.iter().find(|e| e["kind"] == "admin_revoked_sessions").expect("the action is recorded");
        assert_eq!(action["actor_id"], admin_id);
        let revocations = events
            .iter()
            .filter(|e| e["kind"] == "family_revoked" && e["detail"] == "admin_revoke")
            .count();
        assert_eq!(revocations, 2, "{audit}");
        // Unknown users are 404.
        let unknown = format!("/v1/admin/users/{}/sessions", uuid::Uuid::new_v4());
        assert_error(admin_call(&app, Method::GET, &unknown, &admin.access).await, StatusCode::NOT_FOUND, "not_found", None).await;
    }
}

scenario! {
    async fn a_disabled_user_can_neither_log_in_nor_refresh_until_enabled(backend) {
        let app = spawn_app(backend).await;
        let (admin, target_email, target_id, [first, _]) = admin_and_target(&app).await;
        let disabled = json(
            admin_call(&app, Method::POST, &format!("/v1/admin/users/{target_id}/disable"), &admin.access).await,
        )
        .await;
        assert_eq!(disabled["revoked"], 2);
        assert_eq!(app.me(&first.access).await.status(), StatusCode::UNAUTHORIZED);
        assert_invalid_grant(app.refresh(&first.refresh).await, "revoked").await;
        assert_invalid_grant(app.login(&target_email, PASSWORD).await, "invalid_credentials").await;
        let found = json(
            admin_call(&app, Method::GET, &format!("/v1/admin/users?email={target_email}"), &admin.access).await,
        )
        .await;
        assert_eq!(found["disabled"], true);

        let resp = admin_call(&app, Method::POST, &format!("/v1/admin/users/{target_id}/enable"), &admin.access).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let fresh = tokens(app.login(&target_email, PASSWORD).await).await;
        assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);

        let audit = json(admin_call(&app, Method::GET, "/v1/admin/audit?limit=50", &admin.access).await).await;
        let kinds: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        let enabled_at = kinds.iter().position(|k| *k == "user_enabled").expect("enable recorded");
        let disabled_at = kinds.iter().position(|k| *k == "user_disabled").expect("disable recorded");
        assert!(enabled_at < disabled_at, "newest first: {kinds:?}");
    }
}

scenario! {
    async fn logins_and_failed_logins_are_in_the_audit_log(backend) {
        let app = spawn_app(backend).await;
        let (admin, target_email, target_id, [first, second]) = admin_and_target(&app).await;
        assert_eq!(app.login(&target_email, "not the password!").await.status(), StatusCode::BAD_REQUEST);
        let audit = json(
            admin_call(&app, Method::GET, &format!("/v1/admin/audit?user_id={target_id}"), &admin.access).await,
        )
        .await;
        let events = audit.as_array().unwrap();
        let logins: Vec<&Value> = events.iter().filter(|e| e["kind"] == "login").collect();
        assert_eq!(logins.len(), 2, "{audit}");
        let sessions: std::collections::HashSet<&str> =
            logins.iter().map(|e| e["session_id"].as_str().unwrap()).collect();
        for t in [&first, &second] {
            let sid = crate::helpers::segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
            assert!(sessions.contains(sid.as_str()));
        }
        assert!(logins.iter().all(|e| e["client_id"] == "dev" && e["detail"] == "ip 127.0.0.1"));
        let failed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "login_failed").collect();
        assert_eq!(failed.len(), 1, "{audit}");
        let text = audit.to_string();
        assert!(!text.contains("not the password!") && !text.contains(PASSWORD), "no password in the log");
    }
}

scenario! {
    async fn a_disabled_users_session_cannot_rotate_even_if_it_escaped_revocation(backend) {
        let app = spawn_app(backend).await;
        let (email, t) = app.signed_in().await;
        // What a login racing a disable could leave: a live family of a disabled user.
        app.exec_sql(&format!(
            "UPDATE users SET disabled_at = {} WHERE email = '{email}'",
            if backend == crate::helpers::Backend::Postgres { "now()" } else { "1" }
        ))
        .await;
        assert_invalid_grant(app.refresh(&t.refresh).await, "revoked").await;
        assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
    }
}

scenario! {
    async fn a_family_is_not_created_for_a_password_that_changed_meanwhile(backend) {
        use token_issuer::store::NewFamily;
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let user_id: uuid::Uuid = crate::helpers::segment(&t.access, 1)["sub"].as_str().unwrap().parse().unwrap();
        let store = token_issuer::startup::open_store(&app.settings).await.unwrap();
        let family = |checked: Option<&str>| NewFamily {
            id: uuid::Uuid::new_v4(),
            user_id,
            client_id: "dev".into(),
            scope: None,
            created_at: time::OffsetDateTime::now_utc(),
            user_agent: None,
            ip: None,
            checked_password_hash: checked.map(str::to_owned),
            login_source: None,
            dpop_jkt: None,
        };
        assert!(!store.create_family(&family(Some("$argon2id$stale"))).await.unwrap());
        assert!(store.create_family(&family(None)).await.unwrap());
        store.close().await;
    }
}

scenario! {
    async fn the_sweep_deletes_audit_events_past_their_retention(backend) {
        let app = spawn_app(backend).await;
        app.signed_in().await;
        let store = token_issuer::startup::open_store(&app.settings).await.unwrap();
        assert!(!store.audit_events(None, 500).await.unwrap().is_empty());
        app.advance(app.settings.audit_retention - std::time::Duration::from_secs(60));
        app.issuer.sweep().await.unwrap();
        assert!(!store.audit_events(None, 500).await.unwrap().is_empty(), "kept until the retention ends");
        app.advance(std::time::Duration::from_secs(120));
        app.issuer.sweep().await.unwrap();
        assert!(store.audit_events(None, 500).await.unwrap().is_empty());
        store.close().await;
    }
}

scenario! {
    async fn an_admin_sweeps_now_what_ended_more_than_a_day_ago(backend) {
        let app = spawn_app(backend).await;
        let (admin_email, _) = app.signed_in().await;
        app.set_admin(&admin_email, true).await;
        let (target_email, ended) = app.signed_in().await;
        let live = tokens(app.login(&target_email, PASSWORD).await).await;
        let resp = app
            .post_form("/oauth/revoke", &[("client_id", "dev"), ("token", &ended.refresh)])
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        // Within the margin nothing goes: the ended session still answers `revoked`.
        let admin = tokens(app.login(&admin_email, PASSWORD).await).await;
        let swept = json(admin_call(&app, Method::POST, "/v1/admin/sweep", &admin.access).await).await;
        assert_eq!(swept, serde_json::json!({"sessions": 0, "audit_events": 0}));
        assert_invalid_grant(app.refresh(&ended.refresh).await, "revoked").await;

        app.advance(std::time::Duration::from_secs(2 * 86_400));
        let admin = tokens(app.login(&admin_email, PASSWORD).await).await;
        let swept = json(admin_call(&app, Method::POST, "/v1/admin/sweep", &admin.access).await).await;
        assert_eq!(swept, serde_json::json!({"sessions": 1, "audit_events": 0}));
        assert_invalid_grant(app.refresh(&ended.refresh).await, "unknown").await;
        tokens(app.refresh(&live.refresh).await).await;
        // Each sweep is in the audit log, with the admin as its actor.
        let events = json(admin_call(&app, Method::GET, "/v1/admin/audit", &admin.access).await).await;
        let swept: Vec<&Value> = events.as_array().unwrap().iter().filter(|e| e["kind"] == "admin_swept").collect();
        assert_eq!(swept.len(), 2, "{events}");
        assert_eq!(swept[0]["detail"], "1 sessions, 0 audit events");
        assert!(swept[0]["actor_id"].is_string());
    }
}
