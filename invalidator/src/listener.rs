//! The wake-up task: a LISTEN connection of its own, kept up with its own backoff, that wakes the
//! worker through a [`Notify`] and lends its session to the worker for the park lock (see
//! migrations/sql/0002_cache_outbox.sql and docs/architecture.md).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use openrisk_shared::Settings;
use openrisk_shared::config::PostgresLink;
use openrisk_shared::db::ConnectError;
use openrisk_shared::postgres_tls::Connection;
use openrisk_shared::{advisory_locks, outbox};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, RECONNECT_LISTENER};

/// What the LISTEN task shares with the worker: a wake-up per notification (and per
/// reconnection, since notifications sent while it was down are lost), and the current session.
#[derive(Default)]
pub struct Wakeups {
    notify: Notify,
    session: Mutex<Option<Arc<Session>>>,
}

impl Wakeups {
    /// The LISTEN session, while one is up.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).clone().filter(|session| !session.is_closed())
    }

    /// Forgets a wake-up that arrived while the worker was busy anyway.
    pub fn forget(&self) {
        let _ = self.notify.notified().now_or_never();
    }

    /// Resolves at the next wake-up (at once if one arrived since the last [`Self::forget`]).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    fn publish(&self, session: Option<Arc<Session>>) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = session;
    }
}

/// A LISTEN session (a direct or session-mode connection: PgBouncer in transaction mode drops
/// LISTEN and session locks). The worker takes the park lock on it.
pub struct Session {
    client: Client,
    /// The session's backend process on the server.
    backend_pid: i32,
    leader: AtomicBool,
}

impl Session {
    /// True once the connection has gone away.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Becomes the park leader if no other replica is; returns whether this one is.
    pub async fn try_lead(&self) -> Result<bool, tokio_postgres::Error> {
        if !self.leader.load(Ordering::Relaxed) {
            let leader: bool = self.client.query_one(outbox::TRY_LEAD, &[&advisory_locks::PARK_LEADER]).await?.get(0);
            self.leader.store(leader, Ordering::Relaxed);
        }
        Ok(self.leader.load(Ordering::Relaxed))
    }

    /// Gives up the park leadership if this session holds it, and wakes every replica to take it.
    /// Returns whether it did (a replica that does not lead woke nobody).
    pub async fn resign(&self) -> Result<bool, tokio_postgres::Error> {
        let leader = self.leader.swap(false, Ordering::Relaxed);
        if leader {
            self.client.query_one(outbox::RESIGN, &[&advisory_locks::PARK_LEADER]).await?;
        }
        Ok(leader)
    }

    /// Takes the park lock exclusively, waiting for writers that saw nobody parked to commit.
    /// Returns false (not parked) when that takes longer than the park wait.
    pub async fn park(&self) -> Result<bool, tokio_postgres::Error> {
        match self.client.batch_execute(outbox::PARK).await {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Releases the park lock: writers stop notifying.
    pub async fn unpark(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(outbox::UNPARK).await
    }

    /// Resolves once backend `predecessor` (the session this one replaces) has exited, looking
    /// again after 5 ms, then ever less often up to once a second.
    async fn outlive(&self, predecessor: i32) -> Result<(), tokio_postgres::Error> {
        let delays =
            ExponentialBuilder::new().with_min_delay(Duration::from_millis(5)).with_max_delay(Duration::from_secs(1));
        let mut delays = delays.without_max_times().build();
        while !self.client.query_one(outbox::BACKEND_GONE, &[&predecessor]).await?.get::<_, bool>(0) {
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
        }
        Ok(())
    }
}

/// Keeps a LISTEN session up until shutdown: connects (retrying with jittered exponential
/// backoff), publishes the session, wakes the worker on every notification, and starts over
/// when the connection fails (a kill, or a silent peer caught by the keepalives).
pub async fn run(wakeups: Arc<Wakeups>, settings: Arc<Settings>, metrics: Metrics, shutdown: CancellationToken) {
    let link = settings.database.link();
    let park_wait = Duration::from_millis(settings.invalidator.poll_interval_ms);
    let mut predecessor: Option<i32> = None;
    loop {
        let connect = || listen(&settings.database_url, &link, park_wait);
        let connected = connect
            .retry(openrisk_shared::db::reconnect_backoff())
            .notify(|error, delay| tracing::warn!(%error, ?delay, "LISTEN connection unavailable; the poll covers"));
        let Ok((session, connection)) = (tokio::select! {
            connected = connected => connected,
            () = shutdown.cancelled() => return,
        }) else {
            continue;
        };
        let replaced = predecessor.replace(session.backend_pid);
        if replaced.is_some() {
            metrics.reconnects.with_label_values(&[RECONNECT_LISTENER]).inc();
        }
        let session = Arc::new(session);
        wakeups.publish(Some(Arc::clone(&session)));
        metrics.listener_connected.set(1);
        // Anything notified while no session was up is lost: have the worker look.
        wakeups.notify.notify_one();
        let stopped = tokio::select! {
            () = relay(connection, &wakeups) => false,
            () = shutdown.cancelled() => true,
            never = wake_once_gone(&session, replaced, &wakeups) => match never {},
        };
        wakeups.publish(None);
        metrics.listener_connected.set(0);
        if stopped {
            return;
        }
    }
}

/// Drives the session's connection, waking the worker on each notification, until it fails.
async fn relay(mut connection: Connection, wakeups: &Wakeups) {
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(_)) => wakeups.notify.notify_one(),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection lost");
                return;
            }
        }
    }
}

/// Wakes the worker once more when the backend of the session `session` replaced has exited,
/// then never resolves. A killed backend tells its client before it releases its session locks,
/// so the worker's first try to lead on the new session may find the park leader's lock still
/// held; woken again, it leads and parks without waiting for its poll.
async fn wake_once_gone(session: &Session, predecessor: Option<i32>, wakeups: &Wakeups) -> Infallible {
    if let Some(predecessor) = predecessor
        && session.outlive(predecessor).await.is_ok()
    {
        wakeups.notify.notify_one();
    }
    std::future::pending().await
}

/// Connects, LISTENs on the channel the migrations define, and bounds how long parking may wait
/// for in-flight writers (`park_wait`). The connection is driven here until the session is set
/// up, then handed back with it.
async fn listen(
    database_url: &str,
    link: &PostgresLink,
    park_wait: Duration,
) -> Result<(Session, Connection), ConnectError> {
    let (config, tls) = openrisk_shared::db::config(database_url, "openrisk-invalidator-listener", link)?;
    let (client, mut connection) = config.connect(tls).await?;
    let set_up = async {
        let row = client.query_one(outbox::NOTIFY_CHANNEL, &[]).await?;
        let (channel, backend_pid): (String, i32) = (row.get(0), row.get(1));
        let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
        client.batch_execute(&format!("LISTEN {quoted}")).await?;
        client.batch_execute(&format!("SET lock_timeout = {}", park_wait.as_millis().max(1))).await?;
        Ok::<_, tokio_postgres::Error>(backend_pid)
    };
    let drive = futures::stream::poll_fn(|cx| connection.poll_message(cx)).for_each(|_| async {});
    let backend_pid = tokio::select! {
        set_up = set_up => set_up?,
        // The connection ended during the set-up: the check below returns its error.
        () = drive => 0,
    };
    if client.is_closed() {
        // The connection ended during the set-up: report it as the set-up's error would be.
        client.batch_execute("").await?;
    }
    Ok((Session { client, backend_pid, leader: AtomicBool::new(false) }, connection))
}
