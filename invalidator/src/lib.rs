//! The OpenRisk cache invalidator: turns committed Postgres changes (rows in `cache_outbox`,
//! written by the `cache_watch` triggers) into exact Redis invalidations. Any number of replicas
//! share the outbox; each event is acknowledged only after Redis confirmed it.

pub mod cli;
pub mod health;
pub mod held_back;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod reach;
pub mod tenants;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openrisk_shared::Settings;
use openrisk_shared::config::WakeMode;
use openrisk_shared::http_server::{LimitedAcceptor, ServeTimeouts, serve};
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::{RedisUrlError, Timeouts};
pub use openrisk_shared::tasks::TaskEnded;
use openrisk_shared::tasks::Tasks;
use poem::listener::TcpAcceptor;
use tokio_util::sync::CancellationToken;

use listener::Wakeups;
pub use metrics::Metrics;
pub use worker::{Status, Worker};

/// A running replica: the worker, its LISTEN task (in listen mode), the backlog sampler and the
/// HTTP endpoints.
pub struct Running {
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    pub status: Arc<Status>,
    shutdown: CancellationToken,
    tasks: Tasks,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    RedisUrl(#[from] RedisUrlError),
    #[error("invalid Redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How often the Redis Cluster's health is polled.
const CLUSTER_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Starts a replica; `settings.metrics_addr` may use port 0 (tests).
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let status = Arc::new(Status::default());
    let shutdown = CancellationToken::new();

    let addr = settings.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let metrics_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let acceptor = TcpAcceptor::from_tokio(listener).map_err(|source| StartError::Bind { addr, source })?;
    // The same limits as the API's ports: a client of the health port cannot hold more than
    // `http.max_connections` of the process's sockets, or any of them without making requests.
    let idle_timeout = Duration::from_millis(settings.http.idle_timeout_ms);
    let acceptor = LimitedAcceptor::new(acceptor, settings.http.max_connections, idle_timeout);
    let timeouts = ServeTimeouts {
        headers: Some(idle_timeout),
        requestless: Some(idle_timeout),
        shutdown_grace: Duration::from_secs(1),
    };
    let cluster = ClusterWatch::new(&metrics.registry, settings.keyspace())?;
    let endpoints = health::routes(metrics.clone(), status.clone(), cluster.clone());
    let mut tasks = Tasks::default();
    tasks.spawn("health endpoint", serve(acceptor, endpoints, timeouts, shutdown.clone().cancelled_owned()));
    tasks.spawn(
        "backlog sampler",
        health::sample_backlog(
            settings.database_url.clone(),
            settings.database.link(),
            Duration::from_millis(settings.invalidator.ready_max_lag_ms),
            metrics.clone(),
            status.clone(),
            shutdown.clone(),
        ),
    );
    let wakeups = (settings.invalidator.mode == WakeMode::Listen).then(|| Arc::new(Wakeups::default()));
    if let Some(wakeups) = &wakeups {
        tasks.spawn("listener", listener::run(wakeups.clone(), settings.clone(), metrics.clone(), shutdown.clone()));
    }
    let worker = Worker::new(settings.clone(), metrics.clone(), status.clone(), wakeups, cluster.clone())?;
    let worker_shutdown = shutdown.clone();
    let prober = worker.clone();
    tasks.spawn("worker", async move { worker.run(worker_shutdown).await });
    let redis = settings.redis_target()?;
    if redis.is_cluster() {
        let follow_shutdown = shutdown.clone();
        tasks.spawn("held tenants' master changes", async move {
            tokio::select! {
                () = prober.follow_master_changes() => {}
                () = follow_shutdown.cancelled() => {}
            }
        });
        let watch_connection = redis.connect_lazily(Timeouts::all(CLUSTER_WATCH_INTERVAL), CLUSTER_WATCH_INTERVAL)?;
        let watch_shutdown = shutdown.clone();
        tasks.spawn("cluster watch", async move {
            tokio::select! {
                () = cluster.run(watch_connection, CLUSTER_WATCH_INTERVAL) => {}
                () = watch_shutdown.cancelled() => {}
            }
        });
    }
    tracing::info!(%metrics_addr, mode = ?settings.invalidator.mode, "invalidator started");
    Ok(Running { metrics_addr, metrics, status, shutdown, tasks })
}

impl Running {
    /// Resolves when one of the replica's tasks ends before [`Running::shutdown`]: the replica
    /// no longer does all its work and should exit (its supervisor restarts it).
    pub async fn failed(&mut self) -> TaskEnded {
        self.tasks.ended().await
    }

    /// Asks every task to stop and waits up to `timeout` for them (the worker finishes or
    /// releases its batch). Returns false when the timeout cut the wait short.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.join(timeout).await
    }

    /// Aborts every task at once, as a crash would (connections close, claimed rows are released).
    pub fn abort(self) {
        self.tasks.abort();
    }
}
