//! Conditional requests (RFC 9110 §13): how `If-Match` and `If-None-Match` compare entity tags,
//! the one place a read's `If-Match` is evaluated, and what a write's preconditions refuse (checked
//! against the row it locks, in `routes::lock_for_write`, or against the mere existence of a
//! resource without a tag). A read's `If-None-Match` is evaluated where its answer is built
//! (`routes::Cached`).

use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::error::ApiError;

/// Whether an `If-None-Match` value matches `etag`: the weak comparison of §13.1.2, so `W/"x"`
/// matches `"x"`; `*` matches any current representation.
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    is_any(header) || header.split(',').any(|candidate| bare(candidate) == bare(etag))
}

/// Whether an `If-Match` value names `etag`: the strong comparison of §13.1.1, so a weak tag
/// never matches; `*` matches any current representation.
pub fn if_match_matches(header: &str, etag: &str) -> bool {
    is_any(header) || header.split(',').any(|candidate| candidate.trim() == etag)
}

/// Whether a condition's value is `*`, the only one that can match a resource without a tag.
fn is_any(header: &str) -> bool {
    header.trim() == "*"
}

/// The request's own `If-Match` and `If-None-Match` (each one list, see
/// `hygiene::fold_condition_lists`): what a write evaluates whether or not its operation
/// documents them. Header values, so copying them shares the request's bytes.
#[derive(Clone, Default)]
pub struct RequestConditions {
    if_match: Option<HeaderValue>,
    if_none_match: Option<HeaderValue>,
}

impl RequestConditions {
    pub fn of(request: &Request) -> Self {
        let headers = request.headers();
        Self {
            if_match: headers.get(header::IF_MATCH).cloned(),
            if_none_match: headers.get(header::IF_NONE_MATCH).cloned(),
        }
    }

    /// The preconditions as sent. A value that is not text names no tag of ours (they are hex
    /// digits in quotes), so it reads as an empty list: never `*`, never a match.
    pub fn as_sent(&self) -> WriteConditions<'_> {
        fn text(value: &HeaderValue) -> &str {
            value.to_str().unwrap_or("")
        }
        WriteConditions {
            if_match: self.if_match.as_ref().map(text),
            if_none_match: self.if_none_match.as_ref().map(text),
        }
    }
}

/// The preconditions a write of one resource is made under: `If-Match`, as each conditional
/// write documents it, and `If-None-Match`, which §13.1.2 lets a client send on any method (`*`
/// there asks that the resource not exist, so a write of one that does is refused).
#[derive(Clone, Copy)]
pub struct WriteConditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

impl WriteConditions<'_> {
    /// Whether the write is unconditional, so the resource's current tag need not be read.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Whether the write may change the representation tagged `etag`, in the order of §13.2.2
    /// (`If-Match` first); the 412 naming `etag` otherwise.
    pub fn check(&self, etag: String) -> Result<(), ApiError> {
        if self.if_match.is_some_and(|if_match| !if_match_matches(if_match, &etag)) {
            return Err(ApiError::precondition_failed(etag));
        }
        if self.if_none_match.is_some_and(|if_none_match| if_none_match_matches(if_none_match, &etag)) {
            return Err(ApiError::representation_exists(etag));
        }
        Ok(())
    }

    /// Whether the write may change a resource that has no entity tag (a sub-action, a link, a
    /// token) and `existed` before it: §13.1.1 and §13.1.2 with no tag to compare, so `If-Match`
    /// holds only as `*` on one that exists, and `If-None-Match` fails only as `*` on one that
    /// exists. Without this a client's `If-Match` would be silently ignored, and it would take a
    /// write it meant to guard for a guarded one.
    pub fn check_untagged(&self, existed: bool) -> Result<(), ApiError> {
        if self.if_match.is_some_and(|if_match| !(existed && is_any(if_match))) {
            return Err(ApiError::no_tag_to_match(existed));
        }
        if existed && self.if_none_match.is_some_and(is_any) {
            return Err(ApiError::untagged_exists());
        }
        Ok(())
    }
}

/// Answers a GET or HEAD whose `If-Match` names none of its answer's entity tag with 412 and the
/// current tag instead of the answer: §13.1.1 forbids performing a method whose `If-Match` is
/// false, reads included. A read changes nothing, so the condition is checked on its answer,
/// whichever of the hit path and the router gave it. Only a 200 or 304 is checked: an error
/// ignores preconditions (§13.2.1). An answer without a tag (tokens, health, the document)
/// matches only `*`, as a write of a resource without a tag does.
///
/// Every request passes here first, so this is also where repeated `If-None-Match` and
/// `If-Match` lines are joined into one list, for this check, the hit path and the handlers.
pub async fn refuse_reads_whose_if_match_fails<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
) -> poem::Result<Response> {
    crate::hygiene::fold_condition_lists(&mut request);
    let if_match = match *request.method() {
        Method::GET | Method::HEAD => request.headers().get(header::IF_MATCH).cloned(),
        _ => None,
    };
    let response = endpoint.call(request).await?.into_response();
    let Some(if_match) = if_match else { return Ok(response) };
    Ok(answer_if_match(&if_match, response))
}

/// `response` when `if_match` names its entity tag (or is `*`), the 412 for its current tag (or
/// for its having none) otherwise, keeping what the response recorded for the request metrics.
fn answer_if_match(if_match: &HeaderValue, mut response: Response) -> Response {
    if !matches!(response.status(), StatusCode::OK | StatusCode::NOT_MODIFIED) {
        return response;
    }
    // A value that is not text names no tag of ours (they are hex digits in quotes).
    let if_match = if_match.to_str().unwrap_or("");
    let refusal = match response.headers().get(header::ETAG).and_then(|etag| etag.to_str().ok()) {
        Some(etag) if if_match_matches(if_match, etag) => return response,
        Some(etag) => ApiError::precondition_failed(etag.to_owned()),
        None if is_any(if_match) => return response,
        None => ApiError::no_tag_to_match(true),
    };
    let mut refused = refusal.into_response();
    *refused.extensions_mut() = std::mem::take(response.extensions_mut());
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "\"abc\"";
        assert!(if_none_match_matches("\"abc\"", etag));
        assert!(if_none_match_matches("W/\"abc\", \"x\"", etag));
        assert!(if_none_match_matches("*", etag));
        assert!(!if_none_match_matches("\"abd\"", etag));
    }

    #[test]
    fn if_match_compares_strongly() {
        let etag = "\"abc\"";
        let cases =
            [("\"abc\"", true), ("\"x\", \"abc\"", true), (" * ", true), ("W/\"abc\"", false), ("\"abd\"", false)];
        for (header, matches) in cases {
            assert_eq!(if_match_matches(header, etag), matches, "If-Match: {header}");
        }
    }

    #[test]
    fn a_write_is_refused_when_if_match_misses_or_if_none_match_hits_the_current_tag() {
        let etag = || "\"abc\"".to_owned();
        let conditions = |if_match, if_none_match| WriteConditions { if_match, if_none_match };
        let cases = [
            (conditions(None, None), None),
            (conditions(Some("\"abc\""), None), None),
            (conditions(Some("\"old\""), None), Some("If-Match")),
            (conditions(None, Some("*")), Some("If-None-Match")),
            (conditions(None, Some("W/\"abc\"")), Some("If-None-Match")),
            (conditions(None, Some("\"old\"")), None),
            (conditions(Some("\"abc\""), Some("\"old\"")), None),
            (conditions(Some("\"old\""), Some("*")), Some("If-Match")),
        ];
        for (conditions, refused_by) in cases {
            let refusal = conditions.check(etag()).err().map(|error| error.to_string());
            let named =
                |header: &str| refusal.as_deref().is_some_and(|refusal| refusal.contains(&format!(" {header} ")));
            let (if_match, if_none_match) = (conditions.if_match, conditions.if_none_match);
            match refused_by {
                None => assert_eq!(refusal, None, "If-Match: {if_match:?}, If-None-Match: {if_none_match:?}"),
                Some(header) => assert!(named(header), "If-Match: {if_match:?}, If-None-Match: {if_none_match:?}"),
            }
        }
    }

    #[test]
    fn a_resource_without_a_tag_matches_if_match_only_as_a_star_on_one_that_exists() {
        let conditions = |if_match, if_none_match| WriteConditions { if_match, if_none_match };
        // (If-Match, If-None-Match, whether the resource existed, whether the write may go on)
        let cases = [
            (None, None, true, true),
            (None, None, false, true),
            (Some("*"), None, true, true),
            (Some(" * "), None, true, true),
            (Some("*"), None, false, false),
            (Some("\"abc\""), None, true, false),
            (Some("\"abc\""), None, false, false),
            (Some(""), None, true, false),
            (None, Some("*"), true, false),
            (None, Some("*"), false, true),
            (None, Some("\"abc\""), true, true),
            (Some("*"), Some("*"), true, false),
        ];
        for (if_match, if_none_match, existed, allowed) in cases {
            let checked = conditions(if_match, if_none_match).check_untagged(existed);
            let context = format!("If-Match: {if_match:?}, If-None-Match: {if_none_match:?}, existed: {existed}");
            match checked {
                Ok(()) => assert!(allowed, "{context}: allowed"),
                Err(ApiError::PreconditionFailed(_, etag)) => {
                    assert!(!allowed, "{context}: refused");
                    assert_eq!(etag, None, "{context}: there is no tag to name");
                }
                Err(other) => panic!("{context}: {other}"),
            }
        }
    }

    #[test]
    fn a_read_is_refused_when_its_answer_fails_if_match_and_an_answer_without_a_tag_matches_only_a_star() {
        let answer = |status: StatusCode, etag: Option<&'static str>| {
            let builder = Response::builder().status(status);
            match etag {
                Some(etag) => builder.header(header::ETAG, etag).finish(),
                None => builder.finish(),
            }
        };
        let cases = [
            ("\"stale\"", answer(StatusCode::OK, Some("\"abc\"")), StatusCode::PRECONDITION_FAILED),
            ("\"stale\"", answer(StatusCode::NOT_MODIFIED, Some("\"abc\"")), StatusCode::PRECONDITION_FAILED),
            ("W/\"abc\"", answer(StatusCode::OK, Some("\"abc\"")), StatusCode::PRECONDITION_FAILED),
            ("\"abc\"", answer(StatusCode::OK, Some("\"abc\"")), StatusCode::OK),
            ("*", answer(StatusCode::NOT_MODIFIED, Some("\"abc\"")), StatusCode::NOT_MODIFIED),
            ("\"stale\"", answer(StatusCode::NOT_FOUND, Some("\"abc\"")), StatusCode::NOT_FOUND),
            ("\"stale\"", answer(StatusCode::OK, None), StatusCode::PRECONDITION_FAILED),
            ("*", answer(StatusCode::OK, None), StatusCode::OK),
            ("\"stale\"", answer(StatusCode::NOT_FOUND, None), StatusCode::NOT_FOUND),
        ];
        for (if_match, response, status) in cases {
            let etag = response.headers().get(header::ETAG).cloned();
            let answered = answer_if_match(&HeaderValue::from_static(if_match), response);
            assert_eq!(answered.status(), status, "If-Match: {if_match}");
            if status == StatusCode::PRECONDITION_FAILED {
                assert_eq!(answered.headers().get(header::ETAG), etag.as_ref(), "412 names the current tag, if any");
            }
        }
    }
}
