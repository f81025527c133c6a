//! The admin API's use cases. The caller needs the `admin` role, granted only by the
//! CLI (`token-issuer admin grant <email>`); the role is read from the database on
//! every admin request, so taking it back takes effect at once. Every action is
//! recorded in `audit_events` with the admin as its actor.

use uuid::Uuid;

use super::Issuer;
use super::access::Principal;
use crate::domain::error::Error;
use crate::domain::family::RevokeReason;
use crate::domain::user::{User, normalize_email};
use crate::store::{AuditEvent, Session, SessionSelector, Store};

/// The role that opens `/v1/admin`.
pub const ADMIN_ROLE: &str = "admin";
/// Most audit events answered at once.
pub const AUDIT_LIMIT_MAX: u32 = 500;

/// A user as an admin sees it.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub user: User,
    pub disabled: bool,
}

impl Issuer {
    pub(super) async fn require_admin(&self, who: &Principal) -> Result<(), Error> {
        if self.store.has_role(who.user.id, ADMIN_ROLE).await? {
            Ok(())
        } else {
            Err(Error::InsufficientScope {
                why: "the admin role is required",
                dpop: who.claims.cnf.is_some(),
            })
        }
    }

    async fn known_user(&self, user_id: Uuid) -> Result<AdminUser, Error> {
        let found = self
            .store
            .find_user(user_id)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(AdminUser {
            user: found.user,
            disabled: found.disabled,
        })
    }

    /// `POST /v1/admin/sweep`: the hourly sweep, now, in this instance (see `sweep`).
    pub async fn admin_sweep(&self, who: &Principal) -> Result<super::sweep::Swept, Error> {
        self.require_admin(who).await?;
        let swept = self.sweep_now().await?;
        let event =
            AuditEvent::admin_swept(self.now(), swept.sessions, swept.audit_events, who.user.id);
        self.store.record_audit(&event).await?;
        Ok(swept)
    }

    /// `GET /v1/admin/users?email=`.
    pub async fn admin_find_user(&self, who: &Principal, email: &str) -> Result<AdminUser, Error> {
        self.require_admin(who).await?;
        let email = normalize_email(email).map_err(|_| Error::NotFound)?;
        let found = self
            .store
            .find_user_by_email(&email)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(AdminUser {
            user: found.user,
            disabled: found.disabled,
        })
    }

    /// `GET /v1/admin/users/{id}/sessions`.
    pub async fn admin_user_sessions(
        &self,
        who: &Principal,
        user_id: Uuid,
    ) -> Result<Vec<Session>, Error> {
        self.require_admin(who).await?;
        self.known_user(user_id).await?;
        let now = self.now();
        let sessions = self
            .store
            .list_sessions(user_id, &self.widest_policy, now)
            .await?;
        Ok(sessions
            .into_iter()
            .filter(|s| {
                self.policy_of(&s.client_id)
                    .is_live(s.created_at, s.last_used_at, now)
            })
            .collect())
    }

    /// `DELETE /v1/admin/users/{id}/sessions`: ends every session of the user.
    pub async fn admin_revoke_sessions(
        &self,
        who: &Principal,
        user_id: Uuid,
    ) -> Result<usize, Error> {
        self.require_admin(who).await?;
        self.known_user(user_id).await?;
        let now = self.now();
        let reason = RevokeReason::AdminRevoke;
        let revoked = self
            .store
            .revoke_sessions(user_id, SessionSelector::All, reason, now)
            .await?;
        self.store
            .record_audit(&AuditEvent::admin_revoked_sessions(
                now,
                user_id,
                revoked.len(),
                who.user.id,
            ))
            .await?;
        tracing::warn!(target: "security", event = "admin_revoked_sessions", user_id = %user_id, admin_id = %who.user.id, sessions = revoked.len());
        self.count_revoked(reason, revoked.len());
        let count = revoked.len();
        self.shared.revoked_all(revoked).await;
        Ok(count)
    }

    /// `POST /v1/admin/users/{id}/disable` and `.../enable`. Disabling ends every
    /// session: the user can neither log in nor refresh, and their access tokens are
    /// refused at once.
    pub async fn admin_set_disabled(
        &self,
        who: &Principal,
        user_id: Uuid,
        disabled: bool,
    ) -> Result<usize, Error> {
        self.require_admin(who).await?;
        let revoked = self
            .store
            .set_disabled(user_id, disabled, who.user.id, self.now())
            .await?
            .ok_or(Error::NotFound)?;
        let event = if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        };
        tracing::warn!(target: "security", event, user_id = %user_id, admin_id = %who.user.id, sessions = revoked.len());
        self.count_revoked(RevokeReason::UserDisabled, revoked.len());
        let count = revoked.len();
        self.shared.revoked_all(revoked).await;
        Ok(count)
    }

    /// `GET /v1/admin/audit`: the newest security events, of one user or of all.
    pub async fn admin_audit(
        &self,
        who: &Principal,
        user_id: Option<Uuid>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEvent>, Error> {
        self.require_admin(who).await?;
        let limit = limit.unwrap_or(100).clamp(1, AUDIT_LIMIT_MAX);
        Ok(self.store.audit_events(user_id, limit).await?)
    }
}

/// The CLI's `admin grant|revoke <email>`; `NotFound` when no user has the address.
pub async fn set_admin_role(store: &dyn Store, email: &str, granted: bool) -> Result<(), Error> {
    let email = normalize_email(email)?;
    let now = time::OffsetDateTime::now_utc();
    if store.set_role(&email, ADMIN_ROLE, granted, now).await? {
        let event = if granted {
            "admin_granted"
        } else {
            "admin_revoked"
        };
        tracing::warn!(target: "security", event, email = %email);
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}
