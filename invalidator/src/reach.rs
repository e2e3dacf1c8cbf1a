//! Whether a replica reaches Redis, as `/readyz` and `openrisk_invalidator_connected` report
//! it, from the answers its calls got. On a Redis Cluster one master down is not Redis lost: the
//! replica still invalidates the other masters' tenants. Redis is lost when the last call to
//! every master failed (the master of a tenant's slot as the cluster watch last saw it; a single
//! Redis, or a cluster before the watch's first look, counts as one master). A master whose last
//! answer was a success, however old, or that was never called counts as reachable: one master
//! down must not look like Redis lost, and telling a whole cluster down while only some masters'
//! tenants write would take calls to the others.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use openrisk_shared::redis_cluster::ClusterWatch;
use uuid::Uuid;

use crate::worker::Status;

/// The last answer from each master, and the status it sets.
#[derive(Debug, Clone)]
pub struct Reach {
    /// Whether the last call to each master got an answer (`None`: the one master of a single
    /// Redis, or any master before the cluster watch's first look).
    answered: Arc<Mutex<HashMap<Option<Arc<str>>, bool>>>,
    topology: ClusterWatch,
    status: Arc<Status>,
}

impl Reach {
    pub fn new(topology: ClusterWatch, status: Arc<Status>) -> Self {
        Self { answered: Arc::default(), topology, status }
    }

    /// A call for `tenant` got an answer from its master (`reached`: a missing replica
    /// acknowledgement is an answer), or none.
    pub fn heard(&self, tenant: Uuid, reached: bool) {
        let master = self.topology.master_of_tenant(tenant);
        let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        // The common case, an answer from a master the watch knows, cannot make Redis lost: it
        // forgets the masters that serve no slot without listing those that do.
        if reached && master.as_ref().is_some_and(|master| self.topology.serves(master)) {
            answered.retain(|known, _| known.as_ref().is_some_and(|known| self.topology.serves(known)));
            answered.insert(master, true);
            self.status.redis_connected.store(true, Ordering::Relaxed);
            return;
        }
        answered.insert(master, reached);
        let masters = self.topology.masters();
        let lost = if masters.is_empty() {
            answered.get(&None) == Some(&false)
        } else {
            answered.retain(|master, _| master.as_ref().is_some_and(|master| masters.contains(master)));
            masters.iter().all(|master| answered.get(&Some(master.clone())) == Some(&false))
        };
        self.status.redis_connected.store(!lost, Ordering::Relaxed);
    }

    /// Whether the last call to every master failed.
    pub fn lost(&self) -> bool {
        !self.status.redis_connected.load(Ordering::Relaxed)
    }
}
