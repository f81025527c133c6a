//! Requests as a client makes them, against an issuer at `address`: a spawned
//! `TestApp` (which derefs to its `Api`) or a process of the real binary.

use reqwest::{Response, StatusCode};

use super::{PASSWORD, Tokens, tokens, unique_email};

/// An issuer's base URL and an HTTP client that follows no redirect.
#[derive(Clone)]
pub struct Api {
    pub address: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(address: String) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { address, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/v1/users"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.try_post_form(path, form).await.unwrap()
    }

    /// A token request with `proofs` as its `DPoP` headers (none, one, or several).
    pub async fn token_with_proofs(&self, form: &[(&str, &str)], proofs: &[&str]) -> Response {
        let mut request = self.http.post(self.url("/oauth/token")).form(form);
        for proof in proofs {
            request = request.header("DPoP", *proof);
        }
        request.send().await.unwrap()
    }

    /// A password grant of the `dev` client for `email` with `proofs` as its `DPoP`
    /// headers.
    pub async fn login_with_proofs(&self, email: &str, proofs: &[&str]) -> Response {
        let form = [
            ("grant_type", "password"),
            ("client_id", "dev"),
            ("username", email),
            ("password", super::PASSWORD),
        ];
        self.token_with_proofs(&form, proofs).await
    }

    /// A client-credentials grant of `client` with HTTP Basic, and `form` besides.
    pub async fn client_credentials(
        &self,
        client: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> Response {
        let mut body = vec![("grant_type", "client_credentials")];
        body.extend_from_slice(form);
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth(client, Some(secret))
            .form(&body)
            .send()
            .await
            .unwrap()
    }

    /// `post_form`, for a caller that expects the server to go away.
    pub async fn try_post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Result<Response> {
        self.http.post(self.url(path)).form(form).send().await
    }

    /// A password grant of the `dev` client.
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.try_login(email, password).await.unwrap()
    }

    pub async fn try_login(&self, email: &str, password: &str) -> reqwest::Result<Response> {
        self.try_post_form(
            "/oauth/token",
            &[
                ("grant_type", "password"),
                ("client_id", "dev"),
                ("username", email),
                ("password", password),
            ],
        )
        .await
    }

    /// A password grant of the `dev` client from another address (`client_from`).
    pub async fn login_from(&self, ip: &str, email: &str, password: &str) -> Response {
        client_from(ip)
            .post(self.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "dev"),
                ("username", email),
                ("password", password),
            ])
            .send()
            .await
            .unwrap()
    }

    /// A refresh grant of the `dev` client.
    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.try_refresh(refresh_token).await.unwrap()
    }

    pub async fn try_refresh(&self, refresh_token: &str) -> reqwest::Result<Response> {
        self.try_post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "dev"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    pub async fn refresh_as(&self, client_id: &str, refresh_token: &str) -> Response {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.http
            .get(self.url("/v1/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    /// What introspection says of `token` to the tests' resource server.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        self.http
            .post(self.url("/oauth/introspect"))
            .basic_auth(super::SERVICE_CLIENT, Some(super::SERVICE_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `kid`s the JWKS publishes now.
    pub async fn jwks_kids(&self) -> Vec<String> {
        let jwks: serde_json::Value = self
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The audit events an admin (its access token) reads, newest first (500 at most).
    pub async fn audit_events(&self, admin_access: &str) -> Vec<serde_json::Value> {
        let events: serde_json::Value = self
            .http
            .get(self.url("/v1/admin/audit?limit=500"))
            .bearer_auth(admin_access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events.as_array().unwrap().clone()
    }

    /// The value of the `/metrics` line that starts with `series` (a name and its
    /// labels).
    pub async fn metric(&self, series: &str) -> String {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("{series} in {text}"))
            .to_owned()
    }

    /// Registers a fresh user and logs in with the body-mode `dev` client.
    pub async fn signed_in(&self) -> (String, Tokens) {
        let email = unique_email();
        assert_eq!(
            self.register(&email, PASSWORD).await.status(),
            StatusCode::CREATED
        );
        let resp = self.login(&email, PASSWORD).await;
        (email, tokens(resp).await)
    }
}

/// An HTTP client whose connections come from `ip`: any address of 127.0.0.0/8 is this
/// machine, so `127.0.0.2` is another client to the server.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}
