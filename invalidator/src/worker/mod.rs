//! One replica's main loop: drain the outbox batch after batch, linger, park and wait for the
//! LISTEN task's wake-up when it is empty, and replace a failed Postgres or Redis connection with
//! jittered exponential backoff.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, Retryable};
use openrisk_shared::config::Settings;
use openrisk_shared::db::{ConnectError, MAX_RECONNECT_DELAY, reconnect_backoff};
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, BackgroundReclaims, InvalidateError, Reclaimable, ReplicaAck};
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use tokio_postgres::{Client, Statement, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use uuid::Uuid;

use openrisk_shared::redis_connection::RedisUrlError;

use crate::held_back::{Failed, HeldBack, Holding};
use crate::listener::{Session, Wakeups};
use crate::metrics::Metrics;
use crate::outbox::{self, Batch};
use crate::reach::Reach;
use crate::tenants;

mod held_tenants;

use held_tenants::ProbeConnection;

/// Pause between two looks at the outbox while lingering.
const LINGER_STEP: Duration = Duration::from_millis(1);

/// What /readyz reports on: connections up and the outbox caught up.
#[derive(Debug, Default)]
pub struct Status {
    pub postgres_connected: AtomicBool,
    /// Connected, and the last call to some master got an answer ([`Reach`]).
    pub redis_connected: AtomicBool,
    pub caught_up: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.connected() && self.caught_up.load(Ordering::Relaxed)
    }

    /// Connected to both servers, so able to invalidate (however far behind).
    pub fn connected(&self) -> bool {
        self.postgres_connected.load(Ordering::Relaxed) && self.redis_connected.load(Ordering::Relaxed)
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

impl BatchError {
    /// The `kind` label of `openrisk_invalidator_errors_total`: the system that failed.
    fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::NotReplicated(_) => "redis_replication",
        }
    }
}

impl From<InvalidateError> for BatchError {
    fn from(error: InvalidateError) -> Self {
        match error {
            InvalidateError::Redis(error) => Self::Redis(error),
            unconfirmed @ (InvalidateError::NotReplicated { .. } | InvalidateError::MasterWithoutReplica) => {
                Self::NotReplicated(unconfirmed.to_string())
            }
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
    /// Wake-ups and the park session from the LISTEN task; `None` in poll mode.
    wakeups: Option<Arc<Wakeups>>,
    reclaims: BackgroundReclaims,
    held_back: HeldBack,
    /// Which master serves each slot, on a cluster (a held tenant's failover is seen there).
    topology: ClusterWatch,
    reach: Reach,
    /// Where the probes that wait for Redis replicas go, apart from the batches.
    probes: ProbeConnection,
}

/// The replica's outbox connection and Redis connection; each is replaced when it fails.
struct Links {
    outbox: Client,
    /// The claim, prepared once per outbox connection (a round trip less per batch).
    claim: Statement,
    redis: RedisConnection,
}

/// A batch that failed, and whether batches succeeded since the previous failure (which
/// resets the backoff).
struct Failure {
    error: BatchError,
    progressed: bool,
}

/// What applying a batch came to.
#[derive(Default)]
struct Applied {
    /// Distinct tags the batch names.
    tags: u64,
    /// Member sets moved aside, whose entries can be unlinked.
    reclaimable: Reclaimable,
    /// A failure, when some tenant's invalidations failed: a Redis error rather than a missing
    /// replica acknowledgement where both happened (the connection may need replacing).
    failure: Option<InvalidateError>,
    /// Whether some tenant's invalidations all succeeded.
    any_applied: bool,
    /// Whether a tenant that was not held back already failed.
    newly_held: bool,
}

/// How long a failed replica waits for its batch's rollback before it resigns the park.
const ROLLBACK_WAIT: Duration = Duration::from_secs(1);

/// Waits for the LISTEN task's wake-up (none in poll mode), news of a held tenant (its probe
/// answered, or it became due for one at once), the poll interval or shutdown, whichever comes
/// first.
async fn wake_or_poll(wakeups: Option<&Wakeups>, held_back: &HeldBack, poll: Duration, shutdown: &CancellationToken) {
    let woken = async {
        match wakeups {
            Some(wakeups) => wakeups.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = woken => {}
        () = held_back.news() => {}
        () = tokio::time::sleep(poll) => {}
        () = shutdown.cancelled() => {}
    }
}

/// The timeouts of the replica's Redis calls: `invalidator.redis_timeout_ms` for a reply, plus
/// the replica wait for one that carries a `WAIT`.
fn redis_timeouts(settings: &Settings, replica_ack: ReplicaAck) -> Timeouts {
    let response = Duration::from_millis(settings.invalidator.redis_timeout_ms) + replica_ack.extra_reply_time();
    Timeouts {
        connect: Duration::from_secs(2),
        response,
        overall: response * 2,
        refusal_retry: Timeouts::REFUSAL_RETRY,
    }
}

/// Sleeps for `delay` unless shutdown comes first; returns false on shutdown.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Runs `connect` until it succeeds, with [`reconnect_backoff`]; `None` on shutdown.
async fn retrying<T, E, F, Fut>(what: &str, connect: F, shutdown: &CancellationToken) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let retried = connect
        .retry(reconnect_backoff())
        .notify(|error, delay| tracing::warn!(%error, ?delay, "cannot reach {what}; retrying"));
    tokio::select! {
        connected = retried => connected.ok(),
        () = shutdown.cancelled() => None,
    }
}

impl Worker {
    /// A replica for `settings`, whose Redis URL was validated when they were loaded; `wakeups`
    /// comes from the replica's LISTEN task (none in poll mode).
    pub fn new(
        settings: Arc<Settings>,
        metrics: Metrics,
        status: Arc<Status>,
        wakeups: Option<Arc<Wakeups>>,
        topology: ClusterWatch,
    ) -> Result<Self, RedisUrlError> {
        let keyspace = settings.keyspace();
        let redis = settings.redis_target()?;
        let replica_ack = settings.replica_ack();
        let (reclaims, held_back) = (BackgroundReclaims::default(), HeldBack::new(metrics.tenants_held_back.clone()));
        let reach = Reach::new(topology.clone(), status.clone());
        let probes = ProbeConnection::new(redis.clone(), redis_timeouts(&settings, replica_ack), topology.clone());
        Ok(Self {
            settings,
            redis,
            replica_ack,
            keyspace,
            metrics,
            status,
            wakeups,
            reclaims,
            held_back,
            topology,
            reach,
            probes,
        })
    }

    /// Runs until `shutdown` is cancelled: drains the outbox, and after a failure backs off and
    /// replaces the connection that failed. A batch in hand is finished (or, if it cannot be,
    /// released by rolling back) before returning.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(mut links) = self.connect(&shutdown).await else { return };
        let mut backoff = reconnect_backoff().build();
        while let Err(failure) = self.drain(&mut links, &shutdown).await {
            if failure.progressed {
                backoff = reconnect_backoff().build();
            }
            self.count_error(&failure.error);
            self.hand_back(&links.outbox).await;
            let delay = backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
            if !(pause(delay, &shutdown).await && self.repair(&mut links, &failure.error, &shutdown).await) {
                break;
            }
        }
        self.metrics.parked.set(0);
    }

    /// Applies batch after batch, idling whenever the outbox is empty, until shutdown or a
    /// failure.
    async fn drain(&self, links: &mut Links, shutdown: &CancellationToken) -> Result<(), Failure> {
        let mut progressed = false;
        while !shutdown.is_cancelled() {
            let step = match self.process_batch(links).await {
                Ok(0) => self.idle(links, shutdown).await,
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            };
            match step {
                Ok(()) => progressed = true,
                Err(error) => return Err(Failure { error, progressed }),
            }
        }
        Ok(())
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Option<Links> {
        let (outbox, claim) = retrying("Postgres", || self.connect_outbox(), shutdown).await?;
        self.status.postgres_connected.store(true, Ordering::Relaxed);
        let redis = retrying("Redis", || self.connect_redis(), shutdown).await?;
        self.status.redis_connected.store(true, Ordering::Relaxed);
        Some(Links { outbox, claim, redis })
    }

    /// Replaces the connection `error` came from; false on shutdown.
    async fn repair(&self, links: &mut Links, error: &BatchError, shutdown: &CancellationToken) -> bool {
        match error {
            BatchError::Postgres(_) if links.outbox.is_closed() => {
                self.status.postgres_connected.store(false, Ordering::Relaxed);
                let Some((outbox, claim)) = retrying("Postgres", || self.connect_outbox(), shutdown).await else {
                    return false;
                };
                (links.outbox, links.claim) = (outbox, claim);
                self.status.postgres_connected.store(true, Ordering::Relaxed);
                self.count_reconnect("postgres");
            }
            // A cluster's connection reconnects to a node that failed by itself; building a new
            // one would wait on every master, a frozen one too.
            BatchError::Redis(_) if self.redis.is_cluster() => {}
            BatchError::Redis(_) => {
                self.status.redis_connected.store(false, Ordering::Relaxed);
                let Some(redis) = retrying("Redis", || self.connect_redis(), shutdown).await else { return false };
                links.redis = redis;
                self.status.redis_connected.store(true, Ordering::Relaxed);
                self.count_reconnect("redis");
            }
            BatchError::Postgres(_) | BatchError::NotReplicated(_) => {}
        }
        true
    }

    fn count_reconnect(&self, target: &str) {
        self.metrics.reconnects.with_label_values(&[target]).inc();
        tracing::info!(connection = target, "reconnected");
    }

    fn count_error(&self, error: &BatchError) {
        tracing::warn!(%error, "batch failed; its events stay in the outbox");
        self.metrics.errors.with_label_values(&[error.kind()]).inc();
    }

    async fn connect_outbox(&self) -> Result<(Client, Statement), ConnectError> {
        let link = self.settings.database.link();
        let client = openrisk_shared::db::connect(&self.settings.database_url, "openrisk-invalidator", &link).await?;
        let claim = outbox::prepare_claim(&client).await?;
        Ok((client, claim))
    }

    async fn connect_redis(&self) -> redis::RedisResult<RedisConnection> {
        let mut connection = self.redis.connect(redis_timeouts(&self.settings, self.replica_ack)).await?;
        if let Err(error) = protocol::check_server_settings(&mut connection).await {
            tracing::warn!(%error, "could not read Redis eviction and persistence settings");
        }
        // A cluster connection is kept for the replica's life (see `repair`).
        self.topology.follow(connection.clone());
        Ok(connection)
    }

    /// Claims one batch, applies it to Redis, then acknowledges it. Returns how many events it
    /// claimed or moved aside (0: the outbox had nothing unclaimed but events moved aside of
    /// tenants held back).
    async fn process_batch(&self, links: &mut Links) -> Result<usize, BatchError> {
        let Links { outbox, claim, redis } = links;
        self.apply_next(outbox.transaction().await?, claim, redis).await
    }

    /// [`Worker::process_batch`] in `transaction`, begun by the caller.
    #[tracing::instrument(name = "batch", skip_all, fields(size = Empty, tenants = Empty, lag_ms = Empty))]
    async fn apply_next(
        &self,
        transaction: Transaction<'_>,
        claim: &Statement,
        redis: &mut RedisConnection,
    ) -> Result<usize, BatchError> {
        let claim_sent = Instant::now();
        let held_back = self.held_back.sitting_out(claim_sent);
        self.probe_due(redis, claim_sent);
        let batch = outbox::claim(&transaction, claim, self.settings.invalidator.batch_size, &held_back).await?;
        // Before the held tenants' events below: they delay this batch's, so the lag counts them.
        let claimed_at = Instant::now();
        // After the claim, so that the events it moved aside are applied on their masters at once.
        self.apply_unreplicated(&transaction, redis).await?;
        if batch.is_empty() {
            if batch.moved_aside > 0 {
                transaction.commit().await?;
            }
            return Ok(batch.moved_aside);
        }
        let span = tracing::Span::current();
        span.record("size", batch.len()).record("tenants", batch.tenants().as_str());
        let Applied { tags, reclaimable, failure, any_applied, newly_held } = self.apply(redis, &batch).await;
        if let Some(error) = failure {
            self.reclaim_in_background(redis, reclaimable);
            if !any_applied && newly_held && self.reach.lost() {
                // Nothing applied, news of a failure, and no master answers: the replica backs
                // off, resigns the park and, on a single Redis, replaces its connection. The
                // transaction is dropped and rolled back: the rows come back.
                return Err(error.into());
            }
            // Some tenants failed, now held back, and the others were applied (or those that
            // failed had failed not long before, and a probe had cleared them, or other masters
            // of a cluster still answer). Rolled back,
            // every event comes back, and the next claim, at once, takes the applied tenants'
            // again without the held ones (invalidating a tag twice leaves the cache as once does).
            transaction.rollback().await?;
            self.metrics.errors.with_label_values(&[BatchError::from(error).kind()]).inc();
            return Ok(batch.len());
        }
        let confirmed_after = claimed_at.elapsed();
        span.record("lag_ms", batch.max_lag_ms(confirmed_after));
        // One line a batch, not one an event: a trigger that writes a bad tag on every write would
        // otherwise log at the write rate. Each row keeps its own reason in the table.
        if let Some(first) = batch.poison.first() {
            tracing::warn!(
                count = batch.poison.len(),
                first_event_id = first.row.id,
                first_reason = %first.reason,
                "poison events moved to cache_outbox_dead_letter, each with its reason"
            );
        }
        outbox::dead_letter(&transaction, &batch).await?;
        transaction.commit().await?;
        self.metrics.record_batch(&batch, tags, claimed_at - claim_sent, confirmed_after);
        self.reclaim_in_background(redis, reclaimable);
        Ok(batch.len())
    }

    /// Unlinks the entries of the member sets a batch moved aside, off the batch path: they can
    /// no longer be read, so this is only memory and must not delay the next batch.
    fn reclaim_in_background(&self, redis: &RedisConnection, reclaimable: Reclaimable) {
        let metrics = self.metrics.clone();
        let started = self.reclaims.start(redis.clone(), reclaimable, move |outcome| match outcome {
            Ok(unlinked) => metrics.keys_deleted.inc_by(unlinked),
            Err(error) => tracing::warn!(%error, "reclaiming invalidated entries stopped; the rest expires"),
        });
        if !started {
            self.metrics.reclaims_skipped.inc();
        }
    }

    /// Invalidates every tag of the batch, collapsed per tenant, concurrently over the
    /// multiplexed connection, each call waiting for the configured Redis replicas (the calls to
    /// one master share the replica wait, [`tenants::shares_of_ack`]) and recording the batch's
    /// `replayed_by` as the replay floor the new versions need on a read replica. A
    /// poison row invalidates its tenant's whole cache in its place. A tenant whose calls fail is
    /// held back; one whose calls succeed is released. A tenant of a master that another held
    /// tenant waits for a replica of ([`HeldBack::masters_without_replica`]) is applied on that
    /// master alone, without a `WAIT`, and held back the same way.
    async fn apply(&self, redis: &RedisConnection, batch: &Batch) -> Applied {
        let mut by_tenant = tenants::tags_by_tenant(batch);
        let distinct: usize = by_tenant.values().map(BTreeSet::len).sum();
        let without_replica = self.held_back.masters_without_replica();
        let of_master_without_replica = |tenant: &Uuid| {
            !without_replica.is_empty()
                && self.topology.master_of_tenant(*tenant).is_some_and(|master| without_replica.contains(&master))
        };
        let alone: HashMap<Uuid, BTreeSet<Tag>> =
            by_tenant.extract_if(|tenant, _| of_master_without_replica(tenant)).collect();
        let acks =
            tenants::shares_of_ack(&by_tenant, self.replica_ack, |tenant| self.topology.master_of_tenant(tenant));
        let (replicated, applied_alone) = tokio::join!(
            tenants::invalidate_by_tenant(redis, &self.keyspace, by_tenant, |tenant| acks[&tenant], batch.replayed_by),
            tenants::invalidate_by_tenant(redis, &self.keyspace, alone, |_| ReplicaAck::MASTER_ONLY, batch.replayed_by),
        );
        let (mut applied, answered_at) = (Applied { tags: distinct as u64, ..Applied::default() }, Instant::now());
        let outcomes = replicated.into_iter().map(|(tenant, outcome)| (tenant, outcome, true));
        for (tenant, outcome, confirmed) in outcomes.chain(applied_alone.into_iter().map(|(t, o)| (t, o, false))) {
            self.reach.heard(tenant, outcome.as_ref().err().is_none_or(InvalidateError::master_answered));
            match outcome {
                Ok(moved) => {
                    applied.reclaimable.extend(moved);
                    applied.any_applied = true;
                    if confirmed {
                        self.held_back.release(tenant);
                        continue;
                    }
                    let master = self.topology.master_of_tenant(tenant);
                    let Holding { again, .. } = self.held_back.hold(tenant, answered_at, Failed::Unreplicated, master);
                    if !again {
                        tracing::info!(%tenant, "applied on its master alone, which has no replica that confirms; the tenant's events are held back");
                    }
                    applied.newly_held |= !again;
                    applied.failure.get_or_insert(InvalidateError::MasterWithoutReplica);
                }
                Err(error) => self.hold(&mut applied, tenant, answered_at, error),
            }
        }
        applied
    }

    /// Holds `tenant` back after its invalidations failed with `error` at `at`, and records the
    /// failure in `applied`.
    fn hold(&self, applied: &mut Applied, tenant: Uuid, at: Instant, error: InvalidateError) {
        let master = self.topology.master_of_tenant(tenant);
        let Holding { delay, again } = self.held_back.hold(tenant, at, Failed::from(&error), master);
        if again {
            tracing::debug!(%tenant, %error, ?delay, "cannot invalidate; the tenant stays held back");
        } else {
            tracing::warn!(%tenant, %error, ?delay, "cannot invalidate; the tenant's events are held back");
        }
        applied.newly_held |= !again;
        let replaces = matches!(
            (&applied.failure, &error),
            (None, _)
                | (
                    Some(InvalidateError::NotReplicated { .. } | InvalidateError::MasterWithoutReplica),
                    InvalidateError::Redis(_)
                )
        );
        if replaces {
            applied.failure = Some(error);
        }
    }

    /// The outbox is empty: linger, then park (if this replica leads the park) and wait for a
    /// wake-up, the poll interval or shutdown; the batch that woke a parked replica is applied
    /// before it unparks.
    async fn idle(&self, links: &mut Links, shutdown: &CancellationToken) -> Result<(), BatchError> {
        if self.linger(links, shutdown).await? {
            return Ok(());
        }
        let poll = self.next_look(Duration::from_millis(self.settings.invalidator.poll_interval_ms));
        let Some(wakeups) = &self.wakeups else {
            wake_or_poll(None, &self.held_back, poll, shutdown).await;
            return Ok(());
        };
        wakeups.forget();
        let session = match wakeups.session() {
            Some(session) if self.park(&session).await => session,
            _ => {
                wake_or_poll(Some(wakeups), &self.held_back, poll, shutdown).await;
                return Ok(());
            }
        };
        // Writers that saw nobody parked have committed by now (the park lock waited for them):
        // look once more before sleeping, so none of their events waits for a poll.
        let found = self.process_batch(links).await;
        if !matches!(found, Ok(0)) {
            self.unpark(&session).await;
            return found.map(drop);
        }
        // The wake-up's claim runs in a transaction begun before the wait, which spares the
        // wake-up a round trip; until that claim it holds no lock, snapshot or transaction id.
        let Links { outbox, claim, redis } = links;
        let woken_by = match outbox::begin_parked(outbox).await {
            Ok(transaction) => {
                wake_or_poll(Some(wakeups), &self.held_back, poll, shutdown).await;
                // Writers notify while the replica stays parked, so applying the first batch
                // before unparking keeps the unpark's round trip out of the wake-up's lag.
                if shutdown.is_cancelled() { Ok(0) } else { self.apply_next(transaction, claim, redis).await }
            }
            Err(error) => Err(error.into()),
        };
        self.unpark(&session).await;
        woken_by.map(drop)
    }

    /// How long an idle replica waits at most before it looks at the outbox again: the poll
    /// interval, or less when a held tenant is due for its probe sooner (the probe is sent at the
    /// next claim, and waits for no write).
    fn next_look(&self, poll: Duration) -> Duration {
        let now = Instant::now();
        self.held_back.next_probe().map_or(poll, |due| poll.min(due.saturating_duration_since(now)))
    }

    /// Looks at the outbox every [`LINGER_STEP`] for `invalidator.linger_ms` before parking, so
    /// that a steady stream of writes is picked up without a NOTIFY and a wake-up. Returns
    /// whether it found events (and applied them) or shutdown came.
    async fn linger(&self, links: &mut Links, shutdown: &CancellationToken) -> Result<bool, BatchError> {
        let until = Instant::now() + Duration::from_millis(self.settings.invalidator.linger_ms);
        while Instant::now() < until {
            if !pause(LINGER_STEP, shutdown).await {
                return Ok(true);
            }
            if self.process_batch(links).await? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Takes the park lock if this replica leads the park. A failing session only costs the
    /// park: the LISTEN task replaces it.
    async fn park(&self, session: &Session) -> bool {
        match async { Ok::<_, tokio_postgres::Error>(session.try_lead().await? && session.park().await?) }.await {
            Ok(parked) => {
                self.metrics.parked.set(i64::from(parked));
                parked
            }
            Err(error) => {
                tracing::warn!(%error, "cannot park on the LISTEN session; polling");
                false
            }
        }
    }

    /// After a failed batch, wakes every replica, so a parked one that can apply takes its events
    /// at once rather than at its poll; a park leader also gives the lead up (see
    /// [`openrisk_shared::outbox::RESIGN`]), to take it again at an idle once it applies. The
    /// batch's rollback, queued on `outbox` when its transaction was dropped, is waited for first
    /// (a while at most: a cut connection hangs until its keepalives end it), so the events are free;
    /// when it does not finish in time, no wake-up goes on that connection.
    async fn hand_back(&self, outbox: &Client) {
        let rolled_back = !outbox.is_closed()
            && tokio::time::timeout(ROLLBACK_WAIT, outbox.batch_execute("")).await.is_ok_and(|done| done.is_ok());
        let resigned = match self.wakeups.as_ref().and_then(|wakeups| wakeups.session()) {
            Some(session) => session.resign().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot resign the park leadership; the LISTEN session is replaced");
                false
            }),
            None => false,
        };
        if !resigned && rolled_back {
            let _ = tokio::time::timeout(ROLLBACK_WAIT, outbox.batch_execute(openrisk_shared::outbox::WAKE_ALL)).await;
        }
    }

    async fn unpark(&self, session: &Session) {
        // A closed session released the lock with it (at shutdown, or lost).
        if let Err(error) = session.unpark().await
            && !session.is_closed()
        {
            tracing::warn!(%error, "cannot unpark on the LISTEN session; it is replaced");
        }
        self.metrics.parked.set(0);
    }
}
