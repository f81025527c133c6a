//! `/v1/admin`: for users with the `admin` role (granted by the CLI).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::api::ApiTags;
use crate::api::error::ApiError;
use crate::api::security::AccessAuth;
use crate::api::sessions::SessionBody;
use crate::service::Issuer;
use crate::service::admin::AdminUser;
use crate::service::sessions::SessionView;
use crate::store::AuditEvent;

/// A user, as an admin sees it.
#[derive(Object)]
#[oai(rename = "AdminUser")]
pub struct AdminUserBody {
    pub id: Uuid,
    pub email: String,
    pub created_at: OffsetDateTime,
    /// A disabled user cannot log in or refresh.
    pub disabled: bool,
}

impl From<AdminUser> for AdminUserBody {
    fn from(u: AdminUser) -> Self {
        Self {
            id: u.user.id,
            email: u.user.email,
            created_at: u.user.created_at,
            disabled: u.disabled,
        }
    }
}

/// How many sessions an action ended.
#[derive(Object)]
pub struct RevokedCount {
    pub revoked: u64,
}

/// A security event.
#[derive(Object)]
#[oai(rename = "AuditEvent")]
pub struct AuditEventBody {
    pub at: OffsetDateTime,
    /// `login`, `login_failed` (`detail`: the client IP), `family_revoked` (`detail`:
    /// the reason), `user_disabled`, `user_enabled`, `admin_revoked_sessions`,
    /// `key_rotated`, `family_moved_forward` (`detail`: from which generation),
    /// `admin_swept` (`detail`: what it deleted), `key_compromised` (`detail`: the key
    /// removed by an emergency roll, and why), `sessions_revoked_all` (`detail`: the
    /// scope, the instant and the reason), `refresh_key_rotated` (`detail`: calm or
    /// emergency, and why), `dpop_foreign_key` (`detail`: the DPoP key a bound
    /// session's refresh token came with, and whether the session was revoked).
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub user_id: Option<Uuid>,
    /// The session concerned.
    #[oai(skip_serializing_if_is_none)]
    pub session_id: Option<Uuid>,
    #[oai(skip_serializing_if_is_none)]
    pub client_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// The admin who did it.
    #[oai(skip_serializing_if_is_none)]
    pub actor_id: Option<Uuid>,
}

impl From<AuditEvent> for AuditEventBody {
    fn from(e: AuditEvent) -> Self {
        Self {
            at: e.at,
            kind: e.kind.code().to_owned(),
            user_id: e.user_id,
            session_id: e.family_id,
            client_id: e.client_id,
            detail: e.detail,
            actor_id: e.actor_id,
        }
    }
}

#[derive(ApiResponse)]
pub enum UserOk {
    #[oai(status = 200)]
    Ok(Json<AdminUserBody>, #[oai(header = "Cache-Control")] String),
}

#[derive(ApiResponse)]
pub enum AdminSessionsOk {
    /// The user's live sessions, most recently used first.
    #[oai(status = 200)]
    Ok(
        Json<Vec<SessionBody>>,
        #[oai(header = "Cache-Control")] String,
    ),
}

#[derive(ApiResponse)]
pub enum RevokedOk {
    /// Done; the sessions' access tokens are refused at once.
    #[oai(status = 200)]
    Ok(Json<RevokedCount>),
}

/// What to revoke at once.
#[derive(Object)]
pub struct RevokeAllBody {
    /// Only the sessions of this client (default: every client's).
    pub client_id: Option<String>,
    /// Only the sessions created before this instant, truncated to its second; not in
    /// the future (default: now).
    pub before: Option<OffsetDateTime>,
    /// Why, for the audit log (1 to 200 characters).
    pub reason: String,
}

/// The revocation epoch in force after the request.
#[derive(Object)]
pub struct EpochBody {
    /// The client it covers; absent: every client.
    #[oai(skip_serializing_if_is_none)]
    pub client_id: Option<String>,
    /// Sessions created, and access tokens issued, before this instant are revoked.
    pub not_before: OffsetDateTime,
    pub reason: String,
}

#[derive(ApiResponse)]
pub enum EpochOk {
    /// In force on every instance: refresh tokens at once, access tokens within 2 s.
    #[oai(status = 200)]
    Ok(Json<EpochBody>),
}

/// What a sweep deleted.
#[derive(Object)]
pub struct SweptBody {
    /// Sessions that had ended (revoked, idle or past their absolute lifetime) more
    /// than a day before.
    pub sessions: u64,
    /// Audit events older than the retention.
    pub audit_events: u64,
}

#[derive(ApiResponse)]
pub enum SweptOk {
    /// Done.
    #[oai(status = 200)]
    Ok(Json<SweptBody>),
}

#[derive(ApiResponse)]
pub enum EnabledOk {
    /// The user may log in again.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum AuditOk {
    /// Newest first.
    #[oai(status = 200)]
    Ok(
        Json<Vec<AuditEventBody>>,
        #[oai(header = "Cache-Control")] String,
    ),
}

fn no_store() -> String {
    "no-store".into()
}

pub struct AdminApi;

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Find a user
    ///
    /// By e-mail address. `403 insufficient_scope` without the admin role.
    #[oai(
        path = "/v1/admin/users",
        method = "get",
        operation_id = "admin_find_user"
    )]
    async fn find_user(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The e-mail address.
        email: Query<String>,
    ) -> Result<UserOk, ApiError> {
        let user = issuer.admin_find_user(&auth.0, &email.0).await?;
        Ok(UserOk::Ok(Json(user.into()), no_store()))
    }

    /// A user's sessions
    ///
    /// The user's live sessions, most recently used first; `404 not_found` for an
    /// unknown user.
    #[oai(
        path = "/v1/admin/users/:id/sessions",
        method = "get",
        operation_id = "admin_user_sessions"
    )]
    async fn sessions(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The user id.
        id: Path<Uuid>,
    ) -> Result<AdminSessionsOk, ApiError> {
        let sessions = issuer.admin_user_sessions(&auth.0, id.0).await?;
        let sessions = sessions
            .into_iter()
            .map(|session| {
                SessionBody::from(SessionView {
                    session,
                    current: false,
                })
            })
            .collect();
        Ok(AdminSessionsOk::Ok(Json(sessions), no_store()))
    }

    /// End all of a user's sessions
    ///
    /// Recorded as `admin_revoked_sessions`, with the admin as actor.
    #[oai(
        path = "/v1/admin/users/:id/sessions",
        method = "delete",
        operation_id = "admin_revoke_sessions"
    )]
    async fn revoke_sessions(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The user id.
        id: Path<Uuid>,
    ) -> Result<RevokedOk, ApiError> {
        let revoked = issuer.admin_revoke_sessions(&auth.0, id.0).await?;
        Ok(RevokedOk::Ok(Json(RevokedCount {
            revoked: revoked as u64,
        })))
    }

    /// Disable a user
    ///
    /// Ends every session of the user; a disabled user cannot log in or refresh, and
    /// their access tokens are refused at once. Recorded as `user_disabled`.
    #[oai(
        path = "/v1/admin/users/:id/disable",
        method = "post",
        operation_id = "admin_disable_user"
    )]
    async fn disable(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The user id.
        id: Path<Uuid>,
    ) -> Result<RevokedOk, ApiError> {
        let revoked = issuer.admin_set_disabled(&auth.0, id.0, true).await?;
        Ok(RevokedOk::Ok(Json(RevokedCount {
            revoked: revoked as u64,
        })))
    }

    /// Enable a user
    ///
    /// Lets a disabled user log in again (their old sessions stay ended). Recorded as
    /// `user_enabled`.
    #[oai(
        path = "/v1/admin/users/:id/enable",
        method = "post",
        operation_id = "admin_enable_user"
    )]
    async fn enable(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The user id.
        id: Path<Uuid>,
    ) -> Result<EnabledOk, ApiError> {
        issuer.admin_set_disabled(&auth.0, id.0, false).await?;
        Ok(EnabledOk::NoContent)
    }

    /// End every session
    ///
    /// Incident response: every session of every client (or of `client_id`) created
    /// before `before` (default: now) ends at once, and every access token of that
    /// scope issued before it is refused. It costs the same however many sessions
    /// there are (a revocation epoch, not an update of each session). Recorded as
    /// `sessions_revoked_all` with the admin and the reason. The answer comes once the
    /// instant has begun, so sessions started after it are not covered.
    #[oai(
        path = "/v1/admin/sessions/revoke-all",
        method = "post",
        operation_id = "admin_revoke_all"
    )]
    async fn revoke_all(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        body: Json<RevokeAllBody>,
    ) -> Result<EpochOk, ApiError> {
        let body = body.0;
        let epoch = issuer
            .admin_revoke_all(
                &auth.0,
                crate::service::incident::RevokeAll {
                    client_id: body.client_id,
                    before: body.before,
                    reason: body.reason,
                },
            )
            .await?;
        Ok(EpochOk::Ok(Json(EpochBody {
            client_id: epoch.client_id,
            not_before: epoch.not_before,
            reason: epoch.reason,
        })))
    }

    /// Sweep now
    ///
    /// Deletes what has ended, as the hourly sweep does: sessions that ended more than
    /// a day ago, audit events past their retention, forgotten login sources. It runs
    /// in this instance and deletes in small steps, so rotations go on meanwhile; one
    /// sweep at a time (a second waits for the first). Recorded as `admin_swept`.
    #[oai(
        path = "/v1/admin/sweep",
        method = "post",
        operation_id = "admin_sweep"
    )]
    async fn sweep(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
    ) -> Result<SweptOk, ApiError> {
        let swept = issuer.admin_sweep(&auth.0).await?;
        Ok(SweptOk::Ok(Json(SweptBody {
            sessions: swept.sessions,
            audit_events: swept.audit_events,
        })))
    }

    /// Security events
    ///
    /// The audit log, newest first: revocations and why, admin actions. Optionally of
    /// one user; `limit` 1 to 500 (default 100).
    #[oai(path = "/v1/admin/audit", method = "get", operation_id = "admin_audit")]
    async fn audit(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// Only this user's events.
        user_id: Query<Option<Uuid>>,
        /// How many events (1 to 500, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
    ) -> Result<AuditOk, ApiError> {
        let events = issuer.admin_audit(&auth.0, user_id.0, limit.0).await?;
        Ok(AuditOk::Ok(
            Json(events.into_iter().map(Into::into).collect()),
            no_store(),
        ))
    }
}
