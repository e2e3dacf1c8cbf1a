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

/// The risk list with explicit parameters (so the key does not depend on the API's defaults).
fn risk_list(keyspace: &Keyspace, tenant: Uuid, rng: &mut impl Rng) -> ReadUrl {
    let sort_by = *["score", "created_at", "updated_at", "title"].choose(rng).unwrap();
    let sort_dir = *["asc", "desc"].choose(rng).unwrap();
    let page = rng.random_range(1..=2u32);
    let limit = *[5u32, 20].choose(rng).unwrap();
    let mut params: Vec<(&str, String)> = vec![
        ("sort_by", sort_by.into()),
        ("sort_dir", sort_dir.into()),
        ("page", page.to_string()),
        ("limit", limit.to_string()),
    ];
    let mut query = format!("sort_by={sort_by}&sort_dir={sort_dir}&page={page}&limit={limit}");
    match rng.random_range(0..8) {
        0 => {
            let status = *["DRAFT", "ACTIVE", "MITIGATED", "ACCEPTED"].choose(rng).unwrap();
            params.push(("status", status.into()));
            query.push_str(&format!("&status={status}"));
        }
        1 => {
            let severity = *["LOW", "MEDIUM", "HIGH", "CRITICAL"].choose(rng).unwrap();
            params.push(("severity", severity.into()));
            query.push_str(&format!("&severity={severity}"));
        }
        2 => {
            let min = *[4u32, 9, 15].choose(rng).unwrap();
            params.push(("min_score", min.to_string()));
            query.push_str(&format!("&min_score={min}"));
        }
        3 => {
            // The API never caches a search (no entry appears under this key); the read still
            // checks that searches answer correctly under the faults.
            let q = *["phish", "vpn", "ransomware", "verifier"].choose(rng).unwrap();
            params.push(("q", q.into()));
            query.push_str(&format!("&q={}", q.to_uppercase()));
        }
        4 => {
            let tag = *["audit", "cloud", "phishing", "q1"].choose(rng).unwrap();
            params.push(("tag", tag.into()));
            query.push_str(&format!("&tag={tag}"));
        }
        5 => {
            params.push(("owner", "alice@example.com".into()));
            query.push_str("&owner=alice%40example.com");
        }
        _ => {}
    }
    url(keyspace, tenant, format!("/api/v1/risks?{query}"), "risks", &params)
}

fn asset_list(keyspace: &Keyspace, tenant: Uuid, rng: &mut impl Rng) -> ReadUrl {
    let page = rng.random_range(1..=2u32);
    let limit = *[5u32, 20].choose(rng).unwrap();
    let mut params: Vec<(&str, String)> = vec![("page", page.to_string()), ("limit", limit.to_string())];
    let mut query = format!("page={page}&limit={limit}");
    match rng.random_range(0..4) {
        0 => {
            let criticality = *["LOW", "MEDIUM", "HIGH", "CRITICAL"].choose(rng).unwrap();
            params.push(("criticality", criticality.into()));
            query.push_str(&format!("&criticality={criticality}"));
        }
        1 => {
            params.push(("asset_type", "server".into()));
            query.push_str("&asset_type=server");
        }
        _ => {}
    }
    url(keyspace, tenant, format!("/api/v1/assets?{query}"), "assets", &params)
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
