//! Malformed outbox rows at scale: thousands of poison rows (unknown tables and operations,
//! empty and malformed tag lists) shuffled among valid ones, some of which name more tags than an
//! event may carry. Every poison row must be dead-lettered and counted, every valid one applied,
//! and no tag version touched but theirs (a poison row, and a row with too many tags,
//! invalidate their tenant's `all` in their place).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;
use uuid::Uuid;

use crate::check::wait_drained;
use crate::world::World;

pub struct PoisonOutcome {
    pub poison_rows: usize,
    pub valid_rows: usize,
    pub id_range: (i64, i64),
    pub checks: Vec<(String, Vec<String>)>,
}

/// Sum of a counter over every invalidator replica's /metrics. Fails when a replica does not
/// answer or does not export it (a registered counter is exported from zero on).
async fn replica_counter(world: &World, name: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for replica in &world.invalidators {
        let addr = replica.lock().await.spec.health_addr.clone();
        let text = world.http.get(format!("http://{addr}/metrics")).send().await?.text().await?;
        let value: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("no {name} in http://{addr}/metrics"))?;
        total += value as u64;
    }
    Ok(total)
}

async fn versions(world: &World, tenant: Uuid, tags: &[String]) -> anyhow::Result<HashMap<String, Option<String>>> {
    let mut conn = world.redis().await?;
    let mut out = HashMap::new();
    for tag in tags {
        let key = format!("{}v:{tag}", world.keyspace.tenant_base(tenant));
        let version: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        out.insert(tag.clone(), version);
    }
    Ok(out)
}

/// The failure of a version check whose tags had no version before the phase (so nothing was
/// compared), if that is so.
fn nothing_compared(before: &[&HashMap<String, Option<String>>]) -> Option<String> {
    let compared = before.iter().flat_map(|versions| versions.values()).filter(|version| version.is_some()).count();
    (compared == 0).then(|| "NOTHING COMPARED: none of its tags had a version before the phase".to_owned())
}

/// Runs the phase; the caller holds the writers' gate exclusively (readers keep running).
pub async fn run(world: &World, scale: usize) -> anyhow::Result<PoisonOutcome> {
    let mut rng = StdRng::seed_from_u64(world.cfg.seed ^ 0x5000);
    world.refresh_catalog().await?;
    let catalog = world.catalog();
    let target = world.tenants[1 % world.tenants.len()].id;
    let bystander = world.tenants[2 % world.tenants.len()].id;
    let target_risks: Vec<Uuid> = catalog.tenant(target).map(|d| d.risks.clone()).unwrap_or_default();
    let bystander_risks: Vec<Uuid> = catalog.tenant(bystander).map(|d| d.risks.clone()).unwrap_or_default();
    let (hit, kept) = target_risks.split_at(target_risks.len() / 2);
    let hit_tags: Vec<String> = hit.iter().map(|id| format!("risk:{id}")).collect();
    let kept_tags: Vec<String> = kept.iter().map(|id| format!("risk:{id}")).collect();
    let bystander_tags: Vec<String> = bystander_risks.iter().map(|id| format!("risk:{id}")).collect();

    // Cache the details so every tag above has a version to watch.
    for (tenant, ids) in [(target, &target_risks), (bystander, &bystander_risks)] {
        for id in ids {
            let read = crate::urls::risk_detail(&world.keyspace, tenant, *id);
            world.known.lock().unwrap().entry(read.key.clone()).or_insert_with(|| read.clone());
            let _ = world.get(&world.api_base, tenant, &read.path).await;
        }
    }
    let before_hit = versions(world, target, &hit_tags).await?;
    let before_kept = versions(world, target, &kept_tags).await?;
    let before_bystander = versions(world, bystander, &bystander_tags).await?;
    let sql = world.sql().await?;
    let dead_before: i64 = sql.query_one("SELECT count(*) FROM cache_outbox_dead_letter", &[]).await?.get(0);
    let poison_metric_before = replica_counter(world, "openrisk_invalidator_poison_events_total").await;

    // Valid rows: each invalidates one `hit` tag; one carries the maximum of 1000 tags.
    let mut rows = Vec::new();
    for tag in &hit_tags {
        rows.push((true, json!({"tenant": target, "table": "risks", "op": "UPDATE", "tags": [tag, "risks"]})));
    }
    if let Some(first) = hit_tags.first() {
        let mut many: Vec<String> = (1..1000).map(|i| format!("asset:poison-filler-{i}")).collect();
        many.push(first.clone());
        rows.push((true, json!({"tenant": target, "table": "assets", "op": "UPDATE", "tags": many})));
    }
    // Poison rows: many of them name tags that must NOT be invalidated (kept and bystander).
    let victim = |rng: &mut StdRng| -> (Uuid, String) {
        if rng.random_ratio(1, 2) && !kept_tags.is_empty() {
            (target, kept_tags[rng.random_range(0..kept_tags.len())].clone())
        } else if !bystander_tags.is_empty() {
            (bystander, bystander_tags[rng.random_range(0..bystander_tags.len())].clone())
        } else {
            (target, "risks".into())
        }
    };
    let bad_tags = [
        "risk:a b",
        "Risk",
        "{x}",
        "",
        "risk:",
        ":x",
        "risk:a:b",
        "1risk",
        "risk\n",
        "risk:*",
        "all ",
        "risk:é",
        "r*",
        "risk:{00000000-0000-0000-0000-000000000000}",
        "risk:a\tb",
        "risk:../x y",
    ];
    for index in 0..scale {
        let (tenant, tag) = victim(&mut rng);
        let tenant = if index % 7 == 0 { Uuid::new_v4() } else { tenant };
        let row = match index % 6 {
            0 => json!({"tenant": tenant, "table": "no_such_table", "op": "UPDATE", "tags": [tag]}),
            1 => json!({"tenant": tenant, "table": "risks", "op": "MERGE", "tags": [tag]}),
            2 => json!({"tenant": tenant, "table": "risks", "op": "UPDATE", "tags": []}),
            3 => {
                let bad = bad_tags[rng.random_range(0..bad_tags.len())];
                json!({"tenant": tenant, "table": "risks", "op": "DELETE", "tags": [tag, bad]})
            }
            4 => json!({"tenant": tenant, "table": "risks", "op": "UPDATE", "tags": [tag, "x".repeat(201)]}),
            _ => {
                // Too many tags: 1001 valid ones (the victim among them), or a huge list; applied
                // as the tenant's `all`, so the victim's own version stays.
                let count = match index % 600 {
                    5 => 20_000,
                    65 | 125 | 185 | 245 | 305 | 365 | 425 | 485 | 545 => 1001,
                    _ => {
                        let bad = bad_tags[rng.random_range(0..bad_tags.len())];
                        rows.push((
                            false,
                            json!({"tenant": tenant, "table": "risk_assets", "op": "INSERT", "tags": [bad, tag]}),
                        ));
                        continue;
                    }
                };
                let mut tags: Vec<String> = (1..count).map(|i| format!("asset:poison-{i}")).collect();
                tags.push(tag);
                rows.push((true, json!({"tenant": tenant, "table": "mitigations", "op": "UPDATE", "tags": tags})));
                continue;
            }
        };
        rows.push((false, row));
    }
    let poison_rows = rows.iter().filter(|(valid, _)| !valid).count();
    let valid_rows = rows.len() - poison_rows;
    rows.shuffle(&mut rng);
    let first_id: i64 = sql.query_one("SELECT coalesce(max(id), 0) FROM verifier_outbox_log", &[]).await?.get(0);
    for chunk in rows.chunks(200) {
        let payload = serde_json::Value::Array(chunk.iter().map(|(_, row)| row.clone()).collect());
        sql.execute(
            "INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
             SELECT (r->>'tenant')::uuid, r->>'table', r->>'op', ARRAY(SELECT jsonb_array_elements_text(r->'tags'))
             FROM jsonb_array_elements($1::jsonb) AS r",
            &[&tokio_postgres::types::Json(&payload)],
        )
        .await?;
    }
    let last_id: i64 = sql.query_one("SELECT coalesce(max(id), 0) FROM verifier_outbox_log", &[]).await?.get(0);

    let mut checks = Vec::new();
    let drained = wait_drained(world, Duration::from_secs(120)).await;
    checks.push(("poison: outbox drained".to_owned(), drained.err().into_iter().collect()));

    let dead_after: i64 = sql.query_one("SELECT count(*) FROM cache_outbox_dead_letter", &[]).await?.get(0);
    let dead = (dead_after - dead_before) as usize;
    let mut failures = Vec::new();
    if dead != poison_rows {
        let reasons = sql
            .query(
                "SELECT split_part(reason, ' ', 1) || ' ' || split_part(reason, ' ', 2), count(*) FROM cache_outbox_dead_letter
                 WHERE id > $1 GROUP BY 1 ORDER BY 2 DESC",
                &[&first_id],
            )
            .await?;
        let reasons: Vec<String> =
            reasons.iter().map(|r| format!("{} ×{}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect();
        failures.push(format!("{dead} rows dead-lettered, expected {poison_rows}; reasons: {reasons:?}"));
    }
    checks.push((format!("poison: all {poison_rows} malformed rows dead-lettered"), failures));

    let poison_metric_after = replica_counter(world, "openrisk_invalidator_poison_events_total").await;
    let failures = match (poison_metric_before, poison_metric_after) {
        (Ok(before), Ok(after)) if (after - before) as usize == poison_rows => Vec::new(),
        (Ok(before), Ok(after)) => {
            vec![format!("replicas counted {} poison events, expected {poison_rows}", after - before)]
        }
        (Err(error), _) | (_, Err(error)) => vec![format!("cannot read the counter: {error:#}")],
    };
    checks.push(("poison: counted in openrisk_invalidator_poison_events_total".to_owned(), failures));

    let after_hit = versions(world, target, &hit_tags).await?;
    let mut failures: Vec<String> = before_hit
        .iter()
        .filter(|(tag, version)| version.is_some() && after_hit.get(*tag) == Some(version))
        .map(|(tag, _)| format!("valid event for {tag} of tenant {target} was not applied (version unchanged)"))
        .collect();
    failures.extend(nothing_compared(&[&before_hit]));
    checks.push((format!("poison: all {valid_rows} valid rows among them applied"), failures));

    let after_kept = versions(world, target, &kept_tags).await?;
    let after_bystander = versions(world, bystander, &bystander_tags).await?;
    let mut failures = Vec::new();
    for (tenant, before, after) in
        [(target, &before_kept, &after_kept), (bystander, &before_bystander, &after_bystander)]
    {
        for (tag, version) in before {
            if version.is_some() && after.get(tag) != Some(version) {
                failures.push(format!("{tag} of tenant {tenant} was invalidated by a poison row"));
            }
        }
    }
    failures.extend(nothing_compared(&[&before_kept, &before_bystander]));
    checks.push(("poison: nothing else invalidated".to_owned(), failures));
    Ok(PoisonOutcome { poison_rows, valid_rows, id_range: (first_id + 1, last_id), checks })
}
