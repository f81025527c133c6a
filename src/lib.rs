//! token-issuer: the issuer (feature `server`) and the verifier that services embed
//! (feature `verifier`); both are on by default.

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
pub mod crypto;
pub mod domain;
#[cfg(feature = "server")]
pub mod files;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod startup;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "verifier")]
pub mod verifier;
