//! Assembles the service: shared state, the poem route tree (API, docs, spec, health), the
//! metrics endpoint on its own address, and servers that can be spawned on any address (port 0
//! in tests) and shut down gracefully.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use openrisk_shared::Settings;
use openrisk_shared::http_server::{LimitedAcceptor, ServeTimeouts};
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::RedisUrlError;
use openrisk_shared::tasks::{TaskEnded, Tasks};
use poem::endpoint::{BoxEndpoint, make_sync};
use poem::listener::TcpAcceptor;
use poem::middleware::{NormalizePath, TrailingSlash};
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{LicenseObject, OpenApiService, ServerObject};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use uuid::Uuid;

use crate::auth::TokenVerifier;
use crate::cache::{Cache, MissHook};
use crate::db::Db;
use crate::db::replicas::ReadRouter;
use crate::error::problem_from_poem_error;
use crate::hit_path::AnsweredRoute;
use crate::metrics::Metrics;
use crate::readiness::ReadinessChecks;
use crate::routes::{AssetsApi, HealthApi, MitigationsApi, RisksApi, StatsApi, TokensApi};
use crate::variant_budget::VariantBudget;

/// The request id header: taken from the client when it sends a usable one (1 to 128 visible
/// ASCII characters), a new UUID v4 otherwise, and returned on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Token lookups take at most a quarter of the pool's connections (and at least one).
const TOKEN_LOOKUP_SHARE_OF_POOL: usize = 4;

/// How often the Redis Cluster's health is polled.
const CLUSTER_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How much longer than twice the request timeout a shutdown waits for in-flight requests (a
/// write still committing at its deadline is waited for one request timeout more, see
/// `request_limits`): each then ends with its answer, its 503 or its 500, never with a reset
/// connection.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// How long a shutdown waits for the requests in flight and the commits still running.
fn shutdown_grace(http: &openrisk_shared::config::HttpSettings) -> Duration {
    Duration::from_millis(http.request_timeout_ms) * 2 + SHUTDOWN_MARGIN
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to Postgres: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("invalid Redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    RedisUrl(#[from] RedisUrlError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Everything a request handler needs, shared by all requests.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub db: Db,
    /// Where cache misses and bypassed reads go: a replica that has replayed far enough, or the
    /// primary.
    pub reads: Arc<ReadRouter>,
    pub cache: Arc<Cache>,
    pub tokens: TokenVerifier,
    pub metrics: Arc<Metrics>,
    /// The Redis Cluster's health as last polled (nothing on a single node).
    pub cluster: ClusterWatch,
    /// How many list entries each tenant may still store per route.
    pub variant_budget: VariantBudget,
    /// `/readyz`'s checks of Postgres and Redis, one at a time.
    pub readiness: ReadinessChecks,
    /// Commits and their invalidations, each on a task of its own so that it ends though its
    /// request was answered first ([`crate::routes`]' writes); a shutdown waits for them.
    pub commits: TaskTracker,
}

/// Start-up options that are not configuration (used by tests).
#[derive(Clone, Default)]
pub struct AppOptions {
    /// Runs at the steps of every cache miss ([`crate::cache::MissStep`]).
    pub miss_hook: Option<MissHook>,
    /// Lets a replica answer reads whatever it has replayed: the variant without the guard,
    /// for the test that shows stale fills happen without it.
    pub unguarded_replica_reads: bool,
}

impl AppState {
    /// Connects the database pool and prepares the cache (Redis is connected lazily); the tasks
    /// that keep the state current (replica lags, the cluster's health, token revocations) go to
    /// `tasks`.
    pub async fn new(settings: Settings, options: AppOptions, tasks: &mut Tasks) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let pool = settings.pool_settings();
        let conn = crate::db::connect(&settings.database_url, pool).await?;
        let reads = ReadRouter::start(
            conn.clone(),
            &settings.database,
            pool,
            !options.unguarded_replica_reads,
            metrics.clone(),
            tasks,
        )
        .await?;
        let longest_miss = Duration::from_millis(settings.http.request_timeout_ms);
        let redis = settings.redis_target()?;
        let cluster = ClusterWatch::new(&metrics.registry, settings.keyspace())?;
        let cache_settings = settings.cache.clone();
        let cache =
            Cache::new(&redis, cache_settings, longest_miss, metrics.clone(), options.miss_hook, cluster.clone())?;
        if let Some(connection) = cache.cluster_connection() {
            tasks.spawn("cluster watch", cluster.clone().run(connection, CLUSTER_WATCH_INTERVAL));
        }
        let token_ttl = Duration::from_secs(settings.cache.token_cache_secs);
        let lookups_at_once = pool.max_connections as usize / TOKEN_LOOKUP_SHARE_OF_POOL;
        let tokens = TokenVerifier::new(conn.clone(), token_ttl, lookups_at_once, metrics.clone());
        let longest_ttl = settings.cache.ttl_secs * (100 + u64::from(settings.cache.ttl_jitter_percent)) / 100;
        let variant_budget = VariantBudget::new(settings.cache.max_entries_per_route, Duration::from_secs(longest_ttl));
        let db = Db::new(conn, metrics.clone());
        let cache = Arc::new(cache);
        // Each within half the request timeout: `/readyz` always answers with its document,
        // never with the request timeout's problem.
        let check_limit = pool.acquire_timeout.min(longest_miss / 2);
        let state = Arc::new(AppState {
            variant_budget,
            readiness: ReadinessChecks::new(db.clone(), cache.clone(), check_limit),
            db,
            reads,
            cache,
            tokens,
            metrics,
            cluster,
            settings,
            commits: TaskTracker::new(),
        });
        state.metrics.set_server_settings(None);
        if state.cache.enabled() {
            tokio::spawn(check_server_settings(state.cache.clone()));
        }
        tasks.spawn("token revocations", crate::token_revocations::follow(Arc::downgrade(&state)));
        Ok(state)
    }

    /// Renders the metrics, sampling the pool and whether the cache is degraded first.
    pub fn render_metrics(&self) -> String {
        self.db.sample_pool(self.settings.pool_settings().max_connections);
        self.cache.refresh_degraded();
        openrisk_shared::metrics::render(&self.metrics.registry)
    }
}

/// Checks Redis' eviction and persistence settings at start-up, retrying while Redis is
/// unreachable.
async fn check_server_settings(cache: Arc<Cache>) {
    while !cache.check_server_settings().await {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// The OpenAPI service (every documented operation), without state: the spec is generated from it.
pub fn api_service() -> OpenApiService<(RisksApi, MitigationsApi, AssetsApi, StatsApi, TokensApi, HealthApi), ()> {
    OpenApiService::new(
        (RisksApi, MitigationsApi, AssetsApi, StatsApi, TokensApi, HealthApi),
        "OpenRisk API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The OpenRisk risk register. Reads are served from a Redis cache that write-triggered \
         invalidation keeps exact; responses carry `ETag` and `Cache-Status` (RFC 9211) headers. \
         Errors are `application/problem+json` (RFC 9457). Authenticate with `Authorization: Bearer <token>`.",
    )
    // Relative: the document describes whichever origin serves it (and clients are given a base URL).
    .server(ServerObject::new("/").description("The origin that serves this document"))
    .license(LicenseObject::new(env!("CARGO_PKG_LICENSE")))
}

/// The published OpenAPI document as pretty-printed JSON: what `openrisk-api openapi` prints,
/// `/openapi.json` serves and `/docs` shows (see [`crate::spec`]).
pub fn openapi_json() -> String {
    crate::spec::publish(&api_service().spec())
}

/// The Swagger UI page and the published document it shows, beside the API's own routes.
const DOCS_PAGE: &str = "/docs";
const SPEC_DOCUMENT: &str = "/openapi.json";

/// The complete route tree with middleware.
pub fn routes(state: Arc<AppState>) -> BoxEndpoint<'static, Response> {
    let service = api_service();
    let derived = service.spec();
    let document = crate::spec::publish(&derived);
    // poem-openapi's Swagger UI page embeds the derived document verbatim; show the published one.
    let docs = service.swagger_ui_html().replacen(&derived, &document, 1);
    let metrics = state.metrics.clone();
    let request_timeout = Duration::from_millis(state.settings.http.request_timeout_ms);
    Route::new()
        .at(DOCS_PAGE, poem::get(make_sync(move |_| Html(docs.clone()))))
        .at(
            SPEC_DOCUMENT,
            poem::get(make_sync(move |_| Response::builder().content_type("application/json").body(document.clone()))),
        )
        .nest("/", service)
        .around(crate::hygiene::one_value_per_parameter)
        .around(crate::hygiene::head_as_get)
        .with(NormalizePath::new(TrailingSlash::Trim))
        // Inside the request deadline, outside everything a hit does not need.
        .around(crate::hit_path::answer_hits_first)
        .around(crate::conditional::refuse_reads_whose_if_match_fails)
        .around(move |endpoint, request| crate::request_limits::within(endpoint, request, request_timeout))
        .catch_all_error(|error: poem::Error| async move {
            // Keep the matched route template for the request metrics.
            let pattern = error.data::<poem::PathPattern>().cloned();
            let template = pattern.as_ref().map(|pattern| route_template(&pattern.0)).unwrap_or_default();
            let parameters: Vec<&str> = template
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{').and_then(|name| name.strip_suffix('}')))
                .collect();
            let mut response = problem_from_poem_error(error, &parameters);
            if let Some(pattern) = pattern {
                response.set_data(pattern);
            }
            response
        })
        .data(state)
        .around(move |endpoint, request| {
            let metrics = metrics.clone();
            async move {
                let id = request_id(&request);
                let path = crate::hygiene::normalised_path(request.uri().path());
                let response = record_request(&metrics, endpoint, request, id).await;
                let allowed = (response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED)
                    .then(|| allowed_methods(&path))
                    .flatten();
                Ok(crate::hygiene::finish(&path, response, allowed))
            }
        })
        .map_to_response()
        .boxed()
}

/// The client's `x-request-id` when usable, a new UUID v4 otherwise.
fn request_id(request: &Request) -> String {
    request
        .header(REQUEST_ID_HEADER)
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic()))
        .map_or_else(|| Uuid::new_v4().hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned(), str::to_owned)
}

/// Which of the request span's late fields (`route`, `tenant`) are recorded. Each is recorded
/// once per request: the fmt layer appends every record to the span's fields, so a second
/// record would show the field twice on every line.
#[derive(Clone, Default)]
struct SpanFieldsRecorded(Arc<[AtomicBool; 2]>);

impl SpanFieldsRecorded {
    const ROUTE: usize = 0;
    const TENANT: usize = 1;

    /// Whether `field` is still to be recorded; it counts as recorded from now on.
    fn first(&self, field: usize) -> bool {
        !self.0[field].swap(true, Ordering::Relaxed)
    }

    /// [`Self::first`] for the request's record, if it has one.
    fn first_of(request: &Request, field: usize) -> bool {
        request.data::<Self>().is_some_and(|recorded| recorded.first(field))
    }
}

/// Fills the `route` and `tenant` fields of the current request span. Called by the bearer
/// checker, the first code that runs once the router has matched the route, so every line an
/// authenticated request logs carries both; `tenant` is `None` until the token is verified.
pub(crate) fn record_route_and_tenant(request: &Request, tenant: Option<Uuid>) {
    if let Some(pattern) = request.data::<poem::PathPattern>()
        && SpanFieldsRecorded::first_of(request, SpanFieldsRecorded::ROUTE)
    {
        tracing::Span::current().record("route", route_template(&pattern.0));
    }
    if let Some(tenant) = tenant {
        record_tenant(request, tenant);
    }
}

/// Fills the `route` and `tenant` fields of the current request span for a read the hit path
/// ([`crate::hit_path`]) looks up, before it asks Redis, so its lines carry both too.
pub(crate) fn record_read_route_and_tenant(request: &Request, route: &'static str, tenant: Uuid) {
    if SpanFieldsRecorded::first_of(request, SpanFieldsRecorded::ROUTE) {
        tracing::Span::current().record("route", route);
    }
    record_tenant(request, tenant);
}

fn record_tenant(request: &Request, tenant: Uuid) {
    if SpanFieldsRecorded::first_of(request, SpanFieldsRecorded::TENANT) {
        tracing::Span::current().record("tenant", tracing::field::display(tenant));
    }
}

/// Counts and times one request under its route template, inside the `request` span that every
/// log line of the request carries (request id, method, route template, tenant). Returns the
/// request id in `x-request-id`.
#[tracing::instrument(
    name = "request",
    skip_all,
    fields(request_id = %request_id, method = %request.method(), route = Empty, tenant = Empty)
)]
async fn record_request<E: Endpoint>(
    metrics: &Metrics,
    endpoint: Arc<E>,
    mut request: Request,
    request_id: String,
) -> Response {
    let method = method_label(request.method());
    let recorded = SpanFieldsRecorded::default();
    request.set_data(recorded.clone());
    let started = Instant::now();
    let mut response = match endpoint.call(request).await {
        Ok(response) => response.into_response(),
        Err(error) => problem_from_poem_error(error, &[]),
    };
    // A path no route matches leaves an empty pattern (that of the nest all routes sit in).
    let route = match (response.data::<AnsweredRoute>(), response.data::<poem::PathPattern>()) {
        (Some(answered), _) => Cow::Borrowed(answered.0),
        (None, Some(pattern)) if !pattern.0.trim_matches('/').is_empty() => Cow::Owned(route_template(&pattern.0)),
        (None, _) => Cow::Borrowed("unmatched"),
    };
    if recorded.first(SpanFieldsRecorded::ROUTE) {
        tracing::Span::current().record("route", &*route);
    }
    if let Ok(value) = poem::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let (status, elapsed) = (response.status().as_u16(), started.elapsed());
    metrics.observe_http(&route, method, status, elapsed);
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    // One line per request is an access log: at debug level (`RUST_LOG=openrisk_api=debug`),
    // because at the default level it would cost every cache hit a formatted write to stdout,
    // about as much CPU as the hit itself. Failures are always logged.
    if status >= 500 {
        tracing::warn!(status, elapsed_ms, "request failed");
    } else {
        tracing::debug!(status, elapsed_ms, "request");
    }
    response
}

/// The method as a metric label: one of the methods HTTP defines, `other` for any invented one,
/// so a client cannot add label values (series) by sending methods of its own.
fn method_label(method: &poem::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// `/api/v1/risks/:id` → `/api/v1/risks/{id}` (the OpenAPI spelling). poem-openapi registers
/// its operations' path parameters as `:param0`, `:param1`, … (in path order), so those are
/// given back their documented names from the spec: the HTTP metrics and logs then name a route
/// exactly as the spec and the cache metrics do.
fn route_template(pattern: &str) -> String {
    let template = pattern
        .split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/");
    documented_paths().get(&template).cloned().unwrap_or(template)
}

/// The published document, parsed once: what the routing table documents, for the request
/// metrics, `Allow`, the query-parameter check and the names in 400s.
pub(crate) fn spec_document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::from_str(&openapi_json()).unwrap_or_default())
}

/// The spec's `paths`.
fn spec_paths() -> &'static serde_json::Map<String, serde_json::Value> {
    static NO_PATHS: LazyLock<serde_json::Map<String, serde_json::Value>> = LazyLock::new(serde_json::Map::new);
    spec_document()["paths"].as_object().unwrap_or(&NO_PATHS)
}

/// Every documented path (`/api/v1/risks/{id}`), keyed by how it is registered
/// (`/api/v1/risks/{param0}`).
fn documented_paths() -> &'static HashMap<String, String> {
    static PATHS: OnceLock<HashMap<String, String>> = OnceLock::new();
    PATHS.get_or_init(|| {
        spec_paths()
            .keys()
            .map(|path| {
                let mut index = 0;
                let registered = path
                    .split('/')
                    .map(|segment| {
                        if segment.starts_with('{') && segment.ends_with('}') {
                            index += 1;
                            format!("{{param{}}}", index - 1)
                        } else {
                            segment.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                (registered, path.clone())
            })
            .collect()
    })
}

/// The documented path of the operation `operation_id` (`getRisk` → `/api/v1/risks/{id}`), from
/// the routing table the spec is generated from: a cacheable read names its route (in cache
/// metrics, budgets and fill hooks) as the router's metrics and the spec do, with no copy of the
/// path beside the operation's `#[oai(path)]`. Panics on an id no operation has (a typo that the
/// tests of `routes::cacheable` catch).
pub(crate) fn operation_path(operation_id: &str) -> &'static str {
    static PATHS: OnceLock<HashMap<String, String>> = OnceLock::new();
    let paths = PATHS.get_or_init(|| {
        spec_paths()
            .iter()
            .flat_map(|(path, operations)| {
                let ids: Vec<String> = operations
                    .as_object()
                    .into_iter()
                    .flat_map(|ops| ops.values())
                    .filter_map(|op| op["operationId"].as_str().map(str::to_owned))
                    .collect();
                ids.into_iter().map(move |id| (id, path.clone()))
            })
            .collect()
    });
    paths.get(operation_id).map(String::as_str).unwrap_or_else(|| panic!("no operation {operation_id}"))
}

/// The methods the spec documents for `path` (`GET, HEAD, PATCH`), for `Allow` on 405.
fn allowed_methods(path: &str) -> Option<String> {
    if [DOCS_PAGE, SPEC_DOCUMENT].contains(&path) {
        return Some("GET, HEAD".to_owned());
    }
    let mut names: Vec<String> = documented_operations(path)?.keys().map(|method| method.to_uppercase()).collect();
    if names.iter().any(|name| name == "GET") {
        names.push("HEAD".to_owned());
    }
    names.sort();
    Some(names.join(", "))
}

/// The operations the spec documents for `path`, by lower-case method: those of the template it
/// matches, a `{…}` segment matching any one segment.
pub(crate) fn documented_operations(path: &str) -> Option<&'static serde_json::Map<String, serde_json::Value>> {
    let path = path.trim_end_matches('/');
    let segments = path.split('/').count();
    spec_paths().iter().find_map(|(template, operations)| {
        let matches = template.split('/').count() == segments
            && template
                .split('/')
                .zip(path.split('/'))
                .all(|(expected, actual)| expected.starts_with('{') || expected == actual);
        matches.then(|| operations.as_object()).flatten()
    })
}

/// The `/metrics` endpoint, served on `METRICS_ADDR` only: the API port carries the API, and
/// the metrics (route names, tenant-independent counts) stay on an address operators choose.
fn metrics_routes(state: Arc<AppState>) -> impl Endpoint {
    let metrics = make_sync(move |_| {
        Response::builder().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.render_metrics())
    });
    Route::new().at("/metrics", poem::get(metrics))
}

/// A running server.
pub struct Application {
    /// Where it listens (the real port when bound to port 0).
    pub addr: SocketAddr,
    /// Where `/metrics` is served (the real port when bound to port 0).
    pub metrics_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
    /// What keeps the state current beside the servers (see [`AppState::new`]).
    tasks: Tasks,
}

impl Application {
    /// Builds the state, binds `settings.api_addr` and serves in a background task.
    pub async fn spawn(settings: Settings, options: AppOptions) -> Result<Self, StartError> {
        let (addr, metrics_addr, http) = (settings.api_addr, settings.metrics_addr, settings.http.clone());
        let mut tasks = Tasks::default();
        let state = AppState::new(settings, options, &mut tasks).await?;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|source| StartError::Listen { addr: metrics_addr, source })?;
        let metrics_addr =
            metrics_listener.local_addr().map_err(|source| StartError::Listen { addr: metrics_addr, source })?;
        // On both ports: at most `max_connections` at once, and headers, like any other bytes, may
        // take at most the idle timeout to arrive, and a connection may go that long without a
        // request.
        let idle_timeout = Duration::from_millis(http.idle_timeout_ms);
        let limited = |acceptor| LimitedAcceptor::new(acceptor, http.max_connections, idle_timeout);
        let timeouts = ServeTimeouts {
            headers: Some(idle_timeout),
            requestless: Some(idle_timeout),
            shutdown_grace: shutdown_grace(&http),
        };
        let metrics_acceptor = TcpAcceptor::from_tokio(metrics_listener)
            .map_err(|source| StartError::Listen { addr: metrics_addr, source })?;
        // Never stopped by a signal: `shutdown` aborts it (see there).
        let metrics_timeouts = ServeTimeouts { shutdown_grace: Duration::ZERO, ..timeouts };
        let metrics_server = openrisk_shared::http_server::serve(
            limited(metrics_acceptor),
            metrics_routes(state.clone()),
            metrics_timeouts,
            std::future::pending(),
        );
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(|source| StartError::Listen { addr, source })?;
        let acceptor = limited(acceptor);
        let (shutdown, stopped) = oneshot::channel();
        let stopped = async move {
            let _ = stopped.await;
        };
        let server = openrisk_shared::http_server::serve(acceptor, routes(state.clone()), timeouts, stopped);
        tracing::info!(%addr, %metrics_addr, "openrisk-api listening");
        Ok(Self {
            addr,
            metrics_addr,
            state,
            shutdown: Some(shutdown),
            task: tokio::spawn(server),
            metrics_task: tokio::spawn(metrics_server),
            tasks,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:38211`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves when one of the tasks that keep the state current ends although the application
    /// runs on: it no longer does all its work (a revocation would go unheard, a lagging replica
    /// unnoticed) and should exit, for its supervisor to start it again.
    pub async fn failed(&mut self) -> TaskEnded {
        self.tasks.ended().await
    }

    /// Stops accepting connections and waits for in-flight requests (up to a grace period).
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // A commit whose request was answered at its deadline may still run: its invalidation
        // is what the client was told to read after. Waited for beside the requests in flight,
        // within the same grace, so the shutdown takes no longer.
        self.state.commits.close();
        let commits = tokio::time::timeout(shutdown_grace(&self.state.settings.http), self.state.commits.wait());
        let (served, commits) = tokio::join!(&mut self.task, commits);
        let served = served.map_err(std::io::Error::other);
        if commits.is_err() {
            tracing::warn!(left = self.state.commits.len(), "commits still running at shutdown were left");
        }
        // Scrapes are instant and idempotent: nothing in flight is worth waiting for.
        self.metrics_task.abort();
        served
    }
}
