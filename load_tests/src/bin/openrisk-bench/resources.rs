//! What the processes under test use while a phase runs: CPU and RSS from `/proc`, and their
//! connections to Postgres.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openrisk_load_tests::bench::procfs::{self, ProcSample};
use serde_json::{Value, json};

use crate::args::Args;

/// Samples `/proc` of the three processes and `pg_stat_activity` until stopped.
pub struct ResourceSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Value, Value)>,
}

impl ResourceSampler {
    /// Starts sampling every 250 ms.
    pub fn start(args: &Args) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut pids = vec![
            ("api (cached)", args.api_pid),
            ("api (uncached)", args.uncached_pid),
            ("invalidator", args.invalidator_pid),
        ];
        if args.cached_alt_pid != 0 {
            pids.push(("api (alternative, idle here)", args.cached_alt_pid));
        }
        let url = args.database_url.clone();
        let pg_port =
            url.parse::<tokio_postgres::Config>().ok().and_then(|c| c.get_ports().first().copied()).unwrap_or(5432);
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let pg = openrisk_shared::db::connect(&url, "openrisk-bench-sampler", &Default::default()).await.ok();
            let mut samples: Vec<Vec<ProcSample>> = vec![Vec::new(); pids.len()];
            // Established TCP connections of each process to the Postgres port (from /proc/net/tcp).
            let mut pg_conns_max: Vec<usize> = vec![0; pids.len()];
            let (mut max_total, mut at_max, mut max_by_app) = (0i64, BTreeMap::new(), BTreeMap::<String, i64>::new());
            let query = "SELECT coalesce(nullif(application_name, ''), '(unnamed)'), count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid() \
                         AND application_name NOT LIKE 'openrisk-bench%' GROUP BY 1";
            while !flag.load(Ordering::Relaxed) {
                for (index, (_, pid)) in pids.iter().enumerate() {
                    if let Some(sample) = procfs::sample(*pid) {
                        samples[index].push(sample);
                    }
                    if let Some(count) = procfs::tcp_connections_to(*pid, pg_port) {
                        pg_conns_max[index] = pg_conns_max[index].max(count);
                    }
                }
                if let Some(pg) = &pg
                    && let Ok(rows) = pg.query(query, &[]).await
                {
                    let now: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
                    let total: i64 = now.values().sum();
                    for (app, count) in &now {
                        let entry = max_by_app.entry(app.clone()).or_default();
                        *entry = (*entry).max(*count);
                    }
                    if total > max_total {
                        (max_total, at_max) = (total, now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let resources: serde_json::Map<String, Value> = pids
                .iter()
                .zip(&samples)
                .map(|((name, _), samples)| {
                    let usage = procfs::usage(samples).unwrap_or_default();
                    ((*name).to_owned(), json!({"cpu_percent_of_one_core": usage.cpu_percent, "rss_max_mib": usage.rss_max_mib, "rss_last_mib": usage.rss_last_mib}))
                })
                .collect();
            (
                Value::Object(resources),
                json!({
                    "max_total": max_total,
                    "at_max": at_max,
                    "max_by_application": max_by_app,
                    "max_by_process": pids.iter().zip(&pg_conns_max).map(|((name, _), n)| ((*name).to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                }),
            )
        });
        Self { stop, task }
    }

    /// Stops and returns per-process CPU and RSS, and the Postgres connections seen.
    pub async fn stop(self) -> (Value, Value) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or((Value::Null, Value::Null))
    }
}
