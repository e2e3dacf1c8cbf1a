//! The staleness probe: a risk of the first tenant that only the probe writes, retitled
//! `probe <round>` in plain SQL four times a second and read through the cached API. It measures
//! the window (commit → first read that shows the new title) and checks that no read ever shows
//! an older title than one a read before it showed: once a write has been seen, the cache may not
//! serve what came before it (guarantee G1), whatever the fault between the two reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::urls::risk_detail;
use crate::world::World;

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

/// The newest round any read has shown, and when it was committed, so that a later read of an
/// older round is caught as a read that went back in time.
#[derive(Debug, Default)]
struct NewestSeen {
    newest: Option<(u64, Instant)>,
}

impl NewestSeen {
    /// Notes a read that showed `round`, committed at `committed`; `Err` with the newer round
    /// an earlier read showed when this one is older.
    fn observe(&mut self, round: u64, committed: Instant) -> Result<(), u64> {
        match self.newest {
            Some((newest, _)) if round < newest => Err(newest),
            Some((newest, _)) if round == newest => Ok(()),
            _ => {
                self.newest = Some((round, committed));
                Ok(())
            }
        }
    }

    /// Forgets the newest round when `lost` says its commit may have been lost (a primary crash
    /// after it), since an older title is then the database's truth again.
    fn forget_if(&mut self, lost: impl FnOnce(Instant) -> bool) {
        if self.newest.is_some_and(|(_, committed)| lost(committed)) {
            self.newest = None;
        }
    }
}

/// What the probe knows of its risk: its id, the commit instant of each round it committed.
struct ProbeRisk {
    id: Uuid,
    commits: Vec<Instant>,
    seen: NewestSeen,
}

impl ProbeRisk {
    /// Reads the risk through the cached API and checks the title it shows against the newest
    /// shown before; the round it shows, if the read answered.
    async fn read(&mut self, world: &World, tenant: Uuid, path: &str) -> Option<u64> {
        let Ok((200, body, _)) = world.get(&world.api_base, tenant, path).await else { return None };
        let round = round_in(&body)?;
        world.stats.probe_reads.fetch_add(1, Ordering::Relaxed);
        self.seen.forget_if(|committed| world.primary_crashed_since(committed));
        let committed = self.commits.get(round as usize).copied().unwrap_or_else(Instant::now);
        if let Err(newest) = self.seen.observe(round, committed) {
            let phase = world.phase();
            world.stats.probe_regressions.lock().unwrap().push(format!(
                "during {phase}: a read showed '{}' after one had shown '{}'",
                title(round),
                title(newest)
            ));
        }
        Some(round)
    }
}

/// Measures the staleness window of plain-SQL writes: commit a new title of the probe's risk,
/// then read it through the cached API until the new title shows; every read is also checked to
/// show no older title than the reads before it.
pub async fn probe(world: Arc<World>) {
    let tenant = world.tenants[0].id;
    let mut client: Option<Client> = None;
    let mut risk: Option<ProbeRisk> = None;
    while !world.stopping() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = world.sql().await.ok();
            continue;
        }
        let sql = client.as_ref().expect("connected");
        let Some(probe_risk) = risk.as_mut() else {
            let created = sql
                .query_one(
                    "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, $2, 1, 1) RETURNING id",
                    &[&tenant, &title(0)],
                )
                .await;
            let commits = vec![Instant::now()];
            risk = created.ok().map(|row| ProbeRisk { id: row.get(0), commits, seen: NewestSeen::default() });
            continue;
        };
        let read = risk_detail(&world.keyspace, tenant, probe_risk.id);
        world.known.lock().unwrap().entry(read.key.clone()).or_insert_with(|| read.clone());
        // Make sure it is cached, so the window is the cache's and not a miss.
        probe_risk.read(&world, tenant, &read.path).await;
        let guard = world.gate.read().await;
        let round = probe_risk.commits.len() as u64;
        let update = sql.execute("UPDATE risks SET title = $2 WHERE id = $1", &[&probe_risk.id, &title(round)]).await;
        let committed = Instant::now();
        // The round's instant is kept even when the answer was lost: the commit may have happened.
        probe_risk.commits.push(committed);
        if update.is_err() {
            continue;
        }
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
        }
        drop(guard);
        if fresh {
            world.stats.staleness.lock().unwrap().push((window.as_secs_f64(), phase));
        } else if !world.stopping() && !lost() {
            world.stats.probe_timeouts.fetch_add(1, Ordering::Relaxed);
        }
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
    fn a_read_of_an_older_round_than_one_seen_before_is_caught() {
        let at = Instant::now();
        let mut seen = NewestSeen::default();
        assert_eq!(seen.observe(3, at), Ok(()));
        assert_eq!(seen.observe(3, at), Ok(()));
        assert_eq!(seen.observe(4, at), Ok(()));
        assert_eq!(seen.observe(3, at), Err(4));
        assert_eq!(seen.observe(0, at), Err(4));
        assert_eq!(seen.observe(5, at), Ok(()));
    }

    #[test]
    fn an_older_round_is_accepted_again_once_the_newer_commit_may_have_been_lost() {
        let at = Instant::now();
        let mut seen = NewestSeen::default();
        seen.observe(4, at).unwrap();
        seen.forget_if(|_| false);
        assert_eq!(seen.observe(3, at), Err(4));
        seen.forget_if(|committed| committed == at);
        assert_eq!(seen.observe(3, at), Ok(()));
        assert_eq!(seen.observe(2, at), Err(3));
    }
}
