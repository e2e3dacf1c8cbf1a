//! `/api/v1/assets` and the links between risks and assets.

use std::sync::Arc;

use poem::http::StatusCode;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::caller::{Caller, Write};
use super::{ApiTags, Cached, ListFilter, NoContent, Revised, body_of, normalise_search};
use crate::app::AppState;
use crate::db::assets::AssetFilter;
use crate::db::entities::assets;
use crate::db::replicas::Reader;
use crate::db::risks::{self, Linking};
use crate::db::writes;
use crate::error::{ApiError, OrNotFound, Problem};
use crate::filters::{LabelFilter, SearchText};
use crate::model::{Asset, AssetCreate, AssetPage, AssetPatch, Criticality, enum_text};
use crate::paging::{PageNumber, PageSize};

/// Asset operations.
pub struct AssetsApi;

/// A created asset.
#[derive(ApiResponse)]
enum AssetCreated {
    /// The asset was created.
    #[oai(status = 201)]
    Created(Json<Asset>, #[oai(header = "Location")] String),
}

impl ListFilter for AssetFilter {
    fn search(&self) -> Option<&str> {
        self.q.as_deref()
    }

    fn page(&self) -> PageNumber {
        self.page
    }
}

impl AssetFilter {
    /// The parameters that identify this list in the cache key.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("page", self.page.to_string()), ("limit", self.limit.to_string())];
        let optional = [
            ("q", self.q.clone()),
            ("criticality", self.criticality.as_ref().map(enum_text)),
            ("asset_type", self.asset_type.clone()),
        ];
        params.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?))));
        params
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Assets")]
impl AssetsApi {
    /// List assets
    ///
    /// Assets of the caller's tenant by name, paged. Served from the cache until any asset changes.
    #[oai(path = "/assets", method = "get", operation_id = "listAssets")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        caller: Caller,
        /// Text searched case-insensitively in the name.
        q: Query<Option<SearchText>>,
        /// Only assets of this criticality.
        criticality: Query<Option<Criticality>>,
        /// Only assets of this type (exact match).
        asset_type: Query<Option<LabelFilter>>,
        /// Page number, from 1.
        page: Query<PageNumber>,
        /// Page size, 1–200.
        limit: Query<PageSize>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<AssetPage>, ApiError> {
        let filter = AssetFilter {
            q: normalise_search(q.0),
            criticality: criticality.0,
            asset_type: asset_type.0.map(LabelFilter::into_string),
            page: page.0,
            limit: limit.0,
        };
        let read = super::cacheable::asset_list(caller.tenant(), &filter);
        caller.serve_list(read, filter, if_none_match.0, asset_page).await
    }

    /// Get an asset
    #[oai(path = "/assets/:id", method = "get", operation_id = "getAsset")]
    async fn get(
        &self,
        caller: Caller,
        /// Asset id.
        id: Path<Uuid>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Asset>, ApiError> {
        let (tenant, id) = (caller.tenant(), id.0);
        let read = super::cacheable::asset_detail(tenant, id);
        caller
            .serve(read, if_none_match.0, move |state, reader| async move {
                let row = state.db.timed("asset_get", crate::db::assets::find(&reader.conn(), tenant, id)).await?;
                asset_body(&row.or_not_found("asset", id)?).await
            })
            .await
    }

    /// Create an asset
    #[oai(path = "/assets", method = "post", operation_id = "createAsset")]
    async fn create(&self, caller: Caller, body: Json<AssetCreate>) -> Result<AssetCreated, ApiError> {
        let insert = async |write: &Write| {
            write.check_create(true)?;
            Ok(write.timed("asset_insert", writes::insert_asset(&write.txn, write.tenant, body.0)).await?)
        };
        let asset = Asset::try_from(caller.write(insert).await?)?;
        let location = format!("/api/v1/assets/{}", asset.id);
        Ok(AssetCreated::Created(Json(asset), location))
    }

    /// Change an asset
    ///
    /// Only the fields present change. A new criticality re-scores every linked risk.
    #[oai(path = "/assets/:id", method = "patch", operation_id = "updateAsset")]
    async fn update(
        &self,
        caller: Caller,
        /// Asset id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: Json<AssetPatch>,
    ) -> Result<Revised<Asset>, ApiError> {
        let row = caller
            .write(async |write| {
                let current = lock_asset(write, id.0, if_match.0.as_deref()).await?;
                Ok(write.timed("asset_update", writes::update_asset(&write.txn, current, body.0)).await?)
            })
            .await?;
        Ok(Revised::as_served(Asset::try_from(row)?))
    }

    /// Delete an asset
    ///
    /// Unlinks it from every risk (which are re-scored) and deletes it.
    #[oai(path = "/assets/:id", method = "delete", operation_id = "deleteAsset")]
    async fn delete(
        &self,
        caller: Caller,
        /// Asset id.
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
                    lock_asset(write, id, if_match.0.as_deref()).await?;
                }
                let deleted = write.timed("asset_delete", writes::delete_asset(&write.txn, write.tenant, id)).await?;
                super::found(deleted, "asset", id)
            })
            .await
    }

    /// Link a risk and an asset
    ///
    /// Idempotent. The risk is re-scored with the asset's criticality.
    #[oai(path = "/risks/:risk_id/assets/:asset_id", method = "put", operation_id = "linkAsset")]
    async fn link(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Asset id.
        asset_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        change_link(&caller, risk_id.0, asset_id.0, LinkChange::Link).await
    }

    /// Unlink a risk and an asset
    #[oai(path = "/risks/:risk_id/assets/:asset_id", method = "delete", operation_id = "unlinkAsset")]
    async fn unlink(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Asset id.
        asset_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        change_link(&caller, risk_id.0, asset_id.0, LinkChange::Unlink).await
    }
}

/// One page of the asset list, read on `reader`.
async fn asset_page(
    state: Arc<AppState>,
    reader: Reader,
    tenant: Uuid,
    filter: AssetFilter,
) -> Result<Vec<u8>, ApiError> {
    let (rows, total) = state.db.timed("asset_list", crate::db::assets::list(&reader.conn(), tenant, &filter)).await?;
    super::page_body(rows, |items| AssetPage { items, total, page: filter.page.get(), limit: filter.limit.get() })
}

/// The body a GET of the asset serves, which `If-Match` compares.
fn asset_body(row: &assets::Model) -> std::future::Ready<Result<Vec<u8>, ApiError>> {
    std::future::ready(Asset::try_from(row.clone()).map(|asset| body_of(&asset)).map_err(ApiError::from))
}

/// Locks the asset `id` for `write` and checks the write's preconditions against it (see
/// [`super::lock_for_write`]).
async fn lock_asset(write: &Write, id: Uuid, if_match: Option<&str>) -> Result<assets::Model, ApiError> {
    let lock = write.timed("asset_lock", writes::lock_asset(&write.txn, write.tenant, id));
    super::lock_for_write("asset", id, lock, write.conditions(if_match), asset_body).await
}

/// Which way [`change_link`] changes the link between a risk and an asset.
#[derive(Clone, Copy)]
enum LinkChange {
    Link,
    Unlink,
}

/// Links or unlinks a risk and an asset in one write; 404 when there was nothing to change, 412
/// when the request's preconditions refuse the change (a link has no entity tag, so `If-Match: *`
/// asks that it exist and `If-None-Match: *` that it not).
async fn change_link(caller: &Caller, risk: Uuid, asset: Uuid, change: LinkChange) -> Result<NoContent, ApiError> {
    let missing = |detail: String| ApiError::NotFound(Json(Problem::new(StatusCode::NOT_FOUND, detail)));
    caller
        .write(async |write| {
            let existed = match change {
                LinkChange::Link => {
                    match write.timed("asset_link", risks::link_asset(&write.txn, write.tenant, risk, asset)).await? {
                        Linking::Made => false,
                        Linking::Kept => true,
                        Linking::SideMissing => {
                            return Err(missing(format!("risk {risk} or asset {asset} does not exist")));
                        }
                    }
                }
                LinkChange::Unlink => {
                    let unlink = risks::unlink_asset(&write.txn, write.tenant, risk, asset);
                    if !write.timed("asset_unlink", unlink).await? {
                        return Err(missing(format!("risk {risk} is not linked to asset {asset}")));
                    }
                    true
                }
            };
            // Checked after the change, in its transaction: a refusal rolls it back.
            write.check_untagged(existed)?;
            Ok(NoContent::Done)
        })
        .await
}
