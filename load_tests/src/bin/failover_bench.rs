//! Failover benchmark: how long after a Redis Cluster master dies the invalidator applies a write
//! of a tenant that master served, for one or more invalidator binaries side by side, round after
//! round. Starts a private Redis Cluster (3 masters, a replica each) and a database of its own;
//! each round, per binary, starts one replica of it, caches a risk detail of a new tenant (as
//! the API does) and waits until that master's replica holds it, SIGKILLs the tenant's master,
//! commits an update of the risk at once, and looks the entry up every few milliseconds until it
//! is gone. Meanwhile a tenant of another master has its risk written again and again, each
//! write timed until its version changes, until a second after the failover. Then the killed
//! node restarts empty and rejoins as a replica. Prints a Markdown report.
//!
//! The time from the replica's promotion to the entry's invalidation is what the failover adds
//! to that tenant's staleness window: the API reads the new master as soon as its client finds
//! it, while the invalidator still holds back the events it could not apply on the old one. The
//! other tenant's writes show whether the failover delays the tenants of the masters that stay
//! up once they can be read again: each write waits until its version can be read, so none is
//! made while the cluster refuses calls (`CLUSTERDOWN`, from the moment it marks the master
//! failed until the promotion).
//!
//! ```sh
//! cargo build --release -p openrisk-invalidator
//! cargo run --release -p openrisk-load-tests --bin failover_bench -- --invalidators new=target/release/openrisk-invalidator,old=/tmp/old-invalidator
//! cargo run -p openrisk-load-tests --bin failover_bench -- --rounds 1   # smoke, the debug build's binary
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use openrisk_load_tests::bench::http::{Conn, Req, micros, new_histogram, quantile_ms};
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup};
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, TestDatabase, free_port, is_master};
use tokio::process::{Child, Command};
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Invalidator binaries to compare, as `label=path` (default: `this=` the
    /// `openrisk-invalidator` beside this benchmark's binary).
    #[arg(long, value_delimiter = ',')]
    invalidators: Vec<String>,
    /// Rounds of one failover per binary.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// How long a round waits for the promotion, or for the invalidation, before it gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// How often the entry is looked up, and the replicas asked whether one was promoted.
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// How long the other master's tenant waits between two writes.
const BYSTANDER_PAUSE: Duration = Duration::from_millis(20);

/// What one failover came to, from the SIGKILL, and the lag of each write of a tenant of
/// another master meanwhile.
struct Failover {
    promoted: Duration,
    invalidated: Duration,
    bystander_lags: Vec<Duration>,
}

impl Failover {
    fn bystander_max(&self) -> Duration {
        self.bystander_lags.iter().copied().max().unwrap_or_default()
    }
}

/// One binary's failovers.
struct Variant {
    label: String,
    binary: PathBuf,
    promoted_us: Histogram<u64>,
    after_promotion_us: Histogram<u64>,
    /// The longest lag of the other master's tenant's writes, one per failover.
    bystander_max_us: Histogram<u64>,
}

impl Variant {
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let (label, binary) = spec.split_once('=').context("an invalidator is label=path")?;
        let binary = PathBuf::from(binary);
        anyhow::ensure!(binary.is_file(), "no invalidator binary at {}", binary.display());
        let (promoted_us, after_promotion_us, bystander_max_us) = (new_histogram(), new_histogram(), new_histogram());
        Ok(Self { label: label.to_owned(), binary, promoted_us, after_promotion_us, bystander_max_us })
    }

    fn record(&mut self, failover: &Failover) {
        self.promoted_us.saturating_record(micros(failover.promoted));
        self.after_promotion_us.saturating_record(micros(failover.invalidated.saturating_sub(failover.promoted)));
        self.bystander_max_us.saturating_record(micros(failover.bystander_max()));
    }

    /// p50 and max of each histogram, in milliseconds, as table cells.
    fn cells(&self) -> String {
        format!(
            "{} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}",
            self.promoted_us.len(),
            quantile_ms(&self.promoted_us, 0.5),
            quantile_ms(&self.promoted_us, 1.0),
            quantile_ms(&self.after_promotion_us, 0.5),
            quantile_ms(&self.after_promotion_us, 1.0),
            quantile_ms(&self.bystander_max_us, 0.5),
            quantile_ms(&self.bystander_max_us, 1.0)
        )
    }
}

/// The cluster, the database and the key prefix every round shares.
struct Stage {
    cluster: PrivateRedisCluster,
    db: TestDatabase,
    sql: tokio_postgres::Client,
    keyspace: Keyspace,
    target: RedisTarget,
}

impl Stage {
    /// Starts one replica of `binary` and waits until it is ready and its cluster watch has
    /// looked at the cluster.
    async fn start_invalidator(&self, binary: &PathBuf) -> anyhow::Result<Child> {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let child = Command::new(binary)
            .arg("run")
            .env_clear()
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", self.cluster.url())
            .env("OPENRISK_CACHE__KEY_PREFIX", self.keyspace.prefix())
            .env("METRICS_ADDR", metrics_addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let ready_by = Instant::now() + GIVE_UP_AFTER;
        loop {
            let answer = async { Conn::open(metrics_addr).await?.send(&Req::get("/readyz", None)).await };
            if let Ok(answer) = answer.await
                && answer.status == 200
                && String::from_utf8_lossy(&answer.body).contains("\"state_ok\":true")
            {
                return Ok(child);
            }
            anyhow::ensure!(Instant::now() < ready_by, "{} never became ready", binary.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new tenant with one risk whose detail is cached, on a replica of its master too.
    async fn cached_risk(&self) -> anyhow::Result<(Uuid, Uuid, String)> {
        let slug = format!("failover-{}", Uuid::new_v4().simple());
        let tenant: Uuid =
            self.sql.query_one("INSERT INTO tenants (slug, name) VALUES ($1, $1) RETURNING id", &[&slug]).await?.get(0);
        let risk: Uuid = self
            .sql
            .query_one(
                "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'risk', 1, 1) RETURNING id",
                &[&tenant],
            )
            .await?
            .get(0);
        let key = self.keyspace.entry_key(tenant, 1, "risk", &[("id", risk.to_string())]);
        let mut conn = self.target.connect(Timeouts::all(Duration::from_secs(2))).await?;
        // The inserts' events are applied before the entry is filled, else they would drop it.
        let settled_by = Instant::now() + GIVE_UP_AFTER;
        while self.sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get::<_, i64>(0) > 0 {
            anyhow::ensure!(Instant::now() < settled_by, "the invalidator never drained the outbox");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Lookup::Miss(snapshot) = protocol::lookup(&mut conn, &self.keyspace, tenant, &key, &tags(risk)).await?
        else {
            anyhow::bail!("a new entry was a hit");
        };
        let snapshot = protocol::create_missing_versions(&mut conn, &self.keyspace, tenant, &snapshot, 3_600).await?;
        let fill = Fill { entry_key: &key, body: b"risk", etag: "e", ttl_secs: 3_600, dependencies_ttl_secs: 3_600 };
        protocol::fill(&mut conn, &self.keyspace, tenant, &snapshot, fill).await?;
        anyhow::ensure!(matches!(
            protocol::lookup(&mut conn, &self.keyspace, tenant, &key, &tags(risk)).await?,
            Lookup::Hit(_)
        ));
        Ok((tenant, risk, key))
    }

    /// A tenant with a cached risk detail whose master is not `master`.
    async fn bystander_of(&self, master: u16) -> anyhow::Result<Bystander> {
        for _ in 0..20 {
            let (tenant, risk, _) = self.cached_risk().await?;
            if self.cluster.master_of(&self.keyspace.tenant_base(tenant)) != master {
                let version_key = self.keyspace.version_key(tenant, &Tag::risk(risk));
                return Ok(Bystander { sql: self.db.connect().await, target: self.target.clone(), version_key, risk });
            }
        }
        anyhow::bail!("no new tenant landed on another master than {master}")
    }

    /// One failover under one replica of `binary`.
    async fn fail_over(&mut self, binary: &PathBuf) -> anyhow::Result<Failover> {
        let mut invalidator = self.start_invalidator(binary).await?;
        let (tenant, risk, key) = self.cached_risk().await?;
        let master = self.cluster.master_of(&self.keyspace.tenant_base(tenant));
        let replicas = self.cluster.replicas_of(master);
        let bystander = self.bystander_of(master).await?;
        self.cluster.wait_until_replicated(master);

        self.cluster.kill(master);
        let killed = Instant::now();
        self.sql.execute("UPDATE risks SET title = 'failed over' WHERE id = $1", &[&risk]).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let bystander_lags = tokio::spawn(bystander.write_until(stop.clone()));
        let promotion = tokio::task::spawn_blocking(move || {
            while !replicas.iter().copied().any(is_master) {
                anyhow::ensure!(killed.elapsed() < GIVE_UP_AFTER, "no replica was promoted");
                std::thread::sleep(LOOK_EVERY);
            }
            Ok(killed.elapsed())
        });
        let invalidated = self.until_invalidated(tenant, risk, &key, killed).await;
        let promoted = promotion.await??;
        tokio::time::sleep_until((killed + promoted + Duration::from_secs(1)).into()).await;
        stop.store(true, Ordering::Relaxed);
        let bystander_lags = bystander_lags.await?;
        let _ = invalidator.kill().await;
        self.cluster.restart(master);
        self.cluster.wait_until_healthy(3);
        Ok(Failover { promoted, invalidated: invalidated?, bystander_lags: bystander_lags? })
    }

    /// Looks the entry up until it is gone; a failed lookup is sent again on a new connection.
    async fn until_invalidated(
        &self,
        tenant: Uuid,
        risk: Uuid,
        key: &str,
        killed: Instant,
    ) -> anyhow::Result<Duration> {
        let mut cluster = Reconnecting::to(&self.target);
        while killed.elapsed() < GIVE_UP_AFTER {
            if let Some(conn) = cluster.connection().await {
                let found = protocol::lookup(conn, &self.keyspace, tenant, key, &tags(risk)).await;
                if let Some(Lookup::Miss(_)) = cluster.answered(found) {
                    return Ok(killed.elapsed());
                }
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        anyhow::bail!("the entry was still cached {GIVE_UP_AFTER:?} after the SIGKILL")
    }
}

/// A tenant of a master that stays up, its risk, and the version an update of the risk replaces.
struct Bystander {
    sql: tokio_postgres::Client,
    target: RedisTarget,
    version_key: String,
    risk: Uuid,
}

impl Bystander {
    /// Updates the risk again and again until `stop`, [`BYSTANDER_PAUSE`] apart, each time
    /// timing from the commit until the version changed (the invalidator applied it).
    async fn write_until(self, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Duration>> {
        let mut cluster = Reconnecting::to(&self.target);
        let mut lags = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let before = self.version(&mut cluster).await?;
            let title = format!("bystander {}", lags.len());
            self.sql.execute("UPDATE risks SET title = $2 WHERE id = $1", &[&self.risk, &title]).await?;
            let committed = Instant::now();
            while self.version(&mut cluster).await? == before {
                anyhow::ensure!(committed.elapsed() < GIVE_UP_AFTER, "a write of the other master's tenant stayed");
                tokio::time::sleep(LOOK_EVERY).await;
            }
            lags.push(committed.elapsed());
            tokio::time::sleep(BYSTANDER_PAUSE).await;
        }
        Ok(lags)
    }

    /// The version's token (the cluster refuses calls while it fails the master over).
    async fn version(&self, cluster: &mut Reconnecting<'_>) -> anyhow::Result<Option<String>> {
        let started = Instant::now();
        while started.elapsed() < GIVE_UP_AFTER {
            if let Some(conn) = cluster.connection().await {
                let token = redis::cmd("GET").arg(&self.version_key).query_async(conn).await;
                if let Some(token) = cluster.answered(token) {
                    return Ok(token);
                }
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        anyhow::bail!("the other master's tenant's version was unreadable for {GIVE_UP_AFTER:?}")
    }
}

/// A connection to the cluster, opened again after a failed call: the cluster refuses calls
/// while it fails a master over, and a client may keep a connection to the dead master.
struct Reconnecting<'a> {
    target: &'a RedisTarget,
    conn: Option<RedisConnection>,
}

impl<'a> Reconnecting<'a> {
    fn to(target: &'a RedisTarget) -> Self {
        Self { target, conn: None }
    }

    /// The connection, opened anew if the last call failed; `None` while none can be opened.
    async fn connection(&mut self) -> Option<&mut RedisConnection> {
        if self.conn.is_none() {
            self.conn = self.target.connect(Timeouts::all(Duration::from_millis(200))).await.ok();
        }
        self.conn.as_mut()
    }

    /// The answer of a call on [`Reconnecting::connection`]; after an error, `None`, and the
    /// connection is dropped so that the next call opens another.
    fn answered<T>(&mut self, answer: redis::RedisResult<T>) -> Option<T> {
        if answer.is_err() {
            self.conn = None;
        }
        answer.ok()
    }
}

/// The tags a risk's detail depends on, as far as an update of its title goes.
fn tags(risk: Uuid) -> Vec<Tag> {
    vec![Tag::risk(risk)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let beside = std::env::current_exe()?.with_file_name("openrisk-invalidator");
    let specs = if args.invalidators.is_empty() {
        vec![format!("this={}", beside.display())]
    } else {
        args.invalidators.clone()
    };
    let mut variants = specs.iter().map(|spec| Variant::parse(spec)).collect::<anyhow::Result<Vec<_>>>()?;
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start).await?;
    let db = TestDatabase::create().await;
    let sql = db.connect().await;
    let keyspace = RedisNamespace::on(&cluster.url()).keyspace();
    let target = RedisTarget::parse(&cluster.url())?;
    let mut stage = Stage { cluster, db, sql, keyspace, target };

    println!("## A write of a tenant whose Redis master is SIGKILLed, invalidated after the failover\n");
    println!("Times in ms from the SIGKILL; the write commits right after it.\n");
    println!(
        "| invalidator | round | promoted | invalidated | after the promotion | other master's writes | their longest lag |"
    );
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=args.rounds {
        // Interleaved, each binary first in turn.
        let order: Vec<usize> = (0..variants.len()).map(|index| (index + round) % variants.len()).collect();
        for index in order {
            let failover = stage.fail_over(&variants[index].binary).await?;
            println!(
                "| {} | {round} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
                variants[index].label,
                failover.promoted.as_secs_f64() * 1_000.0,
                failover.invalidated.as_secs_f64() * 1_000.0,
                failover.invalidated.saturating_sub(failover.promoted).as_secs_f64() * 1_000.0,
                failover.bystander_lags.len(),
                failover.bystander_max().as_secs_f64() * 1_000.0
            );
            variants[index].record(&failover);
        }
    }
    println!(
        "\n| invalidator | failovers | promoted p50 | max | invalidated after the promotion p50 | max | other master's longest lag p50 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for variant in &variants {
        println!("| {} | {} |", variant.label, variant.cells());
    }
    Ok(())
}
