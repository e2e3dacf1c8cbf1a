//! The real binaries as child processes: spawned from the build's target directory with their
//! output in the run's log directory, signalled by pid (SIGKILL, SIGSTOP, SIGCONT, SIGTERM).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::process::{Child, Command};

/// Invalidator poll interval used in every run (pauses are made longer than this).
pub const POLL_INTERVAL_MS: u64 = 500;
/// Outbox rows per invalidator batch: small, so a SIGKILL lands mid-batch.
pub const BATCH_SIZE: u32 = 50;

/// The invalidators' settings that differ from their defaults, as environment variables: the
/// poll and batch size of every run, and the replica wait when the command line gives one.
pub fn invalidator_settings(replica_wait: Option<Duration>) -> Vec<(String, String)> {
    let mut settings = vec![
        ("OPENRISK_INVALIDATOR__POLL_INTERVAL_MS".to_owned(), POLL_INTERVAL_MS.to_string()),
        ("OPENRISK_INVALIDATOR__BATCH_SIZE".to_owned(), BATCH_SIZE.to_string()),
    ];
    if let Some(wait) = replica_wait {
        settings.push(("OPENRISK_INVALIDATOR__REDIS_REPLICAS_ACK_TIMEOUT_MS".to_owned(), wait.as_millis().to_string()));
    }
    settings
}

/// What to start: the binary, its arguments and environment.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Label used in logs and reports, e.g. `api`, `api-ref`, `invalidator-1`.
    pub name: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The HTTP address whose `/healthz` answers once the process is up.
    pub health_addr: String,
}

/// One running process and how to start it again.
#[derive(Debug)]
pub struct Proc {
    pub spec: Spec,
    child: Option<Child>,
    pub pid: u32,
    pub starts: u32,
    /// How each earlier run of the process ended, when it exited before it was stopped or killed
    /// (a crash that a fault's restart would otherwise hide).
    exits_on_its_own: Vec<std::process::ExitStatus>,
    log_dir: PathBuf,
}

impl Proc {
    pub async fn start(spec: Spec, log_dir: &Path) -> anyhow::Result<Self> {
        let mut proc =
            Proc { spec, child: None, pid: 0, starts: 0, exits_on_its_own: Vec::new(), log_dir: log_dir.to_owned() };
        proc.launch().await?;
        Ok(proc)
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.spec.name))
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut command = Command::new(&self.spec.binary);
        command.args(&self.spec.args);
        for (key, _) in std::env::vars() {
            if key.starts_with("OPENRISK_")
                || matches!(key.as_str(), "DATABASE_URL" | "REDIS_URL" | "API_ADDR" | "METRICS_ADDR")
            {
                command.env_remove(key);
            }
        }
        command.envs(self.spec.env.iter().map(|(key, value)| (key, value)));
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("spawn {}", self.spec.binary.display()))?;
        self.pid = child.id().unwrap_or(0);
        self.child = Some(child);
        self.starts += 1;
        wait_healthy(&self.spec.health_addr, Duration::from_secs(60))
            .await
            .with_context(|| format!("{} did not become healthy (log: {})", self.spec.name, self.log_path().display()))
    }

    /// Sends `signal`; fails when kill(2) does (the process is gone) or there is no process.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        if self.pid == 0 {
            bail!("{} has no process to signal", self.spec.name);
        }
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        if unsafe { libc::kill(self.pid as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signal {signal} to {} (pid {})", self.spec.name, self.pid));
        }
        Ok(())
    }

    /// SIGSTOP, held for `hold`, then SIGCONT. Fails unless `/proc` shows the process stopped
    /// within a second of the signal: a pause that did not take effect must not count as one.
    pub async fn pause(&self, hold: Duration) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.stopped() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped = self.stopped();
        if stopped {
            tokio::time::sleep(hold).await;
        }
        self.signal(libc::SIGCONT)?;
        ensure!(stopped, "{} (pid {}) was not stopped 1s after SIGSTOP", self.spec.name, self.pid);
        Ok(())
    }

    /// Whether `/proc/<pid>/stat` shows the process stopped by a signal (state `T`).
    fn stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')))
    }

    /// The child, taken to be stopped; none when it had already exited on its own, which is
    /// noted. (Reaped then, its pid may be another process's by now: it must not be signalled.)
    fn take_child(&mut self) -> Option<Child> {
        let mut child = self.child.take()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.exits_on_its_own.push(status);
                None
            }
            _ => Some(child),
        }
    }

    /// SIGKILL and reap. (A process that exited already cannot be signalled: nothing to do.)
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.take_child() {
            let _ = self.signal(libc::SIGCONT);
            let _ = self.signal(libc::SIGKILL);
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace` (signals to a process that exited already fail, and
    /// need not be sent).
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.take_child() {
            let _ = self.signal(libc::SIGCONT);
            let _ = self.signal(libc::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = self.signal(libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
    }

    /// Starts the process again with the same specification.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.launch().await
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`) and starts it again with its
    /// environment changed: `Some` sets a variable, `None` removes it. How an operator re-points
    /// a process at other servers.
    pub async fn reconfigure(&mut self, changes: &[(&str, Option<String>)], grace: Duration) -> anyhow::Result<()> {
        self.stop(grace).await;
        for (key, value) in changes {
            self.spec.env.retain(|(name, _)| name != key);
            if let Some(value) = value {
                self.spec.env.push(((*key).to_owned(), value.clone()));
            }
        }
        self.launch().await
    }

    /// How the process exited on its own, this run of it and every earlier one, if it ever did.
    pub fn exits_on_its_own(&mut self) -> Vec<std::process::ExitStatus> {
        let now = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
        self.exits_on_its_own.iter().copied().chain(now).collect()
    }

    /// Resident set size in kB, from /proc.
    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.pid)
    }
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `http://addr/healthz` until it answers 200.
pub async fn wait_healthy(addr: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = client.get(format!("http://{addr}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("http://{addr}/healthz did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a binary to completion and returns its stdout (fails on a non-zero exit).
pub async fn run_to_end(binary: &Path, args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    let mut command = Command::new(binary);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("OPENRISK_") || key == "DATABASE_URL" || key == "REDIS_URL" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    let output = command.output().await.with_context(|| format!("run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} {:?} failed ({}): {}",
            binary.display(),
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
