//! The read URLs the verifier requests, each with the Redis entry key the API stores it under.
//! The key is built with `openrisk_shared::keys::Keyspace::entry_key` from the same normalised
//! parameters the API's routes use, so every entry found in Redis maps back to a URL.

use openrisk_shared::Keyspace;
use rand::Rng;
use rand::seq::IndexedRandom;
use uuid::Uuid;

use crate::world::Catalog;

/// The API's response schema version, part of every entry key.
pub const SCHEMA_VERSION: u32 = openrisk_api::cache::RESPONSE_SCHEMA_VERSION;

/// A GET the verifier issues, and where its response is cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadUrl {
    pub tenant: Uuid,
    /// Path and query, e.g. `/api/v1/risks?sort_by=score&...`.
    pub path: String,
    pub key: String,
}

fn url(keyspace: &Keyspace, tenant: Uuid, path: String, resource: &str, params: &[(&str, String)]) -> ReadUrl {
    ReadUrl { tenant, path, key: keyspace.entry_key(tenant, SCHEMA_VERSION, resource, params) }
}

/// A list read built parameter by parameter: the query string sent, and the parameters the
/// cache key holds (the same, except where the API normalises what it was sent).
#[derive(Default)]
struct ListQuery {
    params: Vec<(&'static str, String)>,
    query: Vec<String>,
}

impl ListQuery {
    /// A parameter sent as the key holds it.
    fn add(&mut self, name: &'static str, value: impl ToString) {
        let value = value.to_string();
        self.add_sent_as(name, &value, &value);
    }

    /// A parameter the key holds as `keyed`, sent as `sent`.
    fn add_sent_as(&mut self, name: &'static str, keyed: &str, sent: &str) {
        self.params.push((name, keyed.to_owned()));
        self.query.push(format!("{name}={sent}"));
    }

    fn url(self, keyspace: &Keyspace, tenant: Uuid, path: &str, resource: &str) -> ReadUrl {
        url(keyspace, tenant, format!("{path}?{}", self.query.join("&")), resource, &self.params)
    }
}

/// The risk list with explicit parameters (so the key does not depend on the API's defaults).
fn risk_list(keyspace: &Keyspace, tenant: Uuid, rng: &mut impl Rng) -> ReadUrl {
    let mut list = ListQuery::default();
    list.add("sort_by", *["score", "created_at", "updated_at", "title"].choose(rng).unwrap());
    list.add("sort_dir", *["asc", "desc"].choose(rng).unwrap());
    list.add("page", rng.random_range(1..=2u32));
    list.add("limit", *[5u32, 20].choose(rng).unwrap());
    match rng.random_range(0..8) {
        0 => list.add("status", *["DRAFT", "ACTIVE", "MITIGATED", "ACCEPTED"].choose(rng).unwrap()),
        1 => list.add("severity", *["LOW", "MEDIUM", "HIGH", "CRITICAL"].choose(rng).unwrap()),
        2 => list.add("min_score", *[4u32, 9, 15].choose(rng).unwrap()),
        3 => {
            // The API never caches a search (no entry appears under this key); the read still
            // checks that searches answer correctly under the faults.
            let q = *["phish", "vpn", "ransomware", "verifier"].choose(rng).unwrap();
            list.add_sent_as("q", q, &q.to_uppercase());
        }
        4 => list.add("tag", *["audit", "cloud", "phishing", "q1"].choose(rng).unwrap()),
        5 => list.add_sent_as("owner", "alice@example.com", "alice%40example.com"),
        _ => {}
    }
    list.url(keyspace, tenant, "/api/v1/risks", "risks")
}

fn asset_list(keyspace: &Keyspace, tenant: Uuid, rng: &mut impl Rng) -> ReadUrl {
    let mut list = ListQuery::default();
    list.add("page", rng.random_range(1..=2u32));
    list.add("limit", *[5u32, 20].choose(rng).unwrap());
    match rng.random_range(0..4) {
        0 => list.add("criticality", *["LOW", "MEDIUM", "HIGH", "CRITICAL"].choose(rng).unwrap()),
        1 => list.add("asset_type", "server"),
        _ => {}
    }
    list.url(keyspace, tenant, "/api/v1/assets", "assets")
}

/// A random read of `tenant` over what the catalog knows.
pub fn random_read(keyspace: &Keyspace, tenant: Uuid, catalog: &Catalog, rng: &mut impl Rng) -> ReadUrl {
    let data = catalog.tenant(tenant);
    loop {
        match rng.random_range(0..20) {
            0..=5 => {
                if let Some(risk) = data.and_then(|d| d.risks.choose(rng)) {
                    return url(keyspace, tenant, format!("/api/v1/risks/{risk}"), "risk", &[("id", risk.to_string())]);
                }
            }
            6..=8 => {
                if let Some((risk, id)) = data.and_then(|d| d.mitigations.choose(rng)) {
                    return url(
                        keyspace,
                        tenant,
                        format!("/api/v1/risks/{risk}/mitigations/{id}"),
                        "mitigation",
                        &[("risk_id", risk.to_string()), ("id", id.to_string())],
                    );
                }
            }
            9..=10 => {
                if let Some(asset) = data.and_then(|d| d.assets.choose(rng)) {
                    return url(
                        keyspace,
                        tenant,
                        format!("/api/v1/assets/{asset}"),
                        "asset",
                        &[("id", asset.to_string())],
                    );
                }
            }
            11..=13 => return risk_list(keyspace, tenant, rng),
            14..=15 => return asset_list(keyspace, tenant, rng),
            16 => return url(keyspace, tenant, "/api/v1/stats".into(), "stats", &[]),
            17 => return url(keyspace, tenant, "/api/v1/stats/risk-matrix".into(), "risk_matrix", &[]),
            _ => {
                let days = *[7u32, 30, 90].choose(rng).unwrap();
                let today = chrono::Utc::now().date_naive().to_string();
                return url(
                    keyspace,
                    tenant,
                    format!("/api/v1/stats/trends?days={days}"),
                    "trends",
                    &[("days", days.to_string()), ("today", today)],
                );
            }
        }
    }
}

/// The detail URL of one risk (used by the staleness probe).
pub fn risk_detail(keyspace: &Keyspace, tenant: Uuid, risk: Uuid) -> ReadUrl {
    url(keyspace, tenant, format!("/api/v1/risks/{risk}"), "risk", &[("id", risk.to_string())])
}
