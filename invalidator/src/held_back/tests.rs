//! The holds' life cycle, driven with explicit instants rather than by waiting.

use super::*;

/// A single Redis: no tenant's master is known.
fn no_master(_: Uuid) -> Option<Arc<str>> {
    None
}

fn held_back() -> HeldBack {
    HeldBack::new(IntGauge::new("held", "held").unwrap())
}

/// A cluster master's node id.
fn master(id: &str) -> Option<Arc<str>> {
    Some(Arc::from(id))
}

/// The longest first step of [`reconnect_backoff`] (50 ms and its jitter).
const FIRST_STEP: Duration = Duration::from_millis(100);

#[test]
fn a_held_tenant_is_left_out_of_claims_until_a_probe_clears_it() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let holding = held.hold(tenant, now, Failed::Unreachable, None);
    assert!(holding.delay > Duration::ZERO && holding.delay <= MAX_RECONNECT_DELAY && !holding.again);
    assert_eq!(held.next_probe(), Some(now + holding.delay));
    assert_eq!(held.due_for_probe(now), Vec::<Uuid>::new(), "not probed before its hold ends");
    let ended = now + holding.delay;
    assert_eq!(held.due_for_probe(ended), vec![tenant]);
    assert_eq!(held.due_for_probe(ended), Vec::<Uuid>::new(), "one probe at a time");
    assert_eq!(held.next_probe(), None, "the probe's answer moves it on");
    assert_eq!(held.sitting_out(ended + MAX_RECONNECT_DELAY * 4), vec![tenant], "however long the probe takes");
    held.probed(tenant, ended, Ok(()));
    assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new());
    assert_eq!(held.gauge.get(), 0);
}

#[test]
fn a_failed_probe_holds_the_tenant_for_the_next_step_of_its_backoff() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let first = held.hold(tenant, now, Failed::Unreachable, None).delay;
    let ended = now + first;
    held.due_for_probe(ended);
    let again = held.hold(tenant, ended, Failed::Unreachable, None);
    assert!(again.again);
    assert_eq!(held.next_probe(), Some(ended + again.delay));
    assert_eq!(held.sitting_out(ended), vec![tenant]);
    assert_eq!(held.gauge.get(), 1);
}

#[test]
fn a_probe_dropped_unanswered_counts_as_a_failed_one() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let ended = now + held.hold(tenant, now, Failed::Unreachable, None).delay;
    assert_eq!(held.due_for_probe(ended), vec![tenant]);
    drop(held.on_its_way(tenant));
    assert!(held.next_probe().is_some(), "probed again after its next backoff step");
    assert_eq!(held.sitting_out(ended), vec![tenant]);

    let ended = held.next_probe().unwrap();
    assert_eq!(held.due_for_probe(ended), vec![tenant]);
    assert_eq!(held.on_its_way(tenant).answer(Ok(()), None), None);
    assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "an answered probe is not failed by its drop");

    held.hold(tenant, ended, Failed::Unreachable, None);
    let ended = held.next_probe().unwrap();
    assert_eq!(held.due_for_probe(ended), vec![tenant]);
    let probe = held.on_its_way(tenant);
    held.release(tenant);
    drop(probe);
    assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "a tenant released since is not held again");
}

#[tokio::test]
async fn each_answer_of_a_probe_wakes_the_replica_once() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let woken = tokio::time::timeout(Duration::from_millis(20), held.news()).await;
    assert!(woken.is_err(), "no probe, no wake-up");
    let ended = now + held.hold(tenant, now, Failed::Unreachable, None).delay;
    held.due_for_probe(ended);
    let again = held.probed(tenant, ended, Err((Failed::Unreachable, None))).expect("held again");
    held.news().await;
    assert_eq!(held.next_probe(), Some(ended + again.delay), "the woken replica waits for the new hold's end");
    let ended = ended + again.delay;
    held.due_for_probe(ended);
    assert_eq!(held.probed(tenant, ended, Ok(())), None);
    held.news().await;
    assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "and claims the cleared tenant's events");
    let woken = tokio::time::timeout(Duration::from_millis(20), held.news()).await;
    assert!(woken.is_err(), "one answer, one wake-up");
}

#[test]
fn a_tenant_whose_master_changed_while_no_replica_confirmed_has_its_events_applied_again_from_the_first() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    held.hold(tenant, now, Failed::Unreplicated, None);
    assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 0)]);
    held.applied_before(tenant, 42, HashSet::new());
    assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 42)], "the same master keeps them");
    assert_eq!(held.unreplicated(no_master), vec![(tenant, 42)], "an unknown master is not a new one");
    assert_eq!(held.unreplicated(|_| Some(b.clone())), vec![(tenant, 0)], "a new master gets them all");
    held.applied_before(tenant, 50, HashSet::new());
    assert_eq!(held.unreplicated(|_| Some(b.clone())), vec![(tenant, 50)]);

    held.hold(tenant, now, Failed::Unreachable, None);
    held.hold(tenant, now, Failed::Unreplicated, None);
    assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 0)], "after an outage, from the first");
    held.applied_before(tenant, 60, HashSet::new());
    assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 60)], "the master then applied is the one kept");
}

#[test]
fn an_event_applied_on_a_held_tenants_master_is_left_out_until_another_master_serves_it() {
    let (held, tenant) = (held_back(), Uuid::new_v4());
    held.hold(tenant, Instant::now(), Failed::Unreplicated, None);
    held.unreplicated(|_| master("a"));
    held.applied_before(tenant, 42, HashSet::from([7, 9]));
    held.unreplicated(|_| master("a"));
    assert_eq!(held.applied_ids(), HashMap::from([(tenant, HashSet::from([7, 9]))]), "the same master has them");
    held.applied_before(tenant, 42, HashSet::from([9]));
    assert_eq!(held.applied_ids(), HashMap::from([(tenant, HashSet::from([9]))]), "what a read no longer returns goes");
    held.unreplicated(|_| master("b"));
    assert_eq!(held.applied_ids(), HashMap::new(), "a new master has none of them");

    held.applied_before(tenant, 42, HashSet::from([9]));
    held.hold(tenant, Instant::now(), Failed::Unreachable, None);
    assert_eq!(held.applied_ids(), HashMap::new(), "after an outage, none of them");
}

#[test]
fn only_a_tenant_whose_replicas_failed_to_confirm_has_its_new_events_applied_on_its_master() {
    let held = held_back();
    let (unreplicated, unreachable, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
    held.hold(unreplicated, now, Failed::Unreplicated, None);
    held.hold(unreachable, now, Failed::Unreachable, None);
    assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 0)], "from the first transaction at first");
    held.applied_before(unreplicated, 42, HashSet::new());
    held.hold(unreplicated, now, Failed::Unreplicated, None);
    assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 42)], "a failure again keeps what was applied");
    held.applied_before(unreplicated, 7, HashSet::new());
    assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 42)], "a position only moves on");
    held.hold(unreplicated, now, Failed::Unreachable, None);
    assert_eq!(held.unreplicated(no_master), vec![], "a master that does not answer is sent nothing but probes");
}

#[test]
fn tenants_waiting_for_a_redis_replica_are_probed_one_at_a_time() {
    let held = held_back();
    let now = Instant::now();
    let waiting: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let unreachable = Uuid::new_v4();
    for tenant in &waiting {
        held.hold(*tenant, now, Failed::Unreplicated, None);
    }
    held.hold(unreachable, now, Failed::Unreachable, None);
    let later = now + MAX_RECONNECT_DELAY * 2;
    let first = held.due_for_probe(later);
    assert_eq!(first.len(), 2, "one waiting for a replica, and the unreachable one: {first:?}");
    assert!(first.contains(&unreachable));
    assert_eq!(held.due_for_probe(later), Vec::<Uuid>::new(), "the next once that probe answers");
    assert_eq!(held.next_probe(), None, "which wakes the replica: it need not look before");
    let probed = first.into_iter().find(|tenant| *tenant != unreachable).unwrap();
    held.probed(probed, later, Ok(()));
    assert_eq!(held.due_for_probe(later).len(), 1);
}

#[test]
fn each_failure_in_a_row_holds_a_tenant_longer_up_to_the_longest_delay() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let delays: Vec<Duration> = (0..12).map(|_| held.hold(tenant, now, Failed::Unreachable, None).delay).collect();
    assert!(delays[3] > delays[0], "the backoff grows: {delays:?}");
    assert!(delays.iter().all(|delay| *delay <= MAX_RECONNECT_DELAY * 2), "and is bounded: {delays:?}");
}

#[test]
fn a_success_releases_a_tenant_and_starts_its_backoff_over() {
    let held = held_back();
    let (tenant, other, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
    let first = held.hold(tenant, now, Failed::Unreachable, None).delay;
    for _ in 0..8 {
        held.hold(tenant, now, Failed::Unreachable, None);
    }
    held.hold(other, now, Failed::Unreachable, None);
    assert_eq!(held.gauge.get(), 2);
    held.release(tenant);
    assert_eq!(held.sitting_out(now), vec![other], "only the tenant still failing is held");
    assert_eq!(held.gauge.get(), 1);
    assert!(
        held.hold(tenant, now, Failed::Unreachable, None).delay < first * 4,
        "the backoff starts over after a success"
    );
}

#[test]
fn a_held_tenant_whose_master_was_replaced_is_probed_at_once_with_its_backoff_started_over() {
    let held = held_back();
    let (tenant, other, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
    for _ in 0..8 {
        held.hold(tenant, now, Failed::Unreachable, master("a"));
    }
    held.hold(other, now, Failed::Unreachable, master("b"));
    let seen = now + Duration::from_millis(10);
    assert_eq!(held.due_for_probe(seen), Vec::<Uuid>::new(), "both wait out their holds");
    let after_failover = |held: Uuid| if held == tenant { master("a1") } else { master("b") };
    assert_eq!(held.master_replaced(seen, after_failover), 1);
    assert_eq!(held.due_for_probe(seen), vec![tenant], "only the tenant whose master was replaced, at once");
    let again = held.probed(tenant, seen, Err((Failed::Unreachable, master("a1")))).expect("held again");
    assert!(again.delay <= FIRST_STEP, "its backoff started over: {again:?}");
    assert_eq!(held.master_replaced(seen, after_failover), 0, "a replacement is followed once");
}

#[test]
fn a_failure_on_another_master_than_the_last_starts_the_backoff_over() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    for _ in 0..8 {
        held.hold(tenant, now, Failed::Unreachable, master("a"));
    }
    assert!(held.hold(tenant, now, Failed::Unreachable, master("a")).delay > FIRST_STEP, "the same master");
    assert!(held.hold(tenant, now, Failed::Unreachable, None).delay > FIRST_STEP, "no master known");
    // A probe sent to the old master that answers after the watch saw the new one.
    assert!(held.hold(tenant, now, Failed::Unreachable, master("a1")).delay <= FIRST_STEP, "a new master");
}

#[test]
fn a_tenant_held_with_no_master_known_or_with_a_probe_on_its_way_is_left_to_its_hold() {
    let held = held_back();
    let (single_redis, probing, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
    for _ in 0..5 {
        held.hold(single_redis, now, Failed::Unreachable, None);
    }
    let ended = now + held.hold(probing, now, Failed::Unreachable, master("a")).delay;
    assert_eq!(held.due_for_probe(ended), vec![probing]);
    let next = held.next_probe();
    assert_eq!(held.master_replaced(ended, |_| master("a1")), 0, "the probe's answer moves it on");
    assert_eq!(held.next_probe(), next, "neither is due sooner");
}

#[tokio::test]
async fn a_replaced_master_wakes_the_replica_to_probe() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    held.hold(tenant, now, Failed::Unreachable, master("a"));
    held.master_replaced(now, |_| master("a"));
    let woken = tokio::time::timeout(Duration::from_millis(20), held.news()).await;
    assert!(woken.is_err(), "the same master, no wake-up");
    held.master_replaced(now, |_| master("a1"));
    held.news().await;
    assert_eq!(held.next_probe(), Some(now), "due at once");
}

#[test]
fn a_cleared_tenant_that_fails_soon_after_continues_its_backoff_and_one_that_does_not_is_forgotten() {
    let held = held_back();
    let (tenant, now) = (Uuid::new_v4(), Instant::now());
    let ended = now + held.hold(tenant, now, Failed::Unreachable, None).delay;
    held.due_for_probe(ended);
    held.probed(tenant, ended, Ok(()));
    assert!(
        held.hold(tenant, ended, Failed::Unreachable, None).again,
        "its events failed though the master answered the probe"
    );
    let ended = ended + MAX_RECONNECT_DELAY * 2;
    held.due_for_probe(ended);
    held.probed(tenant, ended, Ok(()));
    held.sitting_out(ended + FORGOTTEN_AFTER / 2);
    assert!(held.holds().contains_key(&tenant), "cleared not long ago");
    held.sitting_out(ended + FORGOTTEN_AFTER);
    assert!(!held.holds().contains_key(&tenant), "another replica applied its events, or it has none left");
    assert!(!held.hold(tenant, ended + FORGOTTEN_AFTER, Failed::Unreachable, None).again, "a new failure starts over");
}

#[test]
fn a_probe_that_sees_a_replica_clears_every_tenant_waiting_for_one_on_its_master() {
    let held = held_back();
    let [probed, same, other_master, unreachable] = [(); 4].map(|()| Uuid::new_v4());
    let now = Instant::now();
    held.hold(probed, now, Failed::Unreplicated, master("a"));
    held.hold(same, now + MAX_RECONNECT_DELAY, Failed::Unreplicated, master("a"));
    // Held later than `probed`: one probe that waits for a replica is on its way at a time.
    held.hold(other_master, now + MAX_RECONNECT_DELAY, Failed::Unreplicated, master("b"));
    held.hold(unreachable, now, Failed::Unreachable, master("a"));
    let masters = |held: &HeldBack| {
        let mut masters: Vec<String> = held.masters_without_replica().iter().map(|m| m.to_string()).collect();
        masters.sort();
        masters
    };
    assert_eq!(masters(&held), ["a", "b"], "a master down is not one without a replica");

    let first_ended = now + FIRST_STEP;
    assert!(held.due_for_probe(first_ended).contains(&probed));
    held.probed(probed, first_ended, Ok(()));
    let mut sitting_out = held.sitting_out(first_ended);
    sitting_out.sort();
    let mut expected = vec![other_master, unreachable];
    expected.sort();
    assert_eq!(sitting_out, expected, "its master's other tenant waiting for a replica is cleared too");
    assert_eq!(masters(&held), ["b"]);
}
