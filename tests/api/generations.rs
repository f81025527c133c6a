//! The constant-storage model (issue 16): a session is one row however often it
//! rotates; a token ahead of the database moves its session forward; tokens of the
//! earlier format keep working once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, TestApp, assert_invalid_grant, segment, spawn_app, stored_family, token_position,
    tokens,
};

/// How many rows a table holds.
async fn rows(app: &TestApp, table: &str) -> i64 {
    use sqlx::Connection as _;
    let url = app.settings.database_url.expose();
    let sql = format!("SELECT count(*) FROM {table}");
    let (n,): (i64,) = if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap()
    };
    n
}

scenario! {
    /// A thousand rotations later the session is still one row, and no token row was
    /// ever written.
    async fn a_session_is_one_row_however_often_it_rotates(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
        let families = rows(&app, "refresh_families").await;
        let mut current = t.refresh;
        for round in 1..=1000 {
            current = tokens(app.refresh(&current).await).await.refresh;
            if round % 250 == 0 {
                assert_eq!(rows(&app, "refresh_families").await, families, "after {round}");
                assert_eq!(rows(&app, "refresh_tokens").await, 0, "after {round}");
            }
        }
        let url = app.settings.database_url.expose();
        assert_eq!(stored_family(url, &sid).await, (false, 1000));
        assert_eq!(token_position(&current), (sid, 1000));
    }
}

scenario! {
    /// The database is put back three rotations (a restore from a copy taken earlier,
    /// or commits lost to a power cut): the client's token is ahead of it. The MAC
    /// proves it is ours, so the session moves forward instead of ending, with an
    /// audit row and a metric; an older token is reuse from there on.
    async fn a_token_ahead_of_a_restored_database_moves_its_session_forward(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
        let mut chain = vec![t.refresh];
        for _ in 0..5 {
            let next = tokens(app.refresh(chain.last().unwrap()).await).await.refresh;
            chain.push(next);
        }
        // The family's row as a copy taken at generation 2 holds it.
        app.exec_sql(&format!(
            "UPDATE refresh_families SET generation = 2 WHERE CAST(id AS TEXT) = '{sid}'"
        ))
        .await;
        app.advance(Duration::from_secs(60));
        let moved = tokens(app.refresh(&chain[5]).await).await;
        assert_eq!(token_position(&moved.refresh), (sid.clone(), 6));
        let url = app.settings.database_url.expose();
        assert_eq!(stored_family(url, &sid).await, (false, 6));
        assert_eq!(app.metric("issuer_families_moved_forward_total").await, "1");
        let store = token_issuer::startup::open_store(&app.settings).await.unwrap();
        let events = store.audit_events(None, 50).await.unwrap();
        let event = events
            .iter()
            .find(|e| e.kind.code() == "family_moved_forward")
            .expect("an audit row for the operator");
        assert_eq!(event.family_id.map(|f| f.to_string()), Some(sid.clone()));
        assert!(event.detail.as_deref().unwrap().contains("generation 2 -> 6"), "{event:?}");
        store.close().await;
        // The session goes on; a token older than the live one is reuse.
        let next = tokens(app.refresh(&moved.refresh).await).await;
        assert_eq!(token_position(&next.refresh), (sid.clone(), 7));
        app.advance(Duration::from_secs(60));
        assert_invalid_grant(app.refresh(&chain[4]).await, "reused").await;
        assert_invalid_grant(app.refresh(&next.refresh).await, "revoked").await;
    }
}

/// The time as each backend stores it.
fn stored_time(backend: Backend, unix: i64) -> String {
    match backend {
        Backend::Sqlite => (unix * 1000).to_string(),
        Backend::Postgres => format!("to_timestamp({unix})"),
    }
}

/// A hash as each backend writes a blob literal.
fn stored_hash(backend: Backend, hash: &[u8]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    match backend {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::bytea"),
    }
}

/// A session as the earlier format left it: a family at generation 0 and a chain of
/// token rows, `consumed` of them used, the last one live. Its tokens, oldest first.
async fn legacy_session(
    app: &TestApp,
    backend: Backend,
    user_id: &str,
    consumed: usize,
) -> (String, Vec<String>) {
    use token_issuer::crypto::refresh;
    let family = uuid::Uuid::new_v4().to_string();
    let now = stored_time(backend, crate::helpers::now(app));
    app.exec_sql(&format!(
        "INSERT INTO refresh_families (id, user_id, client_id, created_at, last_used_at,
                                       generation, generation_issued_at)
         VALUES ('{family}', '{user_id}', 'dev', {now}, {now}, 0, {now})"
    ))
    .await;
    let tokens: Vec<String> = (0..=consumed)
        .map(|_| refresh::generate().unwrap().expose().to_owned())
        .collect();
    let hashes: Vec<_> = tokens
        .iter()
        .map(|t| refresh::hash(&token_issuer::domain::secret::Secret::new(t.clone())))
        .collect();
    for (i, hash) in hashes.iter().enumerate() {
        let parent = match i {
            0 => "NULL".to_owned(),
            _ => stored_hash(backend, &hashes[i - 1]),
        };
        let consumed_at = if i < consumed {
            now.clone()
        } else {
            "NULL".to_owned()
        };
        app.exec_sql(&format!(
            "INSERT INTO refresh_tokens (token_hash, family_id, parent_hash, created_at, consumed_at)
             VALUES ({}, '{family}', {parent}, {now}, {consumed_at})",
            stored_hash(backend, hash)
        ))
        .await;
    }
    (family, tokens)
}

scenario! {
    /// A session started before the upgrade: its live token works once and is answered
    /// with a token of the minted format (generation 1); a retry within the grace window
    /// gets that token again; after it, the old token is reuse. A token it had already
    /// rotated before the upgrade is reuse at once.
    async fn a_token_of_the_earlier_format_works_once_and_upgrades_its_session(backend) {
        let app = spawn_app(backend).await;
        let (_, t) = app.signed_in().await;
        let user_id = segment(&t.access, 1)["sub"].as_str().unwrap().to_owned();
        let (family, old) = legacy_session(&app, backend, &user_id, 2).await;
        let upgraded = tokens(app.refresh(&old[2]).await).await;
        assert_eq!(token_position(&upgraded.refresh), (family.clone(), 1));
        assert_eq!(segment(&upgraded.access, 1)["sid"], family.as_str());
        let retry: Value = app.refresh(&old[2]).await.json().await.unwrap();
        assert_eq!(retry["refresh_token"], upgraded.refresh.as_str(), "the grace window answers the same token");
        let next = tokens(app.refresh(&upgraded.refresh).await).await;
        assert_eq!(token_position(&next.refresh), (family.clone(), 2));
        app.advance(Duration::from_secs(60));
        assert_invalid_grant(app.refresh(&old[2]).await, "reused").await;
        assert_invalid_grant(app.refresh(&next.refresh).await, "revoked").await;

        // Rotated before the upgrade: reuse, the session ends.
        let (other, old) = legacy_session(&app, backend, &user_id, 2).await;
        assert_invalid_grant(app.refresh(&old[1]).await, "reused").await;
        let url = app.settings.database_url.expose();
        assert_eq!(stored_family(url, &other).await, (true, 0));
        assert_eq!(app.refresh(&old[2]).await.status(), StatusCode::BAD_REQUEST);
    }
}

/// The same with a real copy: SQLite's `VACUUM INTO` takes it at generation 2, the
/// session rotates on, and an instance started on the copy (the same keys) meets the
/// client's newest token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_on_an_older_copy_of_the_database_moves_the_session_forward() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, t) = app.signed_in().await;
    let sid = segment(&t.access, 1)["sid"].as_str().unwrap().to_owned();
    let mut current = t.refresh;
    for _ in 0..2 {
        current = tokens(app.refresh(&current).await).await.refresh;
    }
    let copy = app.settings.data_dir.join("copy.db");
    app.exec_sql(&format!("VACUUM INTO '{}'", copy.display()))
        .await;
    for _ in 0..3 {
        current = tokens(app.refresh(&current).await).await.refresh;
    }
    let shared = app.settings.clone();
    let restored = crate::helpers::spawn_app_with(Backend::Sqlite, move |settings| {
        let bind = settings.bind;
        *settings = shared;
        settings.bind = bind;
        settings.database_url =
            token_issuer::config::SecretUrl::new(format!("sqlite://{}", copy.display()));
    })
    .await;
    let moved = tokens(restored.refresh(&current).await).await;
    assert_eq!(token_position(&moved.refresh), (sid.clone(), 6));
    assert_eq!(
        restored.metric("issuer_families_moved_forward_total").await,
        "1"
    );
    let url = restored.settings.database_url.expose();
    assert_eq!(stored_family(url, &sid).await, (false, 6));
}
