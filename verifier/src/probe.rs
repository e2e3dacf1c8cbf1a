//! The staleness probe: a risk of each tenant that only the probe writes, the tenants taken in
//! turn, one round each: retitled `probe <round>` in plain SQL a quarter of a second after the
//! previous round's reads end, and read through the cached API. Every tenant in turn, so that a
//! fault on any Redis master (each tenant's entries live on its slot's) shows in the window.
//! It measures the window (commit → first read that shows the new title) and checks G1 read by
//! read: once the invalidator has acknowledged a round's invalidation, no read of that risk may
//! show an older round, whatever fault comes between. A read that shows an older round than a
//! read before it, while the newer one is still in its window, is allowed (a read from Postgres
//! while Redis could not answer is newer than the cache until the invalidator catches up) and
//! only counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openrisk_shared::keys::Tag;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::urls::risk_detail;
use crate::world::World;

/// One window the probe measured: from a commit to the first read that showed it.
#[derive(Debug, Clone)]
pub struct ProbeWindow {
    pub seconds: f64,
    /// The phase (a fault's name, `steady`, …) the commit came during.
    pub phase: String,
    /// The tenant whose probe risk was written.
    pub tenant: Uuid,
}

/// How long a probe reads before it counts its commit as never shown.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads made at once after the first fresh one, each checked against it.
const READS_AFTER_FRESH: usize = 3;

/// The title the probe gives its risk in `round`; round 0 is the title it is created with.
fn title(round: u64) -> String {
    if round == 0 { "probe".to_owned() } else { format!("probe {round}") }
}

/// The round whose title a body of the probe's risk shows, if it shows one.
fn round_in(body: &[u8]) -> Option<u64> {
    let body = std::str::from_utf8(body).ok()?;
    let rest = &body[body.find("\"title\":\"probe")? + "\"title\":\"probe".len()..];
    if rest.starts_with('"') {
        return Some(0);
    }
    let digits = rest.strip_prefix(' ')?;
    digits[..digits.find('"')?].parse().ok()
}

/// The newest of some rounds (the newest any read showed, or the newest whose invalidation the
/// invalidator acknowledged), with its commit instant, so that a read of an older round is told.
#[derive(Debug, Default)]
struct Newest {
    newest: Option<(u64, Instant)>,
}

impl Newest {
    /// Notes `round`, committed at `committed`, if it is newer than the newest so far.
    fn note(&mut self, round: u64, committed: Instant) {
        if self.newest.is_none_or(|(newest, _)| round > newest) {
            self.newest = Some((round, committed));
        }
    }

    /// The newest round, when `round` is older than it.
    fn newer_than(&self, round: u64) -> Option<u64> {
        self.newest.map(|(newest, _)| newest).filter(|newest| round < *newest)
    }

    /// Forgets the newest round when `lost` says its commit may have been lost (a primary crash
    /// after it), since an older title is then the database's truth again.
    fn forget_if(&mut self, lost: impl FnOnce(Instant) -> bool) {
        if self.newest.is_some_and(|(_, committed)| lost(committed)) {
            self.newest = None;
        }
    }
}

/// What the probe knows of one tenant's risk: its id, the last round it was given, the commit
/// instant of each round whose `UPDATE` returned, the newest round a read showed and the newest
/// whose invalidation is acknowledged.
struct ProbeRisk {
    id: Uuid,
    round: u64,
    commits: BTreeMap<u64, Instant>,
    seen: Newest,
    acknowledged: Newest,
}

impl ProbeRisk {
    fn new(id: Uuid, created: Instant) -> Self {
        let commits = BTreeMap::from([(0, created)]);
        Self { id, round: 0, commits, seen: Newest::default(), acknowledged: Newest::default() }
    }

    /// Reads the risk through the cached API and checks the round it shows: older than a round
    /// whose invalidation was acknowledged breaks G1; older than one a read showed before goes
    /// back within the staleness window (counted, allowed). The round shown, if the read answered.
    async fn read(&mut self, world: &World, tenant: Uuid, path: &str) -> Option<u64> {
        let Ok((200, body, cache_status)) = world.get(&world.api_base, tenant, path).await else { return None };
        let round = round_in(&body)?;
        let stats = &world.stats;
        stats.probe_reads.fetch_add(1, Ordering::Relaxed);
        let lost = |committed| world.primary_crashed_since(committed);
        self.seen.forget_if(lost);
        self.acknowledged.forget_if(lost);
        let described = |newer: u64| {
            format!(
                "during {}: a read showed '{}' ({cache_status}) after '{}'",
                world.phase(),
                title(round),
                title(newer)
            )
        };
        if let Some(newer) = self.acknowledged.newer_than(round) {
            stats.probe_violations.lock().unwrap().push(described(newer));
        } else if let Some(newer) = self.seen.newer_than(round) {
            stats.probe_went_back.lock().unwrap().push(described(newer));
        }
        let committed = self.commits.get(&round).copied().unwrap_or_else(Instant::now);
        self.seen.note(round, committed);
        Some(round)
    }

    /// Notes the newest round whose `UPDATE` returned as acknowledged when the outbox holds no
    /// event of the risk any more: the invalidator has applied (and Redis replicas confirmed)
    /// every event committed before this look, so from now on no read may show an older round.
    /// Whether it did.
    async fn look_for_acknowledgement(&mut self, sql: &Client, tenant: Uuid) -> bool {
        let Some((&round, &committed)) = self.commits.last_key_value() else { return false };
        let tag = Tag::risk(self.id).to_string();
        let pending = "SELECT EXISTS (SELECT 1 FROM cache_outbox_pending WHERE tenant_id = $1 AND $2 = ANY (tags))";
        let acknowledged = matches!(sql.query_one(pending, &[&tenant, &tag]).await, Ok(row) if !row.get::<_, bool>(0));
        if acknowledged {
            self.acknowledged.note(round, committed);
        }
        acknowledged
    }
}

/// Measures the staleness window of plain-SQL writes: commit a new title of a tenant's probe
/// risk, then read it through the cached API until the new title shows, one tenant after
/// another; every read is also checked against the rounds of that risk acknowledged and read
/// before it.
pub async fn probe(world: Arc<World>) {
    let mut client: Option<Client> = None;
    let mut risks: Vec<Option<ProbeRisk>> = world.tenants.iter().map(|_| None).collect();
    let mut turn = 0;
    while !world.stopping() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = world.sql().await.ok();
            continue;
        }
        let sql = client.as_ref().expect("connected");
        let index = turn % risks.len();
        turn += 1;
        let tenant = world.tenants[index].id;
        let Some(probe_risk) = risks[index].as_mut() else {
            let created = sql
                .query_one(
                    "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, $2, 1, 1) RETURNING id",
                    &[&tenant, &title(0)],
                )
                .await;
            risks[index] = created.ok().map(|row| ProbeRisk::new(row.get(0), Instant::now()));
            continue;
        };
        let read = risk_detail(&world.keyspace, tenant, probe_risk.id);
        world.known.lock().unwrap().entry(read.key.clone()).or_insert_with(|| read.clone());
        // The last round's event has usually been acknowledged by now (250 ms after its first
        // fresh read): every read from here on is checked against it.
        if probe_risk.look_for_acknowledgement(sql, tenant).await {
            world.stats.probe_acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        // Make sure it is cached, so the window is the cache's and not a miss.
        probe_risk.read(&world, tenant, &read.path).await;
        let guard = world.gate.read().await;
        probe_risk.round += 1;
        let round = probe_risk.round;
        let update = sql.execute("UPDATE risks SET title = $2 WHERE id = $1", &[&probe_risk.id, &title(round)]).await;
        let committed = Instant::now();
        if update.is_err() {
            continue;
        }
        probe_risk.commits.insert(round, committed);
        let phase = world.phase();
        let mut fresh = false;
        // A primary crash may take the commit with it: then no read will ever show it.
        let lost = || world.primary_crashed_since(committed);
        while committed.elapsed() < PROBE_TIMEOUT && !world.stopping() && !lost() {
            if probe_risk.read(&world, tenant, &read.path).await == Some(round) {
                fresh = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let window = committed.elapsed();
        if fresh {
            for _ in 0..READS_AFTER_FRESH {
                probe_risk.read(&world, tenant, &read.path).await;
            }
            world.stats.staleness.lock().unwrap().push(ProbeWindow { seconds: window.as_secs_f64(), phase, tenant });
        } else if !world.stopping() && !lost() {
            world.stats.probe_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_is_read_from_the_title_a_body_shows() {
        assert_eq!(round_in(br#"{"id":"x","title":"probe","impact":1}"#), Some(0));
        assert_eq!(round_in(br#"{"id":"x","title":"probe 17","impact":1}"#), Some(17));
        assert_eq!(round_in(br#"{"id":"x","title":"probe 1"}"#), Some(1));
        assert_eq!(round_in(br#"{"title":"API title 3"}"#), None);
        assert_eq!(round_in(br#"{"title":"probe x"}"#), None);
        for round in [0, 1, 250] {
            let body = format!(r#"{{"title":"{}"}}"#, title(round));
            assert_eq!(round_in(body.as_bytes()), Some(round));
        }
    }

    #[test]
    fn a_round_older_than_the_newest_noted_is_told_with_the_newest() {
        let at = Instant::now();
        let mut newest = Newest::default();
        assert_eq!(newest.newer_than(0), None);
        newest.note(3, at);
        assert_eq!(newest.newer_than(3), None);
        newest.note(4, at);
        newest.note(2, at);
        assert_eq!(newest.newer_than(3), Some(4));
        assert_eq!(newest.newer_than(0), Some(4));
        assert_eq!(newest.newer_than(5), None);
    }

    #[test]
    fn an_older_round_is_accepted_again_once_the_newer_commit_may_have_been_lost() {
        let at = Instant::now();
        let mut newest = Newest::default();
        newest.note(4, at);
        newest.forget_if(|_| false);
        assert_eq!(newest.newer_than(3), Some(4));
        newest.forget_if(|committed| committed == at);
        assert_eq!(newest.newer_than(3), None);
        newest.note(3, at);
        assert_eq!(newest.newer_than(2), Some(3));
    }
}
