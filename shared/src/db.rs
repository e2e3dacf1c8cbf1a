//! Direct `tokio-postgres` connections (migrations, LISTEN, the outbox consumer).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// Connects with short TCP keepalives so a dead peer is noticed within seconds, and drives the
/// connection on a background task (which drops notifications; the invalidator's listener
/// drives its own connection to receive them).
pub async fn connect(url: &str, application_name: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config(url, application_name)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Parses `url` and applies the keepalive and connect-timeout settings every connection uses.
pub fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    Ok(config)
}
