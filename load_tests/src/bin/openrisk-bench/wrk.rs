//! Saturation measured by wrk, an independent generator, when it is installed.

use openrisk_load_tests::bench::http::Req;
use serde_json::{Value, json};

use crate::args::Args;
use crate::warmup::Workloads;

/// Saturation of the ceiling (one key, the hot set and the list pages), the cached and uncached
/// detail and the cached list measured by wrk (an independent generator), with Lua scripts
/// drawing paths uniformly from each workload's requests.
pub async fn run(args: &Args, w: &Workloads) -> Value {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("  wrk not installed: skipped");
        return json!({"skipped": "wrk not installed"});
    }
    let targets = [
        ("ceiling", args.ceiling, &w.ceiling.detail),
        ("ceiling (hot set)", args.ceiling, &w.ceiling.hot_set),
        ("cached GET /risks/{id}", args.cached, &w.detail.cached),
        ("uncached GET /risks/{id}", args.uncached, &w.detail.uncached),
        ("ceiling (list bodies)", args.ceiling, &w.ceiling.list),
        ("cached GET /risks?…", args.cached, &w.list.cached),
    ];
    let mut out = serde_json::Map::new();
    let duration = format!("{}s", args.phase_secs.ceil() as u64);
    let connections = args.connections.to_string();
    for (index, (name, addr, workload)) in targets.into_iter().enumerate() {
        let script = args.out.join(format!("wrk-paths-{index}.lua"));
        if write_paths_script(&script, &workload.reqs).is_err() {
            return json!({"skipped": "could not write the Lua scripts"});
        }
        let output = tokio::process::Command::new("wrk")
            .args(["-t2", "-c", &connections, "-d", &duration, "--latency", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}"))
            .output()
            .await;
        let text = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok());
        let non_2xx = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        println!("  wrk {name:<28} {:>9.0} req/s, non-2xx {non_2xx}", rps.unwrap_or(0.0));
        out.insert(name.into(), json!({"rps": rps, "non_2xx": non_2xx}));
    }
    let ratio = |a: &str, b: &str| Some(out.get(a)?.get("rps")?.as_f64()? / out.get(b)?.get("rps")?.as_f64()?);
    let ratios = json!({
        "cached_detail_over_ceiling": ratio("cached GET /risks/{id}", "ceiling"),
        "cached_detail_over_ceiling_hot_set": ratio("cached GET /risks/{id}", "ceiling (hot set)"),
        "cached_detail_over_uncached": ratio("cached GET /risks/{id}", "uncached GET /risks/{id}"),
        "cached_list_over_ceiling_list": ratio("cached GET /risks?…", "ceiling (list bodies)"),
    });
    out.insert("ratios".into(), ratios);
    Value::Object(out)
}

/// A wrk script that sends `reqs`' paths (with their bearer tokens), drawn uniformly.
fn write_paths_script(file: &std::path::Path, reqs: &[Req]) -> std::io::Result<()> {
    let mut lua = String::from("local paths = {\n");
    for req in reqs {
        lua.push_str(&format!("  {{\"{}\", \"{}\"}},\n", req.path, req.auth.as_deref().unwrap_or("")));
    }
    lua.push_str(
        "}\nmath.randomseed(os.time())\nrequest = function()\n  local p = paths[math.random(#paths)]\n  \
         return wrk.format(\"GET\", p[1], {[\"Authorization\"] = p[2]})\nend\n",
    );
    std::fs::write(file, lua)
}
