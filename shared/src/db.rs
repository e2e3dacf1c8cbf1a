//! Direct `tokio-postgres` connections (migrations, LISTEN, the outbox consumer).

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::PostgresLink;
use crate::postgres_tls::{self, Connector, PostgresTlsError};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// With its causes: tokio-postgres says only "db error" or "error performing TLS handshake"
    /// and keeps the server's message or the certificate's fault in them.
    #[error("{}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Tls(#[from] PostgresTlsError),
}

/// `error` followed by each of its causes, `: `-separated.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// Connects with the settings of `link` (so a silent peer is noticed within seconds, on both
/// ends) and the TLS the URL asks for ([`postgres_tls`]), and drives the connection on a
/// background task (which drops notifications; the invalidator's listener drives its own
/// connection to receive them).
pub async fn connect(url: &str, application_name: &str, link: &PostgresLink) -> Result<Client, ConnectError> {
    let (config, tls) = config(url, application_name, link)?;
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Longest pause of [`reconnect_backoff`].
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Jittered exponential backoff, 50 ms to [`MAX_RECONNECT_DELAY`], without end: how both
/// processes' connections of their own to Postgres reconnect (and the invalidator retries a
/// batch that failed).
pub fn reconnect_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_RECONNECT_DELAY)
        .without_max_times()
}

/// Parses `url` and applies `link`: connect timeout, the client's keepalives and TCP user
/// timeout, and the same for the server's side of the session as start-up options (appended
/// to any the URL gives); with the connector for the URL's TLS settings.
pub fn config(
    url: &str,
    application_name: &str,
    link: &PostgresLink,
) -> Result<(tokio_postgres::Config, Connector), ConnectError> {
    let (url, tls) = postgres_tls::split(url)?;
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(application_name).connect_timeout(link.connect_timeout).keepalives(link.keepalives);
    if link.keepalives {
        config
            .keepalives_idle(Duration::from_secs(link.keepalive_idle_secs.into()))
            .keepalives_interval(Duration::from_secs(link.keepalive_interval_secs.into()))
            .keepalives_retries(link.keepalive_retries);
    }
    if link.tcp_user_timeout_ms > 0 {
        config.tcp_user_timeout(Duration::from_millis(link.tcp_user_timeout_ms.into()));
    }
    let server_side = link.server_options().into_iter().map(|(name, value)| format!("-c {name}={value}"));
    let options: Vec<String> = config.get_options().map(str::to_owned).into_iter().chain(server_side).collect();
    if !options.is_empty() {
        config.options(options.join(" "));
    }
    Ok((config, tls))
}

/// A position in a Postgres server's write-ahead log (`pg_lsn`): what a replica has replayed,
/// or where the primary was when an invalidation was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Text that is not a `pg_lsn` (`<hex>/<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position of the form <hex>/<hex>")]
pub struct LsnError(String);

impl std::str::FromStr for Lsn {
    type Err = LsnError;

    /// Parses Postgres' spelling, e.g. `16/B374D848`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || LsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let part = |hex: &str| {
            (!hex.is_empty() && hex.len() <= 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten().ok_or_else(invalid)
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

impl std::fmt::Display for Lsn {
    /// Postgres' spelling, so it can be given back as `'…'::pg_lsn`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// Bytes of WAL from `earlier` to `self` (zero when `earlier` is not earlier).
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_round_trip_through_postgres_spelling() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("0/0".parse::<Lsn>().unwrap() < lsn);
        for bad in ["", "16", "/1", "1/", "x/1", "1/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
        assert_eq!(lsn.bytes_after(Lsn(0x16_0000_0000)), 0xB374_D848);
        assert_eq!(Lsn(1).bytes_after(lsn), 0);
    }
}
