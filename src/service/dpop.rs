//! DPoP at the token endpoint (RFC 9449 §5) and the protected endpoints (§7): a token
//! request with a valid proof gets `token_type: DPoP` and an access token with
//! `cnf.jkt`; a password grant with a proof starts a session whose refresh tokens are
//! bound to that key for its whole life; a refresh of a bound session needs a proof of
//! that key.
//!
//! Decisions taken here (the proof rules themselves are `crypto::dpop`'s):
//! - Per client, `dpop = "off" | "allowed" | "required"` (default `allowed`): `off`
//!   ignores the header (bearer tokens), `allowed` binds when a proof comes, `required`
//!   refuses a request without one (`invalid_dpop_proof`).
//! - The proof is checked, and its `jti` recorded (single use: in this process always,
//!   across instances through Redis, `dpop:<hash>`), before anything is looked up or
//!   consumed: a bad or replayed proof is `invalid_dpop_proof` (400) and leaves the
//!   refresh token as it was. While Redis is down, a proof replayed on another
//!   instance within its minute goes unseen (as the rate limits count per instance
//!   then); what it could get is bound to the key anyway. A process that remembers
//!   `PROOFS_MAX` live proofs answers 503 until some expire.
//! - Every session that starts with a proof is bound, whatever the client's kind (the
//!   RFC requires it of public clients; every client that gets refresh tokens here is
//!   one). A session that started without a proof stays unbound: a later refresh with a
//!   proof gets a bound access token, and its refresh token stays a bearer one. This
//!   departs from RFC 9449 §5 ("the refresh token MUST be bound") on purpose: binding
//!   a live bearer session at a refresh would let whoever holds a copy of its refresh
//!   token bind it to *their* key first, and the rightful client's next refresh would
//!   then be a key mismatch (refused, the session left to the thief) instead of the
//!   reuse that revokes the session today. A client that wants bound refresh tokens
//!   signs in with a proof; `dpop = "required"` makes sure it does.
//! - A bound session presented without a proof of its key is `invalid_grant` with
//!   `error_reason: dpop_key_mismatch`, consuming nothing (the grace replay included;
//!   the session's refresh rate-limit budget is given back). Presented by another
//!   client, it is the client mismatch it always was (the session is revoked).
//!   With a proof of another key it is a theft signal besides: an audit row
//!   (`dpop_foreign_key`), a `security` log event, `issuer_dpop_foreign_keys_total`,
//!   and with `dpop_foreign_key = "revoke"` the session is revoked.
//! - `htu` is the issuer's public URL (`issuer_url`) plus the path: behind a proxy, the
//!   URL the client used, not the one the server was reached at.
//! - At the protected endpoints (`/v1/...`, RFC 9449 §7), a bound access token is sent
//!   as `Authorization: DPoP <token>` with a proof of its key for that request and
//!   `ath` its hash (`authenticate_dpop`). The proof is checked before the token, its
//!   `jti` recorded after both passed. A proof that fails is `invalid_dpop_proof`; a
//!   proof of another key than `cnf.jkt`, an unbound token under the DPoP scheme, or a
//!   bound one under `Bearer` is `invalid_token` (the token, not the proof, is wrong
//!   for the request, as node-oidc-provider answers too). Each is a 401 whose
//!   `WWW-Authenticate` names the scheme used and offers `DPoP algs="..."`.

use std::time::Duration;

use super::Issuer;
use super::access::Principal;
use super::tokens::RequestMeta;
use crate::crypto::dpop::{self, Expected, Proof};
use crate::domain::audit::AuditEvent;
use crate::domain::client::{Client, DpopHeader, DpopPolicy, ForeignKeyPolicy, NoncePolicy};
use crate::domain::error::Error;
use crate::domain::family::RevokeReason;
use crate::store::FamilyInfo;

/// The token endpoint's path, for `htu`.
const TOKEN_PATH: &str = "/oauth/token";

impl Issuer {
    /// The request's proof for the token endpoint, checked (see the module docs; the
    /// caller records it as used with `record_proof`); `None` when there is none and the client may go without, or
    /// the client's DPoP is off.
    pub(crate) async fn token_request_proof(
        &self,
        client: &Client,
        meta: &RequestMeta,
    ) -> Result<Option<Proof>, Error> {
        let proof = match (&meta.dpop, client.dpop) {
            (_, DpopPolicy::Off) => return Ok(None),
            (DpopHeader::Absent, DpopPolicy::Allowed) => return Ok(None),
            (DpopHeader::Absent, DpopPolicy::Required) => {
                return Err(self.proof_refused("this client must send a DPoP proof"));
            }
            (DpopHeader::Several, _) => {
                return Err(self.proof_refused("send exactly one DPoP header"));
            }
            (DpopHeader::One(proof), _) => proof,
        };
        let url = format!("{}{TOKEN_PATH}", self.issuer_url);
        let leeway = self.leeway_secs();
        let expected = Expected {
            method: "POST",
            url: &url,
            now: self.now().unix_timestamp(),
            leeway,
            access_token: None,
        };
        let proof = dpop::check(proof, &expected).map_err(|e| self.proof_refused(e.0))?;
        self.check_nonce(client, &proof)?;
        Ok(Some(proof))
    }

    /// A protected endpoint's caller that sent `Authorization: DPoP <token>` (RFC 9449
    /// §7.1): exactly one proof, for this request (`method`, the issuer URL plus
    /// `path`), with `ath` the hash of `token`, of the key the token is bound to
    /// (`cnf.jkt`), not seen before. A token with no `cnf` is a bearer token and is
    /// refused under this scheme (`invalid_token`), as a bound one is under `Bearer`.
    pub async fn authenticate_dpop(
        &self,
        token: &str,
        proof: &DpopHeader,
        method: &str,
        path: &str,
    ) -> Result<Principal, Error> {
        let proof = match proof {
            DpopHeader::Absent => {
                return Err(self.proof_refused("the DPoP scheme needs a DPoP proof"));
            }
            DpopHeader::Several => {
                return Err(self.proof_refused("send exactly one DPoP header"));
            }
            DpopHeader::One(proof) => proof,
        };
        let url = format!("{}{path}", self.issuer_url);
        let leeway = self.leeway_secs();
        let expected = Expected {
            method,
            url: &url,
            now: self.now().unix_timestamp(),
            leeway,
            access_token: Some(token),
        };
        let proof = dpop::check(proof, &expected).map_err(|e| self.proof_refused(e.0))?;
        let principal = self.check_access_token(token, Some(&self.audience)).await?;
        proof
            .matches(principal.claims.cnf.as_ref())
            .map_err(Error::InvalidToken)?;
        if let Some(client) = self.clients.get(&principal.claims.client_id) {
            self.check_nonce(client, &proof)?;
        }
        self.record_proof(&proof).await?;
        Ok(principal)
    }

    /// The nonce to hand out now (`DPoP-Nonce`).
    pub fn dpop_nonce(&self) -> String {
        self.dpop_nonces.current(self.now().unix_timestamp())
    }

    /// A client with `dpop_nonce = "required"` needs a current nonce in every proof.
    fn check_nonce(&self, client: &Client, proof: &Proof) -> Result<(), Error> {
        if client.dpop_nonce == NoncePolicy::Off {
            return Ok(());
        }
        let now = self.now().unix_timestamp();
        match &proof.nonce {
            Some(nonce) if self.dpop_nonces.accepts(nonce, now) => Ok(()),
            _ => {
                self.metrics.dpop_nonces_asked.inc();
                Err(Error::UseDpopNonce)
            }
        }
    }

    pub(super) fn leeway_secs(&self) -> i64 {
        i64::try_from(self.clock_leeway.as_secs()).unwrap_or(30)
    }

    /// Records the proof's `jti` (with its key) as used; a replay is refused. The
    /// token endpoint calls it once the request's cheap checks passed (the login
    /// limit per address; a refresh token of ours within its session's limit), so
    /// that a stranger cannot fill the list, and always before anything is consumed.
    pub(crate) async fn record_proof(&self, proof: &Proof) -> Result<(), Error> {
        let id = proof.replay_id();
        let ttl =
            Duration::from_secs(u64::try_from(dpop::replay_ttl(self.leeway_secs())).unwrap_or(121));
        match self.shared.first_use_of_proof(&id, ttl).await {
            Some(true) => Ok(()),
            Some(false) => Err(self.proof_refused("the proof was used before (jti)")),
            // This process remembers as many proofs as it may: a capacity problem, not
            // the client's (503, retry shortly).
            None => Err(Error::Overloaded),
        }
    }

    fn proof_refused(&self, why: &'static str) -> Error {
        self.metrics.dpop_proof_refused();
        Error::InvalidDpopProof(why)
    }

    /// A bound session presented with a proof of another key: audited, logged,
    /// counted, and revoked when the session's client says so.
    pub(crate) async fn foreign_dpop_key(
        &self,
        family: &FamilyInfo,
        proof: &Proof,
        meta: &RequestMeta,
    ) {
        self.metrics.dpop_foreign_keys.inc();
        let now = self.now();
        let revoke = self
            .clients
            .get(&family.client_id)
            .is_some_and(|c| c.dpop_foreign_key == ForeignKeyPolicy::Revoke);
        let revoked = revoke
            && match self
                .store
                .revoke_family(
                    family.id,
                    &family.client_id,
                    RevokeReason::DpopForeignKey,
                    now,
                )
                .await
            {
                Ok(revoked) => revoked,
                Err(e) => {
                    tracing::warn!(error = %e, sid = %family.id, "could not revoke a session shown with a foreign DPoP key");
                    false
                }
            };
        if revoked {
            self.count_revoked(RevokeReason::DpopForeignKey, 1);
            self.shared.revoked(family.id).await;
        }
        tracing::warn!(
            target: "security",
            event = "dpop_foreign_key",
            sid = %family.id,
            user_id = %family.user_id,
            client_id = %family.client_id,
            jkt = %proof.jkt,
            ip = ?meta.ip,
            revoked,
            "a refresh token bound to a DPoP key came with a proof of another key: a stolen token"
        );
        let event = AuditEvent::dpop_foreign_key(
            now,
            (family.user_id, family.id, &family.client_id),
            &proof.jkt,
            meta.ip.as_deref(),
            revoked,
        );
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::warn!(error = %e, "could not record a foreign DPoP key");
        }
    }
}
