//! The client credentials grant (RFC 6749 §4.4): a `service` client gets an access
//! token of its own, to call other services.
//!
//! Decisions taken here:
//! - Only `service` clients (confidential, with a `client_secret_hash`) use it; any
//!   other client is `unauthorized_client`. They authenticate with
//!   `client_secret_basic`, `client_secret_post` or `private_key_jwt` (RFC 7523, a
//!   JWT signed by a key of the client's configured `jwks`; its rules are
//!   `crypto::client_assertion`'s, its `jti` is remembered until its `exp`, across
//!   instances through Redis), exactly one of them (`invalid_request`).
//! - Only clients configured with `client_credentials = true` (and their own
//!   `audiences`): a service client of an earlier configuration introspects only, and
//!   does not start minting tokens for the issuer's audience.
//! - A failed authentication is `invalid_client` (401, `WWW-Authenticate: Basic`), a
//!   `security` log event, `issuer_client_auth_failures_total` and an audit row
//!   `client_auth_failed` (the client and the address). Failures count against the
//!   address's login limit (`rate_limit_login_per_ip`): past it, 429 and no more audit
//!   rows, so a stream of wrong secrets cannot fill the audit table. They do not count
//!   against the client's own budget, which anyone could then use up.
//! - An authenticated client is limited to `rate_limit_client_credentials` grants
//!   (default `600/1m`): a service that asks for a token per call is told so (429)
//!   before it loads the signing key. A DPoP proof is checked before the budget is
//!   used.
//! - Revocation (RFC 7009) of such a token is `unsupported_token_type`: it has no
//!   session to end; it lives until `exp` (5–15 minutes), or until `sessions
//!   revoke-all --client` covers it (at our endpoints and introspection; other
//!   instances see the epoch within 2 s).
//! - The token: `sub` and `client_id` the client, no `sid` (no user, no session), no
//!   refresh token; `aud` the client's `audiences`, or the one of them named by
//!   `resource` (RFC 8707) or `audience` (another is `invalid_target`; the two must
//!   agree when both are sent); `scope` the requested scopes among the client's
//!   (`invalid_scope` otherwise), all of them when none is requested; the lifetime is
//!   the client's `access_token_lifetime` (5 to 15 minutes). With a DPoP proof the
//!   token is bound to its key.
//! - Such a token is refused by our own `/v1` endpoints (they are about a user); the
//!   verifier module accepts it like any other, and introspection answers it active
//!   while it has not expired, its client is still a registered `service` client and no
//!   revocation epoch of that client covers it (`sessions revoke-all --client`).

use uuid::Uuid;

use super::Issuer;
use super::introspect::ClientCredentials;
use super::tokens::{Issued, RequestMeta, TokenParams};
use crate::domain::audit::AuditEvent;
use crate::domain::claims::{AccessClaims, Audience, Confirmation};
use crate::domain::client::Client;
use crate::domain::error::Error;
use crate::store::shared::LimitKind;

impl Issuer {
    /// `grant_type=client_credentials` of `named`, the client the request names.
    pub(super) async fn client_credentials_grant(
        &self,
        named: &Client,
        params: TokenParams,
        meta: RequestMeta,
    ) -> Result<Issued, Error> {
        let (client, assertion) =
            if params.client_assertion.is_some() || params.client_assertion_type.is_some() {
                let (client, assertion) = self
                    .authenticate_by_assertion(named, &params, &meta)
                    .await?;
                (client, Some(assertion))
            } else {
                (
                    self.authenticate_by_secret(named, &params, &meta).await?,
                    None,
                )
            };
        self.grant_client_token(client, assertion, params, meta)
            .await
    }

    /// `client_secret_basic` or `client_secret_post`.
    async fn authenticate_by_secret<'c>(
        &'c self,
        named: &'c Client,
        params: &TokenParams,
        meta: &RequestMeta,
    ) -> Result<&'c Client, Error> {
        // With Basic, the body's `client_id` (if any) was checked to name the same
        // client already.
        let (basic, client_secret) = (params.basic.clone(), params.client_secret.clone());
        let credentials = match basic {
            Some(basic) => ClientCredentials {
                basic: Some(basic),
                client_id: None,
                client_secret,
            },
            None => ClientCredentials {
                basic: None,
                client_id: Some(named.id.clone()),
                client_secret,
            },
        };
        match self.authenticate_client(credentials) {
            Ok(client) => Ok(client),
            Err(Error::InvalidClient) => Err(self.client_auth_failed(named, meta, false).await),
            Err(e) => Err(e),
        }
    }

    /// `private_key_jwt` (see `crypto::client_assertion`): the only credential of the
    /// request; its `jti` is recorded until its `exp` (across instances through Redis).
    async fn authenticate_by_assertion<'c>(
        &'c self,
        named: &'c Client,
        params: &TokenParams,
        meta: &RequestMeta,
    ) -> Result<(&'c Client, crate::crypto::client_assertion::Assertion), Error> {
        use crate::crypto::client_assertion::{ASSERTION_TYPE, Expected};
        if params.basic.is_some() || params.client_secret.is_some() {
            return Err(Error::InvalidRequest(
                "authenticate once: a client assertion, or a secret".into(),
            ));
        }
        if params.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
            return Err(Error::InvalidRequest(format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        let assertion = params
            .client_assertion
            .as_ref()
            .filter(|a| !a.expose().is_empty())
            .ok_or_else(|| Error::InvalidRequest("client_assertion is required".into()))?;
        let token_endpoint = format!("{}/oauth/token", self.issuer_url);
        let now = self.now().unix_timestamp();
        let leeway = self.leeway_secs();
        let expected = Expected {
            client_id: &named.id,
            audiences: [&token_endpoint, &self.issuer_url],
            now,
            leeway,
        };
        // A signature check costs up to an RSA-4096 verification: a caller past the
        // per-address failure limit gets 429 before any, and each check holds one
        // unit of that budget, given back when the assertion is good.
        let held = match (self.limits.login_per_ip, meta.ip.as_deref()) {
            (Some(limit), Some(ip)) => Some(
                self.shared
                    .take(LimitKind::LoginIp, ip, limit)
                    .await
                    .map_err(|wait| self.rate_limited(wait))?,
            ),
            _ => None,
        };
        let checked = self
            .check_assertion(named, assertion.expose(), &expected)
            .await;
        match checked {
            Ok(assertion) => {
                if let Some(held) = held {
                    self.shared.give_back(held).await;
                }
                Ok((named, assertion))
            }
            Err(why) => {
                tracing::info!(target: "security", event = "client_assertion_refused", client_id = %named.id, reason = %why);
                Err(self.client_auth_failed(named, meta, held.is_some()).await)
            }
        }
    }

    /// Checks an assertion against the client's keys: the configured `jwks`, or the set
    /// of its `jwks_uri` (fetched again once when the cached set does not verify it: the
    /// client may have rotated; see `client_keys`).
    async fn check_assertion(
        &self,
        client: &Client,
        assertion: &str,
        expected: &crate::crypto::client_assertion::Expected<'_>,
    ) -> Result<
        crate::crypto::client_assertion::Assertion,
        crate::crypto::client_assertion::InvalidAssertion,
    > {
        use crate::crypto::client_assertion::{InvalidAssertion, check};
        if client.assertion_jwks_uri.is_none() {
            return check(assertion, &client.assertion_keys, expected);
        }
        let now = self.now();
        let no_keys = InvalidAssertion("the client's JWK Set could not be fetched");
        let keys = self.remote_keys.keys(client, now, false).await;
        let first = match &keys {
            Some(keys) => check(assertion, keys, expected),
            None => Err(no_keys),
        };
        // Only a key the cached set lacks (the client rotated) is worth a fetch; an
        // assertion refused for its claims is not.
        let unknown_key = matches!(
            first,
            Err(InvalidAssertion(
                "no key of the client has this kid" | "the signature does not verify"
            ))
        ) || keys.is_none();
        if !unknown_key {
            return first;
        }
        match self.remote_keys.keys(client, now, true).await {
            Some(fresh)
                if keys
                    .as_ref()
                    .is_none_or(|k| !std::sync::Arc::ptr_eq(k, &fresh)) =>
            {
                check(assertion, &fresh, expected)
            }
            _ => first,
        }
    }

    /// Records a checked assertion's `jti` until its `exp` (across instances through
    /// Redis): a replay is a failed authentication.
    async fn record_assertion(
        &self,
        client: &Client,
        assertion: &crate::crypto::client_assertion::Assertion,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let now = self.now().unix_timestamp();
        let leeway = self.leeway_secs();
        let ttl = std::time::Duration::from_secs(
            u64::try_from(assertion.exp.saturating_add(leeway).saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        );
        match self
            .shared
            .first_use_of_proof(&assertion.replay_id(&client.id), ttl)
            .await
        {
            Some(true) => Ok(()),
            Some(false) => {
                tracing::info!(target: "security", event = "client_assertion_refused", client_id = %client.id, reason = "replayed jti");
                Err(self.client_auth_failed(client, meta, false).await)
            }
            None => Err(Error::Overloaded),
        }
    }

    /// The token of an authenticated client.
    async fn grant_client_token(
        &self,
        client: &Client,
        assertion: Option<crate::crypto::client_assertion::Assertion>,
        params: TokenParams,
        meta: RequestMeta,
    ) -> Result<Issued, Error> {
        let scope = match client.check_scope(params.scope.as_deref())? {
            Some(requested) => Some(requested),
            None => {
                let mut all: Vec<&str> = client.scopes.iter().map(String::as_str).collect();
                all.sort_unstable();
                all.dedup();
                (!all.is_empty()).then(|| all.join(" "))
            }
        };
        let audiences = audiences_for(client, params.resource, params.audience)?;
        // Checked before the client's budget is used: a proof refused, or sent again
        // with the nonce asked for, costs none of it.
        let proof = self.token_request_proof(client, &meta).await?;
        if let Some(limit) = self.limits.client_credentials {
            self.shared
                .hit(LimitKind::ClientCredentials, &client.id, limit)
                .await
                .map_err(|wait| self.rate_limited(wait))?;
        }
        // Used up only now: an assertion refused for the request's other parts (a
        // scope, a nonce to retry with) may be sent again.
        if let Some(assertion) = &assertion {
            self.record_assertion(client, assertion, &meta).await?;
        }
        if let Some(proof) = &proof {
            self.record_proof(proof).await?;
        }
        let iat = self.now().unix_timestamp();
        let lifetime = client.access_lifetime.as_secs();
        let claims = AccessClaims {
            iss: self.issuer_url.clone(),
            sub: client.id.clone(),
            aud: Audience::from_list(&audiences),
            exp: iat + i64::try_from(lifetime).unwrap_or(900),
            iat,
            nbf: iat,
            jti: Uuid::new_v4().to_string(),
            client_id: client.id.clone(),
            sid: None,
            scope: scope.clone(),
            cnf: proof.as_ref().map(|p| Confirmation { jkt: p.jkt.clone() }),
        };
        let access_token = self.sign_access_token(claims).await?;
        tracing::info!(client_id = %client.id, "client credentials granted");
        Ok(Issued {
            access_token,
            expires_in: lifetime,
            refresh_token: None,
            delivery: client.delivery,
            refresh_max_age: std::time::Duration::ZERO,
            scope,
            dpop_bound: proof.is_some(),
        })
    }
}

impl Issuer {
    /// A failed client authentication: a `security` log event and a metric every
    /// time; an audit row unless this address failed more than the per-address login
    /// limit allows in its window (then the answer is 429), so that a stream of wrong
    /// secrets cannot fill the audit table or occupy the database writer.
    /// (`counted`: the failure already holds a unit of the address's budget.)
    async fn client_auth_failed(&self, named: &Client, meta: &RequestMeta, counted: bool) -> Error {
        tracing::info!(target: "security", event = "client_auth_failed", client_id = %named.id, ip = ?meta.ip);
        self.metrics.client_auth_failures.inc();
        if !counted
            && let (Some(limit), Some(ip)) = (self.limits.login_per_ip, meta.ip.as_deref())
            && let Err(wait) = self.shared.hit(LimitKind::LoginIp, ip, limit).await
        {
            return self.rate_limited(wait);
        }
        let event = AuditEvent::client_auth_failed(self.now(), &named.id, meta.ip.as_deref());
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::warn!(error = %e, "could not record a failed client authentication");
        }
        Error::InvalidClient
    }
}

/// The audiences of a client-credentials token: the client's, or the one of them that
/// `resource` / `audience` names.
fn audiences_for(
    client: &Client,
    resource: Option<String>,
    audience: Option<String>,
) -> Result<Vec<String>, Error> {
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let wanted = match (present(resource), present(audience)) {
        (None, None) => return Ok(client.audiences.clone()),
        (Some(r), Some(a)) if r != a => return Err(Error::InvalidTarget),
        (Some(one), _) | (None, Some(one)) => one,
    };
    if client.audiences.contains(&wanted) {
        Ok(vec![wanted])
    } else {
        Err(Error::InvalidTarget)
    }
}
