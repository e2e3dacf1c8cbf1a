//! The consistency check: with writers held, wait until the outbox is drained, then compare
//! every live cached entry (SCAN of the private Redis, every master of a cluster; the verifier
//! may scan, the product never does) and every URL requested so far against the cache-off reference API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use openrisk_shared::Tag;
use openrisk_shared::protocol::StoredEntry;
use openrisk_shared::redis_connection::RedisConnection;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use uuid::Uuid;

use crate::urls::ReadUrl;
use crate::world::World;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
pub struct CheckOutcome {
    pub drained_after: Option<Duration>,
    pub entries: usize,
    pub live: usize,
    pub dead: usize,
    pub urls: usize,
    /// (check name, failures)
    pub checks: Vec<(String, Vec<String>)>,
}

/// Waits until the outbox is empty, the events moved aside for held tenants included (twice,
/// `SETTLE` apart). Returns how long it took.
pub async fn wait_drained(world: &World, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        match world.sql().await {
            Ok(sql) => match sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await {
                Ok(row) if row.get::<_, i64>(0) == 0 => {
                    tokio::time::sleep(SETTLE).await;
                    if let Ok(row) = sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await
                        && row.get::<_, i64>(0) == 0
                    {
                        return Ok(started.elapsed());
                    }
                }
                Ok(row) => last = format!("{} events left", row.get::<_, i64>(0)),
                Err(error) => last = error.to_string(),
            },
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("outbox not drained within {within:?}: {last}"))
}

/// A cached entry as stored: body and the tag versions it was filled with.
struct Entry {
    key: String,
    tenant: Uuid,
    body: Vec<u8>,
    versions: Vec<(String, String)>,
}

fn tenant_of(key: &str) -> Option<Uuid> {
    let open = key.find('{')?;
    let close = key[open..].find('}')? + open;
    key[open + 1..close].parse().ok()
}

/// Every cached entry on every master. A failed `SCAN` fails the whole scan: the keys it did not
/// return could be the stale ones.
async fn scan_entries(world: &World) -> anyhow::Result<Vec<Entry>> {
    let mut conn = world.redis().await?;
    let pattern = world.keyspace.entry_pattern();
    let mut keys = std::collections::BTreeSet::new();
    for mut master in world.redis_masters().await? {
        let stream: redis::AsyncIter<String> = redis::AsyncCommands::scan_match(&mut master, &pattern).await?;
        keys.extend(stream.try_collect::<Vec<_>>().await?);
    }
    let mut entries = Vec::new();
    for key in keys {
        let stored: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let Some(stored) = stored.and_then(|stored| StoredEntry::decode(stored.into())) else { continue };
        let Some(tenant) = tenant_of(&key) else { continue };
        entries.push(Entry { key, tenant, body: stored.body.to_vec(), versions: stored.versions });
    }
    Ok(entries)
}

/// How long a check waits for the cached API to use Redis again: after an outage its breaker
/// stays open 2 s and it reconnects with up to 2 s of backoff, while readers keep requesting.
const CACHE_IN_USE_WAIT: Duration = Duration::from_secs(15);

/// Scans (see [`scan_entries`]) until one entry is live or [`CACHE_IN_USE_WAIT`] has passed: a
/// check right after a Redis outage would otherwise find the cache empty and compare nothing.
/// Returns the last scan and a connection to read versions with.
async fn scan_in_use(world: &World) -> anyhow::Result<(RedisConnection, Vec<Entry>)> {
    let mut conn = world.redis().await?;
    let started = Instant::now();
    loop {
        let entries = scan_entries(world).await?;
        if started.elapsed() > CACHE_IN_USE_WAIT || any_live(world, &mut conn, &entries).await? {
            return Ok((conn, entries));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn any_live(world: &World, conn: &mut RedisConnection, entries: &[Entry]) -> anyhow::Result<bool> {
    for entry in entries {
        if is_live(world, conn, entry).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a lookup would serve `entry` (every stored version present and current), exactly as
/// the protocol's lookup decides.
async fn is_live(world: &World, conn: &mut RedisConnection, entry: &Entry) -> anyhow::Result<bool> {
    for (tag, token) in &entry.versions {
        let Ok(tag) = Tag::parse(tag) else { return Ok(false) };
        let key = world.keyspace.version_key(entry.tenant, &tag);
        let current: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
        if current.as_deref() != Some(token.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The failure of an entry check that compared nothing: with no live entry the cache was not in
/// use, and the check only compared the database with itself.
fn no_live_entry(entries: usize) -> String {
    format!(
        "NOTHING COMPARED: no live cached entry within {CACHE_IN_USE_WAIT:?} ({entries} entries in Redis, none \
         current), so no cached answer was checked against the database"
    )
}

fn show(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() > 1500 { format!("{}… ({} bytes)", &text[..1500], body.len()) } else { text.into_owned() }
}

/// The tenant's recent outbox history and dead letters, for a failure report.
pub async fn history(world: &World, tenant: Uuid) -> String {
    let Ok(sql) = world.sql().await else { return "(history unavailable: no database)".into() };
    let mut out = String::from("  outbox history (newest first):\n");
    if let Ok(rows) = sql
        .query(
            "SELECT id, table_name, op, array_to_string(tags[1:6], ' '), cardinality(tags), created_at::text, coalesce(acked_at::text, '-')
             FROM verifier_outbox_log WHERE tenant_id = $1 ORDER BY id DESC LIMIT 25",
            &[&tenant],
        )
        .await
    {
        for row in rows {
            out.push_str(&format!(
                "    #{} {} {} [{}{}] created {} acked {}\n",
                row.get::<_, i64>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                if row.get::<_, i32>(4) > 6 { " …" } else { "" },
                row.get::<_, String>(5),
                row.get::<_, String>(6)
            ));
        }
    }
    out.push_str("  dead letters:\n");
    if let Ok(rows) = sql
        .query(
            "SELECT id, coalesce(table_name, ''), reason FROM cache_outbox_dead_letter WHERE tenant_id = $1 ORDER BY id DESC LIMIT 5",
            &[&tenant],
        )
        .await
    {
        for row in rows {
            out.push_str(&format!("    #{} {} {}\n", row.get::<_, i64>(0), row.get::<_, String>(1), row.get::<_, String>(2)));
        }
    }
    out
}

/// Drains, then checks every live entry and `url_limit` known URLs (all when `None`).
/// The caller must hold the writers' gate exclusively.
pub async fn check(world: &World, label: &str, url_limit: Option<usize>) -> CheckOutcome {
    let mut outcome = CheckOutcome::default();
    match wait_drained(world, DRAIN_TIMEOUT).await {
        Ok(after) => {
            outcome.drained_after = Some(after);
            outcome.checks.push((format!("{label}: outbox drained"), Vec::new()));
        }
        Err(error) => {
            outcome.checks.push((format!("{label}: outbox drained"), vec![error]));
        }
    }

    // Every entry in Redis.
    let mut entry_failures = Vec::new();
    match scan_in_use(world).await {
        Ok((mut conn, entries)) => {
            // Readers keep running and record a URL before requesting it, so a copy taken after
            // the scan maps every entry the scan found.
            let known: HashMap<String, ReadUrl> = world.known.lock().unwrap().clone();
            outcome.entries = entries.len();
            for entry in entries {
                match is_live(world, &mut conn, &entry).await {
                    Ok(false) => outcome.dead += 1,
                    Err(error) => entry_failures.push(format!("{}: cannot read versions: {error}", entry.key)),
                    Ok(true) => {
                        outcome.live += 1;
                        let Some(url) = known.get(&entry.key) else {
                            entry_failures.push(format!(
                                "live entry {} maps to no URL the verifier requested (key scheme drift?): {}",
                                entry.key,
                                show(&entry.body)
                            ));
                            continue;
                        };
                        if url.tenant != entry.tenant {
                            entry_failures.push(format!(
                                "entry {} is under tenant {} but was requested by {}",
                                entry.key, entry.tenant, url.tenant
                            ));
                        }
                        match world.get(&world.ref_base, url.tenant, &url.path).await {
                            Ok((200, body, _)) if body == entry.body => {}
                            Ok((status, body, _)) => entry_failures.push(format!(
                                "STALE ENTRY {}\n  url: {}\n  cached: {}\n  database ({status}): {}\n  versions: {:?}\n{}",
                                entry.key,
                                url.path,
                                show(&entry.body),
                                show(&body),
                                entry.versions,
                                history(world, entry.tenant).await
                            )),
                            Err(error) => entry_failures.push(format!("{}: reference API failed: {error}", url.path)),
                        }
                    }
                }
            }
            if outcome.live == 0 {
                entry_failures.push(no_live_entry(outcome.entries));
            }
        }
        Err(error) => entry_failures.push(format!("cannot scan redis: {error:#}")),
    }
    outcome.checks.push((format!("{label}: every live cached entry equals the database"), entry_failures));

    // Every URL requested so far, through the cache and around it.
    let mut urls: Vec<ReadUrl> = world.known.lock().unwrap().values().cloned().collect();
    urls.sort_by(|a, b| a.key.cmp(&b.key));
    urls.shuffle(&mut StdRng::seed_from_u64(world.cfg.seed ^ 0x4000));
    if let Some(limit) = url_limit {
        urls.truncate(limit);
    }
    let mut url_failures = Vec::new();
    let results = futures::stream::iter(urls.iter())
        .map(|url| async move {
            let cached = world.get(&world.api_base, url.tenant, &url.path).await;
            let reference = world.get(&world.ref_base, url.tenant, &url.path).await;
            (url, cached, reference)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for (url, cached, reference) in results {
        outcome.urls += 1;
        match (cached, reference) {
            (Ok((s1, b1, _)), Ok((s2, b2, _))) if s1 == s2 && b1 == b2 && s1 < 500 => {}
            (Ok((s1, b1, cache_status)), Ok((s2, b2, _))) => {
                let again = if url_failures.len() < REREAD_FAILURES { reread(world, url).await } else { String::new() };
                url_failures.push(format!(
                    "STALE READ {}\n  key: {}\n  cached API ({s1}, {cache_status}): {}\n  reference ({s2}): {}\n{again}{}",
                    url.path,
                    url.key,
                    show(&b1),
                    show(&b2),
                    history(world, url.tenant).await
                ))
            }
            (Err(error), _) | (_, Err(error)) => url_failures.push(format!("{}: request failed: {error}", url.path)),
        }
    }
    outcome
        .checks
        .push((format!("{label}: every requested URL reads the same with and without the cache"), url_failures));
    outcome
}

/// Reads every URL requested so far once through the cached API, comparing nothing: after the
/// readers have stopped, nothing else fills the cache, and the final entry check would find no
/// live entry when the last phase invalidated every tenant (the poison phase does).
pub async fn refill(world: &World) {
    let urls: Vec<ReadUrl> = world.known.lock().unwrap().values().cloned().collect();
    futures::stream::iter(urls.iter())
        .for_each_concurrent(8, |url| async move {
            let _ = world.get(&world.api_base, url.tenant, &url.path).await;
        })
        .await;
}

/// How many mismatched reads of one check are read again (2 s each) by [`reread`].
const REREAD_FAILURES: usize = 3;

/// What the cached API answers for `url` again 0.2 s and 2 s after a mismatch, and what its
/// `/readyz` reports (its replicas among the rest): tells a mismatch that heals by itself (a
/// race) from one that stays, and where the API read at the time.
async fn reread(world: &World, url: &ReadUrl) -> String {
    let mut out = String::new();
    for wait in [Duration::from_millis(200), Duration::from_millis(1800)] {
        tokio::time::sleep(wait).await;
        let again = match world.get(&world.api_base, url.tenant, &url.path).await {
            Ok((status, body, cache_status)) => format!("{status}, {cache_status}: {}", show(&body)),
            Err(error) => format!("failed: {error}"),
        };
        out.push_str(&format!("  cached API again after {wait:?}: {again}\n"));
    }
    let readyz = match world.http.get(format!("{}/readyz", world.api_base)).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => format!("failed: {error}"),
    };
    out.push_str(&format!("  cached API /readyz: {readyz}\n"));
    out
}

/// Proves the check can fail: a write that bypasses the triggers (`session_replication_role =
/// replica`, so no outbox row) leaves a cached risk detail stale, and the entry check must name
/// that entry and nothing that cannot contain the risk (a cached list may also hold it). An
/// ordinary write then repairs it. Returns the failures of this self-test. The caller must hold
/// the writers' gate exclusively.
pub async fn canary(world: &World) -> Vec<String> {
    let tenant = world.tenants[0].id;
    // Writers are held: the catalog read now is exact.
    let _ = world.refresh_catalog().await;
    let Some(risk) = world.catalog().tenant(tenant).and_then(|data| data.risks.first().copied()) else {
        return vec!["canary: tenant has no risk".into()];
    };
    let read = crate::urls::risk_detail(&world.keyspace, tenant, risk);
    world.known.lock().unwrap().entry(read.key.clone()).or_insert_with(|| read.clone());
    let mut cached = false;
    for _ in 0..20 {
        if let Ok((200, _, status)) = world.get(&world.api_base, tenant, &read.path).await
            && status.contains("hit")
        {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !cached {
        return vec![format!("canary: {} never became a cache hit", read.path)];
    }
    let sql = match world.sql().await {
        Ok(sql) => sql,
        Err(error) => return vec![format!("canary: {error}")],
    };
    let untracked = "BEGIN; SET LOCAL session_replication_role = replica;
         UPDATE risks SET title = 'canary: untracked write' WHERE id = $ID; COMMIT;";
    if let Err(error) = sql.batch_execute(&untracked.replace("$ID", &format!("'{risk}'"))).await {
        return vec![format!("canary: untracked write failed: {error}")];
    }
    let outcome = check(world, "canary", Some(0)).await;
    let entry_failures: Vec<&String> =
        outcome.checks.iter().filter(|(name, _)| name.contains("entry")).flat_map(|(_, f)| f).collect();
    let mut failures = Vec::new();
    if !entry_failures.iter().any(|failure| failure.contains(&read.key) && failure.contains("STALE ENTRY")) {
        failures.push(format!("the check did not report the planted stale entry {}", read.key));
    }
    // A cached list holding the risk goes stale too; only entries that cannot hold it must stay clean.
    let may_hold_the_risk =
        |failure: &str| failure.contains("(\"risks\", ") || failure.contains(&format!("(\"risk:{risk}\", "));
    if let Some(other) =
        entry_failures.iter().find(|failure| !failure.contains(&read.key) && !may_hold_the_risk(failure))
    {
        failures.push(format!("the check reported something else too: {other}"));
    }
    // Repair through the triggers: the invalidator removes the stale entry.
    if let Err(error) = sql.execute("UPDATE risks SET title = 'canary: repaired' WHERE id = $1", &[&risk]).await {
        failures.push(format!("canary: repair failed: {error}"));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_read_from_the_hash_tag() {
        let tenant = Uuid::new_v4();
        let key = openrisk_shared::Keyspace::new("vf1").entry_key(tenant, 1, "risks", &[]);
        assert_eq!(tenant_of(&key), Some(tenant));
        assert_eq!(tenant_of("vf1:no-tag:e:1"), None);
    }
}
