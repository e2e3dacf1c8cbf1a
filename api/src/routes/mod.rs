//! The HTTP operations, grouped by resource, and the response types they share.

mod assets;
pub mod cacheable;
mod caller;
mod health;
mod mitigations;
mod risks;
mod stats;
mod tokens;

use std::marker::PhantomData;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use poem::Response;
use poem::http::StatusCode;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Tags};

pub use assets::AssetsApi;
pub use health::HealthApi;
pub use mitigations::MitigationsApi;
pub use risks::RisksApi;
pub use stats::StatsApi;
pub use tokens::TokensApi;

use crate::app::AppState;
use crate::cache::{CacheableRead, Served};
use crate::conditional::{WriteConditions, if_none_match_matches};
use crate::db::replicas::Reader;
use crate::error::{ApiError, OrNotFound};
use crate::paging::PageNumber;

/// Groups of operations in the documentation.
#[derive(Tags)]
pub enum ApiTags {
    /// Risks, their filters and their embedded mitigations and assets.
    Risks,
    /// Mitigations of a risk and their sub-actions.
    Mitigations,
    /// Assets and their links to risks.
    Assets,
    /// Aggregates over the tenant's risks.
    Stats,
    /// The tenant's API tokens (admin only).
    Tokens,
    /// Liveness and readiness.
    Operations,
}

/// A cacheable JSON response. The body is sent exactly as stored in Redis (or as serialised once
/// on a miss); the spec describes it as `T`.
pub struct Cached<T> {
    served: Served,
    not_modified: bool,
    _shape: PhantomData<fn() -> T>,
}

impl<T> Cached<T> {
    pub(crate) fn new(served: Served, if_none_match: Option<&str>) -> Self {
        let not_modified = if_none_match.is_some_and(|header| if_none_match_matches(header, &served.etag));
        Self { served, not_modified, _shape: PhantomData }
    }
}

impl<T: Send> poem::IntoResponse for Cached<T> {
    fn into_response(self) -> Response {
        let builder = Response::builder()
            .header(poem::http::header::ETAG, self.served.etag)
            .header("Cache-Status", poem::http::HeaderValue::from_static(self.served.cache_status.header_value()));
        if self.not_modified {
            builder.status(StatusCode::NOT_MODIFIED).finish()
        } else {
            builder.content_type("application/json; charset=utf-8").body(self.served.body)
        }
    }
}

fn cache_headers() -> Vec<MetaHeader> {
    let header = |name: &str, description: &str| MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required: true,
        deprecated: false,
        schema: String::schema_ref(),
    };
    vec![
        header("ETag", "Strong entity tag of the body; send it back in `If-None-Match` to get 304."),
        header(
            "Cache-Status",
            &format!("How the cache answered (RFC 9211). {}", openrisk_shared::CacheStatus::documentation()),
        ),
    ]
}

impl<T: Type + ToJSON> ApiResponse for Cached<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: "The resource.",
                    status: Some(200),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: T::schema_ref(),
                    }],
                    headers: cache_headers(),
                },
                MetaResponse {
                    description: "Not modified since the entity tag given in `If-None-Match`.",
                    status: Some(304),
                    status_range: None,
                    content: Vec::new(),
                    headers: cache_headers(),
                },
            ],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// Status 204 with no body.
#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// Highest page number of a list the cache keeps; farther pages are read from Postgres each
/// time, so paging far cannot fill Redis with entries nobody else asks for.
pub const MAX_CACHED_PAGE: u32 = 10;

/// Whether the cache keeps a list's page `page` (the hit path serves it, the handler fills it).
fn is_cached_page(page: PageNumber) -> bool {
    page.get() <= MAX_CACHED_PAGE
}

/// How a read may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// One entry per resource: looked up and filled.
    Detail,
    /// Bounded list variants: looked up, filled within the tenant's budget for the route.
    List,
    /// A free-text search or a far page: read from Postgres, never stored.
    Never,
}

impl Caching {
    /// `Never` for a free-text search or a page past [`MAX_CACHED_PAGE`]: those variants are as
    /// many as a client cares to invent.
    fn of_list(search: Option<&str>, page: PageNumber) -> Self {
        if search.is_some() || !is_cached_page(page) { Caching::Never } else { Caching::List }
    }
}

/// The filters of a list, as far as [`Caching::of_list`] needs them.
trait ListFilter {
    /// The free-text search, if any.
    fn search(&self) -> Option<&str>;
    fn page(&self) -> PageNumber;
}

/// Serves `read`: through the cache (lists within the tenant's entry budget for the route, see
/// [`crate::variant_budget`]), from Postgres alone when `caching` or the budget says so. `load`
/// reads on a miss, on the reader it is given (a replica or the primary).
async fn serve<T, F, Fut>(
    state: &Arc<AppState>,
    read: CacheableRead,
    caching: Caching,
    if_none_match: Option<&str>,
    load: F,
) -> Result<Cached<T>, ApiError>
where
    F: Fn(Arc<AppState>, Reader) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, ApiError>> + Send + 'static,
{
    let mut reservation = None;
    let refused = match caching {
        Caching::Never => Some(openrisk_shared::CacheStatus::Uncacheable),
        Caching::List if state.cache.enabled() => {
            reservation = state.variant_budget.reserve(read.tenant, read.route);
            reservation.is_none().then_some(openrisk_shared::CacheStatus::OverBudget)
        }
        Caching::List | Caching::Detail => None,
    };
    let loader = loader_of(state, load);
    if let Some(cache_status) = refused {
        state.metrics.cache_request(read.route, crate::metrics::CacheResult::Bypass);
        let served = crate::cache::read_uncached(&state.reads, read.tenant, loader, cache_status).await?;
        return Ok(Cached::new(served, if_none_match));
    }
    let served = state.cache.read_through(read, Arc::clone(&state.reads), loader).await?;
    if served.cache_status == openrisk_shared::CacheStatus::Stored
        && let Some(reservation) = reservation
    {
        reservation.stored();
    }
    Ok(Cached::new(served, if_none_match))
}

/// A route's database read as the cache calls it: on the reader the cache chose.
fn loader_of<F, Fut>(state: &Arc<AppState>, load: F) -> crate::cache::Loader
where
    F: Fn(Arc<AppState>, Reader) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, ApiError>> + Send + 'static,
{
    let state = Arc::clone(state);
    Arc::new(move |reader| -> BoxFuture<'static, Result<Vec<u8>, ApiError>> {
        load(Arc::clone(&state), reader).boxed()
    })
}

/// Serialises a response body once, for the cache and the client alike.
pub fn body_of<T: ToJSON>(value: &T) -> Vec<u8> {
    value.to_json_string().into_bytes()
}

/// Serialises one page of a list: the rows in their API shape, in the page `page` makes of them.
fn page_body<Row, Item, Page>(rows: Vec<Row>, page: impl FnOnce(Vec<Item>) -> Page) -> Result<Vec<u8>, ApiError>
where
    Item: TryFrom<Row>,
    ApiError: From<Item::Error>,
    Page: ToJSON,
{
    let items = rows.into_iter().map(Item::try_from).collect::<Result<_, _>>()?;
    Ok(body_of(&page(items)))
}

/// Normalises a free-text filter: trimmed, absent when empty. Case is left alone: Postgres folds
/// both the text and the column (`ILIKE`), so the two sides are folded by the same rules.
fn normalise_search(text: Option<crate::filters::SearchText>) -> Option<String> {
    text.map(|text| text.into_string().trim().to_owned()).filter(|text| !text.is_empty())
}

/// Locks the row a write changes, with `lock` (404 naming `what` and `id` when there is none),
/// then checks the write's `conditions` against the body a GET of it serves now, as
/// `current_body` reads it (412 with the current entity tag when one is false). The body is read
/// inside the write's transaction, after the row is locked, so no other write of the row can come
/// between the check and the change.
async fn lock_for_write<Row, Body>(
    what: &str,
    id: uuid::Uuid,
    lock: impl Future<Output = Result<Option<Row>, sea_orm::DbErr>>,
    conditions: WriteConditions<'_>,
    current_body: impl FnOnce(&Row) -> Body,
) -> Result<Row, ApiError>
where
    Body: Future<Output = Result<Vec<u8>, ApiError>>,
{
    let row = lock.await?.or_not_found(what, id)?;
    if !conditions.is_empty() {
        conditions.check(crate::cache::etag_of(&current_body(&row).await?))?;
    }
    Ok(row)
}

/// What a delete answers: 204 when it found its row (`deleted`), 404 naming `what` and `id` when
/// there was none, so that [`caller::Caller::write`] rolls the empty change back.
fn found(deleted: bool, what: &str, id: uuid::Uuid) -> Result<NoContent, ApiError> {
    if deleted { Ok(NoContent::Done) } else { Err(ApiError::not_found(what, id)) }
}

/// Status 200 with the changed resource.
#[derive(ApiResponse)]
pub enum Updated<T: ToJSON> {
    /// The resource as stored after the change.
    #[oai(status = 200)]
    Ok(poem_openapi::payload::Json<T>),
}

/// Status 200 with the changed resource and the entity tag a GET of it serves from then on, so
/// that a client can make its next conditional change without reading the resource again.
#[derive(ApiResponse)]
pub enum Revised<T: ToJSON> {
    /// The resource as stored after the change. `ETag` is what a GET of the resource now answers
    /// with (for a risk, its detail's), to send as the next change's `If-Match`.
    #[oai(status = 200)]
    Ok(poem_openapi::payload::Json<T>, #[oai(header = "ETag")] String),
}

impl<T: ToJSON> Revised<T> {
    /// `resource`, whose GET answers with this same body.
    fn as_served(resource: T) -> Self {
        let etag = crate::cache::etag_of(&body_of(&resource));
        Self::Ok(poem_openapi::payload::Json(resource), etag)
    }
}
