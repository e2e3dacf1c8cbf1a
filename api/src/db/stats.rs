//! Aggregates over a tenant's risks, mitigations and score history.

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use uuid::Uuid;

use super::stmt;

/// Counts by status and severity, the mean score and mitigation counts, in one statement.
#[derive(Debug, Clone, FromQueryResult)]
pub struct StatsRow {
    pub total: i64,
    pub draft: i64,
    pub active: i64,
    pub mitigated: i64,
    pub accepted: i64,
    pub low: i64,
    pub medium: i64,
    pub high: i64,
    pub critical: i64,
    pub average_score: f64,
    pub planned: i64,
    pub in_progress: i64,
    pub done: i64,
}

pub async fn stats(db: &impl ConnectionTrait, tenant: Uuid) -> Result<StatsRow, DbErr> {
    let row = StatsRow::find_by_statement(stmt(
        "WITH live AS (SELECT id, status, severity, score FROM risks WHERE tenant_id = $1 AND deleted_at IS NULL),
              mit AS (SELECT m.status FROM mitigations m JOIN live ON live.id = m.risk_id WHERE m.tenant_id = $1)
         SELECT (SELECT count(*) FROM live) AS total,
                (SELECT count(*) FROM live WHERE status = 'DRAFT') AS draft,
                (SELECT count(*) FROM live WHERE status = 'ACTIVE') AS active,
                (SELECT count(*) FROM live WHERE status = 'MITIGATED') AS mitigated,
                (SELECT count(*) FROM live WHERE status = 'ACCEPTED') AS accepted,
                (SELECT count(*) FROM live WHERE severity = 'LOW') AS low,
                (SELECT count(*) FROM live WHERE severity = 'MEDIUM') AS medium,
                (SELECT count(*) FROM live WHERE severity = 'HIGH') AS high,
                (SELECT count(*) FROM live WHERE severity = 'CRITICAL') AS critical,
                (SELECT coalesce(round(avg(score), 2), 0)::float8 FROM live) AS average_score,
                (SELECT count(*) FROM mit WHERE status = 'PLANNED') AS planned,
                (SELECT count(*) FROM mit WHERE status = 'IN_PROGRESS') AS in_progress,
                (SELECT count(*) FROM mit WHERE status = 'DONE') AS done",
        [tenant.into()],
    ))
    .one(db)
    .await?;
    row.ok_or_else(|| DbErr::RecordNotFound("stats row".into()))
}

#[derive(Debug, FromQueryResult)]
struct MatrixCell {
    impact: i16,
    probability: i16,
    count: i64,
}

/// Live risks counted per impact (rows) × probability (columns), 5 × 5.
pub async fn risk_matrix(db: &impl ConnectionTrait, tenant: Uuid) -> Result<Vec<Vec<i64>>, DbErr> {
    let cells = MatrixCell::find_by_statement(stmt(
        "SELECT impact, probability, count(*) AS count FROM risks \
         WHERE tenant_id = $1 AND deleted_at IS NULL GROUP BY impact, probability",
        [tenant.into()],
    ))
    .all(db)
    .await?;
    let mut matrix = vec![vec![0_i64; 5]; 5];
    for cell in cells {
        let (i, p) = (usize::try_from(cell.impact - 1), usize::try_from(cell.probability - 1));
        if let (Ok(i @ 0..5), Ok(p @ 0..5)) = (i, p) {
            matrix[i][p] = cell.count;
        }
    }
    Ok(matrix)
}

/// One day of history.
#[derive(Debug, Clone, FromQueryResult)]
pub struct TrendRow {
    pub day: NaiveDate,
    pub average_score: Option<f64>,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
}

/// The last `days` days (UTC) up to `today`, with the history recorded on each.
pub async fn trends(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    today: NaiveDate,
    days: u32,
) -> Result<Vec<TrendRow>, DbErr> {
    TrendRow::find_by_statement(stmt(
        "SELECT d.day::date AS day,
                round(avg(h.score) FILTER (WHERE h.change_type <> 'DELETED'), 2)::float8 AS average_score,
                count(h.id) FILTER (WHERE h.change_type = 'CREATED') AS created,
                count(h.id) FILTER (WHERE h.change_type IN ('UPDATED', 'RESTORED')) AS updated,
                count(h.id) FILTER (WHERE h.change_type = 'DELETED') AS deleted
         FROM generate_series($2::date - ($3::int - 1), $2::date, interval '1 day') AS d(day)
         LEFT JOIN risk_history h
                ON h.tenant_id = $1
               AND h.recorded_at >= d.day::date::timestamp AT TIME ZONE 'UTC'
               AND h.recorded_at < (d.day::date + 1)::timestamp AT TIME ZONE 'UTC'
         GROUP BY d.day ORDER BY d.day",
        [tenant.into(), today.into(), i32::try_from(days).unwrap_or(i32::MAX).into()],
    ))
    .all(db)
    .await
}
