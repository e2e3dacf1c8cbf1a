//! Queries on risks, their mitigations, sub-actions and asset links. Every query is scoped to
//! one tenant; a row of another tenant is indistinguishable from a missing one.

use sea_orm::sea_query::{Expr, LockType, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QueryResult,
    QuerySelect, QueryTrait, Select,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::entities::{assets, mitigations, risks, subactions};
use super::list::{Conditions, Page};
use super::stmt;
use crate::model::{RiskSortField, RiskStatus, Severity, SortDirection, enum_text};
use crate::paging::{PageNumber, PageSize};

/// Normalised filters of the risk list (also the cache key's parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct RiskFilter {
    /// Trimmed search text, matched case-insensitively in title and description.
    pub q: Option<String>,
    pub status: Option<RiskStatus>,
    pub severity: Option<Severity>,
    pub score: ScoreRange,
    pub tag: Option<String>,
    pub owner: Option<String>,
    pub order: RiskOrder,
    pub page: PageNumber,
    pub limit: PageSize,
}

/// The order of the risk list: a field and a direction (ties broken by id, the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskOrder {
    pub by: RiskSortField,
    pub direction: SortDirection,
}

impl RiskOrder {
    /// The `ORDER BY` clause.
    fn sql(self) -> String {
        let column = match self.by {
            RiskSortField::Score => "score",
            RiskSortField::CreatedAt => "created_at",
            RiskSortField::UpdatedAt => "updated_at",
            RiskSortField::Title => "title",
        };
        let direction = match self.direction {
            SortDirection::Asc => "ASC",
            SortDirection::Desc => "DESC",
        };
        format!("{column} {direction}, id {direction}")
    }
}

/// The score filters of the risk list, each a bound on the score grid (see [`ScoreBound`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreRange {
    pub min: Option<ScoreBound>,
    pub max: Option<ScoreBound>,
}

impl ScoreRange {
    /// The range a client's `min_score` and `max_score` select.
    pub fn new(min: Option<f64>, max: Option<f64>) -> Self {
        Self { min: min.map(ScoreBound::at_least), max: max.map(ScoreBound::at_most) }
    }
}

/// A score filter as the query uses it: a value of the `numeric(6,2)` score column, so every
/// bound a client may write that selects the same risks is one value (and one cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreBound(rust_decimal::Decimal);

impl ScoreBound {
    /// Scores have two decimals: `score >= x` selects the same rows as `score >= ceil₂(x)`.
    pub fn at_least(bound: f64) -> Self {
        Self::rounded(bound, rust_decimal::RoundingStrategy::ToPositiveInfinity)
    }

    /// Scores have two decimals: `score <= x` selects the same rows as `score <= floor₂(x)`.
    pub fn at_most(bound: f64) -> Self {
        Self::rounded(bound, rust_decimal::RoundingStrategy::ToNegativeInfinity)
    }

    /// `bound` as Postgres reads a `float8` as `numeric` (15 significant digits), then on the
    /// score grid. Zero of either sign is zero; a magnitude below 1e-10 rounds as 1e-10 does
    /// (both lie between two grid points) and stays within `Decimal`'s range.
    fn rounded(bound: f64, strategy: rust_decimal::RoundingStrategy) -> Self {
        let bound = if bound != 0.0 && bound.abs() < 1e-10 { 1e-10f64.copysign(bound) } else { bound };
        let read = rust_decimal::Decimal::from_scientific(&format!("{bound:.14e}")).unwrap_or_default();
        let on_grid = read.round_dp_with_strategy(2, strategy).normalize();
        Self(if on_grid.is_zero() { rust_decimal::Decimal::ZERO } else { on_grid })
    }

    pub fn value(self) -> rust_decimal::Decimal {
        self.0
    }
}

impl std::fmt::Display for ScoreBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One page of live risks matching `filter`, and how many match in all.
pub async fn list(db: &impl ConnectionTrait, tenant: Uuid, filter: &RiskFilter) -> Result<Page<risks::Model>, DbErr> {
    let mut conditions = Conditions::of_tenant(tenant);
    conditions.always("deleted_at IS NULL");
    conditions.search(&["title", "description"], filter.q.as_deref());
    conditions.add("status = ?", filter.status.as_ref().map(enum_text));
    conditions.add("severity = ?", filter.severity.as_ref().map(enum_text));
    conditions.add("score >= ?", filter.score.min.map(ScoreBound::value));
    conditions.add("score <= ?", filter.score.max.map(ScoreBound::value));
    conditions.add("tags @> ARRAY[?::text]", filter.tag.clone());
    conditions.add("owner = ?", filter.owner.clone());
    conditions.page::<risks::Entity>(db, "risks", &filter.order.sql(), filter.page, filter.limit).await
}

/// A live (not soft-deleted) risk of the tenant, locked against concurrent changes until the
/// transaction ends.
pub async fn lock_live(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<Option<risks::Model>, DbErr> {
    risks::Entity::find_by_id(id)
        .filter(risks::Column::TenantId.eq(tenant))
        .filter(risks::Column::DeletedAt.is_null())
        .lock_exclusive()
        .one(db)
        .await
}

/// Sub-actions of a mitigation, oldest first.
pub async fn subactions_of(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    mitigation: Uuid,
) -> Result<Vec<subactions::Model>, DbErr> {
    subactions::Entity::find()
        .filter(subactions::Column::TenantId.eq(tenant))
        .filter(subactions::Column::MitigationId.eq(mitigation))
        .order_by_asc(subactions::Column::CreatedAt)
        .order_by_asc(subactions::Column::Id)
        .all(db)
        .await
}

/// A live risk with everything its detail embeds: its mitigations with their sub-actions, oldest
/// first, and the assets linked to it, by name.
#[derive(Debug)]
pub struct RiskWithChildren {
    pub risk: risks::Model,
    pub mitigations: Vec<MitigationWithSubactions>,
    pub assets: Vec<assets::Model>,
}

/// One mitigation and its sub-actions, oldest first, as `mitigation_json!` embeds them.
#[derive(Debug, Deserialize)]
pub struct MitigationWithSubactions {
    pub mitigation: mitigations::Model,
    pub subactions: Vec<subactions::Model>,
}

/// SQL: the JSON of mitigation row `m` with its sub-actions, oldest first, as
/// [`MitigationWithSubactions`] reads it.
macro_rules! mitigation_json {
    () => {
        "json_build_object(
            'mitigation', m,
            'subactions', (SELECT coalesce(json_agg(s ORDER BY s.created_at, s.id), '[]')
                             FROM mitigation_subactions s
                            WHERE s.tenant_id = m.tenant_id AND s.mitigation_id = m.id))"
    };
}

/// A live risk of the tenant with its mitigations, sub-actions and assets, in one statement: one
/// round trip and one connection for a detail's miss, and every part read from the same
/// snapshot, so the detail never mixes a risk before a change with its children after it.
pub async fn with_children(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<RiskWithChildren>, DbErr> {
    const SQL: &str = concat!(
        "SELECT r.*,
           (SELECT coalesce(json_agg(",
        mitigation_json!(),
        " ORDER BY m.created_at, m.id), '[]')
              FROM mitigations m
             WHERE m.tenant_id = r.tenant_id AND m.risk_id = r.id) AS embedded_mitigations,
           (SELECT coalesce(json_agg(a ORDER BY a.name, a.id), '[]')
              FROM assets a JOIN risk_assets ra ON ra.tenant_id = a.tenant_id AND ra.asset_id = a.id
             WHERE ra.tenant_id = r.tenant_id AND ra.risk_id = r.id) AS embedded_assets
      FROM risks r
     WHERE r.tenant_id = $1 AND r.id = $2 AND r.deleted_at IS NULL"
    );
    let Some(row) = db.query_one_raw(stmt(SQL, [tenant.into(), id.into()])).await? else {
        return Ok(None);
    };
    Ok(Some(RiskWithChildren {
        risk: risks::Model::from_query_result(&row, "")?,
        mitigations: embedded(&row, "embedded_mitigations")?,
        assets: embedded(&row, "embedded_assets")?,
    }))
}

/// A mitigation of a live risk with its sub-actions, in one statement (one round trip, one
/// snapshot), as a mitigation's read serves it.
pub async fn mitigation_with_subactions(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    id: Uuid,
) -> Result<Option<MitigationWithSubactions>, DbErr> {
    const SQL: &str = concat!(
        "SELECT ",
        mitigation_json!(),
        " AS embedded
      FROM mitigations m
      JOIN risks r ON r.tenant_id = m.tenant_id AND r.id = m.risk_id AND r.deleted_at IS NULL
     WHERE m.tenant_id = $1 AND m.risk_id = $2 AND m.id = $3"
    );
    match db.query_one_raw(stmt(SQL, [tenant.into(), risk.into(), id.into()])).await? {
        Some(row) => Ok(Some(embedded(&row, "embedded")?)),
        None => Ok(None),
    }
}

/// Rows a statement embedded as JSON in `column`, decoded.
fn embedded<T: DeserializeOwned>(row: &QueryResult, column: &str) -> Result<T, DbErr> {
    let json: serde_json::Value = row.try_get("", column)?;
    serde_json::from_value(json).map_err(|error| DbErr::Json(format!("rows embedded as {column}: {error}")))
}

/// Soft-deletes a live risk; false when there is none.
pub async fn soft_delete(db: &impl ConnectionTrait, tenant: Uuid, id: Uuid) -> Result<bool, DbErr> {
    let result = risks::Entity::update_many()
        .col_expr(risks::Column::DeletedAt, Expr::cust("now()"))
        .col_expr(risks::Column::UpdatedAt, Expr::cust("now()"))
        .filter(risks::Column::Id.eq(id))
        .filter(risks::Column::TenantId.eq(tenant))
        .filter(risks::Column::DeletedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// A mitigation of a live risk, in one statement (the risk's liveness and the row from one
/// snapshot).
pub async fn find_mitigation(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    id: Uuid,
) -> Result<Option<mitigations::Model>, DbErr> {
    mitigation_of_live_risk(tenant, risk, id).one(db).await
}

/// [`find_mitigation`] for a write that adds a child to it (a sub-action): the row is locked
/// against deletion (`FOR KEY SHARE`, what the child's foreign key check takes anyway) until the
/// transaction ends, so a concurrent delete either comes first and this finds nothing (404) or
/// waits for the child to be committed and deletes it too; never the foreign key error between.
pub async fn find_mitigation_to_extend(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    id: Uuid,
) -> Result<Option<mitigations::Model>, DbErr> {
    mitigation_of_live_risk(tenant, risk, id).lock(LockType::KeyShare).one(db).await
}

/// [`find_mitigation`] for a write that changes or deletes it: the row is locked (`FOR UPDATE`;
/// the risk, read in a sub-query, is not) until the transaction ends, so no other change of it
/// comes between this read and the write, and a concurrent delete that comes first leaves
/// nothing to find (404).
pub async fn find_mitigation_to_change(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    id: Uuid,
) -> Result<Option<mitigations::Model>, DbErr> {
    mitigation_of_live_risk(tenant, risk, id).lock_exclusive().one(db).await
}

/// A sub-action of a mitigation of a live risk, locked until the transaction ends (so
/// concurrent toggles serialise), in one statement. Only the sub-action's row is locked: the
/// mitigation and the risk are read in sub-queries, which `FOR UPDATE` does not reach.
pub async fn find_subaction(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    risk: Uuid,
    mitigation: Uuid,
    id: Uuid,
) -> Result<Option<subactions::Model>, DbErr> {
    let mitigation_id =
        mitigation_of_live_risk(tenant, risk, mitigation).select_only().column(mitigations::Column::Id).into_query();
    subactions::Entity::find_by_id(id)
        .filter(subactions::Column::TenantId.eq(tenant))
        .filter(subactions::Column::MitigationId.in_subquery(mitigation_id))
        .lock_exclusive()
        .one(db)
        .await
}

/// Mitigation `id` of `risk` if the risk is a live risk of `tenant`: the one definition both
/// writes' lookups use.
fn mitigation_of_live_risk(tenant: Uuid, risk: Uuid, id: Uuid) -> Select<mitigations::Entity> {
    mitigations::Entity::find_by_id(id)
        .filter(mitigations::Column::TenantId.eq(tenant))
        .filter(mitigations::Column::RiskId.in_subquery(live_risk(tenant, risk)))
}

/// The id of `risk` if it is a live risk of `tenant` (a sub-query: no row when it is not).
fn live_risk(tenant: Uuid, risk: Uuid) -> SelectStatement {
    Query::select()
        .column(risks::Column::Id)
        .from(risks::Entity)
        .and_where(risks::Column::Id.eq(risk))
        .and_where(risks::Column::TenantId.eq(tenant))
        .and_where(risks::Column::DeletedAt.is_null())
        .to_owned()
}

/// What linking a risk and an asset found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// They were not linked; now they are.
    Made,
    /// They were linked already, and stay so.
    Kept,
    /// The tenant has no such live risk or no such asset.
    SideMissing,
}

/// Links a live risk and an asset of the tenant (idempotent). Both rows are locked as they are
/// read, so a delete of either committing meanwhile is waited for and makes the link's side
/// missing (a 404), rather than breaking the foreign key (which would read as a 422) or linking a
/// risk deleted meanwhile. The asset is locked first, `FOR SHARE` (as the link's trigger holds
/// it, see migration 0011), which its `DELETE` and any change of it wait for: a change of its
/// criticality locks the asset, then re-scores the risks linked to it, so a link that held the
/// risk first and then waited for the asset deadlocked with it. The risk is locked after, as
/// its re-score will update it (`FOR NO KEY UPDATE`, which its soft delete, an `UPDATE`, waits
/// for, as do other links of it: a shared lock would have two of them deadlock upgrading it).
pub async fn link_asset(db: &impl ConnectionTrait, tenant: Uuid, risk: Uuid, asset: Uuid) -> Result<Linking, DbErr> {
    db.execute_raw(stmt(
        "SELECT 1 FROM assets WHERE tenant_id = $1 AND id = $2 FOR SHARE",
        [tenant.into(), asset.into()],
    ))
    .await?;
    let linked = db
        .execute_raw(stmt(
            "INSERT INTO risk_assets (tenant_id, risk_id, asset_id) \
             SELECT r.tenant_id, r.id, a.id FROM risks r JOIN assets a ON a.tenant_id = r.tenant_id \
             WHERE r.tenant_id = $1 AND r.id = $2 AND r.deleted_at IS NULL AND a.id = $3 \
             FOR NO KEY UPDATE OF r FOR KEY SHARE OF a \
             ON CONFLICT DO NOTHING",
            [tenant.into(), risk.into(), asset.into()],
        ))
        .await?;
    if linked.rows_affected() == 1 {
        return Ok(Linking::Made);
    }
    // Nothing inserted: either it was already linked or a side is missing.
    #[derive(FromQueryResult)]
    struct Exists {
        present: bool,
    }
    let exists = Exists::find_by_statement(stmt(
        "SELECT EXISTS (SELECT 1 FROM risk_assets ra JOIN risks r ON r.tenant_id = ra.tenant_id AND r.id = ra.risk_id \
         WHERE ra.tenant_id = $1 AND ra.risk_id = $2 AND ra.asset_id = $3 AND r.deleted_at IS NULL) AS present",
        [tenant.into(), risk.into(), asset.into()],
    ))
    .one(db)
    .await?;
    Ok(if exists.is_some_and(|row| row.present) { Linking::Kept } else { Linking::SideMissing })
}

/// Removes the link between a live risk and an asset; false when there was none.
pub async fn unlink_asset(db: &impl ConnectionTrait, tenant: Uuid, risk: Uuid, asset: Uuid) -> Result<bool, DbErr> {
    let result = db
        .execute_raw(stmt(
            "DELETE FROM risk_assets ra USING risks r \
             WHERE ra.tenant_id = $1 AND ra.risk_id = $2 AND ra.asset_id = $3 \
               AND r.tenant_id = ra.tenant_id AND r.id = ra.risk_id AND r.deleted_at IS NULL",
            [tenant.into(), risk.into(), asset.into()],
        ))
        .await?;
    Ok(result.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::ScoreBound;

    /// A bound as Postgres compared it before normalisation: `$1::float8::numeric`.
    fn as_postgres_read(bound: f64) -> Decimal {
        Decimal::from_scientific(&format!("{bound:.14e}")).unwrap()
    }

    proptest! {
        /// Every score of the column's grid is selected by the normalised bound exactly when the
        /// bound as sent selected it, so requests whose normalised bounds are equal (one cache
        /// key) are requests with the same answer.
        #[test]
        fn normalised_score_bounds_select_the_same_scores(bound in 1e-9f64..1000.0, cents in 0i64..=100_000) {
            let score = Decimal::new(cents, 2);
            let read = as_postgres_read(bound);
            prop_assert_eq!(score >= read, score >= ScoreBound::at_least(bound).value());
            prop_assert_eq!(score <= read, score <= ScoreBound::at_most(bound).value());
        }

        /// Bounds between the same two grid points share one normalised value (and key text).
        #[test]
        fn bounds_between_two_grid_points_share_one_key(cents in 0i64..100_000, a in 0.0001f64..0.0099, b in 0.0001f64..0.0099) {
            let base = cents as f64 / 100.0;
            prop_assert_eq!(ScoreBound::at_least(base + a).to_string(), ScoreBound::at_least(base + b).to_string());
            prop_assert_eq!(ScoreBound::at_most(base + a).to_string(), ScoreBound::at_most(base + b).to_string());
        }
    }

    #[test]
    fn zero_of_either_sign_and_tiny_bounds_normalise_to_grid_values() {
        for (bound, at_least, at_most) in [
            (0.0, "0", "0"),
            (-0.0, "0", "0"),
            (0.000000123, "0.01", "0"),
            (5e-324, "0.01", "0"),
            (4.0, "4", "4"),
            (4.000000000001, "4.01", "4"),
            (0.58, "0.58", "0.58"),
            (12.5, "12.5", "12.5"),
            (1000.0, "1000", "1000"),
        ] {
            assert_eq!(ScoreBound::at_least(bound).to_string(), at_least, "at_least({bound:e})");
            assert_eq!(ScoreBound::at_most(bound).to_string(), at_most, "at_most({bound:e})");
        }
    }
}
