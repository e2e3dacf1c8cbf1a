//! Every error the API returns, as RFC 9457 `application/problem+json` documents.
//!
//! Handlers return [`ApiError`]; anything poem or poem-openapi rejects before a handler runs
//! (malformed JSON, wrong types, unknown fields, bad parameters, unknown routes, oversized bodies)
//! is turned into the same shape by [`problem_from_poem_error`].

use poem::Response;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use sea_orm::DbErr;

/// Media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The 500's detail when a write's commit got no answer ([`ApiError::outcome_unknown`]).
const OUTCOME_UNKNOWN: &str = "the write was sent to the database but its commit got no answer, so it may or may \
                               not have been applied; read the resource before sending the request again";

/// The 503's detail when a write lost a deadlock or a serialization failure to a concurrent one:
/// nothing was changed, and the same change can be made again.
const COLLIDED: &str = "the change collided with a concurrent one and was not made; retry";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the kind of problem; resolves to nothing, but is stable for clients to match on.
    #[oai(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code of this response.
    pub status: u16,
    /// What went wrong with this particular request.
    pub detail: String,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "risk 0b0e8f7e-1234-4c3b-9a1e-000000000001 does not exist")
    }
}

impl Problem {
    /// A problem whose type and title are derived from the status.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_owned();
        let slug = title.to_lowercase().replace(' ', "-");
        Problem {
            kind: format!("https://openrisk.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

/// A request the API refused or could not serve.
#[derive(Debug, Clone, ApiResponse, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, a wrong type, an unknown field or an out-of-range value.
    #[oai(status = 400, content_type = "application/problem+json")]
    #[error("bad request: {}", .0.detail)]
    BadRequest(Json<Problem>),
    /// The bearer token is missing, unknown or revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    #[error("unauthorized: {}", .0.detail)]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The token's role may not do this.
    #[oai(status = 403, content_type = "application/problem+json")]
    #[error("forbidden: {}", .0.detail)]
    Forbidden(Json<Problem>),
    /// No such resource in the token's tenant.
    #[oai(status = 404, content_type = "application/problem+json")]
    #[error("not found: {}", .0.detail)]
    NotFound(Json<Problem>),
    /// The request body did not arrive within the request deadline (an HTTP/1.1 connection is
    /// then closed). Send the request again with its body at once.
    #[oai(status = 408, content_type = "application/problem+json")]
    #[error("request timeout: {}", .0.detail)]
    RequestTimeout(Json<Problem>),
    /// The request conflicts with existing data (a duplicate external id, say).
    #[oai(status = 409, content_type = "application/problem+json")]
    #[error("conflict: {}", .0.detail)]
    Conflict(Json<Problem>),
    /// A precondition is false: `If-Match` names no current representation (the resource changed
    /// since the client read it), or a conditional write's `If-None-Match` names the current
    /// one. `ETag` carries the current entity tag; read the resource again before retrying. A
    /// resource without a tag of its own (a sub-action, a link, a token) answers without `ETag`:
    /// `If-Match` there can only be `*`, and `If-None-Match: *` refuses one that exists.
    #[oai(status = 412, content_type = "application/problem+json")]
    #[error("precondition failed: {}", .0.detail)]
    PreconditionFailed(Json<Problem>, #[oai(header = "ETag")] Option<String>),
    /// The request body is larger than the API accepts.
    #[oai(status = 413, content_type = "application/problem+json")]
    #[error("payload too large: {}", .0.detail)]
    PayloadTooLarge(Json<Problem>),
    /// A body sent without a JSON content type (answered before any handler runs, by
    /// `problem_from_poem_error`; listed here so the spec documents it).
    #[oai(status = 415, content_type = "application/problem+json")]
    #[error("unsupported media type: {}", .0.detail)]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but violates a rule of the data model.
    #[oai(status = 422, content_type = "application/problem+json")]
    #[error("unprocessable: {}", .0.detail)]
    Unprocessable(Json<Problem>),
    /// Too many of the tenant's requests are using the database at once (its share of the
    /// connection pool): another tenant's requests are still served. Retry after `Retry-After`
    /// seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    #[error("too many requests: {}", .0.detail)]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// An unexpected failure on the server side; the detail names no internals. Also a write
    /// whose commit got no answer from the database: it may have been applied, so read the
    /// resource before sending the request again.
    #[oai(status = 500, content_type = "application/problem+json")]
    #[error("internal error: {}", .0.detail)]
    Internal(Json<Problem>),
    /// The database is unreachable or overloaded; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    #[error("unavailable: {}", .0.detail)]
    Unavailable(Json<Problem>),
}

impl ApiError {
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::Unauthorized(Json(Problem::new(StatusCode::UNAUTHORIZED, detail)), "Bearer".into())
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(Json(Problem::new(StatusCode::FORBIDDEN, detail)))
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::NotFound(Json(Problem::new(StatusCode::NOT_FOUND, format!("{what} {id} does not exist"))))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(Json(Problem::new(StatusCode::CONFLICT, detail)))
    }

    /// 412 for an `If-Match` that names none of the resource's current entity tag, given.
    pub fn precondition_failed(current_etag: String) -> Self {
        let detail = "the resource changed since the entity tag in If-Match was read; read it again and retry";
        Self::precondition(detail, Some(current_etag))
    }

    /// 412 for a write whose `If-None-Match` names the resource's current entity tag, given (or is
    /// `*`, and the resource exists).
    pub fn representation_exists(current_etag: String) -> Self {
        let detail = "the resource exists with an entity tag that If-None-Match names; nothing was changed";
        Self::precondition(detail, Some(current_etag))
    }

    /// 412 for an `If-Match` on a resource without an entity tag (or a create, which is not
    /// compared with its collection's): only `*` can match one, and only when it exists (`exists`).
    pub fn no_tag_to_match(exists: bool) -> Self {
        let detail = if exists {
            "no entity tag of this resource is compared here, so If-Match can only be *; nothing was changed"
        } else {
            "If-Match asks for a current representation and this resource has none; nothing was changed"
        };
        Self::precondition(detail, None)
    }

    /// 412 for a write whose `If-None-Match` is `*` on a resource without an entity tag that
    /// exists.
    pub fn untagged_exists() -> Self {
        let detail = "the resource exists and If-None-Match is *; nothing was changed";
        Self::precondition(detail, None)
    }

    /// 412 saying `detail`, with the resource's current entity tag when it has one.
    fn precondition(detail: &str, current_etag: Option<String>) -> Self {
        Self::PreconditionFailed(Json(Problem::new(StatusCode::PRECONDITION_FAILED, detail)), current_etag)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::Unprocessable(Json(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)))
    }

    /// 429 for a tenant whose requests hold its whole share of the database pool; the client
    /// may retry after `retry_after_secs`.
    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::TooManyRequests(Json(Problem::new(StatusCode::TOO_MANY_REQUESTS, detail)), retry_after_secs)
    }

    pub fn internal() -> Self {
        Self::Internal(Json(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to handle the request")))
    }

    /// 500 for a write whose commit was sent but got no answer (the connection was lost, or
    /// the answer did not come within the request deadline and its grace): it may or may not
    /// have been applied, so the client must not be told to retry it blindly.
    pub fn outcome_unknown() -> Self {
        Self::Internal(Json(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, OUTCOME_UNKNOWN)))
    }

    /// The answer to a failed commit (or one-statement write): a lost connection leaves its
    /// outcome unknown ([`ApiError::outcome_unknown`]); any other error is mapped as usual (a
    /// constraint checked at commit, a serialization failure: nothing was applied).
    pub fn from_commit(error: DbErr) -> Self {
        if connection_lost(&error) {
            tracing::warn!(%error, "database connection lost while a write was committing");
            return ApiError::outcome_unknown();
        }
        error.into()
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable(Json(Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)))
    }

    /// Whether a write's commit got no answer ([`ApiError::outcome_unknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Self::Internal(problem) if problem.detail == OUTCOME_UNKNOWN)
    }

    /// Whether a write failed only because Postgres chose it as the loser of a deadlock or a
    /// serialization failure: its transaction changed nothing, so running it again is safe.
    pub fn is_collision(&self) -> bool {
        matches!(self, Self::Unavailable(problem) if problem.detail == COLLIDED)
    }
}

/// A row looked up by id, where its absence is the client's 404.
pub trait OrNotFound<T> {
    /// The row, or 404 saying that `what` `id` does not exist.
    fn or_not_found(self, what: &str, id: impl std::fmt::Display) -> Result<T, ApiError>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self, what: &str, id: impl std::fmt::Display) -> Result<T, ApiError> {
        self.ok_or_else(|| ApiError::not_found(what, id))
    }
}

impl From<crate::model::UnknownStoredValue> for ApiError {
    /// The database holds what this build cannot represent: logged with the value, hidden from
    /// the client like any other server fault.
    fn from(error: crate::model::UnknownStoredValue) -> Self {
        tracing::error!(%error, "unreadable row");
        ApiError::internal()
    }
}

impl From<DbErr> for ApiError {
    /// Constraint violations are the client's fault (4xx); everything else is logged and hidden.
    fn from(error: DbErr) -> Self {
        if let Some(code) = sqlstate(&error) {
            match code.as_str() {
                "23505" if constraint(&error) == Some(EXTERNAL_ID_INDEX) => {
                    return ApiError::conflict(
                        "a live risk of this tenant already has this source and external_id; a deleted one frees them",
                    );
                }
                "23505" => return ApiError::conflict("a resource with the same unique key already exists"),
                "23503" => return ApiError::unprocessable("a referenced resource does not exist"),
                "23514" | "23502" | "22001" | "22003" | "22P02" | "22007" | "22008" => {
                    return ApiError::unprocessable(format!("the data violates a rule of the model ({code})"));
                }
                // Text Postgres cannot store: a NUL character (U+0000), in a string or in JSON.
                "22021" | "22P05" => {
                    return ApiError::unprocessable("text must not contain the NUL character (U+0000)");
                }
                // A deadlock or serialization failure with a concurrent write: nothing was
                // changed, and the same request succeeds when sent again.
                "40P01" | "40001" => {
                    tracing::warn!(%error, "a write lost to a concurrent one");
                    return ApiError::unavailable(COLLIDED);
                }
                _ => {}
            }
        }
        if connection_lost(&error) {
            tracing::warn!(%error, "database connection lost mid-request");
            return ApiError::unavailable("the connection to the database was lost mid-request; retry");
        }
        match &error {
            // The row a change was applied to was deleted by a concurrent request after it was read.
            DbErr::RecordNotUpdated => {
                ApiError::NotFound(Json(Problem::new(StatusCode::NOT_FOUND, "the resource was deleted meanwhile")))
            }
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                tracing::warn!(%error, "database unavailable");
                ApiError::unavailable("the database is unavailable")
            }
            _ => {
                tracing::error!(%error, "database error");
                ApiError::internal()
            }
        }
    }
}

/// Whether the statement failed because its session ended under it (the server shut down,
/// crashed or terminated the backend, or the socket failed): a transaction not yet committing
/// is rolled back with the session, and the request can be sent again.
fn connection_lost(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error;
    match sqlx_error(error) {
        // Class 08: connection exception; 57P01–57P03: the server is shutting down or starting.
        Some(Error::Database(db)) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        Some(Error::Io(_) | Error::Tls(_)) => true,
        _ => false,
    }
}

/// The SQLSTATE of a database error, when Postgres reported one.
pub(crate) fn sqlstate(error: &DbErr) -> Option<String> {
    match sqlx_error(error) {
        Some(sea_orm::sqlx::Error::Database(db)) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// The unique index a live risk's (`tenant_id`, `source`, `external_id`) must not repeat
/// (migration 0009).
const EXTERNAL_ID_INDEX: &str = "risks_external_idx";

/// The constraint (or unique index) a statement violated, if it says.
fn constraint(error: &DbErr) -> Option<&str> {
    match sqlx_error(error) {
        Some(sea_orm::sqlx::Error::Database(db)) => db.constraint(),
        _ => None,
    }
}

/// The driver's error behind a failed statement.
fn sqlx_error(error: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    use sea_orm::RuntimeErr;
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    }
}

/// Turns any error poem or poem-openapi raised before (or instead of) a handler into problem+json.
/// Errors that already carry a response (an [`ApiError`]) pass through unchanged.
/// `path_parameters` are the documented names of the matched route's path parameters, in path
/// order: poem-openapi calls them `param0`, `param1`, … in its messages.
pub fn problem_from_poem_error(error: poem::Error, path_parameters: &[&str]) -> Response {
    if error.is_from_response() {
        return error.into_response();
    }
    let status = error.status();
    let status = if status.is_success() { StatusCode::INTERNAL_SERVER_ERROR } else { status };
    let detail = if status.is_server_error() {
        tracing::error!(%error, "unhandled error");
        "the server failed to handle the request".to_owned()
    } else {
        documented_names(&error.to_string(), path_parameters)
    };
    problem_response(&Problem::new(status, detail))
}

/// An error message with poem-openapi's internal names replaced by the documented ones: path
/// parameters (`param0`) and quoted type names (`"integer_int16"`, `"optional_number_double"`,
/// `"string_uuid"` become `"integer"`, `"number"`, `"uuid"`).
fn documented_names(message: &str, path_parameters: &[&str]) -> String {
    let mut message = message.to_owned();
    for (index, name) in path_parameters.iter().enumerate() {
        message = message.replace(&format!("`param{index}`"), &format!("`{name}`"));
    }
    // Quoted text sits at the odd positions between the quote marks; the value poem echoes after
    // `found` is the client's own and stays as sent.
    let parts: Vec<&str> = message.split('"').collect();
    let renamed: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(position, part)| {
            let type_name = position % 2 == 1 && !parts[position - 1].ends_with("found ");
            if type_name { documented_type(part) } else { (*part).to_owned() }
        })
        .collect();
    renamed.join("\"")
}

/// The spec's name of a poem-openapi type name; any other text unchanged.
fn documented_type(name: &str) -> String {
    let bare = name.strip_prefix("optional_").unwrap_or(name);
    // A parameter's type may come as `integer(uint32)`.
    if let Some((kind @ ("integer" | "number"), format)) = bare.split_once('(')
        && format.ends_with(')')
    {
        return kind.to_owned();
    }
    match bare.split_once('_') {
        Some(("integer" | "number", _)) => bare.split('_').next().unwrap_or(bare).to_owned(),
        Some(("list", _)) => "array".to_owned(),
        Some(("map", _)) => "object".to_owned(),
        Some(("string", format)) if !format.is_empty() && !format.contains(' ') => format.to_owned(),
        _ if bare != name && !bare.contains(' ') => bare.to_owned(),
        _ => name.to_owned(),
    }
}

/// A problem document as a complete response.
pub fn problem_response(problem: &Problem) -> Response {
    use poem_openapi::types::ToJSON;
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::builder().status(status).content_type(PROBLEM_CONTENT_TYPE);
    if status == StatusCode::UNAUTHORIZED {
        response = response.header("WWW-Authenticate", "Bearer");
    }
    response.body(problem.to_json_string())
}

#[cfg(test)]
mod tests {
    use super::{ApiError, documented_names};

    #[test]
    fn a_row_deleted_while_a_change_was_applied_to_it_is_a_404_not_a_500() {
        assert!(matches!(ApiError::from(sea_orm::DbErr::RecordNotUpdated), ApiError::NotFound(_)));
    }

    #[test]
    fn messages_name_documented_parameters_and_types() {
        let message = "failed to parse path `param1`: failed to parse \"string_uuid\": bad";
        assert_eq!(
            documented_names(message, &["risk_id", "id"]),
            "failed to parse path `id`: failed to parse \"uuid\": bad"
        );
        let message = "failed to parse \"number\": x (occurred while parsing \"optional_number_double\")";
        assert_eq!(documented_names(message, &[]), "failed to parse \"number\": x (occurred while parsing \"number\")");
        assert_eq!(documented_names("\"integer_int16\" and \"a b_c\"", &[]), "\"integer\" and \"a b_c\"");
        let message = "\"integer(uint32)\", \"list_string\", \"map_any\", \"optional_list_string\"";
        assert_eq!(documented_names(message, &[]), "\"integer\", \"array\", \"object\", \"array\"");
        let echoed = "Expected input type \"RiskStatus\", found \"map_view\". (occurred while parsing \"list_string\")";
        assert_eq!(
            documented_names(echoed, &[]),
            "Expected input type \"RiskStatus\", found \"map_view\". (occurred while parsing \"array\")",
            "the client's value stays as sent"
        );
    }
}
