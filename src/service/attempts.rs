//! Each account's budget of password checks (`rate_limit_login_per_account`, 10 a
//! minute by default).
//!
//! - Every password check (a password grant, a password change) takes one attempt from
//!   the budget before the hash runs, atomically (on Redis, or in process): however many
//!   guesses arrive at once, at most the budget is checked, the rest answer 429. A
//!   check that succeeds gives its attempt back, so the budget counts failures.
//! - A used-up budget locks the account for everyone, the right password included,
//!   until the window ends: except for a caller that shows it is the account's owner
//!   already, so that an attacker cannot lock a user out of a device that is signed
//!   in. Such a caller is one that
//!   - signs in from a source (an IPv4 address, or an IPv6 /64) that signed in to this
//!     account successfully in the last `KNOWN_SOURCE_FOR` (90 days), or
//!   - presents a live refresh token of this user with the login (the `__Host-refresh`
//!     cookie of a browser client; `refresh_token` in the body of a body-mode client's
//!     password grant, read and never used up), or
//!   - changes the password from a live session.
//!
//!   It draws from a budget of its own, the same size, per account and source (or
//!   session): the owner's device gets through a lock, and is still limited.

use std::time::Duration;

use uuid::Uuid;

use super::Issuer;
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::store::shared::{LimitKind, Taken};

/// How long a source that signed in to an account stays known to it.
pub const KNOWN_SOURCE_FOR: Duration = Duration::from_secs(90 * 86_400);

/// What a caller shows of itself besides the password, to get through a locked
/// account.
#[derive(Debug, Default)]
pub(crate) struct Credentials<'a> {
    /// Where the request comes from (`domain::address::source`).
    pub source: Option<&'a str>,
    /// A refresh token sent with a login.
    pub refresh_token: Option<&'a Secret>,
    /// The live session a password change comes from.
    pub session: Option<Uuid>,
}

/// An attempt taken from a budget; given back when the password was right.
#[derive(Debug)]
pub(crate) struct Attempt(Option<Taken>);

impl Issuer {
    /// One password check against `hash` (`None`: an unknown account, checked against
    /// a dummy hash all the same), paid from `account`'s budget: taken before the hash,
    /// so a burst of guesses cannot outrun it, and given back when the password was
    /// right or no check ran (the hashing queue was full).
    pub(crate) async fn check_password(
        &self,
        account: &str,
        user: Option<Uuid>,
        shown: Credentials<'_>,
        password: Secret,
        hash: Option<String>,
    ) -> Result<bool, Error> {
        let attempt = self.take_attempt(account, user, shown).await?;
        let verified = self.hasher.verify(password, hash).await;
        if !matches!(verified, Ok(false)) {
            self.give_back_attempt(attempt).await;
        }
        verified
    }

    /// Takes one password check from `account`'s budget (the e-mail address as typed,
    /// normalised; known or not), or from the owner's own budget when the account's is
    /// used up and `shown` proves the caller is `user` (see the module docs).
    async fn take_attempt(
        &self,
        account: &str,
        user: Option<Uuid>,
        shown: Credentials<'_>,
    ) -> Result<Attempt, Error> {
        let Some(limit) = self.limits.login_per_account else {
            return Ok(Attempt(None));
        };
        let locked = match self
            .shared
            .take(LimitKind::LoginAccount, account, limit)
            .await
        {
            Ok(taken) => return Ok(Attempt(Some(taken))),
            Err(wait) => wait,
        };
        let Some(user) = user else {
            return Err(self.rate_limited(locked));
        };
        let Some(caller) = self.owner_shown(user, &shown).await? else {
            return Err(self.rate_limited(locked));
        };
        let taken = self
            .shared
            .take(
                LimitKind::LoginAccountTrusted,
                &format!("{account}|{caller}"),
                limit,
            )
            .await
            .map_err(|wait| self.rate_limited(wait))?;
        tracing::info!(target: "security", event = "locked_account_owner_let_through", user_id = %user, by = caller.split(':').next().unwrap_or_default());
        Ok(Attempt(Some(taken)))
    }

    /// The password was right: the attempt does not count.
    async fn give_back_attempt(&self, attempt: Attempt) {
        if let Some(taken) = attempt.0 {
            self.shared.give_back(taken).await;
        }
    }

    /// How the caller showed it is `user` (`session:<id>` or `source:<source>`), if it
    /// did.
    async fn owner_shown(
        &self,
        user: Uuid,
        shown: &Credentials<'_>,
    ) -> Result<Option<String>, Error> {
        if let Some(session) = shown.session {
            return Ok(Some(format!("session:{session}")));
        }
        if let Some(token) = shown.refresh_token
            && let Some(token) = self.refresh_ref(token)
            && let Some(state) = self.store.refresh_token_state(&token).await?
        {
            let policy = self.policy_of(&state.family.client_id);
            let live = !state.consumed
                && !state.family_revoked
                && !state.user_disabled
                && policy.is_live(
                    state.family.created_at,
                    state.family_last_used_at,
                    self.now(),
                );
            if live && state.family.user_id == user {
                return Ok(Some(format!("session:{}", state.family.id)));
            }
        }
        if let Some(source) = shown.source
            && self
                .store
                .known_login_source(user, source, self.now() - KNOWN_SOURCE_FOR)
                .await?
        {
            return Ok(Some(format!("source:{source}")));
        }
        Ok(None)
    }
}
