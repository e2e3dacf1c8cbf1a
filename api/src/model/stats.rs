//! The tenant's totals, risk matrix and daily trends.

use poem_openapi::Object;

use super::CalendarDate;

/// Counts of live risks per status.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusCounts {
    /// Live risks in DRAFT.
    pub draft: i64,
    /// Live risks in ACTIVE.
    pub active: i64,
    /// Live risks in MITIGATED.
    pub mitigated: i64,
    /// Live risks in ACCEPTED.
    pub accepted: i64,
}

/// Counts of live risks per severity.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct SeverityCounts {
    /// Live risks of severity LOW.
    pub low: i64,
    /// Live risks of severity MEDIUM.
    pub medium: i64,
    /// Live risks of severity HIGH.
    pub high: i64,
    /// Live risks of severity CRITICAL.
    pub critical: i64,
}

/// Counts of mitigations (of live risks) per status.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct MitigationStatusCounts {
    /// Mitigations PLANNED.
    pub planned: i64,
    /// Mitigations IN_PROGRESS.
    pub in_progress: i64,
    /// Mitigations DONE.
    pub done: i64,
}

/// Totals over the tenant's live risks.
#[derive(Debug, Clone, Object)]
pub struct Stats {
    /// Live (not deleted) risks of the tenant.
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
    /// Live risks counted, the sum of `counts`.
    pub total: i64,
}

/// One day of score history.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TrendPoint {
    /// The day (UTC).
    pub day: CalendarDate,
    /// Mean score recorded that day (creations and changes); absent on days without any.
    pub average_score: Option<f64>,
    /// Risks created that day.
    pub created: i64,
    /// Changes to risks recorded that day (restores included).
    pub updated: i64,
    /// Risks deleted that day.
    pub deleted: i64,
}

/// Daily score history, oldest day first, ending today (UTC).
#[derive(Debug, Clone, Object)]
pub struct Trends {
    /// Days covered, today included.
    pub days: u32,
    /// One point per day, oldest first.
    pub points: Vec<TrendPoint>,
}
