//! [`ReplicaPair`]: a private PostgreSQL primary and a streaming replica of it, shared by every
//! test of one test binary in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::private::{answers, as_postgres_user, free_port, init_cluster, postgres_bin_dir, run_quiet, wait_until};

/// A private primary and a streaming replica of it (`pg_basebackup -R`), shared by every test of
/// one test binary in one run: the first test process starts them, later ones (nextest runs
/// each test in a process of its own) find them through a state directory named after the binary
/// and the run, and a watchdog stops both and deletes their data once the run is over. Replay
/// pauses and restarts affect every user, so the tests of such a binary must run one at a time
/// (see the `replica-pair` test group in `.config/nextest.toml`).
///
/// The two data directories (`a` and `b`) swap roles in a failover: [`ReplicaPair::stop_primary`],
/// [`ReplicaPair::promote_replica`], then [`ReplicaPair::rebuild_replica`] turns the old primary
/// into a replica of the promoted one.
#[derive(Debug)]
pub struct ReplicaPair {
    dir: PathBuf,
    bin: PathBuf,
    roles: std::sync::Mutex<Roles>,
}

/// Which data directory serves as the primary and which as the replica, on which ports.
#[derive(Debug, Clone, Copy)]
struct Roles {
    primary: Server,
    replica: Server,
}

/// One server of the pair: its data directory (under the pair's directory) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Server {
    data: &'static str,
    port: u16,
}

impl Roles {
    /// The state file's line: primary directory and port, then the replica's.
    fn to_line(self) -> String {
        format!("{} {} {} {}", self.primary.data, self.primary.port, self.replica.data, self.replica.port)
    }

    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let server = |data: &str, port: &str| -> Option<Server> {
            let data = ["a", "b"].into_iter().find(|name| *name == data)?;
            Some(Server { data, port: port.parse().ok()? })
        };
        match fields.as_slice() {
            [primary, primary_port, replica, replica_port] => {
                Some(Self { primary: server(primary, primary_port)?, replica: server(replica, replica_port)? })
            }
            _ => None,
        }
    }
}

impl ReplicaPair {
    /// The pair of this test binary and run, started by whichever test asks first.
    pub fn shared() -> &'static ReplicaPair {
        static PAIR: std::sync::OnceLock<ReplicaPair> = std::sync::OnceLock::new();
        PAIR.get_or_init(Self::find_or_start)
    }

    fn roles(&self) -> Roles {
        *self.roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admin URL of the primary (database `postgres`).
    pub fn primary_admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.roles().primary.port)
    }

    /// URL of `database` on the replica.
    pub fn replica_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.roles().replica.port)
    }

    fn find_or_start() -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let binary = exe.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
        // Under nextest every test process of one run shares NEXTEST_RUN_ID; otherwise the one
        // process runs every test.
        let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
        let dir = std::env::temp_dir().join(format!("openrisk-replica-pair-{binary}-{run}"));
        std::fs::create_dir_all(&dir).expect("replica pair directory");
        let lock = std::fs::File::create(dir.join("lock")).expect("replica pair lock file");
        lock.lock().expect("lock the replica pair");
        let bin = postgres_bin_dir();
        let recorded = std::fs::read_to_string(dir.join("roles")).ok().and_then(|text| Roles::parse(&text));
        let pair = match recorded {
            Some(roles) => Self { dir, bin, roles: std::sync::Mutex::new(roles) },
            None => {
                let roles = Roles {
                    primary: Server { data: "a", port: free_port() },
                    replica: Server { data: "b", port: free_port() },
                };
                let pair = Self { dir, bin, roles: std::sync::Mutex::new(roles) };
                pair.create();
                pair
            }
        };
        let roles = pair.roles();
        pair.launch(roles.primary);
        pair.launch(roles.replica);
        drop(lock);
        pair
    }

    fn data(&self, server: Server) -> PathBuf {
        self.dir.join(server.data)
    }

    /// Leaves a watchdog behind, then initialises the primary and copies it into the replica:
    /// the watchdog first, so that a step failing after the primary started leaves neither it
    /// nor its files to the test processes that come after.
    fn create(&self) {
        let roles = self.roles();
        self.leave_watchdog();
        init_cluster(&self.bin, &self.dir, &self.data(roles.primary));
        self.launch(roles.primary);
        self.base_backup(roles.primary, roles.replica);
        self.record(roles);
    }

    /// Copies `from` into `into`'s (absent) data directory as a streaming replica of it.
    fn base_backup(&self, from: Server, into: Server) {
        let port = from.port.to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-R", "-X", "stream", "--no-sync", "-c", "fast"];
        self.run_on_data("pg_basebackup", &args, into);
    }

    /// Runs one of the server tools as the postgres user with `args`, then `-D` and `server`'s
    /// data directory; panics when it fails.
    fn run_on_data(&self, tool: &str, args: &[&str], server: Server) {
        let mut command = as_postgres_user(Command::new(self.bin.join(tool)));
        run_quiet(command.args(args).arg("-D").arg(self.data(server)), &format!("{tool} {}", args.join(" ")));
    }

    /// Writes the roles where the other test processes of the run find them.
    fn record(&self, roles: Roles) {
        std::fs::write(self.dir.join("roles"), roles.to_line()).expect("record the pair's roles");
    }

    /// Stops both servers and deletes the directory once the process that runs the tests (the
    /// nextest run, or this binary) has exited.
    fn leave_watchdog(&self) {
        let watched = if std::env::var_os("NEXTEST_RUN_ID").is_some() { parent_pid() } else { std::process::id() };
        let dir = self.dir.display().to_string();
        let script = format!(
            "while kill -0 {watched} 2>/dev/null; do sleep 1; done; \
             for server in a b; do kill -QUIT \"$(head -1 '{dir}'/$server/postmaster.pid)\" 2>/dev/null; done; \
             sleep 2; rm -rf '{dir}'"
        );
        spawn_detached(Command::new("sh").args(["-c", &script]), "the replica pair's watchdog");
    }

    /// Starts the replica unless it runs; waits until it accepts connections.
    pub fn start_replica(&self) {
        let replica = self.roles().replica;
        assert!(
            self.data(replica).join("standby.signal").exists(),
            "the replica's data is a former primary's: rebuild_replica first"
        );
        self.launch(replica);
    }

    /// Stops the replica abruptly (SIGQUIT) and waits until it is gone.
    pub fn stop_replica(&self) {
        let replica = self.roles().replica;
        if let Some(pid) = self.postmaster_pid(replica) {
            let _ = Command::new("kill").args(["-QUIT", &pid.to_string()]).status();
            wait_until("replica stop", Duration::from_secs(30), || !self.answers(replica.port));
            wait_until("replica exit", Duration::from_secs(30), || {
                !Path::new(&format!("/proc/{pid}")).exists() || self.postmaster_pid(replica).is_none()
            });
        }
    }

    /// Stops the primary cleanly (`pg_ctl stop -m fast`: sessions are ended, a shutdown
    /// checkpoint is written, and the WAL senders send every record up to it to the connected
    /// replica before the server exits). Returns the shutdown checkpoint's WAL position, from
    /// `pg_controldata`: a replica that has replayed past it holds every commit of the primary.
    pub fn stop_primary(&self) -> String {
        let primary = self.roles().primary;
        self.run_on_data("pg_ctl", &["stop", "-m", "fast", "-w", "-t", "60"], primary);
        let control = as_postgres_user(Command::new(self.bin.join("pg_controldata")))
            .arg("-D")
            .arg(self.data(primary))
            .env("LC_ALL", "C")
            .output()
            .expect("run pg_controldata");
        let text = String::from_utf8_lossy(&control.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix("Latest checkpoint location:"))
            .map(|position| position.trim().to_owned())
            .expect("pg_controldata names the latest checkpoint location")
    }

    /// Makes the primary refuse replication connections from its next configuration reload
    /// (`pg_reload_conf()`) on: with its WAL sender then terminated, the replica receives
    /// nothing more. Lasts until the primary's data is rebuilt ([`ReplicaPair::rebuild_replica`]
    /// after a promotion).
    pub fn refuse_replication_on_primary(&self) {
        let hba = self.data(self.roles().primary).join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read the primary's pg_hba.conf");
        std::fs::write(&hba, format!("host replication all 127.0.0.1/32 reject\n{rules}"))
            .expect("write the primary's pg_hba.conf");
    }

    /// Crashes the primary (SIGQUIT: no shutdown checkpoint, no more WAL sent to the replica) and
    /// waits until it is gone.
    pub fn crash_primary(&self) {
        let primary = self.roles().primary;
        if let Some(pid) = self.postmaster_pid(primary) {
            let _ = Command::new("kill").args(["-QUIT", &pid.to_string()]).status();
            wait_until("primary exit", Duration::from_secs(30), || !Path::new(&format!("/proc/{pid}")).exists());
        }
    }

    /// Promotes the replica (`pg_ctl promote`, waiting until it accepts writes) and makes it the
    /// pair's primary; the stopped old primary becomes the replica to rebuild.
    pub fn promote_replica(&self) {
        let mut roles = self.roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.run_on_data("pg_ctl", &["promote", "-w", "-t", "60"], roles.replica);
        *roles = Roles { primary: roles.replica, replica: roles.primary };
        self.record(*roles);
    }

    /// Replaces the replica's data with a fresh `pg_basebackup -R` of the primary and starts it:
    /// how a former primary rejoins as a replica of the promoted server.
    pub fn rebuild_replica(&self) {
        let roles = self.roles();
        if let Some(pid) = self.postmaster_pid(roles.replica) {
            let _ = Command::new("kill").args(["-QUIT", &pid.to_string()]).status();
            wait_until("old replica exit", Duration::from_secs(30), || !Path::new(&format!("/proc/{pid}")).exists());
        }
        std::fs::remove_dir_all(self.data(roles.replica)).expect("delete the replica's old data");
        self.base_backup(roles.primary, roles.replica);
        self.launch(roles.replica);
    }

    /// The primary's postmaster (its backends are its children), for measuring its CPU time.
    pub fn primary_pid(&self) -> Option<u32> {
        self.postmaster_pid(self.roles().primary)
    }

    fn postmaster_pid(&self, server: Server) -> Option<u32> {
        let text = std::fs::read_to_string(self.data(server).join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn answers(&self, port: u16) -> bool {
        answers(&self.bin, &self.dir, port)
    }

    fn launch(&self, server: Server) {
        if self.answers(server.port) {
            return;
        }
        let mut postgres = as_postgres_user(Command::new(self.bin.join("postgres")));
        postgres
            .arg("-D")
            .arg(self.data(server))
            .args(["-p", &server.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "wal_receiver_status_interval=1s"])
            .arg("-k")
            .arg(&self.dir);
        spawn_detached(&mut postgres, "postgres");
        wait_until(&format!("private postgres {}", server.data), Duration::from_secs(30), || self.answers(server.port));
    }
}

/// Starts `command` without a terminal, in a process group of its own, so the end of the test
/// process that started it (and whatever signals that process's group) leaves it running. It is
/// waited for on a thread of its own, so one that exits while this process runs leaves no zombie;
/// one that outlives this process is adopted by init.
fn spawn_detached(command: &mut Command, what: &str) {
    use std::os::unix::process::CommandExt;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| panic!("start {what}: {error}"));
    std::thread::spawn(move || child.wait());
}

/// The parent of this process (the nextest run that started this test).
fn parent_pid() -> u32 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the parenthesised command name: state, then the parent's pid.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name.split_whitespace().nth(1).and_then(|pid| pid.parse().ok()).expect("parent pid in /proc/self/stat")
}
