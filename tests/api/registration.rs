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
