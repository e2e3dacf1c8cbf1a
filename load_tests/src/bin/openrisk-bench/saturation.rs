//! Saturation (closed loop), interleaved rounds: the ceiling, the cached and uncached risk
//! detail and risk list, with what each request cost in CPU and inside Redis, and their
//! throughput ratios.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openrisk_load_tests::bench::http::{RunResult, Workload, closed_loop, closed_loop_across};
use openrisk_load_tests::bench::{procfs, redis_cost};
use openrisk_shared::redis_connection::RedisConnection;
use serde_json::{Value, json};

use crate::args::Args;
use crate::dataset::{Checks, touch_all};
use crate::warmup::Workloads;

/// Runs every target `args.rounds` times, interleaved; the section `saturation` of `results.json`.
pub async fn run(
    args: &Args,
    w: &Workloads,
    redis: &mut RedisConnection,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let phase = Duration::from_secs_f64(args.phase_secs);
    let alt_name = format!("cached GET /risks/{{id}} ({})", args.cached_alt_label);
    let cached_alt = Workload::uniform(alt_name.clone(), &w.hot_details);
    let two_apis_name = "cached GET /risks/{id}, two API processes";
    let cached_two = Workload::uniform(two_apis_name, &w.hot_details);
    // The servers, the workload, and whether the workload's keys are all cached there (so every
    // answer must be a hit).
    let mut saturation_targets = vec![
        (vec![args.ceiling], &w.ceiling.detail, false),
        (vec![args.ceiling], &w.ceiling.hot_set, false),
        (vec![args.ceiling], &w.ceiling.lookup, false),
        (vec![args.cached], &w.detail.cached, true),
        (vec![args.uncached], &w.detail.uncached, false),
        (vec![args.ceiling], &w.ceiling.list, false),
        (vec![args.cached], &w.list.cached, true),
        (vec![args.uncached], &w.list.uncached, false),
    ];
    if let Some(addr) = args.cached_second {
        let failed = touch_all(addr, &w.hot_details, 8).await?;
        checks.check("the second API process answers every hot risk", failed == 0, format!("{failed} failed"));
        saturation_targets.insert(5, (vec![args.cached, addr], &cached_two, true));
    }
    if let Some(addr) = args.cached_alt {
        let failed = touch_all(addr, &w.hot_details, 8).await?;
        checks.check(&format!("{alt_name} answers every hot risk"), failed == 0, format!("{failed} failed"));
        saturation_targets.insert(5, (vec![addr], &cached_alt, true));
    }
    println!("== saturation: {} connections, {} round(s) of {:?} per target", args.connections, args.rounds, phase);
    let mut saturation: BTreeMap<String, Vec<RunResult>> = BTreeMap::new();
    /// Where a CPU figure comes from: a process, every `postgres` process, or nothing.
    #[derive(Clone, Copy)]
    enum CpuSource {
        Pid(u32),
        Postgres,
        Skip,
    }
    let pid = |pid: u32| if pid == 0 { CpuSource::Skip } else { CpuSource::Pid(pid) };
    const REDIS: &str = "redis";
    let cpu_processes = [
        ("api (cached)", pid(args.api_pid)),
        ("api (uncached)", pid(args.uncached_pid)),
        ("api (alternative)", pid(args.cached_alt_pid)),
        ("api (cached, second process)", pid(args.cached_second_pid)),
        ("ceiling", pid(args.ceiling_pid)),
        (REDIS, pid(args.redis_pid)),
        ("generator (openrisk-bench)", pid(std::process::id())),
        ("postgres (all backends, shared server)", CpuSource::Postgres),
    ];
    let cpu_now = || -> Vec<u64> {
        cpu_processes
            .iter()
            .map(|(_, source)| match source {
                CpuSource::Pid(pid) => procfs::cpu_ticks(*pid),
                CpuSource::Postgres => procfs::cpu_ticks_of_command("postgres"),
                CpuSource::Skip => 0,
            })
            .collect()
    };
    // Per target: CPU ticks per process, requests answered, machine busy and total ticks.
    let mut cpu: BTreeMap<String, (Vec<u64>, u64, u64, u64)> = BTreeMap::new();
    // Per target: what its requests cost inside Redis, summed over every command they sent.
    let mut redis_cost: BTreeMap<String, redis_cost::CommandStats> = BTreeMap::new();
    if args.perf {
        profile(args, &w.detail.cached, phase).await?;
    }
    for round in 0..args.rounds {
        for (addrs, workload, cached) in &saturation_targets {
            redis_cost::reset(redis).await?;
            let (cpu_before, machine_before) = (cpu_now(), procfs::machine_ticks());
            let result = closed_loop_across(addrs, Arc::clone(workload), args.connections, phase).await?;
            let (cpu_after, machine_after) = (cpu_now(), procfs::machine_ticks());
            redis_cost.entry(result.name.clone()).or_default().add(&redis_cost::read(redis).await?);
            let entry = cpu.entry(result.name.clone()).or_insert_with(|| (vec![0; cpu_processes.len()], 0, 0, 0));
            for (index, (after, before)) in cpu_after.iter().zip(&cpu_before).enumerate() {
                entry.0[index] += after.saturating_sub(*before);
            }
            entry.1 += result.tally.ok;
            entry.2 += machine_after.0.saturating_sub(machine_before.0);
            entry.3 += machine_after.1.saturating_sub(machine_before.1);
            println!(
                "  round {round} {:<28} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                result.name,
                result.throughput(),
                result.ms(50.0),
                result.ms(99.0)
            );
            if *cached {
                checks.run_cached(&result)
            } else {
                checks.run(&result)
            }
            saturation.entry(result.name.clone()).or_default().push(result);
        }
    }
    let rps = |name: &str| -> f64 {
        let runs = &saturation[name];
        runs.iter().map(RunResult::throughput).sum::<f64>() / runs.len() as f64
    };
    let ratios = json!({
        "cached_detail_over_ceiling": rps("cached GET /risks/{id}") / rps("ceiling"),
        "cached_detail_over_ceiling_hot_set": rps("cached GET /risks/{id}") / rps("ceiling (hot set)"),
        "ceiling_hot_set_over_ceiling": rps("ceiling (hot set)") / rps("ceiling"),
        "ceiling_lookup_over_ceiling": rps("ceiling + protocol lookup") / rps("ceiling"),
        "cached_detail_over_ceiling_lookup": rps("cached GET /risks/{id}") / rps("ceiling + protocol lookup"),
        "cached_detail_over_uncached": rps("cached GET /risks/{id}") / rps("uncached GET /risks/{id}"),
        "cached_list_over_ceiling": rps("cached GET /risks?…") / rps("ceiling"),
        "cached_list_over_ceiling_list": rps("cached GET /risks?…") / rps("ceiling (list bodies)"),
        "two_apis_over_one": saturation.contains_key(two_apis_name).then(|| rps(two_apis_name) / rps("cached GET /risks/{id}")),
        "cached_list_over_uncached": rps("cached GET /risks?…") / rps("uncached GET /risks?…"),
        "alternative_over_cached_detail": saturation.contains_key(&alt_name).then(|| rps(&alt_name) / rps("cached GET /risks/{id}")),
    });
    println!("  ratios: {ratios}");
    // What each target's requests cost Redis in command execution (commandstats times nothing
    // else: not reading requests off the sockets, parsing them or writing replies), and how many
    // requests a second that time alone would allow one core; what one Redis core really serves
    // is in the CPU section (`/proc`).
    let commandstats: serde_json::Map<String, Value> = redis_cost
        .iter()
        .map(|(name, stats)| {
            let answered = saturation[name].iter().map(|run| run.tally.ok).sum::<u64>();
            let mut cost = stats.to_json(answered);
            let per_request = stats.usec_per_request(answered);
            cost["requests_per_second_of_command_execution_only"] =
                json!((per_request > 0.0).then(|| 1e6 / per_request));
            println!("  redis µs per request, {name}: {per_request:.3} (commandstats: command execution only)");
            (name.clone(), cost)
        })
        .collect();
    let cpu_per_request: serde_json::Map<String, Value> = cpu
        .iter()
        .map(|(name, (ticks, ok, busy, total))| {
            let per_process: serde_json::Map<String, Value> = cpu_processes
                .iter()
                .zip(ticks)
                .filter(|(_, t)| **t > 0)
                .map(|((process, _), t)| {
                    ((*process).to_owned(), json!(*t as f64 * procfs::MICROS_PER_TICK / (*ok).max(1) as f64))
                })
                .collect();
            let machine_busy = if *total > 0 { *busy as f64 / *total as f64 * 100.0 } else { 0.0 };
            // What one Redis core could answer at the whole process's CPU per request, networking
            // included (Redis runs its commands on one thread).
            let per_redis_core = per_process.get(REDIS).and_then(Value::as_f64).map(|us| 1e6 / us);
            println!("  CPU µs per request, {name}: {per_process:?}; machine busy {machine_busy:.0} %");
            (
                name.clone(),
                json!({
                    "cpu_us_per_request": per_process,
                    "machine_busy_percent": machine_busy,
                    "requests_per_redis_core_second": per_redis_core,
                }),
            )
        })
        .collect();
    Ok(json!({
        "connections": args.connections,
        "runs": saturation.values().flatten().map(RunResult::summary).collect::<Vec<_>>(),
        "mean_rps": saturation.keys().map(|name| (name.clone(), json!(rps(name)))).collect::<serde_json::Map<_, _>>(),
        "ratios": ratios,
        "cpu": cpu_per_request,
        "redis_commandstats": commandstats,
    }))
}

/// `perf record` of the cached API (`perf-hit.data` in `--out`) during a saturation run of the
/// cached risk detail of its own, before the measured rounds: sampling slows the API, so that
/// run's throughput and CPU are not the API's and stay out of every mean and ratio. Without
/// `perf`, no profile.
async fn profile(args: &Args, cached_detail: &Arc<Workload>, phase: Duration) -> anyhow::Result<()> {
    let perf = tokio::process::Command::new("perf")
        .args(["record", "-F", "999", "-p", &args.api_pid.to_string(), "-o"])
        .arg(args.out.join("perf-hit.data"))
        .args(["--", "sleep", &format!("{}", args.phase_secs)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut perf) = perf else {
        println!("  perf did not start: no profile");
        return Ok(());
    };
    let result = closed_loop(args.cached, Arc::clone(cached_detail), args.connections, phase).await?;
    let _ = perf.wait().await;
    println!("  profiled (not measured) {:<28} {:>9.0} req/s under perf", result.name, result.throughput());
    Ok(())
}
