//! The signing keys and the JWKS that publishes them.
//!
//! Layout of the key directory:
//! - `<kid>.pem`: an RSA private key, PKCS#8 PEM, mode 0600. The `kid` is the RFC 7638
//!   JWK thumbprint of its public key.
//! - `keyring.json`: which key is active, next or retired (see `keyring`); `active`
//!   mirrors the active `kid`.
//! - `refresh-hmac.key`: the secret that MACs the refresh tokens (`crypto::refresh`);
//!   `refresh-hmac.previous.key`, when present, still verifies during a change.
//!
//! The published keys (active, next, and retired ones until their `not_after`) are
//! parsed into a `KeySet`; `Keys` holds the current set and swaps in a new one when the
//! ring changes, so there is no file I/O on the request path.
//!
//! Four layers, each using only those below it (no circle):
//! - `key`: one RSA key, parsed once: its `kid`, JWK and JWS header;
//! - `dir`: the directory as files: the lock, atomic writes, PEM keys, secrets;
//! - `ring`: which key is active, next or retired, and the decisions that change it
//!   (generate, rotate, retire, the scheduled rotation);
//! - `set`: the keys published at a moment, and the current set.

mod dir;
mod error;
mod key;
pub mod ring;
mod set;

pub use dir::read_or_create_secret_file;
pub(crate) use dir::{create_exclusive, locked, replace_file};
pub use error::KeyError;
pub use key::{Jwk, SigningKey};
pub use set::{KeySet, Keys, Reload};
