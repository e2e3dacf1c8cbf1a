//! The cache consistency protocol: how the API looks entries up and fills them, and how
//! invalidation makes them unreadable. The argument for why no stale entry is ever served is in
//! `docs/consistency.md`; in short:
//!
//! * every tag has a *version*: a random token at `v:<tag>`, written only when a reader has read
//!   a row that exists ([`create_missing_versions`]) and replaced by every invalidation;
//! * an entry stores, in front of its body, the versions of every tag it was built from;
//! * a hit is **one `MGET`** of the entry and the current versions of its tags ([`lookup`]): the
//!   entry is served only if every stored version is present and equal to the current one. One
//!   command reads all of them at one instant, so no Lua runs and nothing is written on a hit;
//! * on a miss the same reply is the reader's *snapshot*, taken before it reads Postgres; the
//!   fill ([`fill`]) stores the entry only if every version still equals the snapshot;
//! * invalidation ([`invalidate`]) replaces each tag's version with a fresh random token, which
//!   at once makes every entry built under the old one unreadable, however many there are. The
//!   entries themselves are only memory by then: the same call moves the tag's member set aside
//!   and [`reclaim`] unlinks its entries later, a bounded chunk per command.
//!
//! With Postgres read replicas, a miss may read rows from a replica that has not replayed a
//! write whose invalidation already ran; filled, those rows would be stale until expiry. So each
//! version may carry a *replay floor* at `r:<tag>`, `<version token>@<WAL position>`: a position
//! at or past the end of the commit record of every write whose invalidation of the tag finished
//! before that version was written. A miss reads the floors of its snapshot's versions
//! ([`replay_floor`]) and may read a replica only once the replica has replayed past the
//! highest of them; a version without a floor of its own (none recorded, lost, or written for
//! an older token) has an unknown floor, and the reader uses the primary's current position
//! instead and records it ([`stamp_replay_floor`]). A floor names its version's token, so a
//! lost version or floor, or a version replaced by a process that knows nothing of floors,
//! only ever makes a floor unknown, never too low.
//!
//! A version that is absent matches nothing: a hit needs every version present, and a fill
//! needs every version equal to a token the reader saw. So a version lost to `FLUSHALL`, a
//! restart, eviction (under any policy) or expiry acts as an invalidation of its tag, and tokens
//! are random so a lost version is never recreated with a value an older reader holds.
//!
//! Every key a command or script touches is passed as a key (none is built inside Lua) and all
//! of them carry the tenant's `{tenant}` hash tag, so every call touches one Redis Cluster slot.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::Script;
use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::db::Lsn;
use crate::keys::{Keyspace, Tag};
use crate::redis_connection::RedisConnection;

/// Members unlinked per Redis command by [`reclaim`]: bounds the time one command holds Redis,
/// whatever the number of entries cached under a tag.
pub const RECLAIM_CHUNK: usize = 256;

/// A current entry: the stored response bytes and their entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The response body, shared with the Redis reply it came in (no copy).
    pub body: Bytes,
    pub etag: String,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Entry),
    /// No current entry; the versions read in the same command, to hand to [`fill`].
    Miss(Snapshot),
}

/// The versions of a read's tags as one lookup saw them, before the read went to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    tags: Vec<Tag>,
    /// Parallel to `tags`; `None` where the tag had no version.
    tokens: Vec<Option<String>>,
}

impl Snapshot {
    /// Whether every tag had a version. Only a complete snapshot can protect a fill: a data read
    /// made while a tag had none must be repeated after [`create_missing_versions`].
    pub fn is_complete(&self) -> bool {
        self.tokens.iter().all(Option::is_some)
    }

    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Whether only collection tags (never a row tag) lack a version: their versions may be
    /// created before the database read, since no client-invented id is involved.
    pub fn lacks_only_collection_versions(&self) -> bool {
        self.tags.iter().zip(&self.tokens).all(|(tag, token)| token.is_some() || !tag.names_a_row())
    }
}

/// The stored form of an entry: a header line of `tag=version` pairs, a line with the entity
/// tag, then the body bytes as served.
fn encode_entry(snapshot: &Snapshot, etag: &str, body: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(body.len() + 64 * snapshot.tags.len() + etag.len() + 2);
    for (position, (tag, token)) in snapshot.tags.iter().zip(&snapshot.tokens).enumerate() {
        if position > 0 {
            stored.push(b' ');
        }
        stored.extend_from_slice(tag.as_str().as_bytes());
        stored.push(b'=');
        stored.extend_from_slice(token.as_deref().unwrap_or_default().as_bytes());
    }
    stored.push(b'\n');
    stored.extend_from_slice(etag.as_bytes());
    stored.push(b'\n');
    stored.extend_from_slice(body);
    stored
}

/// A stored entry split into its parts; the body shares the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The `(tag, version)` pairs it was filled under, in stored order.
    pub versions: Vec<(String, String)>,
    pub etag: String,
    pub body: Bytes,
}

impl StoredEntry {
    /// Splits stored bytes; `None` when they are not an entry of this format.
    pub fn decode(stored: Bytes) -> Option<Self> {
        let header_end = stored.iter().position(|&b| b == b'\n')?;
        let etag_end = header_end + 1 + stored[header_end + 1..].iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&stored[..header_end]).ok()?;
        let etag = std::str::from_utf8(&stored[header_end + 1..etag_end]).ok()?.to_owned();
        let versions = header
            .split(' ')
            .map(|pair| pair.split_once('=').map(|(tag, token)| (tag.to_owned(), token.to_owned())))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { versions, etag, body: stored.slice(etag_end + 1..) })
    }

    /// Whether the entry was filled under exactly `tags` at exactly the `current` versions,
    /// none absent: the hit condition.
    fn is_current(&self, tags: &[Tag], current: &[Option<String>]) -> bool {
        self.versions.len() == tags.len()
            && self.versions.iter().zip(tags.iter().zip(current)).all(|((stored_tag, stored), (tag, now))| {
                stored_tag == tag.as_str() && now.as_deref() == Some(stored.as_str())
            })
    }
}

fn fresh_token() -> String {
    Uuid::new_v4().simple().to_string()
}

/// Looks `entry_key` up with the versions of `tags`, in one `MGET`: a hit when the entry was
/// filled under exactly those versions, otherwise the snapshot for a fill.
///
/// Invariant: a hit returns an entry whose every tag version was current at the instant the
/// `MGET` ran, so no invalidation that finished before the lookup began can be bypassed.
pub async fn lookup<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    entry_key: &str,
    tags: &[Tag],
) -> redis::RedisResult<Lookup> {
    let mut command = redis::cmd("MGET");
    command.arg(entry_key);
    for tag in tags {
        command.arg(keyspace.version_key(tenant, tag));
    }
    let mut reply: Vec<Option<Vec<u8>>> = command.query_async(conn).await?;
    if reply.len() != tags.len() + 1 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "MGET reply of the wrong length",
        )));
    }
    let stored = reply.remove(0);
    let tokens: Vec<Option<String>> =
        reply.into_iter().map(|token| token.and_then(|token| String::from_utf8(token).ok())).collect();
    if let Some(entry) = stored.and_then(|stored| StoredEntry::decode(Bytes::from(stored)))
        && entry.is_current(tags, &tokens)
    {
        return Ok(Lookup::Hit(Entry { body: entry.body, etag: entry.etag }));
    }
    Ok(Lookup::Miss(Snapshot { tags: tags.to_vec(), tokens }))
}

/// Creates the versions `snapshot` lacks (keeping any another reader or an invalidation wrote
/// in the meantime) and returns the completed snapshot; read the database after it. When a row
/// tag lacks its version, call it only after a database read showed the row exists (so no
/// client-invented id ever creates a key), and read the database again before filling.
///
/// Invariant: every token in the result was current at or after this call, so an invalidation
/// that comes after the caller's next database read began changes at least one of them.
pub async fn create_missing_versions<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &Snapshot,
    ttl_secs: u64,
) -> redis::RedisResult<Snapshot> {
    let missing: Vec<usize> = (0..snapshot.tags.len()).filter(|&i| snapshot.tokens[i].is_none()).collect();
    let mut completed = snapshot.clone();
    if missing.is_empty() {
        return Ok(completed);
    }
    let mut pipe = redis::pipe();
    let proposed: Vec<String> = missing.iter().map(|_| fresh_token()).collect();
    for (&i, token) in missing.iter().zip(&proposed) {
        // SET … NX GET: creates the version unless one exists, and answers the one that did.
        pipe.cmd("SET")
            .arg(keyspace.version_key(tenant, &snapshot.tags[i]))
            .arg(token)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl_secs.max(1));
    }
    let existing: Vec<Option<String>> = pipe.query_async(conn).await?;
    for ((&i, token), existing) in missing.iter().zip(proposed).zip(existing) {
        completed.tokens[i] = Some(existing.unwrap_or(token));
    }
    Ok(completed)
}

/// Stores an entry (header with the snapshot's versions, then the body) only if every version
/// is still the snapshot's, extends the versions' lifetime to cover the entry, and registers the
/// entry in the member set of each tag (except the tenant-wide one) for [`reclaim`].
///
/// KEYS: entry, then the N versions, then the member sets. ARGV: N, stored bytes, entry TTL,
/// dependency TTL (versions and member sets), then the N snapshot tokens.
///
/// Invariant: an entry is stored only under versions that were current when it was stored, and
/// those were current before its data was read (the snapshot), so no invalidation separates the
/// read from the store.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local versions = tonumber(ARGV[1])
for i = 1, versions do
  if redis.call('GET', KEYS[1 + i]) ~= ARGV[4 + i] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local keep = tonumber(ARGV[4])
for i = 2, #KEYS do
  if i > versions + 1 then
    redis.call('SADD', KEYS[i], KEYS[1])
  end
  if redis.call('TTL', KEYS[i]) < keep then
    redis.call('EXPIRE', KEYS[i], keep)
  end
end
return 1
"#,
    )
});

/// A response ready to be cached.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub entry_key: &'a str,
    pub body: &'a [u8],
    pub etag: &'a str,
    pub ttl_secs: u64,
    /// Lifetime of the tag versions and member sets: at least the longest entry TTL, so a live
    /// entry's versions outlive it.
    pub dependencies_ttl_secs: u64,
}

/// Stores the entry if no tag in `snapshot` was invalidated since it was taken. Returns false
/// when the fill was refused because the data may be stale (or the snapshot was incomplete).
pub async fn fill<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &Snapshot,
    entry: Fill<'_>,
) -> redis::RedisResult<bool> {
    if !snapshot.is_complete() {
        return Ok(false);
    }
    let mut call = FILL.key(entry.entry_key);
    for tag in &snapshot.tags {
        call.key(keyspace.version_key(tenant, tag));
    }
    for tag in snapshot.tags.iter().filter(|tag| !tag.is_tenant_wide()) {
        call.key(keyspace.members_key(tenant, tag));
    }
    call.arg(snapshot.tags.len())
        .arg(encode_entry(snapshot, entry.etag, entry.body))
        .arg(entry.ttl_secs.max(1))
        .arg(entry.dependencies_ttl_secs.max(entry.ttl_secs).max(1));
    for token in &snapshot.tokens {
        call.arg(token.as_deref().unwrap_or_default());
    }
    let stored: i64 = call.invoke_async(conn).await?;
    Ok(stored == 1)
}

/// Replaces the version of each tag that has one with a fresh token (keeping its lifetime) and
/// renames the tag's member set to a reclaim key of its own. Returns the reclaim keys that
/// received a member set. When given a WAL position and the replaced version had a floor of its
/// own, the new version gets the later of the two as its floor (same lifetime as the version);
/// otherwise the new version's floor is unknown.
///
/// KEYS: per tag, its version, its member set, its reclaim key and its replay floor. ARGV: the
/// fresh token, then the WAL position as 16 hex digits (empty when unknown).
///
/// Invariant: once this returns, no entry filled under a previous version of any of the tags can
/// be hit or filled (the hit and the fill both compare versions). A version that was absent
/// stays absent, which already matches nothing. Entries filled afterwards register in a new
/// member set, so reclaiming the renamed one never drops them. A floor written here is at least
/// the previous version's floor and at least the given position, so it covers every write whose
/// invalidation finished before the new version was written: never lower than it must be,
/// whatever order concurrent invalidations run in.
const INVALIDATE_SOURCE: &str = r#"
local function later(a, b)
  local a_high, b_high = tonumber(string.sub(a, 1, 8), 16), tonumber(string.sub(b, 1, 8), 16)
  if a_high ~= b_high then
    return a_high > b_high
  end
  return tonumber(string.sub(a, 9), 16) > tonumber(string.sub(b, 9), 16)
end
local moved = {}
for i = 1, #KEYS, 4 do
  local previous = redis.call('GET', KEYS[i])
  if previous then
    redis.call('SET', KEYS[i], ARGV[1], 'KEEPTTL')
    local floor = redis.call('GET', KEYS[i + 3])
    local prefix = previous .. '@'
    if ARGV[2] ~= '' and floor and string.sub(floor, 1, #prefix) == prefix then
      local position = string.sub(floor, #prefix + 1)
      if later(ARGV[2], position) then
        position = ARGV[2]
      end
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl > 0 then
        redis.call('SET', KEYS[i + 3], ARGV[1] .. '@' .. position, 'PX', ttl)
      else
        redis.call('SET', KEYS[i + 3], ARGV[1] .. '@' .. position)
      end
    end
  end
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    redis.call('RENAME', KEYS[i + 1], KEYS[i + 2])
    moved[#moved + 1] = KEYS[i + 2]
  end
end
return moved
"#;

static INVALIDATE: LazyLock<Script> = LazyLock::new(|| Script::new(INVALIDATE_SOURCE));

/// Member sets moved aside by [`invalidate`], whose entries [`reclaim`] unlinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimable {
    keys: Vec<String>,
}

impl Reclaimable {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn extend(&mut self, other: Reclaimable) {
        self.keys.extend(other.keys);
    }
}

/// How many Redis replicas must hold an invalidation before it counts as done, and how long to
/// wait for them (`WAIT`). Zero replicas: done once the master has applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    pub replicas: u32,
    pub timeout: std::time::Duration,
}

impl ReplicaAck {
    /// Done once the master has applied it (a single node, or best-effort callers).
    pub const MASTER_ONLY: Self = Self { replicas: 0, timeout: std::time::Duration::ZERO };
}

/// Why an invalidation is not known to be done.
#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// Applied on the master, but fewer replicas than required confirmed it in time: a failover
    /// now could promote a replica that never saw it, so it must be applied again later.
    #[error("invalidation reached {acked} of the {required} Redis replicas required within {timeout:?}")]
    NotReplicated { acked: u32, required: u32, timeout: std::time::Duration },
}

/// Invalidates `tags` of `tenant` (one script, O(tags)): after it returns no entry built under
/// their previous versions is served. Idempotent; a tag nothing was cached under costs one
/// `GET`. The caller reclaims the returned member sets once it has acknowledged the event.
/// The new versions' replay floors are unknown (see [`invalidate_replicated`]).
pub async fn invalidate<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
) -> redis::RedisResult<Reclaimable> {
    invalidate_with_floor(conn, keyspace, tenant, tags, None).await
}

async fn invalidate_with_floor<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
    replayed_by: Option<Lsn>,
) -> redis::RedisResult<Reclaimable> {
    if tags.is_empty() {
        return Ok(Reclaimable::default());
    }
    let (token, keys) = invalidation_keys(keyspace, tenant, tags);
    let mut call = INVALIDATE.prepare_invoke();
    for key in &keys {
        call.key(key);
    }
    call.arg(&token).arg(replayed_by.map(floor_text).unwrap_or_default());
    let keys: Vec<String> = call.invoke_async(conn).await?;
    Ok(Reclaimable { keys })
}

/// A fresh token and the KEYS of [`INVALIDATE`] for `tags`.
fn invalidation_keys(keyspace: &Keyspace, tenant: Uuid, tags: &[Tag]) -> (String, Vec<String>) {
    let token = fresh_token();
    let keys = tags
        .iter()
        .flat_map(|tag| {
            [
                keyspace.version_key(tenant, tag),
                keyspace.members_key(tenant, tag),
                keyspace.reclaim_key(tenant, tag, &token),
                keyspace.replay_floor_key(tenant, tag),
            ]
        })
        .collect();
    (token, keys)
}

/// A WAL position as stored in a floor: 16 hex digits, so the scripts compare fixed-width text.
fn floor_text(lsn: Lsn) -> String {
    format!("{:016x}", lsn.0)
}

/// [`invalidate`], then `WAIT` until `ack.replicas` replicas of the tenant's master hold it. The
/// script and the `WAIT` travel in one pipeline on one connection to that master (its first key
/// routes it), so the `WAIT` covers exactly this script's writes even if a connection is
/// replaced between calls. `replayed_by`, when known, is a position at or past the end of the
/// commit records of every write being invalidated (the invalidator passes the primary's insert
/// position read after it saw their outbox rows): the new versions keep a known replay floor
/// where the previous ones had one.
///
/// Invariant: `Ok` means the invalidation survives the failover of its master to any replica
/// that confirmed it (Redis promotes the replica with the most replicated data first).
pub async fn invalidate_replicated<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
    ack: ReplicaAck,
    replayed_by: Option<Lsn>,
) -> Result<Reclaimable, InvalidateError> {
    if tags.is_empty() || ack.replicas == 0 {
        return Ok(invalidate_with_floor(conn, keyspace, tenant, tags, replayed_by).await?);
    }
    let (token, keys) = invalidation_keys(keyspace, tenant, tags);
    let floor = replayed_by.map(floor_text).unwrap_or_default();
    // A script inside a pipeline is not loaded for us: try it by hash, and on NOSCRIPT send its
    // source (which also loads it on that node for the next time).
    let pipeline = |by_hash: bool| {
        let mut pipe = redis::pipe();
        let command = pipe.cmd(if by_hash { "EVALSHA" } else { "EVAL" });
        command
            .arg(if by_hash { INVALIDATE.get_hash() } else { INVALIDATE_SOURCE })
            .arg(keys.len())
            .arg(&keys)
            .arg(&token)
            .arg(&floor);
        pipe.cmd("WAIT").arg(ack.replicas).arg(u64::try_from(ack.timeout.as_millis()).unwrap_or(u64::MAX).max(1));
        pipe
    };
    let reply: redis::RedisResult<(Vec<String>, u32)> = pipeline(true).query_async(conn).await;
    let (moved, acked) = match reply {
        Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            pipeline(false).query_async(conn).await?
        }
        other => other?,
    };
    if acked < ack.replicas {
        return Err(InvalidateError::NotReplicated { acked, required: ack.replicas, timeout: ack.timeout });
    }
    Ok(Reclaimable { keys: moved })
}

/// The replay floors of a complete snapshot's versions, as [`replay_floor`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFloor {
    /// The highest floor among the versions that have one.
    highest: Option<Lsn>,
    /// Positions in the snapshot of the versions whose floor is unknown.
    unknown: Vec<usize>,
}

impl ReplayFloor {
    /// Where a replica must have replayed to before its rows may be served under the snapshot;
    /// `None` when a floor is unknown (then the primary's current position is the floor).
    pub fn required(&self) -> Option<Lsn> {
        if self.unknown.is_empty() { Some(self.highest.unwrap_or_default()) } else { None }
    }

    /// With the unknown floors taken to be `primary_position`, as [`stamp_replay_floor`]
    /// records them.
    pub fn with_unknown_at(&self, primary_position: Lsn) -> Lsn {
        self.highest.unwrap_or_default().max(primary_position)
    }
}

/// Reads the replay floors of `snapshot`'s versions in one `MGET`. A floor counts only when it
/// names the snapshot's token, since it covers only writes invalidated before that version.
///
/// Invariant: a known floor is at or past the end of every write whose invalidation of its tag
/// finished before the snapshot was taken (any later one would have replaced the version).
pub async fn replay_floor<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &Snapshot,
) -> redis::RedisResult<ReplayFloor> {
    let mut command = redis::cmd("MGET");
    for tag in &snapshot.tags {
        command.arg(keyspace.replay_floor_key(tenant, tag));
    }
    let floors: Vec<Option<String>> = command.query_async(conn).await?;
    let mut found = ReplayFloor { highest: None, unknown: Vec::new() };
    for (position, token) in snapshot.tokens.iter().enumerate() {
        let floor = floors.get(position).cloned().flatten();
        let known = token.as_deref().zip(floor.as_deref()).and_then(|(token, floor)| {
            let position = floor.strip_prefix(token)?.strip_prefix('@')?;
            (position.len() == 16).then(|| u64::from_str_radix(position, 16).ok()).flatten().map(Lsn)
        });
        match known {
            Some(lsn) => found.highest = found.highest.max(Some(lsn)),
            None => found.unknown.push(position),
        }
    }
    Ok(found)
}

/// Gives the snapshot's versions whose floor is unknown the floor `primary_position`, each only
/// if it is still the snapshot's version and still has no floor of its own.
///
/// KEYS: per version, the version and its replay floor. ARGV: the position as 16 hex digits,
/// then per version the snapshot's token.
///
/// Invariant: `primary_position` was read from the primary after the snapshot was taken, so it
/// is past the end of every write whose invalidation finished before the version was written;
/// a version replaced since is left alone (its floor stays unknown).
static STAMP_FLOOR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 1, #KEYS, 2 do
  local token = ARGV[1 + (i + 1) / 2]
  if redis.call('GET', KEYS[i]) == token then
    local floor = redis.call('GET', KEYS[i + 1])
    local prefix = token .. '@'
    if not floor or string.sub(floor, 1, #prefix) ~= prefix then
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl > 0 then
        redis.call('SET', KEYS[i + 1], prefix .. ARGV[1], 'PX', ttl)
      else
        redis.call('SET', KEYS[i + 1], prefix .. ARGV[1])
      end
    end
  end
end
return 1
"#,
    )
});

/// Records `primary_position` (the primary's insert position, read after the snapshot was
/// taken) as the floor of the snapshot's versions whose floor `found` did not know, so later
/// misses under the same versions need not ask the primary.
pub async fn stamp_replay_floor<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    snapshot: &Snapshot,
    found: &ReplayFloor,
    primary_position: Lsn,
) -> redis::RedisResult<()> {
    let unknown: Vec<(&Tag, &str)> = found
        .unknown
        .iter()
        .filter_map(|&i| Some((snapshot.tags.get(i)?, snapshot.tokens.get(i)?.as_deref()?)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut call = STAMP_FLOOR.prepare_invoke();
    for (tag, _) in &unknown {
        call.key(keyspace.version_key(tenant, tag)).key(keyspace.replay_floor_key(tenant, tag));
    }
    call.arg(floor_text(primary_position));
    for (_, token) in &unknown {
        call.arg(*token);
    }
    let _: i64 = call.invoke_async(conn).await?;
    Ok(())
}

/// Unlinks the entries of reclaimed member sets, walking each with `SSCAN` and unlinking at most
/// [`RECLAIM_CHUNK`] entries per command, then the set itself. Purely memory: the entries can no
/// longer be hit. Returns how many entries it unlinked. Interrupted, the rest expires with the
/// sets' TTL. (Nothing adds to a reclaim key, so the scan sees every member; `SPOP` with a count
/// was measured slower per member on large sets.)
pub async fn reclaim<C: ConnectionLike>(conn: &mut C, reclaimable: &Reclaimable) -> redis::RedisResult<u64> {
    let mut unlinked = 0;
    for key in &reclaimable.keys {
        let mut cursor: u64 = 0;
        loop {
            let (next, members): (u64, Vec<String>) =
                redis::cmd("SSCAN").arg(key).arg(cursor).arg("COUNT").arg(RECLAIM_CHUNK).query_async(conn).await?;
            for chunk in members.chunks(RECLAIM_CHUNK) {
                let removed: u64 = redis::cmd("UNLINK").arg(chunk).query_async(conn).await?;
                unlinked += removed;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = redis::cmd("UNLINK").arg(key).query_async(conn).await?;
    }
    Ok(unlinked)
}

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

    fn snapshot(pairs: &[(&str, Option<&str>)]) -> Snapshot {
        Snapshot {
            tags: pairs.iter().map(|(tag, _)| Tag::parse(tag).unwrap()).collect(),
            tokens: pairs.iter().map(|(_, token)| token.map(str::to_owned)).collect(),
        }
    }

    #[test]
    fn a_stored_entry_decodes_to_its_versions_etag_and_body() {
        let taken = snapshot(&[("all", Some("a1")), ("risk:7", Some("b2"))]);
        let stored = Bytes::from(encode_entry(&taken, "\"e\"", b"{\"x\":\n1}"));
        let entry = StoredEntry::decode(stored).unwrap();
        assert_eq!(entry.versions, vec![("all".into(), "a1".into()), ("risk:7".into(), "b2".into())]);
        assert_eq!(entry.etag, "\"e\"");
        assert_eq!(&entry.body[..], b"{\"x\":\n1}", "newlines in the body survive");
        assert!(entry.is_current(&taken.tags, &taken.tokens));
    }

    #[test]
    fn an_entry_is_current_only_under_the_same_tags_and_present_equal_versions() {
        let taken = snapshot(&[("all", Some("a1")), ("risk:7", Some("b2"))]);
        let entry = StoredEntry::decode(Bytes::from(encode_entry(&taken, "e", b"x"))).unwrap();
        let tags = taken.tags.clone();
        let now = |a: Option<&str>, b: Option<&str>| vec![a.map(str::to_owned), b.map(str::to_owned)];
        assert!(!entry.is_current(&tags, &now(Some("a1"), Some("b3"))), "a replaced version");
        assert!(!entry.is_current(&tags, &now(Some("a1"), None)), "an absent version");
        assert!(!entry.is_current(&tags[..1], &now(Some("a1"), None)[..1]), "fewer tags than stored");
        let other = vec![Tag::parse("all").unwrap(), Tag::parse("risk:8").unwrap()];
        assert!(!entry.is_current(&other, &now(Some("a1"), Some("b2"))), "another tag with the same version");
    }

    #[test]
    fn bytes_that_are_not_an_entry_do_not_decode() {
        for junk in [&b""[..], b"no newline", b"one\nline", b"bad pair\netag\nbody"] {
            assert_eq!(StoredEntry::decode(Bytes::copy_from_slice(junk)), None, "{junk:?}");
        }
    }

    #[test]
    fn an_incomplete_snapshot_is_recognised() {
        assert!(snapshot(&[("all", Some("a")), ("risks", Some("b"))]).is_complete());
        let lacks_collection = snapshot(&[("all", None), ("risks", None), ("risk:1", Some("c"))]);
        assert!(!lacks_collection.is_complete() && lacks_collection.lacks_only_collection_versions());
        assert!(!snapshot(&[("all", Some("a")), ("risk:1", None)]).lacks_only_collection_versions());
    }
}
