//! `GET`/`POST /oauth/authorize`: the code flow's front channel, with its sign-in and
//! consent pages (the sign-out page is `sign_out`).
//!
//! Cookies of the hosted pages, all `__Host-` (Secure, `Path=/`, no `Domain`) and
//! HttpOnly:
//! - `__Host-session`: the sign-in session, `SameSite=Lax` so that the top-level
//!   redirect from a client's site carries it (single sign-on);
//! - `__Host-form`: the value the forms' anti-CSRF field is the MAC of (`Lax`: it is
//!   kept when the user arrives from a client's site, so two tabs share it).

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Cookie, Query};
use poem_openapi::payload::{Form, Html, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, ResponseContent};
use serde::Deserialize;

use crate::api::error::ErrorBody;
use crate::api::pages;
use crate::api::{ApiTags, request_meta};
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::service::Issuer;
use crate::service::authorize::{
    Answer, AuthorizeParams, BrowserRequest, FormInput, FormProblem, Outcome, Refusal,
};

pub const SESSION_COOKIE: &str = "__Host-session";
pub const FORM_COOKIE: &str = "__Host-form";

/// A page, or (a form body that does not parse) the JSON error of every endpoint.
#[derive(ResponseContent)]
pub enum PageOrError {
    Html(Html<String>),
    Json(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum PageAnswer {
    /// A page: the sign-in form, the consent form, or the sign-out page.
    #[oai(status = 200)]
    Page(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// Back to the client's redirect URI: with `code`, `state` and `iss` (RFC 9207),
    /// or with `error`, `error_description`, `state` and `iss`.
    #[oai(status = 302)]
    Found(
        #[oai(header = "Location")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// The same after a form post (the browser follows it with `GET`).
    #[oai(status = 303)]
    SeeOther(
        #[oai(header = "Location")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// A page that says why: an unknown `client_id` or a `redirect_uri` that is not
    /// registered (never redirected to), or the sign-in form again after a wrong
    /// password. A form body that does not parse is the usual JSON error.
    #[oai(status = 400)]
    BadRequest(
        PageOrError,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// A form posted from another site, or whose anti-CSRF field does not match (the
    /// form again, with a fresh field).
    #[oai(status = 403)]
    Forbidden(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// Too many sign-in attempts: the form again, saying how long to wait.
    #[oai(status = 429)]
    TooManyRequests(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Retry-After")] u64,
    ),
    /// An unexpected failure; it is logged with the request id.
    #[oai(status = 500)]
    Failed(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
    ),
    /// The database or the password hashing is busy: a page (the sign-in form again,
    /// when it was one) says to try again shortly.
    #[oai(status = 503)]
    Unavailable(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Retry-After")] u64,
    ),
}

/// The sign-in or consent form as posted: the authorization request (hidden fields)
/// and what the user entered. A field given twice is refused (400).
#[derive(Object, Deserialize)]
#[oai(rename = "AuthorizeForm")]
pub struct AuthorizeFormBody {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    dpop_jkt: Option<String>,
    /// `login` or `consent`, as the request asked.
    prompt: Option<String>,
    /// The sign-in form: the e-mail address.
    username: Option<String>,
    /// The sign-in form: the password.
    password: Option<String>,
    /// The consent form: `allow` or `deny`.
    decision: Option<String>,
    /// The anti-CSRF field the page carried.
    csrf: Option<String>,
}

pub(super) fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax")
}

pub(super) fn form_cookie(value: &str) -> String {
    format!("{FORM_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax")
}

/// The parameters of a query string, with the names given more than once.
fn params_of_query(query: &str) -> AuthorizeParams {
    let mut p = AuthorizeParams::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "response_type" => &mut p.response_type,
            "client_id" => &mut p.client_id,
            "redirect_uri" => &mut p.redirect_uri,
            "state" => &mut p.state,
            "scope" => &mut p.scope,
            "code_challenge" => &mut p.code_challenge,
            "code_challenge_method" => &mut p.code_challenge_method,
            "prompt" => &mut p.prompt,
            "dpop_jkt" => &mut p.dpop_jkt,
            _ => continue,
        };
        // RFC 6749 §3.1: a parameter sent without a value is omitted.
        if value.is_empty() {
            continue;
        }
        if slot.is_some() {
            p.repeated.push(name.into_owned());
        } else {
            *slot = Some(value.into_owned());
        }
    }
    p
}

/// Whether a post comes from this origin: its `Origin` (when sent) is the issuer's,
/// and its `Sec-Fetch-Site` (when sent) says `same-origin`.
pub(super) fn same_origin(req: &Request, issuer_url: &str) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    header("origin").is_none_or(|o| o.eq_ignore_ascii_case(issuer_url))
        && header("sec-fetch-site").is_none_or(|s| s == "same-origin")
}

/// The browser's side of a request: its cookies, where it comes from, who it is.
fn browser(
    req: &Request,
    issuer: &Issuer,
    session: Option<String>,
    form: Option<String>,
) -> BrowserRequest {
    BrowserRequest {
        session: session.map(Secret::new),
        form_cookie: form.filter(|f| !f.is_empty() && f.len() <= 64),
        same_origin: same_origin(req, issuer.issuer_url()),
        meta: request_meta(req, None, false),
    }
}

/// Renders what the service answered. A page with a form gets the browser's form
/// cookie (a new one when it had none); a new sign-in sets the session cookie.
fn respond(
    issuer: &Issuer,
    result: Result<Outcome, Refusal>,
    browser: &BrowserRequest,
    posted: bool,
) -> PageAnswer {
    let settings = issuer.sign_in_settings();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(refusal) => return refused(issuer, refusal, posted),
    };
    let session = outcome
        .signed_in
        .as_ref()
        .map(|s| session_cookie(s.cookie.expose(), s.max_age.as_secs()));
    let (request, problem, consent) = match outcome.answer {
        Answer::Redirect(location) if posted => return PageAnswer::SeeOther(location, session),
        Answer::Redirect(location) => return PageAnswer::Found(location, session),
        Answer::SignIn { request, problem } => (request, problem, false),
        Answer::Consent { request, problem } => (request, problem, true),
    };
    let (cookie, new_cookie) = match &browser.form_cookie {
        // After a stale form, a fresh value: the old one may be known to whoever
        // forged the post.
        Some(c) if problem != Some(FormProblem::Expired) => (c.clone(), None),
        _ => match crate::crypto::forms::FormTokens::new_cookie() {
            Ok(c) => (c.clone(), Some(form_cookie(&c))),
            Err(e) => return refused(issuer, Refusal::Failed(e), posted),
        },
    };
    // One Set-Cookie: a new sign-in comes from a post that carried the form cookie.
    let set_cookie = session.or(new_cookie);
    let csrf = issuer.form_field(&cookie);
    let csp = pages::content_security_policy(settings, Some(&request.redirect_uri));
    let html = if consent {
        pages::consent(settings, &request, &csrf, problem)
    } else {
        pages::sign_in(settings, &request, &csrf, problem)
    };
    match problem {
        None => PageAnswer::Page(Html(html), csp, set_cookie),
        Some(FormProblem::Missing | FormProblem::Credentials) => {
            PageAnswer::BadRequest(PageOrError::Html(Html(html)), csp, set_cookie)
        }
        Some(FormProblem::Expired) => PageAnswer::Forbidden(Html(html), csp, set_cookie),
        Some(FormProblem::RateLimited(wait)) => {
            PageAnswer::TooManyRequests(Html(html), csp, wait.as_secs().max(1))
        }
        Some(FormProblem::Busy) => PageAnswer::Unavailable(Html(html), csp, 2),
    }
}

fn refused(issuer: &Issuer, refusal: Refusal, posted: bool) -> PageAnswer {
    let settings = issuer.sign_in_settings();
    let csp = pages::content_security_policy(settings, None);
    match refusal {
        Refusal::Redirect(location) if posted => PageAnswer::SeeOther(location, None),
        Refusal::Redirect(location) => PageAnswer::Found(location, None),
        Refusal::Page(message) => PageAnswer::BadRequest(
            PageOrError::Html(Html(pages::error(
                settings,
                "This request cannot go on",
                &message,
            ))),
            csp,
            None,
        ),
        Refusal::CrossSite => PageAnswer::Forbidden(
            Html(pages::error(
                settings,
                "Refused",
                "This form was sent from another site.",
            )),
            csp,
            None,
        ),
        Refusal::Failed(Error::Unavailable(cause)) => {
            tracing::warn!(error = %cause, "a hosted page could not reach the database");
            PageAnswer::Unavailable(
                Html(pages::error(
                    settings,
                    "Try again shortly",
                    "The service is busy or cannot reach its database.",
                )),
                csp,
                2,
            )
        }
        Refusal::Failed(e) => {
            tracing::error!(error = %e, "a hosted page failed");
            PageAnswer::Failed(
                Html(pages::error(
                    settings,
                    "Something went wrong",
                    "An unexpected error happened.",
                )),
                csp,
            )
        }
    }
}

pub struct AuthorizeApi;

#[OpenApi(tag = "ApiTags::OAuth")]
impl AuthorizeApi {
    /// Authorization request
    ///
    /// The authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636), for a browser:
    /// shows the sign-in form (or, signed in already, skips it), the consent page for a
    /// client that is not first-party, then redirects to `redirect_uri` with `code`,
    /// `state` and `iss` (RFC 9207). An unknown client or a `redirect_uri` that is not
    /// registered is answered with a page, never redirected to; every other error is
    /// redirected with `error`, `error_description`, `state` and `iss`. A parameter
    /// given twice is `invalid_request`.
    #[oai(path = "/oauth/authorize", method = "get", operation_id = "authorize")]
    // Each parameter is listed so that the OpenAPI document shows it; the handler
    // reads the query itself, to tell a parameter given twice.
    #[allow(clippy::too_many_arguments)]
    async fn authorize(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        /// `code`.
        #[oai(name = "response_type")]
        _response_type: Query<Option<String>>,
        /// A registered client.
        #[oai(name = "client_id")]
        _client_id: Query<Option<String>>,
        /// One of the client's registered redirect URIs, byte for byte (a native
        /// client's loopback URI on any port).
        #[oai(name = "redirect_uri")]
        _redirect_uri: Query<Option<String>>,
        /// Carried back unchanged (at most 2048 bytes).
        #[oai(name = "state")]
        _state: Query<Option<String>>,
        /// Space-separated scopes among the client's.
        #[oai(name = "scope")]
        _scope: Query<Option<String>>,
        /// base64url(SHA-256(code_verifier)), 43 characters.
        #[oai(name = "code_challenge")]
        _code_challenge: Query<Option<String>>,
        /// `S256` (`plain` is refused).
        #[oai(name = "code_challenge_method")]
        _code_challenge_method: Query<Option<String>>,
        /// `none` (no page: `login_required` or `consent_required`), `login` (sign in
        /// again), or `consent` (ask again).
        #[oai(name = "prompt")]
        _prompt: Query<Option<String>>,
        /// RFC 9449 §10: the thumbprint of the DPoP key the code is bound to.
        #[oai(name = "dpop_jkt")]
        _dpop_jkt: Query<Option<String>>,
        #[oai(name = "__Host-session")] session: Cookie<Option<String>>,
        #[oai(name = "__Host-form")] form: Cookie<Option<String>>,
    ) -> PageAnswer {
        let params = params_of_query(req.uri().query().unwrap_or_default());
        let browser = browser(req, &issuer, session.0, form.0);
        let result = issuer.authorize(&params, &browser).await;
        respond(&issuer, result, &browser, false)
    }

    /// Sign-in and consent forms
    ///
    /// What the hosted sign-in and consent pages post: the authorization request
    /// again (the pages' hidden fields), the anti-CSRF field, and the e-mail address
    /// and password, or `decision=allow|deny`. Only from this origin. Wrong
    /// credentials show the form again (400); the same limits, lockout and audit rows
    /// as the password grant apply.
    #[oai(
        path = "/oauth/authorize",
        method = "post",
        operation_id = "authorizeForm"
    )]
    async fn authorize_form(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        body: Form<AuthorizeFormBody>,
        #[oai(name = "__Host-session")] session: Cookie<Option<String>>,
        #[oai(name = "__Host-form")] form: Cookie<Option<String>>,
    ) -> PageAnswer {
        let Form(b) = body;
        let params = AuthorizeParams {
            response_type: b.response_type,
            client_id: b.client_id,
            redirect_uri: b.redirect_uri,
            state: b.state,
            scope: b.scope,
            code_challenge: b.code_challenge,
            code_challenge_method: b.code_challenge_method,
            prompt: b.prompt,
            dpop_jkt: b.dpop_jkt,
            repeated: Vec::new(),
        };
        let input = FormInput {
            username: b.username,
            password: b.password.map(Secret::new),
            decision: b.decision,
            csrf: b.csrf,
        };
        let browser = browser(req, &issuer, session.0, form.0);
        let result = issuer.authorize_form(&params, input, &browser).await;
        respond(&issuer, result, &browser, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_empty_parameters() {
        let p =
            params_of_query("client_id=a&state=&scope=x&scope=y&redirect_uri=https%3A%2F%2Fa%2Fcb");
        assert_eq!(p.client_id.as_deref(), Some("a"));
        assert_eq!(p.state, None);
        assert_eq!(p.scope.as_deref(), Some("x"));
        assert_eq!(p.repeated, vec!["scope".to_owned()]);
        assert_eq!(p.redirect_uri.as_deref(), Some("https://a/cb"));
    }
}
