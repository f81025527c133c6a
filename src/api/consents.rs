//! The signed-in user's consents to applications that are not first-party.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;

use crate::api::ApiTags;
use crate::api::error::ApiError;
use crate::api::security::AccessAuth;
use crate::service::Issuer;
use crate::store::Consent;

/// A consent the user gave on the consent page.
#[derive(Object)]
#[oai(rename = "Consent")]
pub struct ConsentBody {
    /// The application.
    pub client_id: String,
    /// The scopes allowed, space-separated (empty: none beyond knowing who the user
    /// is).
    pub scope: String,
    /// When the user allowed it (last).
    pub granted_at: OffsetDateTime,
}

impl From<Consent> for ConsentBody {
    fn from(c: Consent) -> Self {
        Self {
            client_id: c.client_id,
            scope: c.scope,
            granted_at: c.granted_at,
        }
    }
}

#[derive(ApiResponse)]
pub enum ConsentsOk {
    /// The caller's consents, by client.
    #[oai(status = 200)]
    Ok(
        Json<Vec<ConsentBody>>,
        #[oai(header = "Cache-Control")] String,
    ),
}

#[derive(ApiResponse)]
pub enum ConsentRevoked {
    /// Forgotten; the application's sessions of this user are ended.
    #[oai(status = 204)]
    NoContent,
}

pub struct ConsentsApi;

#[OpenApi(tag = "ApiTags::Users")]
impl ConsentsApi {
    /// My allowed applications
    ///
    /// The consents the signed-in user gave on the consent page (applications that
    /// are not first-party), per set of scopes.
    #[oai(
        path = "/v1/me/consents",
        method = "get",
        operation_id = "list_consents"
    )]
    async fn list(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
    ) -> Result<ConsentsOk, ApiError> {
        let consents = issuer.consents(&auth.0).await?;
        Ok(ConsentsOk::Ok(
            Json(consents.into_iter().map(Into::into).collect()),
            "no-store".into(),
        ))
    }

    /// Take back a consent
    ///
    /// Forgets every consent to the application and ends its sessions of the
    /// signed-in user: its next authorization asks again. `404 not_found` when there
    /// was none.
    #[oai(
        path = "/v1/me/consents/:client_id",
        method = "delete",
        operation_id = "revoke_consent"
    )]
    async fn revoke(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The application.
        client_id: Path<String>,
    ) -> Result<ConsentRevoked, ApiError> {
        issuer.revoke_consent(&auth.0, &client_id.0).await?;
        Ok(ConsentRevoked::NoContent)
    }
}
