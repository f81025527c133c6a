//! Pure types and rules: no HTTP, no SQL, no I/O.

pub mod address;
pub mod claims;
pub mod client;
pub mod clock;
pub mod family;
pub mod secret;
pub mod user;
