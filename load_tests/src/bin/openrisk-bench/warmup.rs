//! Warm-up and probes: every hot risk, list and stats query read once through the cached API,
//! checks that the APIs and the ceiling answer what they should, and the workloads the
//! throughput phases run.

use std::sync::Arc;

use bytes::Bytes;
use openrisk_load_tests::bench::http::{Conn, Req, Workload};
use openrisk_shared::CacheStatus;
use openrisk_shared::redis_connection::RedisConnection;
use serde_json::{Value, json};

use crate::args::Args;
use crate::dataset::{Checks, DataSet, detail, touch_all};

/// What the throughput and fixed-rate phases measure: the ceiling's three variants, and the
/// cached and uncached APIs on the hot risks' details and on the dashboard's lists.
pub struct Workloads {
    pub hot_details: Vec<Req>,
    pub ceiling: Ceiling,
    pub detail: BothApis,
    pub list: BothApis,
    /// The detail and list bodies' sizes, for `results.json`.
    pub body_bytes: Value,
}

/// The ceiling (the least a cached GET can cost): a detail's body, one such body per hot risk,
/// the same behind the real protocol lookup, and each list query's page.
pub struct Ceiling {
    pub detail: Arc<Workload>,
    pub hot_set: Arc<Workload>,
    pub lookup: Arc<Workload>,
    pub list: Arc<Workload>,
}

/// The same requests through the cached API and through the uncached one.
pub struct BothApis {
    pub cached: Arc<Workload>,
    pub uncached: Arc<Workload>,
}

impl BothApis {
    /// Workloads named "cached `what`" and "uncached `what`".
    fn new(what: &str, reqs: &[Req]) -> Self {
        Self {
            cached: Workload::uniform(format!("cached {what}"), reqs),
            uncached: Workload::uniform(format!("uncached {what}"), reqs),
        }
    }
}

/// Warms the cache, probes every server and builds the workloads (the ceiling's bodies are
/// written to Redis here).
pub async fn warm_up(
    args: &Args,
    data: &DataSet,
    redis: &mut RedisConnection,
    checks: &mut Checks,
) -> anyhow::Result<Workloads> {
    let hot_details: Vec<Req> = data.hot.iter().map(detail).collect();
    let warm: Vec<Req> = hot_details.iter().chain(&data.lists).chain(&data.stats).cloned().collect();
    let failed = touch_all(args.cached, &warm, 16).await?;
    checks.check(
        "warm-up answered 200 for every hot key, list and stats query",
        failed == 0,
        format!("{failed} of {} failed", warm.len()),
    );
    let _ = touch_all(args.uncached, &warm[..warm.len().min(200)], 8).await?;
    let mut probe = Conn::open(args.cached).await?;
    let hit = probe.send(&hot_details[0]).await?;
    checks.check(
        "a warmed risk detail is a cache hit",
        hit.status == 200 && hit.cache_status == Some(CacheStatus::Hit),
        format!("Cache-Status {:?}", hit.cache_status),
    );
    let list_pages = pages_of(&mut probe, &data.lists).await?;
    let bypass = Conn::open(args.uncached).await?.send(&hot_details[0]).await?;
    checks.check(
        "the uncached API bypasses the cache and answers the same body",
        bypass.status == 200 && bypass.cache_status.is_some_and(CacheStatus::is_bypass) && bypass.body == hit.body,
        format!("Cache-Status {:?}, {} vs {} bytes", bypass.cache_status, bypass.body.len(), hit.body.len()),
    );
    // The ceiling serves a real detail body.
    redis::cmd("SET").arg(&args.ceiling_key).arg(hit.body.as_ref()).exec_async(redis).await?;
    let ceiling_req = Req::get("/ceiling", None);
    let ceiling_answer = Conn::open(args.ceiling).await?.send(&ceiling_req).await?;
    checks.check(
        "the ceiling serves a body of a real risk detail's size",
        ceiling_answer.status == 200 && ceiling_answer.body.len() == hit.body.len(),
        format!("{} bytes, detail {} bytes", ceiling_answer.body.len(), hit.body.len()),
    );
    let list_sizes: Vec<usize> = list_pages.iter().map(|page| page.len()).collect();
    let body_bytes = json!({
        "detail": hit.body.len(),
        "list_mean": list_sizes.iter().sum::<usize>() / list_sizes.len().max(1),
        "list_min": list_sizes.iter().min(),
        "list_max": list_sizes.iter().max(),
    });
    // And every list query's page under a key of its own, so the cached lists have a ceiling
    // with their own bodies in the same mix (the queries' pages differ: 20 or 50 risks, filters).
    let mut pages = redis::pipe();
    for (n, page) in list_pages.iter().enumerate() {
        pages.set_ex(format!("{}:list:{n}", args.ceiling_key), page.as_ref(), 86_400).ignore();
    }
    pages.exec_async(redis).await?;
    let ceiling_lists: Vec<Req> = (0..list_pages.len()).map(|n| Req::get(format!("/ceiling/list/{n}"), None)).collect();
    let served = pages_of(&mut Conn::open(args.ceiling).await?, &ceiling_lists).await?;
    let differing = served.iter().zip(&list_pages).filter(|(served, page)| served != page).count();
    checks.check(
        "the ceiling serves every list query's page",
        differing == 0,
        format!("{differing} of {} differ; {list_sizes:?} bytes", list_pages.len()),
    );
    // One detail's body per hot risk, with a TTL as the API's entries have: the ceiling's `GET`
    // then reads as many keys as the cached API's lookups do.
    let hot_set: Vec<Req> =
        data.hot.iter().map(|r| Req::get(format!("/ceiling/set/{}/{}", r.tenant, r.id), None)).collect();
    let mut bodies = redis::pipe();
    for risk in &data.hot {
        let key = format!("{}:set:{}:{}", args.ceiling_key, risk.tenant, risk.id);
        bodies.set_ex(key, hit.body.as_ref(), 86_400).ignore();
    }
    bodies.exec_async(redis).await?;
    let failed = touch_all(args.ceiling, &hot_set, 8).await?;
    checks.check("the ceiling serves a detail's body for every hot risk", failed == 0, format!("{failed} failed"));
    // The ceiling plus the real protocol lookup (the version-checking MGET) on the same hot risks.
    let lookups: Vec<Req> = data.hot.iter().map(|r| Req::get(format!("/lookup/{}/{}", r.tenant, r.id), None)).collect();
    let lookup_answer = Conn::open(args.ceiling).await?.send(&lookups[0]).await?;
    checks.check(
        "the ceiling's protocol lookup finds the API's cached entry",
        lookup_answer.status == 200 && lookup_answer.body == hit.body,
        format!("status {}, {} bytes", lookup_answer.status, lookup_answer.body.len()),
    );
    let ceiling = Ceiling {
        detail: Workload::uniform("ceiling", &[ceiling_req]),
        hot_set: Workload::uniform("ceiling (hot set)", &hot_set),
        lookup: Workload::uniform("ceiling + protocol lookup", &lookups),
        list: Workload::uniform("ceiling (list bodies)", &ceiling_lists),
    };
    Ok(Workloads {
        detail: BothApis::new("GET /risks/{id}", &hot_details),
        list: BothApis::new("GET /risks?…", &data.lists),
        hot_details,
        ceiling,
        body_bytes,
    })
}

/// The bodies `conn` answers to `reqs`, in order; an answer other than 200 is an error.
async fn pages_of(conn: &mut Conn, reqs: &[Req]) -> anyhow::Result<Vec<Bytes>> {
    let mut pages = Vec::with_capacity(reqs.len());
    for req in reqs {
        let answer = conn.send(req).await?;
        anyhow::ensure!(answer.status == 200, "{} answered {}", req.path, answer.status);
        pages.push(answer.body);
    }
    Ok(pages)
}
