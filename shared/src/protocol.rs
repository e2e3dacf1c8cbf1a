//! The cache consistency protocol: how the API reads and fills entries and how invalidation
//! removes them, as three Lua scripts that each run atomically inside Redis. The argument for
//! why no stale entry survives an invalidation is in `docs/consistency.md`; in short:
//!
//! * every tag has a *version*: a random token stored at `v:<tag>`, created on first use;
//! * a reader records the versions of the tags its response depends on **before** it reads
//!   Postgres ([`lookup`] does this on a miss, in the same round trip as the lookup);
//! * the fill ([`fill`]) stores the entry only if every recorded version is still current, and
//!   stores the versions with it;
//! * invalidation ([`invalidate`]) deletes the versions of the tags (and eagerly unlinks the
//!   entries registered under them), so a fill that read the database before the write cannot
//!   land after it, and a hit re-checks the versions so an entry whose tag was invalidated (or
//!   whose version vanished in a flush, restart or eviction) is never served.
//!
//! Versions are random, never counters, so a version lost in `FLUSHALL` or a restart is never
//! recreated with the value an older reader holds.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::keys::{Keyspace, Tag};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A current entry: the stored response bytes and their entity tag.
    Hit { body: Vec<u8>, etag: String },
    /// No current entry; the versions of the requested tags, to hand to [`fill`].
    Miss { snapshot: Snapshot },
}

/// Tag versions recorded before a database read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    versions: Vec<(Tag, String)>,
}

impl Snapshot {
    pub fn tags(&self) -> impl Iterator<Item = &Tag> {
        self.versions.iter().map(|(tag, _)| tag)
    }

    pub fn covers(&self, tag: &Tag) -> bool {
        self.versions.iter().any(|(known, _)| known == tag)
    }

    fn extend(&mut self, tags: &[Tag], tokens: Vec<String>) {
        self.versions.extend(tags.iter().cloned().zip(tokens));
    }
}

/// Returns the entry if it is current; otherwise records (creating when absent) the versions of
/// `tags`. Stale entries found on the way are unlinked.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local entry = redis.call('HMGET', KEYS[1], 'b', 'e', 't')
local base = ARGV[1]
if entry[1] then
  local current = true
  for tag, token in string.gmatch(entry[3], '([^ =]+)=([^ ]+)') do
    if redis.call('GET', base .. 'v:' .. tag) ~= token then
      current = false
      break
    end
  end
  if current then
    return {'hit', entry[1], entry[2]}
  end
  redis.call('UNLINK', KEYS[1])
end
local out = {'miss'}
for i = 3, #ARGV do
  local key = base .. 'v:' .. ARGV[i]
  local version = redis.call('GET', key)
  if not version then
    redis.call('SET', key, ARGV[2])
    version = ARGV[2]
  end
  out[#out + 1] = version
end
return out
"#,
    )
});

/// Records (creating when absent) the versions of more tags, for a response whose dependencies
/// were only known after reading (a risk's linked assets).
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 3, #ARGV do
  local key = ARGV[1] .. 'v:' .. ARGV[i]
  local version = redis.call('GET', key)
  if not version then
    redis.call('SET', key, ARGV[2])
    version = ARGV[2]
  end
  out[#out + 1] = version
end
return out
"#,
    )
});

/// Stores an entry only if every recorded version is still current, and registers it in the
/// member set of each tag (except the tenant-wide one) for eager deletion.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local base = ARGV[1]
local versions = {}
for i = 6, #ARGV, 2 do
  if redis.call('GET', base .. 'v:' .. ARGV[i]) ~= ARGV[i + 1] then
    return 0
  end
  versions[#versions + 1] = ARGV[i] .. '=' .. ARGV[i + 1]
end
redis.call('HSET', KEYS[1], 'b', ARGV[2], 'e', ARGV[3], 't', table.concat(versions, ' '))
redis.call('EXPIRE', KEYS[1], ARGV[4])
local members_ttl = tonumber(ARGV[5])
for i = 6, #ARGV, 2 do
  if ARGV[i] ~= 'all' then
    local members = base .. 'm:' .. ARGV[i]
    redis.call('SADD', members, KEYS[1])
    if redis.call('TTL', members) < members_ttl then
      redis.call('EXPIRE', members, members_ttl)
    end
  end
end
return 1
"#,
    )
});

/// Invalidates tags of one tenant: unlinks the entries registered under each, then the member
/// set and the version. Returns how many entries were unlinked.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local base = ARGV[1]
local unlinked = 0
for i = 2, #ARGV do
  local members_key = base .. 'm:' .. ARGV[i]
  local members = redis.call('SMEMBERS', members_key)
  for first = 1, #members, 256 do
    unlinked = unlinked + redis.call('UNLINK', unpack(members, first, math.min(first + 255, #members)))
  end
  redis.call('UNLINK', members_key, base .. 'v:' .. ARGV[i])
end
return unlinked
"#,
    )
});

fn fresh_token() -> String {
    Uuid::new_v4().simple().to_string()
}

/// Looks up `entry_key`; on a miss, records the versions of `tags` in the same round trip.
pub async fn lookup<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    entry_key: &str,
    tags: &[Tag],
) -> redis::RedisResult<Lookup> {
    let mut call = LOOKUP.key(entry_key);
    call.arg(keyspace.tenant_base(tenant)).arg(fresh_token());
    for tag in tags {
        call.arg(tag.as_str());
    }
    let mut reply: Vec<Vec<u8>> = call.invoke_async(conn).await?;
    if reply.first().map(Vec::as_slice) == Some(b"hit") && reply.len() == 3 {
        let etag = String::from_utf8_lossy(&reply[2]).into_owned();
        let body = reply.swap_remove(1);
        return Ok(Lookup::Hit { body, etag });
    }
    let tokens = reply.into_iter().skip(1).map(|token| String::from_utf8_lossy(&token).into_owned()).collect();
    let mut snapshot = Snapshot::default();
    snapshot.extend(tags, tokens);
    Ok(Lookup::Miss { snapshot })
}

/// Adds the versions of `tags` not yet in `snapshot`. Call it before re-reading the database.
pub async fn extend_snapshot<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &mut Snapshot,
    tags: &[Tag],
) -> redis::RedisResult<()> {
    let missing: Vec<Tag> = tags.iter().filter(|tag| !snapshot.covers(tag)).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut call = SNAPSHOT.prepare_invoke();
    call.arg(keyspace.tenant_base(tenant)).arg(fresh_token());
    for tag in &missing {
        call.arg(tag.as_str());
    }
    let tokens: Vec<String> = call.invoke_async(conn).await?;
    snapshot.extend(&missing, tokens);
    Ok(())
}

/// A response ready to be cached.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub entry_key: &'a str,
    pub body: &'a [u8],
    pub etag: &'a str,
    pub ttl_secs: u64,
    /// Lifetime of the tag member sets; must outlast the longest entry TTL.
    pub members_ttl_secs: u64,
}

/// Stores the entry if no tag in `snapshot` was invalidated since it was taken.
/// Returns false when the fill was rejected because the data may be stale.
pub async fn fill<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &Snapshot,
    entry: Fill<'_>,
) -> redis::RedisResult<bool> {
    let mut call = FILL.key(entry.entry_key);
    call.arg(keyspace.tenant_base(tenant))
        .arg(entry.body)
        .arg(entry.etag)
        .arg(entry.ttl_secs.max(1))
        .arg(entry.members_ttl_secs.max(entry.ttl_secs));
    for (tag, token) in &snapshot.versions {
        call.arg(tag.as_str()).arg(token.as_str());
    }
    let stored: i64 = call.invoke_async(conn).await?;
    Ok(stored == 1)
}

/// Invalidates `tags` of `tenant`. Idempotent: running it twice, or for a tag nothing was ever
/// cached under, is harmless. Returns how many cached entries were unlinked.
pub async fn invalidate<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
) -> redis::RedisResult<u64> {
    if tags.is_empty() {
        return Ok(0);
    }
    let mut call = INVALIDATE.prepare_invoke();
    call.arg(keyspace.tenant_base(tenant));
    for tag in tags {
        call.arg(tag.as_str());
    }
    call.invoke_async(conn).await
}

/// What is wrong with a Redis `maxmemory-policy` for this protocol, if anything.
///
/// Entries and member sets carry a TTL and versions do not, so a `volatile-*` policy evicts only
/// entries and member sets. Evicting a version stays safe (it invalidates its tag) but empties
/// the cache under it, and `noeviction` makes new fills fail once Redis is full.
pub fn eviction_policy_problem(policy: &str, maxmemory: u64) -> Option<String> {
    match policy {
        "volatile-lru" | "volatile-lfu" | "volatile-ttl" | "volatile-random" => None,
        "noeviction" if maxmemory == 0 => None,
        "noeviction" => Some(
            "maxmemory-policy is noeviction with a maxmemory: once Redis is full no response can be \
             cached; use volatile-lru"
                .into(),
        ),
        other => Some(format!(
            "maxmemory-policy is {other}: Redis may evict tag versions, which invalidates every entry \
             under them; use volatile-lru so only entries and member sets are evicted"
        )),
    }
}

/// Reads the server's eviction settings and logs a loud warning when they do not suit the
/// protocol. Returns the problem, if any, so callers can export it.
pub async fn check_eviction_policy<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<Option<String>> {
    let policy: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(conn).await?;
    let maxmemory: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory").query_async(conn).await?;
    let policy = policy.get(1).cloned().unwrap_or_default();
    let maxmemory = maxmemory.get(1).and_then(|value| value.parse().ok()).unwrap_or(0);
    let problem = eviction_policy_problem(&policy, maxmemory);
    if let Some(problem) = &problem {
        tracing::warn!(policy, maxmemory, "REDIS EVICTION POLICY: {problem}");
    }
    Ok(problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policies_are_judged() {
        assert_eq!(eviction_policy_problem("volatile-lru", 1 << 30), None);
        assert_eq!(eviction_policy_problem("noeviction", 0), None);
        assert!(eviction_policy_problem("noeviction", 1 << 30).is_some());
        assert!(eviction_policy_problem("allkeys-lru", 1 << 30).unwrap().contains("allkeys-lru"));
    }
}
