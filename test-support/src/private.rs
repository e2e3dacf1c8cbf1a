//! Private Postgres and Redis servers on free ports, for tests that kill, restart or flush them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port()
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not become ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn kill(child: &mut Option<Child>, signal: &str) {
    if let Some(mut child) = child.take() {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        let _ = child.wait();
    }
}

/// A `redis-server` of its own (no persistence) on a free port; killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let url = self.url();
        wait_until("private redis", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
                .is_ok()
        });
    }

    /// Kills the server (SIGKILL, losing everything) and leaves it down.
    pub fn kill(&mut self) {
        kill(&mut self.child, "KILL");
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of its own (fsync off, commits still survive a server crash) on a free port; stopped and deleted on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: TempDir,
    bin: PathBuf,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// Runs `initdb` and starts the server. As root, the server runs as the `postgres` user.
    pub fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = tempfile::Builder::new().prefix("openrisk-pg-").tempdir().expect("tempdir");
        let data = dir.path().join("data");
        if is_root() {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        }
        let status = as_postgres_user(Command::new(bin.join("initdb")))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let mut postgres = Self { port: free_port(), dir, bin, child: None };
        postgres.launch();
        postgres
    }

    /// Admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn launch(&mut self) {
        let child = as_postgres_user(Command::new(self.bin.join("postgres")))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let port = self.port;
        wait_until("private postgres", Duration::from_secs(30), || {
            Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|status| status.success())
        });
    }

    /// Stops the server immediately (SIGQUIT: no shutdown checkpoint, crash recovery on start).
    pub fn stop(&mut self) {
        kill(&mut self.child, "QUIT");
    }

    /// Stops the server abruptly and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// As root, runs `command` as the `postgres` user (PostgreSQL refuses to run as root). The uid
/// is switched in the child itself, so signals reach the server directly.
fn as_postgres_user(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt;
    if is_root() {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id of the postgres user")
        };
        command.uid(id("-u")).gid(id("-g"));
    }
    command
}

fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL binaries under /usr/lib/postgresql or PG_BIN_DIR")
}
