//! The invalidator's Prometheus metrics.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::outbox::Batch;

/// The `target` of `openrisk_invalidator_reconnects_total` for the LISTEN connection (the
/// outbox's own connection counts under `postgres`).
pub const RECONNECT_LISTENER: &str = "postgres_listener";

/// The parts of the invalidation lag, the `stage` of `openrisk_invalidator_lag_stage_seconds`:
/// where a growing lag is spent. `OUTBOX` + `REDIS` is one event's lag. `CLAIM` overlaps the end
/// of `OUTBOX` and also covers the claim's reply on its way back, which the lag leaves out.
/// `COMMIT` comes before the lag and is not part of it.
pub mod stage {
    /// From the row change to its transaction's commit: the rest of the writer's transaction,
    /// which no reader sees yet. One observation per event, only where Postgres records commit
    /// times (`track_commit_timestamp = on`).
    pub const COMMIT: &str = "commit";
    /// From the commit to the claim reading the event (the database's clock): the notification,
    /// the wake-up and the claim's start. From the row change instead where commit times are not
    /// recorded, so the writer's commit is then in it. One observation per event.
    pub const OUTBOX: &str = "outbox";
    /// The claim query's round trip as this replica sees it. One per batch.
    pub const CLAIM: &str = "claim";
    /// From the claimed batch in hand to Redis confirming its invalidations (replica `WAIT`
    /// included, and the held tenants' events applied before them). One per batch.
    pub const REDIS: &str = "redis";
}

/// The stage histograms of `openrisk_invalidator_lag_stage_seconds`, resolved once (each series
/// is exported from start-up, at zero).
#[derive(Clone)]
pub struct LagStages {
    pub commit: Histogram,
    pub outbox: Histogram,
    pub claim: Histogram,
    pub redis: Histogram,
}

impl LagStages {
    fn of(stages: &HistogramVec) -> Self {
        Self {
            commit: stages.with_label_values(&[stage::COMMIT]),
            outbox: stages.with_label_values(&[stage::OUTBOX]),
            claim: stages.with_label_values(&[stage::CLAIM]),
            redis: stages.with_label_values(&[stage::REDIS]),
        }
    }
}

/// Bucket bounds of the lag and of its stages, in seconds: fine below 10 ms, where the aims are.
const LAG_BUCKETS: [f64; 24] = [
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric one replica exports; names follow Prometheus conventions.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events_processed: IntCounter,
    pub keys_deleted: IntCounter,
    pub reclaims_skipped: IntCounter,
    pub tags_invalidated: IntCounter,
    pub batches: IntCounter,
    pub batch_size: Histogram,
    pub errors: IntCounterVec,
    pub poison_events: IntCounter,
    pub reconnects: IntCounterVec,
    pub listener_connected: IntGauge,
    /// 1 while connected to both Postgres and Redis, so that a replica that runs but cannot
    /// invalidate alerts (one that is merely behind shows in the outbox's age).
    pub connected: IntGauge,
    pub parked: IntGauge,
    pub tenants_held_back: IntGauge,
    pub outbox_backlog: IntGauge,
    pub oldest_event_age_seconds: prometheus::Gauge,
    pub lag_seconds: Histogram,
    pub lag_stage_seconds: HistogramVec,
    pub lag_stages: LagStages,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let oldest_event_age_seconds = prometheus::Gauge::new(
            "openrisk_invalidator_oldest_event_age_seconds",
            "Age of the oldest event still in the outbox (0 when empty); while the outbox cannot be \
             sampled, the most it can be (the last sample's plus the time since; +Inf if it never was).",
        )
        .expect("valid metric");
        registry.register(Box::new(oldest_event_age_seconds.clone())).expect("unique metric");
        let errors = counter_vec(
            "openrisk_invalidator_errors_total",
            "Failed batches and failed probes of held tenants, by the system that failed.",
            "kind",
        );
        let reconnects = counter_vec(
            "openrisk_invalidator_reconnects_total",
            "Connections re-established, by target: the outbox's Postgres connection, the LISTEN connection, Redis.",
            "target",
        );
        let lag_stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "openrisk_invalidator_lag_stage_seconds",
                "Parts of the invalidation lag, by stage: outbox (commit, or row change where commit times are \
                 not recorded, to claim, per event), claim (the claim's round trip, per batch), redis (claimed batch \
                 to Redis confirming, per batch); and before it, commit (row change to commit, per event).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(lag_stage_seconds.clone())).expect("unique metric");
        for (vec, label) in [
            (&errors, "postgres"),
            (&errors, "redis"),
            (&errors, "redis_replication"),
            (&reconnects, "postgres"),
            (&reconnects, RECONNECT_LISTENER),
            (&reconnects, "redis"),
        ] {
            vec.with_label_values(&[label]);
        }
        Self {
            events_processed: counter(
                "openrisk_invalidator_events_processed_total",
                "Outbox events applied to Redis and acknowledged.",
            ),
            keys_deleted: counter("openrisk_invalidator_keys_deleted_total", "Cached entries unlinked from Redis."),
            reclaims_skipped: counter(
                "openrisk_invalidator_reclaims_skipped_total",
                "Batches whose invalidated member sets were left to expire because the most reclaims allowed at once were running.",
            ),
            tags_invalidated: counter(
                "openrisk_invalidator_tags_invalidated_total",
                "Distinct tags invalidated (after collapsing duplicates within a batch).",
            ),
            batches: counter("openrisk_invalidator_batches_total", "Non-empty batches applied."),
            batch_size: histogram(
                "openrisk_invalidator_batch_size",
                "Events per applied batch.",
                vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            ),
            errors,
            poison_events: counter(
                "openrisk_invalidator_poison_events_total",
                "Outbox events that could not be applied as written: moved to the dead-letter table, their tenant's whole cache invalidated instead.",
            ),
            reconnects,
            listener_connected: gauge(
                "openrisk_invalidator_listener_connected",
                "1 while the LISTEN connection for wake-ups is up (always 0 in poll mode).",
            ),
            connected: gauge(
                "openrisk_invalidator_connected",
                "1 while connected to both Postgres and Redis (/readyz's postgres and redis).",
            ),
            parked: gauge(
                "openrisk_invalidator_parked",
                "1 while this replica is parked: idle, holding the park lock, so writers notify.",
            ),
            tenants_held_back: gauge(
                "openrisk_invalidator_tenants_held_back",
                "Tenants held back: their last invalidations on this replica failed (a Redis Cluster shard down or \
                 failing over), so their events wait aside in the outbox until a probe of their master, sent on a \
                 backoff of their own, succeeds, while other tenants' are applied.",
            ),
            outbox_backlog: gauge("openrisk_invalidator_outbox_backlog", "Events waiting in the outbox."),
            oldest_event_age_seconds,
            lag_seconds: histogram(
                "openrisk_invalidator_lag_seconds",
                "Invalidation lag: from the writer's commit (the row change where Postgres keeps no commit times) to Redis confirming the invalidation.",
                LAG_BUCKETS.to_vec(),
            ),
            lag_stages: LagStages::of(&lag_stage_seconds),
            lag_stage_seconds,
            registry,
        }
    }

    /// Counts an applied batch: `claim_took` the claim's round trip, `confirmed_after` the time
    /// from the claimed batch in hand to Redis confirming it.
    pub fn record_batch(&self, batch: &Batch, tags: u64, claim_took: Duration, confirmed_after: Duration) {
        self.batches.inc();
        self.batch_size.observe(batch.len() as f64);
        self.events_processed.inc_by(batch.events.len() as u64);
        self.poison_events.inc_by(batch.poison.len() as u64);
        self.tags_invalidated.inc_by(tags);
        for claimed in &batch.events {
            self.lag_seconds.observe((claimed.age_at_claim + confirmed_after).as_secs_f64());
            self.lag_stages.outbox.observe(claimed.age_at_claim.as_secs_f64());
            if let Some(in_transaction) = claimed.in_transaction {
                self.lag_stages.commit.observe(in_transaction.as_secs_f64());
            }
        }
        self.lag_stages.claim.observe(claim_took.as_secs_f64());
        self.lag_stages.redis.observe(confirmed_after.as_secs_f64());
        tracing::debug!(events = batch.len(), tags, "batch applied");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
