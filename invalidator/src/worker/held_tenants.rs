//! The worker's side of the tenants it holds back ([`crate::held_back`]): probing them,
//! following their master when the cluster watch sees it replaced, and applying the events of
//! those held for their replicas on their masters alone.

use std::time::Instant;

use openrisk_shared::protocol::{self, InvalidateError, Reclaimable, ReplicaAck};
use openrisk_shared::redis_connection::RedisConnection;
use tokio_postgres::Transaction;

use super::{BatchError, Worker};
use crate::held_back::{Failed, Holding};
use crate::{outbox, tenants};

impl Worker {
    /// Sends one probe ([`protocol::probe`]) for each held tenant whose hold has run out, each on
    /// a task of its own, so that no batch waits for a master that may still be down. A probe
    /// that succeeds clears its tenant (the next claim takes its events); one that fails holds it
    /// for the next step of its backoff and counts as an error of its kind. A tenant whose master
    /// did not answer has its master probed alone first: once it answers, the tenant is held for
    /// its replicas instead, and the next claim applies its events on the master at once
    /// ([`Worker::apply_unreplicated`]) rather than after a `WAIT` that a replica just promoted,
    /// with no replica of its own yet, can only time out.
    pub(super) fn probe_due(&self, redis: &RedisConnection, now: Instant) {
        for tenant in self.held_back.due_for_probe(now) {
            let (mut connection, worker) = (redis.clone(), self.clone());
            let ack = if self.held_back.waits_for_replica(tenant) { self.replica_ack } else { ReplicaAck::MASTER_ONLY };
            let replicas_unasked = ack.replicas < self.replica_ack.replicas;
            let probe = self.held_back.on_its_way(tenant);
            tokio::spawn(async move {
                let failure = protocol::probe(&mut connection, &worker.keyspace, tenant, ack).await.err();
                worker.reach.heard(tenant, !matches!(failure, Some(InvalidateError::Redis(_))));
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
    /// ([`HeldBack::master_replaced`]) instead of at the end of their hold. Never returns.
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

    /// Applies, on their masters alone, the events written since of the tenants held back because
    /// too few Redis replicas confirmed their invalidations ([`outbox::peek`]; they stay in the
    /// outbox until a replica does): the masters serve reads, so reads stay fresh. A tenant whose
    /// master fails this is held as unreachable, and probed like any other.
    pub(super) async fn apply_unreplicated(
        &self,
        transaction: &Transaction<'_>,
        redis: &RedisConnection,
    ) -> Result<(), BatchError> {
        let since = self.held_back.unreplicated(|tenant| self.topology.master_of_tenant(tenant));
        if since.is_empty() {
            return Ok(());
        }
        let (peeked, next) = outbox::peek(transaction, &since).await?;
        let Some(next) = next else { return Ok(()) };
        let by_tenant = tenants::tags_by_tenant(&peeked);
        let outcomes = tenants::invalidate_by_tenant(
            redis,
            &self.keyspace,
            by_tenant,
            ReplicaAck::MASTER_ONLY,
            peeked.replayed_by,
        )
        .await;
        let (mut reclaimable, mut failed) = (Reclaimable::default(), Vec::new());
        for (tenant, outcome) in outcomes {
            self.reach.heard(tenant, !matches!(outcome, Err(InvalidateError::Redis(_))));
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
        // The others' events before `next` are all applied there (or they had none).
        for (tenant, _) in since.into_iter().filter(|(tenant, _)| !failed.contains(tenant)) {
            self.held_back.applied_before(tenant, next);
        }
        self.reclaim_in_background(redis, reclaimable);
        Ok(())
    }
}
