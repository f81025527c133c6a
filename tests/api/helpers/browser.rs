//! A browser as the code flow needs one: a cookie jar (by hand: reqwest's store keeps
//! no `Secure` cookie over plain http), same-origin form posts, hidden fields read
//! back from the pages; and PKCE values.

use std::collections::HashMap;

use reqwest::{Response, StatusCode};

use super::Api;

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let challenge = super::b64(&ring_sha256(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

fn ring_sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// The query of an authorization request.
pub fn authorize_query(
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    pkce: &Pkce,
    extra: &[(&str, &str)],
) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("/oauth/authorize?{}", q.finish())
}

/// The parameters of a redirect's `Location`.
pub fn location_params(resp: &Response) -> HashMap<String, String> {
    let location = location(resp);
    let url = reqwest::Url::parse(&location).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The `Location` of a redirect.
pub fn location(resp: &Response) -> String {
    assert!(
        matches!(resp.status(), StatusCode::FOUND | StatusCode::SEE_OTHER),
        "a redirect, got {}",
        resp.status()
    );
    resp.headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// The hidden fields of a page's form, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[start..].find('"')? + start;
        Some(unescape(&tag[start..end]))
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            if !tag.contains("type=\"hidden\"") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value")?))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A browser on the issuer's own origin.
pub struct Browser {
    api: Api,
    /// The issuer's origin (its `issuer_url`), sent as `Origin` with form posts.
    origin: String,
    pub cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(api: &Api, origin: &str) -> Self {
        Self {
            api: api.clone(),
            origin: origin.to_owned(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keeps the cookies a response sets (a `Max-Age=0` one is dropped).
    pub fn absorb(&mut self, resp: &Response) {
        for set in super::set_cookie_headers(resp) {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if set.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Response {
        let resp = self
            .api
            .http
            .get(self.api.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.absorb(&resp);
        resp
    }

    /// A form post from the issuer's own page.
    pub async fn post(&mut self, path: &str, form: &[(String, String)]) -> Response {
        self.post_with(path, form, &[("origin", &self.origin.clone())])
            .await
    }

    pub async fn post_with(
        &mut self,
        path: &str,
        form: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .api
            .http
            .post(self.api.url(path))
            .header("cookie", self.cookie_header())
            .form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        self.absorb(&resp);
        resp
    }

    /// Posts a page's form: its hidden fields plus `fields`.
    pub async fn submit(&mut self, page: &str, path: &str, fields: &[(&str, &str)]) -> Response {
        let mut form = hidden_fields(page);
        form.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.post(path, &form).await
    }

    /// Signs in on the page of an authorization request: the answer to the form.
    pub async fn sign_in(&mut self, query: &str, email: &str, password: &str) -> Response {
        let page = self.get(query).await;
        assert_eq!(page.status(), StatusCode::OK, "the sign-in page");
        let html = page.text().await.unwrap();
        assert!(html.contains("name=\"password\""), "{html}");
        self.submit(
            &html,
            "/oauth/authorize",
            &[("username", email), ("password", password)],
        )
        .await
    }
}

/// Exchanges a code at the token endpoint as a public body-mode client.
pub async fn exchange(
    api: &Api,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Response {
    api.post_form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await
}
