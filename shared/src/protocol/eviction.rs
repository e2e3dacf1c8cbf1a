//! Whether a Redis server's eviction and persistence settings suit the protocol.

use crate::redis_connection::RedisConnection;

/// What is wrong with a Redis `maxmemory-policy` for this protocol, if anything.
///
/// Evicting any key is safe (a lost version acts as an invalidation, a lost entry is a miss, a
/// lost member set only leaves dead entries to expire), but what gets evicted decides the hit
/// rate: an LRU or LFU policy keeps the versions every hit reads, while `*-random` and
/// `volatile-ttl` evict them as readily as cold entries, and `noeviction` with a `maxmemory`
/// makes fills fail once Redis is full.
pub fn eviction_policy_problem(policy: &str, maxmemory: u64) -> Option<String> {
    match policy {
        "volatile-lru" | "volatile-lfu" | "allkeys-lru" | "allkeys-lfu" => None,
        "noeviction" if maxmemory == 0 => None,
        "noeviction" => Some(
            "maxmemory-policy is noeviction with a maxmemory: once Redis is full no response can be \
             cached; use allkeys-lru or volatile-lru"
                .into(),
        ),
        other => Some(format!(
            "maxmemory-policy is {other}: it evicts the tag versions every hit reads as readily as cold \
             entries, which is safe but empties the cache under them; use allkeys-lru or volatile-lru"
        )),
    }
}

/// What is wrong with a Redis server's persistence for this protocol, if anything: `save` is
/// its RDB schedule (empty when off), `appendonly` whether it keeps an AOF.
///
/// A server that saves its data loads it again when it restarts, entries and the versions they
/// were filled under together, as they were before the invalidations the file missed (those
/// after the last snapshot, or the last second of an AOF). Those pairs match again, so lookups
/// serve them until their TTL, and no outbox event is left to replace the versions. A server
/// without persistence restarts empty, which is only cold.
pub fn persistence_problem(save: &str, appendonly: &str) -> Option<String> {
    let saves = !save.trim().is_empty();
    let appends = appendonly.eq_ignore_ascii_case("yes");
    (saves || appends).then(|| {
        let what = match (saves, appends) {
            (true, true) => format!("save is \"{save}\" and appendonly is yes"),
            (true, false) => format!("save is \"{save}\""),
            _ => "appendonly is yes".to_owned(),
        };
        format!(
            "{what}: a restart loads entries and versions from before the invalidations the file \
             missed, and serves them stale until their TTL; run Redis with --save \"\" and \
             --appendonly no, or flush the cache's keys after every restart"
        )
    })
}

/// What [`check_server_settings`] found wrong, if anything, on the first master that has it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SettingsProblems {
    pub eviction: Option<String>,
    pub persistence: Option<String>,
}

/// Reads the eviction and persistence settings of the server (every master of a cluster) and
/// logs a loud warning for each that does not suit the protocol; returns the first problem of
/// each kind, so callers can export them.
pub async fn check_server_settings(conn: &mut RedisConnection) -> redis::RedisResult<SettingsProblems> {
    let names = ["maxmemory-policy", "maxmemory", "save", "appendonly"];
    let settings: Vec<(String, std::collections::HashMap<String, String>)> =
        conn.on_every_master(redis::cmd("CONFIG").arg("GET").arg(&names[..])).await?;
    let mut problems = SettingsProblems::default();
    for (node, settings) in settings {
        let setting = |name: &str| settings.get(name).map_or("", String::as_str);
        let policy = setting("maxmemory-policy");
        let maxmemory = setting("maxmemory").parse().unwrap_or(0);
        if let Some(problem) = eviction_policy_problem(policy, maxmemory) {
            tracing::warn!(node, policy, maxmemory, "REDIS EVICTION POLICY: {problem}");
            problems.eviction.get_or_insert(problem);
        }
        if let Some(problem) = persistence_problem(setting("save"), setting("appendonly")) {
            tracing::warn!(node, "REDIS PERSISTENCE: {problem}");
            problems.persistence.get_or_insert(problem);
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policies_are_judged() {
        assert_eq!(eviction_policy_problem("volatile-lru", 1 << 30), None);
        assert_eq!(eviction_policy_problem("allkeys-lfu", 1 << 30), None);
        assert_eq!(eviction_policy_problem("noeviction", 0), None);
        assert!(eviction_policy_problem("noeviction", 1 << 30).is_some());
        assert!(eviction_policy_problem("allkeys-random", 1 << 30).unwrap().contains("allkeys-random"));
    }

    #[test]
    fn a_server_that_keeps_its_data_across_restarts_is_a_persistence_problem() {
        assert_eq!(persistence_problem("", "no"), None);
        assert_eq!(persistence_problem(" ", "NO"), None);
        assert!(persistence_problem("3600 1 300 100 60 10000", "no").unwrap().starts_with("save is"));
        assert!(persistence_problem("", "yes").unwrap().starts_with("appendonly is yes"));
        assert!(persistence_problem("60 1", "yes").unwrap().contains("and appendonly is yes"));
    }
}
