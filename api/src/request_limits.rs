//! The API's limits on one request: its body (at most [`MAX_BODY_BYTES`], no JSON key twice) must
//! arrive within `http.request_timeout_ms` (408 otherwise), and the whole request must be answered
//! within it (503 otherwise), unless its write is committing by then ([`Committing`]). Only a
//! caller with a valid bearer token has its body read at all. The limits on connections are the
//! server loop's (`openrisk_shared::http_server`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use poem::http::{HeaderValue, StatusCode, Version, header};
use poem::web::headers::{Authorization, HeaderMapExt, authorization};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::Json;
use tokio::time::{Instant, timeout, timeout_at};

use crate::app::AppState;
use crate::auth::VerifiedBearer;
use crate::error::{ApiError, Problem};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Checks the caller may send a body, reads it (when there is one) and then answers, all before
/// `limit` has passed since the request arrived: a body still arriving then gets 408 (the client
/// was too slow), a check or an answer the server has not finished gets 503 (the server was).
pub async fn within<E: Endpoint>(endpoint: Arc<E>, mut request: Request, limit: Duration) -> poem::Result<Response> {
    let deadline = Instant::now() + limit;
    let committing = Committing::watch(&mut request);
    if may_have_body(&request) {
        // Boxed: inline, the read's state would enlarge this future, which every hit moves.
        let Ok(may_send) = timeout_at(deadline, Box::pin(may_send_a_body(&mut request))).await else {
            return Err(took_too_long(limit));
        };
        if !may_send {
            request.set_body(Body::empty());
        } else {
            let json = match timeout_at(deadline, Box::pin(read_body(&mut request))).await {
                Ok(read) => read?,
                Err(_) => return Ok(body_too_slow(limit)),
            };
            if let Some(json) = json {
                // Boxed as the read is; a body that does not fit its type gets the field named.
                let answered = Box::pin(answer(&*endpoint, request, deadline, limit, committing)).await;
                return answered.map_err(|error| crate::field_errors::name_the_field(error, &json));
            }
        }
    }
    answer(&*endpoint, request, deadline, limit, committing).await
}

/// Whether the request's write has been sent to be committed. From then on only the database's
/// answer says whether it was applied, so the deadline does not cut the request short with 503
/// "retry", which would invite the client to make the change twice (a second risk, a sub-action
/// toggled back): the answer is waited for, up to another `limit`, and if it still has not come,
/// the client is told the outcome is unknown ([`ApiError::outcome_unknown`]).
#[derive(Debug, Clone, Default)]
pub struct Committing(Arc<AtomicBool>);

impl Committing {
    /// The watch of a request that may write (any method but the safe ones), which the operation
    /// finds among the request's extensions.
    fn watch(request: &mut Request) -> Option<Self> {
        if request.method().is_safe() {
            return None;
        }
        let committing = Self::default();
        request.extensions_mut().insert(committing.clone());
        Some(committing)
    }

    /// Notes that the write's commit (or its one statement) is about to be sent.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn began(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The endpoint's answer, or 503 once `deadline` has passed, unless the request's write is
/// committing by then (see [`Committing`]).
async fn answer<E: Endpoint>(
    endpoint: &E,
    request: Request,
    deadline: Instant,
    limit: Duration,
    committing: Option<Committing>,
) -> poem::Result<Response> {
    let mut call = std::pin::pin!(endpoint.call(request));
    if let Ok(result) = timeout_at(deadline, call.as_mut()).await {
        return result.map(IntoResponse::into_response);
    }
    if !committing.is_some_and(|committing| committing.began()) {
        return Err(took_too_long(limit));
    }
    tracing::warn!(
        limit_ms = limit.as_millis(),
        "a write was still committing at the request deadline; waiting for it"
    );
    match timeout(limit, call).await {
        Ok(result) => result.map(IntoResponse::into_response),
        Err(_) => Err(ApiError::outcome_unknown().into()),
    }
}

fn took_too_long(limit: Duration) -> poem::Error {
    let detail = format!("the request took longer than {} ms; retry later", limit.as_millis());
    ApiError::unavailable(detail).into()
}

/// An HTTP/1 request without `Content-Length` or `Transfer-Encoding` has no body (RFC 9112 §6.3),
/// so a plain GET, every cache hit included, skips the read; HTTP/2 says so only in its frames.
fn may_have_body(request: &Request) -> bool {
    let headers = request.headers();
    request.version() >= Version::HTTP_2
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|length| length.as_bytes() != b"0")
}

/// Whether the request's body is to be read: only a caller whose bearer token is valid may have
/// the server buffer one (the verified caller is handed on, so it is not verified again). Any
/// other request is answered without its body, 401 by the operation (or 404 by the router) as
/// it would have been. When the token cannot be checked now (Postgres unavailable), the body is
/// read as before, and the operation answers what its own check finds.
async fn may_send_a_body(request: &mut Request) -> bool {
    let Some(state) = request.data::<Arc<AppState>>().cloned() else { return true };
    // Read as the operations' bearer security scheme reads it.
    let bearer = request.headers().typed_get::<Authorization<authorization::Bearer>>();
    let Some(token) = bearer.map(|bearer| bearer.token().to_owned()) else { return false };
    match state.tokens.verify(&token).await {
        Ok(principal) => {
            request.set_data(VerifiedBearer { token, principal });
            true
        }
        Err(ApiError::Unauthorized(..)) => false,
        Err(_) => true,
    }
}

/// Buffers the body, refusing one over [`MAX_BODY_BYTES`] (413) whether or not it announces its
/// length, and a JSON one that holds a key twice in an object (400). Returns the body when it
/// is JSON, for [`crate::field_errors`].
async fn read_body(request: &mut Request) -> poem::Result<Option<Bytes>> {
    let announced = request.header(header::CONTENT_LENGTH).and_then(|value| value.parse::<usize>().ok()).unwrap_or(0);
    if announced > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let body = request.take_body().into_bytes_limit(MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    // Media types are case-insensitive, and so is the parser that reads the body after this.
    let json = request.content_type().is_some_and(|content_type| content_type.to_ascii_lowercase().contains("json"));
    if json && let Some(detail) = crate::hygiene::repeated_key(&body) {
        return Err(ApiError::BadRequest(Json(Problem::new(StatusCode::BAD_REQUEST, detail))).into());
    }
    request.set_body(body.clone());
    Ok(json.then_some(body))
}

fn too_large() -> poem::Error {
    let detail = format!("the request body exceeds {MAX_BODY_BYTES} bytes");
    ApiError::PayloadTooLarge(Json(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail))).into()
}

/// 408, closing the connection: what is left of the body would otherwise be read as the next
/// request.
fn body_too_slow(limit: Duration) -> Response {
    let detail = format!("the request body did not arrive within {} ms; send it without pauses", limit.as_millis());
    let mut response =
        ApiError::RequestTimeout(Json(Problem::new(StatusCode::REQUEST_TIMEOUT, detail))).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
