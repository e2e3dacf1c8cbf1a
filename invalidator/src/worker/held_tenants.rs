//! The worker's side of the tenants it holds back ([`crate::held_back`]): probing them,
//! following their master when the cluster watch sees it replaced, and applying the events of
//! those held for their replicas on their masters alone.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use openrisk_shared::db::MAX_RECONNECT_DELAY;
use openrisk_shared::protocol::{self, InvalidateError, Reclaimable, ReplicaAck};
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use tokio_postgres::Transaction;

use super::{BatchError, Worker};
use crate::held_back::{Failed, Holding};
use crate::{outbox, tenants};

/// The connection that the probes waiting for Redis replicas go on, apart from the batches': a
/// `WAIT` blocks the connection it is sent on until the replicas confirm or it times out, and on
/// the batches' connection every invalidation of that master waited behind it. Made on first
/// use; on a single Redis, made again after a probe failed on it (a cluster's reconnects by
/// itself to a node that failed, as the batches' does: see `Worker::repair`).
#[derive(Clone)]
pub(super) struct ProbeConnection {
    target: RedisTarget,
    timeouts: Timeouts,
    /// A cluster connection registers here to follow each slot's new master, as the batches' does.
    topology: ClusterWatch,
    current: Arc<Mutex<Option<RedisConnection>>>,
}

impl ProbeConnection {
    pub(super) fn new(target: RedisTarget, timeouts: Timeouts, topology: ClusterWatch) -> Self {
        Self { target, timeouts, topology, current: Arc::default() }
    }

    /// The connection, made now (to connect on first use) when there is none.
    fn get(&self) -> redis::RedisResult<RedisConnection> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.target.connect_lazily(self.timeouts, MAX_RECONNECT_DELAY)?;
        if connection.is_cluster() {
            self.topology.follow(connection.clone());
        }
        Ok(current.insert(connection).clone())
    }

    /// A probe on it got no answer: a single Redis's is made again for the next probe.
    fn failed(&self) {
        if !self.target.is_cluster() {
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

impl Worker {
    /// Sends one probe ([`protocol::probe`]) for each held tenant whose hold has run out, each on
    /// a task of its own, so that no batch waits for a master that may still be down. A probe
    /// that succeeds clears its tenant (the next claim takes its events); one that fails holds it
    /// for the next step of its backoff and counts as an error of its kind. A tenant whose master
    /// did not answer has its master probed alone first: once it answers, the tenant is held for
    /// its replicas instead, and the next claim applies its events on the master at once
    /// ([`Worker::apply_unreplicated`]) rather than after a `WAIT` that a replica just promoted,
    /// with no replica of its own yet, can only time out. A probe that waits for replicas goes on
    /// the [`ProbeConnection`], so that its `WAIT` holds up none of the master's invalidations.
    pub(super) fn probe_due(&self, redis: &RedisConnection, now: Instant) {
        for tenant in self.held_back.due_for_probe(now) {
            let waits_for_replica = self.held_back.waits_for_replica(tenant);
            let (ack, connection) = if waits_for_replica {
                (self.replica_ack, self.probes.get())
            } else {
                (ReplicaAck::MASTER_ONLY, Ok(redis.clone()))
            };
            let replicas_unasked = ack.replicas < self.replica_ack.replicas;
            let (probe, worker) = (self.held_back.on_its_way(tenant), self.clone());
            tokio::spawn(async move {
                let sent = async { protocol::probe(&mut connection?, &worker.keyspace, tenant, ack).await };
                let failure = sent.await.err();
                let unanswered = failure.as_ref().is_some_and(|error| !error.master_answered());
                if unanswered && waits_for_replica {
                    worker.probes.failed();
                }
                worker.reach.heard(tenant, !unanswered);
                let outcome = match &failure {
                    Some(error) => Err(Failed::from(error)),
                    None if replicas_unasked => Err(Failed::Unreplicated),
                    None => Ok(()),
                };
                let held = probe.answer(outcome, worker.topology.master_of_tenant(tenant));
                if let (Some(Holding { delay, .. }), Some(error)) = (held, failure.map(BatchError::from)) {
                    tracing::debug!(%tenant, %error, ?delay, "probe failed; the tenant stays held back");
                    worker.metrics.errors.with_label_values(&[error.kind()]).inc();
                }
            });
        }
    }

    /// Runs for as long as the replica does: each time the cluster watch sees a slot served by
    /// another master, the held tenants whose master was replaced are probed at once
    /// ([`crate::held_back::HeldBack::master_replaced`]) instead of at the end of their hold.
    /// Never returns.
    pub async fn follow_master_changes(self) {
        let mut changes = self.topology.master_changes();
        while changes.changed().await.is_ok() {
            let due = self.held_back.master_replaced(Instant::now(), |tenant| self.topology.master_of_tenant(tenant));
            if due > 0 {
                tracing::info!(tenants = due, "held tenants' slots are served by another master; probing them now");
            }
        }
        // The watch is the worker's own, so it is never dropped while this runs.
        std::future::pending().await
    }

    /// Applies, on their masters alone, the events moved aside since of the tenants held back
    /// because too few Redis replicas confirmed their invalidations ([`outbox::peek`]; they wait
    /// there until a replica does): the masters serve reads, so reads stay fresh. Each event is
    /// applied there once ([`crate::held_back::HeldBack::applied_ids`]). A tenant whose master
    /// fails this is held as unreachable, and probed like any other.
    pub(super) async fn apply_unreplicated(
        &self,
        transaction: &Transaction<'_>,
        redis: &RedisConnection,
    ) -> Result<(), BatchError> {
        let since = self.held_back.unreplicated(|tenant| self.topology.master_of_tenant(tenant));
        if since.is_empty() {
            return Ok(());
        }
        let (mut peeked, next) = outbox::peek(transaction, &since).await?;
        let Some(next) = next else { return Ok(()) };
        let mut read = peeked.ids_by_tenant();
        let applied = self.held_back.applied_ids();
        peeked.retain(|tenant, id| !applied.get(&tenant).is_some_and(|ids| ids.contains(&id)));
        let by_tenant = tenants::tags_by_tenant(&peeked);
        let outcomes = tenants::invalidate_by_tenant(
            redis,
            &self.keyspace,
            by_tenant,
            |_| ReplicaAck::MASTER_ONLY,
            peeked.replayed_by,
        )
        .await;
        let (mut reclaimable, mut failed) = (Reclaimable::default(), Vec::new());
        for (tenant, outcome) in outcomes {
            self.reach.heard(tenant, outcome.as_ref().err().is_none_or(InvalidateError::master_answered));
            match outcome {
                Ok(moved) => reclaimable.extend(moved),
                Err(error) => {
                    // Its master stopped answering: it is sent nothing but probes from now on.
                    let master = self.topology.master_of_tenant(tenant);
                    let Holding { delay, .. } =
                        self.held_back.hold(tenant, Instant::now(), Failed::from(&error), master);
                    tracing::warn!(%tenant, %error, ?delay, "cannot apply a held tenant's events on its master");
                    self.metrics.errors.with_label_values(&[BatchError::from(error).kind()]).inc();
                    failed.push(tenant);
                }
            }
        }
        // The others' events before `next`, and all those read, are applied there (or they had none).
        for (tenant, _) in since.into_iter().filter(|(tenant, _)| !failed.contains(tenant)) {
            self.held_back.applied_before(tenant, next, read.remove(&tenant).unwrap_or_default());
        }
        self.reclaim_in_background(redis, reclaimable);
        Ok(())
    }
}
