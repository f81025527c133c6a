//! The signed-in user's sessions, logout and password change.

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiRequest, ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::payload::{OptionalBody, StrictJson};
use crate::api::security::AccessAuth;
use crate::api::token::{TokenOk, clear_refresh_cookie};
use crate::api::{ApiTags, request_meta};
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::service::Issuer;
use crate::service::sessions::{LogoutScope, SessionView};

/// A live session: one login on one device.
#[derive(Object)]
#[oai(rename = "Session")]
pub struct SessionBody {
    /// The session id: the `sid` of its access tokens.
    pub id: Uuid,
    /// The client it was started with.
    pub client_id: String,
    /// When the user logged in.
    pub created_at: OffsetDateTime,
    /// When its refresh token was last used (or the login, if never).
    pub last_used_at: OffsetDateTime,
    /// The IP address of the last login or refresh.
    #[oai(skip_serializing_if_is_none)]
    pub last_ip: Option<String>,
    /// The `User-Agent` of the last login or refresh.
    #[oai(skip_serializing_if_is_none)]
    pub user_agent: Option<String>,
    /// True for the session of the access token that asked.
    pub current: bool,
}

impl From<SessionView> for SessionBody {
    fn from(v: SessionView) -> Self {
        Self {
            id: v.session.id,
            client_id: v.session.client_id,
            created_at: v.session.created_at,
            last_used_at: v.session.last_used_at,
            last_ip: v.session.ip,
            user_agent: v.session.user_agent,
            current: v.current,
        }
    }
}

#[derive(ApiResponse)]
pub enum SessionsOk {
    /// The caller's live sessions, most recently used first.
    #[oai(status = 200)]
    Ok(
        Json<Vec<SessionBody>>,
        #[oai(header = "Cache-Control")] String,
    ),
}

#[derive(ApiResponse)]
pub enum Ended {
    /// Ended: its refresh token is dead and its access tokens are refused at once.
    /// Cookie-mode clients get their cookie cleared when their own session ended.
    #[oai(status = 204)]
    NoContent(#[oai(header = "Set-Cookie")] Option<String>),
}

/// Which sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum LogoutScopeParam {
    /// The session of the access token (the default).
    This,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    Everywhere,
}

/// What to log out, in the body (the query's `scope` does the same).
#[derive(Object, Deserialize)]
#[oai(rename = "LogoutRequest")]
#[serde(deny_unknown_fields)]
pub struct LogoutParams {
    /// Which sessions to end; the default is `this`.
    scope: Option<LogoutScopeParam>,
}

/// A password change.
#[derive(Object, Deserialize)]
pub struct PasswordChange {
    /// The password in use now.
    pub current_password: String,
    /// The new password, under the registration policy.
    pub new_password: String,
}

/// The password-change body.
#[derive(ApiRequest)]
pub enum PasswordChangeBody {
    /// `application/json`; a member given twice is refused.
    Json(StrictJson<PasswordChange>),
}

pub struct SessionsApi;

#[OpenApi(tag = "ApiTags::Sessions")]
impl SessionsApi {
    /// My sessions
    ///
    /// The live sessions (token families) of the signed-in user: client, login time,
    /// last use, last IP and user agent, and which one is asking.
    #[oai(path = "/v1/sessions", method = "get", operation_id = "list_sessions")]
    async fn list(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
    ) -> Result<SessionsOk, ApiError> {
        let sessions = issuer.sessions(&auth.0).await?;
        Ok(SessionsOk::Ok(
            Json(sessions.into_iter().map(Into::into).collect()),
            "no-store".into(),
        ))
    }

    /// End one of my sessions
    ///
    /// Ends a session of the signed-in user (another device, or this one). Another
    /// user's session, or one that already ended, is `404 not_found`.
    #[oai(
        path = "/v1/sessions/:id",
        method = "delete",
        operation_id = "end_session"
    )]
    async fn end(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// The session id.
        id: Path<Uuid>,
    ) -> Result<Ended, ApiError> {
        let revoked = issuer.end_session(&auth.0, id.0).await?;
        Ok(Ended::NoContent(
            revoked.clear_cookie.then(clear_refresh_cookie),
        ))
    }

    /// Log out
    ///
    /// `scope=this` (default) ends the session of the access token, `others` every
    /// other session of the user, `everywhere` all of them. Their refresh tokens die
    /// and their access tokens are refused at once. The scope goes in the query or in
    /// the body (JSON or form; both at once must agree); a body that says anything else
    /// is refused, and nothing is ended.
    #[oai(path = "/v1/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        issuer: Data<&Arc<Issuer>>,
        auth: AccessAuth,
        /// Which sessions to end.
        scope: Query<Option<LogoutScopeParam>>,
        body: OptionalBody<LogoutParams>,
    ) -> Result<Ended, ApiError> {
        let in_body = body.0.and_then(|p| p.scope);
        let scope = match (scope.0, in_body) {
            (Some(query), Some(body)) if query != body => {
                return Err(Error::InvalidRequest(
                    "scope differs between the query and the body".into(),
                )
                .into());
            }
            (query, body) => query.or(body),
        };
        let scope = match scope.unwrap_or(LogoutScopeParam::This) {
            LogoutScopeParam::This => LogoutScope::This,
            LogoutScopeParam::Others => LogoutScope::Others,
            LogoutScopeParam::Everywhere => LogoutScope::Everywhere,
        };
        let revoked = issuer.logout(&auth.0, scope).await?;
        Ok(Ended::NoContent(
            revoked.clear_cookie.then(clear_refresh_cookie),
        ))
    }

    /// Change my password
    ///
    /// Checks the current password (a wrong one is `400 wrong_password`, and counts
    /// towards the per-account limit of failed logins), applies the password policy
    /// to the new one, then ends every session of the user, this one included, and
    /// starts a fresh session for this device: its tokens are returned as by the token
    /// endpoint (cookie-mode clients get the new `__Host-refresh` cookie).
    #[oai(
        path = "/v1/me/password",
        method = "post",
        operation_id = "change_password"
    )]
    async fn change_password(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        auth: AccessAuth,
        body: PasswordChangeBody,
    ) -> Result<TokenOk, ApiError> {
        let PasswordChangeBody::Json(StrictJson(p)) = body;
        let meta = request_meta(req, None, false);
        let issued = issuer
            .change_password(
                &auth.0,
                Secret::new(p.current_password),
                Secret::new(p.new_password),
                meta,
            )
            .await?;
        Ok(issued.into())
    }
}
