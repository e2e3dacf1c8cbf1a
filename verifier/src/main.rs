//! `openrisk-verifier`: proves that after every fault, once the outbox is drained, every cached
//! entry equals the database. It drives the real `openrisk-api` and `openrisk-invalidator`
//! binaries (from the same target directory as itself) against a private Postgres and Redis.
//!
//! ```text
//! openrisk-verifier --smoke                 # ≈1 minute, every fault once (CI)
//! openrisk-verifier [--seed N]              # a few minutes, every fault three times
//! openrisk-verifier --soak --duration 1h    # plus RSS / connection / lag sampling, growth fails
//! openrisk-verifier --smoke --redis cluster # on a Redis Cluster (3 masters, 3 replicas), its faults
//! openrisk-verifier --smoke --replica       # misses read from a streaming replica, its faults
//! ```
//! The fault schedule derives from `--seed`; the seed is printed so a failing run can be replayed.
//! The last line is `N passed, M failed` (checks). SIGINT or SIGTERM ends a run early, as a
//! failed one, with every server and process it started stopped.

mod check;
mod faults;
mod network;
mod poison;
mod probe;
mod procs;
mod promotion;
mod soak;
mod stop;
mod summary;
mod tally;
mod urls;
mod workload;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::faults::Fault;
pub use crate::tally::Tally;
use crate::world::{Topology, World};

#[derive(Debug, Clone, Parser)]
#[command(name = "openrisk-verifier", about = "Chaos and soak verifier of the OpenRisk cache")]
pub struct Config {
    /// Seed of the fault schedule and the workload (random when absent; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Short run for CI: small data, every fault once.
    #[arg(long, conflicts_with = "soak")]
    pub smoke: bool,
    /// Long run sampling RSS, Postgres connections and invalidation lag; fails on growth.
    #[arg(long)]
    pub soak: bool,
    /// Soak duration, e.g. 10m or 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Soak: seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Soak: seconds between faults.
    #[arg(long, default_value_t = 60)]
    pub fault_every: u64,
    /// Rounds of the whole fault list (default run).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seeded tenants.
    #[arg(long)]
    pub tenants: Option<u32>,
    /// Risks per seeded tenant.
    #[arg(long)]
    pub risks: Option<u32>,
    /// Which Redis the processes use: one node, or a Redis Cluster of 3 masters and 3 replicas
    /// (with the cluster's own faults).
    #[arg(long, value_enum, default_value = "node")]
    pub redis: Topology,
    /// How long the invalidators wait for a Redis replica to confirm a batch, e.g. 100ms
    /// (`invalidator.redis_replicas_ack_timeout_ms`; its default when absent). Replicas confirm
    /// on a cluster only.
    #[arg(long, value_parser = replica_wait)]
    pub replica_wait: Option<Duration>,
    /// Concurrent readers.
    #[arg(long, default_value_t = 6)]
    pub readers: usize,
    /// Give the cached API a streaming read replica of the private primary (`pg_basebackup -R`)
    /// for its misses, and inject the replica faults (replay paused with a Redis flush, replica
    /// restarted, replica promoted while the primary is stopped) instead of restarting Postgres.
    /// With a single Redis node only.
    #[arg(long, conflicts_with = "redis")]
    pub replica: bool,
    /// Put the private Postgres and Redis inside network namespaces of the verifier's own,
    /// behind veth links, and add the network faults (redis-blackhole,
    /// postgres-partition-one-invalidator, half-open-listen, slow-lossy-redis-link; a smoke run
    /// adds only the first). Needs root, iproute2 and nftables; a single Redis node only.
    #[arg(long, conflicts_with_all = ["redis", "replica"])]
    pub network: bool,
    /// Directory holding openrisk-api and openrisk-invalidator (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where process logs go (default: `target/verifier/<mode>-<seed>-<start time>`).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    #[arg(skip)]
    pub resolved_seed: u64,
}

/// `duration` as one word the command line reads back (`5400s`, not humantime's `1h 30m`).
fn one_word(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// `--replica-wait`: a duration of at least a millisecond, the setting's unit and least value.
fn replica_wait(text: &str) -> Result<Duration, String> {
    let wait = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if wait < Duration::from_millis(1) {
        return Err("the replica wait is at least 1ms".to_owned());
    }
    Ok(wait)
}

impl Config {
    pub fn seed(&self) -> u64 {
        self.resolved_seed
    }

    /// The command line that replays this run: the seed and every flag that shapes the fault
    /// schedule and the workload. (Tenant ids are random whatever the seed, so on a Redis Cluster
    /// a replay's tenants may sit on other masters.)
    fn replay_command(&self, seed: u64) -> String {
        let mut flags = vec![format!("--seed {seed}")];
        if self.smoke {
            flags.push("--smoke".into());
        } else if self.soak {
            let duration = one_word(self.duration);
            flags.push(format!("--soak --duration {duration} --fault-every {}", self.fault_every));
        } else {
            flags.push(format!("--rounds {}", self.rounds));
        }
        flags.extend(self.tenants.map(|tenants| format!("--tenants {tenants}")));
        flags.extend(self.risks.map(|risks| format!("--risks {risks}")));
        flags.push(format!("--readers {}", self.readers));
        if self.redis == Topology::Cluster {
            flags.push("--redis cluster".into());
        }
        flags.extend(self.replica_wait.map(|wait| format!("--replica-wait {}", one_word(wait))));
        flags.extend(self.replica.then(|| "--replica".to_owned()));
        flags.extend(self.network.then(|| "--network".to_owned()));
        format!("openrisk-verifier {}", flags.join(" "))
    }
}

async fn run_check(world: &World, tally: &mut Tally, label: &str, url_limit: Option<usize>) {
    let _gate = world.gate.write().await;
    let outcome = check::check(world, label, url_limit).await;
    println!(
        "  [{label}] drained in {}, {} entries in Redis ({} live, {} dead), {} URLs compared",
        outcome.drained_after.map_or("—".into(), |d| format!("{:.2}s", d.as_secs_f64())),
        outcome.entries,
        outcome.live,
        outcome.dead,
        outcome.urls
    );
    for (name, failures) in &outcome.checks {
        tally.record(name, failures);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut cfg = Config::parse();
    cfg.resolved_seed = cfg.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    // Returned, not `process::exit`: the runtime then waits for a fault still running off it (a
    // server restart when a stop signal came), whose end drops the last hold on the private
    // servers and so stops them.
    let code: u8 = match run(cfg).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            // A run that could not start ends like any other: the failure, then the tally line.
            let mut tally = Tally::default();
            tally.record("verifier started its run", &[format!("{error:#}")]);
            println!("{tally}");
            2
        }
    };
    std::process::ExitCode::from(code)
}

async fn run(mut cfg: Config) -> anyhow::Result<bool> {
    let seed = cfg.seed();
    let mode = match (cfg.smoke, cfg.soak, cfg.replica) {
        (true, _, false) => "smoke",
        (true, _, true) => "smoke-replica",
        (_, true, _) => "soak",
        (_, _, false) => "full",
        (_, _, true) => "full-replica",
    };
    let redis = match (cfg.redis, cfg.network) {
        (Topology::Cluster, _) => " --redis cluster",
        (Topology::Node, true) => " --network",
        (Topology::Node, false) => "",
    };
    println!("openrisk-verifier: mode {mode}{redis}, seed {seed} (replay: {})", cfg.replay_command(seed));
    let exe_dir = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
    if cfg.bin_dir.is_none() {
        cfg.bin_dir = Some(exe_dir.clone());
    }
    if cfg.log_dir.is_none() {
        let target = exe_dir.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        // The start time too, so a replay of the seed keeps the logs of the run it replays.
        let started = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        cfg.log_dir = Some(target.join("verifier").join(format!("{mode}-{seed}-{started}")));
    }
    let tenants = cfg.tenants.unwrap_or(if cfg.smoke { 3 } else { 5 });
    let risks = cfg.risks.unwrap_or(if cfg.smoke { 30 } else { 100 });
    let world_cfg = world::WorldConfig {
        seed,
        topology: cfg.redis,
        tenants,
        risks,
        bin_dir: cfg.bin_dir.clone().unwrap_or_default(),
        log_dir: cfg.log_dir.clone().unwrap_or_default(),
        replica: cfg.replica,
        network: cfg.network,
        smoke: cfg.smoke,
        replica_wait: cfg.replica_wait,
    };
    println!("  logs: {}", world_cfg.log_dir.display());
    let mut stop = stop::StopSignals::listen()?;
    let started = Instant::now();
    let world = World::start(world_cfg).await?;
    println!(
        "  started private {}, {}, api (cache on), api-ref (cache off), 2 invalidators; {tenants} tenants × {risks} risks in {:.1}s",
        if cfg.replica { "Postgres primary and streaming replica (api reads misses from it)" } else { "Postgres" },
        match cfg.redis {
            Topology::Node => "Redis (one node)",
            Topology::Cluster => "Redis Cluster (3 masters, 3 replicas)",
        },
        started.elapsed().as_secs_f64()
    );
    let mut tally = Tally::default();
    let mut tasks = workload::spawn_all(&world, cfg.readers);
    let soak_record = soak::Record::default();
    let result = tokio::select! {
        result = drive(&world, &cfg, &mut tally, &soak_record) => result,
        signal = stop.received() => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    world.stopping.store(true, Ordering::Relaxed);
    if cfg.soak
        && let Err(error) = soak_record.write(&world.log_dir)
    {
        tally.record("soak: samples written", &[format!("{error:#}")]);
    }
    let mut panicked = Vec::new();
    for task in tasks.drain(..) {
        if let Err(error) = task.await {
            panicked.push(format!("{error}"));
        }
    }
    // A workload task that died took its share of reads or writes out of every check after it.
    tally.record("every workload task ran to the end", &panicked);
    if let Err(error) = &result {
        tally.record("verifier ran to the end", &[format!("{error:#}")]);
    } else {
        world.set_phase("final");
        // A stop signal here ends the run as a failed one too, rather than wait for the check.
        let final_check = async {
            check::refill(&world).await;
            run_check(&world, &mut tally, "final (workload stopped)", None).await;
        };
        let stopped = tokio::select! {
            () = final_check => None,
            signal = stop.received() => Some(signal),
        };
        if let Some(signal) = stopped {
            tally.record("verifier ran to the end", &[format!("stopped by {signal} during the final check")]);
        }
    }
    summary::print(&world, &mut tally, started).await;
    for proc in &world.invalidators {
        let mut proc = proc.lock().await;
        let exits: Vec<String> = proc.exits_on_its_own().iter().map(|status| format!("exited: {status}")).collect();
        if !exits.is_empty() {
            tally.record(&format!("{} still running, never having exited on its own", proc.spec.name), &exits);
        }
    }
    world.shutdown().await;
    println!("{tally}");
    Ok(tally.all_passed())
}

async fn drive(world: &Arc<World>, cfg: &Config, tally: &mut Tally, soak_record: &soak::Record) -> anyhow::Result<()> {
    let seed = cfg.seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (before, after, url_limit) = if cfg.smoke { (1000, 1000, Some(400)) } else { (5000, 3000, Some(1500)) };
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.set_phase("baseline");
    run_check(world, tally, "baseline", url_limit).await;
    {
        let _gate = world.gate.write().await;
        let failures = check::canary(world).await;
        tally.record("self-test: the check reports a write that bypassed the triggers", &failures);
    }
    run_check(world, tally, "after the self-test repair", url_limit).await;

    if cfg.soak {
        return soak::run(world, cfg, tally, &mut rng, soak_record).await;
    }
    let rounds = if cfg.smoke { 1 } else { cfg.rounds };
    let mut schedule = Vec::new();
    for _ in 0..rounds {
        let mut round = faults::round(cfg.redis, cfg.replica, cfg.smoke, cfg.network);
        round.shuffle(&mut rng);
        schedule.extend(round);
    }
    println!("  schedule: {}", schedule.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "));
    for (index, fault) in schedule.iter().enumerate() {
        inject_and_check(world, tally, &mut rng, *fault, index, before, after, url_limit).await?;
    }
    poison_phase(world, tally, if cfg.smoke { 2000 } else { 5000 }).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn inject_and_check(
    world: &World,
    tally: &mut Tally,
    rng: &mut StdRng,
    fault: Fault,
    index: usize,
    before_ms: u64,
    after_ms: u64,
    url_limit: Option<usize>,
) -> anyhow::Result<()> {
    world.set_phase("steady");
    tokio::time::sleep(Duration::from_millis(before_ms)).await;
    world.set_phase(fault.name());
    let at = Instant::now();
    let writes_before = world.stats.writes();
    let done = faults::inject(world, fault, rng).await;
    let label = format!("#{} {}", index + 1, fault.name());
    match done {
        Ok(what) => println!("  [{label}] {what} ({:.1}s)", at.elapsed().as_secs_f64()),
        Err(error) => {
            tally.record(&format!("{label}: fault injected"), &[format!("{error:#}")]);
            return Ok(());
        }
    }
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    // A fault no write met tested no invalidation.
    let writes = world.stats.writes() - writes_before;
    let idle =
        if writes == 0 { vec!["no write succeeded from the injection to the check".to_owned()] } else { Vec::new() };
    tally.record(&format!("{label}: writes succeeded during the fault"), &idle);
    world.set_phase("recovery");
    run_check(world, tally, &label, url_limit).await;
    Ok(())
}

async fn poison_phase(world: &World, tally: &mut Tally, scale: usize) -> anyhow::Result<()> {
    world.set_phase("poison");
    let _gate = world.gate.write().await;
    check::wait_drained(world, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let outcome = poison::run(world, scale).await?;
    println!(
        "  [poison] {} malformed rows among {} valid ones (outbox ids {}..={}) handled in {:.1}s",
        outcome.poison_rows,
        outcome.valid_rows,
        outcome.id_range.0,
        outcome.id_range.1,
        started.elapsed().as_secs_f64()
    );
    *world.poison_ids.lock().unwrap() = Some(outcome.id_range);
    for (name, failures) in &outcome.checks {
        tally.record(name, failures);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail closures must return figment::Error.
    fn a_replica_wait_on_the_command_line_is_what_the_invalidators_wait() {
        let config =
            Config::try_parse_from(["openrisk-verifier", "--soak", "--redis", "cluster", "--replica-wait", "100ms"])
                .expect("the command line parses");
        let default_wait = openrisk_shared::config::InvalidatorSettings::default().redis_replicas_ack_timeout_ms;
        for (replica_wait, expected) in [(config.replica_wait, 100), (None, default_wait)] {
            let env = procs::invalidator_settings(replica_wait);
            figment::Jail::expect_with(|jail| {
                for (key, value) in &env {
                    jail.set_env(key, value);
                }
                let settings = openrisk_shared::Settings::load(None).expect("the settings load");
                assert_eq!(settings.invalidator.redis_replicas_ack_timeout_ms, expected);
                assert_eq!(settings.invalidator.batch_size, procs::BATCH_SIZE);
                Ok(())
            });
        }
    }

    #[test]
    fn a_replica_wait_under_a_millisecond_is_refused_on_the_command_line() {
        for wait in ["0ms", "500us", "soon"] {
            let parsed = Config::try_parse_from(["openrisk-verifier", "--replica-wait", wait]);
            assert!(parsed.is_err(), "--replica-wait {wait} was accepted");
        }
    }

    #[test]
    fn the_replay_command_names_every_flag_that_shapes_the_run_and_replays_itself() {
        for args in [
            vec!["--smoke", "--replica"],
            vec!["--smoke", "--network", "--tenants", "3"],
            vec!["--soak", "--duration", "90m", "--redis", "cluster", "--replica-wait", "1500ms"],
            vec!["--rounds", "2", "--risks", "40", "--readers", "3"],
        ] {
            let config = Config::try_parse_from(std::iter::once("openrisk-verifier").chain(args.iter().copied()))
                .expect("the command line parses");
            let replay = config.replay_command(7);
            for arg in args.iter().filter(|arg| arg.starts_with("--")) {
                assert!(replay.contains(arg), "{replay} lacks {arg}");
            }
            let again = Config::try_parse_from(replay.split(' ')).expect("the replay parses");
            assert_eq!(again.seed, Some(7));
            assert_eq!((again.duration, again.replica_wait), (config.duration, config.replica_wait), "{replay}");
            assert_eq!(again.replay_command(7), replay, "the replay of the replay is the same run");
        }
    }
}
