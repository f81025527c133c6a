//! What can go wrong with the key directory.

use std::path::{Path, PathBuf};

/// A key-directory problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("key directory {0}: several keys and no `active` file naming the one that signs")]
    NoActive(PathBuf),
    #[error("key directory {0}: `active` names a key that is not there")]
    MissingActive(PathBuf),
    #[error("RSA key generation failed")]
    Generate,
    #[error("the key ring is locked by another process ({0}); try again")]
    Locked(PathBuf),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}
