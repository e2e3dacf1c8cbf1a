//! Faults that look like a network (`--network`): the private Postgres and Redis run inside
//! network namespaces of the verifier's own, each behind a veth link (test-support's
//! [`NetworkLink`]), and Redis also behind a [`LatencyRelay`]. The faults drop packets silently
//! (no reset, no close) or slow the link, while the workload runs; the check after each one
//! proves every cached entry equals the database.

use std::time::{Duration, Instant};

use anyhow::Context;
use openrisk_test_support::{LatencyRelay, NetworkLink, PrivatePostgres, PrivateRedis, with_database};

use crate::faults::{Fault, burst_until_claimed, tcp_ports_of};
use crate::world::World;

/// Longest wait for a fault's effect (a session ended, a connection replaced, a drained outbox).
const EFFECT_WAIT: Duration = Duration::from_secs(30);

/// The links the private servers sit behind.
pub struct Network {
    redis: NetworkLink,
    postgres: NetworkLink,
    relay: LatencyRelay,
    /// How long Redis stays cut off (the 10 s; 2 s in a smoke run).
    redis_cut: Duration,
}

impl Network {
    /// Starts the private Postgres (reachable on two addresses, the second for invalidator-2
    /// only) and Redis behind links of their own. Blocking.
    pub fn start(smoke: bool) -> (Self, PrivatePostgres, PrivateRedis) {
        let redis_link = NetworkLink::create(1);
        let postgres_link = NetworkLink::create(2);
        let postgres = PrivatePostgres::start_behind(&postgres_link);
        let redis = PrivateRedis::start_behind(&redis_link);
        let relay = LatencyRelay::start(redis.addr(), Duration::ZERO);
        let redis_cut = if smoke { Duration::from_secs(2) } else { Duration::from_secs(10) };
        (Self { redis: redis_link, postgres: postgres_link, relay, redis_cut }, postgres, redis)
    }

    /// The `REDIS_URL` every process uses: the relay in front of the link.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.relay.addr)
    }

    /// The `DATABASE_URL` of invalidator `index` (1-based): invalidator-2 reaches Postgres
    /// through an address of its own, which the partition fault cuts.
    pub fn database_url(&self, postgres_admin: &PrivatePostgres, index: usize, database: &str) -> String {
        let address = self.postgres.server_address(u8::from(index == 2));
        with_database(&postgres_admin.admin_url_via(address), database)
    }
}

/// Injects one of the network faults; returns what was done and measured, for the report.
pub async fn inject(world: &World, fault: Fault) -> anyhow::Result<String> {
    let network = world.network.as_ref().context("network faults need --network")?;
    match fault {
        Fault::RedisBlackhole => redis_blackhole(world, network).await,
        Fault::PostgresPartitionOneInvalidator => postgres_partition_one_invalidator(world, network).await,
        Fault::HalfOpenListen => half_open_listen(world, network).await,
        Fault::SlowLossyRedisLink => slow_lossy_redis_link(world, network).await,
        other => anyhow::bail!("{} is not a network fault", other.name()),
    }
}

/// Undoes a fault when dropped, so that every way out of it (an error on a `?` path included)
/// heals the link: a partition left in place would fall on the faults after it.
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Every packet between the processes and Redis dropped for the cut, while a probe reads
/// through the API and times every answer.
async fn redis_blackhole(world: &World, network: &Network) -> anyhow::Result<String> {
    let failed_before = failed_lookups(world).await?;
    let heal = Undo(|| network.redis.heal());
    network.redis.blackhole();
    let probe = probe_reads(world, network.redis_cut).await;
    drop(heal);
    // A rule that dropped nothing would pass every check after it: the API's lookups must have
    // failed meanwhile (the first ones time out, before its breaker opens).
    let failed = failed_lookups(world).await? - failed_before;
    anyhow::ensure!(failed > 0.0, "no lookup of the API failed while its Redis link was silent");
    Ok(format!(
        "Redis link silent (packets dropped) for {:.0}s; API reads during it: {probe}",
        network.redis_cut.as_secs_f64()
    ))
}

/// invalidator-2's address to Postgres cut while it holds a claimed batch: the server must end
/// its sessions (the keepalives it was asked for), releasing the claim to invalidator-1.
async fn postgres_partition_one_invalidator(world: &World, network: &Network) -> anyhow::Result<String> {
    let replica = world.invalidators[1].lock().await;
    let ports = tcp_ports_of(replica.pid);
    let sql = world.sql().await?;
    burst_until_claimed(world, &sql, &ports).await?;
    let last_event: i64 = sql.query_one("SELECT coalesce(max(id), 0) FROM cache_outbox_pending", &[]).await?.get(0);
    let heal = Undo(|| network.postgres.heal());
    network.postgres.blackhole_address(network.postgres.server_address(1));
    let cut_at = Instant::now();
    let readyz = format!("http://{}/readyz", replica.spec.health_addr);
    let (mut released, mut unready) = (None, None);
    while (released.is_none() || unready.is_none()) && cut_at.elapsed() < EFFECT_WAIT {
        let sessions: i64 =
            sql.query_one("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY($1)", &[&ports]).await?.get(0);
        if sessions == 0 {
            released.get_or_insert(cut_at.elapsed());
        }
        if world.http.get(&readyz).send().await.is_ok_and(|response| response.status().as_u16() == 503) {
            unready.get_or_insert(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = wait_until_applied(&sql, last_event, cut_at).await?;
    drop(heal);
    anyhow::ensure!(released.is_some(), "the server kept the cut-off replica's sessions for {EFFECT_WAIT:?}");
    anyhow::ensure!(
        caught_up.is_some(),
        "the other replica did not take over: events committed before the cut still in the outbox after {EFFECT_WAIT:?}"
    );
    Ok(format!(
        "{} cut off from Postgres while it held a claimed batch; the server ended its sessions {}, its /readyz answered 503 {}; every event committed before the cut applied {}",
        replica.spec.name,
        after(released),
        after(unready),
        after(caught_up),
    ))
}

/// One LISTEN connection silently dead (notifications lost): it must be found dead and replaced,
/// while polls keep the events flowing.
async fn half_open_listen(world: &World, network: &Network) -> anyhow::Result<String> {
    let sql = world.sql().await?;
    let listeners = || async {
        let rows = sql
            .query(
                "SELECT client_port FROM pg_stat_activity WHERE application_name = 'openrisk-invalidator-listener'",
                &[],
            )
            .await?;
        anyhow::Ok(rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>())
    };
    let before = listeners().await?;
    let dead = *before.first().context("no LISTEN connection to cut")?;
    let heal = Undo(|| network.postgres.heal());
    network.postgres.blackhole_connection(u16::try_from(dead)?);
    let cut_at = Instant::now();
    let mut replaced = None;
    while replaced.is_none() && cut_at.elapsed() < EFFECT_WAIT {
        let now = listeners().await?;
        if !now.contains(&dead) && now.len() >= before.len() {
            replaced = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(heal);
    anyhow::ensure!(replaced.is_some(), "the half-open LISTEN connection was not replaced within {EFFECT_WAIT:?}");
    Ok(format!(
        "LISTEN connection on port {dead} made half-open (packets dropped); gone and replaced {}",
        after(replaced)
    ))
}

/// 100 ms more each way (200 ms per round trip) and 5 % of the packets lost on the Redis link.
async fn slow_lossy_redis_link(world: &World, network: &Network) -> anyhow::Result<String> {
    let slow_for = network.redis_cut;
    let heal = Undo(|| {
        network.redis.heal();
        network.relay.set_one_way(Duration::ZERO);
    });
    network.relay.set_one_way(Duration::from_millis(100));
    network.redis.lose(5);
    let probe = probe_reads(world, slow_for).await;
    let sql = world.sql().await?;
    let oldest: f64 = sql
        .query_one(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at))::float8, 0) FROM cache_outbox_pending",
            &[],
        )
        .await?
        .get(0);
    drop(heal);
    Ok(format!(
        "Redis link +200 ms per round trip with 5% loss for {:.0}s; API reads during it: {probe}; oldest outbox event at the end {oldest:.2}s",
        slow_for.as_secs_f64()
    ))
}

/// How many of the API's cache lookups have failed so far (`openrisk_cache_requests_total` with
/// `result="error"`; not `"bypass"`, which also counts the reads it never caches).
async fn failed_lookups(world: &World) -> anyhow::Result<f64> {
    let metrics = world.http.get(format!("{}/metrics", world.api_metrics_base)).send().await?.text().await?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("openrisk_cache_requests_total{") && line.contains("result=\"error\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// Reads one risk's detail through the cached API, one after another, for `during`; reports
/// the count, p50, p99 and maximum latency and how many got a 5xx or no answer, each of which
/// is also recorded as an API error (none is allowed outside Postgres outages).
async fn probe_reads(world: &World, during: Duration) -> String {
    let tenant = world.tenants[0].id;
    let catalog = world.catalog();
    let Some(risk) = catalog.tenant(tenant).and_then(|data| data.risks.first().copied()) else {
        return "no risk to read".into();
    };
    let path = format!("/api/v1/risks/{risk}");
    let started = Instant::now();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while started.elapsed() < during {
        let at = Instant::now();
        let answered = world.get(&world.api_base, tenant, &path).await;
        latencies.push(at.elapsed().as_secs_f64());
        // A 404 is an answer (a writer may have deleted the risk); an error is a 5xx or none.
        let failure = match answered {
            Ok((status, _, _)) if status < 500 => continue,
            Ok((status, _, _)) => format!("probe GET {path}: {status}"),
            Err(error) => format!("probe GET {path}: {error}"),
        };
        world.stats.error(at, failure);
        failed += 1;
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| crate::summary::ms(crate::summary::percentile(&latencies, p));
    format!(
        "{} reads, p50 {}, p99 {}, max {}, {failed} 5xx or unanswered",
        latencies.len(),
        at(0.5),
        at(0.99),
        crate::summary::ms(latencies.last().copied())
    )
}

/// Waits until no outbox event up to `last_event` is left (the workload keeps adding later
/// ones); returns how long after `since` that was.
async fn wait_until_applied(
    sql: &tokio_postgres::Client,
    last_event: i64,
    since: Instant,
) -> anyhow::Result<Option<Duration>> {
    while since.elapsed() < EFFECT_WAIT {
        let rows: i64 =
            sql.query_one("SELECT count(*) FROM cache_outbox_pending WHERE id <= $1", &[&last_event]).await?.get(0);
        if rows == 0 {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// "after 6.1s", or "not within 30s" when it did not happen.
fn after(elapsed: Option<Duration>) -> String {
    elapsed.map_or_else(
        || format!("not within {:.0}s", EFFECT_WAIT.as_secs_f64()),
        |elapsed| format!("after {:.1}s", elapsed.as_secs_f64()),
    )
}
