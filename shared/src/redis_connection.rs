//! One way for every process to reach Redis, a single node or a Redis Cluster, chosen by the
//! URL alone, behind one connection type so the protocol has one code path for both.
//!
//! * `redis://host:port[/db]` and `rediss://…` reach one node (through a
//!   [`ConnectionManager`], which reconnects by itself);
//! * `redis-cluster://host:port[,host:port…]` and `rediss-cluster://…` (TLS) list seed nodes of a
//!   Redis Cluster, reached through the `redis` crate's async cluster client, which follows
//!   `MOVED`/`ASK` redirections and learns a new topology after a failover (or, when nothing
//!   redirects it, as after a master stopped answering, once the cluster watch makes it:
//!   [`RedisConnection::reread_slots_via`]).
//!
//! Every command of the protocol carries its keys, all in one tenant's slot, so the cluster
//! client routes it by its first key. The few keyless commands (a health `PING`, `CONFIG GET`,
//! `WAIT`, `CLUSTER INFO`) go through [`RedisConnection::on_every_master`] or are pipelined
//! behind a keyed command, never to a node picked at random.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// Why a Redis URL cannot be used. Each carries the URL with its credentials replaced by `***`
/// (`redacted`): the message reaches logs and start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("redis URL {0:?} must start with redis://, rediss://, redis-cluster:// or rediss-cluster://")]
    Scheme(String),
    #[error("redis-cluster URL {0:?} lists no seed node (redis-cluster://host:port[,host:port...])")]
    NoSeeds(String),
    #[error("redis URL {url:?}: {source}")]
    Invalid {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// `url` with what stands before its last `@` (a user, a password, which may hold `/` or `@`)
/// replaced by `***`, so that no error message carries a password.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Where Redis is: one node or the seed nodes of a cluster.
#[derive(Clone)]
pub enum RedisTarget {
    Node(Box<redis::Client>),
    Cluster {
        /// The seed nodes as `redis://host:port` (or `rediss://`) URLs.
        seeds: Vec<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(client) => write!(f, "Node({})", client.get_connection_info().addr()),
            Self::Cluster { seeds } => write!(f, "Cluster({} seeds)", seeds.len()),
        }
    }
}

/// Bounds on every connection attempt and every reply.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for a connection to be established (the cluster client can otherwise hang).
    pub connect: Duration,
    /// Longest wait for one reply from one node.
    pub response: Duration,
    /// Longest wait for a whole request, redirections and retries included (cluster only; the
    /// client would otherwise use `response` for the whole request).
    pub overall: Duration,
    /// How long the cluster client waits before sending a refused call again (`TRYAGAIN` while a
    /// slot migrates, `CLUSTERDOWN`, `LOADING`); it sends it at most three times more.
    pub refusal_retry: Duration,
}

impl Timeouts {
    /// The wait before a refused call is sent again, unless a caller says otherwise: a
    /// millisecond, so that the refusal reaches its caller at once. Every caller has something
    /// better to do with a refusal than wait (the protocol replaces versions one by one, the API
    /// reads Postgres, the invalidator holds the tenant back and probes it), and a script is
    /// refused for as long as its slot migrates, so a longer wait only delays that: every
    /// invalidation of a migrating tenant took 0.9 s at 300 ms, 20 ms at 5 ms and 7 ms at this
    /// (`reshard_bench` in `load_tests/RESULTS.md`). The price: a failover's brief `CLUSTERDOWN`
    /// is not waited out either (`docs/operations.md`).
    pub const REFUSAL_RETRY: Duration = Duration::from_millis(1);

    /// The same bound for everything: a request that cannot finish in `limit` fails.
    pub fn all(limit: Duration) -> Self {
        Self { connect: limit, response: limit, overall: limit, refusal_retry: Self::REFUSAL_RETRY }
    }
}

impl RedisTarget {
    /// Reads a `redis://`, `rediss://`, `redis-cluster://` or `rediss-cluster://` URL.
    pub fn parse(url: &str) -> Result<Self, RedisUrlError> {
        let invalid = |source| RedisUrlError::Invalid { url: redacted(url), source };
        let cluster_scheme =
            ["redis-cluster://", "rediss-cluster://"].into_iter().find(|scheme| url.starts_with(scheme));
        if let Some(scheme) = cluster_scheme {
            let node_scheme = if scheme.starts_with("rediss") { "rediss://" } else { "redis://" };
            let rest = &url[scheme.len()..];
            // Credentials, if any, are written once before the first host and apply to all.
            let (credentials, hosts) = match rest.rsplit_once('@') {
                Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
                None => (String::new(), rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let seeds: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|host| !host.is_empty())
                .map(|host| format!("{node_scheme}{credentials}{host}"))
                .collect();
            if seeds.is_empty() {
                return Err(RedisUrlError::NoSeeds(redacted(url)));
            }
            ClusterClient::new(seeds.clone()).map_err(invalid)?;
            return Ok(Self::Cluster { seeds });
        }
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(RedisUrlError::Scheme(redacted(url)));
        }
        redis::Client::open(url).map(|client| Self::Node(Box::new(client))).map_err(invalid)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    fn cluster_client(seeds: &[String], timeouts: Timeouts) -> RedisResult<ClusterClient> {
        ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .overall_response_timeout(Some(timeouts.overall))
            .retries(3)
            .min_retry_wait(Self::refusal_retry_ms(timeouts))
            .max_retry_wait(Self::refusal_retry_ms(timeouts) + 1)
            .build()
    }

    /// [`Timeouts::refusal_retry`] in whole milliseconds, at least 1 (the client draws each wait
    /// between its minimum and maximum, so these are one millisecond apart). The client's own
    /// default, 1.28 s and more, would end three retries as a timeout, and the caller could not
    /// fall back (see `protocol::invalidate`).
    fn refusal_retry_ms(timeouts: Timeouts) -> u64 {
        u64::try_from(timeouts.refusal_retry.as_millis()).unwrap_or(u64::MAX / 2).max(1)
    }

    fn cluster_config(timeouts: Timeouts) -> ClusterConfig {
        // Both must be set: a config without a response timeout removes the client's.
        ClusterConfig::new().set_connection_timeout(timeouts.connect).set_response_timeout(timeouts.response)
    }

    /// A connection that is established on first use, so a process starts while Redis is
    /// down; requests fail (within the timeouts) until it is reachable.
    pub fn connect_lazily(&self, timeouts: Timeouts, max_reconnect_delay: Duration) -> RedisResult<RedisConnection> {
        match self {
            Self::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(1)
                    .set_max_delay(max_reconnect_delay);
                ConnectionManager::new_lazy_with_config((**client).clone(), config).map(RedisConnection::Node)
            }
            Self::Cluster { seeds } => {
                let client = Self::cluster_client(seeds, timeouts)?;
                Ok(RedisConnection::Cluster(
                    client.get_pending_async_connection_with_config(Self::cluster_config(timeouts)),
                ))
            }
        }
    }

    /// A connection established now, or an error within `timeouts.connect` (plus one reply for
    /// the cluster's topology).
    pub async fn connect(&self, timeouts: Timeouts) -> RedisResult<RedisConnection> {
        let bound = timeouts.connect + timeouts.response;
        let connecting = async {
            match self {
                Self::Node(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeouts.connect))
                        .set_response_timeout(Some(timeouts.response))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config((**client).clone(), config).await.map(RedisConnection::Node)
                }
                Self::Cluster { seeds } => {
                    let client = Self::cluster_client(seeds, timeouts)?;
                    client
                        .get_async_connection_with_config(Self::cluster_config(timeouts))
                        .await
                        .map(RedisConnection::Cluster)
                }
            }
        };
        match tokio::time::timeout(bound, connecting).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connecting to redis timed out",
                format!("no connection within {bound:?}"),
            ))),
        }
    }
}

/// A connection to a single node or to a cluster; cheap to clone (clones share the
/// underlying connections). Implements [`ConnectionLike`], so every protocol function takes it.
#[derive(Clone)]
pub enum RedisConnection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Makes a cluster client read the cluster's slots again: `key`, of a slot whose master
    /// changed, is sent where the client sends slot `via`'s commands, another master, which
    /// redirects it (`MOVED`); the client follows and rebuilds its slot map. A client whose calls
    /// to a master that stopped answering time out reconnects to that master, and can go on
    /// sending its slots there after its replica took them over. A no-op on one node.
    pub async fn reread_slots_via(&mut self, key: &str, via: u16) -> RedisResult<()> {
        let (Self::Cluster(connection), Some(via)) = (self, Slot::new(via)) else { return Ok(()) };
        let routing =
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(via, SlotAddr::Master)));
        match connection.route_command(redis::cmd("EXISTS").arg(key).clone(), routing).await? {
            Value::ServerError(error) => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Whether this connection reaches the master of the slot of `key`: an `EXISTS` of it is
    /// answered within `within`, after a redirection or not. One that does not is made to read
    /// the slots again ([`Self::reread_slots_via`], through slot `via` of another master that
    /// answers), to be checked again later. Neither waits for the connection's own response
    /// timeout (seconds in the invalidator): the calls already on their way to a frozen master
    /// wait for that, and the sooner the slots are read again the fewer of them there are.
    pub async fn follow_slot(mut self, key: &str, via: Option<u16>, within: Duration) -> bool {
        let exists = redis::cmd("EXISTS").arg(key).clone();
        let checked = tokio::time::timeout(within, exists.query_async::<i64>(&mut self)).await;
        if matches!(checked, Ok(Ok(_))) {
            return true;
        }
        if let Some(via) = via {
            let reread = tokio::time::timeout(within, self.reread_slots_via(key, via)).await;
            if !matches!(reread, Ok(Ok(()))) {
                tracing::debug!(key, via, "reading the slots again failed or timed out");
            }
        }
        false
    }

    /// Runs a keyless command on one node: the node, or any cluster node the client is connected
    /// to (for what every node knows alike, such as the cluster's topology).
    pub async fn on_any_node<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Node(connection) => cmd.query_async(connection).await,
            Self::Cluster(connection) => any_cluster_node(connection, cmd).await,
        }
    }

    /// Runs a keyless command on every master (the one node when not clustered) and returns
    /// each node's reply, labelled with its address.
    ///
    /// On a cluster the masters are the ones the cluster reports now (`CLUSTER SLOTS` from any
    /// node the client is connected to), not the ones in the client's slot map: the client
    /// refreshes that map only when a node redirects it, and after a failover keyed commands
    /// reach the promoted replica without a redirection, so its map can keep a dead master and
    /// miss the new one for as long as the process runs.
    pub async fn on_every_master<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<Vec<(String, T)>> {
        match self {
            Self::Node(connection) => {
                let reply: T = cmd.query_async(connection).await?;
                Ok(vec![("node".to_owned(), reply)])
            }
            Self::Cluster(connection) => {
                let slots = any_cluster_node(connection, redis::cmd("CLUSTER").arg("SLOTS")).await?;
                let mut replies = Vec::new();
                for (host, port) in master_addresses(slots)? {
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                    let reply = match connection.route_command(cmd.clone(), routing).await? {
                        Value::ServerError(error) => return Err(error.into()),
                        reply => T::from_redis_value(reply)?,
                    };
                    replies.push((format!("{host}:{port}"), reply));
                }
                Ok(replies)
            }
        }
    }
}

/// `cmd`'s reply from any cluster node the client is connected to.
async fn any_cluster_node<T: FromRedisValue>(connection: &mut ClusterConnection, cmd: &Cmd) -> RedisResult<T> {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    match connection.route_command(cmd.clone(), routing).await? {
        Value::ServerError(error) => Err(error.into()),
        reply => Ok(T::from_redis_value(reply)?),
    }
}

/// The address of every master in a `CLUSTER SLOTS` reply (`[first, last, [ip, port, id, …],
/// replicas…]` per slot range), each once.
fn master_addresses(reply: Value) -> RedisResult<Vec<(String, u16)>> {
    let unexpected =
        || redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "CLUSTER SLOTS did not list its masters"));
    let Value::Array(ranges) = reply else { return Err(unexpected()) };
    let mut masters: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { return Err(unexpected()) };
        let Some(Value::Array(master)) = parts.get(2) else { return Err(unexpected()) };
        let host = match master.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return Err(unexpected()),
        };
        let Some(Value::Int(port)) = master.get(1) else { return Err(unexpected()) };
        let port = u16::try_from(*port).map_err(|_| unexpected())?;
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_cannot_be_used_is_named_without_its_password() {
        let refused = [
            "redis+cluster://:s3cret@h:6380",
            "redis-cluster://user:s3c/r@et@/",
            "redis://:s3cret@h:notaport",
            "s3cret@h:6379",
        ];
        for url in refused {
            let message = RedisTarget::parse(url).expect_err(url).to_string();
            assert!(!message.contains("s3c"), "{message}");
            assert!(message.contains("***@"), "{message}");
        }
        assert_eq!(redacted("redis://h:6379/2"), "redis://h:6379/2");
    }
}
