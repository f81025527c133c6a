use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app};

scenario! {
    async fn oversized_bodies_are_refused_with_413(backend) {
        let app = spawn_app(backend).await;
        let big = format!(
            "grant_type=password&client_id=dev&username=a%40b.example&password={}",
            "x".repeat(70 * 1024)
        );
        let resp = app
            .http
            .post(app.url("/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_error(
            resp,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        )
        .await;

        // Streamed without a Content-Length, too.
        let stream =
            futures::stream::iter((0..2).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 40 * 1024])));
        let resp = app
            .http
            .post(app.url("/v1/users"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_error(
            resp,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        )
        .await;
    }
}

scenario! {
    async fn malformed_requests_get_a_stable_code_never_a_500(backend) {
        let app = spawn_app(backend).await;
        let post = |path: &'static str, content_type: &'static str, body: &'static str| {
            app.http
                .post(app.url(path))
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        for (path, content_type, body) in [
            ("/oauth/token", "text/plain", "grant_type=password"),
            ("/oauth/token", "application/json", "{\"grant_type\": "),
            ("/oauth/token", "application/json", "[1, 2, 3]"),
            ("/oauth/token", "application/json", "{\"grant_type\": 42}"),
            (
                "/oauth/token",
                "application/x-www-form-urlencoded",
                "%%%=%%%",
            ),
            ("/oauth/revoke", "application/xml", "<token/>"),
            (
                "/oauth/token",
                "application/x-www-form-urlencoded",
                "grant_type=password&grant_type=refresh_token",
            ),
            ("/oauth/introspect", "text/plain", "token=x"),
            ("/v1/users", "application/x-www-form-urlencoded", "email=a"),
            ("/v1/users", "application/json", "\u{0}"),
        ] {
            let resp = post(path, content_type, body).await.unwrap();
            let status = resp.status();
            if path.starts_with("/oauth/") {
                // RFC 6749 §5.2: not cached, even when refused before the handler ran.
                assert_eq!(resp.headers()["cache-control"], "no-store", "{path} {body:?}");
                assert_eq!(resp.headers()["pragma"], "no-cache", "{path} {body:?}");
            }
            let text = resp.text().await.unwrap();
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{path} {content_type} {body:?}: {text}"
            );
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["error"], "invalid_request", "{text}");
        }
        let resp = app.http.post(app.url("/oauth/token")).send().await.unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
    }
}

scenario! {
    async fn unknown_routes_and_methods_answer_json(backend) {
        let app = spawn_app(backend).await;
        assert_error(
            app.get("/nope").await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        let resp = app.get("/oauth/token").await;
        assert!(resp.status().is_client_error());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].is_string());
        assert!(
            app.get("/healthz").await
                .headers()
                .contains_key("x-request-id")
        );
    }
}

scenario! {
    async fn parse_errors_never_echo_the_input_and_repeated_json_members_are_refused(backend) {
        let app = spawn_app(backend).await;
        let post_json = |path: &'static str, body: String| {
            app.http
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let repeated =
            r#"{"grant_type":"password","grant_type":"refresh_token","client_id":"dev"}"#.to_owned();
        let body = assert_error(
            post_json("/oauth/token", repeated).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("grant_type"),
            "{body}"
        );
        let repeated =
            r#"{"email":"a@b.example","email":"c@d.example","password":"a sound passphrase"}"#
                .to_owned();
        assert_error(
            post_json("/v1/users", repeated).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;

        // A secret sent with the wrong type, and multi-byte input around any cut-off point.
        let secret = "9817264509871234";
        let typed = format!(
            r#"{{"grant_type":"password","client_id":"dev","username":"a@b.example","password":{secret}}}"#
        );
        let resp = post_json("/oauth/token", typed).await.unwrap();
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("invalid_request") && !text.contains(secret),
            "{text}"
        );
        let wide = format!(r#"{{"grant_type":["{}"]}}"#, "é".repeat(300));
        let resp = post_json("/oauth/token", wide).await.unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        let wide = format!(r#"{{"email":{},"password":"x"}}"#, "1".repeat(300));
        assert_error(
            post_json("/v1/users", wide).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
    }
}
