//! `/api/v1/risks/{risk_id}/mitigations`: mitigations of a risk and their sub-actions.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::{ApiTags, Cached, Caching, NoContent, Updated, Write, body_of, serve};
use crate::app::AppState;
use crate::auth::{BearerAuth, Role};
use crate::db::entities::{mitigations, subactions};
use crate::db::writes;
use crate::error::ApiError;
use crate::model::{Mitigation, MitigationCreate, MitigationPatch, SubAction, SubActionCreate, SubActionPatch};

/// Mitigation and sub-action operations.
pub struct MitigationsApi;

/// A created mitigation.
#[derive(ApiResponse)]
enum MitigationCreated {
    /// The mitigation was created.
    #[oai(status = 201)]
    Created(Json<Mitigation>, #[oai(header = "Location")] String),
}

/// A created sub-action.
#[derive(ApiResponse)]
enum SubActionCreated {
    /// The sub-action was created.
    #[oai(status = 201)]
    Created(Json<SubAction>),
}

/// A mitigation with its sub-actions, as seen through the transaction or pool `db`.
async fn mitigation_view(
    state: &AppState,
    db: &impl sea_orm::ConnectionTrait,
    tenant: Uuid,
    row: mitigations::Model,
) -> Result<Mitigation, ApiError> {
    let subs = state.db.timed("subaction_list", crate::db::risks::subactions_of(db, tenant, &[row.id])).await?;
    Ok(Mitigation::from_rows(row, subs)?)
}

/// 400 unless a due date is one RFC 3339 writes (years 0001 to 9999): chrono and Postgres take
/// years before Christ and past 9999 that no client could read back as a `date`.
fn check_due_date(date: chrono::NaiveDate) -> Result<(), ApiError> {
    use chrono::Datelike;
    if (1..=9999).contains(&date.year()) {
        Ok(())
    } else {
        let detail = format!("due_date {date} is outside 0001-01-01 to 9999-12-31");
        Err(ApiError::BadRequest(Json(crate::error::Problem::new(poem::http::StatusCode::BAD_REQUEST, detail))))
    }
}

/// Checks `If-Match` (when sent) against the mitigation as a GET serves it, with the row locked
/// first so no other change of it comes between the check and the write; the row as locked.
async fn require_mitigation_if_match(
    state: &AppState,
    txn: &sea_orm::DatabaseTransaction,
    if_match: Option<&str>,
    row: mitigations::Model,
) -> Result<mitigations::Model, ApiError> {
    if if_match.is_none() {
        return Ok(row);
    }
    let (tenant, id) = (row.tenant_id, row.id);
    let row = state
        .db
        .timed("mitigation_lock", writes::lock_mitigation(txn, tenant, id))
        .await?
        .ok_or_else(|| ApiError::not_found("mitigation", id))?;
    let view = || async { Ok(body_of(&mitigation_view(state, txn, tenant, row.clone()).await?)) };
    super::require_if_match(if_match, view).await?;
    Ok(row)
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Mitigations")]
impl MitigationsApi {
    /// Get a mitigation
    ///
    /// A mitigation of a live risk, with its sub-actions. Served from the cache until the
    /// mitigation, one of its sub-actions or the risk changes.
    #[oai(path = "/risks/:risk_id/mitigations/:id", method = "get", operation_id = "getMitigation")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Mitigation>, ApiError> {
        let (tenant, risk, id) = (auth.0.tenant_id, risk_id.0, id.0);
        let read = super::cacheable::mitigation(tenant, risk, id);
        serve(&state, read, Caching::Detail, if_none_match.0.as_deref(), move |state, reader| async move {
            let conn = &reader.conn();
            let row = state
                .db
                .timed("mitigation_get", crate::db::risks::find_mitigation(conn, tenant, risk, id))
                .await?
                .ok_or_else(|| ApiError::not_found("mitigation", id))?;
            Ok(body_of(&mitigation_view(&state, conn, tenant, row).await?))
        })
        .await
    }

    /// Create a mitigation
    #[oai(path = "/risks/:risk_id/mitigations", method = "post", operation_id = "createMitigation")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        body: Json<MitigationCreate>,
    ) -> Result<MitigationCreated, ApiError> {
        let (tenant, risk, body) = (auth.0.tenant_id, risk_id.0, body.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        if state.db.timed("risk_lock", crate::db::risks::lock_live(&write.txn, tenant, risk)).await?.is_none() {
            return Err(ApiError::not_found("risk", risk));
        }
        if let Some(date) = body.due_date {
            check_due_date(date)?;
        }
        let row =
            state.db.timed("mitigation_insert", writes::insert_mitigation(&write.txn, tenant, risk, body)).await?;
        write.commit(&state).await?;
        let location = format!("/api/v1/risks/{risk}/mitigations/{}", row.id);
        Ok(MitigationCreated::Created(Json(Mitigation::from_rows(row, Vec::new())?), location))
    }

    /// Change a mitigation
    ///
    /// Only the fields present change.
    #[oai(path = "/risks/:risk_id/mitigations/:id", method = "patch", operation_id = "updateMitigation")]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: Json<MitigationPatch>,
    ) -> Result<Updated<Mitigation>, ApiError> {
        let (tenant, risk, id, patch) = (auth.0.tenant_id, risk_id.0, id.0, body.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        let current = state
            .db
            .timed("mitigation_get", crate::db::risks::find_mitigation(&write.txn, tenant, risk, id))
            .await?
            .ok_or_else(|| ApiError::not_found("mitigation", id))?;
        let current = require_mitigation_if_match(&state, &write.txn, if_match.0.as_deref(), current).await?;
        if let MaybeUndefined::Value(date) = patch.due_date {
            check_due_date(date)?;
        }
        let row = state.db.timed("mitigation_update", writes::update_mitigation(&write.txn, current, patch)).await?;
        let view = mitigation_view(&state, &write.txn, tenant, row).await?;
        write.commit(&state).await?;
        Ok(Updated::Ok(Json(view)))
    }

    /// Delete a mitigation
    ///
    /// Deletes the mitigation and its sub-actions.
    #[oai(path = "/risks/:risk_id/mitigations/:id", method = "delete", operation_id = "deleteMitigation")]
    async fn delete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        let (tenant, risk, id) = (auth.0.tenant_id, risk_id.0, id.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        let row = state
            .db
            .timed("mitigation_get", crate::db::risks::find_mitigation(&write.txn, tenant, risk, id))
            .await?
            .ok_or_else(|| ApiError::not_found("mitigation", id))?;
        let row = require_mitigation_if_match(&state, &write.txn, if_match.0.as_deref(), row).await?;
        state.db.timed("mitigation_delete", writes::delete_mitigation(&write.txn, row.id)).await?;
        write.commit(&state).await?;
        Ok(NoContent::Done)
    }

    /// Add a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions",
        method = "post",
        operation_id = "createSubAction"
    )]
    async fn create_subaction(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        body: Json<SubActionCreate>,
    ) -> Result<SubActionCreated, ApiError> {
        let (tenant, risk, mitigation) = (auth.0.tenant_id, risk_id.0, mitigation_id.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        if state
            .db
            .timed("mitigation_get", crate::db::risks::find_mitigation(&write.txn, tenant, risk, mitigation))
            .await?
            .is_none()
        {
            return Err(ApiError::not_found("mitigation", mitigation));
        }
        let row = state
            .db
            .timed("subaction_insert", writes::insert_subaction(&write.txn, tenant, mitigation, body.0))
            .await?;
        write.commit(&state).await?;
        Ok(SubActionCreated::Created(Json(SubAction::from(row))))
    }

    /// Change a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions/:id",
        method = "patch",
        operation_id = "updateSubAction"
    )]
    async fn update_subaction(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
        body: Json<SubActionPatch>,
    ) -> Result<Updated<SubAction>, ApiError> {
        let patch = body.0;
        let row = change_subaction(&state, &auth, risk_id.0, mitigation_id.0, id.0, |current| SubActionPatch {
            title: patch.title.clone(),
            completed: patch.completed.or(Some(current.completed)),
        })
        .await?;
        Ok(Updated::Ok(Json(row)))
    }

    /// Toggle a sub-action
    ///
    /// Flips `completed`.
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions/:id/toggle",
        method = "post",
        operation_id = "toggleSubAction"
    )]
    async fn toggle_subaction(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
    ) -> Result<Updated<SubAction>, ApiError> {
        let row = change_subaction(&state, &auth, risk_id.0, mitigation_id.0, id.0, |current| SubActionPatch {
            title: None,
            completed: Some(!current.completed),
        })
        .await?;
        Ok(Updated::Ok(Json(row)))
    }

    /// Delete a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions/:id",
        method = "delete",
        operation_id = "deleteSubAction"
    )]
    async fn delete_subaction(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        let (tenant, id) = (auth.0.tenant_id, id.0);
        let write = Write::begin(&state, &auth, Role::Analyst).await?;
        let row = state
            .db
            .timed(
                "subaction_get",
                crate::db::risks::find_subaction(&write.txn, tenant, risk_id.0, mitigation_id.0, id),
            )
            .await?
            .ok_or_else(|| ApiError::not_found("sub-action", id))?;
        state.db.timed("subaction_delete", writes::delete_subaction(&write.txn, row.id)).await?;
        write.commit(&state).await?;
        Ok(NoContent::Done)
    }
}

/// Applies the patch computed from the current row to a sub-action, in one transaction.
async fn change_subaction(
    state: &AppState,
    auth: &BearerAuth,
    risk: Uuid,
    mitigation: Uuid,
    id: Uuid,
    patch: impl FnOnce(&subactions::Model) -> SubActionPatch,
) -> Result<SubAction, ApiError> {
    let tenant = auth.0.tenant_id;
    let write = Write::begin(state, auth, Role::Analyst).await?;
    let current = state
        .db
        .timed("subaction_get", crate::db::risks::find_subaction(&write.txn, tenant, risk, mitigation, id))
        .await?
        .ok_or_else(|| ApiError::not_found("sub-action", id))?;
    let patch = patch(&current);
    let row = state.db.timed("subaction_update", writes::update_subaction(&write.txn, current, patch)).await?;
    write.commit(state).await?;
    Ok(SubAction::from(row))
}
