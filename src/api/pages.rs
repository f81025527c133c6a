//! The hosted pages: sign-in, consent, sign-out and the error page. Server-rendered
//! HTML that works without JavaScript, rendered with `maud` (every value is escaped
//! by construction: a `state` with markup stays text).
//!
//! Each page is sent with a strict Content-Security-Policy: nothing loads but the one
//! inline style (allowed by its hash) and the configured logo; no frame may hold it
//! (`frame-ancestors 'none'`); forms post only to this origin and, because Chromium
//! applies `form-action` to the redirect that follows a form post, to the origin of the
//! request's redirect URI (a private-use scheme by its scheme).

use std::sync::LazyLock;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::service::authorize::{Authorization, FormProblem};
use crate::service::browser::SignInSettings;

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;\
background:#f4f5f7;color:#1b1d21}\
main{max-width:24rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:12px;\
box-shadow:0 1px 3px rgba(0,0,0,.15)}\
h1{font-size:1.5rem;margin:0 0 .5rem}\
.logo{display:block;max-height:3rem;max-width:100%;margin:0 0 1rem}\
label{display:block;font-weight:600;margin:1rem 0 .25rem}\
input{width:100%;padding:.6rem .7rem;font:inherit;border:1px solid #8a8f98;border-radius:6px}\
input:focus,button:focus{outline:3px solid #1a5fb4;outline-offset:2px}\
button{margin-top:1.25rem;width:100%;padding:.7rem;font:inherit;font-weight:600;border:0;\
border-radius:6px;background:#1a5fb4;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#1a5fb4;border:1px solid #1a5fb4}\
.error{background:#fdecea;color:#8c1d18;border-radius:6px;padding:.6rem .8rem}\
.muted{color:#4b5059;font-size:.9rem}\
ul{padding-left:1.25rem}\
code{font-size:.9rem}";

/// The CSP source of the inline style: its SHA-256.
static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
});

/// The Content-Security-Policy of a page whose forms may end in a redirect to
/// `redirect_uri`.
pub fn content_security_policy(settings: &SignInSettings, redirect_uri: Option<&str>) -> String {
    let images = settings.logo_origin.as_deref().unwrap_or("'none'");
    let mut form_action = "'self'".to_owned();
    if let Some(target) = redirect_uri.and_then(redirect_source) {
        form_action.push(' ');
        form_action.push_str(&target);
    }
    format!(
        "default-src 'none'; style-src {}; img-src {images}; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'",
        *STYLE_HASH
    )
}

/// The CSP source that allows a redirect to `uri`: its origin, or its scheme. CSP's
/// grammar has no IPv6 literal (Chromium ignores `http://[::1]:8080` as invalid), so a
/// redirect to an IPv6 host is allowed by its scheme (`http:`), for that page only.
fn redirect_source(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    match (url.scheme(), url.host()) {
        (_, Some(url::Host::Ipv6(_))) => Some(format!("{}:", url.scheme())),
        ("http" | "https", _) => Some(url.origin().ascii_serialization()),
        (scheme, _) => Some(format!("{scheme}:")),
    }
}

fn page(settings: &SignInSettings, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · " (settings.product_name) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                main {
                    @if let Some(logo) = &settings.logo_url {
                        img.logo src=(logo) alt=(settings.product_name);
                    } @else {
                        p.muted { (settings.product_name) }
                    }
                    (body)
                }
            }
        }
    }
    .into_string()
}

/// The request, carried to the next post in hidden fields.
fn hidden_request(request: &Authorization, csrf: &str) -> Markup {
    html! {
        input type="hidden" name="response_type" value="code";
        input type="hidden" name="client_id" value=(request.client_id);
        input type="hidden" name="redirect_uri" value=(request.redirect_uri);
        @if let Some(state) = &request.state {
            input type="hidden" name="state" value=(state);
        }
        @if let Some(scope) = &request.scope {
            input type="hidden" name="scope" value=(scope);
        }
        input type="hidden" name="code_challenge" value=(request.code_challenge);
        input type="hidden" name="code_challenge_method" value="S256";
        @if let Some(jkt) = &request.dpop_jkt {
            input type="hidden" name="dpop_jkt" value=(jkt);
        }
        @if let Some(prompt) = request.prompt.value() {
            input type="hidden" name="prompt" value=(prompt);
        }
        input type="hidden" name="csrf" value=(csrf);
    }
}

fn problem_text(problem: FormProblem) -> String {
    match problem {
        FormProblem::Missing => "Enter your e-mail address and your password.".into(),
        FormProblem::Credentials => "Wrong e-mail address or password.".into(),
        FormProblem::RateLimited(wait) => format!(
            "Too many attempts. Try again in {} seconds.",
            wait.as_secs().max(1)
        ),
        FormProblem::Expired => "This page expired. Please try again.".into(),
        FormProblem::Busy => "The service is busy. Please try again in a moment.".into(),
    }
}

fn alert(problem: Option<FormProblem>) -> Markup {
    html! {
        @if let Some(problem) = problem {
            p.error role="alert" id="form-error" { (problem_text(problem)) }
        }
    }
}

pub fn sign_in(
    settings: &SignInSettings,
    request: &Authorization,
    csrf: &str,
    problem: Option<FormProblem>,
) -> String {
    let described = problem.map(|_| "form-error");
    page(
        settings,
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "to continue to " strong { (request.client_id) } }
            (alert(problem))
            form method="post" action="authorize" {
                (hidden_request(request, csrf))
                label for="username" { "E-mail address" }
                input #username type="email" name="username" autocomplete="username"
                    required autofocus aria-describedby=[described];
                label for="password" { "Password" }
                input #password type="password" name="password"
                    autocomplete="current-password" required aria-describedby=[described];
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn consent(
    settings: &SignInSettings,
    request: &Authorization,
    csrf: &str,
    problem: Option<FormProblem>,
) -> String {
    let scopes: Vec<&str> = request
        .scope
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    page(
        settings,
        "Allow access",
        html! {
            h1 { "Allow access?" }
            p { strong { (request.client_id) } " asks to use your account." }
            @if scopes.is_empty() {
                p { "It will know who you are, and nothing more." }
            } @else {
                p { "It asks for:" }
                ul { @for scope in &scopes { li { code { (scope) } } } }
            }
            (alert(problem))
            form method="post" action="authorize" {
                (hidden_request(request, csrf))
                button type="submit" name="decision" value="allow" { "Allow" }
                button.secondary type="submit" name="decision" value="deny" { "Deny" }
            }
            p.muted { "You can take this back at any time from your account's list of allowed applications." }
        },
    )
}

pub fn sign_out(
    settings: &SignInSettings,
    csrf: Option<&str>,
    problem: Option<FormProblem>,
) -> String {
    page(
        settings,
        "Sign out",
        html! {
            @if let Some(csrf) = csrf {
                h1 { "Sign out?" }
                p { "You will be signed out of " (settings.product_name) " in this browser. The applications you use stay signed in until you sign out of them." }
                (alert(problem))
                form method="post" action="logout" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Sign out" }
                }
            } @else {
                h1 { "Signed out" }
                p { "You are signed out of " (settings.product_name) " in this browser." }
            }
        },
    )
}

pub fn error(settings: &SignInSettings, title: &str, message: &str) -> String {
    page(
        settings,
        title,
        html! {
            h1 { (title) }
            p role="alert" { (message) }
            p.muted { "Go back to the application and try again. If this keeps happening, tell the application's developers." }
        },
    )
}
