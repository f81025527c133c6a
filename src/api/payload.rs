//! `StrictJson<T>`: a JSON request body parsed by serde straight into `T`, so that a
//! member given twice is refused like a repeated form parameter. poem-openapi's own
//! `Json` goes through `serde_json::Value`, where the last duplicate silently wins.
//!
//! `OptionalBody<T>`: a body of parameters an operation may do without (poem-openapi
//! has no optional request object): an empty body is `None`; any other is parsed as
//! JSON or a form of `T` by its content type, so a body is never silently ignored.

use poem::{Body, FromRequest, Request, RequestBody};
use poem_openapi::error::{ContentTypeError, ParseRequestPayloadError};
use poem_openapi::payload::Form;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::ParseFromJSON;
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

/// A JSON body with the schema of `T`, parsed strictly.
pub struct StrictJson<T>(pub T);

impl<T: Type> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: DeserializeOwned + Send> ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        serde_json::from_slice(&data).map(Self).map_err(|e| {
            ParseRequestPayloadError {
                reason: e.to_string(),
            }
            .into()
        })
    }
}

/// An optional request body of parameters `T`, as JSON (strict) or form: `None` for an
/// empty body. Any other body is parsed, and refused if it does not parse.
pub struct OptionalBody<T>(pub Option<T>);

impl<'a, T> ApiExtractor<'a> for OptionalBody<T>
where
    T: Type + ParseFromJSON + DeserializeOwned + Send + 'static,
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![
                MetaMediaType {
                    content_type: <StrictJson<T> as Payload>::CONTENT_TYPE,
                    schema: <StrictJson<T> as Payload>::schema_ref(),
                },
                MetaMediaType {
                    content_type: <Form<T> as Payload>::CONTENT_TYPE,
                    schema: <Form<T> as Payload>::schema_ref(),
                },
            ],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // The body is in memory already (`api::middleware::limit_body` read it).
        let bytes = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        *body = RequestBody::new(Body::from(bytes));
        let content_type = request
            .content_type()
            .ok_or(ContentTypeError::ExpectContentType)?;
        if <StrictJson<T> as Payload>::check_content_type(content_type) {
            let StrictJson(t) =
                <StrictJson<T> as ParsePayload>::from_request(request, body).await?;
            Ok(Self(Some(t)))
        } else if <Form<T> as Payload>::check_content_type(content_type) {
            let Form(t) = <Form<T> as ParsePayload>::from_request(request, body).await?;
            Ok(Self(Some(t)))
        } else {
            Err(ContentTypeError::NotSupported {
                content_type: content_type.to_owned(),
            }
            .into())
        }
    }
}
