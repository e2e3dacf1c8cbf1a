//! The data set every phase reads (the live risks of the tenants in the tokens file, hot ones
//! first), the requests a dashboard makes, and the checks the run reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use openrisk_load_tests::bench::http::{Conn, Req, RunResult};
use openrisk_load_tests::bench::prom;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::args::Args;

#[derive(Debug, Clone)]
pub struct RiskRef {
    pub tenant: Uuid,
    pub id: Uuid,
    pub auth: Arc<str>,
}

/// The route of a risk's detail, as the API labels its metrics.
pub const DETAIL_ROUTE: &str = "/api/v1/risks/{id}";

/// The GET of a risk's detail.
pub fn detail(risk: &RiskRef) -> Req {
    Req::get(DETAIL_ROUTE.replace("{id}", &risk.id.to_string()), Some(Arc::clone(&risk.auth)))
}

/// The share of a cached target's answers that must be hits. Its keys were read before it runs
/// and nothing writes to them meanwhile, so all are (100 % in the smoke run); 1 % leaves room for
/// the odd eviction or expiry, and fails a cache that stopped storing or serving a route.
const MIN_HIT_RATIO: f64 = 0.99;

/// List queries a dashboard makes, per tenant.
pub const LIST_QUERIES: [&str; 6] = [
    "/api/v1/risks?sort_by=score&sort_dir=desc&page=1&limit=20",
    "/api/v1/risks?sort_by=score&sort_dir=desc&page=2&limit=20",
    "/api/v1/risks?status=ACTIVE&sort_by=updated_at&page=1&limit=20",
    "/api/v1/risks?severity=HIGH&sort_by=score&page=1&limit=50",
    "/api/v1/risks?page=1&limit=20",
    "/api/v1/risks?status=DRAFT&page=1&limit=20",
];
/// Stats queries a dashboard makes, per tenant.
pub const STATS_QUERIES: [&str; 3] = ["/api/v1/stats", "/api/v1/stats/risk-matrix", "/api/v1/stats/trends?days=30"];

/// The outcome of one correctness check.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Every check of the run, printed as it is made.
#[derive(Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        println!(
            "{} {name}{}",
            if ok { "PASS" } else { "FAIL" },
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        );
        self.0.push(Check { name: name.to_owned(), ok, detail });
    }

    pub fn run(&mut self, result: &RunResult) {
        let tally = &result.tally;
        self.check(
            &format!("{} ({}) answered every request", result.name, result.mode),
            tally.ok > 0 && tally.errors == 0 && tally.non_2xx == 0,
            format!("ok {} non-2xx {} errors {}", tally.ok, tally.non_2xx, tally.errors),
        );
    }

    /// [`Checks::run`], and that at least [`MIN_HIT_RATIO`] of the answers were cache hits (by
    /// their `Cache-Status`), for a target whose keys are all cached.
    pub fn run_cached(&mut self, result: &RunResult) {
        self.run(result);
        let (ok, cache) = (result.tally.ok, result.tally.cache);
        self.check(
            &format!("{} ({}) was served from the cache", result.name, result.mode),
            ok > 0 && cache.hit as f64 >= MIN_HIT_RATIO * ok as f64,
            format!(
                "{} hits of {ok} answers (at least {:.0} %); {} misses, {} bypasses, {} without a known Cache-Status",
                cache.hit,
                MIN_HIT_RATIO * 100.0,
                cache.miss,
                cache.bypass,
                cache.other
            ),
        );
    }
}

/// The risks, tenants and list and stats requests of the run.
pub struct DataSet {
    pub pg: tokio_postgres::Client,
    pub tenants: Vec<(Uuid, Arc<str>)>,
    /// Every live risk, in the popularity order of the Zipf mix.
    pub risks: Vec<RiskRef>,
    /// The most popular risks, read by the throughput and fixed-rate phases.
    pub hot: Vec<RiskRef>,
    pub lists: Vec<Req>,
    pub stats: Vec<Req>,
    /// Its size, for `results.json`.
    pub summary: Value,
}

impl DataSet {
    /// Every live risk of every tenant the tokens file holds a token for.
    pub async fn load(args: &Args, rng: &mut SmallRng) -> anyhow::Result<Self> {
        let tokens = read_tokens(&args.tokens)?;
        let pg = openrisk_shared::db::connect(&args.database_url, "openrisk-bench", &Default::default()).await?;
        let mut risks = live_risks(&pg, &tokens).await?;
        if risks.is_empty() {
            bail!("no risks of the tenants in {}", args.tokens.display());
        }
        // The popularity order of the Zipf mix: a fixed shuffle, so hot risks spread over tenants.
        risks.shuffle(rng);
        let tenants: Vec<(Uuid, Arc<str>)> = tokens.iter().map(|(tenant, auth)| (*tenant, Arc::clone(auth))).collect();
        let hot: Vec<RiskRef> = risks.iter().take(args.hot.max(1)).cloned().collect();
        let mut lists: Vec<Req> = tenants
            .iter()
            .flat_map(|(_, auth)| LIST_QUERIES.iter().map(move |path| Req::get(*path, Some(Arc::clone(auth)))))
            .collect();
        lists.shuffle(rng);
        let stats: Vec<Req> = tenants
            .iter()
            .flat_map(|(_, auth)| STATS_QUERIES.iter().map(move |path| Req::get(*path, Some(Arc::clone(auth)))))
            .collect();
        println!(
            "data set: {} risks of {} tenants; {} hot, {} list queries",
            risks.len(),
            tenants.len(),
            hot.len(),
            lists.len()
        );
        let summary = json!({"tenants": tenants.len(), "risks": risks.len(), "hot_risks": hot.len(), "list_queries": lists.len(), "zipf_s": args.zipf_s});
        Ok(Self { pg, tenants, risks, hot, lists, stats, summary })
    }
}

/// Every live risk of every tenant in `tokens`, in id order, with its tenant's token.
pub async fn live_risks(pg: &tokio_postgres::Client, tokens: &HashMap<Uuid, Arc<str>>) -> anyhow::Result<Vec<RiskRef>> {
    let rows = pg.query("SELECT tenant_id, id FROM risks WHERE deleted_at IS NULL ORDER BY tenant_id, id", &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let tenant: Uuid = row.get(0);
            tokens.get(&tenant).map(|auth| RiskRef { tenant, id: row.get(1), auth: Arc::clone(auth) })
        })
        .collect())
}

/// The `<tenant id> <token>` lines of `path`, each token as an `Authorization` value.
pub fn read_tokens(path: &PathBuf) -> anyhow::Result<HashMap<Uuid, Arc<str>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (tenant, token) = line.trim().split_once(char::is_whitespace).context("expected `<tenant> <token>`")?;
            Ok((tenant.parse()?, Arc::from(format!("Bearer {}", token.trim()))))
        })
        .collect()
}

/// Sends every request once over `connections` connections; returns how many were not 200.
pub async fn touch_all(addr: SocketAddr, reqs: &[Req], connections: usize) -> anyhow::Result<usize> {
    let chunk = reqs.len().div_ceil(connections.max(1)).max(1);
    let tasks: Vec<_> = reqs
        .chunks(chunk)
        .map(|part| {
            let part = part.to_vec();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                let mut failed = 0;
                for req in &part {
                    if conn.send_retrying(req).await.map(|a| a.status).unwrap_or(0) != 200 {
                        failed += 1;
                    }
                }
                anyhow::Ok(failed)
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await??;
    }
    Ok(failed)
}

/// The samples of a `/metrics` endpoint.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<prom::PromSample>> {
    let answer = Conn::open(addr).await?.send(&Req::get("/metrics", None)).await?;
    if answer.status != 200 {
        bail!("GET {addr}/metrics answered {}", answer.status);
    }
    Ok(prom::parse(&String::from_utf8_lossy(&answer.body)))
}
