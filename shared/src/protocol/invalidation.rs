//! Invalidation: replacing tag versions so entries built under them can no longer be served,
//! optionally confirmed by Redis replicas, and reclaiming the memory of those entries later.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, ServerErrorKind};
use uuid::Uuid;

use super::replay_floor::floor_text;
use super::script::KeyedScript;
use super::{RECLAIM_CHUNK, fresh_token};
use crate::db::Lsn;
use crate::keys::{Keyspace, Tag};

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
/// member set, which [`reclaim`] asks before it unlinks a member of the renamed one, so it keeps
/// an entry key filled again. A floor written here is at least
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

static INVALIDATE: LazyLock<KeyedScript> = LazyLock::new(|| KeyedScript::new(INVALIDATE_SOURCE));

/// Member sets moved aside by [`invalidate`], whose entries [`reclaim`] unlinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimable {
    /// Each set moved aside, with the member set of its tag now.
    sets: Vec<MovedSet>,
}

/// A member set [`INVALIDATE`] moved aside, and the set its tag's new entries register in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MovedSet {
    moved: String,
    current: String,
}

impl Reclaimable {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    pub fn extend(&mut self, other: Reclaimable) {
        self.sets.extend(other.sets);
    }

    /// The sets [`INVALIDATE`] named `moved` among its `keys` (per tag: version, member set,
    /// reclaim key, floor), each with its tag's member set.
    fn of(keys: &[String], moved: Vec<String>) -> Self {
        let current = |moved: &String| {
            let tag = keys.chunks(4).find(|tag| tag.get(2) == Some(moved));
            tag.and_then(|tag| tag.get(1)).cloned()
        };
        let sets = moved.into_iter().filter_map(|moved| Some(MovedSet { current: current(&moved)?, moved })).collect();
        Self { sets }
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

    /// The least a call's share of a shared wait ([`ReplicaAck::shared_by`]) may be: a replica
    /// that is there confirms within a round trip, far less than this even on a loaded machine.
    pub const MIN_SHARE: std::time::Duration = std::time::Duration::from_millis(20);

    /// This wait shared by `calls` calls sent together to one master. A master's connection
    /// runs their `WAIT`s one after another, so while it has no replica that confirms, each
    /// call would otherwise wait the whole timeout after the one before it: `calls` times the
    /// timeout in all, for one batch. Shared, they wait the timeout in all (at least
    /// [`ReplicaAck::MIN_SHARE`] each). A share too short for a slow replica only makes the
    /// call fail as unconfirmed, which is retried; it never counts an unconfirmed write.
    pub fn shared_by(self, calls: usize) -> Self {
        let calls = u32::try_from(calls.max(1)).unwrap_or(u32::MAX);
        Self { timeout: (self.timeout / calls).max(Self::MIN_SHARE.min(self.timeout)), ..self }
    }

    /// How much longer than a plain reply one of [`invalidate_replicated`]'s may take: its
    /// `WAIT`'s timeout, or nothing when no replica must confirm (no `WAIT` is sent).
    pub fn extra_reply_time(&self) -> std::time::Duration {
        if self.replicas == 0 { std::time::Duration::ZERO } else { self.timeout }
    }

    /// `Ok` when `acked` replicas (what `WAIT` answered) are enough.
    fn confirmed_by(&self, acked: u32) -> Result<(), InvalidateError> {
        if acked < self.replicas {
            return Err(InvalidateError::NotReplicated { acked, required: self.replicas, timeout: self.timeout });
        }
        Ok(())
    }

    /// `WAIT`'s timeout argument, in milliseconds (0 would wait for ever, so at least 1).
    fn wait_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX).max(1)
    }
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
    /// Applied on the master alone, without a `WAIT`, because no replica of that master has
    /// confirmed a write since one failed to: a failover could lose it just the same.
    #[error("invalidation applied on a Redis master none of whose replicas confirms writes now (no WAIT sent)")]
    MasterWithoutReplica,
}

impl InvalidateError {
    /// Whether the tenant's master answered: an error reply about the call itself (a key of
    /// the wrong type, a script error) is an answer, so Redis is not lost; no reply, or one that
    /// says the slot is served elsewhere or the node cannot serve it now, is none.
    pub fn master_answered(&self) -> bool {
        match self {
            InvalidateError::Redis(error) => error.code().is_some_and(|code| !NOT_THE_MASTERS_ANSWER.contains(&code)),
            InvalidateError::NotReplicated { .. } | InvalidateError::MasterWithoutReplica => true,
        }
    }
}

/// Error replies that say nothing of the tenant's master: the slot is served by another node or
/// moving (`MOVED`, `ASK`, `TRYAGAIN`), the cluster or the node cannot serve it now
/// (`CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `BUSY`), or the node is a replica (`READONLY`).
const NOT_THE_MASTERS_ANSWER: [&str; 8] =
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "BUSY", "READONLY"];

/// Invalidates `tags` of `tenant` (one script, O(tags)): after it returns no entry built under
/// their previous versions is served. Idempotent; a tag nothing was cached under costs one
/// `GET`. The caller reclaims the returned member sets once it has acknowledged the event.
/// The new versions' replay floors are unknown (see [`invalidate_replicated`]). While the
/// tenant's slot migrates, the versions are replaced one by one, and while Redis is full and may
/// not evict, they are deleted (`OneByOne`).
pub async fn invalidate<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
) -> redis::RedisResult<Reclaimable> {
    match invalidate_with_floor(conn, keyspace, tenant, tags, None).await {
        Err(error) => match OneByOne::instead_of_the_script(&error) {
            Some(how) => {
                versions_one_by_one(conn, keyspace, tenant, tags, how, None).await?;
                Ok(Reclaimable::default())
            }
            None => Err(error),
        },
        done => done,
    }
}

/// Whether Redis refused a call because its keys' slot is moving between masters: `TRYAGAIN`
/// (some keys moved, some not), or the `ASK` left when the cluster client spent its retries
/// bouncing between the two masters (seen in the cluster soak). The masters answer, and answer
/// other slots, so this says nothing about their health; a call on one key gets through. Not
/// `MOVED`: the other masters also answer so for a master that is down.
pub fn refused_while_migrating(error: &redis::RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::Ask))
}

/// Whether Redis refused a write because it holds `maxmemory` and may evict nothing to make room
/// (`OOM`: `noeviction`, or a `volatile-*` policy with no key left that has a lifetime). It
/// refuses every command that may grow its memory, the [`INVALIDATE`] script's `SET` included,
/// while it goes on answering the reads of a hit.
fn refused_for_memory(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM")
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
    let moved: Vec<String> = call.invoke_async(conn).await?;
    Ok(Reclaimable::of(&keys, moved))
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

/// [`invalidate`], then `WAIT` until `ack.replicas` replicas of the tenant's master hold it. The
/// script and the `WAIT` travel in one pipeline on one connection to that master (its first key
/// routes it), so the `WAIT` covers exactly this script's writes even if a connection is
/// replaced between calls. `replayed_by`, when known, is a position at or past the end of the
/// commit records of every write being invalidated (the invalidator passes the primary's insert
/// position read after it saw their outbox rows): the new versions keep a known replay floor
/// where the previous ones had one.
///
/// While the tenant's slot migrates, the script is refused, and the versions are replaced one
/// by one instead; while Redis is full and may not evict, they are deleted (`OneByOne`), each
/// with its own `WAIT` in the same pipeline.
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
    let in_one_call = if tags.is_empty() || ack.replicas == 0 {
        invalidate_with_floor(conn, keyspace, tenant, tags, replayed_by).await.map_err(InvalidateError::from)
    } else {
        let (token, keys) = invalidation_keys(keyspace, tenant, tags);
        let floor = replayed_by.map(floor_text).unwrap_or_default();
        script_and_wait(conn, &keys, &token, &floor, ack).await
    };
    let how = match &in_one_call {
        Err(InvalidateError::Redis(error)) => OneByOne::instead_of_the_script(error),
        _ => None,
    };
    match how {
        Some(how) => {
            if let Some(acked) = versions_one_by_one(conn, keyspace, tenant, tags, how, Some(ack)).await? {
                ack.confirmed_by(acked)?;
            }
            Ok(Reclaimable::default())
        }
        None => in_one_call,
    }
}

/// [`INVALIDATE`] on `keys` with `token` and `floor`, and a `WAIT` for `ack`, in one pipeline.
async fn script_and_wait<C: ConnectionLike>(
    conn: &mut C,
    keys: &[String],
    token: &str,
    floor: &str,
    ack: ReplicaAck,
) -> Result<Reclaimable, InvalidateError> {
    let mut call = INVALIDATE.prepare_invoke();
    call.key(keys).arg(token).arg(floor);
    // A script inside a pipeline is not loaded for us: try it by hash, and on NOSCRIPT send its
    // source (which also loads it on that node for the next time).
    let pipeline = |by_hash: bool| {
        let mut pipe = redis::pipe();
        pipe.add_command(call.command(by_hash));
        pipe.cmd("WAIT").arg(ack.replicas).arg(ack.wait_ms());
        pipe
    };
    let reply: redis::RedisResult<(Vec<String>, u32)> = pipeline(true).query_async(conn).await;
    let (moved, acked) = match reply {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            pipeline(false).query_async(conn).await?
        }
        other => other?,
    };
    ack.confirmed_by(acked)?;
    Ok(Reclaimable::of(keys, moved))
}

/// How [`versions_one_by_one`] ends each version, when Redis refuses [`INVALIDATE`] itself.
#[derive(Debug, Clone, Copy)]
enum OneByOne {
    /// While the tenant's slot migrates between two masters, a script whose keys are not all on
    /// one node is refused (`TRYAGAIN`), and [`INVALIDATE`]'s reclaim key never exists, so it is
    /// refused for as long as the migration lasts, while lookups whose keys have not moved, or
    /// have all moved, are still served. Each version is replaced alone instead
    /// (`SET … XX KEEPTTL`; an absent version stays absent), which is all a lookup checks.
    Replace,
    /// Redis full with nothing it may evict refuses [`INVALIDATE`] and every `SET`, but not a
    /// deletion, which frees memory. Each version is deleted instead: an absent version matches
    /// no entry, so the hit and the fill refuse every entry built under the deleted one, and a
    /// reader that finds it absent creates a fresh random one (refused too while Redis is full:
    /// it reads Postgres).
    Delete,
}

impl OneByOne {
    /// How to end the versions when Redis refused [`INVALIDATE`] with `error`, if the refusal
    /// says the script cannot run now (none: the error stands).
    fn instead_of_the_script(error: &redis::RedisError) -> Option<Self> {
        if refused_while_migrating(error) {
            Some(Self::Replace)
        } else if refused_for_memory(error) {
            Some(Self::Delete)
        } else {
            None
        }
    }
}

/// Ends the version of each of `tags` with one command per key, which the cluster client follows
/// to whichever node holds it now. With `wait_for`, each command travels with its own `WAIT` in
/// one pipeline, which its key routes (a redirection moves the pipeline whole), so the `WAIT`
/// counts that write, on that key's master and connection; after the first `WAIT` that comes
/// back short, the rest go without one, so the call waits the timeout once at most. Returns how
/// many replicas that short `WAIT` counted (none when every `WAIT` was answered in full, or none
/// was sent). Alone, a `WAIT`
/// would go to every master, failing for one without replicas that holds none of these keys,
/// and, sent after a connection was replaced, would confirm writes it never saw. The member sets
/// stay in place (a later invalidation reclaims their entries) and the replay floors no longer
/// match any version, so they read as unknown.
async fn versions_one_by_one<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    tags: &[Tag],
    how: OneByOne,
    wait_for: Option<ReplicaAck>,
) -> redis::RedisResult<Option<u32>> {
    let token = fresh_token();
    let (mut wait_for, mut short) = (wait_for.filter(|ack| ack.replicas > 0), None);
    for tag in tags {
        let key = keyspace.version_key(tenant, tag);
        let mut pipe = redis::pipe();
        match how {
            OneByOne::Replace => pipe.cmd("SET").arg(&key).arg(&token).arg("XX").arg("KEEPTTL").ignore(),
            OneByOne::Delete => pipe.cmd("DEL").arg(&key).ignore(),
        };
        let Some(ack) = wait_for else {
            pipe.query_async::<()>(conn).await?;
            continue;
        };
        pipe.cmd("WAIT").arg(ack.replicas).arg(ack.wait_ms());
        let (acked,): (u32,) = pipe.query_async(conn).await?;
        if acked < ack.replicas {
            // Short once, the call fails as unconfirmed whatever follows: the other tags are
            // still written, without a `WAIT` each, so the call waits its timeout once in all.
            wait_for = None;
            short = Some(acked);
        }
    }
    Ok(short)
}

/// How long a probe's own key ([`Keyspace::probe_key`]) stays. Nothing reads it, so it may expire
/// at any time, during the probe's `WAIT` too: the write it stands for has been sent by then.
const PROBE_KEY_TTL_MS: u64 = 60_000;

/// Whether `tenant`'s invalidations can be done now, without doing any. With no replica to wait
/// for, an `EXISTS` on one of the tenant's keys, which routes it to the tenant's master. With
/// replicas, a `SET` of the tenant's probe key ([`Keyspace::probe_key`]) and a `WAIT` in one
/// pipeline: `WAIT` counts only the writes of the connection it is sent on, so the write gives
/// it one to wait for, and the probe can go on a connection of its own, where its `WAIT` holds
/// up no invalidation. The invalidator sends it for a tenant it holds back instead of claiming
/// the tenant's events again, so that no batch waits for a master that may still be down.
///
/// Invariant: writes no key but its own, which no lookup reads, so it changes no entry's
/// freshness whatever it answers; `Ok` says only that the master answered and, when replicas
/// must confirm, that enough of them hold what the master applied up to the probe's write.
pub async fn probe<C: ConnectionLike>(
    conn: &mut C,
    keyspace: &Keyspace,
    tenant: Uuid,
    ack: ReplicaAck,
) -> Result<(), InvalidateError> {
    let mut pipe = redis::pipe();
    if ack.replicas == 0 {
        pipe.cmd("EXISTS").arg(keyspace.version_key(tenant, &Tag::all())).ignore();
        pipe.query_async::<()>(conn).await?;
        return Ok(());
    }
    pipe.cmd("SET").arg(keyspace.probe_key(tenant)).arg(1).arg("PX").arg(PROBE_KEY_TTL_MS).ignore();
    pipe.cmd("WAIT").arg(ack.replicas).arg(ack.wait_ms());
    let (acked,): (u32,) = pipe.query_async(conn).await?;
    ack.confirmed_by(acked)
}

/// Unlinks the entries of reclaimed member sets, walking each with `SSCAN` and unlinking at most
/// [`RECLAIM_CHUNK`] entries per command, then the set itself. Purely memory: the entries it
/// unlinks can no longer be hit. An entry its tag's set of now holds was filled again since the invalidation
/// (the same page, read again: the fill stores an entry and registers it in one script) and is
/// kept; `SMISMEMBER` asks before each `UNLINK`, and one filled again between the two is unlinked,
/// which costs a miss. Returns how many entries it unlinked. Interrupted, the rest expires with
/// the sets' TTL. (Nothing adds to a reclaim key, so the scan sees every member; `SPOP` with a
/// count was measured slower per member on large sets, and a script asking and unlinking at once
/// held Redis 2.5 times longer per chunk.)
pub async fn reclaim<C: ConnectionLike>(conn: &mut C, reclaimable: &Reclaimable) -> redis::RedisResult<u64> {
    let mut unlinked = 0;
    for MovedSet { moved, current } in &reclaimable.sets {
        let mut cursor: u64 = 0;
        loop {
            let (next, members): (u64, Vec<String>) =
                redis::cmd("SSCAN").arg(moved).arg(cursor).arg("COUNT").arg(RECLAIM_CHUNK).query_async(conn).await?;
            for chunk in members.chunks(RECLAIM_CHUNK) {
                let filled_again: Vec<bool> =
                    redis::cmd("SMISMEMBER").arg(current).arg(chunk).query_async(conn).await?;
                let stale: Vec<&String> =
                    chunk.iter().zip(filled_again).filter(|(_, again)| !again).map(|(entry, _)| entry).collect();
                if !stale.is_empty() {
                    let removed: u64 = redis::cmd("UNLINK").arg(&stale).query_async(conn).await?;
                    unlinked += removed;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = redis::cmd("UNLINK").arg(moved).query_async(conn).await?;
    }
    Ok(unlinked)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn calls_to_one_master_share_the_wait_down_to_the_least_share() {
        let ack = ReplicaAck { replicas: 1, timeout: Duration::from_millis(500) };
        assert_eq!(ack.shared_by(1), ack);
        assert_eq!(ack.shared_by(0), ack);
        assert_eq!(ack.shared_by(4).timeout, Duration::from_millis(125));
        assert_eq!(ack.shared_by(4).replicas, 1);
        assert_eq!(ack.shared_by(100).timeout, ReplicaAck::MIN_SHARE);
        let short = ReplicaAck { replicas: 1, timeout: Duration::from_millis(5) };
        assert_eq!(short.shared_by(3).timeout, Duration::from_millis(5), "never longer than the whole wait");
        assert_eq!(ReplicaAck::MASTER_ONLY.shared_by(3), ReplicaAck::MASTER_ONLY);
    }

    /// The error the client makes of a server's error reply, as read off the wire.
    fn reply_error(reply: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).unwrap();
        value.extract_error().expect_err("an error reply")
    }

    #[test]
    fn a_reply_about_a_slot_on_the_move_is_a_refusal_and_one_about_a_failing_master_is_not() {
        for moving in ["TRYAGAIN Multiple keys request during rehashing of slot", "ASK 3999 127.0.0.1:6381"] {
            assert!(refused_while_migrating(&reply_error(moving)), "{moving}");
        }
        // A master that is down is named by `MOVED` from the others, as long as they still
        // count it as the slot's master.
        for failing in [
            "MOVED 3999 127.0.0.1:6381",
            "CLUSTERDOWN The cluster is down",
            "LOADING Redis is loading the dataset in memory",
            "OOM command not allowed",
        ] {
            assert!(!refused_while_migrating(&reply_error(failing)), "{failing}");
        }
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!refused_while_migrating(&io));
    }

    #[test]
    fn an_error_reply_about_the_call_is_the_masters_answer_and_one_about_the_node_is_not() {
        let answered = |error: redis::RedisError| InvalidateError::Redis(error).master_answered();
        for about_the_call in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR Error running script (call to f_0123): @user_script:3: bad argument",
        ] {
            assert!(answered(reply_error(about_the_call)), "{about_the_call}");
        }
        for about_the_node in [
            "MOVED 3999 127.0.0.1:6381",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(!answered(reply_error(about_the_node)), "{about_the_node}");
        }
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!answered(io), "no reply");
        assert!(InvalidateError::MasterWithoutReplica.master_answered());
    }
}
