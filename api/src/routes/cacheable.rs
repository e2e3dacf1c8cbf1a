//! The cacheable reads each route makes, built in one place for the route's handler and for the
//! hit path ([`crate::hit_path`]), which answers hits before the router: both must name the same
//! entry key and tags for the same request, or a hit would serve another request's answer.

use poem_openapi::types::ParseFromParameter;
use uuid::Uuid;

use openrisk_shared::Tag;

use super::is_cached_page;
use crate::cache::CacheableRead;
use crate::db::assets::AssetFilter;
use crate::db::risks::{RiskFilter, ScoreRange};
use crate::filters::{LabelFilter, OwnerFilter, ScoreBound};
use crate::model::{RiskSortField, SortDirection};

/// A cacheable GET in its plainest form: a path the router would send to one of the handlers
/// below, with parameters (if any) that are certainly valid and read here exactly as the
/// handler reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum PlainRead {
    RiskList(RiskFilter),
    RiskDetail { id: Uuid },
    Mitigation { risk: Uuid, id: Uuid },
    AssetDetail { id: Uuid },
    Stats,
    RiskMatrix,
}

impl PlainRead {
    /// The read `path` and `query` stand for; `None` for anything else (the router decides it).
    pub fn of(path: &str, query: Option<&str>) -> Option<Self> {
        match query {
            None => Self::of_path(path),
            Some(query) if path == "/api/v1/risks" => plain_risk_filter(query).map(Self::RiskList),
            Some(_) => None,
        }
    }

    fn of_path(path: &str) -> Option<Self> {
        if path == "/api/v1/risks" {
            return plain_risk_filter("").map(Self::RiskList);
        }
        let rest = path.strip_prefix("/api/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let id = |segment: &str| segment.parse::<Uuid>().ok().filter(|id| id.hyphenated().to_string() == segment);
        match segments.as_slice() {
            ["risks", risk] => Some(Self::RiskDetail { id: id(risk)? }),
            ["risks", risk, "mitigations", mitigation] => {
                Some(Self::Mitigation { risk: id(risk)?, id: id(mitigation)? })
            }
            ["assets", asset] => Some(Self::AssetDetail { id: id(asset)? }),
            ["stats"] => Some(Self::Stats),
            ["stats", "risk-matrix"] => Some(Self::RiskMatrix),
            _ => None,
        }
    }

    /// Whether this is a list read, which the tenant's entry budget limits.
    pub fn is_list(&self) -> bool {
        matches!(self, Self::RiskList(_))
    }

    /// What the route's handler reads for `tenant`.
    pub fn read(&self, tenant: Uuid) -> CacheableRead {
        match *self {
            Self::RiskList(ref filter) => risk_list(tenant, filter),
            Self::RiskDetail { id } => risk_detail(tenant, id),
            Self::Mitigation { risk, id } => mitigation(tenant, risk, id),
            Self::AssetDetail { id } => asset_detail(tenant, id),
            Self::Stats => stats(tenant),
            Self::RiskMatrix => risk_matrix(tenant),
        }
    }
}

/// The risk list's order when the query names none.
pub const DEFAULT_SORT_BY: RiskSortField = RiskSortField::CreatedAt;
pub const DEFAULT_SORT_DIR: SortDirection = SortDirection::Desc;

/// The filter of a risk list query the hit path can read exactly and the cache keeps: every
/// parameter known, given once, in plain characters (no percent-encoding or `+`) and valid, no
/// free-text search and no page past [`super::MAX_CACHED_PAGE`]. `None` for anything else.
fn plain_risk_filter(query: &str) -> Option<RiskFilter> {
    fn parsed<T: ParseFromParameter>(value: &str) -> Option<T> {
        T::parse_from_parameter(value).ok()
    }
    let mut filter = RiskFilter::default();
    let (mut min_score, mut max_score) = (None, None);
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|_| !query.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        if seen.contains(&name) || value.contains(['%', '+']) || name.contains(['%', '+']) {
            return None;
        }
        seen.push(name);
        match name {
            "status" => filter.status = Some(parsed(value)?),
            "severity" => filter.severity = Some(parsed(value)?),
            "min_score" => min_score = Some(parsed::<ScoreBound>(value)?.get()),
            "max_score" => max_score = Some(parsed::<ScoreBound>(value)?.get()),
            "tag" => filter.tag = Some(parsed::<LabelFilter>(value)?.into_string()),
            "owner" => filter.owner = Some(parsed::<OwnerFilter>(value)?.into_string()),
            "sort_by" => filter.order.by = parsed(value)?,
            "sort_dir" => filter.order.direction = parsed(value)?,
            "page" => filter.page = parsed(value).filter(|&page| is_cached_page(page))?,
            "limit" => filter.limit = parsed(value)?,
            _ => return None,
        }
    }
    filter.score = ScoreRange::new(min_score, max_score);
    Some(filter)
}

/// The read of the operation `operation_id` (its route template, from the routing table) for
/// `tenant`: the entry is `resource` with `params`, invalidated by `tags`.
fn read(
    operation_id: &str,
    tenant: Uuid,
    resource: &'static str,
    params: Vec<(&'static str, String)>,
    tags: Vec<Tag>,
) -> CacheableRead {
    CacheableRead { route: crate::app::operation_path(operation_id), tenant, resource, params, tags }
}

/// `GET /api/v1/risks`: a page of the filtered list; any risk change invalidates `risks`.
pub fn risk_list(tenant: Uuid, filter: &RiskFilter) -> CacheableRead {
    read("listRisks", tenant, "risks", filter.params(), vec![Tag::risks()])
}

/// `GET /api/v1/risks/{id}`: the risk with its mitigations, sub-actions and assets, all of
/// which invalidate `risk:<id>` (see the triggers in `migrations/`).
pub fn risk_detail(tenant: Uuid, id: Uuid) -> CacheableRead {
    read("getRisk", tenant, "risk", vec![("id", id.to_string())], vec![Tag::risk(id)])
}

/// `GET /api/v1/risks/{risk_id}/mitigations/{id}`.
pub fn mitigation(tenant: Uuid, risk: Uuid, id: Uuid) -> CacheableRead {
    read(
        "getMitigation",
        tenant,
        "mitigation",
        vec![("risk_id", risk.to_string()), ("id", id.to_string())],
        vec![Tag::mitigation(id), Tag::risk(risk)],
    )
}

/// `GET /api/v1/assets/{id}`.
pub fn asset_detail(tenant: Uuid, id: Uuid) -> CacheableRead {
    read("getAsset", tenant, "asset", vec![("id", id.to_string())], vec![Tag::asset(id)])
}

/// `GET /api/v1/assets`: a page of the filtered list; any asset change invalidates `assets`.
pub fn asset_list(tenant: Uuid, filter: &AssetFilter) -> CacheableRead {
    read("listAssets", tenant, "assets", filter.params(), vec![Tag::assets()])
}

/// `GET /api/v1/stats`.
pub fn stats(tenant: Uuid) -> CacheableRead {
    read("getStats", tenant, "stats", Vec::new(), vec![Tag::risks(), Tag::mitigations()])
}

/// `GET /api/v1/stats/risk-matrix`.
pub fn risk_matrix(tenant: Uuid) -> CacheableRead {
    read("getRiskMatrix", tenant, "risk_matrix", Vec::new(), vec![Tag::risks()])
}

/// `GET /api/v1/stats/trends` of the `days` days up to `today`: the score history's growth
/// invalidates it, and the day's change names another entry.
pub fn trends(tenant: Uuid, days: u32, today: chrono::NaiveDate) -> CacheableRead {
    read(
        "getTrends",
        tenant,
        "trends",
        vec![("days", days.to_string()), ("today", today.to_string())],
        vec![Tag::risk_history()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::risks::ScoreBound;
    use crate::model::RiskStatus;

    #[test]
    fn every_cacheable_read_is_named_by_the_documented_path_of_its_operation() {
        let (tenant, id) = (Uuid::new_v4(), Uuid::new_v4());
        let reads = [
            risk_list(tenant, &RiskFilter::default()),
            risk_detail(tenant, id),
            mitigation(tenant, id, id),
            asset_detail(tenant, id),
            asset_list(
                tenant,
                &AssetFilter {
                    q: None,
                    criticality: None,
                    asset_type: None,
                    page: Default::default(),
                    limit: Default::default(),
                },
            ),
            stats(tenant),
            risk_matrix(tenant),
            trends(tenant, 30, chrono::Utc::now().date_naive()),
        ];
        let routes: Vec<&str> = reads.iter().map(|read| read.route).collect();
        assert_eq!(
            routes,
            [
                "/api/v1/risks",
                "/api/v1/risks/{id}",
                "/api/v1/risks/{risk_id}/mitigations/{id}",
                "/api/v1/assets/{id}",
                "/api/v1/assets",
                "/api/v1/stats",
                "/api/v1/stats/risk-matrix",
                "/api/v1/stats/trends"
            ]
        );
    }

    #[test]
    fn only_the_canonical_paths_of_cacheable_reads_are_plain() {
        let id = Uuid::new_v4();
        assert_eq!(PlainRead::of(&format!("/api/v1/risks/{id}"), None), Some(PlainRead::RiskDetail { id }));
        assert_eq!(PlainRead::of("/api/v1/stats/risk-matrix", None), Some(PlainRead::RiskMatrix));
        for other in [
            format!("/api/v1/risks/{id}/"),
            format!("/api/v1/risks/{}", id.simple()),
            format!("/api/v1/risks/{}", id.hyphenated().to_string().to_uppercase()),
            format!("/api/v1//risks/{id}"),
            "/api/v1/stats/trends".to_owned(),
            format!("/api/v1/risks/{id}/mitigations"),
        ] {
            assert_eq!(PlainRead::of(&other, None), None, "{other}");
        }
        assert_eq!(PlainRead::of(&format!("/api/v1/risks/{id}"), Some("x=1")), None, "only lists take a query");
    }

    #[test]
    fn a_risk_list_query_is_plain_only_when_every_parameter_is_known_once_and_valid() {
        let list = |query: &str| match PlainRead::of("/api/v1/risks", Some(query)) {
            Some(PlainRead::RiskList(filter)) => Some(filter),
            _ => None,
        };
        let filter = list("status=ACTIVE&sort_by=score&page=2&limit=50&min_score=7.123").unwrap();
        assert_eq!((filter.status, filter.page.get(), filter.limit.get()), (Some(RiskStatus::Active), 2, 50));
        assert_eq!(filter.score.min, Some(ScoreBound::at_least(7.123)));
        assert_eq!(list("").unwrap(), RiskFilter::default());
        for refused in [
            "q=fire",
            "page=11",
            "page=0",
            "limit=201",
            "status=active",
            "status=ACTIVE&status=DRAFT",
            "tag=a%20b",
            "owner=a+b",
            "tag=",
            "min_score=NaN",
            "max_score=1001",
            "colour=red",
            "page",
            "page=1&&limit=2",
        ] {
            assert_eq!(list(refused), None, "{refused}");
        }
    }
}
