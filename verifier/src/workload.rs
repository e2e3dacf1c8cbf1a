//! Concurrent readers through the cached API, writers through the API and through plain SQL
//! (every watched table; moves between parents, deletes, soft deletes, TRUNCATE), the staleness
//! probe (`crate::probe`), and the catalog refresher. Every task stops when `World::stopping` is set.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::urls::random_read;
use crate::world::World;

pub fn spawn_all(world: &Arc<World>, readers: usize) -> Vec<JoinHandle<()>> {
    let seed = world.cfg.seed;
    let mut tasks = Vec::new();
    for index in 0..readers {
        tasks.push(tokio::spawn(reader(world.clone(), StdRng::seed_from_u64(seed ^ (0x1000 + index as u64)))));
    }
    tasks.push(tokio::spawn(api_writer(world.clone(), StdRng::seed_from_u64(seed ^ 0x2000))));
    tasks.push(tokio::spawn(api_writer(world.clone(), StdRng::seed_from_u64(seed ^ 0x2001))));
    tasks.push(tokio::spawn(sql_writer(world.clone(), StdRng::seed_from_u64(seed ^ 0x3000))));
    tasks.push(tokio::spawn(sql_writer(world.clone(), StdRng::seed_from_u64(seed ^ 0x3001))));
    tasks.push(tokio::spawn(crate::probe::probe(world.clone())));
    tasks.push(tokio::spawn(refresher(world.clone())));
    tasks
}

/// Records a 5xx or a failed request (sent at `sent`) as an API error.
fn classify(world: &World, what: &str, sent: Instant, result: &reqwest::Result<(u16, Vec<u8>, String)>) {
    match result {
        Ok((status, body, _)) if *status >= 500 => world
            .stats
            .error(sent, format!("{what}: {status} {}", String::from_utf8_lossy(&body[..body.len().min(200)]))),
        Ok(_) => {}
        Err(error) => {
            let after = sent.elapsed().as_secs_f64();
            world.stats.error(sent, format!("{what}: {} (sent {after:.1}s before)", with_causes(error)))
        }
    }
}

/// The error and its causes, outermost first: reqwest's own message ("error sending request")
/// does not say whether the connection was refused, reset or timed out.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

async fn reader(world: Arc<World>, mut rng: StdRng) {
    while !world.stopping() {
        let tenant = world.tenants.choose(&mut rng).expect("tenants").id;
        let catalog = world.catalog();
        if rng.random_ratio(1, 25) {
            isolation_probe(&world, tenant, &catalog, &mut rng).await;
            continue;
        }
        let read = random_read(&world.keyspace, tenant, &catalog, &mut rng);
        world.known.lock().unwrap().entry(read.key.clone()).or_insert_with(|| read.clone());
        let sent = Instant::now();
        let result = world.get(&world.api_base, tenant, &read.path).await;
        world.stats.reads.fetch_add(1, Ordering::Relaxed);
        if let Ok((_, _, cache_status)) = &result
            && cache_status.contains("hit")
        {
            world.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        classify(&world, &format!("GET {}", read.path), sent, &result);
        if rng.random_ratio(1, 4) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
        }
    }
}

/// Asks for another tenant's risk with this tenant's token: must be 404, from cache or not.
async fn isolation_probe(world: &World, tenant: Uuid, catalog: &crate::world::Catalog, rng: &mut StdRng) {
    let Some(other) = world.tenants.iter().filter(|t| t.id != tenant).collect::<Vec<_>>().choose(rng).map(|t| t.id)
    else {
        return;
    };
    let Some(risk) = catalog.tenant(other).and_then(|d| d.risks.choose(rng)).copied() else { return };
    let sent = Instant::now();
    let result = world.get(&world.api_base, tenant, &format!("/api/v1/risks/{risk}")).await;
    world.stats.isolation_probes.fetch_add(1, Ordering::Relaxed);
    if let Ok((status, _, _)) = &result
        && (200..300).contains(status)
    {
        world.stats.isolation_violations.fetch_add(1, Ordering::Relaxed);
        world.stats.error(sent, format!("ISOLATION: tenant {tenant} read risk {risk} of tenant {other}"));
    }
    classify(world, "GET (isolation probe)", sent, &result);
}

async fn send(world: &World, method: reqwest::Method, tenant: Uuid, path: &str, body: Option<serde_json::Value>) {
    let mut request =
        world.http.request(method.clone(), format!("{}{path}", world.api_base)).bearer_auth(world.token_of(tenant));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let sent = Instant::now();
    let result = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            Ok((status, body, String::new()))
        }
        Err(error) => Err(error),
    };
    // A refused write (4xx: a row deleted meanwhile, a conflict) changed nothing.
    if matches!(&result, Ok((status, ..)) if (200..300).contains(status)) {
        world.stats.api_writes.fetch_add(1, Ordering::Relaxed);
    }
    classify(world, &format!("{method} {path}"), sent, &result);
}

async fn api_writer(world: Arc<World>, mut rng: StdRng) {
    let criticalities = ["LOW", "MEDIUM", "HIGH", "CRITICAL"];
    let statuses = ["DRAFT", "ACTIVE", "MITIGATED", "ACCEPTED"];
    while !world.stopping() {
        let guard = world.gate.read().await;
        let tenant = world.tenants.choose(&mut rng).expect("tenants").id;
        let catalog = world.catalog();
        let Some(data) = catalog.tenant(tenant) else {
            drop(guard);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let n = rng.random_range(0..14);
        let risk = data.risks.choose(&mut rng).copied();
        let mitigation = data.mitigations.choose(&mut rng).copied();
        let subaction = data.subactions.choose(&mut rng).copied();
        let asset = data.assets.choose(&mut rng).copied();
        use reqwest::Method as M;
        match (n, risk, mitigation, subaction, asset) {
            (0..=2, Some(risk), ..) => {
                let body = json!({"impact": rng.random_range(1..=5), "probability": rng.random_range(1..=5),
                    "status": statuses.choose(&mut rng).unwrap(), "title": format!("API title {}", rng.random::<u32>())});
                send(&world, M::PATCH, tenant, &format!("/api/v1/risks/{risk}"), Some(body)).await;
            }
            (3, ..) => {
                let body = json!({"title": format!("Verifier risk {}", rng.random::<u32>()), "impact": rng.random_range(1..=5),
                    "probability": rng.random_range(1..=5), "tags": ["verifier", "audit"], "owner": "alice@example.com"});
                send(&world, M::POST, tenant, "/api/v1/risks", Some(body)).await;
            }
            (4, Some(risk), ..) if data.risks.len() > 5 => {
                send(&world, M::DELETE, tenant, &format!("/api/v1/risks/{risk}"), None).await;
            }
            (5, Some(risk), ..) => {
                let body = json!({"title": format!("Mitigation {}", rng.random::<u32>()), "progress": rng.random_range(0..=100)});
                send(&world, M::POST, tenant, &format!("/api/v1/risks/{risk}/mitigations"), Some(body)).await;
            }
            (6, _, Some((risk, id)), ..) => {
                let status = *["PLANNED", "IN_PROGRESS", "DONE"].choose(&mut rng).unwrap();
                let body = json!({"progress": rng.random_range(0..=100), "status": status});
                send(&world, M::PATCH, tenant, &format!("/api/v1/risks/{risk}/mitigations/{id}"), Some(body)).await;
            }
            (7, _, Some((risk, id)), ..) if rng.random_ratio(1, 2) => {
                send(&world, M::DELETE, tenant, &format!("/api/v1/risks/{risk}/mitigations/{id}"), None).await;
            }
            (8, _, Some((risk, id)), ..) => {
                let body = json!({"title": format!("Step {}", rng.random::<u16>())});
                send(&world, M::POST, tenant, &format!("/api/v1/risks/{risk}/mitigations/{id}/subactions"), Some(body))
                    .await;
            }
            (9, _, _, Some((risk, m, id)), _) => {
                let path = format!("/api/v1/risks/{risk}/mitigations/{m}/subactions/{id}");
                if rng.random_ratio(1, 3) {
                    send(&world, M::DELETE, tenant, &path, None).await;
                } else {
                    send(&world, M::POST, tenant, &format!("{path}/toggle"), None).await;
                }
            }
            (10, .., Some(asset)) => {
                let body = json!({"criticality": criticalities.choose(&mut rng).unwrap()});
                send(&world, M::PATCH, tenant, &format!("/api/v1/assets/{asset}"), Some(body)).await;
            }
            (11, ..) => {
                let body = json!({"name": format!("Verifier asset {}", rng.random::<u32>()), "asset_type": "server",
                    "criticality": criticalities.choose(&mut rng).unwrap()});
                send(&world, M::POST, tenant, "/api/v1/assets", Some(body)).await;
            }
            (12, Some(risk), .., Some(asset)) => {
                let method = if rng.random_ratio(1, 2) { M::PUT } else { M::DELETE };
                send(&world, method, tenant, &format!("/api/v1/risks/{risk}/assets/{asset}"), None).await;
            }
            (13, .., Some(asset)) if data.assets.len() > 4 && rng.random_ratio(1, 3) => {
                send(&world, M::DELETE, tenant, &format!("/api/v1/assets/{asset}"), None).await;
            }
            _ => {}
        }
        drop(guard);
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// A parameter of a plain-SQL write.
type Param = Box<dyn ToSql + Send + Sync>;

/// The parameters of a plain-SQL write, each boxed.
macro_rules! params {
    ($($value:expr),*) => { vec![$(Box::new($value) as Param),*] };
}

/// One plain-SQL write (another program writing the database directly): a statement picked at
/// random among those whose rows exist, then run. Whether it changed anything: only a write that
/// did counts as one (a check asks that writes succeeded during each fault).
async fn sql_write(client: &Client, world: &World, rng: &mut StdRng) -> Result<bool, tokio_postgres::Error> {
    let tenant = world.tenants.choose(rng).expect("tenants").id;
    let catalog = world.catalog();
    let Some(data) = catalog.tenant(tenant) else { return Ok(false) };
    let risk = data.risks.choose(rng).copied();
    let other_risk = data.risks.choose(rng).copied();
    let mitigation = data.mitigations.choose(rng).copied();
    let other_mitigation = data.mitigations.choose(rng).copied();
    let subaction = data.subactions.choose(rng).copied();
    let asset = data.assets.choose(rng).copied();
    let link = data.links.choose(rng).copied();
    let deleted = data.deleted_risks.choose(rng).copied();
    let statement: Option<(&str, Vec<Param>)> = match rng.random_range(0..20) {
        0..=2 => risk.map(|risk| {
            let (impact, probability) = (rng.random_range(1..=5i16), rng.random_range(1..=5i16));
            (
                "UPDATE risks SET impact = $2, probability = $3, updated_at = now() WHERE id = $1",
                params![risk, impact, probability],
            )
        }),
        // Soft delete through SQL.
        3 => risk
            .filter(|_| data.risks.len() > 5)
            .map(|risk| ("UPDATE risks SET deleted_at = now() WHERE id = $1", params![risk])),
        4 => deleted.map(|risk| ("UPDATE risks SET deleted_at = NULL WHERE id = $1", params![risk])),
        // Hard delete: cascades to mitigations, sub-actions, links and history.
        5 => risk
            .filter(|_| data.risks.len() > 5 && rng.random_ratio(1, 2))
            .map(|risk| ("DELETE FROM risks WHERE id = $1", params![risk])),
        // Move a mitigation (and its sub-actions) to another risk.
        6 => mitigation.zip(other_risk).map(|((_, id), target)| {
            ("UPDATE mitigations SET risk_id = $2, updated_at = now() WHERE id = $1", params![id, target])
        }),
        // Move a sub-action to another mitigation.
        7 => subaction.zip(other_mitigation).map(|((_, _, id), (_, target))| {
            ("UPDATE mitigation_subactions SET mitigation_id = $2 WHERE id = $1", params![id, target])
        }),
        // Move a risk-asset link to another risk.
        8 => link.zip(other_risk).map(|((from, asset), target)| {
            (
                "UPDATE risk_assets SET risk_id = $3 WHERE tenant_id = $1 AND risk_id = $2 AND asset_id = $4
                 AND NOT EXISTS (SELECT 1 FROM risk_assets WHERE tenant_id = $1 AND risk_id = $3 AND asset_id = $4)",
                params![tenant, from, target, asset],
            )
        }),
        9 => asset.map(|asset| {
            let criticality = *["LOW", "MEDIUM", "HIGH", "CRITICAL"].choose(rng).unwrap();
            ("UPDATE assets SET criticality = $2 WHERE id = $1", params![asset, criticality])
        }),
        10 => risk.zip(asset).map(|(risk, asset)| {
            (
                "INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                params![tenant, risk, asset],
            )
        }),
        11 => link.map(|(risk, asset)| {
            (
                "DELETE FROM risk_assets WHERE tenant_id = $1 AND risk_id = $2 AND asset_id = $3",
                params![tenant, risk, asset],
            )
        }),
        12 => subaction.map(|(_, _, id)| {
            (
                "UPDATE mitigation_subactions SET completed = NOT completed, updated_at = now() WHERE id = $1",
                params![id],
            )
        }),
        13 => mitigation
            .filter(|_| rng.random_ratio(1, 2))
            .map(|(_, id)| ("DELETE FROM mitigations WHERE id = $1", params![id])),
        14 => risk.map(|risk| {
            (
                "INSERT INTO mitigations (tenant_id, risk_id, title) VALUES ($1, $2, 'SQL mitigation')",
                params![tenant, risk],
            )
        }),
        15 => risk.map(|risk| {
            (
                "INSERT INTO risk_history (tenant_id, risk_id, score, impact, probability, status, change_type)
                 SELECT tenant_id, id, score, impact, probability, status, 'UPDATED' FROM risks WHERE id = $1",
                params![risk],
            )
        }),
        16 => Some((
            "DELETE FROM risk_history WHERE id = (SELECT min(id) FROM risk_history WHERE tenant_id = $1)",
            params![tenant],
        )),
        17 => Some(("UPDATE tenants SET name = 'Tenant ' || (random() * 1000)::int WHERE id = $1", params![tenant])),
        // A multi-row statement: many events in one transaction.
        18 => Some((
            "UPDATE risks SET probability = 1 + (probability % 5) WHERE tenant_id = $1 AND deleted_at IS NULL
             AND id IN (SELECT id FROM risks WHERE tenant_id = $1 ORDER BY random() LIMIT 10)",
            params![tenant],
        )),
        _ => {
            // TRUNCATE (rare): every tenant that had rows gets `all`.
            if rng.random_ratio(1, 8) {
                let table = *["risk_history", "mitigation_subactions", "risk_assets"].choose(rng).unwrap();
                client.batch_execute(&format!("SET lock_timeout = '2s'; TRUNCATE {table}")).await?;
                return Ok(true);
            }
            None
        }
    };
    let Some((sql, params)) = statement else { return Ok(false) };
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|param| param.as_ref() as _).collect();
    Ok(client.execute(sql, &params).await? > 0)
}

async fn sql_writer(world: Arc<World>, mut rng: StdRng) {
    let mut client: Option<Client> = None;
    while !world.stopping() {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = world.sql().await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let guard = world.gate.read().await;
        let result = sql_write(client.as_ref().expect("connected"), &world, &mut rng).await;
        drop(guard);
        match result {
            Ok(true) => _ = world.stats.sql_writes.fetch_add(1, Ordering::Relaxed),
            Ok(false) => {}
            // Constraint races (a row deleted meanwhile) and Postgres restarts: expected.
            Err(_) => _ = world.stats.sql_write_failures.fetch_add(1, Ordering::Relaxed),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

async fn refresher(world: Arc<World>) {
    while !world.stopping() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = world.refresh_catalog().await;
    }
}
