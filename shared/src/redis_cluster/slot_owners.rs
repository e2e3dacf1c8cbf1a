//! Which master served which slots in the latest look at the cluster, and which slots a look
//! finds served by another master than the look before.

use std::sync::{Arc, PoisonError, RwLock};

use uuid::Uuid;

use super::SlotRange;
use crate::keys::tenant_slot;

/// A master's node id, a range of slots it serves, and whether any node flags it failing.
#[derive(Debug, Clone)]
struct SlotOwner {
    first: u16,
    last: u16,
    master: Arc<str>,
    answering: bool,
}

/// The latest look's slot ranges, sorted, each with its master; shared by every clone.
#[derive(Debug, Clone, Default)]
pub(super) struct SlotOwners(Arc<RwLock<Vec<SlotOwner>>>);

impl SlotOwners {
    /// The node id of the master serving `slot`; `None` before the first look, on a single node,
    /// or for a slot no master serves.
    pub(super) fn master_of(&self, slot: u16) -> Option<Arc<str>> {
        master_serving(&self.0.read().unwrap_or_else(PoisonError::into_inner), slot)
    }

    /// The master serving every key of `tenant`; on a single Redis (no slots known) the slot is
    /// not computed, as every Redis call asks.
    pub(super) fn master_of_tenant(&self, tenant: Uuid) -> Option<Arc<str>> {
        let owners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        (!owners.is_empty()).then(|| master_serving(&owners, tenant_slot(tenant))).flatten()
    }

    /// Whether a look has told which masters serve the slots.
    pub(super) fn knows_slots(&self) -> bool {
        !self.0.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// The masters that served some slot in the latest look, sorted, each once.
    pub(super) fn masters(&self) -> Vec<Arc<str>> {
        let owners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut masters: Vec<Arc<str>> = owners.iter().map(|owner| owner.master.clone()).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Whether `master` served some slot in the latest look.
    pub(super) fn serves(&self, master: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).iter().any(|owner| &*owner.master == master)
    }

    /// The first slot of a master other than `master` that no node flags failing.
    pub(super) fn slot_of_another_answering_master(&self, master: &str) -> Option<u16> {
        let owners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        owners.iter().find(|owner| owner.answering && *owner.master != *master).map(|owner| owner.first)
    }

    /// Records which master serves which slots, and which of them no node flags failing
    /// (`answering`); returns a slot of each range whose master is another than in the look
    /// before (a failover, or a range split by resharding), none after the first look.
    pub(super) fn record(&self, ranges: &[SlotRange], answering: &[String]) -> Vec<u16> {
        let mut owners: Vec<SlotOwner> = Vec::with_capacity(ranges.len());
        for range in ranges {
            let known = owners.iter().find(|owner| *owner.master == *range.master).map(|owner| owner.master.clone());
            let master = known.unwrap_or_else(|| Arc::from(range.master.as_str()));
            let answering = answering.contains(&range.master);
            owners.push(SlotOwner { first: range.first, last: range.last, master, answering });
        }
        owners.sort_by_key(|owner| owner.first);
        let mut latest = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut changed = Vec::new();
        for owner in &owners {
            let overlapping = latest.iter().filter(|before| before.first <= owner.last && owner.first <= before.last);
            let taken = overlapping.filter(|before| before.master != owner.master);
            changed.extend(taken.map(|before| before.first.max(owner.first)));
        }
        *latest = owners;
        changed
    }
}

/// The master of `owners` (sorted slot ranges) serving `slot`.
fn master_serving(owners: &[SlotOwner], slot: u16) -> Option<Arc<str>> {
    let index = owners.partition_point(|owner| owner.last < slot);
    owners.get(index).filter(|owner| owner.first <= slot).map(|owner| owner.master.clone())
}

#[cfg(test)]
mod tests {
    use super::super::parse_nodes;
    use super::*;

    /// No slot changed master.
    const NONE: [u16; 0] = [];

    /// Slot ranges `(first, last, master)`, without replicas.
    fn ranges(owners: &[(u16, u16, &str)]) -> Vec<SlotRange> {
        let range = |&(first, last, master): &(u16, u16, &str)| SlotRange {
            first,
            last,
            master: master.to_owned(),
            replicas: Vec::new(),
        };
        owners.iter().map(range).collect()
    }

    #[test]
    fn each_slot_is_owned_by_the_master_that_served_it_in_the_latest_look() {
        let owners = SlotOwners::default();
        assert_eq!(owners.master_of(0), None, "nothing is known before the first look");
        assert!(!owners.knows_slots());
        assert_eq!(owners.master_of_tenant(Uuid::nil()), None);
        // Out of order, one master with two ranges, and a slot (100) no master serves.
        let first = ranges(&[(8192, 16383, "b"), (101, 8191, "a"), (0, 99, "a")]);
        assert_eq!(owners.record(&first, &[]), NONE, "the first look finds nothing taken over");
        let owner = |slot| owners.master_of(slot).map(|master| master.to_string());
        assert_eq!(
            [owner(0), owner(99), owner(101), owner(8191)],
            [Some("a".into()), Some("a".into()), Some("a".into()), Some("a".into())]
        );
        assert_eq!([owner(8192), owner(16383)], [Some("b".into()), Some("b".into())]);
        assert_eq!(owner(100), None);
        assert!(owners.serves("a") && owners.serves("b") && !owners.serves("c") && owners.knows_slots());
        assert_eq!(owners.masters(), [Arc::from("a"), Arc::from("b")]);
        assert_eq!(owners.master_of_tenant(Uuid::nil()), owners.master_of(tenant_slot(Uuid::nil())));

        assert_eq!(owners.record(&ranges(&[(0, 16383, "c")]), &[]), [0, 101, 8192]);
        assert_eq!(owner(8192).as_deref(), Some("c"), "the latest look replaces the last");
        assert!(!owners.serves("a"));
    }

    #[test]
    fn a_slot_served_by_another_master_is_followed_through_a_master_no_node_flags_failing() {
        let before = "\
a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191
b 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 8192-12000
c 127.0.0.1:7002@17002 master - 0 0 4 connected 12001-16383
a1 127.0.0.1:7003@17003 slave a 0 0 1 connected
";
        // `a` stopped answering and `a1` took its slots over; `b` is suspected failing; `d` has
        // no address yet.
        let after = "\
a 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected
b 127.0.0.1:7001@17001,host-b myself,master,fail? - 0 0 2 connected 8192-12000
c 127.0.0.1:7002@17002 master - 0 0 4 connected 12001-16383
a1 127.0.0.1:7003@17003 master - 0 0 3 connected 0-8191
d :0@0 noaddr - 0 0 0 disconnected
";
        let owners = SlotOwners::default();
        let look = |reply| {
            let (ranges, answering) = parse_nodes(reply);
            owners.record(&ranges, &answering)
        };
        assert_eq!(look(before), NONE);
        assert_eq!(look(before), NONE, "the same owners again");
        assert_eq!(look(after), [0], "a1 took a's slots over");
        assert_eq!(owners.master_of(0).as_deref(), Some("a1"));
        assert_eq!(owners.slot_of_another_answering_master("a1"), Some(12_001), "c, not b");
        assert_eq!(owners.slot_of_another_answering_master("c"), Some(0));
        assert_eq!(parse_nodes(after).1, ["c", "a1"]);
    }

    #[test]
    fn every_range_served_by_another_master_is_followed_and_none_that_kept_its_master() {
        let owners = SlotOwners::default();
        let look = |owned: &[(u16, u16, &str)]| owners.record(&ranges(owned), &[]);
        assert_eq!(look(&[(0, 5460, "a"), (5461, 10922, "b"), (10923, 16383, "c")]), NONE);
        // Two masters failed over in one look.
        assert_eq!(look(&[(0, 5460, "a1"), (5461, 10922, "b"), (10923, 16383, "c1")]), [0, 10923]);
        // A range split by resharding: the slots that moved, not the start of the range they left.
        assert_eq!(look(&[(0, 5400, "a1"), (5401, 5460, "b"), (5461, 10922, "b"), (10923, 16383, "c1")]), [5401]);
    }
}
