//! The token endpoint's grants and revocation (RFC 6749 §4.3, §6; RFC 7009).

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::Issuer;
use super::attempts::Credentials;
pub use super::request::RequestMeta;
use crate::crypto::dpop::Proof;
use crate::crypto::{jwt, refresh};
use crate::domain::claims::{AccessClaims, Audience, Confirmation};
use crate::domain::client::{Client, ClientKind, Delivery};
use crate::domain::error::Error;
use crate::domain::family::{GrantRejection, RevokeReason};
use crate::domain::secret::Secret;
use crate::domain::user::{check_password_size, normalize_email};
use crate::store::shared::{LimitKind, Taken};
use crate::store::{
    AuditEvent, FamilyInfo, NewFamily, RotateOutcome, RotateRequest, Ticket, TokenRef, UserWithHash,
};

/// The parameters of a token request, as sent (form or JSON). Empty values count as
/// absent (RFC 6749 §3.2).
#[derive(Debug, Default, Clone)]
pub struct TokenParams {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
    /// HTTP Basic client credentials, when sent.
    pub basic: Option<(String, Secret)>,
    /// `client_secret_post`: the secret in the body.
    pub client_secret: Option<Secret>,
    /// `private_key_jwt` (RFC 7523): the assertion and its type.
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<Secret>,
    /// RFC 8707 `resource`, or `audience`: the one audience a client-credentials
    /// token is for, among the client's.
    pub resource: Option<String>,
    pub audience: Option<String>,
    /// `authorization_code`: the code, the redirect URI of its request, the PKCE
    /// verifier.
    pub code: Option<Secret>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
}

/// Tokens to hand to the client.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    /// None for a client's own token (client credentials).
    pub refresh_token: Option<Secret>,
    /// Where the refresh token goes: the body or the `__Host-refresh` cookie.
    pub delivery: Delivery,
    /// How long the refresh cookie may live: the family's remaining absolute lifetime.
    pub refresh_max_age: Duration,
    pub scope: Option<String>,
    /// The access token is bound to a DPoP key (`token_type: DPoP`).
    pub dpop_bound: bool,
}

/// What a revocation did to the refresh cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// The client is cookie-mode: the response clears the cookie.
    pub clear_cookie: bool,
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

pub(super) fn present_secret(value: Option<Secret>) -> Option<Secret> {
    value.filter(|v| !v.expose().is_empty())
}

impl Issuer {
    /// The client a request names, by HTTP Basic or `client_id` (the two must agree),
    /// or by the `sub` of its client assertion when it sends neither (RFC 7521 §4.2),
    /// before any credential is checked.
    fn named_client(&self, params: &TokenParams) -> Result<&Client, Error> {
        let body = present(params.client_id.clone()).or_else(|| {
            params.basic.is_none().then(|| {
                params
                    .client_assertion
                    .as_ref()
                    .and_then(|a| crate::crypto::client_assertion::claimed_client(a.expose()))
            })?
        });
        let id = match (&params.basic, body) {
            (Some((basic, _)), Some(body)) if *basic != body => {
                return Err(Error::InvalidRequest(
                    "client_id differs from the client in Authorization".into(),
                ));
            }
            (Some((basic, _)), _) => basic.clone(),
            (None, Some(body)) => body,
            (None, None) => return Err(Error::InvalidRequest("client_id is required".into())),
        };
        self.clients.get(&id).ok_or(Error::InvalidClient)
    }

    /// The client a token or revocation request names: `client_id` in the body, or
    /// HTTP Basic (RFC 6749 §2.3.1). A public client has no secret: stock clients
    /// (requests-oauthlib) send it as Basic `client_id:` with an empty password, which
    /// identifies it like the body parameter; a non-empty password is refused. A
    /// `service` client's secret is checked. Both ways at once must name the same
    /// client.
    pub(super) fn client(
        &self,
        client_id: Option<String>,
        basic: Option<(String, Secret)>,
    ) -> Result<&Client, Error> {
        let Some((id, secret)) = basic else {
            let id = present(client_id)
                .ok_or_else(|| Error::InvalidRequest("client_id is required".into()))?;
            return self.clients.get(&id).ok_or(Error::InvalidClient);
        };
        if present(client_id).is_some_and(|body| body != id) {
            return Err(Error::InvalidRequest(
                "client_id differs from the client in Authorization".into(),
            ));
        }
        let client = self.clients.get(&id).ok_or(Error::InvalidClient)?;
        let authenticated = match &client.secret_hash {
            Some(expected) => crate::crypto::client_secret::matches(secret.expose(), expected),
            None => secret.expose().is_empty(),
        };
        if !authenticated {
            tracing::info!(target: "security", event = "client_auth_failed", client_id = %id);
            return Err(Error::InvalidClient);
        }
        Ok(client)
    }

    /// `POST /oauth/token`.
    pub async fn token(&self, params: TokenParams, meta: RequestMeta) -> Result<Issued, Error> {
        // A service client's secret is checked (and a failure audited) by the grant.
        if params.grant_type.as_deref() == Some("client_credentials") {
            let named = self.named_client(&params)?;
            if named.kind != ClientKind::Service || !named.client_credentials {
                return Err(Error::UnauthorizedClient(
                    "this client may not use the client_credentials grant",
                ));
            }
            return self.client_credentials_grant(named, params, meta).await;
        }
        let client = self.client(params.client_id.clone(), params.basic.clone())?;
        let grant_type = present(params.grant_type.clone())
            .ok_or_else(|| Error::InvalidRequest("grant_type is required".into()))?;
        if !matches!(
            grant_type.as_str(),
            "password" | "refresh_token" | "client_credentials" | "authorization_code"
        ) {
            return Err(Error::UnsupportedGrantType);
        }
        if client.kind == ClientKind::Service {
            return Err(Error::UnauthorizedClient(
                "service clients introspect tokens; they do not log users in",
            ));
        }
        // Before anything is looked up or consumed.
        client.check_browser_request(&meta.browser)?;
        client.check_scope(params.scope.as_deref())?;
        // RFC 9700 §2.4: the password grant is for the operator's own applications.
        if grant_type == "password" && !client.first_party {
            return Err(Error::UnauthorizedClient(
                "the password grant is for first-party clients; use the authorization code flow",
            ));
        }
        let proof = self.token_request_proof(client, &meta).await?;
        match grant_type.as_str() {
            "password" => self.password_grant(client, params, meta, proof).await,
            "authorization_code" => {
                self.authorization_code_grant(client, params, meta, proof)
                    .await
            }
            _ => self.refresh_grant(client, params, meta, proof).await,
        }
    }

    async fn password_grant(
        &self,
        client: &Client,
        params: TokenParams,
        meta: RequestMeta,
        proof: Option<Proof>,
    ) -> Result<Issued, Error> {
        let scope = client.check_scope(params.scope.as_deref())?;
        let username = present(params.username)
            .ok_or_else(|| Error::InvalidRequest("username is required".into()))?;
        let password = present_secret(params.password)
            .ok_or_else(|| Error::InvalidRequest("password is required".into()))?;
        check_password_size(password.expose())
            .map_err(|_| Error::InvalidRequest("password is too long".into()))?;
        // Before any lookup or hash: a flood costs neither the database nor a core.
        if let (Some(limit), Some(ip)) = (self.limits.login_per_ip, meta.ip.as_deref()) {
            self.shared
                .hit(LimitKind::LoginIp, ip, limit)
                .await
                .map_err(|wait| self.rate_limited(wait))?;
        }
        if let Some(proof) = &proof {
            self.record_proof(proof).await?;
        }
        let source = meta.login_source();
        let shown_token = match client.delivery {
            Delivery::Cookie => present_secret(meta.refresh_cookie.clone()),
            Delivery::Body => present_secret(params.refresh_token),
        };
        let credentials = Credentials {
            source: source.as_deref(),
            refresh_token: shown_token.as_ref(),
            session: None,
        };
        let user = self
            .check_login(client, &username, password, credentials, &meta)
            .await?;
        let now = self.now();
        let id = Uuid::new_v4();
        let token = self.refresh_keys.mint(id, 0);
        let family = NewFamily {
            id,
            user_id: user.user.id,
            client_id: client.id.clone(),
            scope,
            created_at: now,
            user_agent: meta.session_user_agent(),
            ip: meta.ip,
            checked_password_hash: Some(user.password_hash.clone()),
            login_source: source,
            dpop_jkt: proof.map(|p| p.jkt),
        };
        // A disable or a password change that committed during the hash wins.
        if !self.store.create_family(&family).await? {
            return Err(Error::InvalidGrant(GrantRejection::InvalidCredentials));
        }
        tracing::info!(target: "security", event = "login", user_id = %user.user.id, sid = %family.id, client_id = %client.id);
        self.metrics.logins.inc();
        self.issue_new(client, family, token, now).await
    }

    /// The first tokens of a session just created, bound as it is.
    pub(crate) async fn issue_new(
        &self,
        client: &Client,
        family: NewFamily,
        token: Secret,
        now: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let jkt = family.dpop_jkt.clone();
        let family = FamilyInfo::from(family);
        self.issue(client, &family, token, now, None, jkt.as_deref())
            .await
    }

    /// The user a username and password name, or `invalid_credentials`; the check is
    /// paid from the account's budget (see `attempts`).
    pub(super) async fn check_login(
        &self,
        client: &Client,
        username: &str,
        password: Secret,
        credentials: Credentials<'_>,
        meta: &RequestMeta,
    ) -> Result<UserWithHash, Error> {
        // An unknown or malformed username runs the same hash as a wrong password.
        let normalized = normalize_email(username);
        let user = match &normalized {
            Ok(email) => self.store.find_user_by_email(email).await?,
            Err(_) => None,
        }
        .filter(|u| !u.disabled);
        let account = normalized.unwrap_or_else(|_| username.to_lowercase());
        let (id, hash) = match &user {
            Some(u) => (Some(u.user.id), Some(u.password_hash.clone())),
            None => (None, None),
        };
        if !self
            .check_password(&account, id, credentials, password, hash)
            .await?
        {
            self.login_failed(client, id, meta).await;
            return Err(Error::InvalidGrant(GrantRejection::InvalidCredentials));
        }
        user.ok_or(Error::InvalidGrant(GrantRejection::InvalidCredentials))
    }

    /// Counts, logs and audits a wrong password. Known user or not, the same row is
    /// written: the timing stays the same. Best effort: a busy database does not turn a
    /// wrong password into a 503.
    async fn login_failed(&self, client: &Client, user_id: Option<Uuid>, meta: &RequestMeta) {
        tracing::info!(target: "security", event = "login_failed", client_id = %client.id, ip = ?meta.ip);
        self.metrics.logins_failed.inc();
        let event = AuditEvent::login_failed(self.now(), user_id, &client.id, meta.ip.as_deref());
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::warn!(error = %e, "could not record a failed login");
        }
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        params: TokenParams,
        mut meta: RequestMeta,
        proof: Option<Proof>,
    ) -> Result<Issued, Error> {
        let presented =
            presented_refresh_token(client, params.refresh_token, meta.refresh_cookie.take())?;
        let requested_scope = client.check_scope(params.scope.as_deref())?;
        // Not a token of ours: refused as unknown, without a lookup.
        let Some(presented) = self.refresh_ref(&presented) else {
            let rejection = GrantRejection::Unknown;
            self.refused(client, &meta, rejection, None, None).await;
            return Err(Error::InvalidGrant(rejection));
        };
        let taken = self
            .check_before_rotation(&presented, requested_scope.as_deref())
            .await?;
        // Recorded once the token is known to be ours and within its session's
        // limit: a stranger cannot fill the list of proofs with requests that carry
        // no refresh token of ours.
        if let Some(proof) = &proof
            && let Err(e) = self.record_proof(proof).await
        {
            if let Some(taken) = taken {
                self.shared.give_back(taken).await;
            }
            return Err(e);
        }
        let user_agent = meta.session_user_agent();
        let now = self.now();
        let outcome = self
            .store
            .rotate(&RotateRequest {
                presented,
                client_id: &client.id,
                now,
                policy: client.policy,
                ip: meta.ip.as_deref(),
                user_agent: user_agent.as_deref(),
                dpop_jkt: proof.as_ref().map(|p| p.jkt.as_str()),
                ticket: Ticket::default(),
            })
            .await?;
        match outcome {
            RotateOutcome::Issued {
                family,
                generation,
                replay,
                moved_from,
            } => {
                if let Some(from) = moved_from {
                    self.metrics.families_moved_forward.inc();
                    tracing::warn!(
                        target: "security",
                        event = "family_moved_forward",
                        sid = %family.id,
                        from,
                        to = generation,
                        "a refresh token was ahead of the database (restored from a backup, or commits lost): its session moved forward"
                    );
                }
                let successor = self.refresh_keys.mint(family.id, generation);
                if replay {
                    self.metrics.grace_replays.inc();
                    tracing::info!(target: "security", event = "refresh_grace_replay", sid = %family.id, client_id = %client.id);
                } else {
                    self.metrics.rotations.inc();
                }
                let jkt = proof.as_ref().map(|p| p.jkt.as_str());
                self.issue(client, &family, successor, now, requested_scope, jkt)
                    .await
            }
            RotateOutcome::Refused {
                rejection,
                family,
                revoked,
            } => {
                self.refused(client, &meta, rejection, family.as_ref(), revoked)
                    .await;
                if rejection == GrantRejection::DpopKeyMismatch {
                    // Not the session's holder: its budget is given back, or whoever
                    // has a copy of the token could keep its holder at 429.
                    if let Some(taken) = taken {
                        self.shared.give_back(taken).await;
                    }
                    if let (Some(family), Some(proof)) = (&family, &proof) {
                        self.foreign_dpop_key(family, proof, &meta).await;
                    }
                }
                Err(Error::InvalidGrant(rejection))
            }
        }
    }

    /// What is checked before a refresh token is used, so that a refused request
    /// leaves it valid: a narrower scope may be asked for, never a wider one (RFC 6749
    /// §6), and the family's rate limit.
    async fn check_before_rotation(
        &self,
        presented: &TokenRef,
        requested_scope: Option<&str>,
    ) -> Result<Option<Taken>, Error> {
        if let Some(requested) = requested_scope
            && let Some(state) = self.store.refresh_token_state(presented).await?
        {
            let granted = state.family.scope.unwrap_or_default();
            if !requested
                .split(' ')
                .all(|s| granted.split(' ').any(|g| g == s))
            {
                return Err(Error::InvalidScope);
            }
        }
        if let Some(limit) = self.limits.refresh_per_family
            && let Some(family) = self.family_of(presented).await?
        {
            return self
                .shared
                .take(LimitKind::RefreshFamily, &family.to_string(), limit)
                .await
                .map(Some)
                .map_err(|wait| self.rate_limited(wait));
        }
        Ok(None)
    }

    /// The family of a presented token: a minted token names it (its MAC is checked,
    /// so no lookup); one of the earlier format is looked up by its hash.
    async fn family_of(&self, presented: &TokenRef) -> Result<Option<Uuid>, Error> {
        Ok(match presented {
            TokenRef::Minted { family, .. } => Some(*family),
            TokenRef::Legacy(hash) => self.store.legacy_family(hash).await?,
        })
    }

    /// Counts and logs a refused refresh token, and announces a revoked family.
    async fn refused(
        &self,
        client: &Client,
        meta: &RequestMeta,
        rejection: GrantRejection,
        family: Option<&FamilyInfo>,
        revoked: Option<RevokeReason>,
    ) {
        self.metrics.refresh_refused(rejection.code());
        if let Some(reason) = revoked {
            if reason == RevokeReason::Reuse {
                self.metrics.reuse_detections.inc();
            }
            self.count_revoked(reason, 1);
        }
        if let (Some(reason), Some(f)) = (revoked, family) {
            tracing::warn!(
                target: "security",
                event = "family_revoked",
                reason = reason.code(),
                sid = %f.id,
                user_id = %f.user_id,
                family_client_id = %f.client_id,
                client_id = %client.id,
                ip = ?meta.ip,
            );
        }
        // Revoked by this request or an earlier one (whose announcement may have been
        // cut short): announcing again is harmless. Not a session a revocation epoch
        // ended: the epoch itself refuses its tokens everywhere, and after a
        // `revoke-all` of millions of sessions one announcement per refused refresh
        // would flood Redis and every instance's deny-list.
        if let Some(f) = family
            && matches!(rejection, GrantRejection::Revoked | GrantRejection::Reused)
            && !self
                .shared
                .epochs()
                .refuses(&f.client_id, f.created_at.unix_timestamp())
        {
            self.shared.revoked(f.id).await;
        }
    }

    /// Signs an access token with the active key.
    pub(crate) async fn sign_access_token(&self, claims: AccessClaims) -> Result<String, Error> {
        // ~0.9 ms of RSA: off the async workers, so the single SQLite writer's next
        // statement is never left waiting behind a signature.
        let keys = self.keys.current();
        let access_token = tokio::task::spawn_blocking(move || jwt::sign(keys.active(), &claims))
            .await
            .map_err(Error::internal)??;
        self.metrics.tokens_issued.inc();
        Ok(access_token)
    }

    /// Mints the access token for `family` (with `scope`, or the family's own), bound
    /// to the DPoP key `jkt` when given, and hands out `refresh_token`.
    pub(crate) async fn issue(
        &self,
        client: &Client,
        family: &FamilyInfo,
        refresh_token: Secret,
        now: OffsetDateTime,
        scope: Option<String>,
        jkt: Option<&str>,
    ) -> Result<Issued, Error> {
        // A scope the client may no longer request (the configuration changed) is not
        // minted again.
        let scope = scope.or_else(|| family.scope.clone()).and_then(|granted| {
            let kept: Vec<&str> = granted
                .split(' ')
                .filter(|s| client.scopes.iter().any(|a| a == s))
                .collect();
            (!kept.is_empty()).then(|| kept.join(" "))
        });
        let iat = now.unix_timestamp();
        let lifetime = client.access_lifetime.as_secs();
        let claims = AccessClaims {
            iss: self.issuer_url.clone(),
            sub: family.user_id.to_string(),
            aud: Audience::from_list(&client.audiences),
            exp: iat + i64::try_from(lifetime).unwrap_or(900),
            iat,
            nbf: iat,
            jti: Uuid::new_v4().to_string(),
            client_id: client.id.clone(),
            sid: Some(family.id.to_string()),
            scope: scope.clone(),
            cnf: jkt.map(|jkt| Confirmation {
                jkt: jkt.to_owned(),
            }),
        };
        let access_token = self.sign_access_token(claims).await?;
        let family_end = family.created_at + client.policy.absolute_lifetime;
        let refresh_max_age = Duration::try_from(family_end - now).unwrap_or(Duration::ZERO);
        Ok(Issued {
            access_token,
            expires_in: lifetime,
            refresh_token: Some(refresh_token),
            delivery: client.delivery,
            refresh_max_age,
            scope,
            dpop_bound: jkt.is_some(),
        })
    }
}

/// The refresh token of a refresh grant, where the client's delivery puts it: the
/// `__Host-refresh` cookie only, or the body.
fn presented_refresh_token(
    client: &Client,
    body: Option<Secret>,
    cookie: Option<Secret>,
) -> Result<Secret, Error> {
    let body_token = present_secret(body);
    let presented = match client.delivery {
        Delivery::Cookie if body_token.is_some() => {
            return Err(Error::InvalidRequest(
                "cookie-mode clients send the refresh token in the __Host-refresh cookie only"
                    .into(),
            ));
        }
        Delivery::Cookie => present_secret(cookie)
            .ok_or_else(|| Error::InvalidRequest("the __Host-refresh cookie is missing".into()))?,
        Delivery::Body => {
            body_token.ok_or_else(|| Error::InvalidRequest("refresh_token is required".into()))?
        }
    };
    if presented.expose().len() > refresh::MAX_TOKEN_LEN {
        return Err(Error::InvalidRequest("refresh_token is too long".into()));
    }
    Ok(presented)
}
