//! `GET`/`POST /oauth/logout`: the sign-out page, which ends the browser's sign-in
//! session (`__Host-session`).

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::Cookie;
use poem_openapi::payload::{Form, Html, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use crate::api::ApiTags;
use crate::api::authorize::{form_cookie, same_origin, session_cookie};
use crate::api::error::ErrorBody;
use crate::api::pages;
use crate::domain::error::Error;
use crate::domain::secret::Secret;
use crate::service::Issuer;
use crate::service::authorize::FormProblem;

/// The sign-out form.
#[derive(Object, Deserialize)]
#[oai(rename = "SignOutForm")]
pub struct SignOutFormBody {
    /// The anti-CSRF field the page carried.
    csrf: Option<String>,
}

#[derive(ApiResponse)]
pub enum SignOutAnswer {
    /// The sign-out page: the form, or (after it) that the browser is signed out.
    #[oai(status = 200)]
    Page(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// A body that is not the form (the JSON error of every endpoint); never sent
    /// by the handler itself.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// A form posted from another site, or whose anti-CSRF field does not match (the
    /// form again, with a fresh field).
    #[oai(status = 403)]
    Forbidden(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
    /// An unexpected failure; it is logged with the request id.
    #[oai(status = 500)]
    Failed(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
    ),
    /// The database is unavailable; try again shortly.
    #[oai(status = 503)]
    Unavailable(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Retry-After")] u64,
    ),
}

fn failed(issuer: &Issuer, e: Error) -> SignOutAnswer {
    let settings = issuer.sign_in_settings();
    let csp = pages::content_security_policy(settings, None);
    match e {
        Error::Unavailable(cause) => {
            tracing::warn!(error = %cause, "the sign-out page could not reach the database");
            let html = pages::error(
                settings,
                "Try again shortly",
                "The service is busy or cannot reach its database.",
            );
            SignOutAnswer::Unavailable(Html(html), csp, 2)
        }
        e => {
            tracing::error!(error = %e, "the sign-out page failed");
            let html = pages::error(
                settings,
                "Something went wrong",
                "An unexpected error happened.",
            );
            SignOutAnswer::Failed(Html(html), csp)
        }
    }
}

/// The sign-out confirmation, with the browser's form cookie (a new one when it had
/// none, or after a stale form).
fn confirmation(
    issuer: &Issuer,
    cookie: Option<String>,
    problem: Option<FormProblem>,
) -> SignOutAnswer {
    let settings = issuer.sign_in_settings();
    let csp = pages::content_security_policy(settings, None);
    let (cookie, set) = match cookie {
        Some(c) => (c, None),
        None => match crate::crypto::forms::FormTokens::new_cookie() {
            Ok(c) => (c.clone(), Some(form_cookie(&c))),
            Err(e) => return failed(issuer, e),
        },
    };
    let field = issuer.form_field(&cookie);
    let html = Html(pages::sign_out(settings, Some(&field), problem));
    match problem {
        Some(_) => SignOutAnswer::Forbidden(html, csp, set),
        None => SignOutAnswer::Page(html, csp, set),
    }
}

pub struct SignOutApi;

#[OpenApi(tag = "ApiTags::OAuth")]
impl SignOutApi {
    /// Sign-out page
    ///
    /// Asks to confirm signing this browser out (a form with an anti-CSRF field).
    #[oai(path = "/oauth/logout", method = "get", operation_id = "signOutPage")]
    async fn sign_out_page(
        &self,
        issuer: Data<&Arc<Issuer>>,
        #[oai(name = "__Host-form")] form: Cookie<Option<String>>,
    ) -> SignOutAnswer {
        let cookie = form.0.filter(|f| !f.is_empty() && f.len() <= 64);
        confirmation(&issuer, cookie, None)
    }

    /// Sign out
    ///
    /// Ends the browser's sign-in session (`__Host-session`): the next authorization
    /// shows the sign-in form. The applications' own sessions go on; they end with
    /// their own logout (or `POST /v1/logout` with `scope=everywhere`). Only from this
    /// origin, with the page's anti-CSRF field.
    #[oai(path = "/oauth/logout", method = "post", operation_id = "signOut")]
    async fn sign_out(
        &self,
        issuer: Data<&Arc<Issuer>>,
        req: &Request,
        body: Form<SignOutFormBody>,
        #[oai(name = "__Host-session")] session: Cookie<Option<String>>,
        #[oai(name = "__Host-form")] form: Cookie<Option<String>>,
    ) -> SignOutAnswer {
        let settings = issuer.sign_in_settings();
        let csp = pages::content_security_policy(settings, None);
        if !same_origin(req, issuer.issuer_url()) {
            let html = pages::error(settings, "Refused", "This form was sent from another site.");
            return SignOutAnswer::Forbidden(Html(html), csp, None);
        }
        if !issuer.form_field_matches(form.0.as_deref(), body.0.csrf.as_deref()) {
            return confirmation(&issuer, None, Some(FormProblem::Expired));
        }
        if let Err(e) = issuer.sign_out(session.0.map(Secret::new).as_ref()).await {
            return failed(&issuer, e);
        }
        let html = Html(pages::sign_out(settings, None, None));
        SignOutAnswer::Page(html, csp, Some(session_cookie("", 0)))
    }
}
