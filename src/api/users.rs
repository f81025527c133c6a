//! Registration and the signed-in user.

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::payload::StrictJson;
use crate::api::security::AccessAuth;
use crate::api::{ApiTags, client_ip};
use crate::domain::secret::Secret;
use crate::domain::user::User;
use crate::service::Issuer;

/// A new account.
#[derive(Object, Deserialize)]
pub struct RegisterRequest {
    /// The e-mail address; compared case-insensitively.
    pub email: String,
    /// 15 characters to 1024 bytes, any printable characters and spaces, not a
    /// well-known password and not containing the e-mail address.
    pub password: String,
}

/// A user.
#[derive(Object)]
#[oai(rename = "User")]
pub struct UserBody {
    pub id: Uuid,
    pub email: String,
    pub created_at: OffsetDateTime,
}

impl From<User> for UserBody {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            created_at: u.created_at,
        }
    }
}

/// The registration body.
#[derive(ApiRequest)]
pub enum RegisterBody {
    /// `application/json`; a member given twice is refused.
    Json(StrictJson<RegisterRequest>),
}

#[derive(ApiResponse)]
pub enum Registered {
    /// The account exists; log in with the password grant.
    #[oai(status = 201)]
    Created(Json<UserBody>),
}

#[derive(ApiResponse)]
pub enum MeOk {
    /// The user of the access token.
    #[oai(status = 200)]
    Ok(Json<UserBody>, #[oai(header = "Cache-Control")] String),
}

pub struct UsersApi;

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// Register
    ///
    /// Self-registration with an e-mail address and a password (hashed with argon2id).
    /// A taken e-mail address is `409 email_taken`; a refused password is
    /// `400 weak_password` with the rule it breaks. Registrations are limited per
    /// client IP (`rate_limit_register_per_ip`, 20 an hour by default; over it,
    /// `429 rate_limited`).
    #[oai(path = "/v1/users", method = "post", operation_id = "register")]
    async fn register(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        body: RegisterBody,
    ) -> Result<Registered, ApiError> {
        let RegisterBody::Json(StrictJson(RegisterRequest { email, password })) = body;
        let ip = client_ip(req);
        let user = issuer
            .register(&email, Secret::new(password), ip.as_deref())
            .await?;
        Ok(Registered::Created(Json(user.into())))
    }

    /// The signed-in user
    ///
    /// Requires an access token whose `aud` is this issuer's audience and whose session
    /// is still live: the access tokens of a revoked session are refused at once.
    #[oai(path = "/v1/me", method = "get", operation_id = "me")]
    async fn me(&self, auth: AccessAuth) -> Result<MeOk, ApiError> {
        Ok(MeOk::Ok(Json(auth.0.user.into()), "no-store".into()))
    }
}
