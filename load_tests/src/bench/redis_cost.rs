//! What requests cost inside Redis: `INFO commandstats` reset before a workload and read after
//! it, so each workload's Redis time per answered request is its own, summed over every command
//! it sent. Commandstats time only the commands' execution: reading requests off the sockets,
//! parsing them and writing the replies are not in it, so Redis's whole CPU per request (`/proc`)
//! is larger, and only that says how many requests one Redis core serves. And the longest single command while a tag with many entries is invalidated
//! (`SLOWLOG`), the bound on how long one write can hold Redis for every tenant. On a Redis
//! Cluster every figure is taken on every master and summed (the longest command: the longest
//! on any master).

use std::collections::BTreeMap;

use openrisk_shared::redis_connection::RedisConnection;
use serde_json::{Value, json};

/// Calls and microseconds per Redis command, accumulated over runs.
#[derive(Debug, Clone, Default)]
pub struct CommandStats(BTreeMap<String, (u64, f64)>);

impl CommandStats {
    /// Parses the `cmdstat_<name>:calls=…,usec=…` lines of `INFO commandstats`.
    pub fn parse(info: &str) -> Self {
        let stats = info
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |wanted: &str| {
                    rest.split(',').find_map(|kv| kv.split_once('=').filter(|(key, _)| *key == wanted).map(|(_, v)| v))
                };
                let calls = field("calls")?.parse().ok()?;
                let usec = field("usec")?.parse().ok()?;
                Some((name.to_owned(), (calls, usec)))
            })
            .collect();
        Self(stats)
    }

    pub fn add(&mut self, other: &CommandStats) {
        for (name, (calls, usec)) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }

    /// Redis time per answered request over every command but the benchmark's own
    /// (`info`, `config`), in microseconds.
    pub fn usec_per_request(&self, requests: u64) -> f64 {
        let usec: f64 = self.0.iter().filter(|(name, _)| !is_bookkeeping(name)).map(|(_, (_, usec))| usec).sum();
        usec / requests.max(1) as f64
    }

    /// Per command: calls and µs per answered request, and µs per call.
    pub fn to_json(&self, requests: u64) -> Value {
        let per_command: serde_json::Map<String, Value> = self
            .0
            .iter()
            .filter(|(name, _)| !is_bookkeeping(name))
            .map(|(name, (calls, usec))| {
                let per_call = usec / (*calls).max(1) as f64;
                let per_request = usec / requests.max(1) as f64;
                (name.clone(), json!({"calls": calls, "usec_per_call": per_call, "usec_per_request": per_request}))
            })
            .collect();
        json!({"usec_per_request": self.usec_per_request(requests), "commands": per_command})
    }
}

/// Commands the benchmark itself sends (Redis 7 names subcommands `config|resetstat`).
fn is_bookkeeping(name: &str) -> bool {
    let command = name.split('|').next().unwrap_or(name);
    matches!(command, "info" | "config" | "slowlog" | "ping" | "client" | "hello" | "select" | "dbsize")
}

/// Runs a keyless command on the node or every master, ignoring the replies.
async fn everywhere(redis: &mut RedisConnection, cmd: &redis::Cmd) -> redis::RedisResult<()> {
    let _: Vec<(String, redis::Value)> = redis.on_every_master(cmd).await?;
    Ok(())
}

/// Zeroes the command statistics.
pub async fn reset(redis: &mut RedisConnection) -> redis::RedisResult<()> {
    everywhere(redis, redis::cmd("CONFIG").arg("RESETSTAT")).await
}

/// The command statistics since the last [`reset`].
pub async fn read(redis: &mut RedisConnection) -> redis::RedisResult<CommandStats> {
    let infos: Vec<(String, String)> = redis.on_every_master(redis::cmd("INFO").arg("commandstats")).await?;
    let mut stats = CommandStats::default();
    for (_, info) in infos {
        stats.add(&CommandStats::parse(&info));
    }
    Ok(stats)
}

/// Keys stored (`DBSIZE`, summed over the masters).
pub async fn keys(redis: &mut RedisConnection) -> redis::RedisResult<u64> {
    let sizes: Vec<(String, u64)> = redis.on_every_master(&redis::cmd("DBSIZE")).await?;
    Ok(sizes.into_iter().map(|(_, size)| size).sum())
}

/// Logs every command from now on in the slow log, emptied.
pub async fn record_every_command(redis: &mut RedisConnection) -> redis::RedisResult<()> {
    everywhere(redis, redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0)).await?;
    everywhere(redis, redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(100_000)).await?;
    everywhere(redis, redis::cmd("SLOWLOG").arg("RESET")).await
}

/// The longest command in the slow log (µs and its name), and the number of entries, then
/// restores the default threshold.
pub async fn longest_command(redis: &mut RedisConnection) -> redis::RedisResult<(u64, String, usize)> {
    let logs: Vec<(String, Vec<redis::Value>)> =
        redis.on_every_master(redis::cmd("SLOWLOG").arg("GET").arg(100_000)).await?;
    everywhere(redis, redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(10_000)).await?;
    let entries: Vec<redis::Value> = logs.into_iter().flat_map(|(_, entries)| entries).collect();
    let count = entries.len();
    let longest = entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else { return None };
            let micros = match fields.get(2)? {
                redis::Value::Int(micros) => u64::try_from(*micros).ok()?,
                _ => return None,
            };
            let name = match fields.get(3)? {
                redis::Value::Array(args) => match args.first()? {
                    redis::Value::BulkString(name) => String::from_utf8_lossy(name).into_owned(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (!is_bookkeeping(&name.to_lowercase())).then_some((micros, name))
        })
        .max()
        .unwrap_or_default();
    Ok((longest.0, longest.1, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_and_summed_without_the_benchmarks_own_commands() {
        let info = "# Commandstats\r\ncmdstat_mget:calls=10,usec=30,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=2,usec=500,usec_per_call=250.00\r\ncmdstat_config|resetstat:calls=1,usec=40,usec_per_call=40.00\r\ncmdstat_get:calls=5,usec=5,usec_per_call=1.00\r\n";
        let mut stats = CommandStats::parse(info);
        assert_eq!(stats.usec_per_request(10), 3.5);
        stats.add(&CommandStats::parse(info));
        assert_eq!(stats.usec_per_request(20), 3.5);
        assert_eq!(stats.to_json(20)["commands"]["mget"]["calls"], 20);
        assert!(stats.to_json(20)["commands"].get("info").is_none());
        assert!(stats.to_json(20)["commands"].get("config|resetstat").is_none());
    }
}
