//! `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.5): a code, its
//! redirect URI and PKCE verifier for the first tokens of a session.
//!
//! Everything that can be checked on the stored code is checked before it is used up:
//! a request for another client, another redirect URI, a wrong verifier, a missing
//! DPoP proof of the code's key consumes nothing. Then one transaction uses the code
//! (a conditional update: of two concurrent exchanges one wins) and starts the
//! session, if the sign-in that approved the code is still live. A code that comes
//! back after its use starts nothing and revokes the session it started (§4.1.2).
//! A `scope` sent with the exchange is ignored: the session gets the code's.

use uuid::Uuid;

use super::Issuer;
use super::tokens::{Issued, RequestMeta, TokenParams, present_secret};
use crate::crypto::codes;
use crate::crypto::dpop::Proof;
use crate::domain::authorization::valid_verifier;
use crate::domain::client::Client;
use crate::domain::error::Error;
use crate::domain::family::{GrantRejection, RevokeReason};
use crate::store::shared::LimitKind;
use crate::store::{NewFamily, Redeem, RedeemOutcome};

impl Issuer {
    pub(super) async fn authorization_code_grant(
        &self,
        client: &Client,
        params: TokenParams,
        meta: RequestMeta,
        proof: Option<Proof>,
    ) -> Result<Issued, Error> {
        let code = present_secret(params.code)
            .ok_or_else(|| Error::InvalidRequest("code is required".into()))?;
        let redirect_uri = params
            .redirect_uri
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Error::InvalidRequest("redirect_uri is required".into()))?;
        let verifier = params
            .code_verifier
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::InvalidRequest("code_verifier is required (PKCE, RFC 7636)".into())
            })?;
        if !valid_verifier(&verifier) {
            return Err(Error::InvalidRequest(
                "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~".into(),
            ));
        }
        let refused = |r| Err(Error::CodeRefused(r));
        if code.expose().len() != codes::CODE_CHARS {
            return refused(GrantRejection::Unknown);
        }
        // Another client's code is unknown to this one: it learns nothing of it.
        let Some(stored) = self
            .store
            .find_code(&codes::hash(code.expose()))
            .await?
            .filter(|c| c.client_id == client.id)
        else {
            return refused(GrantRejection::Unknown);
        };
        let now = self.now();
        let family = NewFamily {
            id: Uuid::new_v4(),
            user_id: stored.user_id,
            client_id: client.id.clone(),
            scope: stored.scope.clone(),
            created_at: now,
            user_agent: meta.session_user_agent(),
            ip: meta.ip.clone(),
            checked_password_hash: None,
            login_source: None,
            dpop_jkt: proof.as_ref().map(|p| p.jkt.clone()),
        };
        // Checked for a used code too: only its holder (who has the verifier) can make
        // its reuse revoke the session, not whoever saw a used code in a log.
        if stored.redirect_uri != redirect_uri {
            return refused(GrantRejection::RedirectUriMismatch);
        }
        if !codes::verifier_matches(&verifier, &stored.code_challenge) {
            return refused(GrantRejection::PkceMismatch);
        }
        if !stored.used {
            if stored.expires_at <= now {
                return refused(GrantRejection::Expired);
            }
            if stored.dpop_jkt.is_some() && stored.dpop_jkt != family.dpop_jkt {
                return refused(GrantRejection::DpopKeyMismatch);
            }
            // Each exchange starts a session kept for weeks: from one address, at most
            // `rate_limit_code_exchange_per_ip` (its own budget: counted only for a
            // good code with its verifier, so nobody else at the address, whatever they
            // send, can use it up; and the password grant's failures do not block it).
            if let (Some(limit), Some(ip)) = (self.limits.code_exchange_per_ip, meta.ip.as_deref())
            {
                self.shared
                    .hit(LimitKind::CodeExchangeIp, ip, limit)
                    .await
                    .map_err(|wait| self.rate_limited(wait))?;
            }
            if let Some(proof) = &proof {
                self.record_proof(proof).await?;
            }
        }
        let redeem = Redeem {
            code: &stored,
            family: &family,
        };
        match self.store.redeem_code(&redeem).await? {
            RedeemOutcome::Started => {
                tracing::info!(target: "security", event = "code_exchanged", user_id = %family.user_id, sid = %family.id, client_id = %client.id);
                let token = self.refresh_keys.mint(family.id, 0);
                self.issue_new(client, family, token, now).await
            }
            RedeemOutcome::Reused { revoked } => {
                tracing::warn!(target: "security", event = "code_reused", client_id = %client.id, user_id = %stored.user_id, revoked = ?revoked, ip = ?meta.ip);
                if let Some(sid) = revoked {
                    self.count_revoked(RevokeReason::CodeReused, 1);
                    self.shared.revoked(sid).await;
                }
                refused(GrantRejection::Reused)
            }
            RedeemOutcome::SessionEnded => refused(GrantRejection::Revoked),
        }
    }
}
