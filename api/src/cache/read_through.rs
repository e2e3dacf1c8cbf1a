//! The read path: one `MGET` on a hit; on a miss, a database read (once per key in this
//! process) and a fill through the protocol's version check. With read replicas, the miss reads
//! a replica only once it has replayed the replay floor of the snapshot's versions.

use std::sync::Arc;

use bytes::Bytes;
use openrisk_shared::protocol::{self, Fill, Snapshot};
use openrisk_shared::{CacheStatus, Tag};
use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::single_flight::{Role, Seat};
use super::{Cache, CacheableRead, Loader, MissStep, Served, etag_of};
use crate::db::replicas::{ReadRouter, Reader};
use crate::error::ApiError;
use crate::metrics::{CacheResult, FillOutcome};

/// The result of one miss: the body and how the fill went, shared with collapsed waiters.
#[derive(Debug, Clone)]
pub(super) struct MissResult {
    body: Bytes,
    etag: String,
    cache_status: CacheStatus,
}

impl MissResult {
    fn new(body: Vec<u8>, cache_status: CacheStatus) -> Self {
        let etag = etag_of(&body);
        Self { body: Bytes::from(body), etag, cache_status }
    }
}

/// What one lookup found for a cacheable read.
#[derive(Debug)]
pub enum Lookup {
    /// Current in Redis: the stored bytes.
    Hit(Served),
    /// Not current: the versions seen, to read the database under.
    Miss(Snapshot),
    /// Redis was skipped or failed; the read goes to Postgres with this `Cache-Status`.
    Skipped(CacheStatus),
}

/// A lookup already made for this request (by the hit path, [`crate::hit_path`]), which the
/// handler's [`Cache::read_through`] takes instead of asking Redis a second time. It lives for
/// the one request's future, as a task-local value.
#[derive(Debug)]
pub struct PriorLookup {
    key: String,
    lookup: Lookup,
}

tokio::task_local! {
    static PRIOR_LOOKUP: std::cell::RefCell<Option<PriorLookup>>;
}

impl PriorLookup {
    /// Runs `request` with this lookup available to the read of `key` inside it.
    pub async fn scope<F: Future>(key: String, lookup: Lookup, request: F) -> F::Output {
        PRIOR_LOOKUP.scope(std::cell::RefCell::new(Some(Self { key, lookup })), request).await
    }

    /// The lookup made for `key` in this request, once.
    fn take(key: &str) -> Option<Lookup> {
        PRIOR_LOOKUP
            .try_with(|prior| {
                let mut prior = prior.borrow_mut();
                if prior.as_ref().is_some_and(|prior| prior.key == key) { prior.take() } else { None }
            })
            .ok()
            .flatten()
            .map(|prior| prior.lookup)
    }
}

impl Cache {
    /// The entry key and the complete tag list (with `all`) of `read`.
    pub fn key_and_tags(&self, read: &CacheableRead) -> (String, Vec<Tag>) {
        let mut tags = read.tags.clone();
        tags.push(Tag::all());
        tags.sort();
        tags.dedup();
        let key = self.keyspace.entry_key(read.tenant, super::RESPONSE_SCHEMA_VERSION, read.resource, &read.params);
        (key, tags)
    }

    /// Looks `key` up in one `MGET` (unless the cache is off or its breaker open), counting the
    /// answer in the cache metrics of `route`.
    pub async fn lookup(&self, route: &'static str, tenant: Uuid, key: &str, tags: &[Tag]) -> Lookup {
        let Some(mut conn) = self.connection() else {
            self.metrics.cache_request(route, CacheResult::Bypass);
            return Lookup::Skipped(CacheStatus::Disabled);
        };
        let breaker = self.breakers.of(tenant);
        if !breaker.allow() {
            self.metrics.cache_request(route, CacheResult::Bypass);
            return Lookup::Skipped(CacheStatus::BreakerOpen);
        }
        match self.call("lookup", &breaker, protocol::lookup(&mut conn, &self.keyspace, tenant, key, tags)).await {
            Err(_) => {
                self.metrics.cache_request(route, CacheResult::Error);
                Lookup::Skipped(CacheStatus::LookupFailed)
            }
            Ok(protocol::Lookup::Hit(entry)) => {
                self.metrics.cache_request(route, CacheResult::Hit);
                Lookup::Hit(Served { body: entry.body, etag: entry.etag, cache_status: CacheStatus::Hit })
            }
            Ok(protocol::Lookup::Miss(snapshot)) => {
                self.metrics.cache_request(route, CacheResult::Miss);
                Lookup::Miss(snapshot)
            }
        }
    }

    /// Serves `read` from Redis when current, otherwise through `load` (once per key and write
    /// epoch in this process), filling the cache when the protocol allows.
    pub async fn read_through(
        self: &Arc<Self>,
        read: CacheableRead,
        reads: Arc<ReadRouter>,
        load: Loader,
    ) -> Result<Served, ApiError> {
        let route = read.route;
        let (key, tags) = self.key_and_tags(&read);
        let lookup = match PriorLookup::take(&key) {
            Some(prior) => prior,
            None => self.lookup(route, read.tenant, &key, &tags).await,
        };
        match lookup {
            Lookup::Skipped(cache_status) => uncached(&reads, read.tenant, load, cache_status).await,
            Lookup::Hit(served) => Ok(served),
            Lookup::Miss(snapshot) => {
                let cache = Arc::clone(self);
                let tenant = read.tenant;
                let (flight_key, started_from) = (key.clone(), snapshot.clone());
                let miss = |seat| {
                    let start = MissStart { snapshot, seat };
                    async move { cache.miss(route, tenant, &key, start, &reads, load).await }
                };
                let (role, result) = self.flights.join(flight_key, started_from, miss);
                if role == Role::Follower {
                    self.metrics.singleflight_wait(route);
                }
                let result = result.await?;
                let cache_status = match role {
                    Role::Leader => result.cache_status,
                    Role::Follower => CacheStatus::Collapsed,
                };
                Ok(Served { body: result.body, etag: result.etag, cache_status })
            }
        }
    }

    /// The miss path: read, then fill through the protocol. A snapshot that lacks versions
    /// cannot protect a read made before they exist: collection versions are created before the
    /// read; a missing row version only once a first read showed the row exists, after which
    /// the database is read again under it. Both reads of an incomplete snapshot go to the
    /// primary (the new versions have no replay floor yet).
    async fn miss(
        &self,
        route: &'static str,
        tenant: Uuid,
        key: &str,
        MissStart { snapshot, seat }: MissStart,
        reads: &ReadRouter,
        load: Loader,
    ) -> Result<MissResult, ApiError> {
        let _place = reads.shares().enter(tenant).await?;
        let mut conn = self.connection().ok_or_else(ApiError::internal)?;
        let (snapshot, body) = if snapshot.is_complete() {
            let reader = self.reader_for(&mut conn, tenant, &snapshot, reads).await;
            let body = read_with(reads, &load, reader).await?;
            (snapshot, body)
        } else {
            // A row's version is created only once a read showed the row exists. Until the
            // versions exist, callers join this miss although writes came between their lookup
            // and ours: invalidating an absent version changes nothing they could compare. So
            // none of them gets the first read (see `Seat::leave`).
            let first = if snapshot.lacks_only_collection_versions() {
                None
            } else {
                let first = load(reads.primary()).await;
                self.hold(MissStep::FirstRead, route, key).await;
                match first {
                    Ok(body) => Some(body),
                    Err(error) => {
                        let joined = seat.leave();
                        return if joined { self.read_again_for_joined(route, reads, &load).await } else { Err(error) };
                    }
                }
            };
            let ttl = self.dependencies_ttl_secs();
            let created = protocol::create_missing_versions(&mut conn, &self.keyspace, tenant, &snapshot, ttl);
            match self.call("create_versions", &self.breakers.of(tenant), created).await {
                Ok(completed) => {
                    seat.now_from(completed.clone());
                    (completed, load(reads.primary()).await?)
                }
                Err(_) => {
                    let joined = seat.leave();
                    let body = match first {
                        Some(body) if !joined => body,
                        _ => load(reads.primary()).await?,
                    };
                    return self.unfilled(route, body);
                }
            }
        };
        if body.len() > self.settings.max_entry_bytes as usize {
            self.metrics.cache_fill(route, FillOutcome::TooLarge);
            return Ok(MissResult::new(body, CacheStatus::TooLarge));
        }
        self.hold(MissStep::Fill, route, key).await;
        let etag = etag_of(&body);
        let fill = Fill {
            entry_key: key,
            body: &body,
            etag: &etag,
            ttl_secs: self.jittered_ttl(),
            dependencies_ttl_secs: self.dependencies_ttl_secs(),
        };
        let fill = protocol::fill(&mut conn, &self.keyspace, tenant, &snapshot, fill);
        let filled = self.call("fill", &self.breakers.of(tenant), fill).await;
        let (outcome, cache_status) = match filled {
            Ok(true) => (FillOutcome::Stored, CacheStatus::Stored),
            Ok(false) => (FillOutcome::Rejected, CacheStatus::FillRejected),
            Err(_) => (FillOutcome::Error, CacheStatus::FillFailed),
        };
        self.metrics.cache_fill(route, outcome);
        Ok(MissResult { body: Bytes::from(body), etag, cache_status })
    }

    /// Where a miss under the complete `snapshot` reads: a replica that has replayed the
    /// snapshot's replay floor, else the primary. An unknown floor is taken to be the primary's
    /// current position, and recorded for the next miss under the same versions.
    async fn reader_for<C: ConnectionLike>(
        &self,
        conn: &mut C,
        tenant: Uuid,
        snapshot: &Snapshot,
        reads: &ReadRouter,
    ) -> Reader {
        if !reads.has_replicas() {
            return reads.primary();
        }
        let breaker = self.breakers.of(tenant);
        let found = protocol::replay_floor(conn, &self.keyspace, tenant, snapshot);
        let Ok(found) = self.call("replay_floor", &breaker, found).await else {
            return reads.bypass_reader().await;
        };
        if let Some(floor) = found.required() {
            return reads.reader_at(floor).await;
        }
        let Ok(position) = reads.primary_position().await else { return reads.primary() };
        let stamp = protocol::stamp_replay_floor(conn, &self.keyspace, tenant, snapshot, &found, position);
        // Best effort: unrecorded, the next miss asks the primary again.
        let _ = self.call("stamp_floor", &breaker, stamp).await;
        reads.reader_at(found.with_unknown_at(position)).await
    }

    /// The miss's first read failed (the row was not there, say), and callers joined it meanwhile,
    /// whose lookups may have followed a write that the first read predates: the database is read
    /// again for all of them, and not cached (the versions were never created).
    async fn read_again_for_joined(
        &self,
        route: &'static str,
        reads: &ReadRouter,
        load: &Loader,
    ) -> Result<MissResult, ApiError> {
        let body = load(reads.primary()).await?;
        self.metrics.cache_fill(route, FillOutcome::Rejected);
        Ok(MissResult::new(body, CacheStatus::FillRejected))
    }

    /// Runs the miss hook, if any, at `step` (tests hold a reader there).
    async fn hold(&self, step: MissStep, route: &'static str, key: &str) {
        if let Some(hook) = &self.miss_hook {
            hook(step, route, key).await;
        }
    }

    /// A miss answered without filling, because Redis failed while preparing the fill.
    fn unfilled(&self, route: &'static str, body: Vec<u8>) -> Result<MissResult, ApiError> {
        self.metrics.cache_fill(route, FillOutcome::Error);
        Ok(MissResult::new(body, CacheStatus::FillFailed))
    }
}

/// Where a miss starts: the versions its lookup saw, and its seat in the single-flight table (told
/// when the miss goes on under versions it created).
struct MissStart {
    snapshot: Snapshot,
    seat: Seat<MissResult, Snapshot>,
}

/// Runs `load` on `reader`, then ends the reader's transaction. A replica that fails mid-read
/// (restarted, or a query cancelled by a replay conflict) leaves the read to the primary.
async fn read_with(reads: &ReadRouter, load: &Loader, reader: Reader) -> Result<Vec<u8>, ApiError> {
    let from_replica = matches!(reader, Reader::Replica(_));
    let body = load(reader.clone()).await;
    drop(reader);
    match body {
        Err(ApiError::Internal(_) | ApiError::Unavailable(_)) if from_replica => {
            tracing::warn!("a replica read failed; reading the primary");
            load(reads.primary()).await
        }
        body => body,
    }
}

/// Reads from Postgres without touching Redis, within the tenant's share: from a replica only if
/// it has every write committed before the read began.
pub(crate) async fn uncached(
    reads: &ReadRouter,
    tenant: Uuid,
    load: Loader,
    cache_status: CacheStatus,
) -> Result<Served, ApiError> {
    let _place = reads.shares().enter(tenant).await?;
    let body = read_with(reads, &load, reads.bypass_reader().await).await?;
    let etag = etag_of(&body);
    Ok(Served { body: Bytes::from(body), etag, cache_status })
}
