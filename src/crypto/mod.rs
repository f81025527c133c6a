//! Keys and the cryptographic operations on them.
//!
//! RSA signing uses an `aws_lc_rs` key pair parsed once at start-up (jsonwebtoken's own
//! `encode` would re-parse the private key for every token); verification goes through
//! jsonwebtoken with every check pinned. `ring` provides the CSPRNG, SHA-256 and HMAC
//! for refresh tokens; argon2id hashes passwords on a bounded pool.

#[cfg(feature = "server")]
pub mod client_assertion;
#[cfg(feature = "server")]
pub mod client_secret;
#[cfg(feature = "server")]
pub mod codes;
#[cfg(any(feature = "server", feature = "verifier"))]
pub mod dpop;
#[cfg(feature = "server")]
pub mod forms;
pub mod jwt;
#[cfg(feature = "server")]
pub mod keys;
/// The key ring (`keys::ring`), under the name the CLI and the tests know.
#[cfg(feature = "server")]
pub use keys::ring as keyring;
#[cfg(feature = "server")]
pub mod password;
#[cfg(feature = "server")]
pub mod refresh;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// base64url without padding, as JOSE and our refresh tokens use it.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Lower-case hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
