//! Queries on assets, scoped to one tenant.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::entities::assets;
use super::list::{Conditions, Page};
use crate::model::{Criticality, enum_text};
use crate::paging::{PageNumber, PageSize};

/// Normalised filters of the asset list (also the cache key's parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetFilter {
    /// Trimmed text matched case-insensitively in the name.
    pub q: Option<String>,
    pub criticality: Option<Criticality>,
    pub asset_type: Option<String>,
    pub page: PageNumber,
    pub limit: PageSize,
}

/// One page of assets by name, and how many match in all.
pub async fn list(db: &impl ConnectionTrait, tenant: Uuid, filter: &AssetFilter) -> Result<Page<assets::Model>, DbErr> {
    let mut conditions = Conditions::of_tenant(tenant);
    conditions.search(&["name"], filter.q.as_deref());
    conditions.add("criticality = ?", filter.criticality.as_ref().map(enum_text));
    conditions.add("asset_type = ?", filter.asset_type.clone());
    conditions.page::<assets::Entity>(db, "assets", "name, id", filter.page, filter.limit).await
}

/// An asset of the tenant.
pub async fn find(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<Option<assets::Model>, DbErr> {
    assets::Entity::find_by_id(id).filter(assets::Column::TenantId.eq(tenant)).one(db).await
}
