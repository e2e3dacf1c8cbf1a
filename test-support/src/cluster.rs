//! A private Redis Cluster on free loopback ports: `redis-server` nodes with
//! `cluster-enabled yes` (no persistence, little memory), joined by `redis-cli --cluster create`.
//! Tests that fail over, kill or reshard it start their own; the rest share one per test run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::private::{ServerProcess, free_port, is_redis_process, run_quiet, spawn_quiet, wait_until};

/// Offset of a node's cluster bus port from its client port (fixed by Redis).
const BUS_PORT_OFFSET: u16 = 10_000;

/// A free client port whose cluster bus port is free and valid too.
fn free_node_port() -> u16 {
    loop {
        let port = free_port();
        if let Some(bus) = port.checked_add(BUS_PORT_OFFSET)
            && std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
}

/// One node of a [`PrivateRedisCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    pub port: u16,
    process: ServerProcess,
}

/// A Redis Cluster of its own: `masters` masters with `replicas` replicas each; every node is
/// killed and its files removed on drop.
#[derive(Debug)]
pub struct PrivateRedisCluster {
    /// Declared before `dir`: the nodes are killed before their files are removed.
    pub nodes: Vec<ClusterNode>,
    dir: TempDir,
}

impl PrivateRedisCluster {
    /// Three masters with one replica each, ready (every slot served, every replica synced).
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    pub fn start_with(masters: usize, replicas: usize) -> Self {
        let dir = tempfile::Builder::new().prefix("openrisk-redis-cluster-").tempdir().expect("tempdir");
        let mut cluster = Self { nodes: Vec::new(), dir };
        for _ in 0..masters * (1 + replicas) {
            let mut node = ClusterNode { port: free_node_port(), process: ServerProcess::stopped_by("KILL") };
            cluster.launch(&mut node);
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        run_quiet(
            Command::new("redis-cli").args(["--cluster", "create"]).args(&addresses).args([
                "--cluster-replicas",
                &replicas.to_string(),
                "--cluster-yes",
            ]),
            "redis-cli --cluster create",
        );
        cluster.wait_until_healthy(masters * replicas);
        cluster
    }

    /// `redis-cluster://` URL listing every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// `redis://` URL of one node, to send it commands of its own (`CLUSTER FAILOVER`, …).
    pub fn node_url(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    fn launch(&self, node: &mut ClusterNode) {
        let _ = std::fs::remove_file(self.dir.path().join(format!("nodes-{}.conf", node.port)));
        start_node(self.dir.path(), node);
    }

    /// Waits until every node sees `cluster_state:ok` and `replicas` replicas are linked.
    pub fn wait_until_healthy(&self, replicas: usize) {
        wait_until("redis cluster", Duration::from_secs(60), || {
            let all_ok = self.nodes.iter().filter(|node| node.process.is_running()).all(|node| {
                command(&self.node_url(node.port), &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let linked = self
                .nodes
                .iter()
                .filter(|node| node.process.is_running())
                .filter(|node| {
                    self.replication_info(node.port)
                        .is_some_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
                })
                .count();
            all_ok && linked >= replicas
        });
    }

    /// Ports of the current masters, as the node at `self.nodes[0]` or any live node sees them.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.process.is_running())
            .filter(|node| self.replication_info(node.port).is_some_and(|info| info.contains("role:master")))
            .map(|node| node.port)
            .collect()
    }

    /// Port of the master serving `key`'s slot: the one that answers a `GET` of it instead of
    /// redirecting. Asked again for up to 10 s, since right after a failover (an earlier test's,
    /// on this shared cluster) the old master may still redirect before the new one answers.
    pub fn master_of(&self, key: &str) -> u16 {
        let owns = |port: u16| {
            redis::Client::open(self.node_url(port))
                .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut conn| redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(&mut conn))
                .is_ok()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(port) = self.master_ports().into_iter().find(|&port| owns(port)) {
                return port;
            }
            assert!(Instant::now() < deadline, "no master serves {key}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts moving the slot of `key` from the master serving it to the one `choose` picks among
    /// the other masters, as a resharding does (`CLUSTER SETSLOT … IMPORTING` on the target, then
    /// `MIGRATING` on the source), moving no key yet.
    pub fn start_migrating(&self, key: &str, choose: impl FnOnce(&[u16]) -> u16) -> SlotMigration {
        let source = self.master_of(key);
        let others: Vec<u16> = self.master_ports().into_iter().filter(|&port| port != source).collect();
        assert!(!others.is_empty(), "no other master to migrate {key}'s slot to");
        let target = choose(&others);
        let slot = self.on(source, &["CLUSTER", "KEYSLOT", key]);
        let (source_id, target_id) = (self.on(source, &["CLUSTER", "MYID"]), self.on(target, &["CLUSTER", "MYID"]));
        assert_eq!(self.on(target, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]), "OK");
        assert_eq!(self.on(source, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]), "OK");
        SlotMigration { slot, source, target, target_id }
    }

    /// Moves every key of `migration`'s slot to its target, `batch` keys per `MIGRATE` with
    /// `pause` between two, as a resharding tool does but slower, so that readers and writers
    /// meet the slot half moved. Returns how many keys moved.
    pub fn move_keys(&self, migration: &SlotMigration, batch: usize, pause: Duration) -> usize {
        let client = redis::Client::open(self.node_url(migration.source)).expect("a node URL");
        let mut source = client.get_connection_with_timeout(Duration::from_secs(2)).expect("the source answers");
        source.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(&migration.slot)
                .arg(batch)
                .query(&mut source)
                .expect("CLUSTER GETKEYSINSLOT on the source");
            if keys.is_empty() {
                return moved;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(migration.target)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut source)
                .expect("MIGRATE to the target");
            moved += keys.len();
            std::thread::sleep(pause);
        }
    }

    /// Ends `migration` once its keys have moved: the slot is handed to the target on the target,
    /// then the source, then every other master (the order Redis documents).
    pub fn finish_migration(&self, migration: &SlotMigration) {
        let others =
            self.master_ports().into_iter().filter(|&port| port != migration.target && port != migration.source);
        for port in [migration.target, migration.source].into_iter().chain(others) {
            let handed = self.on(port, &["CLUSTER", "SETSLOT", &migration.slot, "NODE", &migration.target_id]);
            assert_eq!(handed, "OK", "SETSLOT NODE on {port}");
        }
    }

    /// `command` on the node on `port`, which must answer.
    fn on(&self, port: u16, args: &[&str]) -> String {
        command(&self.node_url(port), args).unwrap_or_else(|| panic!("{args:?} on {port} got no answer"))
    }

    /// Ports of the replicas of the master on `master`.
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.process.is_running())
            .filter(|node| {
                self.replication_info(node.port)
                    .is_some_and(|info| info.contains("role:slave") && info.contains(&format!("master_port:{master}")))
            })
            .map(|node| node.port)
            .collect()
    }

    /// Waits until every replica of the master on `master` has processed all that master had
    /// written when called: replication is asynchronous, so a write just answered may not be on a
    /// replica yet, and a test that then cuts the replica off would miss it.
    pub fn wait_until_replicated(&self, master: u16) {
        let offset = |info: &str, field: &str| info_field(info, field).and_then(|value| value.parse::<u64>().ok());
        let master_info = self.replication_info(master).expect("the master answers INFO replication");
        let written = offset(&master_info, "master_repl_offset").expect("the master reports its offset");
        let replicas = self.replicas_of(master);
        wait_until("replicas caught up with their master", Duration::from_secs(10), || {
            replicas.iter().all(|&replica| {
                // A link still in its initial sync reports no offset that means anything.
                self.replication_info(replica).is_some_and(|info| {
                    info_field(&info, "master_link_status") == Some("up")
                        && offset(&info, "slave_repl_offset").is_some_and(|read| read >= written)
                })
            })
        });
    }

    /// What `INFO replication` says on the node on `port`; `None` when it does not answer.
    fn replication_info(&self, port: u16) -> Option<String> {
        command(&self.node_url(port), &["INFO", "replication"])
    }

    /// How many clients of the node on `port` wait in a blocking command (`WAIT`, say); `None`
    /// when it does not answer.
    pub fn blocked_clients(&self, port: u16) -> Option<u64> {
        let info = command(&self.node_url(port), &["INFO", "clients"])?;
        info_field(&info, "blocked_clients")?.parse().ok()
    }

    /// Freezes the replica on `replica` and closes every replication link of the master on
    /// `master`, until that master reports none, so nothing the master applies from now on
    /// reaches the replica, not even through its socket buffers (a link still in its handshake is
    /// not of type replica yet, so one kill may miss it).
    pub fn cut_off_replica(&self, replica: u16, master: u16) {
        self.pause(replica);
        let master_url = self.node_url(master);
        wait_until("the master has no replication link left", Duration::from_secs(10), || {
            command(&master_url, &["CLIENT", "KILL", "TYPE", "replica"]).is_some()
                && self.replication_info(master).is_some_and(|info| info_field(&info, "connected_slaves") == Some("0"))
        });
    }

    /// Kills the node on `port` (SIGKILL: its data is gone) and leaves it down.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            node.process.stop();
        }
    }

    /// Freezes the node on `port` (SIGSTOP): it keeps its sockets but processes nothing.
    pub fn pause(&self, port: u16) {
        self.signal(port, "STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, port: u16) {
        self.signal(port, "CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        if let Some(node) = self.nodes.iter().find(|node| node.port == port) {
            node.process.signal(signal);
        }
    }

    /// Starts the node on `port` again, empty but with its cluster identity, so it rejoins.
    pub fn restart(&mut self, port: u16) {
        let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) else { return };
        node.process.stop();
        start_node(self.dir.path(), node);
    }
}

/// Starts `node`'s `redis-server` with its cluster config file in `dir` (an existing file keeps
/// the node's identity) and waits until it answers as that process.
fn start_node(dir: &Path, node: &mut ClusterNode) {
    let port = node.port;
    let child = spawn_quiet(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--maxmemory", "64mb"])
            .args(["--maxmemory-policy", "volatile-lru", "--cluster-replica-validity-factor", "0"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(dir),
        "redis-server (is it installed?)",
    );
    node.process.replace(child);
    let url = format!("redis://127.0.0.1:{port}");
    node.process.wait_until_started("cluster node", Duration::from_secs(10), |pid| is_redis_process(&url, pid));
}

/// A slot on its way from one master to another ([`PrivateRedisCluster::start_migrating`]).
#[derive(Debug, Clone)]
pub struct SlotMigration {
    pub slot: String,
    /// Port of the master giving the slot away.
    pub source: u16,
    /// Port of the master taking it.
    pub target: u16,
    target_id: String,
}

/// Runs one command on one node, `None` when it does not answer.
pub fn command(url: &str, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    match cmd.query::<redis::Value>(&mut conn).ok()? {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::Okay => Some("OK".into()),
        redis::Value::Int(number) => Some(number.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Whether the node on `port` (of 127.0.0.1) answers and serves as a master: what a test polls
/// for to learn that a replica was promoted.
pub fn is_master(port: u16) -> bool {
    command(&format!("redis://127.0.0.1:{port}"), &["INFO", "replication"])
        .is_some_and(|info| info_field(&info, "role") == Some("master"))
}

/// The value of `field` in an `INFO` reply (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}
