//! The databases of the tests: a PostgreSQL database per test, statements behind the
//! service's back, and what the tables hold (on either backend).

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection as _, FromRow};

use super::TestApp;

/// A PostgreSQL database made for one test and dropped after it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

/// `ISSUER_TEST_POSTGRES_URL`, or the local server with trust authentication.
fn postgres_admin_url() -> String {
    std::env::var("ISSUER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = postgres_admin_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL does not answer at {admin_url} ({e}); start it (`service postgresql start`) \
                 or set ISSUER_TEST_POSTGRES_URL"
            )
        });
        let name = format!("issuer_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = sqlx::query(&drop).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

impl TestApp {
    /// Runs one statement on the app's database, behind the service's back (to stage
    /// what a race would leave).
    pub async fn exec_sql(&self, sql: &str) {
        let url = self.settings.database_url.expose();
        if url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// A family's generation as stored: its one live refresh token is the one of this
/// generation (SQLite or PostgreSQL).
pub async fn family_generation(database_url: &str, sid: &str) -> i64 {
    let sql = "SELECT generation FROM refresh_families WHERE CAST(id AS TEXT) = $1";
    let (generation,): (i64,) = fetch_one(database_url, sql, sid).await;
    generation
}

/// The family's row as stored: revoked or not, and its generation.
pub async fn stored_family(database_url: &str, sid: &str) -> (bool, i64) {
    let sql = "SELECT revoked_at IS NOT NULL, generation FROM refresh_families
               WHERE CAST(id AS TEXT) = $1";
    fetch_one(database_url, sql, sid).await
}

/// Every family not revoked, with its generation (SQLite or PostgreSQL).
pub async fn generations(database_url: &str) -> Vec<(String, i64)> {
    let sql = "SELECT CAST(id AS TEXT), generation FROM refresh_families
               WHERE revoked_at IS NULL";
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    }
}

/// The one row `sql` answers with `$1` bound to `arg`, on the backend `database_url`
/// names (both read `$1`).
async fn fetch_one<T>(database_url: &str, sql: &str, arg: &str) -> T
where
    T: Send + Unpin + for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow>,
{
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query_as(sql)
            .bind(arg)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query_as(sql)
            .bind(arg)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}
