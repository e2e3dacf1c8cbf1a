//! Replay floors: how far a Postgres replica must have replayed before rows read from it may be
//! cached under a snapshot's versions.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::Snapshot;
use super::script::KeyedScript;
use crate::db::Lsn;
use crate::keys::{Keyspace, Tag};

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
static STAMP_FLOOR: LazyLock<KeyedScript> = LazyLock::new(|| {
    KeyedScript::new(
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

/// A WAL position as stored in a floor: 16 hex digits, so the scripts compare fixed-width text.
pub(super) fn floor_text(lsn: Lsn) -> String {
    format!("{:016x}", lsn.0)
}
