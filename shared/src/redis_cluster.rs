//! What a process can see of a Redis Cluster's health, polled in the background: how many nodes
//! it knows, whether every slot is served, and the failovers and slot migrations that happened
//! between two looks. Both processes export it as metrics and in `/readyz`. When a look finds a
//! slot served by another master, the watch checks every cluster connection of the process with a
//! command of that slot until each one reaches the slot's master, and makes one that cannot read
//! the slots again: a client whose calls to a master that stopped answering time out reconnects
//! to that master, and can keep sending them there after a failover, as nothing redirects it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use serde::Serialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use uuid::Uuid;

use crate::keys::{Keyspace, tenant_slot};
use crate::redis_connection::RedisConnection;

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

    fn owner_of(&self, slot: u16) -> Option<&SlotRange> {
        self.ranges.iter().find(|range| (range.first..=range.last).contains(&slot))
    }

    /// The failovers and slot moves that lead from `before` to `self`.
    pub fn changes_since(&self, before: &ClusterView) -> ClusterChanges {
        let mut changes = ClusterChanges::default();
        let mut promoted: BTreeMap<&str, &str> = BTreeMap::new();
        for range in &self.ranges {
            for slot in range.first..=range.last {
                let Some(previous) = before.owner_of(slot) else { continue };
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

/// How many times a slot is checked before the watch gives up following it (a cluster with one
/// master has no other to redirect through): two to six minutes, a round every 2–6 s.
const FOLLOW_CHECKS: u32 = 60;

/// The master of `owners` (sorted slot ranges) serving `slot`.
fn owner_of(owners: &[SlotOwner], slot: u16) -> Option<Arc<str>> {
    let index = owners.partition_point(|owner| owner.last < slot);
    owners.get(index).filter(|owner| owner.first <= slot).map(|owner| owner.master.clone())
}

/// The latest view, as `/readyz` reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClusterHealth {
    pub known_nodes: u32,
    pub slots_ok: u32,
    pub state_ok: bool,
    pub failovers_seen: u64,
    pub slots_moved_seen: u64,
}

/// A master's node id, a range of slots it serves, and whether it is flagged failing.
#[derive(Debug, Clone)]
struct SlotOwner {
    first: u16,
    last: u16,
    master: Arc<str>,
    answering: bool,
}

/// Polls the cluster, keeps the latest [`ClusterHealth`] and which master serves which slots,
/// and exports the health as metrics.
#[derive(Clone)]
pub struct ClusterWatch {
    latest: Arc<Mutex<Option<ClusterHealth>>>,
    /// When the last look that every master answered began.
    last_look: Arc<Mutex<Option<Instant>>>,
    /// The latest look's slot ranges, sorted, each with its master.
    owners: Arc<RwLock<Vec<SlotOwner>>>,
    /// The process's other cluster connections, made to follow a slot's change of master with
    /// the watch's own.
    followers: Arc<Mutex<Vec<RedisConnection>>>,
    /// Names the key a command sends to a slot's master.
    keyspace: Keyspace,
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
        let watch = Self {
            latest: Arc::default(),
            last_look: Arc::default(),
            owners: Arc::default(),
            followers: Arc::default(),
            keyspace,
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
        owner_of(&self.owners.read().unwrap_or_else(PoisonError::into_inner), slot)
    }

    /// The master serving every key of `tenant` ([`tenant_slot`]), as [`Self::master_of`] says.
    /// On a single Redis (no slots known) the slot is not computed: every Redis call asks.
    pub fn master_of_tenant(&self, tenant: Uuid) -> Option<Arc<str>> {
        let owners = self.owners.read().unwrap_or_else(PoisonError::into_inner);
        (!owners.is_empty()).then(|| owner_of(&owners, tenant_slot(tenant))).flatten()
    }

    /// When the last look that every master answered began; `None` before the first.
    pub fn last_look(&self) -> Option<Instant> {
        *self.last_look.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a look has told which masters serve the slots.
    pub fn knows_slots(&self) -> bool {
        !self.owners.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// The masters that served some slot in the latest look.
    pub fn masters(&self) -> Vec<Arc<str>> {
        let mut masters: Vec<Arc<str>> = self
            .owners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|owner| owner.master.clone())
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Whether `master` served some slot in the latest look.
    pub fn serves(&self, master: &str) -> bool {
        self.owners.read().unwrap_or_else(PoisonError::into_inner).iter().any(|owner| &*owner.master == master)
    }

    /// Makes `connection`, a cluster connection of the process besides the one the watch polls
    /// with, follow each slot's change of master as the watch's own does ([`Self::run`]). The
    /// watch keeps it for as long as it runs: register a connection that lasts as long, once.
    pub fn follow(&self, connection: RedisConnection) {
        if connection.is_cluster() {
            self.followers.lock().unwrap_or_else(PoisonError::into_inner).push(connection);
        }
    }

    /// Looks at the cluster every `every` for as long as the process runs; a failed look marks
    /// the state as not ok and keeps the last topology to compare the next one with. Beside the
    /// looks, the slots they find served by another master are followed
    /// ([`Self::follow_changed_slots`]).
    pub async fn run(self, connection: RedisConnection, every: Duration) {
        if !connection.is_cluster() {
            return;
        }
        let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
        tokio::join!(
            self.look(connection.clone(), every, changes),
            self.follow_changed_slots(connection, changed, every)
        );
    }

    /// Looks at the cluster every `every`, and sends each slot a look finds served by another
    /// master than the look before to `changes`.
    async fn look(&self, mut connection: RedisConnection, every: Duration, changes: UnboundedSender<u16>) {
        let mut previous: Option<ClusterView> = None;
        loop {
            let started = Instant::now();
            let changed = match tokio::time::timeout(every, ClusterView::read(&mut connection)).await {
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
                Ok(Err(error)) => self.record_unreachable(&mut connection, &error.to_string(), every).await,
                Err(_) => self.record_unreachable(&mut connection, "timed out", every).await,
            };
            for slot in changed {
                tracing::info!(slot, "a slot changed master: following it on every connection");
                let _ = changes.send(slot);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Follows each slot received from `changes` on the watch's own connection (`own`) and every
    /// follower, all at once, in rounds `every` apart ([`RedisConnection::follow_slot`], each
    /// call given up after `every`, so a round lasts up to twice that) until each connection
    /// reaches the slot's master, or [`FOLLOW_CHECKS`] rounds. A slot reported again keeps its
    /// rounds left (a look that read an old view from a node and the next one could report it
    /// over and over). A slot no master serves any more is dropped.
    async fn follow_changed_slots(&self, own: RedisConnection, mut changes: UnboundedReceiver<u16>, every: Duration) {
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
            let mut connections = vec![own.clone()];
            connections.extend(self.followers.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned());
            changed.retain(|slot, _| self.master_of(*slot).is_some());
            let checks = changed.iter().map(|(&slot, (key, _))| {
                let via = self.master_of(slot).and_then(|master| self.slot_of_another_answering_master(&master));
                let connections =
                    connections.iter().map(move |connection| connection.clone().follow_slot(key, via, every));
                async move { (slot, futures::future::join_all(connections).await.into_iter().all(|follows| follows)) }
            });
            for (slot, followed) in futures::future::join_all(checks).await {
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

    /// The first slot of a master other than `master` that no node flags failing.
    fn slot_of_another_answering_master(&self, master: &str) -> Option<u16> {
        let owners = self.owners.read().unwrap_or_else(PoisonError::into_inner);
        owners.iter().find(|owner| owner.answering && *owner.master != *master).map(|owner| owner.first)
    }

    /// Records a look that every master answered, begun at `started`.
    fn record(&self, view: &ClusterView, changes: ClusterChanges, started: Instant) -> Vec<u16> {
        let changed = self.record_owners(&view.ranges, &view.answering);
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

    /// Records which master serves which slots, and which of them no node flags failing
    /// (`answering`); returns a slot of each range whose master is another than in the look
    /// before (a failover, or a range split by resharding), none after the first look.
    fn record_owners(&self, ranges: &[SlotRange], answering: &[String]) -> Vec<u16> {
        let mut owners: Vec<SlotOwner> = Vec::with_capacity(ranges.len());
        for range in ranges {
            let known = owners.iter().find(|owner| *owner.master == *range.master).map(|owner| owner.master.clone());
            let master = known.unwrap_or_else(|| Arc::from(range.master.as_str()));
            let answering = answering.contains(&range.master);
            owners.push(SlotOwner { first: range.first, last: range.last, master, answering });
        }
        owners.sort_by_key(|owner| owner.first);
        let mut latest = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        let mut changed = Vec::new();
        for owner in &owners {
            let overlapping = latest.iter().filter(|before| before.first <= owner.last && owner.first <= before.last);
            let taken = overlapping.filter(|before| before.master != owner.master);
            changed.extend(taken.map(|before| before.first.max(owner.first)));
        }
        *latest = owners;
        changed
    }

    /// Marks the state as not ok after a look some master did not answer, and still learns which
    /// master serves which slots from one node's `CLUSTER NODES` (within `within`): a process that
    /// starts while a master is down, or looks while one fails over, tells the masters apart.
    async fn record_unreachable(&self, connection: &mut RedisConnection, reason: &str, within: Duration) -> Vec<u16> {
        tracing::warn!(reason, "could not read the redis cluster's state");
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
        self.record_owners(&ranges, &answering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No slot changed master.
    const NONE: [u16; 0] = [];

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
    fn each_slot_is_owned_by_the_master_that_served_it_in_the_latest_look() {
        // A look every master answered records them through `record`, one some did not through
        // `record_unreachable`'s own `CLUSTER NODES`: both through `record_owners`.
        let watch = ClusterWatch::new(&Registry::new(), Keyspace::new("or")).unwrap();
        assert_eq!(watch.master_of(0), None, "nothing is known before the first look");
        assert!(!watch.knows_slots());
        // Out of order, one master with two ranges, and a slot (100) no master serves.
        let first = view(&[(8192, 16383, "b", &[]), (101, 8191, "a", &[]), (0, 99, "a", &[])]);
        assert_eq!(watch.record_owners(&first.ranges, &[]), NONE, "the first look finds nothing taken over");
        let owner = |slot| watch.master_of(slot).map(|master| master.to_string());
        assert_eq!(
            [owner(0), owner(99), owner(101), owner(8191)],
            [Some("a".into()), Some("a".into()), Some("a".into()), Some("a".into())]
        );
        assert_eq!([owner(8192), owner(16383)], [Some("b".into()), Some("b".into())]);
        assert_eq!(owner(100), None);
        assert!(watch.serves("a") && watch.serves("b") && !watch.serves("c") && watch.knows_slots());
        assert_eq!(watch.masters(), [Arc::from("a"), Arc::from("b")]);

        assert_eq!(watch.record_owners(&view(&[(0, 16383, "c", &[])]).ranges, &[]), [0, 101, 8192]);
        assert_eq!(owner(8192).as_deref(), Some("c"), "the latest look replaces the last");
        assert!(!watch.serves("a"));
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
    fn a_slot_served_by_another_master_is_followed_through_a_master_no_node_flags_failing() {
        let before = "\
a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191
b 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 8192-12000
c 127.0.0.1:7002@17002 master - 0 0 4 connected 12001-16383
a1 127.0.0.1:7003@17003 slave a 0 0 1 connected
";
        // `a` stopped answering and `a1` took its slots over; `b` is suspected failing; `d` has
        // no address yet.
        let after = "\
a 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected
b 127.0.0.1:7001@17001,host-b myself,master,fail? - 0 0 2 connected 8192-12000
c 127.0.0.1:7002@17002 master - 0 0 4 connected 12001-16383
a1 127.0.0.1:7003@17003 master - 0 0 3 connected 0-8191
d :0@0 noaddr - 0 0 0 disconnected
";
        let watch = ClusterWatch::new(&Registry::new(), Keyspace::new("or")).unwrap();
        let look = |reply| {
            let (ranges, answering) = parse_nodes(reply);
            watch.record_owners(&ranges, &answering)
        };
        assert_eq!(look(before), NONE);
        assert_eq!(look(before), NONE, "the same owners again");
        assert_eq!(look(after), [0], "a1 took a's slots over");
        assert_eq!(watch.master_of(0).as_deref(), Some("a1"));
        assert_eq!(watch.slot_of_another_answering_master("a1"), Some(12_001), "c, not b");
        assert_eq!(watch.slot_of_another_answering_master("c"), Some(0));
        assert_eq!(parse_nodes(after).1, ["c", "a1"]);
    }

    #[test]
    fn every_range_served_by_another_master_is_followed_and_none_that_kept_its_master() {
        let watch = ClusterWatch::new(&Registry::new(), Keyspace::new("or")).unwrap();
        let look = |ranges: &[(u16, u16, &str, &[&str])]| watch.record_owners(&view(ranges).ranges, &[]);
        let three = [(0, 5460, "a", &[][..]), (5461, 10922, "b", &[]), (10923, 16383, "c", &[])];
        assert_eq!(look(&three), NONE);
        // Two masters failed over in one look.
        let two_promoted = [(0, 5460, "a1", &[][..]), (5461, 10922, "b", &[]), (10923, 16383, "c1", &[])];
        assert_eq!(look(&two_promoted), [0, 10923]);
        // A range split by resharding: the slots that moved, not the start of the range they left.
        let split =
            [(0, 5400, "a1", &[][..]), (5401, 5460, "b", &[]), (5461, 10922, "b", &[]), (10923, 16383, "c1", &[])];
        assert_eq!(look(&split), [5401]);
    }

    #[test]
    fn slots_taken_over_by_another_master_are_counted_as_moved() {
        let before = view(&[(0, 8191, "a", &["a1"]), (8192, 16383, "b", &["b1"])]);
        let after = view(&[(0, 8181, "a", &["a1"]), (8182, 16383, "b", &["b1"])]);
        assert_eq!(after.changes_since(&before), ClusterChanges { failovers: 0, slots_moved: 10 });
        assert_eq!(before.changes_since(&before), ClusterChanges::default());
    }
}
