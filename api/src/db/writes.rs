//! The rows the write operations insert, change and delete, one function each. A create body
//! becomes a row with its defaults; a PATCH body changes only the fields it carries (and, when
//! one of them differs from what is stored, the database moves `updated_at`). Bodies arrive
//! checked (the routes refuse what Postgres could not store), and every function runs inside the
//! caller's write transaction.

use chrono::NaiveDate;
use poem_openapi::types::MaybeUndefined;
use sea_orm::{ActiveModelBehavior, ActiveValue, QuerySelect};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, Set};
use uuid::Uuid;

use super::entities::{assets, mitigations, risks, subactions};
use crate::model::{
    AssetCreate, AssetPatch, Criticality, MitigationCreate, MitigationPatch, MitigationStatus, RiskCreate, RiskPatch,
    RiskSource, RiskStatus, SubActionCreate, SubActionPatch, Text, enum_text,
};

/// `Set(value)` when the field is present and differs from what is stored; left as it is otherwise.
fn set_if_present<T: Into<sea_orm::Value> + PartialEq>(field: &mut ActiveValue<T>, value: impl Into<Option<T>>) {
    if let Some(value) = value.into() {
        field.set_ne(value);
    }
}

/// A nullable field of a PATCH: a value sets it, `null` clears it, absence leaves it.
fn set_nullable<T: PartialEq>(field: &mut ActiveValue<Option<T>>, value: MaybeUndefined<T>)
where
    Option<T>: Into<sea_orm::Value>,
{
    match value {
        MaybeUndefined::Value(value) => field.set_ne(Some(value)),
        MaybeUndefined::Null => field.set_ne(None),
        MaybeUndefined::Undefined => {}
    }
}

/// Writes the fields of `row` that changed; the database moves `updated_at` when one did
/// (migration 0019, by its own clock, the one `created_at` takes). A patch that changes nothing
/// still runs the `UPDATE` (so the row is locked, and one deleted meanwhile is a 404), writing
/// `updated_at` as it was: the capture trigger sees an identical row and writes no event, and the
/// resource keeps its `updated_at` and its entity tag, so no client's `If-Match` goes stale.
async fn update_changed<A>(
    db: &impl ConnectionTrait,
    mut row: A,
    updated_at: <A::Entity as EntityTrait>::Column,
) -> Result<<A::Entity as EntityTrait>::Model, DbErr>
where
    A: ActiveModelTrait + ActiveModelBehavior + Send,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    row.reset(updated_at);
    row.update(db).await
}

/// A list of texts as stored.
fn texts(list: Vec<Text>) -> Vec<String> {
    list.into_iter().map(String::from).collect()
}

/// The custom fields as stored: a JSON object, its numbers as Postgres prints them, so that a
/// patch sending what is stored in another notation changes nothing.
fn custom_fields_value(fields: std::collections::BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    crate::model::custom_fields::as_stored(serde_json::Value::Object(fields.into_iter().collect()))
}

pub async fn insert_risk(db: &impl ConnectionTrait, tenant: Uuid, body: RiskCreate) -> Result<risks::Model, DbErr> {
    risks::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant),
        title: Set(body.title.into()),
        description: Set(body.description.into()),
        impact: Set(body.impact),
        probability: Set(body.probability),
        status: Set(enum_text(&body.status.unwrap_or(RiskStatus::Draft))),
        tags: Set(texts(body.tags)),
        owner: Set(body.owner.into()),
        source: Set(enum_text(&body.source.unwrap_or(RiskSource::Manual))),
        external_id: Set(body.external_id.map(String::from)),
        custom_fields: Set(custom_fields_value(body.custom_fields)),
        frameworks: Set(texts(body.frameworks)),
        ..Default::default()
    }
    .insert(db)
    .await
}

pub async fn update_risk(
    db: &impl ConnectionTrait,
    current: risks::Model,
    patch: RiskPatch,
) -> Result<risks::Model, DbErr> {
    let mut row = current.into_active_model();
    set_if_present(&mut row.title, patch.title.map(String::from));
    set_if_present(&mut row.description, patch.description.map(String::from));
    set_if_present(&mut row.impact, patch.impact);
    set_if_present(&mut row.probability, patch.probability);
    set_if_present(&mut row.status, patch.status.as_ref().map(enum_text));
    set_if_present(&mut row.tags, patch.tags.map(texts));
    set_if_present(&mut row.owner, patch.owner.map(String::from));
    set_if_present(&mut row.source, patch.source.as_ref().map(enum_text));
    set_nullable(&mut row.external_id, patch.external_id.map_value(String::from));
    set_if_present(&mut row.custom_fields, patch.custom_fields.map(custom_fields_value));
    set_if_present(&mut row.frameworks, patch.frameworks.map(texts));
    update_changed(db, row, risks::Column::UpdatedAt).await
}

pub async fn insert_asset(db: &impl ConnectionTrait, tenant: Uuid, body: AssetCreate) -> Result<assets::Model, DbErr> {
    assets::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant),
        name: Set(body.name.into()),
        asset_type: Set(body.asset_type.into()),
        criticality: Set(enum_text(&body.criticality.unwrap_or(Criticality::Medium))),
        owner: Set(body.owner.into()),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// The asset, locked until the transaction ends.
pub async fn lock_asset(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<Option<assets::Model>, DbErr> {
    assets::Entity::find_by_id(id).filter(assets::Column::TenantId.eq(tenant)).lock_exclusive().one(db).await
}

pub async fn update_asset(
    db: &impl ConnectionTrait,
    current: assets::Model,
    patch: AssetPatch,
) -> Result<assets::Model, DbErr> {
    let mut row = current.into_active_model();
    set_if_present(&mut row.name, patch.name.map(String::from));
    set_if_present(&mut row.asset_type, patch.asset_type.map(String::from));
    set_if_present(&mut row.criticality, patch.criticality.as_ref().map(enum_text));
    set_if_present(&mut row.owner, patch.owner.map(String::from));
    update_changed(db, row, assets::Column::UpdatedAt).await
}

/// Deletes the asset (its links go with it); whether it existed.
pub async fn delete_asset(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<bool, DbErr> {
    let deleted = assets::Entity::delete_many()
        .filter(assets::Column::Id.eq(id))
        .filter(assets::Column::TenantId.eq(tenant))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected > 0)
}

pub async fn insert_mitigation(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    body: MitigationCreate,
) -> Result<mitigations::Model, DbErr> {
    mitigations::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant),
        risk_id: Set(risk),
        title: Set(body.title.into()),
        assignee: Set(body.assignee.into()),
        status: Set(enum_text(&body.status.unwrap_or(MitigationStatus::Planned))),
        progress: Set(body.progress),
        due_date: Set(body.due_date.map(NaiveDate::from)),
        cost: Set(body.cost.unwrap_or(1)),
        mitigation_time_days: Set(body.mitigation_time_days),
        ..Default::default()
    }
    .insert(db)
    .await
}

pub async fn update_mitigation(
    db: &impl ConnectionTrait,
    current: mitigations::Model,
    patch: MitigationPatch,
) -> Result<mitigations::Model, DbErr> {
    let mut row = current.into_active_model();
    set_if_present(&mut row.title, patch.title.map(String::from));
    set_if_present(&mut row.assignee, patch.assignee.map(String::from));
    set_if_present(&mut row.status, patch.status.as_ref().map(enum_text));
    set_if_present(&mut row.progress, patch.progress);
    set_nullable(&mut row.due_date, patch.due_date.map_value(NaiveDate::from));
    set_if_present(&mut row.cost, patch.cost);
    set_if_present(&mut row.mitigation_time_days, patch.mitigation_time_days);
    update_changed(db, row, mitigations::Column::UpdatedAt).await
}

/// Deletes the mitigation (its sub-actions go with it); whether it still existed (a concurrent
/// delete may have taken it since it was read).
pub async fn delete_mitigation(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    Ok(mitigations::Entity::delete_by_id(id).exec(db).await?.rows_affected > 0)
}

pub async fn insert_subaction(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    mitigation: Uuid,
    body: SubActionCreate,
) -> Result<subactions::Model, DbErr> {
    subactions::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant),
        mitigation_id: Set(mitigation),
        title: Set(body.title.into()),
        completed: Set(body.completed),
        ..Default::default()
    }
    .insert(db)
    .await
}

pub async fn update_subaction(
    db: &impl ConnectionTrait,
    current: subactions::Model,
    patch: SubActionPatch,
) -> Result<subactions::Model, DbErr> {
    let mut row = current.into_active_model();
    set_if_present(&mut row.title, patch.title.map(String::from));
    set_if_present(&mut row.completed, patch.completed);
    update_changed(db, row, subactions::Column::UpdatedAt).await
}

/// Deletes the sub-action; whether it still existed (as [`delete_mitigation`]).
pub async fn delete_subaction(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    Ok(subactions::Entity::delete_by_id(id).exec(db).await?.rows_affected > 0)
}
