//! The API's limit on one request: at most `http.request_timeout_ms`, then 503. The limits on
//! connections are the server loop's (`openrisk_shared::http_server`).

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, IntoResponse, Request, Response};

use crate::error::{ApiError, Problem};

/// Answers 503 when `endpoint` takes longer than `limit` for one request.
pub async fn within<E: Endpoint>(endpoint: Arc<E>, request: Request, limit: Duration) -> poem::Result<Response> {
    match tokio::time::timeout(limit, endpoint.call(request)).await {
        Ok(result) => result.map(IntoResponse::into_response),
        Err(_) => {
            let detail = format!("the request took longer than {} ms; retry later", limit.as_millis());
            let problem = Problem::new(poem::http::StatusCode::SERVICE_UNAVAILABLE, detail);
            Err(ApiError::Unavailable(poem_openapi::payload::Json(problem)).into())
        }
    }
}
