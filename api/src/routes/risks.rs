//! `/api/v1/risks`: the risk list with its filters, the risk detail, and risk writes.

use std::sync::Arc;

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::cacheable::{DEFAULT_SORT_BY, DEFAULT_SORT_DIR};
use super::caller::{Caller, Write};
use super::{ApiTags, Cached, ListFilter, NoContent, Revised, body_of, normalise_search};
use crate::app::AppState;
use crate::db::replicas::Reader;
use crate::db::risks::{RiskFilter, RiskOrder, ScoreRange};
use crate::db::writes;
use crate::error::{ApiError, OrNotFound};
use crate::filters::{LabelFilter, OwnerFilter, ScoreBound, SearchText};
use crate::model::{
    Asset, Mitigation, Risk, RiskCreate, RiskDetail, RiskPage, RiskPatch, RiskSortField, RiskStatus, Severity,
    SortDirection, custom_fields, enum_text,
};
use crate::paging::{PageNumber, PageSize};

/// Risk operations.
pub struct RisksApi;

/// A created risk.
#[derive(ApiResponse)]
enum RiskCreated {
    /// The risk was created.
    #[oai(status = 201)]
    Created(Json<Risk>, #[oai(header = "Location")] String),
}

fn default_sort_by() -> RiskSortField {
    DEFAULT_SORT_BY
}

fn default_sort_dir() -> SortDirection {
    DEFAULT_SORT_DIR
}

impl ListFilter for RiskFilter {
    fn search(&self) -> Option<&str> {
        self.q.as_deref()
    }

    fn page(&self) -> PageNumber {
        self.page
    }
}

impl Default for RiskFilter {
    /// The filter of `GET /api/v1/risks` without parameters: every live risk, newest first, on
    /// the first page of the default size.
    fn default() -> Self {
        RiskFilter {
            q: None,
            status: None,
            severity: None,
            score: ScoreRange::default(),
            tag: None,
            owner: None,
            order: RiskOrder { by: DEFAULT_SORT_BY, direction: DEFAULT_SORT_DIR },
            page: PageNumber::default(),
            limit: PageSize::default(),
        }
    }
}

impl RiskFilter {
    /// The parameters that identify this list in the cache key.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("sort_by", enum_text(&self.order.by)),
            ("sort_dir", enum_text(&self.order.direction)),
            ("page", self.page.to_string()),
            ("limit", self.limit.to_string()),
        ];
        let optional = [
            ("q", self.q.clone()),
            ("status", self.status.as_ref().map(enum_text)),
            ("severity", self.severity.as_ref().map(enum_text)),
            ("min_score", self.score.min.map(|score| score.to_string())),
            ("max_score", self.score.max.map(|score| score.to_string())),
            ("tag", self.tag.clone()),
            ("owner", self.owner.clone()),
        ];
        params.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?))));
        params
    }
}

/// Reads a live risk with its mitigations, sub-actions and assets (all of which invalidate
/// `risk:<id>`, see the triggers in `migrations/`) through the pool or a transaction: the body
/// a GET serves, whose entity tag `If-Match` compares.
pub(super) async fn load_detail(
    state: &AppState,
    conn: &impl sea_orm::ConnectionTrait,
    tenant: Uuid,
    id: Uuid,
) -> Result<Vec<u8>, ApiError> {
    let read = crate::db::risks::with_children(conn, tenant, id);
    let rows = state.db.timed("risk_detail", read).await?.or_not_found("risk", id)?;
    let detail = RiskDetail {
        risk: Risk::try_from(rows.risk)?,
        mitigations: rows
            .mitigations
            .into_iter()
            .map(|embedded| Mitigation::from_rows(embedded.mitigation, embedded.subactions))
            .collect::<Result<_, _>>()?,
        assets: rows.assets.into_iter().map(Asset::try_from).collect::<Result<_, _>>()?,
    };
    Ok(body_of(&detail))
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Risks")]
impl RisksApi {
    /// List risks
    ///
    /// Live risks of the caller's tenant, filtered, sorted and paged. Served from the cache until
    /// any risk of the tenant changes.
    #[oai(path = "/risks", method = "get", operation_id = "listRisks")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        caller: Caller,
        /// Text searched case-insensitively in title and description.
        q: Query<Option<SearchText>>,
        /// Only risks with this status.
        status: Query<Option<RiskStatus>>,
        /// Only risks in this severity band.
        severity: Query<Option<Severity>>,
        /// Only risks scoring at least this much.
        min_score: Query<Option<ScoreBound>>,
        /// Only risks scoring at most this much.
        max_score: Query<Option<ScoreBound>>,
        /// Only risks carrying this tag (exact match).
        tag: Query<Option<LabelFilter>>,
        /// Only risks of this owner (exact match).
        owner: Query<Option<OwnerFilter>>,
        /// Sort field.
        #[oai(default = "default_sort_by")]
        sort_by: Query<RiskSortField>,
        /// Sort direction.
        #[oai(default = "default_sort_dir")]
        sort_dir: Query<SortDirection>,
        /// Page number, from 1.
        page: Query<PageNumber>,
        /// Page size, 1–200.
        limit: Query<PageSize>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<RiskPage>, ApiError> {
        let filter = RiskFilter {
            q: normalise_search(q.0),
            status: status.0,
            severity: severity.0,
            score: ScoreRange::new(min_score.0.map(ScoreBound::get), max_score.0.map(ScoreBound::get)),
            tag: tag.0.map(LabelFilter::into_string),
            owner: owner.0.map(OwnerFilter::into_string),
            order: RiskOrder { by: sort_by.0, direction: sort_dir.0 },
            page: page.0,
            limit: limit.0,
        };
        let read = super::cacheable::risk_list(caller.tenant(), &filter);
        caller.serve_list(read, filter, if_none_match.0, risk_page).await
    }

    /// Get a risk
    ///
    /// A live risk with its mitigations (and their sub-actions) and linked assets. Served from
    /// the cache until the risk, one of its mitigations or sub-actions, or a linked asset changes.
    #[oai(path = "/risks/:id", method = "get", operation_id = "getRisk")]
    async fn get(
        &self,
        caller: Caller,
        /// Risk id.
        id: Path<Uuid>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<RiskDetail>, ApiError> {
        let (tenant, id) = (caller.tenant(), id.0);
        let read = super::cacheable::risk_detail(tenant, id);
        caller
            .serve(read, if_none_match.0, move |state, reader| async move {
                load_detail(&state, &reader.conn(), tenant, id).await
            })
            .await
    }

    /// Create a risk
    ///
    /// The score and severity are computed from impact, probability and (later) linked assets.
    #[oai(path = "/risks", method = "post", operation_id = "createRisk")]
    async fn create(&self, caller: Caller, body: Json<RiskCreate>) -> Result<RiskCreated, ApiError> {
        let insert = async |write: &Write| {
            write.check_create(true)?;
            check_custom_fields(&body.custom_fields)?;
            Ok(write.timed("risk_insert", writes::insert_risk(&write.txn, write.tenant, body.0)).await?)
        };
        let risk = Risk::try_from(caller.write(insert).await?)?;
        let location = format!("/api/v1/risks/{}", risk.id);
        Ok(RiskCreated::Created(Json(risk), location))
    }

    /// Change a risk
    ///
    /// Only the fields present change. Returns the risk as stored (with its new score); its `ETag`
    /// is the detail's, as a GET now serves it.
    #[oai(path = "/risks/:id", method = "patch", operation_id = "updateRisk")]
    async fn update(
        &self,
        caller: Caller,
        /// Risk id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: Json<RiskPatch>,
    ) -> Result<Revised<Risk>, ApiError> {
        let (row, detail) = caller
            .write(async |write| {
                let current = lock_risk(write, id.0, if_match.0.as_deref()).await?;
                if let Some(fields) = body.custom_fields.as_ref() {
                    check_custom_fields(fields)?;
                }
                let row = write.timed("risk_update", writes::update_risk(&write.txn, current, body.0)).await?;
                // The detail a GET serves from this commit on: its tag is the next `If-Match`.
                let detail = load_detail(&write.state, &write.txn, write.tenant, id.0).await?;
                Ok((row, detail))
            })
            .await?;
        Ok(Revised::Ok(Json(Risk::try_from(row)?), crate::cache::etag_of(&detail)))
    }

    /// Delete a risk
    ///
    /// Soft delete: the risk disappears from every read but stays in the history.
    #[oai(path = "/risks/:id", method = "delete", operation_id = "deleteRisk")]
    async fn delete(
        &self,
        caller: Caller,
        /// Risk id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        let id = id.0;
        caller
            .write(async |write| {
                if !write.conditions(if_match.0.as_deref()).is_empty() {
                    lock_risk(write, id, if_match.0.as_deref()).await?;
                }
                let delete = crate::db::risks::soft_delete(&write.txn, write.tenant, id);
                super::found(write.timed("risk_delete", delete).await?, "risk", id)
            })
            .await
    }
}

/// One page of the risk list, read on `reader`.
async fn risk_page(
    state: Arc<AppState>,
    reader: Reader,
    tenant: Uuid,
    filter: RiskFilter,
) -> Result<Vec<u8>, ApiError> {
    let (rows, total) = state.db.timed("risk_list", crate::db::risks::list(&reader.conn(), tenant, &filter)).await?;
    super::page_body(rows, |items| RiskPage { items, total, page: filter.page.get(), limit: filter.limit.get() })
}

/// Locks the live risk `id` for `write` and checks the write's preconditions against its detail
/// as a GET serves it (see [`super::lock_for_write`]).
async fn lock_risk(
    write: &Write,
    id: Uuid,
    if_match: Option<&str>,
) -> Result<crate::db::entities::risks::Model, ApiError> {
    let lock = write.timed("risk_lock", crate::db::risks::lock_live(&write.txn, write.tenant, id));
    let conditions = write.conditions(if_match);
    super::lock_for_write("risk", id, lock, conditions, |_| load_detail(&write.state, &write.txn, write.tenant, id))
        .await
}

/// 422 when `custom_fields` could not be stored as sent (see [`custom_fields::check`]).
fn check_custom_fields(fields: &std::collections::BTreeMap<String, serde_json::Value>) -> Result<(), ApiError> {
    custom_fields::check(fields).map_err(|error| ApiError::unprocessable(error.to_string()))
}
