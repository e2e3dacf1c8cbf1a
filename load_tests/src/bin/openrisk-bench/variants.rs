//! Many variants of one list: one viewer caches `--variants` pages, then one SQL write
//! invalidates them all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use openrisk_load_tests::bench::http::{Conn, Req};
use openrisk_load_tests::bench::redis_cost;
use openrisk_shared::CacheStatus;
use openrisk_shared::redis_connection::RedisConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::args::Args;
use crate::dataset::{Checks, RiskRef, touch_all};

/// One viewer caches `--variants` pages of one list, then one SQL write invalidates them all:
/// how long the longest single Redis command took (every tenant waits for it), what the whole
/// invalidation and its reclaiming cost inside Redis, and that no page is served stale.
pub async fn run(
    args: &Args,
    (tenant, auth): &(Uuid, Arc<str>),
    risks: &[RiskRef],
    pg: &tokio_postgres::Client,
    redis: &mut RedisConnection,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let Some(risk) = risks.iter().find(|risk| risk.tenant == *tenant) else { bail!("tenant {tenant} has no risk") };
    println!("== many variants: {} pages of one list, then one SQL write", args.variants);
    // Cacheable variants (pages past 10 are never cached): every page up to 10 of every page size.
    // The API stores at most `cache.max_entries_per_route` of them per tenant; the rest bypass.
    let pages: Vec<Req> = (0..args.variants)
        .map(|i| {
            let (page, limit) = (1 + i % 10, 1 + (i / 10) % 200);
            Req::get(format!("/api/v1/risks?page={page}&limit={limit}"), Some(Arc::clone(auth)))
        })
        .collect();
    let started = Instant::now();
    let failed = touch_all(args.cached, &pages, 16).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let members_key = openrisk_shared::Keyspace::new(args.key_prefix.clone())
        .members_key(*tenant, &openrisk_shared::Tag::parse("risks")?);
    let members: u64 = redis::cmd("SCARD").arg(&members_key).query_async(redis).await?;
    let keys_before = redis_cost::keys(redis).await?;
    redis_cost::record_every_command(redis).await?;
    redis_cost::reset(redis).await?;
    pg.execute("UPDATE risks SET description = md5(random()::text) WHERE id = $1", &[&risk.id]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys_after = keys_before;
    while Instant::now() < deadline {
        let pending: i64 = pg.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0);
        keys_after = redis_cost::keys(redis).await?;
        if pending == 0 && keys_before.saturating_sub(keys_after) >= members {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spent = redis_cost::read(redis).await?;
    let (longest_us, longest_command, logged) = redis_cost::longest_command(redis).await?;
    let first_page = Conn::open(args.cached).await?.send(&pages[0]).await?;
    checks.check(
        "the list variants were cached, up to the tenant's entry budget (cache.max_entries_per_route)",
        failed == 0 && members > 0 && members <= u64::from(args.variants),
        format!("{failed} failed, {members} entries under the collection tag"),
    );
    checks.check(
        "one write made every variant unreadable and reclaimed them",
        // A miss, or (once the variants spent the tenant's entry budget) a read around the cache:
        // never the invalidated entry.
        first_page.cache_status.is_some_and(|status| status.is_miss() || status == CacheStatus::OverBudget)
            && keys_before.saturating_sub(keys_after) >= members,
        format!("keys {keys_before} → {keys_after}, first page {:?}", first_page.cache_status),
    );
    println!(
        "  {members} variants cached in {fill_secs:.1} s; longest Redis command during the invalidation \
         {longest_us} µs ({longest_command}); Redis time for the whole write {:.0} µs over {logged} commands",
        spent.usec_per_request(1)
    );
    Ok(json!({
        "variants": members,
        "fill_seconds": fill_secs,
        "longest_command_us": longest_us,
        "longest_command": longest_command,
        "commands_logged": logged,
        "redis": spent.to_json(1),
        "keys_before": keys_before,
        "keys_after": keys_after,
    }))
}
