//! What a process can see of a Redis Cluster's health, polled in the background: how many nodes
//! it knows, whether every slot is served, which master serves which slots (`slot_owners`),
//! and the failovers and slot migrations that happened between two looks. Both processes export
//! it as metrics and in `/readyz`. A slot a look finds served by another master is followed on
//! every cluster connection of the process (`follow`).

mod follow;
mod slot_owners;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use uuid::Uuid;

use crate::keys::Keyspace;
use crate::redis_connection::RedisConnection;
use follow::SlotFollower;
use slot_owners::SlotOwners;

/// One look at the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Nodes the least-informed master knows (`cluster_known_nodes`).
    pub known_nodes: u32,
    /// Slots served by a healthy master, as the least-informed master sees it.
    pub slots_ok: u32,
    /// Whether every master reports `cluster_state:ok`.
    pub state_ok: bool,
    /// Per slot range: its master's node id and the ids of that master's replicas.
    ranges: Vec<SlotRange>,
    /// The ids of the nodes not flagged failing.
    answering: Vec<String>,
}

/// A range of slots with its master's node id and that master's replicas, as one look saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    first: u16,
    last: u16,
    master: String,
    replicas: Vec<String>,
}

/// What changed between two views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterChanges {
    /// Masters replaced by one of their own replicas (a failover, forced or manual).
    pub failovers: u64,
    /// Slots that moved to a master that was not a replica of their previous one (resharding).
    pub slots_moved: u64,
}

impl ClusterView {
    /// Reads the cluster's view of itself; `None` when the connection is to a single node.
    pub async fn read(connection: &mut RedisConnection) -> redis::RedisResult<Option<Self>> {
        if !connection.is_cluster() {
            return Ok(None);
        }
        let infos: Vec<(String, String)> =
            connection.on_every_master(&redis::cmd("CLUSTER").arg("INFO").clone()).await?;
        let field = |info: &str, name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim).map(str::to_owned)
        };
        let number =
            |info: &str, name: &str| field(info, name).and_then(|value| value.parse::<u32>().ok()).unwrap_or(0);
        let known_nodes = infos.iter().map(|(_, info)| number(info, "cluster_known_nodes")).min().unwrap_or(0);
        let slots_ok = infos.iter().map(|(_, info)| number(info, "cluster_slots_ok")).min().unwrap_or(0);
        let state_ok =
            !infos.is_empty() && infos.iter().all(|(_, info)| field(info, "cluster_state").as_deref() == Some("ok"));
        // CLUSTER NODES, not CLUSTER SLOTS: the latter leaves out replicas whose replication
        // offset the answering node has not heard yet (as after a start), and a failover would
        // then look like slots moving to a stranger.
        let nodes: String = connection.on_any_node(redis::cmd("CLUSTER").arg("NODES")).await?;
        let (ranges, answering) = parse_nodes(&nodes);
        Ok(Some(Self { known_nodes, slots_ok, state_ok, ranges, answering }))
    }

    /// The range of this view holding `slot`, with its master and replicas.
    fn range_with(&self, slot: u16) -> Option<&SlotRange> {
        self.ranges.iter().find(|range| (range.first..=range.last).contains(&slot))
    }

    /// The failovers and slot moves that lead from `before` to `self`.
    pub fn changes_since(&self, before: &ClusterView) -> ClusterChanges {
        let mut changes = ClusterChanges::default();
        let mut promoted: BTreeMap<&str, &str> = BTreeMap::new();
        for range in &self.ranges {
            for slot in range.first..=range.last {
                let Some(previous) = before.range_with(slot) else { continue };
                if previous.master == range.master {
                    continue;
                }
                if previous.replicas.contains(&range.master) {
                    promoted.insert(previous.master.as_str(), range.master.as_str());
                } else {
                    changes.slots_moved += 1;
                }
            }
        }
        changes.failovers = promoted.len() as u64;
        changes
    }
}

/// `CLUSTER NODES`: a line per node, `<id> <ip:port@bus-port[,hostname]> <flags> <master id or ->
/// <ping> <pong> <epoch> <link> <slots…>`, where a master's slots are `first-last` or a single
/// slot (and `[slot->-id]`/`[slot-<-id]` for a migration in progress, which do not change the
/// owner). Returns the slot ranges and the ids of the nodes not flagged failing (`fail`, `fail?`),
/// without an address (`noaddr`) or still being introduced (`handshake`).
fn parse_nodes(reply: &str) -> (Vec<SlotRange>, Vec<String>) {
    let lines: Vec<Vec<&str>> = reply.lines().map(|line| line.split_whitespace().collect()).collect();
    let replicas_of = |master: &str| -> Vec<String> {
        lines.iter().filter(|fields| fields.get(3) == Some(&master)).map(|fields| fields[0].to_owned()).collect()
    };
    let mut ranges = Vec::new();
    for fields in lines.iter().filter(|fields| fields.len() > 8) {
        let master = fields[0];
        for slots in fields[8..].iter().filter(|slots| !slots.starts_with('[')) {
            let (first, last) = slots.split_once('-').unwrap_or((slots, slots));
            if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                ranges.push(SlotRange { first, last, master: master.to_owned(), replicas: replicas_of(master) });
            }
        }
    }
    let unusable = ["fail", "noaddr", "handshake"];
    let answers = |flags: &str| !flags.split(',').any(|flag| unusable.contains(&flag.trim_end_matches('?')));
    let answering =
        lines.iter().filter(|fields| fields.len() > 2 && answers(fields[2])).map(|fields| fields[0].to_owned());
    (ranges, answering.collect())
}

/// How soon the watch looks again after a look that found the cluster unsettled (a master that
/// did not answer, or one that reports the cluster not ok), instead of its interval: a failover
/// is seen, and followed, within this of the replica's promotion. A look costs a `CLUSTER INFO`
/// per master and one `CLUSTER NODES`.
pub const UNSETTLED_LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// The latest view, as `/readyz` reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClusterHealth {
    pub known_nodes: u32,
    pub slots_ok: u32,
    pub state_ok: bool,
    pub failovers_seen: u64,
    pub slots_moved_seen: u64,
}

/// Polls the cluster, keeps the latest [`ClusterHealth`] and which master serves which slots,
/// and exports the health as metrics.
#[derive(Clone)]
pub struct ClusterWatch {
    latest: Arc<Mutex<Option<ClusterHealth>>>,
    /// When the last look that every master answered began.
    last_look: Arc<Mutex<Option<Instant>>>,
    /// Which master served which slots in the latest look.
    owners: SlotOwners,
    /// Follows a slot's new master on the watch's connection and the process's others.
    follower: SlotFollower,
    /// How many looks found some slot served by another master than the look before.
    master_changes: Arc<watch::Sender<u64>>,
    known_nodes: IntGauge,
    slots_ok: IntGauge,
    state_ok: IntGauge,
    failovers: IntCounter,
    slots_moved: IntCounter,
}

impl std::fmt::Debug for ClusterWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterWatch").field("latest", &self.latest()).finish()
    }
}

impl ClusterWatch {
    /// Registers `openrisk_redis_cluster_*` metrics in `registry`; `keyspace` names the keys it
    /// sends to reach a slot's master.
    pub fn new(registry: &Registry, keyspace: Keyspace) -> prometheus::Result<Self> {
        let owners = SlotOwners::default();
        let watch = Self {
            latest: Arc::default(),
            last_look: Arc::default(),
            follower: SlotFollower::new(owners.clone(), keyspace),
            owners,
            master_changes: Arc::new(watch::Sender::new(0)),
            known_nodes: IntGauge::new(
                "openrisk_redis_cluster_known_nodes",
                "Redis Cluster nodes known to every master",
            )?,
            slots_ok: IntGauge::new(
                "openrisk_redis_cluster_slots_ok",
                "Redis Cluster slots served by a healthy master (of 16384)",
            )?,
            state_ok: IntGauge::new(
                "openrisk_redis_cluster_state_ok",
                "1 when every Redis Cluster master reports cluster_state:ok",
            )?,
            failovers: IntCounter::new(
                "openrisk_redis_cluster_failovers_total",
                "Redis Cluster masters seen replaced by their replica",
            )?,
            slots_moved: IntCounter::new(
                "openrisk_redis_cluster_slots_moved_total",
                "Redis Cluster slots seen moving to another master (resharding; clients follow MOVED/ASK)",
            )?,
        };
        registry.register(Box::new(watch.known_nodes.clone()))?;
        registry.register(Box::new(watch.slots_ok.clone()))?;
        registry.register(Box::new(watch.state_ok.clone()))?;
        registry.register(Box::new(watch.failovers.clone()))?;
        registry.register(Box::new(watch.slots_moved.clone()))?;
        Ok(watch)
    }

    /// The latest health; `None` before the first successful look (or on a single node).
    pub fn latest(&self) -> Option<ClusterHealth> {
        self.latest.lock().ok().and_then(|latest| latest.clone())
    }

    /// The node id of the master serving `slot` in the latest look; `None` before the first look,
    /// on a single node, or for a slot no master serves.
    pub fn master_of(&self, slot: u16) -> Option<Arc<str>> {
        self.owners.master_of(slot)
    }

    /// The master serving every key of `tenant` ([`crate::keys::tenant_slot`]), as
    /// [`Self::master_of`] says. On a single Redis (no slots known) the slot is not computed:
    /// every Redis call asks.
    pub fn master_of_tenant(&self, tenant: Uuid) -> Option<Arc<str>> {
        self.owners.master_of_tenant(tenant)
    }

    /// When the last look that every master answered began; `None` before the first.
    pub fn last_look(&self) -> Option<Instant> {
        *self.last_look.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a look has told which masters serve the slots.
    pub fn knows_slots(&self) -> bool {
        self.owners.knows_slots()
    }

    /// The masters that served some slot in the latest look.
    pub fn masters(&self) -> Vec<Arc<str>> {
        self.owners.masters()
    }

    /// Whether `master` served some slot in the latest look.
    pub fn serves(&self, master: &str) -> bool {
        self.owners.serves(master)
    }

    /// Sees a new value each time a look finds some slot served by another master than the look
    /// before (a failover or a migration): [`Self::master_of`] names the new master by then.
    pub fn master_changes(&self) -> watch::Receiver<u64> {
        self.master_changes.subscribe()
    }

    /// Makes `connection`, a cluster connection of the process besides the one the watch polls
    /// with, follow each slot's change of master as the watch's own does ([`Self::run`]). The
    /// watch keeps it for as long as it runs: register a connection that lasts as long, once.
    pub fn follow(&self, connection: RedisConnection) {
        self.follower.add(connection);
    }

    /// Looks at the cluster every `every` (sooner while it is unsettled:
    /// [`UNSETTLED_LOOK_INTERVAL`]) for as long as the process runs; a failed look marks the state
    /// as not ok and keeps the last topology to compare the next one with. Beside the looks, the
    /// slots they find served by another master are followed (`SlotFollower::run`).
    pub async fn run(self, connection: RedisConnection, every: Duration) {
        if !connection.is_cluster() {
            return;
        }
        let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
        tokio::join!(self.look(connection.clone(), every, changes), self.follower.run(connection, changed, every));
    }

    /// Looks at the cluster every `every` ([`UNSETTLED_LOOK_INTERVAL`] after a look that found it
    /// unsettled), sends each slot a look finds served by another master than the look before to
    /// `changes`, and tells [`Self::master_changes`] of it.
    async fn look(&self, mut connection: RedisConnection, every: Duration, changes: UnboundedSender<u16>) {
        let mut previous: Option<ClusterView> = None;
        // Whether the last look failed: a master that stays down fails every look, 10 a second,
        // so only the first failure of a run is a warning (the others are debug lines).
        let mut failing = false;
        loop {
            let started = Instant::now();
            let read = tokio::time::timeout(every, ClusterView::read(&mut connection)).await;
            let settled = matches!(&read, Ok(Ok(Some(view))) if view.state_ok);
            let reason = match &read {
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("timed out".to_owned()),
                Ok(_) => None,
            };
            match (&reason, std::mem::replace(&mut failing, reason.is_some())) {
                (Some(reason), false) => tracing::warn!(reason, "could not read the redis cluster's state"),
                (Some(reason), true) => tracing::debug!(reason, "could not read the redis cluster's state"),
                (None, true) => tracing::info!("read the redis cluster's state again"),
                (None, false) => {}
            }
            let changed = match read {
                Ok(Ok(Some(view))) => {
                    let changes = previous.as_ref().map(|before| view.changes_since(before)).unwrap_or_default();
                    if changes != ClusterChanges::default() {
                        tracing::warn!(
                            failovers = changes.failovers,
                            slots_moved = changes.slots_moved,
                            "redis cluster topology changed"
                        );
                    }
                    let changed = self.record(&view, changes, started);
                    previous = Some(view);
                    changed
                }
                Ok(Ok(None)) => return,
                Ok(Err(_)) | Err(_) => self.record_unreachable(&mut connection, every).await,
            };
            if !changed.is_empty() {
                self.master_changes.send_modify(|looks| *looks += 1);
            }
            for slot in changed {
                tracing::info!(slot, "a slot changed master: following it on every connection");
                let _ = changes.send(slot);
            }
            tokio::time::sleep(if settled { every } else { UNSETTLED_LOOK_INTERVAL.min(every) }).await;
        }
    }

    /// Records a look that every master answered, begun at `started`.
    fn record(&self, view: &ClusterView, changes: ClusterChanges, started: Instant) -> Vec<u16> {
        let changed = self.owners.record(&view.ranges, &view.answering);
        *self.last_look.lock().unwrap_or_else(PoisonError::into_inner) = Some(started);
        self.known_nodes.set(i64::from(view.known_nodes));
        self.slots_ok.set(i64::from(view.slots_ok));
        self.state_ok.set(i64::from(view.state_ok));
        self.failovers.inc_by(changes.failovers);
        self.slots_moved.inc_by(changes.slots_moved);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(ClusterHealth {
                known_nodes: view.known_nodes,
                slots_ok: view.slots_ok,
                state_ok: view.state_ok,
                failovers_seen: self.failovers.get(),
                slots_moved_seen: self.slots_moved.get(),
            });
        }
        changed
    }

    /// Marks the state as not ok after a look some master did not answer, and still learns which
    /// master serves which slots from one node's `CLUSTER NODES` (within `within`): a process that
    /// starts while a master is down, or looks while one fails over, tells the masters apart.
    async fn record_unreachable(&self, connection: &mut RedisConnection, within: Duration) -> Vec<u16> {
        self.state_ok.set(0);
        if let Ok(mut latest) = self.latest.lock()
            && let Some(health) = latest.as_mut()
        {
            health.state_ok = false;
        }
        let command = redis::cmd("CLUSTER").arg("NODES").clone();
        let Ok(Ok(nodes)) = tokio::time::timeout(within, connection.on_any_node::<String>(&command)).await else {
            return Vec::new();
        };
        let (ranges, answering) = parse_nodes(&nodes);
        self.owners.record(&ranges, &answering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ranges: &[(u16, u16, &str, &[&str])]) -> ClusterView {
        ClusterView {
            known_nodes: 6,
            slots_ok: 16_384,
            state_ok: true,
            ranges: ranges
                .iter()
                .map(|(first, last, master, replicas)| SlotRange {
                    first: *first,
                    last: *last,
                    master: (*master).to_owned(),
                    replicas: replicas.iter().map(|id| (*id).to_owned()).collect(),
                })
                .collect(),
            answering: Vec::new(),
        }
    }

    #[test]
    fn a_replica_taking_over_its_masters_slots_is_one_failover() {
        let before = view(&[(0, 8191, "a", &["a1"]), (8192, 16383, "b", &["b1"])]);
        let after = view(&[(0, 8191, "a1", &[]), (8192, 16383, "b", &["b1"])]);
        assert_eq!(after.changes_since(&before), ClusterChanges { failovers: 1, slots_moved: 0 });
    }

    #[test]
    fn cluster_nodes_gives_every_master_its_ranges_and_replicas_whatever_their_offsets() {
        let reply = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b]
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 16000
a1 127.0.0.1:7003@17003 slave a 0 0 1 connected
b1 127.0.0.1:7004@17004 slave,fail b 0 0 2 disconnected
c 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected
";
        let (ranges, _) = parse_nodes(reply);
        let owners: Vec<(u16, u16, &str, Vec<&str>)> = ranges
            .iter()
            .map(|range| {
                (range.first, range.last, range.master.as_str(), range.replicas.iter().map(String::as_str).collect())
            })
            .collect();
        assert_eq!(
            owners,
            vec![(0, 5460, "a", vec!["a1"]), (5461, 10922, "b", vec!["b1"]), (16000, 16000, "b", vec!["b1"])]
        );
    }

    #[test]
    fn slots_taken_over_by_another_master_are_counted_as_moved() {
        let before = view(&[(0, 8191, "a", &["a1"]), (8192, 16383, "b", &["b1"])]);
        let after = view(&[(0, 8181, "a", &["a1"]), (8182, 16383, "b", &["b1"])]);
        assert_eq!(after.changes_since(&before), ClusterChanges { failovers: 0, slots_moved: 10 });
        assert_eq!(before.changes_since(&before), ClusterChanges::default());
    }
}
