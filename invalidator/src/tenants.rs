//! A batch's invalidations grouped by tenant: on a Redis Cluster each tenant's keys live on one
//! master, so each tenant succeeds or fails on its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use openrisk_shared::db::Lsn;
use openrisk_shared::event::InvalidationEvent;
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, InvalidateError, Reclaimable, ReplicaAck};
use openrisk_shared::redis_connection::RedisConnection;
use uuid::Uuid;

use crate::outbox::Batch;

/// Tags sent to Redis in one script call.
const TAGS_PER_CALL: usize = 512;

/// The tags of `batch` by tenant; a poison row invalidates its tenant's whole cache in its place.
pub fn tags_by_tenant(batch: &Batch) -> HashMap<Uuid, BTreeSet<Tag>> {
    let stand_ins: Vec<InvalidationEvent> =
        batch.poison.iter().map(|poison| InvalidationEvent::tenant_wide(&poison.row)).collect();
    let mut by_tenant: HashMap<Uuid, BTreeSet<Tag>> = HashMap::new();
    for event in batch.events.iter().map(|claimed| &claimed.event).chain(&stand_ins) {
        by_tenant.entry(event.tenant_id).or_default().extend(event.tags.iter().cloned());
    }
    by_tenant
}

/// How many script calls [`invalidate_by_tenant`] sends for `tags`.
fn calls_for(tags: &BTreeSet<Tag>) -> usize {
    tags.len().div_ceil(TAGS_PER_CALL)
}

/// Each tenant's share of `ack` when every tenant of `by_tenant` is invalidated at once: the calls
/// to one master (`master_of`; `None` for a single Redis, or a slot not yet looked up) share it
/// ([`ReplicaAck::shared_by`]), since that master's connection runs their `WAIT`s one after
/// another.
pub fn shares_of_ack(
    by_tenant: &HashMap<Uuid, BTreeSet<Tag>>,
    ack: ReplicaAck,
    master_of: impl Fn(Uuid) -> Option<Arc<str>>,
) -> HashMap<Uuid, ReplicaAck> {
    let masters: HashMap<Uuid, Option<Arc<str>>> =
        by_tenant.keys().map(|tenant| (*tenant, master_of(*tenant))).collect();
    let mut calls_on: HashMap<&Option<Arc<str>>, usize> = HashMap::new();
    for (tenant, tags) in by_tenant {
        *calls_on.entry(&masters[tenant]).or_default() += calls_for(tags);
    }
    masters.iter().map(|(tenant, master)| (*tenant, ack.shared_by(calls_on[master]))).collect()
}

/// Invalidates each tenant's tags, concurrently over the multiplexed connection, in calls of
/// `TAGS_PER_CALL` tags, each waiting for the tenant's `ack` and recording `replayed_by` as the
/// replay floor the new versions need on a read replica.
pub async fn invalidate_by_tenant(
    redis: &RedisConnection,
    keyspace: &Keyspace,
    by_tenant: HashMap<Uuid, BTreeSet<Tag>>,
    ack: impl Fn(Uuid) -> ReplicaAck,
    replayed_by: Lsn,
) -> Vec<(Uuid, Result<Reclaimable, InvalidateError>)> {
    let tenants = by_tenant.into_iter().map(|(tenant, tags)| {
        let ack = ack(tenant);
        async move {
            let tags: Vec<Tag> = tags.into_iter().collect();
            let calls = tags.chunks(TAGS_PER_CALL).map(|chunk| {
                let mut connection = redis.clone();
                async move {
                    protocol::invalidate_replicated(&mut connection, keyspace, tenant, chunk, ack, Some(replayed_by))
                        .await
                }
            });
            let moved = futures::future::try_join_all(calls).await;
            let merged = |mut all: Reclaimable, moved| {
                all.extend(moved);
                all
            };
            (tenant, moved.map(|moved| moved.into_iter().fold(Reclaimable::default(), merged)))
        }
    });
    futures::future::join_all(tenants).await
}
