//! The authorization endpoint (RFC 6749 §4.1, RFC 7636, RFC 8252, RFC 9207): checks
//! a request, signs the browser in (`browser`), asks consent for clients that are not
//! first-party, and sends a code back to the client's redirect URI.
//!
//! - A request whose client is unknown, or whose `redirect_uri` is not one of the
//!   client's, is answered with a page and never redirected: nothing says the URI is
//!   the client's. Every other error goes back to the redirect URI with `error`,
//!   `error_description`, `state` and `iss`.
//! - PKCE with S256 is required of every client; `plain` is refused.
//! - The form pages carry the request in hidden fields and post it back whole: the
//!   server keeps nothing between the pages, and checks the request again on every
//!   post. The posts carry an anti-CSRF field (`crypto::forms`) and must come from
//!   this origin.
//! - A code lives 60 s, is stored hashed, and is bound to the client, the redirect
//!   URI, the challenge, the sign-in session and, with `dpop_jkt` (RFC 9449 §10), a
//!   DPoP key. Codes of one sign-in session are limited like the refreshes of a
//!   session (`rate_limit_refresh_per_family`); past it, `temporarily_unavailable`.
//! - A consent is kept per user and client as the union of the scopes allowed: one
//!   row each, and it covers any request for some of them.

use std::time::Duration;

use super::Issuer;
use super::browser::{NewSignIn, SignedIn};
use super::tokens::RequestMeta;
use crate::crypto::codes;
use crate::domain::authorization::{Prompt, consent_covers, valid_challenge, valid_jkt};
use crate::domain::client::{Client, ClientKind};
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::store::StoredCode;
use crate::store::shared::LimitKind;

/// How long a code may wait for its exchange.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// The longest `state` carried back (it goes into a URL and a form).
const MAX_STATE: usize = 2048;

/// The parameters of an authorization request, as sent (the query, or the hidden
/// fields of a form). Empty values count as absent.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub dpop_jkt: Option<String>,
    /// The names of the parameters sent more than once.
    pub repeated: Vec<String>,
}

/// What a form of the hosted pages posts besides the request.
#[derive(Debug, Default)]
pub struct FormInput {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The consent page: `allow` or `deny`.
    pub decision: Option<String>,
    /// The anti-CSRF field.
    pub csrf: Option<String>,
}

/// What the browser sent besides the parameters.
#[derive(Debug, Default)]
pub struct BrowserRequest {
    /// The `__Host-session` cookie.
    pub session: Option<Secret>,
    /// The `__Host-form` cookie.
    pub form_cookie: Option<String>,
    /// Whether a post came from this site (`Origin` and `Sec-Fetch-Site` agree, or
    /// the browser sent neither).
    pub same_origin: bool,
    pub meta: RequestMeta,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    /// Normalised (sorted, no duplicates).
    pub scope: Option<String>,
    pub code_challenge: String,
    pub prompt: Prompt,
    pub dpop_jkt: Option<String>,
}

/// Why the sign-in form is shown again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormProblem {
    /// A username or password is missing.
    Missing,
    /// Wrong e-mail or password (never told apart).
    Credentials,
    /// Too many attempts; try again after this long.
    RateLimited(Duration),
    /// The anti-CSRF field did not match (an old page, or a forged post).
    Expired,
    /// Too many sign-ins wait for a password check: try again in a moment.
    Busy,
}

/// What to show or where to send the browser.
#[derive(Debug)]
pub enum Answer {
    SignIn {
        request: Authorization,
        problem: Option<FormProblem>,
    },
    Consent {
        request: Authorization,
        problem: Option<FormProblem>,
    },
    /// Back to the client: a code, or an error.
    Redirect(String),
}

/// An answer, and the sign-in it made (whose cookie the response sets).
#[derive(Debug)]
pub struct Outcome {
    pub answer: Answer,
    pub signed_in: Option<NewSignIn>,
}

impl From<Answer> for Outcome {
    fn from(answer: Answer) -> Self {
        Self {
            answer,
            signed_in: None,
        }
    }
}

/// A request that cannot go on.
#[derive(Debug)]
pub enum Refusal {
    /// No redirect is safe: a page says why (the message is safe to show).
    Page(String),
    /// A post from another site.
    CrossSite,
    /// Back to the client with an error.
    Redirect(String),
    /// The store or another dependency failed.
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// `uri` with `params` added to its query (RFC 6749 §4.1.2: the redirect URI's own
/// query is kept).
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            url.to_string()
        }
        // A registered URI always parses (config); never reached.
        Err(_) => uri.to_owned(),
    }
}

impl Issuer {
    /// Checks an authorization request. Errors before the redirect URI is known to be
    /// the client's are pages; after, redirects.
    pub fn authorization_request(&self, p: &AuthorizeParams) -> Result<Authorization, Refusal> {
        for name in ["client_id", "redirect_uri"] {
            if p.repeated.iter().any(|r| r == name) {
                return Err(Refusal::Page(format!(
                    "The request gives {name} more than once."
                )));
            }
        }
        let client_id = present(&p.client_id).ok_or_else(|| {
            Refusal::Page("The request does not name an application (client_id).".into())
        })?;
        let client = self
            .clients
            .get(client_id)
            .ok_or_else(|| Refusal::Page("The application is not known here.".into()))?;
        let redirect_uri = present(&p.redirect_uri).ok_or_else(|| {
            Refusal::Page("The request does not say where to return (redirect_uri).".into())
        })?;
        if !client.redirect_allowed(redirect_uri) {
            return Err(Refusal::Page(
                "The return address (redirect_uri) is not registered for this application.".into(),
            ));
        }
        let state = present(&p.state);
        let fail = |error: &str, description: &str| {
            Refusal::Redirect(self.error_location(redirect_uri, state, error, description))
        };
        if let Some(name) = p.repeated.first() {
            return Err(fail(
                "invalid_request",
                &format!("{name} is given more than once"),
            ));
        }
        if state.is_some_and(|s| s.len() > MAX_STATE) {
            return Err(fail("invalid_request", "state is longer than 2048 bytes"));
        }
        // RFC 6749 Appendix A.5: state is VSCHAR (printable ASCII and space). Anything
        // else could not come back byte for byte through the pages' forms (browsers
        // normalise line breaks and NULs).
        if state.is_some_and(|s| !s.bytes().all(|b| (0x20..=0x7e).contains(&b))) {
            return Err(Refusal::Redirect(self.error_location(
                redirect_uri,
                None,
                "invalid_request",
                "state must be printable ASCII (RFC 6749 Appendix A.5)",
            )));
        }
        match present(&p.response_type) {
            None => return Err(fail("invalid_request", "response_type is required")),
            Some("code") => {}
            Some(_) => {
                return Err(fail(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                ));
            }
        }
        let Some(challenge) = present(&p.code_challenge) else {
            return Err(fail(
                "invalid_request",
                "code_challenge is required (PKCE with S256, RFC 7636)",
            ));
        };
        if present(&p.code_challenge_method) != Some("S256") {
            return Err(fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
        if !valid_challenge(challenge) {
            return Err(fail(
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            ));
        }
        let scope = client
            .check_scope(present(&p.scope))
            .map_err(|_| fail("invalid_scope", "a scope this application may not request"))?;
        let prompt = Prompt::parse(present(&p.prompt))
            .ok_or_else(|| fail("invalid_request", "prompt must be none, login or consent"))?;
        let dpop_jkt = match present(&p.dpop_jkt) {
            Some(jkt) if !valid_jkt(jkt) => {
                return Err(fail(
                    "invalid_request",
                    "dpop_jkt must be a base64url SHA-256 JWK thumbprint",
                ));
            }
            jkt => jkt.map(str::to_owned),
        };
        Ok(Authorization {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            scope,
            code_challenge: challenge.to_owned(),
            prompt,
            dpop_jkt,
        })
    }

    fn error_location(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &str,
        description: &str,
    ) -> String {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(state) = state {
            params.push(("state", state));
        }
        params.push(("iss", &self.issuer_url));
        with_query(redirect_uri, &params)
    }

    fn refuse(&self, request: &Authorization, error: &str, description: &str) -> Answer {
        Answer::Redirect(self.error_location(
            &request.redirect_uri,
            request.state.as_deref(),
            error,
            description,
        ))
    }

    /// `GET /oauth/authorize`.
    pub async fn authorize(
        &self,
        params: &AuthorizeParams,
        browser: &BrowserRequest,
    ) -> Result<Outcome, Refusal> {
        let request = self.authorization_request(params)?;
        let back = (request.redirect_uri.clone(), request.state.clone());
        self.authorize_valid(request, browser)
            .await
            .map_err(|r| self.failure_sent_back(&back, r))
    }

    /// A failure once the redirect URI is known to be the client's goes back to it
    /// (RFC 6749 §4.1.2.1): `temporarily_unavailable` when the database is, else
    /// `server_error`; the cause is logged, never sent.
    fn failure_sent_back(&self, (uri, state): &(String, Option<String>), r: Refusal) -> Refusal {
        let Refusal::Failed(e) = r else {
            return r;
        };
        let (error, description) = match &e {
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "an authorization request could not reach the database");
                (
                    "temporarily_unavailable",
                    "the service is busy or cannot reach its database; try again shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "an authorization request failed");
                ("server_error", "an unexpected error; it is logged")
            }
        };
        Refusal::Redirect(self.error_location(uri, state.as_deref(), error, description))
    }

    async fn authorize_valid(
        &self,
        request: Authorization,
        browser: &BrowserRequest,
    ) -> Result<Outcome, Refusal> {
        let session = match request.prompt {
            Prompt::Login => None,
            _ => self.signed_in(browser.session.as_ref()).await?,
        };
        Ok(match session {
            None if request.prompt == Prompt::None => self
                .refuse(&request, "login_required", "the user is not signed in")
                .into(),
            None => Answer::SignIn {
                request,
                problem: None,
            }
            .into(),
            Some(session) => self.approve(request, session).await?.into(),
        })
    }

    /// `POST /oauth/authorize`: the sign-in form, or the consent form.
    pub async fn authorize_form(
        &self,
        params: &AuthorizeParams,
        form: FormInput,
        browser: &BrowserRequest,
    ) -> Result<Outcome, Refusal> {
        let request = self.authorization_request(params)?;
        if !browser.same_origin {
            return Err(Refusal::CrossSite);
        }
        let back = (request.redirect_uri.clone(), request.state.clone());
        self.authorize_form_valid(request, form, browser)
            .await
            .map_err(|r| self.failure_sent_back(&back, r))
    }

    async fn authorize_form_valid(
        &self,
        request: Authorization,
        form: FormInput,
        browser: &BrowserRequest,
    ) -> Result<Outcome, Refusal> {
        let csrf_ok = self.form_field_matches(browser.form_cookie.as_deref(), form.csrf.as_deref());
        if form.decision.is_some() {
            return self.consent_form(request, form, csrf_ok, browser).await;
        }
        if !csrf_ok {
            return Ok(Answer::SignIn {
                request,
                problem: Some(FormProblem::Expired),
            }
            .into());
        }
        let (Some(username), Some(password)) = (
            form.username.filter(|u| !u.is_empty()),
            form.password.filter(|p| !p.expose().is_empty()),
        ) else {
            return Ok(Answer::SignIn {
                request,
                problem: Some(FormProblem::Missing),
            }
            .into());
        };
        let signed_in = match self
            .sign_in(
                &request.client_id,
                &username,
                password,
                browser.session.as_ref(),
                &browser.meta,
            )
            .await
        {
            Ok(signed_in) => signed_in,
            Err(e) => {
                let problem = match e {
                    Error::InvalidGrant(_) | Error::InvalidRequest(_) => FormProblem::Credentials,
                    Error::RateLimited(wait) => FormProblem::RateLimited(wait),
                    // The form stays with the user, rather than a server_error.
                    Error::Overloaded => FormProblem::Busy,
                    other => return Err(Refusal::Failed(other)),
                };
                return Ok(Answer::SignIn {
                    request,
                    problem: Some(problem),
                }
                .into());
            }
        };
        let answer = self.approve(request, signed_in.session).await?;
        Ok(Outcome {
            answer,
            signed_in: Some(signed_in),
        })
    }

    async fn consent_form(
        &self,
        request: Authorization,
        form: FormInput,
        csrf_ok: bool,
        browser: &BrowserRequest,
    ) -> Result<Outcome, Refusal> {
        let Some(session) = self.signed_in(browser.session.as_ref()).await? else {
            return Ok(Answer::SignIn {
                request,
                problem: None,
            }
            .into());
        };
        if !csrf_ok {
            return Ok(Answer::Consent {
                request,
                problem: Some(FormProblem::Expired),
            }
            .into());
        }
        Ok(match form.decision.as_deref() {
            Some("allow") => {
                // One consent per user and client: what was allowed before and now.
                let before = self
                    .store
                    .consents(session.user_id, Some(&request.client_id))
                    .await
                    .map_err(Error::from)?;
                let mut scopes: Vec<&str> = before
                    .iter()
                    .flat_map(|c| c.scope.split(' '))
                    .chain(request.scope.as_deref().unwrap_or_default().split(' '))
                    .filter(|s| !s.is_empty())
                    .collect();
                scopes.sort_unstable();
                scopes.dedup();
                let scope = scopes.join(" ");
                self.store
                    .grant_consent(session.user_id, &request.client_id, &scope, self.now())
                    .await
                    .map_err(Error::from)?;
                tracing::info!(target: "security", event = "consent_granted", user_id = %session.user_id, client_id = %request.client_id, scope = %scope);
                self.redirect_with_code(&request, session).await?.into()
            }
            Some("deny") => self
                .refuse(
                    &request,
                    "access_denied",
                    "the user did not allow the request",
                )
                .into(),
            _ => self
                .refuse(
                    &request,
                    "invalid_request",
                    "decision must be allow or deny",
                )
                .into(),
        })
    }

    /// A signed-in browser's request: the consent page when the client needs one that
    /// was not given, else a code.
    async fn approve(&self, request: Authorization, session: SignedIn) -> Result<Answer, Error> {
        let client = self
            .clients
            .get(&request.client_id)
            .ok_or(Error::InvalidClient)?;
        if self.needs_consent(client, &request, session).await? {
            if request.prompt == Prompt::None {
                return Ok(self.refuse(
                    &request,
                    "consent_required",
                    "the user has not allowed this application",
                ));
            }
            return Ok(Answer::Consent {
                request,
                problem: None,
            });
        }
        self.redirect_with_code(&request, session).await
    }

    async fn needs_consent(
        &self,
        client: &Client,
        request: &Authorization,
        session: SignedIn,
    ) -> Result<bool, Error> {
        if client.first_party {
            return Ok(false);
        }
        // RFC 8252 §8.6: a native app's identity cannot be assured (any app on the
        // device may claim its client id and a loopback port): a third-party native
        // client is asked every time, never answered silently from a remembered
        // consent.
        if request.prompt == Prompt::Consent || client.kind == ClientKind::Mobile {
            return Ok(true);
        }
        let given = self
            .store
            .consents(session.user_id, Some(&client.id))
            .await?;
        Ok(!given
            .iter()
            .any(|c| consent_covers(&c.scope, request.scope.as_deref())))
    }

    /// Issues a code for the request and answers the redirect that carries it. Each
    /// code is a use of the sign-in session under `rate_limit_refresh_per_family`
    /// (default 30 a minute): a stolen session cookie cannot fill the codes table.
    async fn redirect_with_code(
        &self,
        request: &Authorization,
        session: SignedIn,
    ) -> Result<Answer, Error> {
        if let Some(limit) = self.limits.refresh_per_family
            && let Err(wait) = self
                .shared
                .hit(LimitKind::RefreshFamily, &session.sid.to_string(), limit)
                .await
        {
            self.metrics.rate_limited.inc();
            let description = format!(
                "too many authorization requests from this sign-in; retry in {} s",
                wait.as_secs().max(1)
            );
            return Ok(self.refuse(request, "temporarily_unavailable", &description));
        }
        let code = codes::mint()?;
        let now = self.now();
        self.store
            .insert_code(&StoredCode {
                hash: codes::hash(code.expose()),
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: request.code_challenge.clone(),
                dpop_jkt: request.dpop_jkt.clone(),
                scope: request.scope.clone(),
                user_id: session.user_id,
                browser_sid: session.sid,
                created_at: now,
                expires_at: now + CODE_LIFETIME,
                used: false,
            })
            .await?;
        let mut params = vec![("code", code.expose())];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        params.push(("iss", &self.issuer_url));
        Ok(Answer::Redirect(with_query(&request.redirect_uri, &params)))
    }
}
