//! Whether a Redis server's eviction settings suit the protocol.

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

/// Reads the eviction settings of the server (every master of a cluster) and logs a loud
/// warning when they do not suit the protocol. Returns the first problem, if any, so callers
/// can export it.
pub async fn check_eviction_policy(conn: &mut RedisConnection) -> redis::RedisResult<Option<String>> {
    let settings: Vec<(String, std::collections::HashMap<String, String>)> =
        conn.on_every_master(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").arg("maxmemory")).await?;
    let mut first_problem = None;
    for (node, settings) in settings {
        let policy = settings.get("maxmemory-policy").cloned().unwrap_or_default();
        let maxmemory = settings.get("maxmemory").and_then(|limit| limit.parse().ok()).unwrap_or(0);
        if let Some(problem) = eviction_policy_problem(&policy, maxmemory) {
            tracing::warn!(node, policy, maxmemory, "REDIS EVICTION POLICY: {problem}");
            first_problem.get_or_insert(problem);
        }
    }
    Ok(first_problem)
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
}
