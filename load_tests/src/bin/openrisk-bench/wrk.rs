//! Saturation measured by wrk, an independent generator, when it is installed.

use openrisk_load_tests::bench::http::Req;
use serde_json::{Value, json};

use crate::args::Args;
use crate::dataset::Checks;
use crate::warmup::Workloads;

/// Saturation of the ceiling (one key, the hot set and the list pages), the cached and uncached
/// detail and the cached list measured by wrk (an independent generator), with Lua scripts
/// drawing paths uniformly from each workload's requests. Checks that every request of each run
/// was answered: a rate counts error answers (a 401 is fast) and failed sockets alike.
pub async fn run(args: &Args, w: &Workloads, checks: &mut Checks) -> Value {
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
        let WrkSummary { rps, non_2xx, socket_errors } = summary(&text);
        println!(
            "  wrk {name:<28} {:>9.0} req/s, non-2xx {non_2xx}, socket errors {socket_errors}",
            rps.unwrap_or(0.0)
        );
        checks.check(
            &format!("wrk {name} answered every request"),
            rps.is_some() && non_2xx == 0 && socket_errors == 0,
            format!("non-2xx {non_2xx} socket errors {socket_errors}"),
        );
        out.insert(name.into(), json!({"rps": rps, "non_2xx": non_2xx, "socket_errors": socket_errors}));
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

/// What wrk's report says of a run.
#[derive(Debug, PartialEq)]
struct WrkSummary {
    /// `None` when wrk did not run to its report.
    rps: Option<f64>,
    non_2xx: u64,
    /// Connect, read and write errors and timeouts.
    socket_errors: u64,
}

/// Reads wrk's report; its `Non-2xx or 3xx responses` and `Socket errors` lines appear only when
/// there were some.
fn summary(text: &str) -> WrkSummary {
    let after = |prefix: &str| text.lines().find_map(|line| line.trim().strip_prefix(prefix).map(str::to_owned));
    let rps = after("Requests/sec:").and_then(|v| v.trim().parse().ok());
    let non_2xx = after("Non-2xx or 3xx responses:").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    // `connect 0, read 3, write 0, timeout 12`
    let socket_errors = after("Socket errors:")
        .map_or(0, |v| v.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum());
    WrkSummary { rps, non_2xx, socket_errors }
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

#[cfg(test)]
mod tests {
    use super::{WrkSummary, summary};

    #[test]
    fn error_answers_and_socket_errors_are_read_from_the_report() {
        let failing = "Running 1s test @ http://127.0.0.1:1\n  Socket errors: connect 0, read 3, write 0, timeout 12\n  \
                       Non-2xx or 3xx responses: 4521\nRequests/sec:  45210.50\nTransfer/sec:      5.12MB\n";
        assert_eq!(summary(failing), WrkSummary { rps: Some(45210.5), non_2xx: 4521, socket_errors: 15 });
        let clean = "  40000 requests in 1.00s, 60.00MB read\nRequests/sec:  40000.00\n";
        assert_eq!(summary(clean), WrkSummary { rps: Some(40000.0), non_2xx: 0, socket_errors: 0 });
        assert_eq!(summary("").rps, None);
    }
}
