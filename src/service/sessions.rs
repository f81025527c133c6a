//! The signed-in user's sessions: list them, end one, log out, change the password.
//! Every session ended here is announced at once (see `store::shared`), so its access
//! tokens are refused everywhere from the next request.

use uuid::Uuid;

use super::Issuer;
use super::access::Principal;
use super::attempts::Credentials;
use super::tokens::{Issued, RequestMeta, Revoked};
use crate::crypto::password::Lane;
use crate::domain::client::{Client, Delivery};
use crate::domain::error::Error;
use crate::domain::family::RevokeReason;
use crate::domain::secret::Secret;
use crate::domain::user::{check_new_password, check_password_size};

use crate::store::{NewFamily, PasswordChange, Session, SessionSelector};

/// Which sessions `POST /v1/logout` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// The session of the access token.
    This,
    /// Every other session of the user.
    Others,
    /// Every session of the user, this one included.
    Everywhere,
}

/// A session in the list, and whether it is the caller's own.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub current: bool,
}

impl Issuer {
    fn client_of(&self, who: &Principal) -> Result<&Client, Error> {
        self.clients
            .get(&who.claims.client_id)
            .ok_or(Error::InvalidClient)
    }

    async fn announce(&self, revoked: &[Uuid], reason: RevokeReason, who: &Principal) {
        self.count_revoked(reason, revoked.len());
        for sid in revoked {
            tracing::info!(target: "security", event = "family_revoked", reason = reason.code(), sid = %sid, user_id = %who.user.id);
        }
        self.shared.revoked_all(revoked.to_vec()).await;
    }

    /// `GET /v1/sessions`: the caller's live sessions.
    pub async fn sessions(&self, who: &Principal) -> Result<Vec<SessionView>, Error> {
        let now = self.now();
        let sessions = self
            .store
            .list_sessions(who.user.id, &self.widest_policy, now)
            .await?;
        Ok(sessions
            .into_iter()
            .filter(|s| {
                self.policy_of(&s.client_id)
                    .is_live(s.created_at, s.last_used_at, now)
            })
            .map(|session| SessionView {
                current: session.id == who.sid,
                session,
            })
            .collect())
    }

    /// `DELETE /v1/sessions/{id}`: ends one of the caller's sessions; another user's,
    /// an unknown or an ended one is `NotFound`.
    /// Ending the caller's own session clears a cookie-mode client's cookie, as logout
    /// does: the browser must not keep presenting a dead refresh token.
    pub async fn end_session(&self, who: &Principal, id: Uuid) -> Result<Revoked, Error> {
        // Only a session the list shows: one that ended by idling or by age is gone.
        if !self.sessions(who).await?.iter().any(|v| v.session.id == id) {
            return Err(Error::NotFound);
        }
        let reason = RevokeReason::SessionEnded;
        let revoked = self
            .store
            .revoke_sessions(who.user.id, SessionSelector::One(id), reason, self.now())
            .await?;
        if revoked.is_empty() {
            return Err(Error::NotFound);
        }
        self.announce(&revoked, reason, who).await;
        let own_cookie = self
            .client_of(who)
            .is_ok_and(|c| c.delivery == Delivery::Cookie);
        Ok(Revoked {
            clear_cookie: own_cookie && id == who.sid,
        })
    }

    /// `POST /v1/logout`.
    pub async fn logout(&self, who: &Principal, scope: LogoutScope) -> Result<Revoked, Error> {
        let (which, reason) = match scope {
            LogoutScope::This => (SessionSelector::One(who.sid), RevokeReason::Logout),
            LogoutScope::Others => (SessionSelector::AllBut(who.sid), RevokeReason::LogoutOthers),
            LogoutScope::Everywhere => (SessionSelector::All, RevokeReason::LogoutEverywhere),
        };
        let revoked = self
            .store
            .revoke_sessions(who.user.id, which, reason, self.now())
            .await?;
        self.announce(&revoked, reason, who).await;
        let own_cookie = self
            .client_of(who)
            .is_ok_and(|c| c.delivery == Delivery::Cookie);
        Ok(Revoked {
            clear_cookie: own_cookie && scope != LogoutScope::Others,
        })
    }

    /// `POST /v1/me/password`: checks the current password, sets the new one, ends
    /// every session of the user (this one included) and starts a fresh one for this
    /// device, whose tokens are returned.
    pub async fn change_password(
        &self,
        who: &Principal,
        current: Secret,
        new: Secret,
        meta: RequestMeta,
    ) -> Result<Issued, Error> {
        let client = self.client_of(who)?;
        check_password_size(current.expose())
            .map_err(|_| Error::InvalidRequest("current_password is too long".into()))?;
        let email = who.user.email.clone();
        let stored = self
            .store
            .find_user_by_email(&email)
            .await?
            .filter(|u| u.user.id == who.user.id && !u.disabled)
            .ok_or(Error::InvalidToken("user gone"))?;
        // A password check like a login's, from the account's budget; a live session
        // gets through a locked account on a budget of its own (see `attempts`).
        let checked_hash = stored.password_hash;
        let shown = Credentials {
            session: Some(who.sid),
            ..Credentials::default()
        };
        let verified = self
            .check_password(
                &email,
                Some(who.user.id),
                shown,
                current,
                Some(checked_hash.clone()),
            )
            .await?;
        if !verified {
            tracing::info!(target: "security", event = "password_change_failed", user_id = %who.user.id);
            return Err(Error::WrongPassword);
        }
        check_new_password(new.expose(), &email)?;
        let hash = self.hasher.hash(Lane::SignIn, new).await?;
        let now = self.now();
        let id = Uuid::new_v4();
        let token = self.refresh_keys.mint(id, 0);
        let family = NewFamily {
            id,
            user_id: who.user.id,
            client_id: client.id.clone(),
            scope: who.claims.scope.clone(),
            created_at: now,
            user_agent: meta.session_user_agent(),
            ip: meta.ip,
            checked_password_hash: None,
            login_source: None,
            // The session goes on under the same DPoP key, if it had one.
            dpop_jkt: who.claims.cnf.as_ref().map(|c| c.jkt.clone()),
        };
        let change = PasswordChange {
            user_id: who.user.id,
            checked_hash: &checked_hash,
            new_hash: &hash,
            current: who.sid,
        };
        // None: another change, a disable or the end of this session came first.
        let revoked = self
            .store
            .change_password(&change, &family, now)
            .await?
            .ok_or(Error::InvalidToken("credentials changed meanwhile"))?;
        tracing::info!(target: "security", event = "password_changed", user_id = %who.user.id, sid = %family.id);
        self.announce(&revoked, RevokeReason::PasswordChange, who)
            .await;
        self.issue_new(client, family, token, now).await
    }
}
