//! Makes every cluster connection of a process reach a slot's new master. A client whose calls
//! to a master that stopped answering time out reconnects to that master, and can keep sending
//! them there after its replica took the slots over, as nothing redirects it: each connection is
//! sent a command of the slot until it reaches the new master, and one that cannot is made to
//! read the slots again through another master.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::slot_owners::SlotOwners;
use crate::keys::Keyspace;
use crate::redis_connection::RedisConnection;

/// How many times a slot is checked before it is no longer followed (a cluster with one master
/// has no other to redirect through): two to six minutes, a round every 2–6 s.
const FOLLOW_CHECKS: u32 = 60;

/// The process's cluster connections besides the watch's own, and what it takes to follow a
/// slot on each of them.
#[derive(Clone)]
pub(super) struct SlotFollower {
    owners: SlotOwners,
    followers: Arc<Mutex<Vec<RedisConnection>>>,
    /// Names the key a command sends to a slot's master.
    keyspace: Keyspace,
}

impl SlotFollower {
    /// Follows slots to the masters `owners` says serve them, with keys of `keyspace`.
    pub(super) fn new(owners: SlotOwners, keyspace: Keyspace) -> Self {
        Self { owners, followers: Arc::default(), keyspace }
    }

    /// Adds `connection` to those made to follow each change of master; kept for as long as the
    /// follower runs.
    pub(super) fn add(&self, connection: RedisConnection) {
        if connection.is_cluster() {
            self.followers.lock().unwrap_or_else(PoisonError::into_inner).push(connection);
        }
    }

    /// Follows each slot received from `changes` on `own` and every added connection, all at once,
    /// in rounds `every` apart ([`RedisConnection::follow_slot`], each call given up after
    /// `every`, so a round lasts up to twice that) until each connection reaches the slot's
    /// master, or for [`FOLLOW_CHECKS`] rounds. A slot reported again keeps its rounds left (a
    /// look that read an old view from a node and the next one could report it over and over).
    /// A slot no master serves any more is dropped.
    pub(super) async fn run(&self, own: RedisConnection, mut changes: UnboundedReceiver<u16>, every: Duration) {
        // Each slot followed, with a key of it and the checks left.
        let mut changed: BTreeMap<u16, (String, u32)> = BTreeMap::new();
        loop {
            let mut reported = Vec::new();
            if changed.is_empty() {
                let Some(slot) = changes.recv().await else { return };
                reported.push(slot);
            }
            while let Ok(slot) = changes.try_recv() {
                reported.push(slot);
            }
            for slot in reported {
                if let (Entry::Vacant(new), Some(key)) = (changed.entry(slot), self.keyspace.slot_key(slot)) {
                    new.insert((key, FOLLOW_CHECKS));
                }
            }
            changed.retain(|slot, _| self.owners.master_of(*slot).is_some());
            let mut connections = vec![own.clone()];
            connections.extend(self.followers.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned());
            for (slot, followed) in self.check_round(&changed, &connections, every).await {
                let Some((_, left)) = changed.get_mut(&slot) else { continue };
                *left -= 1;
                if followed {
                    tracing::info!(slot, "every connection reaches the slot's new master");
                } else if *left == 0 {
                    tracing::warn!(slot, "gave up making every connection reach the slot's new master");
                } else {
                    continue;
                }
                changed.remove(&slot);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Sends each slot of `changed` one [`RedisConnection::follow_slot`] on every one of
    /// `connections`, all at once, redirecting through a slot of another master no node flags
    /// failing; returns each slot with whether every connection reached its master.
    async fn check_round(
        &self,
        changed: &BTreeMap<u16, (String, u32)>,
        connections: &[RedisConnection],
        every: Duration,
    ) -> Vec<(u16, bool)> {
        let checks = changed.iter().map(|(&slot, (key, _))| {
            let master = self.owners.master_of(slot);
            let via = master.and_then(|master| self.owners.slot_of_another_answering_master(&master));
            let follows = connections.iter().map(move |connection| connection.clone().follow_slot(key, via, every));
            async move { (slot, futures::future::join_all(follows).await.into_iter().all(|follows| follows)) }
        });
        futures::future::join_all(checks).await
    }
}
