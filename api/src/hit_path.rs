//! Cache hits answered before the OpenAPI router. A GET of a cacheable read in its plainest
//! form ([`PlainRead`]: parameters certainly valid and read as the handler reads them, a bearer token this process verifies from its
//! token cache) is looked up under the entry key and tags the route's own handler uses, and a
//! hit is sent exactly as the handler would send it. Anything else goes on to the router: a miss
//! or a skipped lookup carries what the lookup found ([`PriorLookup`]) so the handler does not
//! ask Redis again, and an unknown token or an unusual request is decided by the router as if
//! this module did not exist. A hit then skips what it does not need: poem-openapi's extraction
//! and validation, the route table, the body limit and path normalisation.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use poem::http::{Method, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::app::AppState;
use crate::auth::VerifiedBearer;
use crate::cache::{Lookup, PriorLookup};
use crate::routes::Cached;
use crate::routes::cacheable::PlainRead;

/// The route template of a response the hit path answered, for the request metrics and logs.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredRoute(pub &'static str);

/// Answers a hit of a plain cacheable GET itself; hands every other request to `endpoint`.
///
/// The router's future is boxed, and only built for the requests that go there: inline, this
/// future (and every middleware's around it) would be as large as the largest operation's
/// state, many kilobytes copied on every hit.
pub async fn answer_hits_first<E: Endpoint + 'static>(
    endpoint: Arc<E>,
    mut request: Request,
) -> poem::Result<Response> {
    let Some((state, verified, plain)) = plain_read(&request).await else {
        return to_router(endpoint, request).await;
    };
    let read = plain.read(verified.principal.tenant_id);
    // A tenant over its list budget reads lists around the cache: the handler decides that.
    if plain.is_list() && state.variant_budget.exhausted(read.tenant, read.route) {
        request.set_data(verified);
        return to_router(endpoint, request).await;
    }
    crate::app::record_read_route_and_tenant(&request, read.route, read.tenant);
    let (key, tags) = state.cache.key_and_tags(&read);
    match state.cache.lookup(read.route, read.tenant, &key, &tags).await {
        Lookup::Hit(served) => {
            let mut response = Cached::<()>::new(served, request.header(header::IF_NONE_MATCH)).into_response();
            response.set_data(AnsweredRoute(read.route));
            Ok(response)
        }
        lookup => {
            request.set_data(verified);
            PriorLookup::scope(key, lookup, to_router(endpoint, request)).await
        }
    }
}

/// The request as the router answers it, in a future of its own on the heap.
fn to_router<E: Endpoint + 'static>(endpoint: Arc<E>, request: Request) -> BoxFuture<'static, poem::Result<Response>> {
    async move { endpoint.call(request).await.map(IntoResponse::into_response) }.boxed()
}

/// The state, the caller and the read of a GET the hit path may answer; `None` sends the
/// request to the router untouched.
async fn plain_read(request: &Request) -> Option<(Arc<AppState>, VerifiedBearer, PlainRead)> {
    // A body on a GET is the router's to judge (it limits its size).
    let has_body = request.header(header::CONTENT_LENGTH).is_some_and(|length| length != "0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if request.method() != Method::GET || has_body {
        return None;
    }
    let plain = PlainRead::of(request.uri().path(), request.uri().query())?;
    let state = request.data::<Arc<AppState>>()?.clone();
    let token = request.header(header::AUTHORIZATION)?.strip_prefix("Bearer ")?;
    let principal = match request.data::<VerifiedBearer>() {
        // An HTTP/2 request's token was verified before its (empty) body was read.
        Some(verified) if verified.token == token => verified.principal,
        _ => state.tokens.verify(token).await.ok()?,
    };
    Some((state, VerifiedBearer { token: token.to_owned(), principal }, plain))
}
