//! Integration tests: each test spawns the real server on port 0 with a fresh SQLite
//! file and key directory, and talks HTTP to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod bad_input;
mod concurrency;
mod cookie_mode;
mod discovery;
mod forged_tokens;
mod lifetimes;
mod openapi;
mod password_grant;
mod process;
mod refresh_grant;
mod registration;
mod revocation;
