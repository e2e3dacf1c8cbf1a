//! The examples the OpenAPI document shows for the main bodies: a risk (alone, and in detail
//! with a mitigation and the asset that weighs its score), a mitigation with a sub-action, an
//! asset, and the bodies that create each. Clients' linters check them against their schemas
//! (`openapi/redocly.yaml`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::types::Example;
use uuid::Uuid;

use super::{
    Asset, AssetCreate, CalendarDate, Criticality, Mitigation, MitigationCreate, MitigationStatus, Risk, RiskCreate,
    RiskDetail, RiskSource, RiskStatus, Severity, SubAction, Text,
};

/// The instant every example was recorded at.
fn recorded_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-15T09:30:00Z").expect("valid").to_utc()
}

impl Example for Risk {
    fn example() -> Self {
        let at = recorded_at();
        Risk {
            id: Uuid::nil(),
            title: "Ransomware on the file servers".into(),
            description: "Encryption of shared drives through a phishing foothold.".into(),
            impact: 5,
            probability: 3,
            score: 18.75,
            severity: Severity::High,
            status: RiskStatus::Active,
            tags: vec!["ransomware".into(), "endpoint".into()],
            owner: "ciso@example.com".into(),
            source: RiskSource::Manual,
            external_id: None,
            custom_fields: BTreeMap::new(),
            frameworks: vec!["ISO27001".into()],
            created_at: at,
            updated_at: at,
        }
    }
}

impl Example for RiskDetail {
    fn example() -> Self {
        RiskDetail { risk: Risk::example(), mitigations: vec![Mitigation::example()], assets: vec![Asset::example()] }
    }
}

impl Example for RiskCreate {
    fn example() -> Self {
        RiskCreate {
            title: "Ransomware on the file servers".into(),
            description: "Encryption of shared drives through a phishing foothold.".into(),
            impact: 5,
            probability: 3,
            status: Some(RiskStatus::Active),
            tags: vec!["ransomware".into()],
            owner: "ciso@example.com".into(),
            source: None,
            external_id: None,
            custom_fields: BTreeMap::new(),
            frameworks: vec!["ISO27001".into()],
        }
    }
}

impl Example for Mitigation {
    fn example() -> Self {
        let at = recorded_at();
        Mitigation {
            id: Uuid::nil(),
            risk_id: Uuid::nil(),
            title: "Offline backups of the file servers".into(),
            assignee: "it-ops@example.com".into(),
            status: MitigationStatus::InProgress,
            progress: 40,
            due_date: CalendarDate::parse("2026-03-31").ok(),
            cost: 2,
            mitigation_time_days: 10,
            subactions: vec![SubAction::example()],
            created_at: at,
            updated_at: at,
        }
    }
}

/// The example mitigation as it was first recorded: planned, nothing done yet.
impl Example for MitigationCreate {
    fn example() -> Self {
        let mitigation = Mitigation::example();
        MitigationCreate {
            title: Text(mitigation.title),
            assignee: Text(mitigation.assignee),
            status: Some(MitigationStatus::Planned),
            progress: 0,
            due_date: mitigation.due_date,
            cost: Some(mitigation.cost),
            mitigation_time_days: mitigation.mitigation_time_days,
        }
    }
}

impl Example for SubAction {
    fn example() -> Self {
        let at = recorded_at();
        SubAction {
            id: Uuid::nil(),
            mitigation_id: Uuid::nil(),
            title: "Test a restore from tape".into(),
            completed: false,
            created_at: at,
            updated_at: at,
        }
    }
}

impl Example for Asset {
    fn example() -> Self {
        let at = recorded_at();
        Asset {
            id: Uuid::nil(),
            name: "File server cluster".into(),
            asset_type: "server".into(),
            criticality: Criticality::High,
            owner: "it-ops@example.com".into(),
            created_at: at,
            updated_at: at,
        }
    }
}

/// The body that created the example asset.
impl Example for AssetCreate {
    fn example() -> Self {
        let asset = Asset::example();
        AssetCreate {
            name: Text(asset.name),
            asset_type: Text(asset.asset_type),
            criticality: Some(asset.criticality),
            owner: Text(asset.owner),
        }
    }
}
