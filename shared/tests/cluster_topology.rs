//! The keyless commands of a cluster connection (health `PING`, `CLUSTER INFO`, `CONFIG GET`)
//! must reach the masters the cluster has now, not the ones the client saw last. The client
//! refreshes its slot map only when a node redirects it, and after a failover a keyed command
//! reaches the promoted replica without any redirection (the client falls back to it), so
//! nothing else would ever tell it the old master is gone. A private cluster of its own.

use std::time::{Duration, Instant};

use openrisk_shared::keys::Keyspace;
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::{RedisTarget, Timeouts};
use openrisk_test_support::PrivateRedisCluster;
use uuid::Uuid;

#[tokio::test]
async fn every_master_is_reached_after_a_failover_that_caused_no_redirection() {
    let mut cluster = PrivateRedisCluster::start();
    let target = RedisTarget::parse(&cluster.url()).unwrap();
    let mut connection = target.connect(Timeouts::all(Duration::from_secs(2))).await.unwrap();
    let before: Vec<(String, String)> = connection.on_every_master(&redis::cmd("PING")).await.unwrap();
    assert_eq!(before.len(), 3, "{before:?}");

    // A master dies and its replica takes over while the connection sends nothing at all.
    let victim = cluster.master_ports()[0];
    let replica = cluster.replicas_of(victim)[0];
    cluster.kill(victim);
    // Asked before the cluster noticed: the client refreshes its map then, with the old master
    // in it, and nothing redirects it later.
    let _ = connection.on_every_master::<String>(&redis::cmd("PING")).await;
    let promoted_by = Instant::now() + Duration::from_secs(30);
    while !cluster.master_ports().contains(&replica) {
        assert!(Instant::now() < promoted_by, "the replica was not promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_until_healthy(2);

    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match connection.on_every_master::<String>(&redis::cmd("PING")).await {
            Ok(replies) => break replies,
            Err(error) => assert!(Instant::now() < deadline, "the masters stayed unreachable: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut nodes: Vec<&str> = after.iter().map(|(node, _)| node.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes.len(), 3, "{after:?}");
    assert!(nodes.contains(&format!("127.0.0.1:{replica}").as_str()), "the promoted replica answers: {after:?}");
    assert!(!nodes.contains(&format!("127.0.0.1:{victim}").as_str()), "the dead master is gone: {after:?}");
}

#[tokio::test]
async fn the_watch_counts_a_killed_master_replaced_by_its_replica_as_one_failover_and_tells_its_subscribers() {
    let mut cluster = PrivateRedisCluster::start();
    let target = RedisTarget::parse(&cluster.url()).unwrap();
    let connection = target.connect(Timeouts::all(Duration::from_secs(2))).await.unwrap();
    let watch = ClusterWatch::new(&prometheus::Registry::new(), Keyspace::new("test")).unwrap();
    tokio::spawn(watch.clone().run(connection, Duration::from_millis(200)));
    let started_by = Instant::now() + Duration::from_secs(30);
    while watch.latest().is_none_or(|health| !health.state_ok) {
        assert!(Instant::now() < started_by, "the watch never saw the cluster: {:?}", watch.latest());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tenant = Uuid::new_v4();
    let victim = cluster.master_of(&Keyspace::new("test").tenant_base(tenant));
    let victim_id = watch.master_of_tenant(tenant).expect("the victim serves the tenant's slot");
    let mut changes = watch.master_changes();
    cluster.kill(victim);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = watch.latest().unwrap();
        if health.state_ok && health.failovers_seen >= 1 {
            assert_eq!(health.slots_moved_seen, 0, "{health:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the failover was not seen: {health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let told = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
    assert!(matches!(told, Ok(Ok(()))), "a subscriber is told that a slot changed master");
    let promoted = watch.master_of_tenant(tenant).expect("the slot is served again");
    assert_ne!(promoted, victim_id, "and the watch names the new master by then");
}
