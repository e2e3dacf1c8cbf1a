//! Test harness against real servers, no mocks.
//!
//! * [`TestDatabase`]: a fresh database per test, cloned from a template that holds every
//!   migration (built once per migration fingerprint, shared by all test processes).
//! * [`RedisNamespace`]: a key prefix of its own per test on the shared Redis, removed on drop.
//! * [`PrivateRedis`] and [`PrivatePostgres`]: servers on free ports for tests that kill,
//!   restart or flush them, so the shared servers are never touched.
//! * [`ReplicaPair`]: a private primary and a streaming replica, once per test binary and run.
//! * [`NetworkLink`]: a network namespace of the test's own behind a veth pair, so a private
//!   server inside it can be cut off silently (packets dropped), made lossy, and healed;
//!   [`LatencyRelay`] adds latency in front of one.
//! * [`PrivateRedisCluster`]: a Redis Cluster of its own; `scripts/test.sh` runs the API and
//!   invalidator suites a second time against one (`TEST_REDIS_URL=redis-cluster://…`).
//!
//! The shared servers default to 127.0.0.1:5432 and 127.0.0.1:6379; `TEST_DATABASE_URL` (an
//! admin URL) and `TEST_REDIS_URL` point elsewhere.

mod cluster;
mod network;
mod private;
mod replica_pair;

pub use cluster::{PrivateRedisCluster, SlotMigration, command as node_command, is_master};
pub use network::{LatencyRelay, NetworkLink};
pub use private::{PrivatePostgres, PrivateRedis, free_port, sslrootcert_param};
pub use replica_pair::ReplicaPair;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openrisk_shared::Settings;
use openrisk_shared::keys::Keyspace;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use tokio_postgres::Client;
use uuid::Uuid;

/// URL of a database on the shared server with rights to create databases.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the shared Redis used by tests.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Replaces the database name at the end of a postgres URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let stem = base.rsplit_once('/').map_or(base, |(stem, _)| stem);
    match query {
        Some(query) => format!("{stem}/{database}?{query}"),
        None => format!("{stem}/{database}"),
    }
}

/// Settings for a process under test: the database of `db`, the Redis server and key prefix of
/// `redis`, ports the OS picks for the API and the metrics; the defaults for everything else.
pub fn settings_for(db: &TestDatabase, redis: &RedisNamespace) -> Settings {
    let mut settings = Settings {
        database_url: db.url.clone(),
        redis_url: redis.url.clone(),
        api_addr: "127.0.0.1:0".parse().expect("a socket address"),
        metrics_addr: "127.0.0.1:0".parse().expect("a socket address"),
        ..Settings::default()
    };
    settings.cache.key_prefix = redis.prefix.clone();
    settings
}

/// A database of its own for one test, dropped (forcibly) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a database from the migrated template on the shared server, named
    /// `openrisk_test_<boot and PID namespace>_<pid>_<random>` (see [`drop_abandoned_databases`]).
    pub async fn create() -> Self {
        Self::create_on(&admin_database_url()).await
    }

    /// Creates a migrated database on the server behind `admin_url` (a private one, say).
    pub async fn create_on(admin_url: &str) -> Self {
        let admin = openrisk_shared::db::connect(admin_url, "openrisk-tests", &Default::default())
            .await
            .expect("connect to postgres");
        let template = ensure_template(&admin, admin_url).await;
        static SWEPT: AtomicBool = AtomicBool::new(false);
        if !SWEPT.swap(true, Ordering::Relaxed) {
            drop_abandoned_databases(&admin).await;
        }
        let name = new_database_name();
        let mut attempts = 0;
        loop {
            match admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await {
                Ok(()) => break,
                // Another process may still hold a connection to the template for a moment.
                Err(error) if attempts < 50 && error.to_string().contains("being accessed by other users") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("create test database {name}: {error}"),
            }
        }
        Self { url: with_database(admin_url, &name), name, admin_url: admin_url.to_owned() }
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> Client {
        openrisk_shared::db::connect(&self.url, "openrisk-tests", &Default::default())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside or outside a runtime; a thread of its own works in both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin =
                    openrisk_shared::db::connect(&admin_url, "openrisk-tests", &Default::default()).await.ok()?;
                admin.batch_execute(&drop_database(&name)).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// `openrisk_test_`, then this machine's boot and this process's PID namespace: the start of the
/// name of every test database this process's neighbours create, before their pid. `None` where
/// either cannot be read (no `/proc`): then no process can be told gone, and none is swept.
static DATABASE_PREFIX: LazyLock<Option<String>> = LazyLock::new(|| {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pid_namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let digits =
        |text: &str, most: usize| text.chars().filter(char::is_ascii_alphanumeric).take(most).collect::<String>();
    let (boot, pid_namespace) = (digits(&boot, 8), digits(&pid_namespace.to_string_lossy(), 16));
    (!boot.is_empty() && !pid_namespace.is_empty()).then(|| format!("openrisk_test_{boot}{pid_namespace}_"))
});

/// The name of a new test database: [`DATABASE_PREFIX`] (`openrisk_test_x_` without one), this
/// process's pid, and 16 random hex digits.
fn new_database_name() -> String {
    let prefix = DATABASE_PREFIX.as_deref().unwrap_or("openrisk_test_x_");
    format!("{prefix}{}_{}", std::process::id(), &Uuid::new_v4().simple().to_string()[..16])
}

/// Drops the test databases of processes on this machine and in this PID namespace that are
/// gone: a run killed or interrupted before its databases' drop ran leaves them behind (the
/// first [`TestDatabase`] of each process does this, on the server it creates that one on).
/// Databases of other machines or namespaces are left alone, since whether their process still
/// runs cannot be told from here.
pub async fn drop_abandoned_databases(admin: &Client) {
    let Some(prefix) = DATABASE_PREFIX.as_deref() else { return };
    let Ok(rows) =
        admin.query("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)", &[&prefix]).await
    else {
        return;
    };
    for name in rows.iter().map(|row| row.get::<_, String>(0)) {
        let pid = name[prefix.len()..].split('_').next().unwrap_or_default();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if admin.batch_execute(&drop_database(&name)).await.is_ok() {
            eprintln!("dropped test database {name}, left by process {pid}, which is gone");
        }
    }
}

/// The statement that drops database `name`, ending its sessions first.
fn drop_database(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
}

/// Returns the name of the migrated template for the current migrations, building it if needed.
async fn ensure_template(admin: &Client, admin_url: &str) -> String {
    let template = format!("openrisk_template_{}", openrisk_migrations::fingerprint());
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&openrisk_shared::advisory_locks::TEMPLATE])
        .await
        .expect("template lock");
    let ready = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate", &[&template])
        .await
        .expect("look up template");
    if ready.is_none() {
        for statement in [drop_database(&template), format!("CREATE DATABASE {template}")] {
            admin.batch_execute(&statement).await.expect("create template database");
        }
        {
            let mut client = openrisk_shared::db::connect(
                &with_database(admin_url, &template),
                "openrisk-tests",
                &Default::default(),
            )
            .await
            .expect("connect to template");
            openrisk_migrations::migrate(&mut client).await.expect("migrate template");
        }
        // Disconnect every session (ours included) before the template is copied.
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{template}';
                 ALTER DATABASE {template} IS_TEMPLATE true"
            ))
            .await
            .expect("mark template");
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&openrisk_shared::advisory_locks::TEMPLATE])
        .await
        .expect("template unlock");
    template
}

/// A key prefix of its own on a Redis server or cluster; every key under it is removed on drop.
#[derive(Debug)]
pub struct RedisNamespace {
    pub prefix: String,
    pub url: String,
}

impl RedisNamespace {
    pub fn new() -> Self {
        Self::on(&redis_url())
    }

    pub fn on(url: &str) -> Self {
        Self { prefix: format!("test-{}", Uuid::new_v4().simple()), url: url.to_owned() }
    }

    /// The keyspace the processes use under this prefix.
    pub fn keyspace(&self) -> Keyspace {
        Keyspace::new(self.prefix.clone())
    }

    fn target(&self) -> RedisTarget {
        RedisTarget::parse(&self.url).expect("TEST_REDIS_URL is a redis URL")
    }

    /// A connection of the kind the processes use (single node or cluster).
    pub async fn connect(&self) -> RedisConnection {
        self.target().connect(Timeouts::all(Duration::from_secs(5))).await.expect("connect to test redis")
    }

    /// A blocking connection that routes keyed commands as the processes' client does (tests
    /// only).
    pub fn blocking_connection(&self) -> Box<dyn redis::ConnectionLike> {
        self.try_blocking_connection().expect("connect to test redis")
    }

    fn try_blocking_connection(&self) -> redis::RedisResult<Box<dyn redis::ConnectionLike>> {
        Ok(match self.target() {
            RedisTarget::Node(client) => Box::new(client.get_connection()?),
            RedisTarget::Cluster { seeds } => Box::new(redis::cluster::ClusterClient::new(seeds)?.get_connection()?),
        })
    }

    /// `redis://` URLs of every node to scan: the one node, or every seed of a cluster.
    fn scan_urls(&self) -> Vec<String> {
        match self.target() {
            RedisTarget::Node(_) => vec![self.url.clone()],
            RedisTarget::Cluster { seeds } => seeds,
        }
    }

    /// Every key currently under this prefix (tests only: it scans every node). Panics when a
    /// node cannot be scanned: an assertion that nothing was written must not pass on a failed
    /// scan.
    pub fn keys(&self) -> Vec<String> {
        let scans = self.scan_urls().into_iter().map(|url| self.scan(&url));
        let keys = scans.collect::<redis::RedisResult<Vec<_>>>();
        let keys = keys.unwrap_or_else(|error| panic!("scan the test's keys under {}: {error}", self.prefix));
        keys.into_iter().flatten().collect::<std::collections::BTreeSet<_>>().into_iter().collect()
    }

    /// Every key under this prefix on the node at `url`.
    fn scan(&self, url: &str) -> redis::RedisResult<Vec<String>> {
        let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
        let found: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)?;
        found.collect()
    }
}

impl Default for RedisNamespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisNamespace {
    /// Unlinks what the test left under its prefix, best effort: a node the test stopped is
    /// skipped (its keys go with it), and nothing here may panic while a test unwinds.
    fn drop(&mut self) {
        let keys: Vec<String> = self.scan_urls().iter().filter_map(|url| self.scan(url).ok()).flatten().collect();
        if keys.is_empty() {
            return;
        }
        // One key per command on a cluster: the keys of a namespace span many slots.
        let per_command = if self.target().is_cluster() { 1 } else { 500 };
        if let Ok(mut conn) = self.try_blocking_connection() {
            for chunk in keys.chunks(per_command) {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(chunk).query(&mut *conn);
            }
        }
    }
}
