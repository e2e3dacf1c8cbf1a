//! Request and response bodies of the API, as they appear in the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object};
use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::auth::Role;
use crate::db::entities::{api_tokens, assets, mitigations, risks, subactions};

pub use crate::stored_enum::{UnknownStoredValue, enum_text, stored};

mod calendar_date;
mod change;
pub mod custom_fields;
mod examples;
mod stats;
mod text;

pub use calendar_date::CalendarDate;
pub use change::{Change, NULL_CANNOT_CLEAR};

pub use stats::{MitigationStatusCounts, RiskMatrix, SeverityCounts, Stats, StatusCounts, TrendPoint, Trends};
pub use text::{NUL_IN_TEXT, Text};

/// Where a risk is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RiskStatus {
    Draft,
    Active,
    Mitigated,
    Accepted,
}

/// Severity band of a score: LOW < 6 ≤ MEDIUM < 12 ≤ HIGH < 20 ≤ CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Where a risk was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RiskSource {
    Manual,
    Thehive,
    Openrmf,
}

/// How much an asset matters; weighs the score of the risks linked to it (0.8, 1, 1.25, 1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Criticality {
    Low,
    Medium,
    High,
    Critical,
}

/// Progress of a mitigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MitigationStatus {
    Planned,
    InProgress,
    Done,
}

/// Field the risk list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RiskSortField {
    Score,
    CreatedAt,
    UpdatedAt,
    Title,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SortDirection {
    Asc,
    Desc,
}

/// A risk as listed (without what it embeds).
#[derive(Debug, Clone, Object)]
#[oai(example, skip_serializing_if_is_none)]
pub struct Risk {
    /// Identifier, assigned by the server.
    pub id: Uuid,
    /// Short name of the risk.
    pub title: String,
    /// Longer account of the risk; empty when none was given.
    pub description: String,
    /// Impact, 1 (negligible) to 5 (severe).
    pub impact: i16,
    /// Probability, 1 (rare) to 5 (almost certain).
    pub probability: i16,
    /// impact × probability × the mean criticality factor of the linked assets (1 without assets).
    pub score: f64,
    pub severity: Severity,
    pub status: RiskStatus,
    /// Free labels, for filtering and grouping.
    pub tags: Vec<String>,
    /// Who is accountable for the risk.
    pub owner: String,
    pub source: RiskSource,
    /// Identifier in the source system, unique per tenant and source.
    pub external_id: Option<String>,
    /// Free-form attributes.
    pub custom_fields: BTreeMap<String, serde_json::Value>,
    /// Compliance frameworks the risk maps to (e.g. ISO27001).
    pub frameworks: Vec<String>,
    /// When the risk was recorded (UTC).
    pub created_at: DateTime<Utc>,
    /// When the risk last changed (UTC).
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<risks::Model> for Risk {
    type Error = UnknownStoredValue;

    fn try_from(row: risks::Model) -> Result<Self, UnknownStoredValue> {
        let custom_fields = match row.custom_fields {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Ok(Risk {
            id: row.id,
            title: row.title,
            description: row.description,
            impact: row.impact,
            probability: row.probability,
            score: row.score.to_f64().unwrap_or_default(),
            severity: stored("risks.severity", &row.severity)?,
            status: stored("risks.status", &row.status)?,
            tags: row.tags,
            owner: row.owner,
            source: stored("risks.source", &row.source)?,
            external_id: row.external_id,
            custom_fields,
            frameworks: row.frameworks,
            created_at: row.created_at.to_utc(),
            updated_at: row.updated_at.to_utc(),
        })
    }
}

/// A page of risks.
#[derive(Debug, Clone, Object)]
pub struct RiskPage {
    /// The risks of this page, in the order asked for.
    pub items: Vec<Risk>,
    /// Risks matching the filters, over all pages.
    pub total: i64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size asked for; the last page may hold fewer.
    pub limit: u32,
}

/// A risk with everything it embeds.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct RiskDetail {
    #[oai(flatten)]
    pub risk: Risk,
    /// Its mitigations, oldest first, each with its sub-actions.
    pub mitigations: Vec<Mitigation>,
    /// Assets the risk affects; their criticality weighs the score.
    pub assets: Vec<Asset>,
}

/// A new risk.
// `skip_serializing_if_is_none`: the example leaves out the optional fields it does not set
// instead of showing them as `null`, which their schemas do not allow.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields, example, skip_serializing_if_is_none)]
pub struct RiskCreate {
    /// Short name of the risk, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Text,
    /// Longer account of the risk; empty when left out.
    #[oai(default, validator(max_length = 10000))]
    pub description: Text,
    /// Impact, 1 (negligible) to 5 (severe).
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub impact: i16,
    /// Probability, 1 (rare) to 5 (almost certain).
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub probability: i16,
    /// Defaults to DRAFT.
    pub status: Option<RiskStatus>,
    /// Free labels of 1–64 characters, at most 50, each once; none when left out.
    #[oai(default, validator(max_items = 50, unique_items, min_length = 1, max_length = 64))]
    pub tags: Vec<Text>,
    /// Who is accountable for the risk; empty when left out.
    #[oai(default, validator(max_length = 255))]
    pub owner: Text,
    /// Defaults to MANUAL.
    pub source: Option<RiskSource>,
    /// Identifier in the source system, unique per tenant and source.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub external_id: Option<Text>,
    /// Free-form attributes, as a JSON object; none when left out. Numbers up to ±1e300 with at
    /// most 300 decimals; at most 64 KiB with every number written out without an exponent.
    #[oai(default)]
    pub custom_fields: BTreeMap<String, serde_json::Value>,
    /// Compliance frameworks the risk maps to (e.g. ISO27001), 1–64 characters, at most 50, each once.
    #[oai(default, validator(max_items = 50, unique_items, min_length = 1, max_length = 64))]
    pub frameworks: Vec<Text>,
}

/// Changes to a risk; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RiskPatch {
    /// New short name, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Change<Text>,
    /// New longer account.
    #[oai(validator(max_length = 10000))]
    pub description: Change<Text>,
    /// New impact, 1 (negligible) to 5 (severe); the score is recomputed.
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub impact: Change<i16>,
    /// New probability, 1 (rare) to 5 (almost certain); the score is recomputed.
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub probability: Change<i16>,
    pub status: Change<RiskStatus>,
    /// The labels that replace the current ones, 1–64 characters each, at most 50, each once.
    #[oai(validator(max_items = 50, unique_items, min_length = 1, max_length = 64))]
    pub tags: Change<Vec<Text>>,
    /// New accountable owner.
    #[oai(validator(max_length = 255))]
    pub owner: Change<Text>,
    pub source: Change<RiskSource>,
    /// `null` removes the external id.
    #[oai(nullable, validator(min_length = 1, max_length = 255))]
    pub external_id: MaybeUndefined<Text>,
    /// The attributes that replace the current ones, as a JSON object (limits as on creation).
    pub custom_fields: Change<BTreeMap<String, serde_json::Value>>,
    /// The frameworks that replace the current ones, 1–64 characters each, at most 50, each once.
    #[oai(validator(max_items = 50, unique_items, min_length = 1, max_length = 64))]
    pub frameworks: Change<Vec<Text>>,
}

/// A mitigation with its sub-actions.
#[derive(Debug, Clone, Object)]
#[oai(example, skip_serializing_if_is_none)]
pub struct Mitigation {
    /// Identifier, assigned by the server.
    pub id: Uuid,
    /// The risk it mitigates.
    pub risk_id: Uuid,
    /// Short name of the mitigation.
    pub title: String,
    /// Who carries it out.
    pub assignee: String,
    pub status: MitigationStatus,
    /// Percent done, 0–100.
    pub progress: i16,
    /// When it is due; absent when no date is set.
    pub due_date: Option<CalendarDate>,
    /// Relative cost, 1 (low) to 3 (high).
    pub cost: i16,
    /// Estimated effort in days.
    pub mitigation_time_days: i32,
    /// Its sub-actions, oldest first.
    pub subactions: Vec<SubAction>,
    /// When the mitigation was recorded (UTC).
    pub created_at: DateTime<Utc>,
    /// When the mitigation last changed (UTC).
    pub updated_at: DateTime<Utc>,
}

impl Mitigation {
    pub fn from_rows(row: mitigations::Model, subactions: Vec<subactions::Model>) -> Result<Self, UnknownStoredValue> {
        Ok(Mitigation {
            id: row.id,
            risk_id: row.risk_id,
            title: row.title,
            assignee: row.assignee,
            status: stored("mitigations.status", &row.status)?,
            progress: row.progress,
            due_date: row.due_date.map(CalendarDate::from),
            cost: row.cost,
            mitigation_time_days: row.mitigation_time_days,
            subactions: subactions.into_iter().map(SubAction::from).collect(),
            created_at: row.created_at.to_utc(),
            updated_at: row.updated_at.to_utc(),
        })
    }
}

/// A new mitigation of a risk.
#[derive(Debug, Clone, Object)]
#[oai(example, deny_unknown_fields)]
pub struct MitigationCreate {
    /// Short name of the mitigation, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Text,
    /// Who carries it out; empty when left out.
    #[oai(default, validator(max_length = 255))]
    pub assignee: Text,
    /// Defaults to PLANNED.
    pub status: Option<MitigationStatus>,
    /// Percent done, 0–100; 0 when left out.
    #[oai(default, validator(minimum(value = "0"), maximum(value = "100")))]
    pub progress: i16,
    /// A date from 0001-01-01 to 9999-12-31.
    pub due_date: Option<CalendarDate>,
    /// Defaults to 1.
    #[oai(validator(minimum(value = "1"), maximum(value = "3")))]
    pub cost: Option<i16>,
    /// Estimated effort in days, 0–3650; 0 when left out.
    #[oai(default, validator(minimum(value = "0"), maximum(value = "3650")))]
    pub mitigation_time_days: i32,
}

/// Changes to a mitigation; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct MitigationPatch {
    /// New short name, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Change<Text>,
    /// New assignee.
    #[oai(validator(max_length = 255))]
    pub assignee: Change<Text>,
    pub status: Change<MitigationStatus>,
    /// Percent done, 0–100.
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub progress: Change<i16>,
    /// A date from 0001-01-01 to 9999-12-31; `null` removes the due date.
    #[oai(nullable)]
    pub due_date: MaybeUndefined<CalendarDate>,
    /// Relative cost, 1 (low) to 3 (high).
    #[oai(validator(minimum(value = "1"), maximum(value = "3")))]
    pub cost: Change<i16>,
    /// Estimated effort in days, 0–3650.
    #[oai(validator(minimum(value = "0"), maximum(value = "3650")))]
    pub mitigation_time_days: Change<i32>,
}

/// One checklist item of a mitigation.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct SubAction {
    /// Identifier, assigned by the server.
    pub id: Uuid,
    /// The mitigation it belongs to.
    pub mitigation_id: Uuid,
    /// What is to be done.
    pub title: String,
    /// Whether it is done.
    pub completed: bool,
    /// When the sub-action was recorded (UTC).
    pub created_at: DateTime<Utc>,
    /// When the sub-action last changed (UTC).
    pub updated_at: DateTime<Utc>,
}

impl From<subactions::Model> for SubAction {
    fn from(row: subactions::Model) -> Self {
        SubAction {
            id: row.id,
            mitigation_id: row.mitigation_id,
            title: row.title,
            completed: row.completed,
            created_at: row.created_at.to_utc(),
            updated_at: row.updated_at.to_utc(),
        }
    }
}

/// A new sub-action.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SubActionCreate {
    /// What is to be done, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Text,
    /// Whether it is already done; false when left out.
    #[oai(default)]
    pub completed: bool,
}

/// Changes to a sub-action; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SubActionPatch {
    /// New text, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub title: Change<Text>,
    /// Whether it is done.
    pub completed: Change<bool>,
}

/// Something risks can affect.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Asset {
    /// Identifier, assigned by the server.
    pub id: Uuid,
    /// Name of the asset.
    pub name: String,
    /// Kind of asset (server, application, dataset, …).
    pub asset_type: String,
    pub criticality: Criticality,
    /// Who is responsible for the asset; empty when none was given.
    pub owner: String,
    /// When the asset was recorded (UTC).
    pub created_at: DateTime<Utc>,
    /// When the asset last changed (UTC).
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<assets::Model> for Asset {
    type Error = UnknownStoredValue;

    fn try_from(row: assets::Model) -> Result<Self, UnknownStoredValue> {
        Ok(Asset {
            id: row.id,
            name: row.name,
            asset_type: row.asset_type,
            criticality: stored("assets.criticality", &row.criticality)?,
            owner: row.owner,
            created_at: row.created_at.to_utc(),
            updated_at: row.updated_at.to_utc(),
        })
    }
}

/// A page of assets.
#[derive(Debug, Clone, Object)]
pub struct AssetPage {
    /// The assets of this page, by name.
    pub items: Vec<Asset>,
    /// Assets matching the filters, over all pages.
    pub total: i64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size asked for; the last page may hold fewer.
    pub limit: u32,
}

/// A new asset.
#[derive(Debug, Clone, Object)]
#[oai(example, deny_unknown_fields)]
pub struct AssetCreate {
    /// Name of the asset, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub name: Text,
    /// Kind of asset (server, application, dataset, …), 1–64 characters.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub asset_type: Text,
    /// Defaults to MEDIUM.
    pub criticality: Option<Criticality>,
    /// Who is responsible for the asset; empty when left out.
    #[oai(default, validator(max_length = 255))]
    pub owner: Text,
}

/// Changes to an asset; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct AssetPatch {
    /// New name, not blank.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "[^\\s\\u0085\\uFEFF]"))]
    pub name: Change<Text>,
    /// New kind of asset, 1–64 characters.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub asset_type: Change<Text>,
    pub criticality: Change<Criticality>,
    /// New responsible owner.
    #[oai(validator(max_length = 255))]
    pub owner: Change<Text>,
}

/// An API token, without its secret.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TokenInfo {
    /// Identifier of the token, to revoke it by.
    pub id: Uuid,
    /// The name given at creation; empty when none was.
    pub name: String,
    pub role: Role,
    /// When the token was created (UTC).
    pub created_at: DateTime<Utc>,
    /// Refreshed at most once per token-cache period.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the token was revoked (UTC); absent while it is valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<api_tokens::Model> for TokenInfo {
    type Error = UnknownStoredValue;

    fn try_from(row: api_tokens::Model) -> Result<Self, UnknownStoredValue> {
        Ok(TokenInfo {
            id: row.id,
            name: row.name,
            role: stored("api_tokens.role", &row.role)?,
            created_at: row.created_at.to_utc(),
            last_used_at: row.last_used_at.map(|at| at.to_utc()),
            revoked_at: row.revoked_at.map(|at| at.to_utc()),
        })
    }
}

/// A new token for the caller's tenant.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct TokenCreate {
    /// A name to recognise the token by; empty when left out.
    #[oai(default, validator(max_length = 255))]
    pub name: Text,
    pub role: Role,
}

/// A freshly created token; the secret is shown only here.
#[derive(Debug, Clone, Object)]
pub struct TokenCreated {
    /// Identifier of the token, to revoke it by.
    pub id: Uuid,
    /// The bearer token. Store it now: only its hash is kept.
    pub token: String,
    pub role: Role,
    /// The name given.
    pub name: String,
}
