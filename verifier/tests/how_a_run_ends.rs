//! How a verifier run ends when it does not run to its end. Stopped by SIGTERM (as `kill`,
//! `timeout` and service managers stop it), it stops every server and process it started before
//! it exits, reports the run as failed, and keeps what a soak had sampled. Unable to start, it
//! says why in the form of every run's report.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A process as `/proc` shows it: its id and start time (in clock ticks since boot), which
/// together name it even if the id is reused, and its command name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Process {
    pid: u32,
    started_at: u64,
    name: String,
}

/// `(process, parent id, state)` from `/proc/<pid>/stat`; `None` once the process is reaped.
fn stat(pid: u32) -> Option<(Process, u32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // After the name: state, ppid, …; the start time is the 20th field after it.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let parent = fields.get(1)?.parse().ok()?;
    let started_at = fields.get(19)?.parse().ok()?;
    Some((Process { pid, started_at, name }, parent, state))
}

/// Every process descended from `root` right now.
fn descendants(root: u32) -> Vec<Process> {
    let mut children: HashMap<u32, Vec<Process>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse().ok()) else { continue };
        if let Some((process, parent, _)) = stat(pid) {
            children.entry(parent).or_default().push(process);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children.remove(&pid).unwrap_or_default() {
            queue.push(child.pid);
            found.push(child);
        }
    }
    found
}

/// Whether `process` still runs: not reaped, and not a zombie (exited, its parent gone, and not
/// reaped where the namespace's init does not reap).
fn is_alive(process: &Process) -> bool {
    stat(process.pid).is_some_and(|(now, _, state)| now.started_at == process.started_at && state != 'Z')
}

/// A verifier run whose output is read line by line as it comes.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    log_dir: tempfile::TempDir,
}

impl Run {
    /// Starts the verifier built beside this test with `args`, logging into a directory of its own.
    fn start(args: &[&str]) -> Self {
        let verifier = Path::new(env!("CARGO_BIN_EXE_openrisk-verifier"));
        let api = verifier.with_file_name("openrisk-api");
        assert!(api.exists(), "{} is missing: build the workspace first (scripts/test.sh does)", api.display());
        let log_dir = tempfile::tempdir().expect("log directory");
        let mut child = Command::new(verifier)
            .args(args)
            .arg("--log-dir")
            .arg(log_dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start openrisk-verifier");
        let (lines_tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        Self { child, lines, output: Vec::new(), log_dir }
    }

    /// Reads the output up to the next line that starts with `prefix`.
    fn wait_for(&mut self, prefix: &str) {
        loop {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(180)) else {
                panic!("no line `{prefix}…` came:\n{}", self.output.join("\n"));
            };
            let found = line.starts_with(prefix);
            self.output.push(line);
            if found {
                return;
            }
        }
    }

    /// Sends SIGTERM, checks that every server and process the verifier had started is gone once
    /// it has exited (killing and naming any that is not), and returns its status and output.
    fn terminate(&mut self) -> (ExitStatus, String) {
        let started = descendants(self.child.id());
        // SAFETY: kill(2) with a child's pid and a valid signal has no memory effects.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0, "send SIGTERM");
        let status = self.child.wait().expect("wait for the verifier");
        let names: HashSet<&str> = started.iter().map(|process| process.name.as_str()).collect();
        for expected in ["postgres", "redis-server", "openrisk-api", "openrisk-invali"] {
            assert!(names.contains(expected), "no {expected} among the verifier's processes: {names:?}");
        }
        // Postgres backends may leave a moment after their postmaster.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<&Process> = started.iter().filter(|process| is_alive(process)).collect();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left.retain(|process| is_alive(process));
        }
        for process in &left {
            // SAFETY: as above; these are the servers the verifier should have stopped.
            unsafe { libc::kill(process.pid as i32, libc::SIGKILL) };
        }
        assert!(left.is_empty(), "still running after the verifier exited (now killed): {left:?}");
        // Until the pipe closes; a bounded wait, as a server left behind could hold it open.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.output.push(line);
        }
        (status, self.output.join("\n"))
    }
}

impl Drop for Run {
    /// A test that failed before [`Run::terminate`] still stops the verifier, and so its servers.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: as in `terminate`.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_verifier_stopped_by_sigterm_stops_every_server_it_started_and_fails_the_run() {
    let mut run = Run::start(&["--smoke", "--seed", "1"]);
    run.wait_for("  started private");
    let (status, output) = run.terminate();
    assert_eq!(status.code(), Some(1), "a stopped run fails:\n{output}");
    assert!(
        output.contains("  FAIL verifier ran to the end\n       stopped by SIGTERM"),
        "the run says why it ended:\n{output}"
    );
}

#[test]
fn a_soak_stopped_by_sigterm_still_writes_the_samples_it_took() {
    let args = ["--soak", "--duration", "1h", "--sample-every", "1", "--tenants", "2", "--risks", "10", "--seed", "1"];
    let mut run = Run::start(&args);
    run.wait_for("  sample +");
    run.wait_for("  sample +");
    let (status, output) = run.terminate();
    let log_dir = run.log_dir.path();
    assert_eq!(status.code(), Some(1), "a stopped run fails:\n{output}");
    let csv = std::fs::read_to_string(log_dir.join("soak.csv")).unwrap_or_else(|e| panic!("soak.csv: {e}\n{output}"));
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("seconds,"), "a header first: {csv}");
    assert!(rows.len() > 2, "the two samples seen, and any taken since: {csv}");
    assert!(log_dir.join("soak.svg").exists(), "the plot beside them:\n{output}");
}

#[test]
fn a_run_that_cannot_start_says_why_as_a_failed_check_and_exits_with_2() {
    let verifier = Path::new(env!("CARGO_BIN_EXE_openrisk-verifier"));
    let log_dir = tempfile::tempdir().expect("log directory");
    let missing = log_dir.path().join("no-binaries-here");
    let run = Command::new(verifier)
        .args(["--smoke", "--seed", "1", "--log-dir"])
        .arg(log_dir.path())
        .arg("--bin-dir")
        .arg(&missing)
        .output()
        .expect("run openrisk-verifier");
    let output = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "a run that could not start:\n{output}");
    let expected = format!(
        "  FAIL verifier started its run\n       {}/openrisk-api not found: build it first (cargo build -p openrisk-api)\n0 passed, 1 failed\n",
        missing.display()
    );
    assert!(output.ends_with(&expected), "the failure, then the tally line:\n{output}");
}
