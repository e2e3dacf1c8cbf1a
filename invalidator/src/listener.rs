//! The wake-up connection: LISTENs on the outbox channel and, on the park leader, holds the park
//! lock while the replica is idle so that writers notify (see migrations/sql/0002_cache_outbox.sql).

use std::time::Duration;

use futures::StreamExt;
use openrisk_shared::config::PostgresLink;
use openrisk_shared::{advisory_locks, outbox};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A LISTEN connection of its own (it must be a direct or session-mode connection: PgBouncer in
/// transaction mode drops LISTEN).
pub struct Listener {
    client: Client,
    wakeups: mpsc::Receiver<()>,
    leader: bool,
}

impl Listener {
    /// Connects, LISTENs on the channel the migrations define, and bounds how long parking may
    /// wait for in-flight writers (`park_wait`).
    pub async fn connect(
        database_url: &str,
        link: &PostgresLink,
        park_wait: Duration,
    ) -> Result<Self, tokio_postgres::Error> {
        let config = openrisk_shared::db::config(database_url, "openrisk-invalidator-listener", link)?;
        let (client, mut connection) = config.connect(NoTls).await?;
        // Capacity 1: wake-ups coalesce; a closed channel means the connection is gone.
        let (sender, wakeups) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = sender.try_send(());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "listener connection lost");
                        break;
                    }
                }
            }
        });
        let channel: String = client.query_one(outbox::NOTIFY_CHANNEL, &[]).await?.get(0);
        let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
        client.batch_execute(&format!("LISTEN {quoted}")).await?;
        client.batch_execute(&format!("SET lock_timeout = {}", park_wait.as_millis().max(1))).await?;
        Ok(Self { client, wakeups, leader: false })
    }

    /// True once the connection (or its driver task) has gone away.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.wakeups.is_closed()
    }

    /// Becomes the park leader if no other replica is; returns whether this one is.
    pub async fn try_lead(&mut self) -> Result<bool, tokio_postgres::Error> {
        if !self.leader {
            self.leader = self.client.query_one(outbox::TRY_LEAD, &[&advisory_locks::PARK_LEADER]).await?.get(0);
        }
        Ok(self.leader)
    }

    /// Takes the park lock exclusively, waiting for writers that saw nobody parked to commit.
    /// Returns false (not parked) when that takes longer than the park wait.
    pub async fn park(&mut self) -> Result<bool, tokio_postgres::Error> {
        match self.client.batch_execute(outbox::PARK).await {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Releases the park lock: writers stop notifying.
    pub async fn unpark(&mut self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(outbox::UNPARK).await
    }

    /// Waits for the next wake-up; returns false when the connection closed instead.
    pub async fn wait(&mut self) -> bool {
        self.wakeups.recv().await.is_some()
    }

    /// Forgets wake-ups that arrived while the replica was busy anyway.
    pub fn clear(&mut self) {
        while self.wakeups.try_recv().is_ok() {}
    }
}
