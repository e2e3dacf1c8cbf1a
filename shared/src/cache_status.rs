//! The `Cache-Status` response header (RFC 9211) the API sends with every cacheable GET: one
//! type for what the cache emits, the spec documents, and the tests and the benchmark compare.

use std::fmt;

/// How the cache answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from Redis.
    Hit,
    /// Read from Postgres and cached.
    Stored,
    /// Shared an identical in-flight read of this process.
    Collapsed,
    /// Read from Postgres, not cached: a tag was invalidated while it was read.
    FillRejected,
    /// Read from Postgres, not cached: Redis failed during the fill.
    FillFailed,
    /// Read from Postgres, not cached: the body is larger than `cache.max_entry_bytes`.
    TooLarge,
    /// Redis skipped: the cache is disabled.
    Disabled,
    /// Redis skipped: the circuit breaker is open.
    BreakerOpen,
    /// Redis failed or timed out on the lookup; read from Postgres.
    LookupFailed,
    /// Redis skipped: a read the API never caches (a free-text search or a far page), so no
    /// client can fill Redis with variants of its own making.
    Uncacheable,
    /// Redis skipped: the tenant stored its budget of entries for this route within one TTL.
    OverBudget,
}

impl CacheStatus {
    /// Every value, in the order the spec lists them.
    pub const ALL: [CacheStatus; 11] = [
        CacheStatus::Hit,
        CacheStatus::Stored,
        CacheStatus::Collapsed,
        CacheStatus::FillRejected,
        CacheStatus::FillFailed,
        CacheStatus::TooLarge,
        CacheStatus::Disabled,
        CacheStatus::BreakerOpen,
        CacheStatus::LookupFailed,
        CacheStatus::Uncacheable,
        CacheStatus::OverBudget,
    ];

    /// The header value.
    pub const fn header_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "openrisk; hit",
            CacheStatus::Stored => "openrisk; fwd=miss; stored",
            CacheStatus::Collapsed => "openrisk; fwd=miss; collapsed",
            CacheStatus::FillRejected => "openrisk; fwd=miss; detail=fill-rejected",
            CacheStatus::FillFailed => "openrisk; fwd=miss; detail=redis-error",
            CacheStatus::TooLarge => "openrisk; fwd=miss; detail=too-large",
            CacheStatus::Disabled => "openrisk; fwd=bypass; detail=disabled",
            CacheStatus::BreakerOpen => "openrisk; fwd=bypass; detail=breaker-open",
            CacheStatus::LookupFailed => "openrisk; fwd=bypass; detail=redis-error",
            CacheStatus::Uncacheable => "openrisk; fwd=bypass; detail=uncacheable",
            CacheStatus::OverBudget => "openrisk; fwd=bypass; detail=entry-budget",
        }
    }

    /// What the value means, for the API documentation.
    pub const fn meaning(self) -> &'static str {
        match self {
            CacheStatus::Hit => "served from the cache",
            CacheStatus::Stored => "read from Postgres and cached",
            CacheStatus::Collapsed => "shared an identical in-flight read",
            CacheStatus::FillRejected => "read from Postgres, not cached: the data changed while it was read",
            CacheStatus::FillFailed => "read from Postgres, not cached: Redis failed while storing it",
            CacheStatus::TooLarge => "read from Postgres, not cached: larger than the cache keeps",
            CacheStatus::Disabled => "the cache is turned off",
            CacheStatus::BreakerOpen => "Redis is being skipped after repeated failures",
            CacheStatus::LookupFailed => "Redis failed or timed out; read from Postgres",
            CacheStatus::Uncacheable => {
                "never cached: a free-text search (`q`) or a page past the ones the cache keeps"
            }
            CacheStatus::OverBudget => {
                "not cached: the tenant has stored as many variants of this list as one TTL allows"
            }
        }
    }

    /// The status a header value names, if any.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.header_value() == value)
    }

    /// Whether Redis answered the request.
    pub fn is_hit(self) -> bool {
        self == CacheStatus::Hit
    }

    /// Whether the cache was consulted, had no current entry and the read went to Postgres.
    pub fn is_miss(self) -> bool {
        matches!(
            self,
            CacheStatus::Stored
                | CacheStatus::Collapsed
                | CacheStatus::FillRejected
                | CacheStatus::FillFailed
                | CacheStatus::TooLarge
        )
    }

    /// Whether Redis was skipped or failed before a lookup could answer.
    pub fn is_bypass(self) -> bool {
        matches!(
            self,
            CacheStatus::Disabled
                | CacheStatus::BreakerOpen
                | CacheStatus::LookupFailed
                | CacheStatus::Uncacheable
                | CacheStatus::OverBudget
        )
    }

    /// One Markdown sentence per value, for the spec's header description.
    pub fn documentation() -> String {
        Self::ALL
            .iter()
            .map(|status| format!("`{}`: {}.", status.header_value(), status.meaning()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_parses_back_and_no_two_share_a_header() {
        for status in CacheStatus::ALL {
            assert_eq!(CacheStatus::parse(status.header_value()), Some(status));
        }
        let mut values: Vec<_> = CacheStatus::ALL.iter().map(|status| status.header_value()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), CacheStatus::ALL.len());
        assert_eq!(CacheStatus::parse("openrisk; hit; extra"), None, "only exact values parse");
    }

    #[test]
    fn the_clients_guide_lists_every_value_in_a_row_of_its_own() {
        let guide = include_str!("../../docs/clients.md");
        for status in CacheStatus::ALL {
            let row = format!("| `{}` |", status.header_value());
            assert!(guide.contains(&row), "docs/clients.md has no row for {row}");
        }
    }
}
