//! Integration tests: each test spawns the real server on port 0 with a fresh SQLite
//! file and key directory, and talks HTTP to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Defines a scenario once and runs it on both stores: `<name>::sqlite` and
/// `<name>::postgres`.
macro_rules! scenario {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            async fn run($backend: crate::helpers::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run(crate::helpers::Backend::Postgres).await
            }
        }
    };
}

mod helpers;

mod addresses;
mod admin;
mod authorization_code;
mod bad_input;
mod client_credentials;
mod clients;
mod concurrency;
mod cookie_mode;
mod credential_races;
mod deploy;
mod discovery;
mod dpop;
mod faults;
mod files;
mod forged_tokens;
mod generations;
mod incident;
mod instances;
mod introspection;
mod keys;
mod lifetimes;
mod login_limits;
mod model;
mod openapi;
mod password_grant;
mod process;
mod proxy;
mod refresh_grant;
mod registration;
mod revocation;
mod sessions;
mod shared_state;
mod slow_clients;
mod stalls;
mod verifier;
