//! [`Caller`], what every `/api/v1` operation starts from (the application and the principal its
//! bearer token names), and [`Write`], one write of the caller's tenant.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use poem::web::Data;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use sea_orm::DatabaseTransaction;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use uuid::Uuid;

use super::{Cached, Caching, ListFilter, serve};
use crate::app::AppState;
use crate::auth::{BearerAuth, Principal, Role};
use crate::cache::CacheableRead;
use crate::conditional::{RequestConditions, WriteConditions};
use crate::db::CommitFailed;
use crate::db::replicas::Reader;
use crate::error::ApiError;
use crate::request_limits::Committing;

/// The application and the verified principal behind a request. To the spec it is the
/// `BearerAuth` security scheme, exactly as an operation taking `BearerAuth` describes it.
pub(super) struct Caller {
    pub state: Arc<AppState>,
    pub principal: Principal,
    /// The request's `If-Match` and `If-None-Match`, which a write evaluates whether or not its
    /// operation documents them.
    conditions: RequestConditions,
    /// Told when the request's write is sent to be committed (a request that may write has one).
    committing: Option<Committing>,
}

/// What a cacheable read of the caller answers.
type Served<T> = Result<Cached<T>, ApiError>;

impl<'a> ApiExtractor<'a> for Caller {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <BearerAuth as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <BearerAuth as ApiExtractor>::security_schemes()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _options: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let Data(state) = <Data<&Arc<AppState>> as FromRequest>::from_request(request, body).await?;
        let state = Arc::clone(state);
        let BearerAuth(principal) =
            <BearerAuth as ApiExtractor>::from_request(request, body, ExtractParamOptions::default()).await?;
        let conditions = RequestConditions::of(request);
        let committing = request.extensions().get::<Committing>().cloned();
        Ok(Self { state, principal, conditions, committing })
    }
}

impl Caller {
    /// The caller's tenant: every read and write of the operation is scoped to it.
    pub fn tenant(&self) -> Uuid {
        self.principal.tenant_id
    }

    /// Serves `read`, one entry per resource, for the caller (see [`serve`]).
    pub async fn serve<T, F, Fut>(&self, read: CacheableRead, if_none_match: Option<String>, load: F) -> Served<T>
    where
        F: Fn(Arc<AppState>, Reader) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, ApiError>> + Send + 'static,
    {
        serve(&self.state, read, Caching::Detail, if_none_match.as_deref(), load).await
    }

    /// Serves one page of a list for the caller: `read` names it in the cache, which keeps it
    /// within the tenant's budget unless `filter` searches or pages far ([`Caching::of_list`]);
    /// `load` reads the page of the caller's tenant on a miss.
    pub async fn serve_list<T, Filter, F, Fut>(
        &self,
        read: CacheableRead,
        filter: Filter,
        if_none_match: Option<String>,
        load: F,
    ) -> Served<T>
    where
        Filter: ListFilter + Clone + Send + Sync + 'static,
        F: Fn(Arc<AppState>, Reader, Uuid, Filter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, ApiError>> + Send + 'static,
    {
        let caching = Caching::of_list(filter.search(), filter.page());
        let tenant = self.tenant();
        let load = move |state, reader| load(state, reader, tenant, filter.clone());
        serve(&self.state, read, caching, if_none_match.as_deref(), load).await
    }

    /// The application, for an operation on the tenant's tokens, which needs the admin role
    /// (403 otherwise).
    pub fn admin(&self) -> Result<&AppState, ApiError> {
        self.principal.require(Role::Admin)?;
        Ok(&self.state)
    }

    /// The request's preconditions as sent, for a write that does not go through [`Caller::write`].
    pub fn conditions(&self) -> WriteConditions<'_> {
        self.conditions.as_sent()
    }

    /// Notes that the request's write is about to be committed: from then on the request
    /// deadline waits for the database's answer (see [`Committing`]).
    pub fn begin_commit(&self) {
        if let Some(committing) = &self.committing {
            committing.begin();
        }
    }

    /// Makes one change of risks, mitigations or assets, which needs the analyst role (403 before
    /// any I/O otherwise). `change` runs in one transaction, committed only when it succeeds (and
    /// then its invalidations applied, so the writer's next read sees it) and rolled back when it
    /// fails, so no operation can answer success for a change it did not commit. A change that
    /// loses a deadlock or a serialization failure to a concurrent write changed nothing, so it
    /// runs again in a new transaction, up to [`COLLISION_RETRIES`] times, before the client
    /// gets the 503: two writes that lock the same rows in a different order (an asset's new
    /// criticality re-scores its linked risks while another transaction holds one of them and
    /// then wants the asset) both succeed.
    pub async fn write<T>(
        &self,
        change: impl AsyncFnOnce(&Write) -> Result<T, ApiError> + Clone,
    ) -> Result<T, ApiError> {
        self.principal.require(Role::Analyst)?;
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(50))
            .with_max_times(COLLISION_RETRIES)
            .with_jitter();
        (|| self.write_once(change.clone()))
            .retry(backoff)
            .when(ApiError::is_collision)
            .notify(|_, delay| tracing::debug!(?delay, "a write lost to a concurrent one; running it again"))
            .await
    }

    /// One attempt of [`Caller::write`]: its own transaction, ended before this returns.
    async fn write_once<T>(&self, change: impl AsyncFnOnce(&Write) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let place = self.state.reads.shares().enter(self.tenant()).await?;
        let write = Write {
            txn: self.state.db.begin().await?,
            state: Arc::clone(&self.state),
            tenant: self.tenant(),
            conditions: self.conditions.clone(),
        };
        match change(&write).await {
            Ok(changed) => {
                self.begin_commit();
                write.commit(place).await?;
                Ok(changed)
            }
            Err(error) => {
                // Now, not when the connection is next used: a deadlock's loser keeps its locks
                // until its transaction ends, and its retry must not wait behind them.
                if let Err(rollback) = write.txn.rollback().await {
                    tracing::debug!(%rollback, "rolling back a failed write");
                }
                Err(error)
            }
        }
    }
}

/// How many times a write that lost to a concurrent one runs again (after 2 to 50 ms each).
const COLLISION_RETRIES: usize = 3;

/// One write of the caller's tenant, in one transaction, as [`Caller::write`] hands it to a change.
pub(super) struct Write {
    pub txn: DatabaseTransaction,
    pub state: Arc<AppState>,
    pub tenant: Uuid,
    conditions: RequestConditions,
}

impl Write {
    /// The preconditions of a write of one resource with an entity tag: the operation's
    /// `if_match` and the request's `If-None-Match`.
    pub fn conditions<'a>(&'a self, if_match: Option<&'a str>) -> WriteConditions<'a> {
        WriteConditions { if_match, ..self.conditions.as_sent() }
    }

    /// Checks the request's preconditions against a resource without an entity tag that
    /// `existed` before this write (see [`WriteConditions::check_untagged`]).
    pub fn check_untagged(&self, existed: bool) -> Result<(), ApiError> {
        self.conditions.as_sent().check_untagged(existed)
    }

    /// Checks the request's preconditions for a create, whose target is its collection:
    /// `listed` when the collection has a representation (a `GET` of its own), whose tag is not
    /// compared here, so `If-Match` holds only as `*`; otherwise it has none, so `If-Match` fails
    /// and `If-None-Match: *` holds (RFC 9110 §13.1.1, §13.1.2).
    pub fn check_create(&self, listed: bool) -> Result<(), ApiError> {
        self.check_untagged(listed)
    }

    /// Runs one query of the write, timed under `name`.
    pub async fn timed<T>(&self, name: &str, query: impl Future<Output = T>) -> T {
        self.state.db.timed(name, query).await
    }

    /// Commits the transaction, gives the tenant's `place` in the pool back, then invalidates what
    /// its triggers reported, also when the commit's outcome is unknown ([`CommitFailed`]). On a
    /// task of its own, so that a request answered at its deadline while the commit was still
    /// waiting (outcome unknown too) invalidates once the commit is done rather than never.
    async fn commit(self, place: OwnedSemaphorePermit) -> Result<(), ApiError> {
        let Self { txn, state, .. } = self;
        let commits = state.commits.clone();
        let commit = async move {
            let committed = state.db.commit(txn).await;
            drop(place);
            let (invalidations, outcome) = match committed {
                Ok(invalidations) => (Some(invalidations), Ok(())),
                Err(CommitFailed { error, maybe_applied }) => (maybe_applied, Err(error)),
            };
            if let Some(invalidations) = invalidations {
                state.cache.invalidate(&invalidations).await;
            }
            outcome
        };
        let committing = commits.spawn(commit.instrument(tracing::Span::current()));
        committing.await.unwrap_or_else(|panicked| {
            tracing::error!(%panicked, "a commit's task panicked");
            Err(ApiError::internal())
        })
    }
}
