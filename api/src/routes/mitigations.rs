//! `/api/v1/risks/{risk_id}/mitigations`: mitigations of a risk and their sub-actions.

use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::caller::{Caller, Write};
use super::{ApiTags, Cached, NoContent, Revised, Updated, body_of};
use crate::app::AppState;
use crate::db::entities::{mitigations, subactions};
use crate::db::writes;
use crate::error::{ApiError, OrNotFound};
use crate::model::{Change, Mitigation, MitigationCreate, MitigationPatch, SubAction, SubActionCreate, SubActionPatch};

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
    let subs = state.db.timed("subaction_list", crate::db::risks::subactions_of(db, tenant, row.id)).await?;
    Ok(Mitigation::from_rows(row, subs)?)
}

/// The mitigation `id` of `risk`, locked until the write ends (so no other change of it comes
/// between this read and the write), and checked against the write's preconditions when it has any.
async fn find_for_write(
    write: &Write,
    risk: Uuid,
    id: Uuid,
    if_match: Option<&str>,
) -> Result<mitigations::Model, ApiError> {
    let (txn, tenant) = (&write.txn, write.tenant);
    let lock = write.timed("mitigation_lock", crate::db::risks::find_mitigation_to_change(txn, tenant, risk, id));
    let conditions = write.conditions(if_match);
    if conditions.is_empty() {
        return lock.await?.or_not_found("mitigation", id);
    }
    let current_body = |row: &mitigations::Model| {
        let row = row.clone();
        async move { Ok(body_of(&mitigation_view(&write.state, txn, tenant, row).await?)) }
    };
    super::lock_for_write("mitigation", id, lock, conditions, current_body).await
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
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Mitigation>, ApiError> {
        let (tenant, risk, id) = (caller.tenant(), risk_id.0, id.0);
        let read = super::cacheable::mitigation(tenant, risk, id);
        caller
            .serve(read, if_none_match.0, move |state, reader| async move {
                let conn = reader.conn();
                let read = crate::db::risks::mitigation_with_subactions(&conn, tenant, risk, id);
                let row = state.db.timed("mitigation_detail", read).await?.or_not_found("mitigation", id)?;
                Ok(body_of(&Mitigation::from_rows(row.mitigation, row.subactions)?))
            })
            .await
    }

    /// Create a mitigation
    #[oai(path = "/risks/:risk_id/mitigations", method = "post", operation_id = "createMitigation")]
    async fn create(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        body: Json<MitigationCreate>,
    ) -> Result<MitigationCreated, ApiError> {
        let (risk, body) = (risk_id.0, body.0);
        let insert = async |write: &Write| {
            let lock = crate::db::risks::lock_live(&write.txn, write.tenant, risk);
            write.timed("risk_lock", lock).await?.or_not_found("risk", risk)?;
            write.check_create(false)?;
            Ok(write
                .timed("mitigation_insert", writes::insert_mitigation(&write.txn, write.tenant, risk, body))
                .await?)
        };
        let row = caller.write(insert).await?;
        let location = format!("/api/v1/risks/{risk}/mitigations/{}", row.id);
        Ok(MitigationCreated::Created(Json(Mitigation::from_rows(row, Vec::new())?), location))
    }

    /// Change a mitigation
    ///
    /// Only the fields present change.
    #[oai(path = "/risks/:risk_id/mitigations/:id", method = "patch", operation_id = "updateMitigation")]
    async fn update(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: Json<MitigationPatch>,
    ) -> Result<Revised<Mitigation>, ApiError> {
        let patch = body.0;
        let update = async |write: &Write| {
            let current = find_for_write(write, risk_id.0, id.0, if_match.0.as_deref()).await?;
            let row = write.timed("mitigation_update", writes::update_mitigation(&write.txn, current, patch)).await?;
            mitigation_view(&write.state, &write.txn, write.tenant, row).await
        };
        Ok(Revised::as_served(caller.write(update).await?))
    }

    /// Delete a mitigation
    ///
    /// Deletes the mitigation and its sub-actions.
    #[oai(path = "/risks/:risk_id/mitigations/:id", method = "delete", operation_id = "deleteMitigation")]
    async fn delete(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        id: Path<Uuid>,
        /// Entity tag from a GET of this resource: the change is made only if it is still current
        /// (otherwise 412 with the current `ETag`).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        let delete = async |write: &Write| {
            let row = find_for_write(write, risk_id.0, id.0, if_match.0.as_deref()).await?;
            let deleted = write.timed("mitigation_delete", writes::delete_mitigation(&write.txn, row.id)).await?;
            super::found(deleted, "mitigation", row.id)
        };
        caller.write(delete).await
    }

    /// Add a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions",
        method = "post",
        operation_id = "createSubAction"
    )]
    async fn create_subaction(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        body: Json<SubActionCreate>,
    ) -> Result<SubActionCreated, ApiError> {
        let (risk, mitigation) = (risk_id.0, mitigation_id.0);
        let insert = async |write: &Write| {
            let find = crate::db::risks::find_mitigation_to_extend(&write.txn, write.tenant, risk, mitigation);
            write.timed("mitigation_get", find).await?.or_not_found("mitigation", mitigation)?;
            write.check_create(false)?;
            let insert = writes::insert_subaction(&write.txn, write.tenant, mitigation, body.0);
            Ok(write.timed("subaction_insert", insert).await?)
        };
        Ok(SubActionCreated::Created(Json(SubAction::from(caller.write(insert).await?))))
    }

    /// Change a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions/:id",
        method = "patch",
        operation_id = "updateSubAction"
    )]
    async fn update_subaction(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
        body: Json<SubActionPatch>,
    ) -> Result<Updated<SubAction>, ApiError> {
        let SubActionPatch { title, completed } = body.0;
        let subaction = SubActionRef { risk: risk_id.0, mitigation: mitigation_id.0, id: id.0 };
        let patch = |current: &subactions::Model| SubActionPatch {
            title,
            completed: Change(completed.0.or(Some(current.completed))),
        };
        Ok(Updated::Ok(Json(change_subaction(&caller, subaction, patch).await?)))
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
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
    ) -> Result<Updated<SubAction>, ApiError> {
        let subaction = SubActionRef { risk: risk_id.0, mitigation: mitigation_id.0, id: id.0 };
        let toggle = |current: &subactions::Model| SubActionPatch {
            title: Change(None),
            completed: Change(Some(!current.completed)),
        };
        Ok(Updated::Ok(Json(change_subaction(&caller, subaction, toggle).await?)))
    }

    /// Delete a sub-action
    #[oai(
        path = "/risks/:risk_id/mitigations/:mitigation_id/subactions/:id",
        method = "delete",
        operation_id = "deleteSubAction"
    )]
    async fn delete_subaction(
        &self,
        caller: Caller,
        /// Risk id.
        risk_id: Path<Uuid>,
        /// Mitigation id.
        mitigation_id: Path<Uuid>,
        /// Sub-action id.
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        let subaction = SubActionRef { risk: risk_id.0, mitigation: mitigation_id.0, id: id.0 };
        let delete = async |write: &Write| {
            let row = subaction.find(write).await?;
            let deleted = write.timed("subaction_delete", writes::delete_subaction(&write.txn, row.id)).await?;
            super::found(deleted, "sub-action", row.id)
        };
        caller.write(delete).await
    }
}

/// A sub-action as its path names it: its risk, its mitigation and its own id.
#[derive(Clone, Copy)]
struct SubActionRef {
    risk: Uuid,
    mitigation: Uuid,
    id: Uuid,
}

impl SubActionRef {
    /// The sub-action as `write` sees it, locked; 404 when the path names none, 412 when the
    /// request's preconditions refuse a change of it (it has no entity tag of its own).
    async fn find(self, write: &Write) -> Result<subactions::Model, ApiError> {
        let find = crate::db::risks::find_subaction(&write.txn, write.tenant, self.risk, self.mitigation, self.id);
        let row = write.timed("subaction_get", find).await?.or_not_found("sub-action", self.id)?;
        write.check_untagged(true)?;
        Ok(row)
    }
}

/// Applies the patch computed from the current row to a sub-action, in one write.
async fn change_subaction(
    caller: &Caller,
    subaction: SubActionRef,
    patch: impl FnOnce(&subactions::Model) -> SubActionPatch + Clone,
) -> Result<SubAction, ApiError> {
    let update = async |write: &Write| {
        let current = subaction.find(write).await?;
        let patch = patch(&current);
        Ok(write.timed("subaction_update", writes::update_subaction(&write.txn, current, patch)).await?)
    };
    Ok(SubAction::from(caller.write(update).await?))
}
