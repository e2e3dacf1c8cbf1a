//! Property tests of the pieces that parse untrusted text: tags (from outbox rows any SQL writer
//! can insert), outbox rows as a whole, and the normalisation of query parameters into entry
//! keys.

use chrono::Utc;
use openrisk_shared::event::{InvalidationEvent, MAX_TAGS_PER_EVENT, OutboxRow, PoisonReason};
use openrisk_shared::keys::{Keyspace, MAX_TAG_LEN, Tag, TagError};
use proptest::prelude::*;
use uuid::Uuid;

/// The tag grammar, written independently of `Tag::parse`: a kind of `[a-z][a-z0-9_]*`,
/// optionally `:` and an id of `[A-Za-z0-9_.-]+`, at most `MAX_TAG_LEN` bytes.
fn grammar_accepts(text: &str) -> bool {
    if text.is_empty() || text.len() > MAX_TAG_LEN {
        return false;
    }
    let mut parts = text.splitn(2, ':');
    let kind = parts.next().unwrap_or_default();
    let id = parts.next();
    let kind_ok = kind.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let id_ok =
        id.is_none_or(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    kind_ok && id_ok
}

/// Strings that are tags, nearly tags, or anything at all.
fn tag_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,12}",
        "[a-z][a-z0-9_]{0,12}:[A-Za-z0-9_.-]{1,40}",
        "[a-zA-Z0-9_:{}* .\\-\n\t]{0,30}",
        ".{0,40}",
        "[a-z]{1,3}:[a-z]{190,205}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn tag_parse_accepts_exactly_the_grammar(text in tag_like()) {
        match Tag::parse(&text) {
            Ok(tag) => {
                prop_assert!(grammar_accepts(&text), "{text:?} accepted against the grammar");
                prop_assert_eq!(tag.as_str(), text.as_str());
                // Nothing that could break out of a Redis key or the version list of an entry.
                let forbidden = ['{', '}', ' ', '=', '*', '\n'];
                prop_assert!(!tag.as_str().contains(forbidden), "tag {:?} holds a key-breaking character", tag);
                prop_assert_eq!(Tag::parse(tag.as_str()), Ok(tag.clone()));
            }
            Err(TagError::Empty) => prop_assert!(text.is_empty()),
            Err(TagError::TooLong(len)) => prop_assert!(len > MAX_TAG_LEN && len == text.len()),
            Err(TagError::Malformed(echo)) => {
                prop_assert!(!grammar_accepts(&text), "{text:?} rejected against the grammar");
                prop_assert_eq!(echo, text);
            }
        }
    }

    #[test]
    fn outbox_rows_become_events_exactly_when_valid(
        tags in prop::collection::vec(tag_like(), 0..8),
        op in prop_oneof![Just("INSERT"), Just("UPDATE"), Just("DELETE"), Just("TRUNCATE"), Just("MERGE"), Just(""), Just("update")],
        watched in any::<bool>(),
        table in "[a-z_]{0,12}",
        id in any::<i64>(),
        padding in prop_oneof![Just(0usize), Just(MAX_TAGS_PER_EVENT - 8), Just(MAX_TAGS_PER_EVENT + 1)],
    ) {
        let mut all_tags = tags.clone();
        all_tags.extend((0..padding).map(|i| format!("asset:{i}")));
        let row = OutboxRow {
            id,
            tenant_id: Uuid::new_v4(),
            table_name: table.clone(),
            op: op.to_owned(),
            tags: all_tags.clone(),
            created_at: Utc::now(),
            table_watched: watched,
        };
        let valid_op = matches!(op, "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE");
        let all_parse = all_tags.iter().all(|tag| grammar_accepts(tag));
        let expect_ok = watched && valid_op && !all_tags.is_empty() && all_parse;
        let distinct = all_tags.iter().collect::<std::collections::HashSet<_>>().len();
        // More distinct tags than an event may name stand for the whole tenant.
        let applied = if distinct > MAX_TAGS_PER_EVENT { vec!["all".to_owned()] } else { all_tags.clone() };
        match InvalidationEvent::try_from(row.clone()) {
            Ok(event) => {
                prop_assert!(expect_ok, "{row:?} accepted");
                prop_assert_eq!(event.id, id);
                prop_assert_eq!(event.tenant_id, row.tenant_id);
                prop_assert_eq!(event.tags.iter().map(|t| t.as_str().to_owned()).collect::<Vec<_>>(), applied);
            }
            Err(reason) => {
                prop_assert!(!expect_ok, "{row:?} rejected: {reason}");
                // The reason is the first check that fails, in a documented order.
                let expected_kind =
                    if !watched { "table" } else if !valid_op { "op" } else if all_tags.is_empty() { "none" } else { "tag" };
                let kind = match reason {
                    PoisonReason::UnknownTable(name) => { prop_assert_eq!(name, table); "table" }
                    PoisonReason::UnknownOperation(_) => "op",
                    PoisonReason::NoTags => "none",
                    PoisonReason::BadTag(_) => "tag",
                };
                prop_assert_eq!(kind, expected_kind);
            }
        }
    }
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    // Small alphabets, so different lists often share names, values and concatenations.
    prop::collection::vec(("[ab]{0,2}", "[ab1]{0,3}"), 0..5)
}

fn key(keyspace: &Keyspace, tenant: Uuid, list: &[(String, String)]) -> String {
    let borrowed: Vec<(&str, String)> = list.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
    keyspace.entry_key(tenant, 1, "risks", &borrowed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn entry_keys_ignore_parameter_order(list in params(), seed in any::<u64>()) {
        let keyspace = Keyspace::new("or");
        let tenant = Uuid::from_u64_pair(seed, 7);
        let mut shuffled = list.clone();
        // A deterministic permutation driven by the seed.
        let n = shuffled.len();
        for i in 0..n {
            let j = (seed.rotate_left(i as u32) as usize) % n.max(1);
            shuffled.swap(i, j);
        }
        prop_assert_eq!(key(&keyspace, tenant, &list), key(&keyspace, tenant, &shuffled));
    }

    #[test]
    fn entry_keys_are_injective_over_parameter_multisets(a in params(), b in params()) {
        let keyspace = Keyspace::new("or");
        let tenant = Uuid::nil();
        let (mut sorted_a, mut sorted_b) = (a.clone(), b.clone());
        sorted_a.sort();
        sorted_b.sort();
        let same_key = key(&keyspace, tenant, &a) == key(&keyspace, tenant, &b);
        prop_assert_eq!(same_key, sorted_a == sorted_b, "{:?} vs {:?}", a, b);
    }

    #[test]
    fn entry_keys_separate_tenants_resources_and_schemas(list in params(), t1 in any::<u128>(), t2 in any::<u128>()) {
        let keyspace = Keyspace::new("or");
        let borrowed: Vec<(&str, String)> = list.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let (a, b) = (Uuid::from_u128(t1), Uuid::from_u128(t2));
        let key_a = keyspace.entry_key(a, 1, "risks", &borrowed);
        prop_assert_eq!(key_a == keyspace.entry_key(b, 1, "risks", &borrowed), a == b);
        prop_assert_ne!(&key_a, &keyspace.entry_key(a, 2, "risks", &borrowed));
        prop_assert_ne!(&key_a, &keyspace.entry_key(a, 1, "assets", &borrowed));
        let expected_start = format!("or:{{{a}}}:e{}:1:risks:", openrisk_shared::keys::ENTRY_FORMAT);
        prop_assert!(key_a.starts_with(&expected_start), "{} does not start with {}", key_a, expected_start);
        prop_assert_eq!(key_a.matches('{').count(), 1);
    }
}
