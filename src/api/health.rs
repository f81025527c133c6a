//! Liveness and readiness.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::api::ApiTags;
use crate::service::Issuer;

/// Health status.
#[derive(Debug, Object)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// The database: `ok` or `unreachable` (readiness only).
    #[oai(skip_serializing_if_is_none)]
    pub database: Option<String>,
    /// Redis: `ok`, `degraded` (unreachable: the service works on with per-instance
    /// rate limits and database revocation checks) or `disabled` (not configured).
    /// Readiness only; never makes the service unready.
    #[oai(skip_serializing_if_is_none)]
    pub redis: Option<String>,
    /// The key files: `ok`, or `stale` (the last re-read of the signing key ring or
    /// of the refresh-token key failed: this instance keeps the keys it has, and may
    /// miss a key change made elsewhere). Readiness only; never makes the service
    /// unready.
    #[oai(skip_serializing_if_is_none)]
    pub keys: Option<String>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers (Redis may be degraded, the key files stale).
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// The database does not answer.
    #[oai(status = 503)]
    Unavailable(Json<Health>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum MetricsOk {
    /// Prometheus text format 0.0.4.
    #[oai(status = 200)]
    Ok(
        PlainText<String>,
        #[oai(header = "Content-Type")] String,
        #[oai(header = "Cache-Control")] String,
    ),
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness
    ///
    /// The process serves requests; it asks no dependency.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            database: None,
            redis: None,
            keys: None,
        })
    }

    /// Readiness
    ///
    /// The database answers a query (503 with `Retry-After` when not). Redis is
    /// reported (`ok`, `degraded`, `disabled`), and so are the key files (`ok`, or
    /// `stale` when the last re-read failed), but neither makes the service unready:
    /// it works on without Redis, and with the keys it holds. The key directory is
    /// shared by every instance, so a failure there (a network file system's hiccup, a
    /// permission change) would take every instance out at once; `issuer_keys_stale`
    /// and its alert say so instead.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, issuer: Data<&Arc<Issuer>>) -> ReadyResponse {
        let redis = Some(issuer.redis_status().as_str().to_owned());
        let keys = Some(
            if issuer.key_reads.stale() {
                "stale"
            } else {
                "ok"
            }
            .to_owned(),
        );
        match issuer.ready().await {
            Ok(()) => ReadyResponse::Ready(Json(Health {
                status: "ready".into(),
                database: Some("ok".into()),
                redis,
                keys,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                ReadyResponse::Unavailable(
                    Json(Health {
                        status: "unavailable".into(),
                        database: Some("unreachable".into()),
                        redis,
                        keys,
                    }),
                    2,
                )
            }
        }
    }

    /// Metrics
    ///
    /// Prometheus text format: requests by operation and status, latency histograms,
    /// logins, tokens issued, rotations, grace replays, reuse detections, revocations
    /// by reason, rate-limited requests, active sessions, the argon2 queue, database
    /// and Redis errors, the revocation epochs in force, key changes taken in and
    /// failed key re-reads, the JWKS max-age. Unauthenticated and free of personal data; expose it to your
    /// scraper only.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, issuer: Data<&Arc<Issuer>>) -> MetricsOk {
        MetricsOk::Ok(
            PlainText(issuer.render_metrics().await),
            "text/plain; version=0.0.4; charset=utf-8".into(),
            "no-store".into(),
        )
    }
}
