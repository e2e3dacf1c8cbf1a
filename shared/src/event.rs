//! The invalidation event: one outbox row, validated before anything acts on it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::keys::{Tag, TagError};

/// Most distinct tags an event is applied with. An event with more, all valid, invalidates its
/// tenant's whole cache (`all`) instead: a change to an asset linked to thousands of risks names
/// every one of them, and what one event costs Redis must stay bounded.
pub const MAX_TAGS_PER_EVENT: usize = 1000;

/// An outbox row as read from Postgres, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub tenant_id: Uuid,
    pub table_name: String,
    pub op: String,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Whether `table_name` is a watched table's, by its name now or the one its triggers write.
    pub table_watched: bool,
}

/// A change that invalidates `tags` of `tenant_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidationEvent {
    pub id: i64,
    pub tenant_id: Uuid,
    pub table_name: String,
    pub tags: Vec<Tag>,
    /// When the row changed; the invalidation lag is measured from here.
    pub created_at: DateTime<Utc>,
}

/// Why an outbox row cannot be applied as written; it is dead-lettered with this reason, and its
/// tenant's whole cache is invalidated in its place ([`InvalidationEvent::tenant_wide`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    #[error("table {0:?} is not under cache_watch")]
    UnknownTable(String),
    #[error("operation {0:?} is not INSERT, UPDATE, DELETE or TRUNCATE")]
    UnknownOperation(String),
    #[error("event carries no tags")]
    NoTags,
    #[error("bad tag: {0}")]
    BadTag(#[from] TagError),
}

impl TryFrom<OutboxRow> for InvalidationEvent {
    type Error = PoisonReason;

    fn try_from(row: OutboxRow) -> Result<Self, PoisonReason> {
        if !row.table_watched {
            return Err(PoisonReason::UnknownTable(row.table_name));
        }
        if !matches!(row.op.as_str(), "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE") {
            return Err(PoisonReason::UnknownOperation(row.op));
        }
        if row.tags.is_empty() {
            return Err(PoisonReason::NoTags);
        }
        let mut tags = row.tags.iter().map(|tag| Tag::parse(tag)).collect::<Result<Vec<_>, _>>()?;
        if tags.len() > MAX_TAGS_PER_EVENT && tags.iter().collect::<HashSet<_>>().len() > MAX_TAGS_PER_EVENT {
            tags = vec![Tag::all()];
        }
        Ok(InvalidationEvent {
            id: row.id,
            tenant_id: row.tenant_id,
            table_name: row.table_name,
            tags,
            created_at: row.created_at,
        })
    }
}

impl InvalidationEvent {
    /// The invalidation that stands in for a row that cannot be applied as written: its
    /// tenant's whole cache. Invalidating more than a change touched only costs misses;
    /// invalidating nothing could leave its responses stale until their TTL.
    pub fn tenant_wide(row: &OutboxRow) -> Self {
        InvalidationEvent {
            id: row.id,
            tenant_id: row.tenant_id,
            table_name: row.table_name.clone(),
            tags: vec![Tag::all()],
            created_at: row.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tags: &[&str]) -> OutboxRow {
        OutboxRow {
            id: 1,
            tenant_id: Uuid::new_v4(),
            table_name: "risks".into(),
            op: "UPDATE".into(),
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            created_at: Utc::now(),
            table_watched: true,
        }
    }

    #[test]
    fn valid_rows_become_events() {
        let event = InvalidationEvent::try_from(row(&["risks", "risk:abc"])).expect("valid");
        assert_eq!(event.tags.len(), 2);
    }

    #[test]
    fn more_distinct_tags_than_an_event_may_carry_invalidate_the_whole_tenant() {
        let distinct: Vec<String> = (0..=MAX_TAGS_PER_EVENT).map(|i| format!("risk:{i}")).collect();
        let event = InvalidationEvent::try_from(row(&distinct.iter().map(String::as_str).collect::<Vec<_>>()));
        assert_eq!(event.expect("valid").tags, vec![Tag::all()]);
        // An update's old and new tags, each of them twice: applied as they are.
        let twice: Vec<&str> =
            distinct[..MAX_TAGS_PER_EVENT].iter().chain(&distinct[..MAX_TAGS_PER_EVENT]).map(String::as_str).collect();
        assert_eq!(InvalidationEvent::try_from(row(&twice)).expect("valid").tags.len(), 2 * MAX_TAGS_PER_EVENT);
    }

    #[test]
    fn poison_rows_are_named() {
        assert_eq!(InvalidationEvent::try_from(row(&[])), Err(PoisonReason::NoTags));
        assert!(matches!(InvalidationEvent::try_from(row(&["risks", "bad tag"])), Err(PoisonReason::BadTag(_))));
        let mut many: Vec<String> = (0..=MAX_TAGS_PER_EVENT).map(|i| format!("risk:{i}")).collect();
        many.push("bad tag".into());
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(InvalidationEvent::try_from(row(&many)), Err(PoisonReason::BadTag(_))));
        let mut unknown = row(&["risks"]);
        unknown.table_watched = false;
        unknown.table_name = "nope".into();
        assert_eq!(InvalidationEvent::try_from(unknown), Err(PoisonReason::UnknownTable("nope".into())));
        let mut bad_op = row(&["risks"]);
        bad_op.op = "MERGE".into();
        assert!(matches!(InvalidationEvent::try_from(bad_op), Err(PoisonReason::UnknownOperation(_))));
    }
}
