//! Pure types and rules: no HTTP, no SQL, no I/O.

pub mod address;
pub mod audit;
#[cfg(feature = "server")]
pub mod authorization;
pub mod claims;
pub mod client;
pub mod clock;
#[cfg(feature = "server")]
pub mod common_passwords;
pub mod error;
pub mod family;
pub mod generation;
pub mod secret;
#[cfg(feature = "server")]
pub mod user;
