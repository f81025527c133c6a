//! The revocation epochs in force, as this instance knows them (`service::incident`):
//! loaded at start, re-read from the database every 2 s, set at once by the instance
//! that writes one, and taken from Redis (the announcement, and the keys read with
//! each access-token check) as soon as another instance writes one.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::store::Epoch;

/// The epochs in force, as this instance knows them: the scope (a client id, or `*`)
/// and its `not_before` in unix seconds.
#[derive(Debug, Default)]
pub struct Epochs(RwLock<HashMap<String, i64>>);

impl Epochs {
    /// Takes `epochs` in, keeping for each scope the later instant; whether one rose.
    pub fn merge(&self, epochs: &[Epoch]) -> bool {
        let mut rose = false;
        for e in epochs {
            rose |= self.merge_one(e.scope(), e.not_before.unix_timestamp());
        }
        rose
    }

    /// Takes one scope's `not_before` (unix seconds) in, if it is later; whether it
    /// rose.
    pub fn merge_one(&self, scope: &str, not_before: i64) -> bool {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(scope) {
            Some(known) if *known >= not_before => false,
            Some(known) => {
                *known = not_before;
                true
            }
            None => {
                map.insert(scope.to_owned(), not_before);
                true
            }
        }
    }

    /// Every scope and its `not_before`, sorted by scope.
    pub fn snapshot(&self) -> Vec<(String, i64)> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<(String, i64)> = map.iter().map(|(s, t)| (s.clone(), *t)).collect();
        all.sort();
        all
    }

    /// Whether an access token of `client_id` issued at `iat` is refused.
    pub fn refuses(&self, client_id: &str, iat: i64) -> bool {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        ["*", client_id]
            .iter()
            .filter_map(|scope| map.get(*scope))
            .any(|not_before| iat < *not_before)
    }
}
