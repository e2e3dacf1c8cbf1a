//! The system under test: a private Postgres and Redis (one node, or a Redis Cluster of 3 masters
//! and 3 replicas), the API twice (cache on, and cache off as the reference), two invalidator
//! replicas, seeded tenants with tokens, and what the workload has learned (ids, requested URLs,
//! errors, staleness samples).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openrisk_shared::Keyspace;
use openrisk_shared::config::PostgresLink;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_test_support::{PrivatePostgres, PrivateRedis, PrivateRedisCluster, ReplicaPair, with_database};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::network::Network;
use crate::probe::ProbeWindow;
use crate::procs::{Proc, Spec, invalidator_settings, run_to_end};
use crate::urls::ReadUrl;

/// Which Redis the processes under test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One `redis-server`, no replica (`redis://`).
    Node,
    /// A Redis Cluster: 3 masters with a replica each (`redis-cluster://`).
    Cluster,
}

/// The private Redis servers, as started for the chosen [`Topology`].
pub enum RedisServers {
    Node(PrivateRedis),
    Cluster(PrivateRedisCluster),
}

impl RedisServers {
    fn start(topology: Topology) -> Self {
        match topology {
            Topology::Node => Self::Node(PrivateRedis::start()),
            Topology::Cluster => Self::Cluster(PrivateRedisCluster::start()),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Node(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }
}

/// What the verifier's command line decided about the system under test.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub topology: Topology,
    pub tenants: u32,
    pub risks: u32,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Run the primary with a streaming replica that the cached API reads its misses from.
    pub replica: bool,
    /// Put Postgres and Redis behind network links of their own (the network faults).
    pub network: bool,
    /// A short CI run (the network faults are shorter too).
    pub smoke: bool,
    /// The invalidators' replica wait, when not the setting's default.
    pub replica_wait: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub token: String,
}

/// Ids of one tenant, as last read from the database.
#[derive(Debug, Default, Clone)]
pub struct TenantData {
    pub risks: Vec<Uuid>,
    pub deleted_risks: Vec<Uuid>,
    /// (risk, mitigation)
    pub mitigations: Vec<(Uuid, Uuid)>,
    /// (risk, mitigation, sub-action)
    pub subactions: Vec<(Uuid, Uuid, Uuid)>,
    pub assets: Vec<Uuid>,
    /// (risk, asset)
    pub links: Vec<(Uuid, Uuid)>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    by_tenant: HashMap<Uuid, TenantData>,
}

impl Catalog {
    pub fn tenant(&self, id: Uuid) -> Option<&TenantData> {
        self.by_tenant.get(&id)
    }

    pub async fn load(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let mut by_tenant: HashMap<Uuid, TenantData> = HashMap::new();
        // The staleness probe's risks ("probe …") are left out so no writer touches them.
        for row in client
            .query("SELECT tenant_id, id, deleted_at IS NOT NULL FROM risks WHERE title NOT LIKE 'probe%'", &[])
            .await?
        {
            let data = by_tenant.entry(row.get(0)).or_default();
            if row.get::<_, bool>(2) { data.deleted_risks.push(row.get(1)) } else { data.risks.push(row.get(1)) }
        }
        for row in client.query("SELECT tenant_id, risk_id, id FROM mitigations", &[]).await? {
            by_tenant.entry(row.get(0)).or_default().mitigations.push((row.get(1), row.get(2)));
        }
        for row in client
            .query(
                "SELECT s.tenant_id, m.risk_id, s.mitigation_id, s.id FROM mitigation_subactions s
                 JOIN mitigations m ON m.tenant_id = s.tenant_id AND m.id = s.mitigation_id",
                &[],
            )
            .await?
        {
            by_tenant.entry(row.get(0)).or_default().subactions.push((row.get(1), row.get(2), row.get(3)));
        }
        for row in client.query("SELECT tenant_id, id FROM assets", &[]).await? {
            by_tenant.entry(row.get(0)).or_default().assets.push(row.get(1));
        }
        for row in client.query("SELECT tenant_id, risk_id, asset_id FROM risk_assets", &[]).await? {
            by_tenant.entry(row.get(0)).or_default().links.push((row.get(1), row.get(2)));
        }
        for data in by_tenant.values_mut() {
            data.risks.sort();
            data.deleted_risks.sort();
            data.mitigations.sort();
            data.subactions.sort();
            data.assets.sort();
            data.links.sort();
        }
        Ok(Self { by_tenant })
    }
}

/// One API error (5xx or no answer), kept to classify it against the Postgres-down windows: by
/// when its request was sent and when it failed, since a request sent into a failover can fail
/// only at the client's timeout, after the window closed.
#[derive(Debug, Clone)]
pub struct ApiErrorRecord {
    pub sent: Instant,
    pub at: Instant,
    pub what: String,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub hits: AtomicU64,
    /// API writes answered 2xx.
    pub api_writes: AtomicU64,
    /// Plain-SQL writes that changed rows (or truncated a table), and those that failed.
    pub sql_writes: AtomicU64,
    pub sql_write_failures: AtomicU64,
    pub isolation_probes: AtomicU64,
    pub isolation_violations: AtomicU64,
    pub errors: Mutex<Vec<ApiErrorRecord>>,
    /// Every window the staleness probe measured, in the order measured.
    pub staleness: Mutex<Vec<ProbeWindow>>,
    pub probe_timeouts: AtomicU64,
    /// Reads of the staleness probe's risk that showed one of its titles.
    pub probe_reads: AtomicU64,
    /// Looks at the outbox that found every event of the probe's risk acknowledged.
    pub probe_acknowledged: AtomicU64,
    /// Those of them that showed an older title than one whose invalidation had been
    /// acknowledged (G1 broken), described.
    pub probe_violations: Mutex<Vec<String>>,
    /// Those that showed an older title than a read before them, the newer one still in its
    /// window, described.
    pub probe_went_back: Mutex<Vec<String>>,
}

impl Stats {
    /// Records an error of the request sent at `sent`, failing now.
    pub fn error(&self, sent: Instant, what: String) {
        self.errors.lock().unwrap().push(ApiErrorRecord { sent, at: Instant::now(), what });
    }

    /// Writes that succeeded so far, through the API and in plain SQL.
    pub fn writes(&self) -> u64 {
        self.api_writes.load(Ordering::Relaxed) + self.sql_writes.load(Ordering::Relaxed)
    }
}

pub struct World {
    pub cfg: WorldConfig,
    pub log_dir: PathBuf,
    /// The single Postgres of a run without a replica (the restart fault's target).
    pub pg: Option<Arc<Mutex<PrivatePostgres>>>,
    /// The primary and read replica of a replica run.
    pub replica: Option<&'static ReplicaPair>,
    /// The links Postgres and Redis sit behind in a `--network` run.
    pub network: Option<Network>,
    pub redis_servers: Arc<Mutex<RedisServers>>,
    /// The application database on the current primary (changed by a promotion).
    db_url: std::sync::RwLock<String>,
    pub redis_url: String,
    pub prefix: String,
    pub keyspace: Keyspace,
    pub api: tokio::sync::Mutex<Proc>,
    pub api_ref: tokio::sync::Mutex<Proc>,
    pub api_base: String,
    /// The cached API's `/metrics` (its `METRICS_ADDR`).
    pub api_metrics_base: String,
    pub ref_base: String,
    pub invalidators: Vec<tokio::sync::Mutex<Proc>>,
    pub tenants: Vec<Tenant>,
    pub http: reqwest::Client,
    pub catalog: std::sync::RwLock<Arc<Catalog>>,
    /// Every URL requested, by entry key.
    pub known: Mutex<HashMap<String, ReadUrl>>,
    /// Writers hold it shared per write; the checker takes it exclusively to freeze the data.
    pub gate: tokio::sync::RwLock<()>,
    pub stats: Stats,
    /// Intervals in which Postgres was down (stop .. back up + grace).
    pub pg_windows: Mutex<Vec<(Instant, Option<Instant>)>>,
    pub phase: Mutex<String>,
    /// Outbox ids of the injected poison phase (left out of the lag statistics).
    pub poison_ids: Mutex<Option<(i64, i64)>>,
    pub stopping: AtomicBool,
    pub started: Instant,
    /// When a primary crashed with commits its replica had not received (they are lost).
    pub primary_crashes: Mutex<Vec<Instant>>,
    /// Read routing counted by cached API processes that a promotion replaced.
    pub earlier_read_routing: Mutex<ReadRouting>,
}

/// Where the cached API sent the reads it took to Postgres, from its metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ReadRouting {
    pub replica: f64,
    pub primary: f64,
    /// Reads sent to the primary because the replica had not replayed their floor.
    pub behind_floor: f64,
}

impl ReadRouting {
    pub fn parse(metrics: &str) -> Self {
        let sum = |prefix: &str| -> f64 {
            metrics
                .lines()
                .filter(|line| line.starts_with(prefix))
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        Self {
            replica: sum("openrisk_db_reads_total{target=\"replica\"}"),
            primary: sum("openrisk_db_reads_total{target=\"primary\"}"),
            behind_floor: sum("openrisk_db_replica_behind_floor_total{"),
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            replica: self.replica + other.replica,
            primary: self.primary + other.primary,
            behind_floor: self.behind_floor + other.behind_floor,
        }
    }
}

impl World {
    pub fn phase(&self) -> String {
        self.phase.lock().unwrap().clone()
    }

    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap() = phase.to_owned();
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap().clone()
    }

    pub async fn sql(&self) -> anyhow::Result<Client> {
        connect(&self.db_url(), "openrisk-verifier").await
    }

    pub fn db_url(&self) -> String {
        self.db_url.read().unwrap().clone()
    }

    /// Points the verifier's own connections (writers, probe, checks) at a new primary.
    pub fn set_db_url(&self, url: String) {
        *self.db_url.write().unwrap() = url;
    }

    pub async fn refresh_catalog(&self) -> anyhow::Result<()> {
        let client = self.sql().await?;
        let catalog = Catalog::load(&client).await?;
        *self.catalog.write().unwrap() = Arc::new(catalog);
        Ok(())
    }

    /// A connection of the kind the processes use: to the node, or to the cluster (keyed
    /// commands are routed by their key; keyless ones go through `on_every_master`).
    pub async fn redis(&self) -> anyhow::Result<RedisConnection> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(10),
            overall: Duration::from_secs(15),
            // A check has nothing to fall back on: it waits out a slot migration's refusals.
            refusal_retry: Duration::from_millis(1_500),
        };
        Ok(RedisTarget::parse(&self.redis_url)?.connect(timeouts).await?)
    }

    /// A connection to every node that serves keys now: the one node, or every master of the
    /// cluster (what a scan of every key must visit). Fails when a node cannot be reached.
    pub async fn redis_masters(&self) -> anyhow::Result<Vec<redis::aio::MultiplexedConnection>> {
        let urls = match RedisTarget::parse(&self.redis_url)? {
            RedisTarget::Node(_) => vec![self.redis_url.clone()],
            RedisTarget::Cluster { seeds } => seeds,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut masters = Vec::new();
        for url in urls {
            let node = redis::Client::open(url.as_str())?;
            // Every node is up once a fault is over: one that cannot be reached may still hold
            // keys, and a scan that skipped it would not see them.
            let mut conn = node
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .with_context(|| format!("connect to Redis node {url}"))?;
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await?;
            if info.lines().any(|line| line.trim() == "role:master") {
                masters.push(conn);
            }
        }
        if masters.is_empty() {
            bail!("no Redis node answers as a master");
        }
        Ok(masters)
    }

    pub fn token_of(&self, tenant: Uuid) -> &str {
        &self.tenants.iter().find(|t| t.id == tenant).expect("known tenant").token
    }

    /// GET `path` from `base` as `tenant`: (status, body, Cache-Status).
    pub async fn get(&self, base: &str, tenant: Uuid, path: &str) -> reqwest::Result<(u16, Vec<u8>, String)> {
        let response = self.http.get(format!("{base}{path}")).bearer_auth(self.token_of(tenant)).send().await?;
        let status = response.status().as_u16();
        let cache_status =
            response.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = response.bytes().await?.to_vec();
        Ok((status, body, cache_status))
    }

    /// The cached API's read routing over the whole run: its process's counters plus those of
    /// the processes it replaced.
    pub async fn read_routing(&self) -> anyhow::Result<ReadRouting> {
        let metrics = self.http.get(format!("{}/metrics", self.api_metrics_base)).send().await?.text().await?;
        Ok(ReadRouting::parse(&metrics).plus(*self.earlier_read_routing.lock().unwrap()))
    }

    /// Keeps the cached API's counters before it restarts (the new process starts from zero).
    pub async fn keep_read_routing(&self) {
        if let Ok(metrics) = self.http.get(format!("{}/metrics", self.api_metrics_base)).send().await
            && let Ok(text) = metrics.text().await
        {
            let mut earlier = self.earlier_read_routing.lock().unwrap();
            *earlier = earlier.plus(ReadRouting::parse(&text));
        }
    }

    /// Whether a primary crashed after `at`, so a commit made then may be lost.
    pub fn primary_crashed_since(&self, at: Instant) -> bool {
        self.primary_crashes.lock().unwrap().iter().any(|crash| *crash >= at)
    }

    pub fn in_pg_window(&self, at: Instant) -> bool {
        self.pg_windows.lock().unwrap().iter().any(|(from, to)| at >= *from && to.is_none_or(|to| at <= to))
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind port 0")
}

/// The verifier's own Postgres connection: as the services open theirs (TLS from `sslmode`,
/// keepalives and `tcp_user_timeout`, so a partition cannot hang a check), but giving up on a
/// server that does not answer within 3 s.
pub async fn connect(url: &str, application: &str) -> anyhow::Result<Client> {
    let link = PostgresLink { connect_timeout: Duration::from_secs(3), ..PostgresLink::default() };
    Ok(openrisk_shared::db::connect(url, application, &link).await?)
}

fn bin(cfg: &WorldConfig, name: &str) -> anyhow::Result<PathBuf> {
    let path = cfg.bin_dir.join(name);
    if !path.exists() {
        bail!("{} not found: build it first (cargo build -p {name})", path.display());
    }
    Ok(path)
}

/// Audit trail of the outbox in the private database: every row inserted and when it was
/// acknowledged, so a failure can print a tenant's event history and the lag is measured. A row
/// a claim moves aside (a held tenant's, `cache_outbox_held`) is pending again until deleted there.
const AUDIT_SQL: &str = "
CREATE TABLE verifier_outbox_log (
    id bigint PRIMARY KEY, tenant_id uuid, table_name text, op text, tags text[],
    created_at timestamptz, acked_at timestamptz);
CREATE FUNCTION verifier_outbox_log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO verifier_outbox_log (id, tenant_id, table_name, op, tags, created_at)
    VALUES (NEW.id, NEW.tenant_id, NEW.table_name, NEW.op, NEW.tags, NEW.created_at);
    RETURN NULL;
END $$;
CREATE FUNCTION verifier_outbox_log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE verifier_outbox_log SET acked_at = clock_timestamp() WHERE id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER verifier_log_insert AFTER INSERT ON cache_outbox FOR EACH ROW EXECUTE FUNCTION verifier_outbox_log_insert();
CREATE TRIGGER verifier_log_delete AFTER DELETE ON cache_outbox FOR EACH ROW EXECUTE FUNCTION verifier_outbox_log_delete();
CREATE FUNCTION verifier_outbox_log_moved_aside() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE verifier_outbox_log SET acked_at = NULL WHERE id = NEW.id; RETURN NULL; END $$;
CREATE TRIGGER verifier_log_moved_aside AFTER INSERT ON cache_outbox_held FOR EACH ROW EXECUTE FUNCTION verifier_outbox_log_moved_aside();
CREATE TRIGGER verifier_log_delete AFTER DELETE ON cache_outbox_held FOR EACH ROW EXECUTE FUNCTION verifier_outbox_log_delete();
";

impl World {
    pub async fn start(cfg: WorldConfig) -> anyhow::Result<Arc<World>> {
        let log_dir = cfg.log_dir.clone();
        std::fs::create_dir_all(&log_dir)?;
        let api_bin = bin(&cfg, "openrisk-api")?;
        let inv_bin = bin(&cfg, "openrisk-invalidator")?;

        let (topology, with_replica, network, smoke) = (cfg.topology, cfg.replica, cfg.network, cfg.smoke);
        let (pg, replica, redis_servers, network) = tokio::task::spawn_blocking(move || {
            if with_replica {
                (None, Some(ReplicaPair::shared()), RedisServers::start(topology), None)
            } else if network {
                let (network, postgres, redis) = Network::start(smoke);
                (Some(postgres), None, RedisServers::Node(redis), Some(network))
            } else {
                (Some(PrivatePostgres::start()), None, RedisServers::start(topology), None)
            }
        })
        .await?;
        let admin_url = match (&pg, replica) {
            (Some(pg), _) => pg.admin_url(),
            (None, Some(pair)) => pair.primary_admin_url(),
            (None, None) => bail!("neither a Postgres nor a replica pair started"),
        };
        let redis_url = network.as_ref().map_or_else(|| redis_servers.url(), Network::redis_url);
        configure_redis(&redis_url).await?;
        let admin = connect(&admin_url, "openrisk-verifier").await?;
        admin.batch_execute("CREATE DATABASE openrisk").await?;
        let db_url = with_database(&admin_url, "openrisk");
        let prefix = format!("vf{}", cfg.seed % 100_000);
        let base_env = vec![
            ("DATABASE_URL".to_owned(), db_url.clone()),
            ("REDIS_URL".to_owned(), redis_url.clone()),
            ("OPENRISK_CACHE__KEY_PREFIX".to_owned(), prefix.clone()),
            // The read router's debug lines say when and why a miss did not read a replica.
            ("OPENRISK_LOG__FILTER".to_owned(), "info,openrisk_api::db::replicas=debug".to_owned()),
        ];
        run_to_end(&api_bin, &["migrate"], &base_env).await.context("openrisk-api migrate")?;
        connect(&db_url, "openrisk-verifier").await?.batch_execute(AUDIT_SQL).await.context("audit trail")?;
        let tenants_arg = cfg.tenants.to_string();
        let risks_arg = cfg.risks.to_string();
        run_to_end(&api_bin, &["seed", "--tenants", &tenants_arg, "--risks", &risks_arg], &base_env)
            .await
            .context("openrisk-api seed")?;
        let sql = connect(&db_url, "openrisk-verifier").await?;
        let mut tenants = Vec::new();
        for row in sql.query("SELECT id, slug FROM tenants ORDER BY slug", &[]).await? {
            let slug: String = row.get(1);
            let out =
                run_to_end(&api_bin, &["token", "create", "--tenant", &slug, "--role", "analyst"], &base_env).await?;
            let token = out.lines().last().unwrap_or_default().trim().to_owned();
            tenants.push(Tenant { id: row.get(0), slug, token });
        }
        // Every risk gets searchable, taggable text the list filters hit.
        sql.batch_execute(
            "UPDATE risks SET tags = tags || ARRAY['verifier'] WHERE id IN (SELECT id FROM risks ORDER BY id LIMIT 5)",
        )
        .await?;

        let api_port = free_port();
        let ref_port = free_port();
        let api_metrics_port = free_port();
        let api_spec = |name: &str, port: u16, metrics_port: u16, enabled: bool| Spec {
            name: name.to_owned(),
            binary: api_bin.clone(),
            args: vec!["serve".into()],
            env: base_env
                .iter()
                .cloned()
                .chain([
                    ("API_ADDR".to_owned(), format!("127.0.0.1:{port}")),
                    ("METRICS_ADDR".to_owned(), format!("127.0.0.1:{metrics_port}")),
                    ("OPENRISK_CACHE__ENABLED".to_owned(), enabled.to_string()),
                ])
                // Only the API under test reads the replica; the reference reads the primary.
                .chain(
                    replica
                        .filter(|_| enabled)
                        .map(|pair| ("DATABASE_REPLICA_URLS".to_owned(), pair.replica_url("openrisk"))),
                )
                .collect(),
            health_addr: format!("127.0.0.1:{port}"),
        };
        let api = Proc::start(api_spec("api", api_port, api_metrics_port, true), &log_dir).await?;
        let api_ref = Proc::start(api_spec("api-ref", ref_port, free_port(), false), &log_dir).await?;
        let mut invalidators = Vec::new();
        for index in 1..=2 {
            let port = free_port();
            let spec = Spec {
                name: format!("invalidator-{index}"),
                binary: inv_bin.clone(),
                args: vec!["run".into(), "--mode".into(), "listen".into()],
                env: base_env
                    .iter()
                    .cloned()
                    .chain([("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}"))])
                    .chain(invalidator_settings(cfg.replica_wait))
                    .chain(network.as_ref().zip(pg.as_ref()).map(|(network, postgres)| {
                        ("DATABASE_URL".to_owned(), network.database_url(postgres, index, "openrisk"))
                    }))
                    .collect(),
                health_addr: format!("127.0.0.1:{port}"),
            };
            invalidators.push(tokio::sync::Mutex::new(Proc::start(spec, &log_dir).await?));
        }
        let catalog = Catalog::load(&sql).await?;
        let world = World {
            keyspace: Keyspace::new(prefix.clone()),
            cfg,
            log_dir,
            pg: pg.map(|pg| Arc::new(Mutex::new(pg))),
            replica,
            network,
            redis_servers: Arc::new(Mutex::new(redis_servers)),
            db_url: std::sync::RwLock::new(db_url),
            redis_url,
            prefix,
            api: tokio::sync::Mutex::new(api),
            api_ref: tokio::sync::Mutex::new(api_ref),
            api_base: format!("http://127.0.0.1:{api_port}"),
            api_metrics_base: format!("http://127.0.0.1:{api_metrics_port}"),
            ref_base: format!("http://127.0.0.1:{ref_port}"),
            invalidators,
            tenants,
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).pool_max_idle_per_host(32).build()?,
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            known: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            stats: Stats::default(),
            pg_windows: Mutex::new(Vec::new()),
            phase: Mutex::new("warm-up".into()),
            poison_ids: Mutex::new(None),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            primary_crashes: Mutex::new(Vec::new()),
            earlier_read_routing: Mutex::new(ReadRouting::default()),
        };
        Ok(Arc::new(world))
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub async fn shutdown(&self) {
        for proc in [&self.api, &self.api_ref].into_iter().chain(self.invalidators.iter()) {
            proc.lock().await.stop(Duration::from_secs(5)).await;
        }
    }
}

/// The eviction policy the protocol requires (versions carry no TTL and are never evicted), on
/// the node or every master of the cluster.
pub async fn configure_redis(url: &str) -> anyhow::Result<()> {
    let mut conn = RedisTarget::parse(url)?.connect(Timeouts::all(Duration::from_secs(5))).await?;
    let _: Vec<(String, ())> =
        conn.on_every_master(redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("volatile-lru")).await?;
    Ok(())
}
