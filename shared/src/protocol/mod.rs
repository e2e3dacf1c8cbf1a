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
//!   and [`reclaim`] unlinks its entries later, a bounded chunk per command, on a few tasks at
//!   most ([`BackgroundReclaims`]).
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
use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::keys::{Keyspace, Tag};
use script::KeyedScript;

mod background_reclaims;
mod eviction;
mod invalidation;
mod replay_floor;
mod script;

pub use background_reclaims::{BackgroundReclaims, RECLAIMS_AT_ONCE};
pub use eviction::{SettingsProblems, check_server_settings, eviction_policy_problem, persistence_problem};
pub use invalidation::{
    InvalidateError, Reclaimable, ReplicaAck, invalidate, invalidate_replicated, probe, reclaim,
    refused_while_migrating,
};
pub use replay_floor::{ReplayFloor, replay_floor, stamp_replay_floor};

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
static FILL: LazyLock<KeyedScript> = LazyLock::new(|| {
    KeyedScript::new(
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
    let mut call = FILL.prepare_invoke();
    call.key(entry.entry_key);
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

#[cfg(test)]
mod tests {
    use super::*;

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
