//! HTTP hygiene every response gets, whatever produced it: `Cache-Control` (private, so no
//! shared cache keeps one tenant's answer for another), `X-Content-Type-Options`, a
//! Content-Security-Policy on the documentation page, `Allow` on 405, `Content-Length` on HEAD
//! ([`head_as_get`]);
//! and the one rule every request obeys before it is parsed: no key twice in a JSON object, no
//! documented query parameter twice.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::Json;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{ApiError, Problem};

/// `Cache-Control` of a response with an entity tag: any cache must revalidate it, and only
/// the client's own cache may keep it.
const REVALIDATE_PRIVATELY: &str = "private, no-cache";

/// `Cache-Control` of every other API response (errors, writes): nothing keeps it.
const NEVER_STORE: &str = "no-store";

/// The Swagger UI page: its own inline script and styles, images inline, requests to this
/// origin only (the spec), no framing.
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                           img-src 'self' data:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; \
                           base-uri 'none'; form-action 'none'";

/// The path as the router reads it (poem's `NormalizePath` with `TrailingSlash::Trim`): runs of
/// `/` merged into one and a trailing `/` dropped, so that what is decided outside the router (the
/// docs page's policy, `Allow`) holds for every spelling that reaches the same page.
pub fn normalised_path(path: &str) -> String {
    let mut normalised = String::with_capacity(path.len());
    for character in path.chars() {
        if !(character == '/' && normalised.ends_with('/')) {
            normalised.push(character);
        }
    }
    if normalised.len() > 1 && normalised.ends_with('/') {
        normalised.pop();
    }
    normalised
}

/// Adds the headers above. `path` is the [`normalised_path`]; `allowed` gives the methods
/// documented for it (for `Allow` on 405).
pub fn finish(path: &str, mut response: Response, allowed: Option<String>) -> Response {
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        // A 412 names the current tag too, but it is an error: nothing keeps it.
        let representation = status.is_success() || status == StatusCode::NOT_MODIFIED;
        let policy =
            if representation && headers.contains_key(header::ETAG) { REVALIDATE_PRIVATELY } else { NEVER_STORE };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    }
    if path == "/docs" {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_POLICY));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED
        && let Some(value) = allowed.and_then(|allowed| HeaderValue::from_str(&allowed).ok())
    {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Joins repeated `If-None-Match` lines, and repeated `If-Match` lines, each into one
/// comma-separated list, which is how RFC 9110 reads them, so that the hit path and the handlers,
/// which read one line, see every tag sent.
pub fn fold_condition_lists(request: &mut Request) {
    let headers = request.headers_mut();
    for name in [header::IF_NONE_MATCH, header::IF_MATCH] {
        // Every request passes here: nothing is allocated unless there are several lines.
        if headers.get_all(&name).iter().nth(1).is_none() {
            continue;
        }
        let lines: Vec<&[u8]> = headers.get_all(&name).iter().map(HeaderValue::as_bytes).collect();
        if let Ok(list) = HeaderValue::from_bytes(&lines.join(&b", "[..])) {
            headers.insert(name, list);
        }
    }
}

/// Answers HEAD as the GET it stands for, with that GET's `Content-Length` and no body (poem
/// itself would drop the body, and with it the length); a 304 or 204 has no length to give.
pub async fn head_as_get<E: Endpoint>(endpoint: Arc<E>, mut request: Request) -> poem::Result<Response> {
    if request.method() != Method::HEAD {
        return endpoint.call(request).await.map(IntoResponse::into_response);
    }
    request.set_method(Method::GET);
    let mut response = endpoint.call(request).await?.into_response();
    let body = response.take_body().into_bytes().await.unwrap_or_default();
    if !matches!(response.status(), StatusCode::NOT_MODIFIED | StatusCode::NO_CONTENT) {
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    response.set_body(Body::empty());
    Ok(response)
}

/// Refuses (400, naming it) a query parameter the operation documents given more than once: each
/// takes one value, and the router would read the first and silently drop the others, answering
/// a question the client did not ask.
pub async fn one_value_per_parameter<E: Endpoint>(endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
    let query = request.uri().query().unwrap_or_default();
    if let Some(name) = repeated_parameter(request.method(), request.uri().path(), query) {
        let detail = format!("query parameter `{name}` is given more than once; give it once");
        return Err(ApiError::BadRequest(Json(Problem::new(StatusCode::BAD_REQUEST, detail))).into());
    }
    endpoint.call(request).await.map(IntoResponse::into_response)
}

/// The first query parameter of the operation `method` `path` documents that `query` gives twice,
/// its name read as the router reads it (percent-decoded); parameters the operation does not
/// document, which the router ignores, may repeat.
fn repeated_parameter(method: &Method, path: &str, query: &str) -> Option<String> {
    if !query.contains('&') {
        return None;
    }
    let operation = crate::app::documented_operations(path)?.get(&method.as_str().to_ascii_lowercase())?;
    let parameters = operation["parameters"].as_array()?.iter().filter(|parameter| parameter["in"] == "query");
    let documented: Vec<&str> = parameters.filter_map(|parameter| parameter["name"].as_str()).collect();
    let mut seen = HashSet::new();
    form_urlencoded::parse(query.as_bytes())
        .map(|(name, _)| name)
        .find(|name| documented.contains(&name.as_ref()) && !seen.insert(name.clone()))
        .map(Cow::into_owned)
}

/// The name of a key some object of `body` holds twice, if any (`None` as well when `body` is
/// not JSON at all: the parser that follows reports that).
pub fn repeated_key(body: &[u8]) -> Option<String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match UniqueKeys.deserialize(&mut deserializer) {
        Err(error) if error.is_data() => {
            Some(error.to_string().split(" at line ").next().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// Walks a JSON value, failing (as a data error naming the key) on the first repeated key.
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = fields.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("the key {key:?} appears twice in one object")));
            }
            fields.next_value_seed(UniqueKeys)?;
            seen.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use poem::http::Method;

    use super::{normalised_path, repeated_key, repeated_parameter};

    #[test]
    fn a_path_is_normalised_as_the_router_reads_it() {
        for (sent, read) in [
            ("/docs", "/docs"),
            ("/docs/", "/docs"),
            ("//docs", "/docs"),
            ("/api//v1///risks/", "/api/v1/risks"),
            ("/", "/"),
            ("//", "/"),
        ] {
            assert_eq!(normalised_path(sent), read, "{sent}");
        }
    }

    #[test]
    fn a_query_parameter_the_operation_documents_given_twice_is_named_and_anything_else_passes() {
        let risks = |query| repeated_parameter(&Method::GET, "/api/v1/risks", query);
        assert_eq!(risks("status=open&page=2&status=closed").as_deref(), Some("status"));
        assert_eq!(risks("limit=5&li%6Dit=6").as_deref(), Some("limit"), "as the router decodes it");
        let trends = repeated_parameter(&Method::GET, "/api/v1/stats/trends", "days=7&days=7");
        assert_eq!(trends.as_deref(), Some("days"), "even with one value");
        for passes in ["", "status=open", "status=open&page=2", "utm=1&utm=2&page=1", "status=open&Status=x"] {
            assert_eq!(risks(passes), None, "{passes}");
        }
        let undocumented_there = [
            (Method::GET, "/api/v1/risks/7f1d2c1e-4b8a-4f3e-9a55-0c9e6f1b2a3d"),
            (Method::POST, "/api/v1/risks"),
            (Method::GET, "/api/v1/nothing"),
        ];
        for (method, path) in undocumented_there {
            assert_eq!(repeated_parameter(&method, path, "page=1&page=2"), None, "{method} {path}");
        }
    }

    #[test]
    fn a_key_repeated_in_any_object_is_found_and_distinct_keys_pass() {
        assert!(repeated_key(br#"{"role":"viewer","role":"admin"}"#).unwrap().contains("\"role\""));
        assert!(repeated_key(br#"{"a":[{"b":1,"b":2}]}"#).unwrap().contains("\"b\""));
        assert!(repeated_key(br#"{"a":{"b":1},"b":{"a":1}}"#).is_none());
        assert!(repeated_key(br#"{"\u0061":1,"a":2}"#).is_some(), "escapes name the same key");
        assert!(repeated_key(b"not json").is_none(), "left to the parser");
    }
}
