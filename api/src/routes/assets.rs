//! `/api/v1/assets` and the links between risks and assets.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::{
    ApiTags, Cached, Caching, NoContent, Updated, Write, body_of, default_limit, default_page, normalise_search, serve,
};
use crate::app::AppState;
use crate::auth::{BearerAuth, Role};
use crate::db::assets::AssetFilter;
use crate::db::entities::assets;
use crate::db::writes;
use crate::error::ApiError;
use crate::model::{Asset, AssetCreate, AssetPage, AssetPatch, Criticality, enum_text};

/// Asset operations.
pub struct AssetsApi;

/// A created asset.
#[derive(ApiResponse)]
enum AssetCreated {
    /// The asset was created.
    #[oai(status = 201)]
    Created(Json<Asset>, #[oai(header = "Location")] String),
}

impl AssetFilter {
    /// The parameters that identify this list in the cache key.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("page", self.page.to_string()), ("limit", self.limit.to_string())];
        let optional =
            [("q", self.q.clone()), ("criticality", self.criticality.clone()), ("asset_type", self.asset_type.clone())];
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
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Text searched case-insensitively in the name.
        #[oai(validator(max_length = 200))]
        q: Query<Option<String>>,
        /// Only assets of this criticality.
        criticality: Query<Option<Criticality>>,
        /// Only assets of this type (exact match).
        #[oai(validator(min_length = 1, max_length = 64))]
        asset_type: Query<Option<String>>,
        /// Page number, from 1.
        #[oai(default = "default_page", validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<u32>,
        /// Page size, 1–200.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<u32>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<AssetPage>, ApiError> {
        let tenant = auth.0.tenant_id;
        let filter = AssetFilter {
            q: normalise_search(q.0),
            criticality: criticality.0.as_ref().map(enum_text),
            asset_type: asset_type.0,
            page: page.0,
            limit: limit.0,
        };
        let read = super::cacheable::asset_list(tenant, &filter);
        let caching = Caching::of_list(filter.q.as_deref(), filter.page);
        serve(&state, read, caching, if_none_match.0.as_deref(), move |state, reader| {
            let filter = filter.clone();
            async move {
                let (rows, total) =
                    state.db.timed("asset_list", crate::db::assets::list(&reader.conn(), tenant, &filter)).await?;
                super::page_body(rows, |items| AssetPage { items, total, page: filter.page, limit: filter.limit })
            }
        })
        .await
    }

    /// Get an asset
    #[oai(path = "/assets/:id", method = "get", operation_id = "getAsset")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Asset id.
        id: Path<Uuid>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Asset>, ApiError> {
        let (tenant, id) = (auth.0.tenant_id, id.0);
        let read = super::cacheable::asset_detail(tenant, id);
        serve(&state, read, Caching::Detail, if_none_match.0.as_deref(), move |state, reader| async move {
            let row = state
                .db
                .timed("asset_get", crate::db::assets::find(&reader.conn(), tenant, id))
                .await?
                .ok_or_else(|| ApiError::not_found("asset", id))?;
            Ok(body_of(&Asset::try_from(row)?))
        })
        .await
    }

    /// Create an asset
    #[oai(path = "/assets", method = "post", operation_id = "createAsset")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        body: Json<AssetCreate>,
    ) -> Result<AssetCreated, ApiError> {
        let body = body.0;
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        let row = state.db.timed("asset_insert", writes::insert_asset(&write.txn, auth.0.tenant_id, body)).await?;
        write.commit(&state).await?;
        let location = format!("/api/v1/assets/{}", row.id);
        Ok(AssetCreated::Created(Json(Asset::try_from(row)?), location))
    }

    /// Change an asset
    ///
    /// Only the fields present change. A new criticality re-scores every linked risk.
    #[oai(path = "/assets/:id", method = "patch", operation_id = "updateAsset")]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Asset id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: Json<AssetPatch>,
    ) -> Result<Updated<Asset>, ApiError> {
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        let lock = state.db.timed("asset_lock", writes::lock_asset(&write.txn, auth.0.tenant_id, id.0));
        let current = super::lock_for_write("asset", id.0, lock, if_match.0.as_deref(), asset_body).await?;
        let row = state.db.timed("asset_update", writes::update_asset(&write.txn, current, body.0)).await?;
        write.commit(&state).await?;
        Ok(Updated::Ok(Json(Asset::try_from(row)?)))
    }

    /// Delete an asset
    ///
    /// Unlinks it from every risk (which are re-scored) and deletes it.
    #[oai(path = "/assets/:id", method = "delete", operation_id = "deleteAsset")]
    async fn delete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Asset id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        let (tenant, id) = (auth.0.tenant_id, id.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        if if_match.0.is_some() {
            let lock = state.db.timed("asset_lock", writes::lock_asset(&write.txn, tenant, id));
            super::lock_for_write("asset", id, lock, if_match.0.as_deref(), asset_body).await?;
        }
        let deleted = state.db.timed("asset_delete", writes::delete_asset(&write.txn, tenant, id)).await?;
        if !deleted {
            return Err(ApiError::not_found("asset", id));
        }
        write.commit(&state).await?;
        Ok(NoContent::Done)
    }

    /// Link a risk and an asset
    ///
    /// Idempotent. The risk is re-scored with the asset's criticality.
    #[oai(path = "/risks/:risk_id/assets/:asset_id", method = "put", operation_id = "linkAsset")]
    async fn link(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Asset id.
        asset_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        change_link(&state, &auth, risk_id.0, asset_id.0, LinkChange::Link).await
    }

    /// Unlink a risk and an asset
    #[oai(path = "/risks/:risk_id/assets/:asset_id", method = "delete", operation_id = "unlinkAsset")]
    async fn unlink(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Asset id.
        asset_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        change_link(&state, &auth, risk_id.0, asset_id.0, LinkChange::Unlink).await
    }
}

/// The body a GET of the asset serves, which `If-Match` compares.
fn asset_body(row: &assets::Model) -> std::future::Ready<Result<Vec<u8>, ApiError>> {
    std::future::ready(Asset::try_from(row.clone()).map(|asset| body_of(&asset)).map_err(ApiError::from))
}

/// Which way [`change_link`] changes the link between a risk and an asset.
#[derive(Clone, Copy)]
enum LinkChange {
    Link,
    Unlink,
}

/// Links or unlinks a risk and an asset in one write; 404 when there was nothing to change.
async fn change_link(
    state: &AppState,
    auth: &BearerAuth,
    risk: Uuid,
    asset: Uuid,
    change: LinkChange,
) -> Result<NoContent, ApiError> {
    let write = Write::begin(state, auth, Role::Analyst).await?;
    let tenant = auth.0.tenant_id;
    let (changed, missing) = match change {
        LinkChange::Link => (
            state.db.timed("asset_link", crate::db::risks::link_asset(&write.txn, tenant, risk, asset)).await?,
            format!("risk {risk} or asset {asset} does not exist"),
        ),
        LinkChange::Unlink => (
            state.db.timed("asset_unlink", crate::db::risks::unlink_asset(&write.txn, tenant, risk, asset)).await?,
            format!("risk {risk} is not linked to asset {asset}"),
        ),
    };
    if !changed {
        return Err(ApiError::NotFound(Json(crate::error::Problem::new(poem::http::StatusCode::NOT_FOUND, missing))));
    }
    write.commit(state).await?;
    Ok(NoContent::Done)
}
