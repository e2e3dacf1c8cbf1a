//! Warm-up and probes: every hot risk, list and stats query read once through the cached API,
//! checks that the APIs and the ceiling answer what they should, and the workloads the
//! throughput phases run.

use std::sync::Arc;

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
/// the same behind the real protocol lookup, and a list page's body.
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
    let list_hit = probe.send(&data.lists[0]).await?;
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
        format!(
            "{} bytes, detail {} bytes, list page {} bytes",
            ceiling_answer.body.len(),
            hit.body.len(),
            list_hit.body.len()
        ),
    );
    let body_bytes = json!({"detail": hit.body.len(), "list": list_hit.body.len()});
    // And a real list page, so the cached list has a ceiling with its own body size.
    let ceiling_list_key = format!("{}:list", args.ceiling_key);
    redis::cmd("SET").arg(&ceiling_list_key).arg(list_hit.body.as_ref()).exec_async(redis).await?;
    let ceiling_list_req = Req::get("/ceiling/list", None);
    let ceiling_list_answer = Conn::open(args.ceiling).await?.send(&ceiling_list_req).await?;
    checks.check(
        "the ceiling serves a list page's body",
        ceiling_list_answer.status == 200 && ceiling_list_answer.body == list_hit.body,
        format!("{} bytes", ceiling_list_answer.body.len()),
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
        list: Workload::uniform("ceiling (list body)", &[ceiling_list_req]),
    };
    Ok(Workloads {
        detail: BothApis::new("GET /risks/{id}", &hot_details),
        list: BothApis::new("GET /risks?…", &data.lists),
        hot_details,
        ceiling,
        body_bytes,
    })
}
