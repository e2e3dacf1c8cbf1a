//! One replica's main loop: drain the outbox batch after batch, park and wait when it is empty,
//! reconnect forever with jittered exponential backoff when Postgres or Redis goes away.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use openrisk_shared::config::{Settings, WakeMode};
use openrisk_shared::db::Lsn;
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, InvalidateError, Reclaimable, ReplicaAck};
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use uuid::Uuid;

use openrisk_shared::redis_connection::RedisUrlError;

use crate::listener::Listener;
use crate::metrics::{Metrics, RECONNECT_LISTENER};
use crate::outbox::{self, Batch, ClaimedEvent};

/// Tags sent to Redis in one script call.
const TAGS_PER_CALL: usize = 512;

/// What /readyz reports on: connections up and the outbox caught up.
#[derive(Debug, Default)]
pub struct Status {
    pub postgres_connected: AtomicBool,
    pub redis_connected: AtomicBool,
    pub caught_up: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.postgres_connected.load(Ordering::Relaxed)
            && self.redis_connected.load(Ordering::Relaxed)
            && self.caught_up.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Applied, but not yet on enough Redis replicas to survive a failover: retried later.
    #[error("{0}; the events stay in the outbox and are applied again")]
    NotReplicated(String),
}

impl From<InvalidateError> for BatchError {
    fn from(error: InvalidateError) -> Self {
        match error {
            InvalidateError::Redis(error) => Self::Redis(error),
            not_replicated @ InvalidateError::NotReplicated { .. } => Self::NotReplicated(not_replicated.to_string()),
        }
    }
}

/// One invalidator replica.
#[derive(Clone)]
pub struct Worker {
    settings: Arc<Settings>,
    redis: RedisTarget,
    replica_ack: ReplicaAck,
    keyspace: Keyspace,
    metrics: Metrics,
    status: Arc<Status>,
    /// Whether a LISTEN connection was ever up, so later connects count as reconnects.
    listener_was_up: Arc<AtomicBool>,
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build()
}

/// Sleeps for `delay` unless shutdown comes first; returns false on shutdown.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

impl Worker {
    /// A replica for `settings`, whose Redis URL was validated when they were loaded.
    pub fn new(settings: Arc<Settings>, metrics: Metrics, status: Arc<Status>) -> Result<Self, RedisUrlError> {
        let keyspace = Keyspace::new(settings.cache.key_prefix.clone());
        let redis = settings.redis_target()?;
        let replica_ack = settings.replica_ack();
        Ok(Self { settings, redis, replica_ack, keyspace, metrics, status, listener_was_up: Arc::default() })
    }

    /// Runs until `shutdown` is cancelled; a batch in hand is finished (or, if it cannot be,
    /// released by rolling back) before returning.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut outbox: Option<Client> = None;
        let mut redis: Option<RedisConnection> = None;
        let mut listener: Option<Listener> = None;
        let mut backoff = reconnect_backoff();
        let (mut postgres_was_up, mut redis_was_up) = (false, false);
        while !shutdown.is_cancelled() {
            if outbox.as_ref().is_none_or(Client::is_closed) {
                self.status.postgres_connected.store(false, Ordering::Relaxed);
                match openrisk_shared::db::connect(
                    &self.settings.database_url,
                    "openrisk-invalidator",
                    &self.settings.database.link(),
                )
                .await
                {
                    Ok(client) => {
                        outbox = Some(client);
                        self.status.postgres_connected.store(true, Ordering::Relaxed);
                        self.count_reconnect("postgres", &mut postgres_was_up);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot reach Postgres; retrying");
                        if !pause(backoff.next().unwrap_or(Duration::from_secs(5)), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if redis.is_none() {
                match self.connect_redis().await {
                    Ok(connection) => {
                        redis = Some(connection);
                        self.status.redis_connected.store(true, Ordering::Relaxed);
                        self.count_reconnect("redis", &mut redis_was_up);
                    }
                    Err(error) => {
                        self.status.redis_connected.store(false, Ordering::Relaxed);
                        tracing::warn!(%error, "cannot reach Redis; retrying");
                        if !pause(backoff.next().unwrap_or(Duration::from_secs(5)), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let (Some(client), Some(connection)) = (outbox.as_mut(), redis.as_mut()) else { continue };
            match self.process_batch(client, connection).await {
                Ok(0) => {}
                Ok(_) => {
                    backoff = reconnect_backoff();
                    continue;
                }
                Err(error) => {
                    self.on_batch_error(&error, &mut outbox, &mut redis);
                    if !pause(backoff.next().unwrap_or(Duration::from_secs(5)), &shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            backoff = reconnect_backoff();
            if let Err(error) = self.idle(&mut listener, &mut outbox, &mut redis, &shutdown).await {
                self.on_batch_error(&error, &mut outbox, &mut redis);
            }
        }
        self.metrics.parked.set(0);
        self.metrics.listener_connected.set(0);
    }

    fn count_reconnect(&self, target: &str, was_up: &mut bool) {
        if *was_up {
            self.metrics.reconnects.with_label_values(&[target]).inc();
            tracing::info!(connection = target, "reconnected");
        }
        *was_up = true;
    }

    fn on_batch_error(&self, error: &BatchError, outbox: &mut Option<Client>, redis: &mut Option<RedisConnection>) {
        tracing::warn!(%error, "batch failed; its events stay in the outbox");
        match error {
            BatchError::Postgres(_) => {
                self.metrics.errors.with_label_values(&["postgres"]).inc();
                if outbox.as_ref().is_some_and(Client::is_closed) {
                    *outbox = None;
                }
            }
            BatchError::Redis(_) => {
                self.metrics.errors.with_label_values(&["redis"]).inc();
                self.status.redis_connected.store(false, Ordering::Relaxed);
                *redis = None;
            }
            BatchError::NotReplicated(_) => {
                self.metrics.errors.with_label_values(&["redis_replication"]).inc();
            }
        }
    }

    async fn connect_redis(&self) -> redis::RedisResult<RedisConnection> {
        // A reply may include a WAIT for replicas, so it may take that much longer.
        let response = Duration::from_secs(5) + self.replica_ack.timeout;
        let timeouts = Timeouts { connect: Duration::from_secs(2), response, overall: response * 2 };
        let mut connection = self.redis.connect(timeouts).await?;
        if let Err(error) = protocol::check_eviction_policy(&mut connection).await {
            tracing::warn!(%error, "could not read Redis eviction settings");
        }
        Ok(connection)
    }

    /// Claims one batch, applies it to Redis, then acknowledges it. Returns how many events it
    /// handled (0: the outbox had nothing unclaimed).
    #[tracing::instrument(name = "batch", skip_all, fields(size = Empty, tenants = Empty, lag_ms = Empty))]
    async fn process_batch(&self, client: &mut Client, redis: &mut RedisConnection) -> Result<usize, BatchError> {
        let transaction = client.transaction().await?;
        let batch = outbox::claim(&transaction, self.settings.invalidator.batch_size).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let span = tracing::Span::current();
        span.record("size", batch.len()).record("tenants", batch.tenants().as_str());
        let claimed_at = Instant::now();
        // On a Redis error the transaction is dropped and rolled back: the rows come back.
        let (tags, reclaimable) = self.apply(redis, &batch.events, batch.replayed_by).await?;
        let confirmed_after = claimed_at.elapsed();
        span.record("lag_ms", batch.max_lag_ms(confirmed_after));
        for poison in &batch.poison {
            tracing::warn!(event_id = poison.row.id, reason = %poison.reason, "poison event moved to cache_outbox_dead_letter");
        }
        outbox::dead_letter(&transaction, &batch).await?;
        transaction.commit().await?;
        self.record(&batch, tags, confirmed_after);
        self.reclaim_in_background(redis, reclaimable);
        Ok(batch.len())
    }

    /// Unlinks the entries of the member sets a batch moved aside, off the batch path: they can
    /// no longer be read, so this is only memory and must not delay the next batch.
    fn reclaim_in_background(&self, redis: &RedisConnection, reclaimable: Reclaimable) {
        if reclaimable.is_empty() {
            return;
        }
        let (mut redis, metrics) = (redis.clone(), self.metrics.clone());
        tokio::spawn(async move {
            match protocol::reclaim(&mut redis, &reclaimable).await {
                Ok(unlinked) => metrics.keys_deleted.inc_by(unlinked),
                Err(error) => tracing::warn!(%error, "reclaiming invalidated entries stopped; the rest expires"),
            }
        });
    }

    fn record(&self, batch: &Batch, tags: u64, confirmed_after: Duration) {
        let metrics = &self.metrics;
        metrics.batches.inc();
        metrics.batch_size.observe(batch.len() as f64);
        metrics.events_processed.inc_by(batch.events.len() as u64);
        metrics.poison_events.inc_by(batch.poison.len() as u64);
        metrics.tags_invalidated.inc_by(tags);
        for claimed in &batch.events {
            metrics.lag_seconds.observe((claimed.age_at_claim + confirmed_after).as_secs_f64());
        }
        tracing::debug!(events = batch.len(), tags, "batch applied");
    }

    /// Invalidates every tag of the batch, collapsed per tenant, concurrently over the
    /// multiplexed connection, each call waiting for the configured Redis replicas and recording
    /// `replayed_by` as the replay floor the new versions need on a read replica. Returns the
    /// distinct tags and the member sets to reclaim.
    async fn apply(
        &self,
        redis: &mut RedisConnection,
        events: &[ClaimedEvent],
        replayed_by: Lsn,
    ) -> Result<(u64, Reclaimable), InvalidateError> {
        let mut by_tenant: HashMap<Uuid, BTreeSet<Tag>> = HashMap::new();
        for claimed in events {
            by_tenant.entry(claimed.event.tenant_id).or_default().extend(claimed.event.tags.iter().cloned());
        }
        let distinct: usize = by_tenant.values().map(BTreeSet::len).sum();
        let calls = by_tenant.into_iter().flat_map(|(tenant, tags)| {
            let tags: Vec<Tag> = tags.into_iter().collect();
            tags.chunks(TAGS_PER_CALL)
                .map(|chunk| {
                    let mut connection = redis.clone();
                    let chunk = chunk.to_vec();
                    let keyspace = &self.keyspace;
                    let ack = self.replica_ack;
                    async move {
                        protocol::invalidate_replicated(
                            &mut connection,
                            keyspace,
                            tenant,
                            &chunk,
                            ack,
                            Some(replayed_by),
                        )
                        .await
                    }
                })
                .collect::<Vec<_>>()
        });
        let mut reclaimable = Reclaimable::default();
        for moved in futures::future::try_join_all(calls).await? {
            reclaimable.extend(moved);
        }
        Ok((distinct as u64, reclaimable))
    }

    /// The outbox is empty: park (if this replica leads) and wait for a wake-up, the poll
    /// interval or shutdown.
    async fn idle(
        &self,
        listener: &mut Option<Listener>,
        outbox: &mut Option<Client>,
        redis: &mut Option<RedisConnection>,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        let poll = Duration::from_millis(self.settings.invalidator.poll_interval_ms);
        if self.settings.invalidator.mode == WakeMode::Poll {
            pause(poll, shutdown).await;
            return Ok(());
        }
        if listener.as_ref().is_some_and(Listener::is_closed) {
            *listener = None;
            self.metrics.listener_connected.set(0);
            self.metrics.parked.set(0);
        }
        if listener.is_none() {
            match Listener::connect(&self.settings.database_url, &self.settings.database.link(), poll).await {
                Ok(connected) => {
                    if self.listener_was_up.swap(true, Ordering::Relaxed) {
                        self.metrics.reconnects.with_label_values(&[RECONNECT_LISTENER]).inc();
                    }
                    *listener = Some(connected);
                    self.metrics.listener_connected.set(1);
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection unavailable; polling");
                    pause(poll, shutdown).await;
                    return Ok(());
                }
            }
        }
        let Some(wake) = listener.as_mut() else { return Ok(()) };
        let result = self.park_and_wait(wake, outbox, redis, poll, shutdown).await;
        if result.is_err() || wake.is_closed() {
            *listener = None;
            self.metrics.listener_connected.set(0);
            self.metrics.parked.set(0);
        }
        result
    }

    async fn park_and_wait(
        &self,
        wake: &mut Listener,
        outbox: &mut Option<Client>,
        redis: &mut Option<RedisConnection>,
        poll: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        wake.clear();
        let parked = wake.try_lead().await? && wake.park().await?;
        if parked {
            self.metrics.parked.set(1);
            // Writers that saw nobody parked have committed by now (the park lock waited for
            // them): look once more before sleeping, so none of their events waits for a poll.
            if let (Some(client), Some(connection)) = (outbox.as_mut(), redis.as_mut()) {
                let handled = self.process_batch(client, connection).await;
                if !matches!(handled, Ok(0)) {
                    wake.unpark().await?;
                    self.metrics.parked.set(0);
                    return handled.map(drop);
                }
            }
        }
        tokio::select! {
            _ = wake.wait() => {}
            () = tokio::time::sleep(poll) => {}
            () = shutdown.cancelled() => {}
        }
        if parked {
            wake.unpark().await?;
            self.metrics.parked.set(0);
        }
        Ok(())
    }
}
