//! 405 for a method a path does not declare, with the `Allow` header RFC 9110 §15.5.6
//! asks for (poem's router answers a bare error, which would render as 400).

use std::sync::Arc;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::api::error::{ApiError, Problem};

/// The methods each path of the API accepts, read from the OpenAPI document, for the
/// `Allow` header of a 405 (RFC 9110 §15.5.6).
pub struct AllowedMethods {
    /// Path templates split at `/` (`{id}` matches any segment), with their methods.
    paths: Vec<(Vec<String>, String)>,
}

impl AllowedMethods {
    pub fn of_api() -> Self {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::api::openapi_json()).unwrap_or_default();
        let mut paths: Vec<(Vec<String>, String)> = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let mut methods: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(method, _)| method.to_ascii_uppercase())
                    .collect();
                // poem answers HEAD with the GET endpoint.
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".to_owned());
                }
                methods.sort();
                (segments(path), methods.join(", "))
            })
            .collect();
        paths.push((segments("/openapi.json"), "GET, HEAD".to_owned()));
        Self { paths }
    }

    fn of(&self, path: &str) -> Option<&str> {
        let asked = segments(path);
        self.paths
            .iter()
            .find(|(template, _)| {
                template.len() == asked.len()
                    && template
                        .iter()
                        .zip(&asked)
                        .all(|(t, a)| t.starts_with('{') || t == a)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

/// A method the path does not declare: 405 `method_not_allowed` with `Allow`, not the
/// 400 poem's router would give.
pub async fn method_not_allowed<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    allowed: Arc<AllowedMethods>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    match ep.call(req).await {
        Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => {
            let mut resp = ApiError::from(Problem::from_poem(&e)).into_response();
            resp.set_status(StatusCode::METHOD_NOT_ALLOWED);
            if let Some(methods) = allowed
                .of(&path)
                .and_then(|m| HeaderValue::from_str(m).ok())
            {
                resp.headers_mut().insert(header::ALLOW, methods);
            }
            Ok(resp)
        }
        other => other.map(IntoResponse::into_response),
    }
}
