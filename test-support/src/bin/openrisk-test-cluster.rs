//! Starts a private Redis Cluster for a whole test run, prints its `redis-cluster://` URL on a
//! line of its own, and tears it down when its standard input closes (so it cannot outlive the
//! script that started it).

use std::io::{Read, Write};

fn main() {
    let cluster = openrisk_test_support::PrivateRedisCluster::start();
    println!("{}", cluster.url());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(cluster);
}
