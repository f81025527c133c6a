//! The bearer security scheme of the `/v1` API: its checker yields a verified principal.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::api::error::ApiError;
use crate::domain::error::Error;
use crate::service::Issuer;
use crate::service::access::Principal;

/// An RS256 access token of ours (`Authorization: Bearer <token>`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Principal);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let issuer = req.data::<Arc<Issuer>>().ok_or_else(|| {
        poem::Error::from(ApiError::from(Error::internal("issuer state missing")))
    })?;
    issuer
        .authenticate(&bearer.token)
        .await
        .map_err(|e| ApiError::from(e).into())
}
