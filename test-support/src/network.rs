//! Test hosts of the project's own: a network namespace joined to this one by a veth pair, so a
//! server started inside it is reached over a link that can drop packets silently (no reset, no
//! close), lose some of them, or heal. Needs root, iproute2 and nftables (`scripts/test.sh`
//! installs them).
//!
//! Addresses are link-local and exist only on the pair: the host end is `169.254.<subnet>.1`, the
//! servers inside answer on `169.254.<subnet>.10` and up. A process takes a subnet by recording
//! its pid in `openrisk-link-<subnet>.owner` under the temporary directory, one claim at a time
//! under a lock file, so parallel test processes never share one; whatever a process that died
//! left behind (its namespace, the servers in it, its veth pair) is removed by the next claim.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Subnets `169.254.<n>.0/24` links may take; 169.254.169.0/24 (cloud metadata) is left alone.
const SUBNETS: std::ops::RangeInclusive<u8> = 1..=250;
const METADATA_SUBNET: u8 = 169;
/// The nftables table inside the namespace that holds the faults.
const FAULT_TABLE: &str = "openrisk_faults";

/// A namespace with `servers` addresses, behind a veth pair; removed (with any process still
/// inside) on drop.
#[derive(Debug)]
pub struct NetworkLink {
    subnet: u8,
    namespace: String,
    host_interface: String,
    inner_interface: String,
    servers: u8,
}

impl NetworkLink {
    /// A link with `servers` server addresses (1 to 200) inside the namespace.
    pub fn create(servers: u8) -> Self {
        assert!((1..=200).contains(&servers), "1 to 200 server addresses");
        static LINKS: AtomicU32 = AtomicU32::new(0);
        let seed = std::process::id().wrapping_mul(31).wrapping_add(LINKS.fetch_add(1, Ordering::Relaxed) * 7);
        let span = u32::from(*SUBNETS.end() - *SUBNETS.start()) + 1;
        // Claims are made one at a time, across processes, under a lock file.
        let lock = std::fs::File::create(std::env::temp_dir().join("openrisk-links.lock")).expect("links lock file");
        lock.lock().expect("lock the links");
        for attempt in 0..span {
            let subnet = *SUBNETS.start() + ((seed + attempt) % span) as u8;
            if subnet == METADATA_SUBNET || owner_alive(subnet) {
                continue;
            }
            let link = Self {
                subnet,
                namespace: format!("openrisk-link-{subnet}"),
                host_interface: format!("orlink{subnet}h"),
                inner_interface: format!("orlink{subnet}n"),
                servers,
            };
            // Whatever a dead owner left behind goes first.
            link.remove();
            std::fs::write(owner_file(subnet), std::process::id().to_string()).expect("record the link's owner");
            run("ip", &["netns", "add", &link.namespace]);
            drop(lock);
            link.set_up();
            return link;
        }
        panic!("no free 169.254.x.0/24 subnet for a test link");
    }

    fn set_up(&self) {
        let host = format!("{}/24", self.host_address());
        run("ip", &["link", "add", &self.host_interface, "type", "veth", "peer", "name", &self.inner_interface]);
        run("ip", &["link", "set", &self.inner_interface, "netns", &self.namespace]);
        run("ip", &["addr", "add", &host, "dev", &self.host_interface]);
        run("ip", &["link", "set", &self.host_interface, "up"]);
        for index in 0..self.servers {
            let server = format!("{}/24", self.server_address(index));
            self.run_inside("ip", &["addr", "add", &server, "dev", &self.inner_interface]);
        }
        self.run_inside("ip", &["link", "set", &self.inner_interface, "up"]);
        self.run_inside("ip", &["link", "set", "lo", "up"]);
        self.run_inside("nft", &["add", "table", "inet", FAULT_TABLE]);
        for (chain, hook) in [("inbound", "input"), ("outbound", "output")] {
            let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
            self.run_inside("nft", &["add", "chain", "inet", FAULT_TABLE, chain, &spec]);
        }
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// This side's address on the link.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, self.subnet, 1)
    }

    /// The `index`th server address inside the namespace.
    pub fn server_address(&self, index: u8) -> Ipv4Addr {
        assert!(index < self.servers, "the link has {} server addresses", self.servers);
        Ipv4Addr::new(169, 254, self.subnet, 10 + index)
    }

    /// Every server address inside the namespace.
    pub fn server_addresses(&self) -> Vec<Ipv4Addr> {
        (0..self.servers).map(|index| self.server_address(index)).collect()
    }

    /// `program` to be run inside the namespace (as `ip netns exec`, which execs it, so the
    /// child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace, program]);
        command
    }

    /// Drops every packet between this side and the namespace, silently, both ways.
    pub fn blackhole(&self) {
        self.drop_matching(
            &format!("iifname \"{}\"", self.inner_interface),
            &format!("oifname \"{}\"", self.inner_interface),
        );
    }

    /// Drops every packet to and from one server address: clients of the others are unaffected.
    pub fn blackhole_address(&self, address: Ipv4Addr) {
        self.drop_matching(&format!("ip daddr {address}"), &format!("ip saddr {address}"));
    }

    /// Drops every packet of the one TCP connection whose port on this side is `client_port`.
    pub fn blackhole_connection(&self, client_port: u16) {
        self.drop_matching(&format!("tcp sport {client_port}"), &format!("tcp dport {client_port}"));
    }

    /// Drops `percent` of the packets crossing the link, at random, both ways.
    pub fn lose(&self, percent: u8) {
        assert!(percent <= 100);
        let random = format!("iifname \"{}\" numgen random mod 100 < {percent}", self.inner_interface);
        let random_out = format!("oifname \"{}\" numgen random mod 100 < {percent}", self.inner_interface);
        self.drop_matching(&random, &random_out);
    }

    /// Removes every fault: packets flow again (connections that survived carry on).
    pub fn heal(&self) {
        for chain in ["inbound", "outbound"] {
            self.run_inside("nft", &["flush", "chain", "inet", FAULT_TABLE, chain]);
        }
    }

    fn drop_matching(&self, inbound: &str, outbound: &str) {
        for (chain, matching) in [("inbound", inbound), ("outbound", outbound)] {
            let rule = format!("add rule inet {FAULT_TABLE} {chain} {matching} drop");
            self.run_inside("nft", &rule.split_whitespace().collect::<Vec<_>>());
        }
    }

    fn run_inside(&self, program: &str, args: &[&str]) {
        let status = self.command(program).args(args).status().unwrap_or_else(|error| panic!("run {program}: {error}"));
        assert!(status.success(), "{program} {args:?} inside {} failed", self.namespace);
    }

    /// Kills whatever still runs inside, then deletes the namespace and the veth pair.
    fn remove(&self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.namespace]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = quiet(Command::new("kill").args(["-KILL", pid]));
            }
        }
        let _ = quiet(Command::new("ip").args(["netns", "del", &self.namespace]));
        let _ = quiet(Command::new("ip").args(["link", "del", &self.host_interface]));
        let _ = std::fs::remove_file(owner_file(self.subnet));
    }
}

impl Drop for NetworkLink {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where the process that holds `subnet` records its pid.
fn owner_file(subnet: u8) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("openrisk-link-{subnet}.owner"))
}

/// Whether a live process holds `subnet`.
fn owner_alive(subnet: u8) -> bool {
    let owner = std::fs::read_to_string(owner_file(subnet)).ok().and_then(|pid| pid.trim().parse::<u32>().ok());
    owner.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|error| panic!("run {program}: {error}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// Runs `command` without output; true when it succeeded.
fn quiet(command: &mut Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

/// A TCP relay that holds every chunk of data for a set delay before passing it on, in each
/// direction, so clients of `upstream` see that much more latency per crossing (twice that per
/// round trip). The kernel here has no `netem`; packet loss comes from [`NetworkLink::lose`] on
/// the link behind the relay. Runs on a thread of its own; stops on drop.
#[derive(Debug)]
pub struct LatencyRelay {
    pub addr: std::net::SocketAddr,
    one_way_micros: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LatencyRelay {
    /// Listens on a free loopback port and relays to `upstream`.
    pub fn start(upstream: std::net::SocketAddr, one_way: std::time::Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("non-blocking relay socket");
        let addr = listener.local_addr().expect("relay address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let one_way_micros = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(micros(one_way)));
        let delay = one_way_micros.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("relay runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("relay listener");
                let accepting = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(relay(client, upstream, delay.clone()));
                    }
                };
                tokio::select! {
                    () = accepting => {}
                    _ = stopped => {}
                }
            });
        });
        Self { addr, one_way_micros, stop: Some(stop) }
    }

    /// Changes the delay for data read from now on (data in flight keeps its own).
    pub fn set_one_way(&self, one_way: std::time::Duration) {
        self.one_way_micros.store(micros(one_way), Ordering::Relaxed);
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects `client` to `upstream` with the current delay added in each direction.
async fn relay(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    one_way: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed_copy(client_read, server_write, one_way.clone()),
        delayed_copy(server_read, client_write, one_way)
    );
}

/// Copies `from` to `to` in order, each chunk written the current delay after it was read.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reading = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer).await {
            let due = tokio::time::Instant::now() + std::time::Duration::from_micros(delay.load(Ordering::Relaxed));
            if chunks.send((due, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    };
    let writing = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
