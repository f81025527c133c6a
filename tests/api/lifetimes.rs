use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{assert_error, assert_invalid_grant, spawn_app, tokens};

const DAY: Duration = Duration::from_secs(86_400);

scenario! {
    async fn an_idle_family_times_out(backend) {
        let app = spawn_app(backend).await;
        let (_, first) = app.signed_in().await;
        app.advance(14 * DAY + Duration::from_secs(1));
        assert_invalid_grant(app.refresh(&first.refresh).await, "idle_timeout").await;
    }
}

scenario! {
    async fn use_keeps_a_family_alive_until_its_absolute_lifetime(backend) {
        let app = spawn_app(backend).await;
        let (_, mut current) = app.signed_in().await;
        // Used every 13 days: never idle, until 90 days after the login.
        for _ in 0..6 {
            app.advance(13 * DAY);
            current = tokens(app.refresh(&current.refresh).await).await;
        }
        // Day 78 now; day 91 is past the absolute lifetime although not idle.
        app.advance(13 * DAY);
        assert_invalid_grant(app.refresh(&current.refresh).await, "expired").await;
    }
}

scenario! {
    async fn access_tokens_expire_after_their_lifetime_plus_leeway(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        app.advance(Duration::from_secs(600 + 20));
        assert_eq!(
            app.me(&t.access).await.status(),
            StatusCode::OK,
            "within the 30 s leeway"
        );
        app.advance(Duration::from_secs(11));
        assert_error(
            app.me(&t.access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            None,
        )
        .await;
    }
}

scenario! {
    async fn ended_sessions_are_swept_a_day_after_they_end(backend) {
        let app = spawn_app(backend).await;
        let (_, live) = app.signed_in().await;
        let (_, revoked) = app.signed_in().await;
        let resp = app
            .post_form(
                "/oauth/revoke",
                &[("client_id", "dev"), ("token", &revoked.refresh)],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);

        // Within the margin the precise reason is still given.
        app.advance(Duration::from_secs(3600));
        assert_eq!(app.issuer.sweep().await.unwrap(), 0);
        assert_invalid_grant(app.refresh(&revoked.refresh).await, "revoked").await;
        let live = tokens(app.refresh(&live.refresh).await).await;

        app.advance(DAY);
        assert_eq!(
            app.issuer.sweep().await.unwrap(),
            1,
            "only the revoked session"
        );
        assert_invalid_grant(app.refresh(&revoked.refresh).await, "unknown").await;
        let live = tokens(app.refresh(&live.refresh).await).await;

        // An idle session goes a day after its idle timeout.
        app.advance(15 * DAY + Duration::from_secs(1));
        assert_eq!(app.issuer.sweep().await.unwrap(), 1);
        assert_invalid_grant(app.refresh(&live.refresh).await, "unknown").await;
    }
}

scenario! {
    /// The SQLite store sweeps in chunks of 256 families (one transaction each, so the
    /// single writer is never held for long): a backlog of several chunks goes whole.
    async fn a_backlog_of_ended_sessions_is_swept_whole(backend) {
        use crate::helpers::store_level::{family, user_and_store};
        const BACKLOG: u64 = 600;
        let app = spawn_app(backend).await;
        let (_, live) = app.signed_in().await;
        let (user_id, store) = user_and_store(&app).await;
        let long_ago = time::OffsetDateTime::from_unix_timestamp(crate::helpers::now(&app)).unwrap()
            - 400 * DAY;
        for _ in 0..BACKLOG {
            family(&*store, user_id, long_ago).await;
        }
        assert_eq!(app.issuer.sweep().await.unwrap(), BACKLOG);
        assert_eq!(app.issuer.sweep().await.unwrap(), 0);
        tokens(app.refresh(&live.refresh).await).await;
        store.close().await;
    }
}
