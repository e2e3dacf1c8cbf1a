//! A verifier stopped by SIGTERM (as `kill`, `timeout` and service managers stop it) stops every
//! server and process it started before it exits, and reports the run as failed.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
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

#[test]
fn a_verifier_stopped_by_sigterm_stops_every_server_it_started_and_fails_the_run() {
    let verifier = Path::new(env!("CARGO_BIN_EXE_openrisk-verifier"));
    let api = verifier.with_file_name("openrisk-api");
    assert!(api.exists(), "{} is missing: build the workspace first (scripts/test.sh does)", api.display());
    let log_dir = tempfile::tempdir().expect("log directory");
    let mut run = Command::new(verifier)
        .args(["--smoke", "--seed", "1", "--log-dir"])
        .arg(log_dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start openrisk-verifier");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(run.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut output = Vec::new();
    while !output.last().is_some_and(|line: &String| line.starts_with("  started private")) {
        let line = lines.recv_timeout(Duration::from_secs(180)).expect("the verifier's servers started");
        output.push(line);
    }

    let started = descendants(run.id());
    // SAFETY: kill(2) with a child's pid and a valid signal has no memory effects.
    assert_eq!(unsafe { libc::kill(run.id() as i32, libc::SIGTERM) }, 0, "send SIGTERM");
    let status = run.wait().expect("wait for the verifier");
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
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        output.push(line);
    }
    let output = output.join("\n");
    assert_eq!(status.code(), Some(1), "a stopped run fails:\n{output}");
    assert!(
        output.contains("  FAIL verifier ran to the end\n       stopped by SIGTERM"),
        "the run says why it ended:\n{output}"
    );
}
