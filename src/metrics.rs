//! Prometheus metrics, kept in process and rendered in the text format (0.0.4) at
//! `/metrics`, through the `prometheus` crate (tikv's rust-prometheus).
//!
//! Why this crate: each `Metrics` holds its own registry (several issuers run in one
//! test process, and each counts its own), and it renders the 0.0.4 text format that
//! `/metrics` has always served (`# TYPE` lines naming the samples, `_total` included).
//! `prometheus-client` renders OpenMetrics only (its `# TYPE` line drops `_total`, and
//! the content type would change under every scraper's feet); the `metrics` facade
//! records into one process-wide recorder.
//!
//! A labelled family is listed once it has a series: the revocation and refusal
//! reasons are all created at 0 at start-up; the request families appear with the
//! first request served.
//!
//! Requests are labelled by the OpenAPI `operation_id` (never the raw path, whose ids
//! would make the label set unbounded); requests that reach no operation are `other`.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::domain::family::{GrantRejection, RevokeReason};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The counters of one process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    revocations: IntCounterVec,
    refresh_refused: IntCounterVec,
    pub logins: IntCounter,
    pub logins_failed: IntCounter,
    pub rotations: IntCounter,
    pub grace_replays: IntCounter,
    pub reuse_detections: IntCounter,
    pub families_moved_forward: IntCounter,
    pub dpop_foreign_keys: IntCounter,
    pub dpop_nonces_asked: IntCounter,
    pub client_auth_failures: IntCounter,
    dpop_proofs_refused: IntCounter,
    pub sessions_revoked_all: IntCounter,
    key_changes: IntCounterVec,
    key_reload_failures: IntCounterVec,
    pub tokens_issued: IntCounter,
    pub rate_limited: IntCounter,
    pub db_errors: IntCounter,
    pub redis_errors: IntCounter,
}

/// The keys an instance re-reads: the signing key ring, and the refresh-token MAC key.
pub const KEYS: [&str; 2] = ["signing", "refresh"];

/// Values read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Live sessions, or `None` when the database did not answer.
    pub active_families: Option<u64>,
    pub argon2_queue_depth: u64,
    /// How many logins may wait for a hash (`password_hash_queue`).
    pub argon2_queue_capacity: u64,
    /// 1 when Redis answers, 0 when configured and not, `None` when not configured.
    pub redis_up: Option<u64>,
    /// Each revocation epoch this instance enforces: its scope (a client id, `*` for
    /// all) and `not_before` in unix seconds.
    pub epochs: Vec<(String, i64)>,
    /// The JWKS `Cache-Control: max-age` served now (short after an emergency roll).
    pub jwks_max_age: u64,
    /// 1 while the last re-read of the key files failed (this instance may not follow
    /// a key change made elsewhere).
    pub keys_stale: u64,
}

/// Registers `metric` with `registry` and hands it back.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    registered(registry, IntCounter::new(name, help))
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    /// Every metric, registered; an error only for a name the crate refuses (a bug).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let metrics = Self {
            requests: counter_vec(
                &r,
                "issuer_http_requests_total",
                "HTTP requests by operation and status.",
                &["operation", "status"],
            )?,
            latency: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "issuer_http_request_duration_seconds",
                        "Time to answer, by operation.",
                    )
                    .buckets(BUCKETS.to_vec()),
                    &["operation"],
                ),
            )?,
            revocations: counter_vec(
                &r,
                "issuer_revocations_total",
                "Sessions ended, by reason.",
                &["reason"],
            )?,
            refresh_refused: counter_vec(
                &r,
                "issuer_refresh_refused_total",
                "Refresh tokens refused (invalid_grant), by reason.",
                &["reason"],
            )?,
            logins: counter(&r, "issuer_logins_total", "Successful password grants.")?,
            logins_failed: counter(
                &r,
                "issuer_logins_failed_total",
                "Refused password grants (wrong e-mail or password).",
            )?,
            tokens_issued: counter(
                &r,
                "issuer_tokens_issued_total",
                "Access tokens minted (logins, rotations, grace replays, password changes).",
            )?,
            rotations: counter(&r, "issuer_rotations_total", "Refresh tokens rotated.")?,
            grace_replays: counter(
                &r,
                "issuer_grace_replays_total",
                "Retries answered within the grace window.",
            )?,
            reuse_detections: counter(
                &r,
                "issuer_reuse_detections_total",
                "Used refresh tokens presented after the grace window.",
            )?,
            families_moved_forward: counter(
                &r,
                "issuer_families_moved_forward_total",
                "Sessions whose token was ahead of the database (restored from a backup, or commits lost), moved forward.",
            )?,
            dpop_foreign_keys: counter(
                &r,
                "issuer_dpop_foreign_keys_total",
                "Refresh tokens bound to a DPoP key presented with a proof of another key (stolen tokens).",
            )?,
            client_auth_failures: counter(
                &r,
                "issuer_client_auth_failures_total",
                "Service clients that failed to authenticate at the token endpoint (client credentials).",
            )?,
            dpop_nonces_asked: counter(
                &r,
                "issuer_dpop_nonces_asked_total",
                "DPoP proofs answered use_dpop_nonce (no nonce, or a stale one): a retry each, in the normal course.",
            )?,
            dpop_proofs_refused: counter(
                &r,
                "issuer_dpop_proofs_refused_total",
                "DPoP proofs refused (invalid_dpop_proof): malformed, for another request, too old, replayed.",
            )?,
            sessions_revoked_all: counter(
                &r,
                "issuer_sessions_revoked_all_total",
                "Revocation epochs set through the admin API on this instance (the CLI's are audited, and seen in issuer_revocation_epoch_seconds).",
            )?,
            key_changes: counter_vec(
                &r,
                "issuer_key_changes_total",
                "Key changes this instance took in when it re-read the key files (a rotation, a roll, a refresh-key change, wherever it was made), by key.",
                &["key"],
            )?,
            key_reload_failures: counter_vec(
                &r,
                "issuer_key_reload_failures_total",
                "Re-reads of the key files that failed, by key (the instance keeps the keys it has).",
                &["key"],
            )?,
            rate_limited: counter(
                &r,
                "issuer_rate_limited_total",
                "Requests refused by a rate limit.",
            )?,
            db_errors: counter(
                &r,
                "issuer_db_errors_total",
                "Store calls that failed or timed out.",
            )?,
            redis_errors: counter(
                &r,
                "issuer_redis_errors_total",
                "Redis calls that failed or timed out.",
            )?,
            registry: r,
        };
        // Every reason is a series from the start, at 0: `rate()` and `increase()` see
        // the first event, and the families are listed before anything happened.
        for reason in RevokeReason::ALL {
            metrics.revocations.with_label_values(&[reason.code()]);
        }
        for reason in GrantRejection::OF_REFRESH {
            metrics.refresh_refused.with_label_values(&[reason.code()]);
        }
        for key in KEYS {
            metrics.key_changes.with_label_values(&[key]);
            metrics.key_reload_failures.with_label_values(&[key]);
        }
        Ok(metrics)
    }

    /// One request served by `operation` with `status` (its three digits), in
    /// `elapsed`.
    pub fn observe_request(&self, operation: &str, status: &str, elapsed: Duration) {
        self.requests.with_label_values(&[operation, status]).inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    /// A session ended, and why (`reuse`, `logout`, `admin_revoke`, ...).
    pub fn revoked(&self, reason: &str) {
        self.revocations.with_label_values(&[reason]).inc();
    }

    /// A DPoP proof refused (`invalid_dpop_proof`).
    pub fn dpop_proof_refused(&self) {
        self.dpop_proofs_refused.inc();
    }

    /// A refresh token refused, and why (`reused`, `revoked`, `expired`, ...).
    pub fn refresh_refused(&self, reason: &str) {
        self.refresh_refused.with_label_values(&[reason]).inc();
    }

    /// This instance took in a change of `key` (one of `KEYS`).
    pub fn key_changed(&self, key: &str) {
        self.key_changes.with_label_values(&[key]).inc();
    }

    /// This instance could not re-read `key` (one of `KEYS`).
    pub fn key_reload_failed(&self, key: &str) {
        self.key_reload_failures.with_label_values(&[key]).inc();
    }

    /// The text exposition format: the counters, and `gauges` as read now (a gauge
    /// that is `None` is left out).
    pub fn render(&self, gauges: Gauges) -> String {
        let now = Registry::new();
        let gauge = |name: &str, help: &str, value: Option<u64>| -> prometheus::Result<()> {
            if let Some(v) = value {
                let g = registered(&now, IntGauge::new(name, help))?;
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            Ok(())
        };
        let read = [
            gauge(
                "issuer_active_families",
                "Live sessions (token families).",
                gauges.active_families,
            ),
            gauge(
                "issuer_argon2_queue_depth",
                "Logins waiting for a password-hashing thread.",
                Some(gauges.argon2_queue_depth),
            ),
            gauge(
                "issuer_argon2_queue_capacity",
                "Logins that may wait for a password-hashing thread (password_hash_queue).",
                Some(gauges.argon2_queue_capacity),
            ),
            gauge("issuer_redis_up", "1 when Redis answers.", gauges.redis_up),
            gauge(
                "issuer_jwks_max_age_seconds",
                "The JWKS Cache-Control max-age served now (30 for an hour after an emergency key roll).",
                Some(gauges.jwks_max_age),
            ),
            gauge(
                "issuer_keys_stale",
                "1 while the last re-read of the key files failed: this instance may miss a key change made elsewhere.",
                Some(gauges.keys_stale),
            ),
            epoch_gauges(&now, &gauges.epochs),
        ];
        if let Some(Err(e)) = read.into_iter().find(Result::is_err) {
            tracing::error!(error = %e, "a gauge could not be registered");
        }
        let mut families = self.registry.gather();
        families.extend(now.gather());
        let mut out = String::with_capacity(4096);
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "metrics could not be rendered");
        }
        out
    }
}

/// `issuer_revocation_epoch_seconds{client_id}`: one series per epoch in force.
fn epoch_gauges(registry: &Registry, epochs: &[(String, i64)]) -> prometheus::Result<()> {
    let vec = registered(
        registry,
        IntGaugeVec::new(
            Opts::new(
                "issuer_revocation_epoch_seconds",
                "The revocation epochs this instance enforces: sessions of the client (`*`: every client) created before this unix time are refused.",
            ),
            &["client_id"],
        ),
    )?;
    for (scope, not_before) in epochs {
        vec.with_label_values(&[scope]).set(*not_before);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new().unwrap();
        m.observe_request("token", "200", Duration::from_millis(3));
        m.observe_request("token", "200", Duration::from_millis(30));
        m.observe_request("token", "400", Duration::from_millis(1));
        m.revoked("reuse");
        m.refresh_refused("reused");
        m.rotations.inc();
        let text = m.render(Gauges {
            active_families: Some(7),
            argon2_queue_depth: 2,
            argon2_queue_capacity: 256,
            redis_up: None,
            epochs: vec![("*".into(), 1_700_000_000), ("dev".into(), 1_700_000_100)],
            jwks_max_age: 30,
            keys_stale: 0,
        });
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        has("issuer_http_requests_total{operation=\"token\",status=\"200\"} 2");
        has("issuer_http_request_duration_seconds_bucket{operation=\"token\",le=\"0.005\"} 2");
        has("issuer_http_request_duration_seconds_bucket{operation=\"token\",le=\"+Inf\"} 3");
        has("issuer_http_request_duration_seconds_count{operation=\"token\"} 3");
        has("issuer_revocations_total{reason=\"reuse\"} 1");
        has("issuer_refresh_refused_total{reason=\"reused\"} 1");
        has("# TYPE issuer_rotations_total counter");
        has("issuer_rotations_total 1");
        has("issuer_logins_total 0");
        has("issuer_argon2_queue_capacity 256");
        has("issuer_active_families 7");
        has("issuer_revocation_epoch_seconds{client_id=\"*\"} 1700000000");
        has("issuer_revocation_epoch_seconds{client_id=\"dev\"} 1700000100");
        has("issuer_jwks_max_age_seconds 30");
        has("issuer_key_changes_total{key=\"refresh\"} 0");
        assert!(!text.contains("issuer_redis_up"));
    }
}
