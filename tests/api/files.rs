//! What the issuer writes to disk is its own: the SQLite database (e-mail addresses,
//! session IPs) and its `-wal`/`-shm` files 0600 in a 0700 data directory, like the keys.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::helpers::{Backend, spawn_app};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_keys_are_readable_by_their_owner_only() {
    let app = spawn_app(Backend::Sqlite).await;
    // Writes, so that the WAL and its index exist.
    app.signed_in().await;
    let db = app.settings.data_dir.join("test.db");
    assert_eq!(mode(&app.settings.data_dir), 0o700, "data directory");
    for file in ["test.db", "test.db-wal", "test.db-shm"] {
        assert_eq!(mode(&app.settings.data_dir.join(file)), 0o600, "{file}");
    }
    assert!(db.exists());
    assert_eq!(mode(&app.keys_dir()), 0o700, "key directory");
}
