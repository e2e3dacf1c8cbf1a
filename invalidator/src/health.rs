//! The replica's own HTTP endpoints (`METRICS_ADDR`): /metrics, /healthz, /readyz, and the
//! sampler that keeps the backlog gauges, the "caught up" flag and the connection gauge current.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::web::Data;
use poem::{EndpointExt, IntoResponse, Response, Route, get, handler};
use tokio_util::sync::CancellationToken;

use openrisk_shared::config::PostgresLink;
use openrisk_shared::redis_cluster::ClusterWatch;

use crate::metrics::Metrics;
use crate::outbox;
use crate::worker::Status;

/// How often the backlog gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How long one backlog sample may run (the sampler session's `statement_timeout`). A sample held
/// up longer, by a lock on the outbox tables (a migration, a `VACUUM FULL`), is cancelled by the
/// server and counts as none, so `/readyz` stops saying "caught up" instead of repeating the last
/// good sample for as long as the lock lasts.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

#[handler]
fn metrics_endpoint(Data(metrics): Data<&Metrics>) -> Response {
    Response::builder()
        .content_type(openrisk_shared::metrics::CONTENT_TYPE)
        .body(openrisk_shared::metrics::render(&metrics.registry))
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// Ready when connected to Postgres and Redis and the outbox is caught up; also shows the Redis
/// Cluster's health when there is one.
#[handler]
fn readyz(Data(status): Data<&Arc<Status>>, Data(cluster): Data<&ClusterWatch>) -> Response {
    let body = serde_json::json!({
        "postgres": status.postgres_connected.load(Ordering::Relaxed),
        "redis": status.redis_connected.load(Ordering::Relaxed),
        "caught_up": status.caught_up.load(Ordering::Relaxed),
        "redis_cluster": cluster.latest(),
    });
    let code = if status.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    poem::web::Json(body).with_status(code).into_response()
}

/// The routes served on `METRICS_ADDR`.
pub fn routes(metrics: Metrics, status: Arc<Status>, cluster: ClusterWatch) -> impl poem::Endpoint {
    Route::new()
        .at("/metrics", get(metrics_endpoint))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .data(metrics)
        .data(status)
        .data(cluster)
}

/// Samples the outbox backlog every second until shutdown (its own connection, reconnecting),
/// and exports whether the replica reaches both servers as `openrisk_invalidator_connected`.
pub async fn sample_backlog(
    database_url: String,
    link: PostgresLink,
    ready_max_lag: Duration,
    metrics: Metrics,
    status: Arc<Status>,
    shutdown: CancellationToken,
) {
    let mut client = None;
    let mut failing = false;
    let mut last_sample: Option<LastSample> = None;
    loop {
        match sample_once(&mut client, &database_url, &link).await {
            Ok((rows, oldest_age)) => {
                metrics.outbox_backlog.set(rows);
                metrics.oldest_event_age_seconds.set(oldest_age);
                status.caught_up.store(oldest_age < ready_max_lag.as_secs_f64(), Ordering::Relaxed);
                last_sample = Some(LastSample { taken: Instant::now(), oldest_age });
                if std::mem::replace(&mut failing, false) {
                    tracing::info!("the outbox backlog is sampled again");
                }
            }
            Err(error) => {
                status.caught_up.store(false, Ordering::Relaxed);
                metrics
                    .oldest_event_age_seconds
                    .set(last_sample.as_ref().map_or(f64::INFINITY, LastSample::oldest_age_bound));
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "cannot sample the outbox backlog; not ready until it can");
                }
            }
        }
        metrics.connected.set(i64::from(status.connected()));
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The last backlog sample that succeeded: when, and the age of the oldest event then.
struct LastSample {
    taken: Instant,
    oldest_age: f64,
}

impl LastSample {
    /// The most the oldest event pending now can have waited, while samples fail: it was pending
    /// at the last sample, or committed since. The age gauge shows this rather than repeat the
    /// last sample, so the age alert fires while a lock on the outbox stalls every claim and every
    /// sample alike (the backlog gauge keeps its last value: it has no such bound). A replica
    /// that has never sampled knows no bound: it shows `+Inf` rather than the gauge's initial 0.
    fn oldest_age_bound(&self) -> f64 {
        self.oldest_age + self.taken.elapsed().as_secs_f64()
    }
}

/// Why a backlog sample failed (logged when sampling starts to fail).
#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[from] openrisk_shared::db::ConnectError),
    #[error("the sample failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// One sample of the backlog (rows, age of the oldest in seconds) on the sampler's own session,
/// opened first when there is none.
async fn sample_once(
    client: &mut Option<tokio_postgres::Client>,
    database_url: &str,
    link: &PostgresLink,
) -> Result<(i64, f64), SampleError> {
    let mut session = match client.take() {
        Some(open) if !open.is_closed() => open,
        _ => openrisk_shared::db::connect(database_url, "openrisk-invalidator-sampler", link).await?,
    };
    let sample = backlog_within_timeout(&mut session).await;
    *client = Some(session);
    Ok(sample?)
}

/// The backlog, its statement limited to [`SAMPLE_TIMEOUT`] by `SET LOCAL`, so the limit ends with
/// the transaction rather than reach, through a transaction pooler, whichever client gets the
/// server connection next.
async fn backlog_within_timeout(session: &mut tokio_postgres::Client) -> Result<(i64, f64), tokio_postgres::Error> {
    let transaction = session.transaction().await?;
    transaction.batch_execute(&format!("SET LOCAL statement_timeout = {}", SAMPLE_TIMEOUT.as_millis())).await?;
    let sample = outbox::backlog(&transaction).await?;
    transaction.commit().await?;
    Ok(sample)
}
