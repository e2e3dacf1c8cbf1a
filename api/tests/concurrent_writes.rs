//! Writes that meet another session's locks: each test holds rows in a session of its own and
//! lets go once the API's transaction waits for them, so the interleaving is the same every run.

mod common;

use std::time::Duration;

use common::{TestApp, assert_problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A session of the test's own that began with `begin` and ran `statement` on `row`, holding
/// its locks until the test commits.
async fn session_holding(app: &TestApp, begin: &str, statement: &str, row: uuid::Uuid) -> tokio_postgres::Client {
    let session = app.db.connect().await;
    session.batch_execute(begin).await.unwrap();
    session.execute(statement, &[&row]).await.unwrap();
    session
}

/// Returns once a session of the API waits for a lock in the test's database (`session`'s).
async fn until_the_api_waits_for_a_lock(session: &tokio_postgres::Client) {
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'openrisk-api' AND datname = current_database()
                     AND wait_event_type = 'Lock'";
    while session.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_write_that_loses_a_deadlock_runs_again_and_succeeds_instead_of_answering_503() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let (risk_path, asset) = app.create_linked_risk_and_asset(token, "Deadlocked", "Server", "LOW").await;
    let risk: uuid::Uuid = risk_path.rsplit('/').next().unwrap().parse().unwrap();
    let asset_id: uuid::Uuid = asset["id"].as_str().unwrap().parse().unwrap();
    // A session of the test's own holds the risk's row; it never detects a deadlock itself, so
    // Postgres makes the API's transaction the loser.
    let holding = "UPDATE risks SET title = 'Held' WHERE id = $1";
    let holder = session_holding(&app, "BEGIN; SET LOCAL deadlock_timeout = '60s'", holding, risk).await;
    // The API locks the asset, then its new criticality re-scores the risk: it waits for the holder.
    let path = format!("/api/v1/assets/{asset_id}");
    let patch = app.send_json(Method::PATCH, &path, token, json!({"criticality": "CRITICAL"}));
    let close_the_cycle = async {
        until_the_api_waits_for_a_lock(&holder).await;
        // Now the holder wants the asset the API holds: a deadlock, which the API's session
        // detects (after its deadlock_timeout) and loses. Its retry then waits for this commit.
        holder.execute("SELECT 1 FROM assets WHERE id = $1 FOR UPDATE", &[&asset_id]).await.unwrap();
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let (response, ()) = tokio::join!(patch, close_the_cycle);
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    assert_eq!(app.get_json(&path, token).await["criticality"], "CRITICAL");
    let detail = app.get_json(&risk_path, token).await;
    assert_eq!(detail["title"], "Held");
    assert_eq!(detail["score"], 12.0 * 1.5, "re-scored with the new criticality");
}

#[tokio::test]
async fn a_sub_action_added_while_its_mitigation_is_deleted_is_a_404_not_a_foreign_key_error() {
    let app = spawn_app().await;
    let (token, risk_path) = (&app.a.analyst, app.create_risk_path(&app.a.analyst, "Parent").await);
    let id: uuid::Uuid =
        app.create_mitigation(token, &risk_path, "Going").await["id"].as_str().unwrap().parse().unwrap();
    // A session of the test's own deletes the mitigation and commits only once the API waits.
    let deleter = session_holding(&app, "BEGIN", "DELETE FROM mitigations WHERE id = $1", id).await;
    let subactions = format!("{risk_path}/mitigations/{id}/subactions");
    let add = app.send_json(Method::POST, &subactions, token, json!({"title": "Late"}));
    let commit_once_waited_for = async {
        until_the_api_waits_for_a_lock(&deleter).await;
        deleter.batch_execute("COMMIT").await.unwrap();
    };
    let (response, ()) = tokio::join!(add, commit_once_waited_for);
    assert_problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(app.count("SELECT count(*) FROM mitigation_subactions").await, 0);
}
