//! Keeping the signing keys current: every instance re-reads the key ring every
//! `RELOAD_INTERVAL`, and with `key_rotation_interval` set, rotates it when due (see
//! `crypto::keyring` for why exactly one instance does).
//!
//! Each change an instance takes in is counted (`issuer_key_changes_total{key}`), each
//! failed re-read too (`issuer_key_reload_failures_total{key}`); while the last re-read
//! of either key failed, `issuer_keys_stale` is 1 and `/readyz` says `keys: "stale"`:
//! after an emergency roll made elsewhere, such an instance would go on accepting what
//! the roll was meant to refuse. It is not made unready for it: every instance reads
//! the same key directory, and a failure there would take them all out at once; the
//! alert `TokenIssuerKeysStale` calls someone instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_lc_rs::rsa::KeySize;

use super::Issuer;
use crate::crypto::keyring::{self, Lifetimes, PUBLISH_AHEAD, RELOAD_INTERVAL, Rotation};
use crate::crypto::keys::{KeyError, Reload};
use crate::store::AuditEvent;

/// Whether the last re-read of each key failed.
#[derive(Debug, Default)]
pub(crate) struct KeyReads {
    signing: AtomicBool,
    refresh: AtomicBool,
    /// The refresh-key swaps counted so far (`RefreshKeys::swaps`).
    refresh_swaps_counted: AtomicU64,
    /// The signing-key changes counted so far (`Keys::changes`).
    signing_changes_counted: AtomicU64,
}

impl KeyReads {
    /// Whether the last re-read of either key failed.
    pub(crate) fn stale(&self) -> bool {
        self.signing.load(Ordering::Relaxed) || self.refresh.load(Ordering::Relaxed)
    }
}

/// The longest an access token can live, plus the largest clock leeway: how long a
/// retired key must stay published.
/// Plus two reload intervals: an instance may sign with the old key that long after
/// the rotation.
const RETIRE_GRACE: std::time::Duration =
    std::time::Duration::from_secs(15 * 60 + 30 + 2 * RELOAD_INTERVAL.as_secs());

/// The timing rules every instance applies to the ring.
pub const LIFETIMES: Lifetimes = Lifetimes {
    publish_ahead: PUBLISH_AHEAD,
    retire_grace: RETIRE_GRACE,
};

/// Key sizes the CLI accepts.
pub fn key_size(bits: u32) -> Option<KeySize> {
    match bits {
        2048 => Some(KeySize::Rsa2048),
        3072 => Some(KeySize::Rsa3072),
        4096 => Some(KeySize::Rsa4096),
        _ => None,
    }
}

impl Issuer {
    /// Runs until the process stops: every `RELOAD_INTERVAL`, and at once when a key
    /// command announced a change through Redis.
    pub async fn watch_keys(self: Arc<Self>) {
        let mut every = tokio::time::interval(RELOAD_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.shared.keys_announced() => {
                    tracing::info!(event = "keys_announced", "a key command announced a change: re-reading the key files now");
                }
            }
            if let Err(e) = self.refresh_keys().await {
                tracing::warn!(error = %e, "key ring check failed");
            }
        }
    }

    /// One check: the refresh-token key, then rotate the signing keys if due and pick
    /// up whatever the ring says now.
    pub async fn refresh_keys(&self) -> Result<(), KeyError> {
        // First, and whatever happens to the signing keys: after an emergency rotation
        // an instance must not go on with the old key unnoticed.
        let refresh = self.refresh_keys.reload(self.keys.dir());
        self.key_reads
            .refresh
            .store(refresh.is_err(), Ordering::Relaxed);
        self.count_key_changes();
        match refresh {
            Ok(true) => {
                tracing::warn!(target: "security", event = "refresh_key_changed", "the refresh-token key changed: tokens are minted under the new key");
            }
            Ok(false) => {}
            Err(e) => {
                self.metrics.key_reload_failed("refresh");
                tracing::error!(target: "security", event = "refresh_key_reload_failed", error = %e, "the refresh-token key could not be re-read: this instance keeps the key it has");
            }
        }
        let now = self.now().unix_timestamp();
        let dir = self.keys.dir().to_owned();
        if let Some(interval) = self.key_rotation_interval {
            let rotated = tokio::task::spawn_blocking(move || {
                keyring::rotate_if_due(&dir, now, interval, LIFETIMES)
            })
            .await
            .map_err(|_| KeyError::Generate)
            .and_then(|r| r);
            match rotated {
                Ok(Some(rotation)) => self.record_rotation(&rotation, "schedule").await,
                Ok(None) => {}
                // Logged, and the ring is still re-read below: a failing schedule must
                // not stop this instance from following rotations made elsewhere.
                Err(e) => tracing::warn!(error = %e, "scheduled key rotation failed"),
            }
        }
        let keys = Arc::clone(&self.keys);
        let reloaded = tokio::task::spawn_blocking(move || keys.reload(now))
            .await
            .map_err(|_| KeyError::Generate)
            .and_then(|r| r);
        self.key_reads
            .signing
            .store(reloaded.is_err(), Ordering::Relaxed);
        self.count_key_changes();
        match reloaded {
            Ok(Reload::Same) => {}
            Ok(Reload::Swapped { new_active }) => {
                if let Some(kid) = new_active {
                    tracing::info!(target: "security", event = "signing_key_changed", kid = %kid);
                }
            }
            Err(e) => {
                self.metrics.key_reload_failed("signing");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Counts the key changes taken in since the last count, whichever path re-read
    /// the files (this reload; an unknown `kid` or a JWKS request for the ring; a
    /// refresh token of an unknown key for the refresh key). Also run at each scrape.
    pub(crate) fn count_key_changes(&self) {
        let counts = [
            (
                "signing",
                self.keys.changes(),
                &self.key_reads.signing_changes_counted,
            ),
            (
                "refresh",
                self.refresh_keys.swaps(),
                &self.key_reads.refresh_swaps_counted,
            ),
        ];
        for (key, now, counted) in counts {
            // `fetch_max`: two scrapes at once count each change once.
            let before = counted.fetch_max(now, Ordering::Relaxed);
            for _ in before..now {
                self.metrics.key_changed(key);
            }
        }
    }

    async fn record_rotation(&self, rotation: &Rotation, by: &str) {
        tracing::warn!(target: "security", event = "key_rotated", by, retired = %rotation.retired, active = %rotation.active, next = %rotation.next);
        let event = AuditEvent::key_rotated(
            self.now(),
            by,
            &rotation.retired,
            &rotation.active,
            &rotation.next,
        );
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::warn!(error = %e, "could not record the key rotation");
        }
    }
}
