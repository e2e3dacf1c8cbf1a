//! Shared set-up for the invalidator's tests: a database and Redis namespace of their own,
//! cached entries registered through the real protocol, and polling helpers.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::time::{Duration, Instant};

use openrisk_invalidator::Running;
use openrisk_shared::Settings;
use openrisk_shared::config::WakeMode;
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup};
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_test_support::{RedisNamespace, TestDatabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;
use uuid::Uuid;

/// The tag of a tenant's risk list, and the name its entry is cached under.
pub const RISK_LIST_TAG: &str = "risks";
const RISK_LIST_NAME: &str = "list";

pub struct Harness {
    pub db: TestDatabase,
    pub namespace: RedisNamespace,
    pub sql: Client,
    pub redis: RedisConnection,
    pub keyspace: Keyspace,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(TestDatabase::create().await, RedisNamespace::new()).await
    }

    pub async fn with(db: TestDatabase, namespace: RedisNamespace) -> Self {
        let sql = db.connect().await;
        let redis = connect_redis(&namespace.url).await;
        Self { keyspace: namespace.keyspace(), db, namespace, sql, redis }
    }

    /// Settings for a replica of this harness: poll mode off, short poll interval.
    pub fn settings(&self) -> Settings {
        let mut settings = openrisk_test_support::settings_for(&self.db, &self.namespace);
        settings.invalidator.poll_interval_ms = 100;
        settings.invalidator.mode = WakeMode::Listen;
        settings
    }

    pub async fn start(&self, settings: Settings) -> Running {
        openrisk_invalidator::start(settings).await.expect("start invalidator")
    }

    /// [`Self::settings`] with the poll two minutes away, longer than any test waits: only a
    /// notification (or a linger) can get a write applied in time.
    pub fn settings_without_polling(&self) -> Settings {
        let mut settings = self.settings();
        settings.invalidator.poll_interval_ms = 120_000;
        settings
    }

    /// Starts a replica whose poll is two minutes away and waits (up to `within`) until it has
    /// parked: from then on only a notification wakes it.
    pub async fn start_parked(&self, within: Duration) -> Running {
        let running = self.start(self.settings_without_polling()).await;
        wait_until_parked(&running, within).await;
        running
    }

    /// Caches an entry named `name`, built from `tags` (plus `all`); returns its key. A fill
    /// rejected because an invalidation landed in between is simply retried, as a reader would.
    pub async fn cache(&mut self, tenant: Uuid, name: &str, tags: &[String]) -> String {
        let key = self.keyspace.entry_key(tenant, 1, name, &[]);
        let tags = with_all(tags);
        for _ in 0..50 {
            let Lookup::Miss(snapshot) =
                protocol::lookup(&mut self.redis, &self.keyspace, tenant, &key, &tags).await.unwrap()
            else {
                return key;
            };
            let snapshot = protocol::create_missing_versions(&mut self.redis, &self.keyspace, tenant, &snapshot, 700)
                .await
                .unwrap();
            let entry =
                Fill { entry_key: &key, body: name.as_bytes(), etag: "e", ttl_secs: 600, dependencies_ttl_secs: 700 };
            if protocol::fill(&mut self.redis, &self.keyspace, tenant, &snapshot, entry).await.unwrap() {
                return key;
            }
        }
        panic!("could not cache {name}: every fill was rejected");
    }

    /// Whether the entry is still served (a hit) for these tags.
    pub async fn is_cached(&mut self, tenant: Uuid, key: &str, tags: &[String]) -> bool {
        let tags = with_all(tags);
        matches!(protocol::lookup(&mut self.redis, &self.keyspace, tenant, key, &tags).await.unwrap(), Lookup::Hit(_))
    }

    /// Caches `tenant`'s risk list (tagged `risks`, which every risk write invalidates); returns
    /// its key.
    pub async fn cache_risk_list(&mut self, tenant: Uuid) -> String {
        self.cache(tenant, RISK_LIST_NAME, &[RISK_LIST_TAG.into()]).await
    }

    /// The key [`Self::cache_risk_list`] caches `tenant`'s risk list under.
    pub fn risk_list_key(&self, tenant: Uuid) -> String {
        self.keyspace.entry_key(tenant, 1, RISK_LIST_NAME, &[])
    }

    /// Whether `tenant`'s risk list cached under `key` is still served.
    pub async fn risk_list_is_cached(&mut self, tenant: Uuid, key: &str) -> bool {
        self.is_cached(tenant, key, &[RISK_LIST_TAG.into()]).await
    }

    /// Caches `tenant`'s risk list, inserts a risk titled `title`, waits (up to `within`) until
    /// the outbox is drained and asserts that the list is no longer served.
    pub async fn assert_a_new_risk_invalidates_the_risk_list(&mut self, tenant: Uuid, title: &str, within: Duration) {
        let key = self.cache_risk_list(tenant).await;
        self.risk(tenant, title).await;
        self.drained(within).await;
        assert!(!self.risk_list_is_cached(tenant, &key).await, "the risk list was invalidated by {title:?}");
    }

    pub async fn outbox_len(&self) -> i64 {
        self.sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await.unwrap().get(0)
    }

    pub async fn tenant(&self, slug: &str) -> Uuid {
        self.sql
            .query_one("INSERT INTO tenants (slug, name) VALUES ($1, $1) RETURNING id", &[&slug])
            .await
            .unwrap()
            .get(0)
    }

    /// A new tenant, tried as `<slug>-0`, `<slug>-1`, … until `wanted` holds for one (a tenant
    /// whose slot a given cluster master serves, say).
    pub async fn tenant_where(&self, slug: &str, wanted: impl Fn(Uuid) -> bool) -> Uuid {
        for attempt in 0.. {
            let tenant = self.tenant(&format!("{slug}-{attempt}")).await;
            if wanted(tenant) {
                return tenant;
            }
        }
        unreachable!("the attempts never end")
    }

    pub async fn id(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Uuid {
        self.sql.query_one(sql, params).await.unwrap_or_else(|error| panic!("{sql}: {error:?}")).get(0)
    }

    pub async fn risk(&self, tenant: Uuid, title: &str) -> Uuid {
        self.id(
            "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, $2, 3, 3) RETURNING id",
            &[&tenant, &title],
        )
        .await
    }

    /// Waits until some replica holds a claimed batch: a session of the invalidator idle in a
    /// transaction that has a transaction id (the claim's `DELETE` took one; a parked replica's
    /// open transaction has none).
    pub async fn until_a_replica_holds_a_claim(&self, within: Duration) {
        let holding = "SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'openrisk-invalidator' AND datname = current_database()
                         AND state = 'idle in transaction' AND backend_xid IS NOT NULL";
        let sql = &self.sql;
        eventually("a replica holds a claimed batch", within, || async move {
            sql.query_one(holding, &[]).await.unwrap().get::<_, i64>(0) >= 1
        })
        .await;
    }

    /// Waits until the outbox is empty (everything applied and acknowledged).
    pub async fn drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.outbox_len().await;
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "outbox still holds {left} events after {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fills the outbox with `count` events of one tenant, each invalidating its own risk tag.
pub async fn flood_outbox(h: &Harness, tenant: uuid::Uuid, count: i32) {
    h.sql
        .execute(
            "INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
             SELECT $1, 'risks', 'UPDATE', ARRAY['risk:' || g, 'risks'] FROM generate_series(1, $2) g",
            &[&tenant, &count],
        )
        .await
        .unwrap();
}

pub fn with_all(tags: &[String]) -> Vec<Tag> {
    std::iter::once(Tag::all()).chain(tags.iter().map(|tag| Tag::parse(tag).unwrap())).collect()
}

/// A connection of the kind the invalidator uses (single node or cluster).
pub async fn connect_redis(url: &str) -> RedisConnection {
    RedisTarget::parse(url).unwrap().connect(Timeouts::all(Duration::from_secs(5))).await.unwrap()
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `running` has parked (it leads and sleeps until a notification or the poll).
pub async fn wait_until_parked(running: &Running, within: Duration) {
    let parked = running.metrics.parked.clone();
    eventually("replica parks", within, || {
        let parked = parked.clone();
        async move { parked.get() == 1 }
    })
    .await;
}

/// Waits until `running` has failed `at_least` batches on `kind` (`redis`, `postgres`,
/// `redis_replication`, as `openrisk_invalidator_errors_total` labels them).
pub async fn until_batches_failed(running: &Running, kind: &'static str, at_least: u64, within: Duration) {
    let errors = running.metrics.errors.clone();
    eventually(&format!("{at_least} failed batches ({kind})"), within, || {
        let errors = errors.clone();
        async move { errors.with_label_values(&[kind]).get() >= at_least }
    })
    .await;
}

/// A session of the test's own that LISTENs on the writers' wake-up channel.
pub struct WakeupListener {
    client: Client,
    received: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// The payload [`WakeupListener::writers_notifications`] marks its end with.
const SENTINEL: &str = "test-sentinel";

impl WakeupListener {
    pub async fn start(h: &Harness) -> Self {
        let (config, tls) = openrisk_shared::db::config(&h.db.url, "test-listener", &Default::default()).unwrap();
        let (client, mut connection) = config.connect(tls).await.unwrap();
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                    let _ = sender.send(notification.payload().to_owned());
                }
            }
        });
        client.batch_execute("LISTEN openrisk_cache_wakeup").await.unwrap();
        Self { client, received }
    }

    /// How many wake-ups were sent since the last call (by writers, or by replicas handing events
    /// on). A sentinel notified now arrives after every notification committed before it, so none
    /// still on its way is missed.
    pub async fn notifications(&mut self) -> usize {
        self.client.batch_execute(&format!("SELECT pg_notify('openrisk_cache_wakeup', '{SENTINEL}')")).await.unwrap();
        let mut count = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.received.recv()).await {
                Ok(Some(payload)) if payload == SENTINEL => return count,
                Ok(Some(_)) => count += 1,
                _ => panic!("the sentinel notification never arrived"),
            }
        }
    }

    /// The session, to take the park lock on as a parked replica would.
    pub fn session(&self) -> &Client {
        &self.client
    }
}

/// A plain HTTP/1.1 GET against the replica's endpoints: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}
