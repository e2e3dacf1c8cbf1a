//! Request and response bodies of the API, as they appear in the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use poem_openapi::types::{Example, MaybeUndefined};
use poem_openapi::{Enum, Object};
use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::auth::Role;
use crate::db::entities::{api_tokens, assets, mitigations, risks, subactions};

pub use crate::stored_enum::{UnknownStoredValue, enum_text, stored};

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
    pub id: Uuid,
    /// Short name of the risk.
    pub title: String,
    pub description: String,
    /// Impact, 1 (negligible) to 5 (severe).
    pub impact: i16,
    /// Probability, 1 (rare) to 5 (almost certain).
    pub probability: i16,
    /// impact × probability × the mean criticality factor of the linked assets (1 without assets).
    pub score: f64,
    pub severity: Severity,
    pub status: RiskStatus,
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
    pub created_at: DateTime<Utc>,
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

impl Example for Risk {
    fn example() -> Self {
        let at = DateTime::parse_from_rfc3339("2026-01-15T09:30:00Z").expect("valid").to_utc();
        Risk {
            id: Uuid::nil(),
            title: "Ransomware on the file servers".into(),
            description: "Encryption of shared drives through a phishing foothold.".into(),
            impact: 5,
            probability: 3,
            score: 18.75,
            severity: Severity::High,
            status: RiskStatus::Active,
            tags: vec!["ransomware".into(), "endpoint".into()],
            owner: "ciso@example.com".into(),
            source: RiskSource::Manual,
            external_id: None,
            custom_fields: BTreeMap::new(),
            frameworks: vec!["ISO27001".into()],
            created_at: at,
            updated_at: at,
        }
    }
}

/// A page of risks.
#[derive(Debug, Clone, Object)]
pub struct RiskPage {
    pub items: Vec<Risk>,
    /// Risks matching the filters, over all pages.
    pub total: i64,
    pub page: u32,
    pub limit: u32,
}

/// A risk with everything it embeds.
#[derive(Debug, Clone, Object)]
pub struct RiskDetail {
    #[oai(flatten)]
    pub risk: Risk,
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
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: String,
    #[oai(default, validator(max_length = 10000))]
    pub description: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub impact: i16,
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub probability: i16,
    /// Defaults to DRAFT.
    pub status: Option<RiskStatus>,
    #[oai(default, validator(max_items = 50, unique_items))]
    pub tags: Vec<Label>,
    #[oai(default, validator(max_length = 255))]
    pub owner: String,
    /// Defaults to MANUAL.
    pub source: Option<RiskSource>,
    #[oai(validator(min_length = 1, max_length = 255))]
    pub external_id: Option<String>,
    #[oai(default)]
    pub custom_fields: BTreeMap<String, serde_json::Value>,
    #[oai(default, validator(max_items = 50, unique_items))]
    pub frameworks: Vec<Label>,
}

impl Example for RiskCreate {
    fn example() -> Self {
        RiskCreate {
            title: "Ransomware on the file servers".into(),
            description: "Encryption of shared drives through a phishing foothold.".into(),
            impact: 5,
            probability: 3,
            status: Some(RiskStatus::Active),
            tags: vec![Label("ransomware".into())],
            owner: "ciso@example.com".into(),
            source: None,
            external_id: None,
            custom_fields: BTreeMap::new(),
            frameworks: vec![Label("ISO27001".into())],
        }
    }
}

// Not an invalidation tag (those are `openrisk_shared::Tag`); the doc line below is the spec's.
/// A label on a risk or a framework name: 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, poem_openapi::NewType)]
pub struct Label(#[oai(validator(min_length = 1, max_length = 64))] pub String);

/// Changes to a risk; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RiskPatch {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: Option<String>,
    #[oai(validator(max_length = 10000))]
    pub description: Option<String>,
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub impact: Option<i16>,
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub probability: Option<i16>,
    pub status: Option<RiskStatus>,
    #[oai(validator(max_items = 50, unique_items))]
    pub tags: Option<Vec<Label>>,
    #[oai(validator(max_length = 255))]
    pub owner: Option<String>,
    pub source: Option<RiskSource>,
    /// `null` removes the external id.
    #[oai(nullable, validator(min_length = 1, max_length = 255))]
    pub external_id: MaybeUndefined<String>,
    pub custom_fields: Option<BTreeMap<String, serde_json::Value>>,
    #[oai(validator(max_items = 50, unique_items))]
    pub frameworks: Option<Vec<Label>>,
}

/// A mitigation with its sub-actions.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Mitigation {
    pub id: Uuid,
    pub risk_id: Uuid,
    pub title: String,
    /// Who carries it out.
    pub assignee: String,
    pub status: MitigationStatus,
    /// Percent done, 0–100.
    pub progress: i16,
    pub due_date: Option<NaiveDate>,
    /// Relative cost, 1 (low) to 3 (high).
    pub cost: i16,
    /// Estimated effort in days.
    pub mitigation_time_days: i32,
    pub subactions: Vec<SubAction>,
    pub created_at: DateTime<Utc>,
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
            due_date: row.due_date,
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
#[oai(deny_unknown_fields)]
pub struct MitigationCreate {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: String,
    #[oai(default, validator(max_length = 255))]
    pub assignee: String,
    /// Defaults to PLANNED.
    pub status: Option<MitigationStatus>,
    #[oai(default, validator(minimum(value = "0"), maximum(value = "100")))]
    pub progress: i16,
    /// A date from 0001-01-01 to 9999-12-31.
    pub due_date: Option<NaiveDate>,
    /// Defaults to 1.
    #[oai(validator(minimum(value = "1"), maximum(value = "3")))]
    pub cost: Option<i16>,
    #[oai(default, validator(minimum(value = "0"), maximum(value = "3650")))]
    pub mitigation_time_days: i32,
}

/// Changes to a mitigation; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct MitigationPatch {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: Option<String>,
    #[oai(validator(max_length = 255))]
    pub assignee: Option<String>,
    pub status: Option<MitigationStatus>,
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub progress: Option<i16>,
    /// A date from 0001-01-01 to 9999-12-31; `null` removes the due date.
    #[oai(nullable)]
    pub due_date: MaybeUndefined<NaiveDate>,
    #[oai(validator(minimum(value = "1"), maximum(value = "3")))]
    pub cost: Option<i16>,
    #[oai(validator(minimum(value = "0"), maximum(value = "3650")))]
    pub mitigation_time_days: Option<i32>,
}

/// One checklist item of a mitigation.
#[derive(Debug, Clone, Object)]
pub struct SubAction {
    pub id: Uuid,
    pub mitigation_id: Uuid,
    pub title: String,
    pub completed: bool,
    pub created_at: DateTime<Utc>,
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
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: String,
    #[oai(default)]
    pub completed: bool,
}

/// Changes to a sub-action; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SubActionPatch {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub title: Option<String>,
    pub completed: Option<bool>,
}

/// Something risks can affect.
#[derive(Debug, Clone, Object)]
pub struct Asset {
    pub id: Uuid,
    pub name: String,
    /// Kind of asset (server, application, dataset, …).
    pub asset_type: String,
    pub criticality: Criticality,
    pub owner: String,
    pub created_at: DateTime<Utc>,
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
    pub items: Vec<Asset>,
    pub total: i64,
    pub page: u32,
    pub limit: u32,
}

/// A new asset.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct AssetCreate {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub name: String,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub asset_type: String,
    /// Defaults to MEDIUM.
    pub criticality: Option<Criticality>,
    #[oai(default, validator(max_length = 255))]
    pub owner: String,
}

/// Changes to an asset; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct AssetPatch {
    #[oai(validator(min_length = 1, max_length = 255, pattern = "\\S"))]
    pub name: Option<String>,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub asset_type: Option<String>,
    pub criticality: Option<Criticality>,
    #[oai(validator(max_length = 255))]
    pub owner: Option<String>,
}

/// Counts of live risks per status.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusCounts {
    pub draft: i64,
    pub active: i64,
    pub mitigated: i64,
    pub accepted: i64,
}

/// Counts of live risks per severity.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct SeverityCounts {
    pub low: i64,
    pub medium: i64,
    pub high: i64,
    pub critical: i64,
}

/// Counts of mitigations (of live risks) per status.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct MitigationStatusCounts {
    pub planned: i64,
    pub in_progress: i64,
    pub done: i64,
}

/// Totals over the tenant's live risks.
#[derive(Debug, Clone, Object)]
pub struct Stats {
    pub total_risks: i64,
    pub by_status: StatusCounts,
    pub by_severity: SeverityCounts,
    /// Mean score of live risks; 0 when there are none.
    pub average_score: f64,
    pub mitigations_by_status: MitigationStatusCounts,
}

/// Live risks counted by impact (rows) and probability (columns).
#[derive(Debug, Clone, Object)]
pub struct RiskMatrix {
    /// `counts[i][p]` is the number of risks with impact `i + 1` and probability `p + 1`.
    pub counts: Vec<Vec<i64>>,
    pub total: i64,
}

/// One day of score history.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TrendPoint {
    pub day: NaiveDate,
    /// Mean score recorded that day (creations and changes); absent on days without any.
    pub average_score: Option<f64>,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
}

/// Daily score history, oldest day first, ending today (UTC).
#[derive(Debug, Clone, Object)]
pub struct Trends {
    pub days: u32,
    pub points: Vec<TrendPoint>,
}

/// An API token, without its secret.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Refreshed at most once per token-cache period.
    pub last_used_at: Option<DateTime<Utc>>,
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
    #[oai(default, validator(max_length = 255))]
    pub name: String,
    pub role: Role,
}

/// A freshly created token; the secret is shown only here.
#[derive(Debug, Clone, Object)]
pub struct TokenCreated {
    pub id: Uuid,
    /// The bearer token. Store it now: only its hash is kept.
    pub token: String,
    pub role: Role,
    pub name: String,
}
