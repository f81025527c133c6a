//! Liveness and readiness.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
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
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// The database does not answer.
    #[oai(status = 503)]
    Unavailable(Json<Health>, #[oai(header = "Retry-After")] u32),
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness: the process serves requests.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            database: None,
        })
    }

    /// Readiness: the database answers a query.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, issuer: Data<&Arc<Issuer>>) -> ReadyResponse {
        match issuer.ready().await {
            Ok(()) => ReadyResponse::Ready(Json(Health {
                status: "ready".into(),
                database: Some("ok".into()),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                ReadyResponse::Unavailable(
                    Json(Health {
                        status: "unavailable".into(),
                        database: Some("unreachable".into()),
                    }),
                    2,
                )
            }
        }
    }
}
