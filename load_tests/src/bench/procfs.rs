//! CPU time and resident memory of processes, from `/proc` (Linux).

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux x86 and arm).
const TICKS_PER_SECOND: f64 = 100.0;

/// One look at a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = after_command(&stat)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { at: Instant::now(), cpu_ticks: utime + stime, rss_kib })
}

/// The fields of a `/proc/<pid>/stat` line after the command name, which may hold spaces and
/// parentheses: field 3 (state) on, so the parent is the second.
fn after_command(stat: &str) -> Option<&str> {
    Some(&stat[stat.rfind(')')? + 1..])
}

/// The parent of process `pid`; `None` when it is gone.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_command(&stat)?.split_whitespace().nth(1)?.parse().ok()
}

/// The niceness of process `pid` (its main thread's); `None` when it is gone.
pub fn nice(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_command(&stat)?.split_whitespace().nth(16)?.parse().ok()
}

/// Every process whose parent is `pid` (a postmaster's backends, say).
pub fn children(pid: u32) -> Vec<u32> {
    pids().filter(|&child| parent(child) == Some(pid)).collect()
}

/// Every process on the machine.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Established TCP connections that process `pid` holds to remote port `port` (IPv4 and IPv6),
/// found by matching its socket inodes against `/proc/net/tcp*`; `None` if `/proc` is unreadable.
pub fn tcp_connections_to(pid: u32, port: u16) -> Option<usize> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let port_hex = format!(":{port:04X}");
    // Counted by inode: the kernel lists the table a bucket at a time across `read` calls, so a
    // socket can appear twice in one reading while other connections open and close.
    let mut matched = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[2].ends_with(&port_hex) && fields[3] == "01" && inodes.contains(fields[9]) {
                matched.insert(fields[9].to_owned());
            }
        }
    }
    Some(matched.len())
}

/// CPU time (user + system, clock ticks) of a process; 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    sample(pid).map_or(0, |s| s.cpu_ticks)
}

/// CPU time of every process whose command is `comm` (e.g. all `postgres` backends), in ticks.
pub fn cpu_ticks_of_command(comm: &str) -> u64 {
    pids()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim_end() == comm))
        .map(cpu_ticks)
        .sum()
}

/// Busy and total CPU ticks of the whole machine (all cores), from `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Microseconds of CPU per clock tick.
pub const MICROS_PER_TICK: f64 = 1_000_000.0 / TICKS_PER_SECOND;

/// Summary of a process over a phase: CPU in percent of one core, peak and last RSS.
#[derive(Debug, Clone, Default)]
pub struct ProcUsage {
    pub cpu_percent: f64,
    pub rss_max_mib: f64,
    pub rss_last_mib: f64,
}

/// Folds the samples of one process (in time order).
pub fn usage(samples: &[ProcSample]) -> Option<ProcUsage> {
    let (first, last) = (samples.first()?, samples.last()?);
    let seconds = (last.at - first.at).as_secs_f64();
    let cpu_percent = if seconds > 0.0 {
        (last.cpu_ticks.saturating_sub(first.cpu_ticks)) as f64 / TICKS_PER_SECOND / seconds * 100.0
    } else {
        0.0
    };
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Some(ProcUsage { cpu_percent, rss_max_mib: rss_max as f64 / 1024.0, rss_last_mib: last.rss_kib as f64 / 1024.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = sample(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_kib > 0);
        let again = super::sample(std::process::id()).unwrap();
        assert!(usage(&[sample, again]).unwrap().rss_max_mib > 0.0);
    }

    #[test]
    fn this_process_is_among_the_children_of_its_parent() {
        let own = std::process::id();
        let parent = parent(own).expect("own /proc entry");
        assert!(children(parent).contains(&own));
        assert!(!children(own).contains(&parent));
    }

    #[test]
    fn counts_own_tcp_connections_by_remote_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = tcp_connections_to(std::process::id(), port).unwrap();
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(tcp_connections_to(std::process::id(), port).unwrap(), before + 2);
    }
}
