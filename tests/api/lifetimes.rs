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

scenario! {
    /// The sweep reads the table a page (4096 families) at a time: ended families spread
    /// among live ones over more than one page all go, every live one stays.
    async fn the_sweep_walks_every_page_of_a_large_table(backend) {
        use std::sync::Arc;
        use crate::helpers::store_level::{family, user_and_store};
        const FAMILIES: usize = 4_500;
        let app = spawn_app(backend).await;
        let (user_id, store) = user_and_store(&app).await;
        let now = time::OffsetDateTime::from_unix_timestamp(crate::helpers::now(&app)).unwrap();
        let live_before = store.count_live_families(&app.settings.issuer().widest_policy(), now).await.unwrap();
        // Every third one ended long ago; created by 8 tasks at once.
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in (task..FAMILIES).step_by(8) {
                        let at = if i % 3 == 0 { now - 400 * DAY } else { now };
                        family(&*store, user_id, at).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(app.issuer.sweep().await.unwrap(), (FAMILIES as u64).div_ceil(3));
        let live = store.count_live_families(&app.settings.issuer().widest_policy(), now).await.unwrap();
        assert_eq!(live, live_before + (FAMILIES - FAMILIES.div_ceil(3)) as u64);
        assert_eq!(app.issuer.sweep().await.unwrap(), 0);
        store.close().await;
    }
}

scenario! {
    /// A backlog that a sweep in one piece could not finish within the store's time
    /// limit (1 s here: SQLite's chunks each scanned again from the start of the table,
    /// PostgreSQL's one statement ran under `statement_timeout`) goes whole, in steps
    /// that each fit in it; the live sessions among it stay.
    async fn a_backlog_larger_than_the_time_limit_is_swept_in_steps(backend) {
        const FAMILIES: u64 = 100_000;
        let app = crate::helpers::spawn_app_with(backend, |s| {
            s.database_timeout = Duration::from_secs(1);
        })
        .await;
        let (email, live) = app.signed_in().await;
        let now = crate::helpers::now(&app);
        let old = now - 400 * 86_400;
        // Every other family ended 400 days ago.
        let prefix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let sql = if app.settings.database_url.expose().starts_with("postgres") {
            format!(
                "INSERT INTO refresh_families
                     (id, user_id, client_id, created_at, last_used_at, generation_issued_at)
                 SELECT ('{prefix}-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid,
                        (SELECT id FROM users WHERE email = '{email}'), 'dev', t, t, t
                 FROM (SELECT i, to_timestamp(CASE WHEN i % 2 = 0 THEN {old} ELSE {now} END) AS t
                       FROM generate_series(1, {FAMILIES}) AS i) AS f"
            )
        } else {
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {FAMILIES})
                 INSERT INTO refresh_families
                     (id, user_id, client_id, created_at, last_used_at, generation_issued_at)
                 SELECT printf('{prefix}-0000-4000-9000-%012d', i),
                        (SELECT id FROM users WHERE email = '{email}'), 'dev', t, t, t
                 FROM (SELECT i, 1000 * CASE WHEN i % 2 = 0 THEN {old} ELSE {now} END AS t FROM n)"
            )
        };
        app.exec_sql(&sql).await;
        assert_eq!(app.issuer.sweep().await.unwrap(), FAMILIES / 2);
        assert_eq!(app.issuer.sweep().await.unwrap(), 0);
        tokens(app.refresh(&live.refresh).await).await;
    }
}
