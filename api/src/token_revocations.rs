//! Revocations reach every API process the moment they commit. Each process trusts a token it
//! verified for `cache.token_cache_secs`; migration 0014 announces every revocation (and every
//! deletion or `TRUNCATE` of tokens) on a channel, and this task listens on it, on a connection
//! of its own kept up with its own backoff, and has the verifier forget the token named.
//!
//! While no connection listens, a cached verification still ends within `token_cache_secs`, and
//! each new connection forgets every cached verification: what was announced meanwhile is lost.
//! A connection that cannot hear its own announcement (PgBouncer in transaction mode hands
//! `LISTEN` and `NOTIFY` to different server sessions) is given up with a warning, and the next
//! one tried five minutes later.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use openrisk_shared::Settings;
use openrisk_shared::config::PostgresLink;
use openrisk_shared::db::ConnectError;
use openrisk_shared::postgres_tls::Connection;
use tokio_postgres::{AsyncMessage, Client};

use crate::app::AppState;

/// The channel's name, as the migrations define it.
const CHANNEL: &str = "SELECT api_token_channel()";
/// What a new connection announces to itself, to learn that announcements reach it.
const PROBE: &str = "listening";
/// How often a connection with nothing to relay checks that the application still runs.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Why no connection listens.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the connection ended before it was listening")]
    Closed,
    #[error("the connection was not set up within {0:?}")]
    SetUpTimedOut(Duration),
    #[error("the connection does not hear its own announcement within {0:?}")]
    Deaf(Duration),
}

/// Listens for revocations until the application `state` belongs to is gone.
pub async fn follow(state: Weak<AppState>) {
    let mut delays = reconnect_delays();
    while let Some((url, link)) =
        state.upgrade().map(|state| (listen_url(&state.settings), state.settings.database.link()))
    {
        match listen(&url, &link).await {
            Ok((_client, connection)) => {
                delays = reconnect_delays();
                let Some(state_now) = state.upgrade() else { return };
                state_now.metrics.set_token_revocations_heard(true);
                state_now.tokens.forget_every_token();
                drop(state_now);
                let ended = relay(connection, &state).await;
                let Some(state_now) = state.upgrade() else { return };
                state_now.metrics.set_token_revocations_heard(false);
                if let Err(error) = ended {
                    tracing::warn!(%error, "the connection for token revocations was lost; reconnecting");
                }
            }
            Err(error @ ListenError::Deaf(_)) => {
                tracing::warn!(
                    %error,
                    "token revocations are not heard (DATABASE_URL through PgBouncer in transaction mode? \
                     set database.listen_url): a token revoked elsewhere stops working here within \
                     cache.token_cache_secs"
                );
                tokio::time::sleep(DEAF_RETRY).await;
                continue;
            }
            Err(error) => tracing::warn!(%error, "cannot listen for token revocations; retrying"),
        }
        tokio::time::sleep(delays.next().unwrap_or(MAX_DELAY)).await;
    }
}

/// `database.listen_url`, or the primary's URL when it is absent or empty.
fn listen_url(settings: &Settings) -> String {
    let listen_url = settings.database.listen_url.as_deref().filter(|url| !url.is_empty());
    listen_url.unwrap_or(&settings.database_url).to_owned()
}

const MAX_DELAY: Duration = Duration::from_secs(5);
/// How long after a connection that could not hear its own announcement the next one is tried.
const DEAF_RETRY: Duration = Duration::from_secs(300);

/// Jittered delays between connection attempts, from 50 ms up to [`MAX_DELAY`].
fn reconnect_delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_DELAY)
        .without_max_times()
        .build()
}

/// Connects, listens on the channel and waits for its own probe announcement to come back, within
/// the link's connect timeout. The connection is driven here until then, then handed back.
async fn listen(url: &str, link: &PostgresLink) -> Result<(Client, Connection), ListenError> {
    let (config, tls) = openrisk_shared::db::config(url, "openrisk-api-token-revocations", link)?;
    let (client, mut connection) = config.connect(tls).await.map_err(ConnectError::from)?;
    let ready = AtomicBool::new(false);
    let set_up = async {
        let channel: String = client.query_one(CHANNEL, &[]).await?.get(0);
        client.batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\""))).await?;
        client.execute("SELECT pg_notify($1, $2)", &[&channel, &PROBE]).await?;
        ready.store(true, Ordering::Relaxed);
        Ok::<_, ListenError>(())
    };
    // The connection is driven throughout: the probe comes back before the `NOTIFY` completes.
    let (probe_heard, heard) = tokio::sync::oneshot::channel();
    let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
    let drive = async {
        let mut probe_heard = Some(probe_heard);
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(notification) = message?
                && notification.payload() == PROBE
                && let Some(probe_heard) = probe_heard.take()
            {
                let _ = probe_heard.send(());
            }
        }
        Err(ListenError::Closed)
    };
    let listening = async {
        set_up.await?;
        heard.await.map_err(|_| ListenError::Closed)
    };
    let listening = async {
        tokio::select! {
            ended = drive => ended,
            listening = listening => listening,
        }
    };
    match tokio::time::timeout(link.connect_timeout, listening).await {
        Ok(listening) => listening?,
        Err(_) if ready.load(Ordering::Relaxed) => return Err(ListenError::Deaf(link.connect_timeout)),
        Err(_) => return Err(ListenError::SetUpTimedOut(link.connect_timeout)),
    }
    drop(messages);
    Ok((client, connection))
}

/// Has the verifier forget each token announced, until the connection fails (`Err`) or the
/// application is gone (`Ok`).
async fn relay(mut connection: Connection, state: &Weak<AppState>) -> Result<(), ListenError> {
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    loop {
        tokio::select! {
            message = messages.next() => {
                if let AsyncMessage::Notification(notification) = message.ok_or(ListenError::Closed)?? {
                    let Some(state) = state.upgrade() else { return Ok(()) };
                    state.tokens.forget_announced(notification.payload()).await;
                }
            }
            _ = liveness.tick() => if state.strong_count() == 0 {
                return Ok(());
            },
        }
    }
}
