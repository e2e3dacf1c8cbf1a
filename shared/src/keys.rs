//! The Redis key scheme. Every key of a tenant carries the `{<tenant uuid>}` hash tag, so all of
//! a tenant's entries, tag versions and tag member sets live in one Redis Cluster slot and every
//! script touches a single slot.
//!
//! ```text
//! <prefix>:{<tenant>}:e2:<schema>:<resource>:<params hash>  cached response (versions, etag, body)
//! <prefix>:{<tenant>}:v:<tag>                               tag version token
//! <prefix>:{<tenant>}:m:<tag>                               set of entry keys built from <tag>
//! <prefix>:{<tenant>}:g:<token>:<tag>                       a member set invalidation moved aside
//! <prefix>:{<tenant>}:r:<tag>                               replay floor: <version token>@<WAL position>
//! <prefix>:{<n>}:slot                                       never written: names Redis Cluster slot n's master
//! ```
//!
//! Every key has a TTL. The `e2` names the entry format of the protocol in
//! [`crate::protocol`]: entries of another format (`e:` was the first) are never read, while
//! versions and member sets keep their names across formats, so a fleet running both during a
//! rolling upgrade still invalidates each other's entries.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// The entry format of [`crate::protocol`], part of every entry key: bump it with the format.
pub const ENTRY_FORMAT: u32 = 2;

/// Longest tag accepted (prefix, colon and identifier).
pub const MAX_TAG_LEN: usize = 200;

/// A validated invalidation tag such as `risks` or `risk:4f1c…`: a lowercase kind, optionally
/// followed by `:` and an identifier of letters, digits, `_`, `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// Why a string is not a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("tag is empty")]
    Empty,
    #[error("tag is {0} bytes long (at most {MAX_TAG_LEN})")]
    TooLong(usize),
    #[error("tag {0:?} is not of the form kind[:id] (kind: a-z, 0-9, _; id: A-Z, a-z, 0-9, _, ., -)")]
    Malformed(String),
}

impl Tag {
    /// The tenant-wide tag: invalidating it drops every entry of the tenant.
    pub const ALL: &'static str = "all";
    /// Every risk of the tenant: risk lists and statistics.
    pub const RISKS: &'static str = "risks";
    /// Every mitigation of the tenant: statistics over mitigations.
    pub const MITIGATIONS: &'static str = "mitigations";
    /// Every asset of the tenant: asset lists.
    pub const ASSETS: &'static str = "assets";
    /// The tenant's score history: trends.
    pub const RISK_HISTORY: &'static str = "risk_history";
    /// One risk and everything its detail embeds (`risk:<id>`).
    pub const RISK: &'static str = "risk";
    /// One mitigation and its sub-actions (`mitigation:<id>`).
    pub const MITIGATION: &'static str = "mitigation";
    /// One asset (`asset:<id>`).
    pub const ASSET: &'static str = "asset";
    /// Every kind of tag: the triggers in `migrations/` emit these and nothing else (a test
    /// reads the generated trigger functions to hold them to it), and the API's reads register
    /// them through the constructors below.
    pub const KINDS: [&'static str; 8] = [
        Self::ALL,
        Self::RISKS,
        Self::MITIGATIONS,
        Self::ASSETS,
        Self::RISK_HISTORY,
        Self::RISK,
        Self::MITIGATION,
        Self::ASSET,
    ];

    pub fn parse(text: &str) -> Result<Self, TagError> {
        if text.is_empty() {
            return Err(TagError::Empty);
        }
        if text.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong(text.len()));
        }
        let (kind, id) = match text.split_once(':') {
            Some((kind, id)) => (kind, Some(id)),
            None => (text, None),
        };
        let kind_ok = kind.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let id_ok = id.is_none_or(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
        if kind_ok && id_ok { Ok(Tag(text.to_owned())) } else { Err(TagError::Malformed(text.to_owned())) }
    }

    /// A row tag such as `risk:<id>`: a known kind and a UUID always form a valid tag.
    fn of_row(kind: &'static str, id: Uuid) -> Self {
        Tag(format!("{kind}:{id}"))
    }

    pub fn all() -> Self {
        Tag(Self::ALL.to_owned())
    }

    pub fn risks() -> Self {
        Tag(Self::RISKS.to_owned())
    }

    pub fn mitigations() -> Self {
        Tag(Self::MITIGATIONS.to_owned())
    }

    pub fn assets() -> Self {
        Tag(Self::ASSETS.to_owned())
    }

    pub fn risk_history() -> Self {
        Tag(Self::RISK_HISTORY.to_owned())
    }

    pub fn risk(id: Uuid) -> Self {
        Self::of_row(Self::RISK, id)
    }

    pub fn mitigation(id: Uuid) -> Self {
        Self::of_row(Self::MITIGATION, id)
    }

    pub fn asset(id: Uuid) -> Self {
        Self::of_row(Self::ASSET, id)
    }

    /// The kind: the whole tag, or what comes before the `:` of a row tag.
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(kind, _)| kind)
    }

    /// Whether the tag names one row (`kind:id`) rather than a collection: a row tag may carry
    /// an id a client made up, so its version is created only once a read showed the row exists.
    pub fn names_a_row(&self) -> bool {
        self.0.contains(':')
    }

    /// Whether this is the tenant-wide tag, which has no member set (it covers every entry).
    pub fn is_tenant_wide(&self) -> bool {
        self.0 == Self::ALL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16_384;

/// The Redis Cluster hash slot every key of `tenant` lives in: the CRC16 of the `{<tenant>}` hash
/// tag they share, whatever the prefix. It tells which master serves the tenant.
pub fn tenant_slot(tenant: Uuid) -> u16 {
    let mut buffer = Uuid::encode_buffer();
    hash_tag_slot(tenant.hyphenated().encode_lower(&mut buffer))
}

/// The hash slot of every key whose hash tag (the part between the first `{` and `}`) is `tag`.
fn hash_tag_slot(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % CLUSTER_SLOTS
}

/// Builds every Redis key from a deployment-wide prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:{<tenant>}:`, the start of every key of the tenant.
    pub fn tenant_base(&self, tenant: Uuid) -> String {
        self.tenant_key(tenant, &[])
    }

    /// The tenant's base followed by `parts`, built in one allocation: a hit builds three keys,
    /// and `format!` would grow each string several times.
    fn tenant_key(&self, tenant: Uuid, parts: &[&str]) -> String {
        let length =
            self.prefix.len() + ":{}:".len() + Hyphenated::LENGTH + parts.iter().map(|part| part.len()).sum::<usize>();
        let mut key = String::with_capacity(length);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(tenant.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        key.push_str("}:");
        parts.iter().for_each(|part| key.push_str(part));
        key
    }

    pub fn version_key(&self, tenant: Uuid, tag: &Tag) -> String {
        self.tenant_key(tenant, &["v:", tag.as_str()])
    }

    pub fn members_key(&self, tenant: Uuid, tag: &Tag) -> String {
        self.tenant_key(tenant, &["m:", tag.as_str()])
    }

    /// Where an invalidation moves `tag`'s member set, under the invalidation's own `token`.
    pub fn reclaim_key(&self, tenant: Uuid, tag: &Tag, token: &str) -> String {
        self.tenant_key(tenant, &["g:", token, ":", tag.as_str()])
    }

    /// Where `tag`'s replay floor is kept: the WAL position a replica must have replayed before
    /// its rows may be served under the tag's current version (see [`crate::protocol`]).
    pub fn replay_floor_key(&self, tenant: Uuid, tag: &Tag) -> String {
        self.tenant_key(tenant, &["r:", tag.as_str()])
    }

    /// What a probe that waits for Redis replicas writes (`protocol::probe`), so that its `WAIT`
    /// has a write of its own connection to wait for. Nothing reads it; it expires on its own.
    pub fn probe_key(&self, tenant: Uuid) -> String {
        self.tenant_key(tenant, &["probe"])
    }

    /// A key of no tenant, never written, that hashes to `slot`: what a command names to reach the
    /// slot's master (`None` for a slot beyond the cluster's 16384). The hash tag is the smallest
    /// number that hashes to the slot: CRC16 spreads numbers evenly, so it is usually found
    /// within 16384 tries, and every slot's is below 2^20.
    pub fn slot_key(&self, slot: u16) -> Option<String> {
        let tag = (0..1_u32 << 20).find(|n| hash_tag_slot(&n.to_string()) == slot)?;
        Some(format!("{}:{{{tag}}}:slot", self.prefix))
    }

    /// A `SCAN MATCH` pattern for every cached entry of every tenant (for checks, never the
    /// request path).
    pub fn entry_pattern(&self) -> String {
        format!("{}:{{*}}:e{ENTRY_FORMAT}:*", self.prefix)
    }

    /// Key of a cached response. `schema` changes whenever a response shape changes, so a deploy
    /// never serves an old shape. `params` is every query parameter that can change the answer;
    /// their order does not matter and absent parameters must simply be left out.
    pub fn entry_key(&self, tenant: Uuid, schema: u32, resource: &str, params: &[(&str, String)]) -> String {
        let mut sorted: Vec<&(&str, String)> = params.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(&b.1)));
        let mut hasher = Sha256::new();
        for (name, value) in sorted {
            // Length-prefixed so that no two different parameter lists hash the same input.
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        let digest = hex::encode(&hasher.finalize()[..16]);
        let format_and_schema = format!("e{ENTRY_FORMAT}:{schema}:");
        self.tenant_key(tenant, &[&format_and_schema, resource, ":", &digest])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_grammar() {
        for good in ["all", "risks", "risk:0b0e8f7e-1234-4c3b-9a1e-000000000001", "risk_history", "asset:x.y_z-1"] {
            assert_eq!(Tag::parse(good).expect(good).as_str(), good);
        }
        assert_eq!(Tag::parse(""), Err(TagError::Empty));
        for bad in ["Risk", "risk:", ":x", "risk:a b", "risk:a:b", "1risk", "risk\n", "risk:{x}", "r*"] {
            assert!(matches!(Tag::parse(bad), Err(TagError::Malformed(_))), "{bad:?} must be rejected");
        }
        assert!(matches!(Tag::parse(&"a".repeat(MAX_TAG_LEN + 1)), Err(TagError::TooLong(_))));
    }

    #[test]
    fn every_constructed_tag_parses_and_names_its_kind() {
        let id = Uuid::new_v4();
        let built = [
            Tag::all(),
            Tag::risks(),
            Tag::mitigations(),
            Tag::assets(),
            Tag::risk_history(),
            Tag::risk(id),
            Tag::mitigation(id),
            Tag::asset(id),
        ];
        for (tag, kind) in built.iter().zip(Tag::KINDS) {
            assert_eq!(Tag::parse(tag.as_str()).as_ref(), Ok(tag), "{tag}");
            assert_eq!(tag.kind(), kind);
            assert_eq!(tag.names_a_row(), tag.as_str() == format!("{kind}:{id}"), "{tag}");
        }
    }

    #[test]
    fn keys_are_spelled_exactly_as_the_layout_says() {
        // Every process of a fleet (and every version in a rolling upgrade) must build the same
        // bytes for the same key, whatever code builds them.
        let keyspace = Keyspace::new("or");
        let tenant = Uuid::parse_str("0b0e8f7e-1234-4c3b-9a1e-000000000001").expect("a uuid");
        let risk = Tag::risk(tenant);
        let base = "or:{0b0e8f7e-1234-4c3b-9a1e-000000000001}:";
        assert_eq!(keyspace.tenant_base(tenant), base);
        assert_eq!(keyspace.version_key(tenant, &risk), format!("{base}v:risk:{tenant}"));
        assert_eq!(keyspace.members_key(tenant, &Tag::risks()), format!("{base}m:risks"));
        assert_eq!(keyspace.reclaim_key(tenant, &Tag::all(), "t0"), format!("{base}g:t0:all"));
        assert_eq!(keyspace.replay_floor_key(tenant, &risk), format!("{base}r:risk:{tenant}"));
        let params = [("page", "2".to_owned()), ("limit", "20".to_owned())];
        assert_eq!(
            keyspace.entry_key(tenant, 7, "risks", &params),
            format!("{base}e{ENTRY_FORMAT}:7:risks:2970cbb49286ce7e04220a978564d71a")
        );
    }

    #[test]
    fn every_slot_has_a_key_of_no_tenant_that_hashes_to_it() {
        let mut reached = vec![false; usize::from(CLUSTER_SLOTS)];
        for n in 0..1_u32 << 20 {
            reached[usize::from(hash_tag_slot(&n.to_string()))] = true;
        }
        assert!(reached.iter().all(|reached| *reached), "a slot no slot_key reaches");
        let keyspace = Keyspace::new("or");
        for slot in [0, 1, 8_191, 12_345, 16_383] {
            let key = keyspace.slot_key(slot).unwrap();
            assert_eq!(redis::cluster_routing::Slot::for_key(&key), redis::cluster_routing::Slot::new(slot).unwrap());
            assert!(key.starts_with("or:{"), "{key} is under the prefix");
        }
        assert_eq!(keyspace.slot_key(CLUSTER_SLOTS), None);
    }

    #[test]
    fn every_key_of_a_tenant_shares_its_hash_slot() {
        // What makes CROSSSLOT impossible: every command and script of the protocol names keys
        // of one tenant only, and those all hash to the tenant's slot (a multi-key MGET across
        // slots would even be split silently by a cluster client, losing its single instant).
        let keyspace = Keyspace::new("or");
        for _ in 0..200 {
            let tenant = Uuid::new_v4();
            let slot = redis::cluster_routing::Slot::for_key(format!("{{{tenant}}}"));
            assert_eq!(redis::cluster_routing::Slot::new(tenant_slot(tenant)), Some(slot));
            let id = Uuid::new_v4();
            for tag in [Tag::all(), Tag::risks(), Tag::risk(id)] {
                for key in [
                    keyspace.version_key(tenant, &tag),
                    keyspace.members_key(tenant, &tag),
                    keyspace.reclaim_key(tenant, &tag, &id.simple().to_string()),
                    keyspace.replay_floor_key(tenant, &tag),
                    keyspace.entry_key(tenant, 1, "risks", &[("q", "{other}".into()), ("page", "1".into())]),
                ] {
                    assert_eq!(redis::cluster_routing::Slot::for_key(&key), slot, "{key}");
                    assert_eq!(key.matches('{').count(), 1, "exactly one hash tag in {key}");
                }
            }
        }
    }

    #[test]
    fn entry_keys_depend_on_everything_that_changes_the_answer() {
        let keyspace = Keyspace::new("or");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let params = |page: &str| vec![("page", page.to_owned()), ("status", "ACTIVE".to_owned())];
        let base = keyspace.entry_key(a, 1, "risks", &params("1"));
        assert_ne!(base, keyspace.entry_key(b, 1, "risks", &params("1")), "tenant");
        assert_ne!(base, keyspace.entry_key(a, 2, "risks", &params("1")), "schema version");
        assert_ne!(base, keyspace.entry_key(a, 1, "assets", &params("1")), "resource");
        assert_ne!(base, keyspace.entry_key(a, 1, "risks", &params("2")), "parameter value");
        let reordered = vec![("status", "ACTIVE".to_owned()), ("page", "1".to_owned())];
        assert_eq!(base, keyspace.entry_key(a, 1, "risks", &reordered), "parameter order does not matter");
        let shifted = vec![("page", "1status".to_owned()), ("", "ACTIVE".to_owned())];
        assert_ne!(base, keyspace.entry_key(a, 1, "risks", &shifted), "no ambiguity between parameters");
    }
}
