use reqwest::StatusCode;

use crate::helpers::{assert_error, assert_invalid_grant, spawn_app, tokens};

scenario! {
    async fn revoking_a_refresh_token_ends_its_family(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let next = tokens(app.refresh(&t.refresh).await).await;
        let resp = app
            .post_form(
                "/oauth/revoke",
                &[("client_id", "dev"), ("token", &next.refresh)],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_invalid_grant(app.refresh(&next.refresh).await, "revoked").await;
        assert_eq!(
            app.me(&next.access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        // Revoking again, or revoking a token nobody knows, still answers 200.
        let again = app
            .post_form(
                "/oauth/revoke",
                &[("client_id", "dev"), ("token", &next.refresh)],
            )
            .await;
        assert_eq!(again.status(), StatusCode::OK);
        let unknown = app
            .post_form("/oauth/revoke", &[("client_id", "dev"), ("token", "nope")])
            .await;
        assert_eq!(unknown.status(), StatusCode::OK);
    }
}

scenario! {
    async fn revoking_an_access_token_ends_its_family(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let resp = app
            .post_form(
                "/oauth/revoke",
                &[
                    ("client_id", "dev"),
                    ("token", &t.access),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
        assert_invalid_grant(app.refresh(&t.refresh).await, "revoked").await;
    }
}

scenario! {
    async fn a_client_cannot_revoke_another_clients_token(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let resp = app
            .post_form(
                "/oauth/revoke",
                &[("client_id", "other"), ("token", &t.refresh)],
            )
            .await;
        assert_error(resp, StatusCode::BAD_REQUEST, "unauthorized_client", None).await;
        tokens(app.refresh(&t.refresh).await).await;
    }
}

scenario! {
    async fn revocation_requests_are_validated(backend) {
        let app = spawn_app(backend).await;
        assert_error(
            app.post_form("/oauth/revoke", &[("client_id", "dev")])
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        assert_error(
            app.post_form("/oauth/revoke", &[("token", "x")]).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
        assert_error(
            app.post_form("/oauth/revoke", &[("client_id", "nobody"), ("token", "x")])
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
        )
        .await;
    }
}
