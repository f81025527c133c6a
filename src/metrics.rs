//! Prometheus metrics, kept in process and rendered in the text format (0.0.4) at
//! `/metrics`. No crate: a handful of counters, one labelled counter and one histogram
//! family are all this service needs.
//!
//! Requests are labelled by the OpenAPI `operation_id` (never the raw path, whose ids
//! would make the label set unbounded); requests that reach no operation are `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The counters of one process.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    revocations: Mutex<BTreeMap<&'static str, u64>>,
    refresh_refused: Mutex<BTreeMap<&'static str, u64>>,
    pub logins: AtomicU64,
    pub logins_failed: AtomicU64,
    pub rotations: AtomicU64,
    pub grace_replays: AtomicU64,
    pub reuse_detections: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub rate_limited: AtomicU64,
    pub db_errors: AtomicU64,
    pub redis_errors: AtomicU64,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Live sessions, or `None` when the database did not answer.
    pub active_families: Option<u64>,
    pub argon2_queue_depth: u64,
    /// How many logins may wait for a hash (`password_hash_queue`).
    pub argon2_queue_capacity: u64,
    /// 1 when Redis answers, 0 when configured and not, `None` when not configured.
    pub redis_up: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// One request served by `operation` with `status`, in `elapsed`.
    pub fn observe_request(&self, operation: &'static str, status: u16, elapsed: Duration) {
        *lock(&self.requests).entry((operation, status)).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        let mut latency = lock(&self.latency);
        let h = latency.entry(operation).or_default();
        h.count += 1;
        h.sum += seconds;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
    }

    /// A session ended, and why (`reuse`, `logout`, `admin_revoke`, ...).
    pub fn revoked(&self, reason: &'static str) {
        *lock(&self.revocations).entry(reason).or_default() += 1;
    }

    /// A refresh token refused, and why (`reused`, `revoked`, `expired`, ...).
    pub fn refresh_refused(&self, reason: &'static str) {
        *lock(&self.refresh_refused).entry(reason).or_default() += 1;
    }

    /// The text exposition format.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP issuer_http_requests_total HTTP requests by operation and status.\n\
             # TYPE issuer_http_requests_total counter"
        );
        for ((op, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "issuer_http_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP issuer_http_request_duration_seconds Time to answer, by operation.\n\
             # TYPE issuer_http_request_duration_seconds histogram"
        );
        for (op, h) in lock(&self.latency).iter() {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "issuer_http_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "issuer_http_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}\n\
                 issuer_http_request_duration_seconds_sum{{operation=\"{op}\"}} {}\n\
                 issuer_http_request_duration_seconds_count{{operation=\"{op}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "issuer_logins_total",
            "Successful password grants.",
            load(&self.logins),
        );
        counter(
            &mut out,
            "issuer_logins_failed_total",
            "Refused password grants (wrong e-mail or password).",
            load(&self.logins_failed),
        );
        counter(
            &mut out,
            "issuer_tokens_issued_total",
            "Access tokens minted (logins, rotations, grace replays, password changes).",
            load(&self.tokens_issued),
        );
        counter(
            &mut out,
            "issuer_rotations_total",
            "Refresh tokens rotated.",
            load(&self.rotations),
        );
        counter(
            &mut out,
            "issuer_grace_replays_total",
            "Retries answered within the grace window.",
            load(&self.grace_replays),
        );
        counter(
            &mut out,
            "issuer_reuse_detections_total",
            "Used refresh tokens presented after the grace window.",
            load(&self.reuse_detections),
        );
        counter(
            &mut out,
            "issuer_rate_limited_total",
            "Requests refused by a rate limit.",
            load(&self.rate_limited),
        );
        counter(
            &mut out,
            "issuer_db_errors_total",
            "Store calls that failed or timed out.",
            load(&self.db_errors),
        );
        counter(
            &mut out,
            "issuer_redis_errors_total",
            "Redis calls that failed or timed out.",
            load(&self.redis_errors),
        );
        let _ = writeln!(
            out,
            "# HELP issuer_revocations_total Sessions ended, by reason.\n\
             # TYPE issuer_revocations_total counter"
        );
        for (reason, n) in lock(&self.revocations).iter() {
            let _ = writeln!(out, "issuer_revocations_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP issuer_refresh_refused_total Refresh tokens refused (invalid_grant), by reason.\n\
             # TYPE issuer_refresh_refused_total counter"
        );
        for (reason, n) in lock(&self.refresh_refused).iter() {
            let _ = writeln!(
                out,
                "issuer_refresh_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: Option<u64>| {
            if let Some(v) = value {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        };
        gauge(
            &mut out,
            "issuer_active_families",
            "Live sessions (token families).",
            gauges.active_families,
        );
        gauge(
            &mut out,
            "issuer_argon2_queue_depth",
            "Logins waiting for a password-hashing thread.",
            Some(gauges.argon2_queue_depth),
        );
        gauge(
            &mut out,
            "issuer_argon2_queue_capacity",
            "Logins that may wait for a password-hashing thread (password_hash_queue).",
            Some(gauges.argon2_queue_capacity),
        );
        gauge(
            &mut out,
            "issuer_redis_up",
            "1 when Redis answers.",
            gauges.redis_up,
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_request("token", 200, Duration::from_millis(3));
        m.observe_request("token", 200, Duration::from_millis(30));
        m.observe_request("token", 400, Duration::from_millis(1));
        m.revoked("reuse");
        m.refresh_refused("reused");
        inc(&m.rotations);
        let text = m.render(Gauges {
            active_families: Some(7),
            argon2_queue_depth: 2,
            argon2_queue_capacity: 256,
            redis_up: None,
        });
        assert!(text.contains("issuer_http_requests_total{operation=\"token\",status=\"200\"} 2"));
        assert!(text.contains(
            "issuer_http_request_duration_seconds_bucket{operation=\"token\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "issuer_http_request_duration_seconds_bucket{operation=\"token\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("issuer_revocations_total{reason=\"reuse\"} 1"));
        assert!(text.contains("issuer_refresh_refused_total{reason=\"reused\"} 1"));
        assert!(text.contains("issuer_argon2_queue_capacity 256"));
        assert!(text.contains("issuer_rotations_total 1"));
        assert!(text.contains("issuer_active_families 7"));
        assert!(!text.contains("issuer_redis_up"));
    }
}
