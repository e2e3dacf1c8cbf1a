//! `/api/v1/stats`: aggregates over the tenant's risks, mitigations and history.

use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Query};

use super::caller::Caller;
use super::{ApiTags, Cached, body_of};
use crate::db::stats::{StatsRow, TrendRow};
use crate::error::ApiError;
use crate::model::{MitigationStatusCounts, RiskMatrix, SeverityCounts, Stats, StatusCounts, TrendPoint, Trends};

/// Aggregate operations.
pub struct StatsApi;

fn default_days() -> u32 {
    30
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Stats")]
impl StatsApi {
    /// Totals
    ///
    /// Live risks by status and severity, their mean score, and mitigations by status. Served
    /// from the cache until a risk or mitigation of the tenant changes.
    #[oai(path = "/stats", method = "get", operation_id = "getStats")]
    async fn stats(
        &self,
        caller: Caller,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Stats>, ApiError> {
        let tenant = caller.tenant();
        let read = super::cacheable::stats(tenant);
        caller
            .serve(read, if_none_match.0, move |state, reader| async move {
                let row = state.db.timed("stats", crate::db::stats::stats(&reader.conn(), tenant)).await?;
                Ok(body_of(&Stats::from(row)))
            })
            .await
    }

    /// Risk matrix
    ///
    /// Live risks counted by impact × probability. Served from the cache until a risk changes.
    #[oai(path = "/stats/risk-matrix", method = "get", operation_id = "getRiskMatrix")]
    async fn risk_matrix(
        &self,
        caller: Caller,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<RiskMatrix>, ApiError> {
        let tenant = caller.tenant();
        caller
            .serve(super::cacheable::risk_matrix(tenant), if_none_match.0, move |state, reader| async move {
                let counts =
                    state.db.timed("risk_matrix", crate::db::stats::risk_matrix(&reader.conn(), tenant)).await?;
                let total = counts.iter().flatten().sum();
                Ok(body_of(&RiskMatrix { counts, total }))
            })
            .await
    }

    /// Trends
    ///
    /// Daily mean score and counts of creations, changes and deletions from the score history,
    /// for the last `days` days (UTC). Served from the cache until the history grows or the day
    /// changes.
    #[oai(path = "/stats/trends", method = "get", operation_id = "getTrends")]
    async fn trends(
        &self,
        caller: Caller,
        /// Number of days, 1–365, ending today.
        #[oai(default = "default_days", validator(minimum(value = "1"), maximum(value = "365")))]
        days: Query<u32>,
        /// Entity tag of a copy the client holds; a match answers 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<Cached<Trends>, ApiError> {
        let (tenant, days) = (caller.tenant(), days.0);
        let today = chrono::Utc::now().date_naive();
        let read = super::cacheable::trends(tenant, days, today);
        caller
            .serve(read, if_none_match.0, move |state, reader| async move {
                let rows =
                    state.db.timed("trends", crate::db::stats::trends(&reader.conn(), tenant, today, days)).await?;
                Ok(body_of(&Trends { days, points: rows.into_iter().map(TrendPoint::from).collect() }))
            })
            .await
    }
}

impl From<StatsRow> for Stats {
    fn from(row: StatsRow) -> Self {
        Stats {
            total_risks: row.total,
            by_status: StatusCounts {
                draft: row.draft,
                active: row.active,
                mitigated: row.mitigated,
                accepted: row.accepted,
            },
            by_severity: SeverityCounts { low: row.low, medium: row.medium, high: row.high, critical: row.critical },
            average_score: row.average_score,
            mitigations_by_status: MitigationStatusCounts {
                planned: row.planned,
                in_progress: row.in_progress,
                done: row.done,
            },
        }
    }
}

impl From<TrendRow> for TrendPoint {
    fn from(row: TrendRow) -> Self {
        TrendPoint {
            day: row.day.into(),
            average_score: row.average_score,
            created: row.created,
            updated: row.updated,
            deleted: row.deleted,
        }
    }
}
