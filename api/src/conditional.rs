//! Conditional requests (RFC 9110 §13): how `If-Match` and `If-None-Match` compare entity tags,
//! the one place a read's `If-Match` is evaluated, and what a write's preconditions refuse (checked
//! against the row it locks, in `routes::lock_for_write`). A read's `If-None-Match` is evaluated
//! where its answer is built (`routes::Cached`).

use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::error::ApiError;

/// Whether an `If-None-Match` value matches `etag`: the weak comparison of §13.1.2, so `W/"x"`
/// matches `"x"`; `*` matches any current representation.
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    header.trim() == "*" || header.split(',').any(|candidate| bare(candidate) == bare(etag))
}

/// Whether an `If-Match` value names `etag`: the strong comparison of §13.1.1, so a weak tag
/// never matches; `*` matches any current representation.
pub fn if_match_matches(header: &str, etag: &str) -> bool {
    header.trim() == "*" || header.split(',').any(|candidate| candidate.trim() == etag)
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
}

/// Answers a GET or HEAD whose `If-Match` names none of its answer's entity tag with 412 and the
/// current tag instead of the answer: §13.1.1 forbids performing a method whose `If-Match` is
/// false, reads included. A read changes nothing, so the condition is checked on its answer,
/// whichever of the hit path and the router gave it. Only a 200 or 304 with an `ETag` is checked:
/// an error ignores preconditions (§13.2.1), and a read without a tag (tokens, health, the
/// document) has no representation a client can hold a tag of.
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

/// `response` when `if_match` names its entity tag (or it has none to compare), the 412 for
/// its current tag otherwise, keeping what the response recorded for the request metrics.
fn answer_if_match(if_match: &HeaderValue, mut response: Response) -> Response {
    if !matches!(response.status(), StatusCode::OK | StatusCode::NOT_MODIFIED) {
        return response;
    }
    let Some(etag) = response.headers().get(header::ETAG).and_then(|etag| etag.to_str().ok()) else {
        return response;
    };
    // A value that is not text names no tag of ours (they are hex digits in quotes).
    if if_match.to_str().is_ok_and(|if_match| if_match_matches(if_match, etag)) {
        return response;
    }
    let mut refused = ApiError::precondition_failed(etag.to_owned()).into_response();
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
    fn a_read_is_refused_only_when_its_tagged_answer_fails_if_match() {
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
            ("\"stale\"", answer(StatusCode::OK, None), StatusCode::OK),
        ];
        for (if_match, response, status) in cases {
            let answered = answer_if_match(&HeaderValue::from_static(if_match), response);
            assert_eq!(answered.status(), status, "If-Match: {if_match}");
            if status == StatusCode::PRECONDITION_FAILED {
                assert_eq!(answered.headers()[header::ETAG], "\"abc\"", "412 names the current tag");
            }
        }
    }
}
