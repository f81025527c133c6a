//! The browser's sign-in session: what lets a second authorization skip the form
//! (single sign-on), and what the sign-out page ends.
//!
//! It is a session (family) like any other, of the reserved client `sign-in`: listed
//! with the user's sessions, ended by a logout everywhere, a password change, a disable,
//! an epoch. Its token is minted like a refresh token and travels only in the
//! `__Host-session` cookie (HttpOnly, Secure, `SameSite=Lax` so that the top-level
//! redirect from a client's site carries it). It is never rotated: it only shows that
//! the browser signed in, and it mints no access token. Its life is fixed from the
//! sign-in (`sign_in_session_lifetime`, default one day).

use std::time::Duration;

use uuid::Uuid;

use super::Issuer;
use super::attempts::Credentials;
use super::tokens::RequestMeta;
use crate::domain::error::Error;
use crate::domain::family::{RefreshPolicy, RevokeReason};
use crate::domain::secret::Secret;
use crate::store::{NewFamily, SessionSelector, TokenRef};

/// The client id of sign-in sessions; no registered client may take it.
pub const SIGN_IN_CLIENT: &str = "sign-in";

/// The hosted pages and the sign-in session, as configured.
#[derive(Debug, Clone)]
pub struct SignInSettings {
    /// Shown on every page.
    pub product_name: String,
    /// An optional logo above the forms.
    pub logo_url: Option<String>,
    /// The logo's origin, allowed for images by the pages' CSP.
    pub logo_origin: Option<String>,
    /// How long a sign-in lasts (no sliding: a fixed life from the sign-in).
    pub session_lifetime: Duration,
}

impl SignInSettings {
    /// The session rules of sign-in sessions.
    pub fn policy(&self) -> RefreshPolicy {
        RefreshPolicy {
            idle_timeout: self.session_lifetime,
            absolute_lifetime: self.session_lifetime,
            grace_period: Duration::ZERO,
        }
    }
}

/// A live sign-in session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedIn {
    pub sid: Uuid,
    pub user_id: Uuid,
}

/// A sign-in just made: the session and its cookie.
#[derive(Debug)]
pub struct NewSignIn {
    pub session: SignedIn,
    pub cookie: Secret,
    pub max_age: Duration,
}

impl Issuer {
    /// The live sign-in session of a `__Host-session` cookie; `None` for no cookie, a
    /// forged one, or a session that ended.
    pub(crate) async fn signed_in(
        &self,
        cookie: Option<&Secret>,
    ) -> Result<Option<SignedIn>, Error> {
        let Some(cookie) = cookie.filter(|c| !c.expose().is_empty()) else {
            return Ok(None);
        };
        let Some(token @ TokenRef::Minted { .. }) = self.refresh_ref(cookie) else {
            return Ok(None);
        };
        let Some(state) = self.store.refresh_token_state(&token).await? else {
            return Ok(None);
        };
        let live = state.family.client_id == SIGN_IN_CLIENT
            && !state.family_revoked
            && !state.consumed
            && !state.user_disabled
            && self.sign_in.policy().is_live(
                state.family.created_at,
                state.family_last_used_at,
                self.now(),
            );
        Ok(live.then_some(SignedIn {
            sid: state.family.id,
            user_id: state.family.user_id,
        }))
    }

    /// Checks a username and password as the password grant does (the same limits,
    /// lockout and audit rows), and starts a sign-in session. `invalid_grant` for
    /// wrong credentials; `RateLimited` past a limit.
    pub(crate) async fn sign_in(
        &self,
        client_id: &str,
        username: &str,
        password: Secret,
        current: Option<&Secret>,
        meta: &RequestMeta,
    ) -> Result<NewSignIn, Error> {
        let client = self.clients.get(client_id).ok_or(Error::InvalidClient)?;
        crate::domain::user::check_password_size(password.expose())
            .map_err(|_| Error::InvalidRequest("password is too long".into()))?;
        if let (Some(limit), Some(ip)) = (self.limits.login_per_ip, meta.ip.as_deref()) {
            self.shared
                .hit(crate::store::shared::LimitKind::LoginIp, ip, limit)
                .await
                .map_err(|wait| self.rate_limited(wait))?;
        }
        let source = meta.login_source();
        let credentials = Credentials {
            source: source.as_deref(),
            // A browser that signed in before shows it was the owner's.
            refresh_token: current,
            session: None,
        };
        let user = self
            .check_login(client, username, password, credentials, meta)
            .await?;
        let id = Uuid::new_v4();
        let family = NewFamily {
            id,
            user_id: user.user.id,
            client_id: SIGN_IN_CLIENT.to_owned(),
            scope: None,
            created_at: self.now(),
            user_agent: meta.session_user_agent(),
            ip: meta.ip.clone(),
            checked_password_hash: Some(user.password_hash.clone()),
            login_source: source,
            dpop_jkt: None,
        };
        if !self.store.create_family(&family).await? {
            return Err(Error::InvalidGrant(
                crate::domain::family::GrantRejection::InvalidCredentials,
            ));
        }
        tracing::info!(target: "security", event = "sign_in", user_id = %user.user.id, sid = %id, client_id = %client.id);
        self.metrics.logins.inc();
        // The session this browser had (`prompt=login`, another account) ends.
        if let Some(old) = self.signed_in(current).await.ok().flatten() {
            self.end_sign_in(old).await;
        }
        Ok(NewSignIn {
            session: SignedIn {
                sid: id,
                user_id: user.user.id,
            },
            cookie: self.refresh_keys.mint(id, 0),
            max_age: self.sign_in.session_lifetime,
        })
    }

    /// Ends a sign-in session (the sign-out page); best effort: a failure is logged,
    /// and the cookie is cleared all the same.
    pub(crate) async fn end_sign_in(&self, session: SignedIn) {
        let reason = RevokeReason::Logout;
        match self
            .store
            .revoke_sessions(
                session.user_id,
                SessionSelector::One(session.sid),
                reason,
                self.now(),
            )
            .await
        {
            Ok(revoked) => {
                self.count_revoked(reason, revoked.len());
                self.shared.revoked_all(revoked).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, sid = %session.sid, "could not end a sign-in session")
            }
        }
    }

    /// `POST /oauth/logout`: ends the browser's sign-in session, if it has one.
    pub async fn sign_out(&self, cookie: Option<&Secret>) -> Result<(), Error> {
        if let Some(session) = self.signed_in(cookie).await? {
            tracing::info!(target: "security", event = "sign_out", user_id = %session.user_id, sid = %session.sid);
            self.end_sign_in(session).await;
        }
        Ok(())
    }

    /// The anti-CSRF field of a form, for the browser's `__Host-form` cookie.
    pub fn form_field(&self, cookie: &str) -> String {
        self.forms.field(cookie)
    }

    /// Whether a form's anti-CSRF field goes with the browser's cookie.
    pub fn form_field_matches(&self, cookie: Option<&str>, field: Option<&str>) -> bool {
        match (cookie, field) {
            (Some(cookie), Some(field)) => self.forms.matches(cookie, field),
            _ => false,
        }
    }

    /// The hosted pages' settings.
    pub fn sign_in_settings(&self) -> &SignInSettings {
        &self.sign_in
    }
}

/// `true` if `id` is free for a registered client.
pub fn reserved_client_id(id: &str) -> bool {
    id == SIGN_IN_CLIENT || id == "*"
}
