//! The examples the OpenAPI document shows for a risk and for the body that creates one.

use std::collections::BTreeMap;

use chrono::DateTime;
use poem_openapi::types::Example;
use uuid::Uuid;

use super::{Label, Risk, RiskCreate, RiskSource, RiskStatus, Severity};

impl Example for Risk {
    fn example() -> Self {
        let at = DateTime::parse_from_rfc3339("2026-01-15T09:30:00Z").expect("valid").to_utc();
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

impl Example for RiskCreate {
    fn example() -> Self {
        RiskCreate {
            title: "Ransomware on the file servers".into(),
            description: "Encryption of shared drives through a phishing foothold.".into(),
            impact: 5,
            probability: 3,
            status: Some(RiskStatus::Active),
            tags: vec![Label("ransomware".into())],
            owner: "ciso@example.com".into(),
            source: None,
            external_id: None,
            custom_fields: BTreeMap::new(),
            frameworks: vec![Label("ISO27001".into())],
        }
    }
}
