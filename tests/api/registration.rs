use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, assert_error, spawn_app, spawn_app_with, unique_email};

scenario! {
    async fn registers_a_user_and_refuses_the_same_email_twice(backend) {
        let app = spawn_app(backend).await;
        let email = unique_email();
        let resp = app.register(&email, PASSWORD).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["email"], email.as_str());
        assert!(body["id"].is_string());
        assert!(body.get("password").is_none() && body.get("password_hash").is_none());

        let again = app
            .register(&email.to_uppercase(), "another sound passphrase")
            .await;
        assert_error(again, StatusCode::CONFLICT, "email_taken", None).await;
    }
}

scenario! {
    async fn the_password_policy_says_what_it_refuses(backend) {
        let app = spawn_app(backend).await;
        let email = unique_email();
        let long = "x".repeat(1025);
        for (password, says) in [
            ("short one", "at least 15"),
            ("passwordpassword", "too common"),
            (email.as_str(), "e-mail"),
            (long.as_str(), "at most 1024"),
        ] {
            let body = assert_error(
                app.register(&email, password).await,
                StatusCode::BAD_REQUEST,
                "weak_password",
                None,
            )
            .await;
            let description = body["error_description"].as_str().unwrap();
            assert!(
                description.contains(says),
                "{description:?} should say {says:?}"
            );
            assert!(
                !description.contains(password),
                "the description must not echo the password"
            );
        }
        // 64 characters of any kind, spaces included, are accepted.
        let long_ok = "Ünïcödé and spaces are fine ".repeat(3);
        assert_eq!(
            app.register(&unique_email(), &long_ok[..]).await.status(),
            StatusCode::CREATED
        );
    }
}

scenario! {
    async fn malformed_registrations_are_invalid_requests(backend) {
        let app = spawn_app(backend).await;
        assert_error(
            app.register("not-an-email", PASSWORD).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        let resp = app
            .http
            .post(app.url("/v1/users"))
            .header("content-type", "application/json")
            .body("{\"email\": ")
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        let resp = app
            .http
            .post(app.url("/v1/users"))
            .json(&serde_json::json!({"email": unique_email()}))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
    }
}

scenario! {
    async fn registration_can_be_turned_off(backend) {
        let app = spawn_app_with(backend, |s| s.allow_registration = false).await;
        assert_error(
            app.register(&unique_email(), PASSWORD).await,
            StatusCode::FORBIDDEN,
            "registration_disabled",
            None,
        )
        .await;
    }
}

/// A registration from `ip`.
async fn register_from(
    app: &crate::helpers::TestApp,
    ip: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    crate::helpers::client_from(ip)
        .post(app.url("/v1/users"))
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

scenario! {
    async fn registrations_are_limited_per_ip_and_bad_input_is_not_counted(backend) {
        let app = spawn_app_with(backend, |s| {
            s.limits.register_per_ip = Some(token_issuer::config::RateLimit {
                max: 3,
                window: std::time::Duration::from_secs(3600),
            });
        })
        .await;
        if backend == crate::helpers::Backend::Postgres {
            crate::helpers::wait_for_redis(&app, "ok").await;
        }
        let ip = "127.0.0.20";
        // Refused input costs nothing.
        for _ in 0..5 {
            let resp = register_from(&app, ip, &unique_email(), "short one").await;
            assert_error(resp, StatusCode::BAD_REQUEST, "weak_password", None).await;
        }
        let taken = unique_email();
        assert_eq!(register_from(&app, ip, &taken, PASSWORD).await.status(), StatusCode::CREATED);
        // A taken address is counted: it is what an enumeration tries.
        let resp = register_from(&app, ip, &taken, PASSWORD).await;
        assert_error(resp, StatusCode::CONFLICT, "email_taken", None).await;
        assert_eq!(register_from(&app, ip, &unique_email(), PASSWORD).await.status(), StatusCode::CREATED);
        let resp = register_from(&app, ip, &unique_email(), PASSWORD).await;
        assert!(resp.headers().contains_key("retry-after"));
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
        let resp = register_from(&app, ip, &taken, PASSWORD).await;
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
        // Another client is not affected.
        assert_eq!(
            register_from(&app, "127.0.0.21", &unique_email(), PASSWORD).await.status(),
            StatusCode::CREATED
        );
    }
}

/// A flood of registrations (the per-IP limit off: many addresses) with one hashing
/// thread: logins sent in the middle of it are served, not refused with 503 behind a
/// queue full of registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_registrations_does_not_starve_logins_of_the_hashing_pool() {
    let app = std::sync::Arc::new(
        spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
            s.password_hashing.concurrency = 1;
            s.password_hashing.queue = 8;
            s.limits.login_per_ip = None;
        })
        .await,
    );
    let email = unique_email();
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let flood: Vec<_> = (0..80)
        .map(|_| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move { app.register(&unique_email(), PASSWORD).await.status() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let (app, email) = (std::sync::Arc::clone(&app), email.clone());
            tokio::spawn(async move { app.login(&email, PASSWORD).await.status() })
        })
        .collect();
    for login in logins {
        assert_eq!(
            login.await.unwrap(),
            StatusCode::OK,
            "a login was refused during the flood"
        );
    }
    let mut created = 0;
    for registration in flood {
        match registration.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("a registration answered {other}"),
        }
    }
    assert!(created >= 1, "registrations are served too");
}

scenario! {
    async fn well_known_passwords_are_refused(backend) {
        let app = spawn_app(backend).await;
        for weak in ["password1234567", "iloveyou12345678", "Qwerty123456789", "1q2w3e4r5t6y7u8i9o0p"] {
            let body = assert_error(
                app.register(&unique_email(), weak).await,
                StatusCode::BAD_REQUEST,
                "weak_password",
                None,
            )
            .await;
            assert!(body["error_description"].as_str().unwrap().contains("too common"), "{weak}: {body}");
        }
        assert_eq!(
            app.register(&unique_email(), "a sound passphrase").await.status(),
            StatusCode::CREATED
        );
    }
}
