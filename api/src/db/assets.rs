//! Queries on assets, scoped to one tenant.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, Value};
use uuid::Uuid;

use super::entities::assets;
use super::stmt;

/// Normalised filters of the asset list (also the cache key's parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetFilter {
    /// Lowercased text matched case-insensitively in the name.
    pub q: Option<String>,
    pub criticality: Option<String>,
    pub asset_type: Option<String>,
    pub page: u32,
    pub limit: u32,
}

#[derive(Debug, FromQueryResult)]
struct Total {
    total: i64,
}

/// One page of assets by name, and how many match in all.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    filter: &AssetFilter,
) -> Result<(Vec<assets::Model>, i64), DbErr> {
    let mut values: Vec<Value> = vec![tenant.into()];
    let mut clauses = vec!["tenant_id = $1".to_owned()];
    let mut add = |clause: &str, value: Value| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("${}", values.len())));
    };
    if let Some(q) = &filter.q {
        let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        add("name ILIKE ?", format!("%{escaped}%").into());
    }
    if let Some(criticality) = &filter.criticality {
        add("criticality = ?", criticality.clone().into());
    }
    if let Some(asset_type) = &filter.asset_type {
        add("asset_type = ?", asset_type.clone().into());
    }
    let predicate = clauses.join(" AND ");
    let total = Total::find_by_statement(stmt(
        &format!("SELECT count(*) AS total FROM assets WHERE {predicate}"),
        values.clone(),
    ))
    .one(db)
    .await?
    .map_or(0, |row| row.total);
    let offset = u64::from(filter.page - 1) * u64::from(filter.limit);
    let sql =
        format!("SELECT * FROM assets WHERE {predicate} ORDER BY name, id LIMIT {} OFFSET {offset}", filter.limit);
    let items = assets::Entity::find().from_raw_sql(stmt(&sql, values)).all(db).await?;
    Ok((items, total))
}

/// An asset of the tenant.
pub async fn find(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<Option<assets::Model>, DbErr> {
    assets::Entity::find_by_id(id).filter(assets::Column::TenantId.eq(tenant)).one(db).await
}
