//! `seed` generates consistent data: what the triggers would have derived, and a usable demo token.

mod common;

use common::spawn_app;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn seeded_data_is_consistent_the_demo_token_works_and_a_second_run_reuses_the_demo_tenant() {
    let app = spawn_app().await;
    let conn = &app.app.state.db.conn;
    let report = openrisk_api::seed::seed(conn, 2, 120, true).await.unwrap();
    assert_eq!(report.tenants.len(), 2);
    let (demo, token) = report.demo.clone().expect("demo tenant");

    for tenant in report.tenants.iter().chain([&demo]) {
        let app = &app;
        let count = |sql: &str| {
            let sql = sql.replace("$1", &format!("'{tenant}'"));
            async move { app.count(&sql).await }
        };
        assert_eq!(count("SELECT count(*) FROM risks WHERE tenant_id = $1").await, 120);
        assert_eq!(count("SELECT count(*) FROM assets WHERE tenant_id = $1").await, 12);
        assert!(count("SELECT count(*) FROM mitigations WHERE tenant_id = $1").await > 60);
        assert!(count("SELECT count(*) FROM mitigation_subactions WHERE tenant_id = $1").await > 60);
        assert!(count("SELECT count(*) FROM risk_assets WHERE tenant_id = $1").await > 60);
        assert_eq!(
            count("SELECT count(*) FROM risks WHERE tenant_id = $1 AND score <> risk_compute_score(id, impact, probability)").await,
            0,
            "scores are what the triggers compute"
        );
        assert_eq!(count("SELECT count(DISTINCT status) FROM risks WHERE tenant_id = $1").await, 4);
        assert_eq!(
            count("SELECT count(*) FROM risk_history WHERE tenant_id = $1 AND change_type = 'CREATED'").await,
            120,
            "one creation per risk in the history"
        );
        assert!(count("SELECT count(*) FROM cache_outbox WHERE tenant_id = $1 AND 'all' = ANY(tags)").await >= 1);
    }

    let list = app.get("/api/v1/risks?limit=200", &token).await;
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(list.json::<Value>().await.unwrap()["total"], 120);
    let trends = app.get_json("/api/v1/stats/trends?days=365", &token).await;
    let days_with_data =
        trends["points"].as_array().unwrap().iter().filter(|point| point["created"].as_i64() > Some(0)).count();
    assert!(days_with_data > 30, "creations are spread over time");

    // A second run, as `scripts/dev-up.sh` makes it: no new tenant, no new data, a working
    // token for the same demo tenant.
    let tenants_before = app.count("SELECT count(*) FROM tenants").await;
    let again = openrisk_api::seed::seed(conn, 2, 120, true).await.unwrap();
    assert!(again.tenants.is_empty(), "{:?}", again.tenants);
    let (again_demo, again_token) = again.demo.expect("demo tenant");
    assert_eq!(again_demo, demo);
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, tenants_before);
    assert_eq!(app.count(&format!("SELECT count(*) FROM risks WHERE tenant_id = '{demo}'")).await, 120);
    let list = app.get("/api/v1/risks?limit=1", &again_token).await;
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(list.json::<Value>().await.unwrap()["total"], 120);
}

/// A database user without superuser rights seeds through the row triggers; what they derive is
/// what the set-based path writes, last changes spread over time included (re-scoring by the
/// links stamps `updated_at`, and the seed gives the risks back their ages).
#[tokio::test]
async fn seeding_through_the_triggers_derives_what_the_set_based_path_writes() {
    let app = spawn_app().await;
    let role = format!("seeder_{}", app.db.name);
    app.sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"
    ))
    .await;
    let url = app.db.url.replacen("postgres@", &format!("{role}@"), 1);
    let seeder = sea_orm::Database::connect(&url).await.unwrap();
    let report = openrisk_api::seed::seed(&seeder, 1, 120, false).await.unwrap();
    seeder.close().await.unwrap();
    let tenant = report.tenants[0];

    let count = |sql: &str| {
        let sql = sql.replace("$1", &format!("'{tenant}'"));
        let app = &app;
        async move { app.count(&sql).await }
    };
    assert_eq!(
        count(
            "SELECT count(*) FROM risks WHERE tenant_id = $1 AND score <> risk_compute_score(id, impact, probability)"
        )
        .await,
        0
    );
    assert_eq!(count("SELECT count(*) FROM risk_history WHERE tenant_id = $1 AND change_type = 'CREATED'").await, 120);
    let linked_risks_last_changed_on = "SELECT count(DISTINCT updated_at::date) FROM risks r WHERE tenant_id = $1
                                        AND EXISTS (SELECT 1 FROM risk_assets ra WHERE ra.risk_id = r.id)";
    assert!(count(linked_risks_last_changed_on).await > 30, "last changes are spread over time");
    app.sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}
