//! Private Postgres and Redis servers on free ports, for tests that kill, restart or flush them.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::network::NetworkLink;

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

/// A server process a test started: stopped with its signal (and waited for) on demand or on
/// drop, so that no server outlives the value that owns it.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Option<Child>,
    stop_signal: &'static str,
}

impl ServerProcess {
    /// None running yet; `stop_signal` (`KILL`, `QUIT`, …) is what [`Self::stop`] sends.
    pub(crate) fn stopped_by(stop_signal: &'static str) -> Self {
        Self { child: None, stop_signal }
    }

    /// Stops the one running, if any, and owns `child` instead.
    pub(crate) fn replace(&mut self, child: Child) {
        self.stop();
        self.child = Some(child);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until `started` holds of the one running, panicking naming `what` when it exits
    /// first (its port taken since [`free_port`] chose it, say) or does not start in `timeout`.
    pub(crate) fn wait_until_started(&mut self, what: &str, timeout: Duration, mut started: impl FnMut(u32) -> bool) {
        let child = self.child.as_mut().expect("a server process to wait for");
        wait_until(what, timeout, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited ({status}) before it answered");
            }
            started(child.id())
        });
    }

    /// Sends `signal` (`STOP`, `CONT`, …) without waiting.
    pub(crate) fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        }
    }

    /// Sends the stop signal and waits until the process is gone.
    pub(crate) fn stop(&mut self) {
        self.signal(self.stop_signal);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` of its own (no persistence) on a free port; killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    /// The address it listens on: loopback, or a server address of a [`NetworkLink`].
    pub host: Ipv4Addr,
    namespace: Option<String>,
    process: ServerProcess,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            host: Ipv4Addr::LOCALHOST,
            namespace: None,
            process: ServerProcess::stopped_by("KILL"),
        };
        redis.launch();
        redis
    }

    /// Starts one inside `link`'s namespace, on its first server address, so that the link's
    /// faults stand between it and every client.
    pub fn start_behind(link: &NetworkLink) -> Self {
        let namespace = Some(link.namespace().to_owned());
        let process = ServerProcess::stopped_by("KILL");
        let mut redis = Self { port: free_port(), host: link.server_address(0), namespace, process };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        (self.host, self.port).into()
    }

    fn launch(&mut self) {
        let mut command = in_namespace(self.namespace.as_deref(), "redis-server");
        let child = command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                &self.host.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            // Clients behind a link are not on loopback; the link exists only for this test.
            .args(["--protected-mode", "no"]);
        self.process.replace(spawn_quiet(child, "redis-server (is it installed?)"));
        let url = self.url();
        self.process.wait_until_started("private redis", Duration::from_secs(10), |pid| is_redis_process(&url, pid));
    }

    /// Kills the server (SIGKILL, losing everything) and leaves it down.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// A PostgreSQL cluster of its own (fsync off, commits still survive a server crash) on a free port; stopped and deleted on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    /// Every address it listens on: loopback, or the server addresses of a [`NetworkLink`].
    pub hosts: Vec<Ipv4Addr>,
    namespace: Option<String>,
    /// Server settings (`name=value`) beyond the defaults of every private server: those a test
    /// asked for, or the TLS ones of [`PrivatePostgres::start_tls_only`].
    settings: Vec<String>,
    /// Declared before `dir`: the server stops before its data directory is deleted.
    process: ServerProcess,
    dir: TempDir,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// Runs `initdb` and starts the server. As root, the server runs as the `postgres` user.
    pub fn start() -> Self {
        Self::start_on(vec![Ipv4Addr::LOCALHOST], None)
    }

    /// Starts one on loopback with these server settings (`name=value`) added, such as
    /// `track_commit_timestamp=on`, which the shared server cannot be assumed to have.
    pub fn start_with_settings(settings: &[&str]) -> Self {
        let mut postgres = Self::initialised(vec![Ipv4Addr::LOCALHOST], None);
        postgres.settings = settings.iter().map(|setting| (*setting).to_owned()).collect();
        postgres.launch();
        postgres
    }

    /// Starts one inside `link`'s namespace, listening on every server address of the link, so
    /// a fault on one address cuts off only the clients that use it.
    pub fn start_behind(link: &NetworkLink) -> Self {
        Self::start_on(link.server_addresses(), Some((link.namespace().to_owned(), link.host_address())))
    }

    /// Starts one on loopback that refuses every session without TLS. Its certificate names
    /// `127.0.0.1` and `db.test` and is signed by a CA of its own, whose certificate is at
    /// [`PrivatePostgres::ca_certificate`].
    pub fn start_tls_only() -> Self {
        let mut postgres = Self::initialised(vec![Ipv4Addr::LOCALHOST], None);
        issue_certificates(&postgres.tls_dir());
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
        std::fs::write(postgres.dir.path().join("data").join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let tls = postgres.tls_dir();
        let file = |name: &str| tls.join(name).display().to_string();
        postgres.settings = vec![
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", file("server.crt")),
            format!("ssl_key_file={}", file("server.key")),
        ];
        postgres.launch();
        postgres
    }

    /// The PEM file of the CA that signed a [`PrivatePostgres::start_tls_only`] server's
    /// certificate (what a client names in `sslrootcert`).
    pub fn ca_certificate(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// Where `start_tls_only` keeps the certificates and keys.
    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Starts one listening on `hosts`; inside a namespace, trusting its one client address.
    fn start_on(hosts: Vec<Ipv4Addr>, namespace: Option<(String, Ipv4Addr)>) -> Self {
        let mut postgres = Self::initialised(hosts, namespace);
        postgres.launch();
        postgres
    }

    /// Runs `initdb` for a server on `hosts`, not started yet.
    fn initialised(hosts: Vec<Ipv4Addr>, namespace: Option<(String, Ipv4Addr)>) -> Self {
        let bin = postgres_bin_dir();
        let dir = tempfile::Builder::new().prefix("openrisk-pg-").tempdir().expect("tempdir");
        init_cluster(&bin, dir.path(), &dir.path().join("data"));
        let namespace = namespace.map(|(namespace, client)| {
            let hba = dir.path().join("data").join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            rules.push_str(&format!("host all all {client}/32 trust\n"));
            std::fs::write(&hba, rules).expect("trust the link's client address");
            namespace
        });
        let process = ServerProcess::stopped_by("QUIT");
        Self { port: free_port(), hosts, namespace, settings: Vec::new(), process, dir, bin }
    }

    /// Admin URL (database `postgres`) on the first address.
    pub fn admin_url(&self) -> String {
        self.admin_url_via(self.hosts[0])
    }

    /// Admin URL (database `postgres`) through `host`, one of [`PrivatePostgres::hosts`].
    pub fn admin_url_via(&self, host: Ipv4Addr) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    fn launch(&mut self) {
        let listen = self.hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let child = spawn_quiet(
            postgres_command(&self.bin, self.namespace.as_deref())
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &self.port.to_string(), "-c", &format!("listen_addresses={listen}"), "-c", "fsync=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
                .args(self.settings.iter().flat_map(|setting| ["-c", setting.as_str()]))
                .arg("-k")
                .arg(self.dir.path()),
            "postgres",
        );
        self.process.replace(child);
        let (bin, socket_dir, port) = (&self.bin, self.dir.path(), self.port);
        self.process
            .wait_until_started("private postgres", Duration::from_secs(30), |_| answers(bin, socket_dir, port));
    }

    /// Stops the server immediately (SIGQUIT: no shutdown checkpoint, crash recovery on start).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the server abruptly and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

/// The URL query parameter naming `file` as the roots a client checks the server against
/// (`sslrootcert`), its slashes percent-encoded.
pub fn sslrootcert_param(file: &Path) -> String {
    format!("sslrootcert={}", file.display().to_string().replace('/', "%2F"))
}

/// Writes into `dir` a CA (`ca.crt`) and a server certificate it signed for `127.0.0.1` and
/// `db.test` (`server.crt`, `server.key`), P-256 keys valid for two days, owned by the user the
/// server runs as (it refuses a key others can read).
fn issue_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).expect("certificate directory");
    let extensions = "subjectAltName=IP:127.0.0.1,DNS:db.test\nbasicConstraints=CA:FALSE\n\
                      keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";
    std::fs::write(dir.join("server.ext"), extensions).expect("write the certificate extensions");
    let openssl = |args: &[&str]| {
        run_quiet(Command::new("openssl").args(args).current_dir(dir), &format!("openssl {}", args.join(" ")));
    };
    let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = ["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=openrisk test CA"];
    openssl(&[&["req", "-x509"][..], &new_key, &ca].concat());
    openssl(
        &[&["req"][..], &new_key, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=db.test"]].concat(),
    );
    let signed_by_ca = ["-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"];
    openssl(&[&["x509", "-req"][..], &signed_by_ca, &["-extfile", "server.ext", "-out", "server.crt"]].concat());
    if is_root() {
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
    }
    let _ = Command::new("chmod").args(["600"]).arg(dir.join("server.key")).status();
}

/// Starts `command` with its output discarded; panics naming `what` when it cannot start.
pub(crate) fn spawn_quiet(command: &mut Command, what: &str) -> Child {
    command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|error| panic!("start {what}: {error}"))
}

/// Runs `command` to completion with its output discarded; panics naming `what` unless it
/// succeeds.
pub(crate) fn run_quiet(command: &mut Command, what: &str) {
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("run {what}: {error}"));
    assert!(status.success(), "{what} failed");
}

/// Runs `initdb` into `data` (trust authentication, user `postgres`), handing `dir` (which holds
/// it) to the `postgres` user first when running as root.
pub(crate) fn init_cluster(bin: &Path, dir: &Path, data: &Path) {
    if is_root() {
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
    }
    run_quiet(
        as_postgres_user(Command::new(bin.join("initdb")))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(data),
        "initdb",
    );
}

/// Whether a server accepts connections on `host`:`port`.
/// Whether the Postgres whose Unix socket is in `socket_dir` accepts connections on `port`. The
/// directory is the test's own, so the answer comes from the server the test started, never from
/// another that took the TCP port meanwhile (the server opens its TCP sockets first).
pub(crate) fn answers(bin: &Path, socket_dir: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .arg("-q")
        .arg("-h")
        .arg(socket_dir)
        .args(["-p", &port.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether the Redis at `url` answers and is the process `pid`: a server that took the port
/// after it was chosen answers too, and must not pass for the one the test started.
pub(crate) fn is_redis_process(url: &str, pid: u32) -> bool {
    let info = redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut conn| redis::cmd("INFO").arg("server").query::<String>(&mut conn));
    info.is_ok_and(|info| info.lines().any(|line| line.trim() == format!("process_id:{pid}")))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// `program`, inside `namespace` when one is given (`ip netns exec`, which execs it).
fn in_namespace(namespace: Option<&str>, program: &str) -> Command {
    match namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace, program]);
            command
        }
        None => Command::new(program),
    }
}

/// The `postgres` server binary, as the `postgres` user when running as root, inside
/// `namespace` when one is given (entering it needs root, so `setpriv` drops to the user after).
fn postgres_command(bin: &Path, namespace: Option<&str>) -> Command {
    let server = bin.join("postgres");
    match namespace {
        // Namespaces need root (see NetworkLink).
        Some(_) => {
            let mut command = in_namespace(namespace, "setpriv");
            command.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(server);
            command
        }
        None => as_postgres_user(Command::new(server)),
    }
}

/// As root, runs `command` as the `postgres` user (PostgreSQL refuses to run as root). The uid
/// is switched in the child itself, so signals reach the server directly.
pub(crate) fn as_postgres_user(mut command: Command) -> Command {
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

pub(crate) fn postgres_bin_dir() -> PathBuf {
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
