//! Revocations, and every other change of a token, reach every API process the moment they
//! commit. Each process trusts a token it verified for `cache.token_cache_secs`; migrations 14
//! and 15 announce on a channel every change of what a verification reads (a revocation, another
//! role or tenant, a deletion or `TRUNCATE`), and this task listens on it, on a connection of its
//! own kept up with its own backoff, and has the verifier forget the token named: its next
//! request looks it up again. An announcement is only ever a reason to ask Postgres (any role
//! that can connect may `NOTIFY`), so a false one costs a lookup and locks nobody out.
//!
//! While no connection listens, a cached verification still ends within `token_cache_secs`, and
//! each new connection forgets every cached verification: what was announced meanwhile is lost.
//! A connection is trusted once it has heard a probe announced from another session (one of the
//! pool's), the way revocations travel; one that does not (PgBouncer in transaction mode hands
//! `LISTEN` and `NOTIFY` to different server sessions) is given up with a warning, and the next
//! one tried five minutes later.

use std::sync::Weak;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use openrisk_shared::Settings;
use openrisk_shared::db::{ConnectError, MAX_RECONNECT_DELAY, reconnect_backoff};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use uuid::Uuid;

use crate::app::AppState;

/// The query that names the channel, as the migrations define it.
const CHANNEL_QUERY: &str = "SELECT api_token_channel()";
/// How often a connection with nothing to relay checks that the application still runs.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// How long after a connection that could not hear the probe the next one is tried.
const DEAF_RETRY: Duration = Duration::from_secs(300);

/// Why no connection listens.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    /// Connecting or a query failed (with the server's message, which tokio-postgres keeps in
    /// the error's causes).
    #[error(transparent)]
    Postgres(#[from] ConnectError),
    #[error("the probe could not be announced: {0}")]
    Probe(#[from] sea_orm::DbErr),
    #[error("the connection ended")]
    Closed,
    #[error("the connection was not set up within {0:?}")]
    SetUpTimedOut(Duration),
    #[error("the connection does not hear an announcement from another session within {0:?}")]
    Deaf(Duration),
}

impl From<tokio_postgres::Error> for ListenError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error.into())
    }
}

/// A connection that listens: its client, and what it hears (closed when the connection ends).
struct Listening {
    client: Client,
    announcements: mpsc::UnboundedReceiver<String>,
    /// Drives the connection; stopped when this value goes (a connection given up mid-query
    /// would otherwise wait for its answer).
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Listens for revocations until the application `state` belongs to is gone.
pub async fn follow(state: Weak<AppState>) {
    let mut delays = reconnect_backoff().build();
    while let Some((settings, pool)) = state.upgrade().map(|state| (state.settings.clone(), state.db.conn.clone())) {
        let listening = listen(&settings, &pool).await;
        drop(pool);
        let pause = match listening {
            Ok(listening) => {
                delays = reconnect_backoff().build();
                let Some(state_now) = state.upgrade() else { return };
                state_now.metrics.set_token_revocations_heard(true);
                state_now.tokens.forget_every_token();
                drop(state_now);
                let ended = relay(listening, &state).await;
                let Some(state_now) = state.upgrade() else { return };
                state_now.metrics.set_token_revocations_heard(false);
                if let Err(error) = ended {
                    tracing::warn!(%error, "the connection for token revocations was lost; reconnecting");
                }
                delays.next()
            }
            Err(error @ ListenError::Deaf(_)) => {
                tracing::warn!(
                    %error,
                    "token revocations are not heard (DATABASE_URL through PgBouncer in transaction mode? \
                     set database.listen_url): a token revoked elsewhere stops working here within \
                     cache.token_cache_secs"
                );
                Some(DEAF_RETRY)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for token revocations; retrying");
                delays.next()
            }
        };
        tokio::time::sleep(pause.unwrap_or(MAX_RECONNECT_DELAY)).await;
    }
}

/// `database.listen_url`, or the primary's URL when it is absent or empty.
fn listen_url(settings: &Settings) -> String {
    let listen_url = settings.database.listen_url.as_deref().filter(|url| !url.is_empty());
    listen_url.unwrap_or(&settings.database_url).to_owned()
}

/// Connects to `database.listen_url`, listens on the channel (simple queries only: nothing a
/// pooler must keep between statements), and waits for a probe announced through `pool`: each
/// of the two within the connect timeout, whatever stalls (the TCP connect, TLS, start-up).
async fn listen(settings: &Settings, pool: &DatabaseConnection) -> Result<Listening, ListenError> {
    let limit = settings.database.link().connect_timeout;
    let (mut listening, probe) = tokio::time::timeout(limit, subscribe_and_probe(settings, pool))
        .await
        .map_err(|_| ListenError::SetUpTimedOut(limit))??;
    let sent = tokio::time::Instant::now();
    // What arrives before the probe is covered: every verification is forgotten next.
    loop {
        let announcement = tokio::time::timeout(limit, listening.announcements.recv())
            .await
            .map_err(|_| ListenError::Deaf(sent.elapsed()))?;
        match announcement {
            Some(announcement) if announcement == probe => return Ok(listening),
            Some(_) => {}
            None => return Err(ListenError::Closed),
        }
    }
}

/// Connects, starts the task that drives the connection, listens, and announces a probe of its
/// own through `pool`; returns the listening connection and the probe.
async fn subscribe_and_probe(
    settings: &Settings,
    pool: &DatabaseConnection,
) -> Result<(Listening, String), ListenError> {
    let link = settings.database.link();
    let (config, tls) = openrisk_shared::db::config(&listen_url(settings), "openrisk-api-token-revocations", &link)?;
    let (client, mut connection) = config.connect(tls).await.map_err(ConnectError::from)?;
    let (heard, announcements) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if heard.send(notification.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %ConnectError::from(error), "the connection for token revocations failed");
                    return;
                }
            }
        }
    });
    let listening = Listening { client, announcements, driver };
    subscribe(&listening.client).await?;
    let probe = format!("probe:{}", Uuid::new_v4());
    pool.execute_unprepared(&format!("SELECT pg_notify(api_token_channel(), '{probe}')")).await?;
    Ok((listening, probe))
}

/// Listens on the channel the migrations name.
async fn subscribe(client: &Client) -> Result<(), ListenError> {
    let rows = client.simple_query(CHANNEL_QUERY).await?;
    let channel = rows.iter().find_map(|row| match row {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    let channel = channel.ok_or(ListenError::Closed)?;
    client.batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\""))).await?;
    Ok(())
}

/// Has the verifier forget each token announced, until the connection fails (`Err`: the next
/// connection forgets every token) or the application is gone (`Ok`).
async fn relay(mut listening: Listening, state: &Weak<AppState>) -> Result<(), ListenError> {
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    loop {
        tokio::select! {
            announcement = listening.announcements.recv() => {
                let announcement = announcement.ok_or(ListenError::Closed)?;
                let Some(state) = state.upgrade() else { return Ok(()) };
                match hash_announced(&announcement) {
                    Announced::EveryToken => state.tokens.forget_every_token(),
                    Announced::Token(hash) => state.tokens.forget(&hash),
                    Announced::Nothing => {}
                }
            }
            _ = liveness.tick() => if state.strong_count() == 0 {
                return Ok(());
            },
        }
    }
}

/// What an announcement names.
#[derive(Debug, PartialEq, Eq)]
enum Announced {
    /// Every token (the table was truncated): an empty payload.
    EveryToken,
    /// The token with this SHA-256 (64 hex digits).
    Token([u8; 32]),
    /// No token: a probe, or a payload this build does not know.
    Nothing,
}

fn hash_announced(payload: &str) -> Announced {
    if payload.is_empty() {
        return Announced::EveryToken;
    }
    let hash = hex::decode(payload).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    hash.map_or(Announced::Nothing, Announced::Token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_every_token_one_token_by_its_hash_or_nothing() {
        assert_eq!(hash_announced(""), Announced::EveryToken);
        assert_eq!(hash_announced(&"0a".repeat(32)), Announced::Token([10; 32]));
        for nothing in ["probe:1d5c", "0a", &"0a".repeat(33), &"zz".repeat(32)] {
            assert_eq!(hash_announced(nothing), Announced::Nothing, "{nothing}");
        }
    }
}
