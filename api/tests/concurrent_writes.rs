//! Writes that meet another session's locks: each test holds rows in a session of its own and
//! lets go once the API's transaction waits for them, so the interleaving is the same every run.

mod common;

use std::time::Duration;

use common::{TestApp, assert_problem, id_of, spawn_app, until_the_api_waits_for_a_lock};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A session of the test's own that began with `begin` and ran `statement` on `row`, holding
/// its locks until the test commits.
async fn session_holding(app: &TestApp, begin: &str, statement: &str, row: uuid::Uuid) -> tokio_postgres::Client {
    let session = app.db.connect().await;
    session.batch_execute(begin).await.unwrap();
    session.execute(statement, &[&row]).await.unwrap();
    session
}

/// Runs `statement` on its own session and commits it, in the background; returns once that has
/// finished or waits for a lock (then the test decides when it may go on).
async fn write_in_the_background(
    app: &TestApp,
    statement: &'static str,
    rows: [uuid::Uuid; 3],
) -> tokio::task::JoinHandle<()> {
    let (session, watcher) = (app.db.connect().await, app.db.connect().await);
    let pid: i32 = session.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let write = tokio::spawn(async move {
        session.execute(statement, &[&rows[0], &rows[1], &rows[2]]).await.unwrap();
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'";
    while !write.is_finished() && watcher.query_one(waiting, &[&pid]).await.unwrap().get::<_, i64>(0) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write
}

#[tokio::test]
async fn a_write_that_loses_a_deadlock_runs_again_and_succeeds_instead_of_answering_503() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let (risk_path, asset) = app.create_linked_risk_and_asset(token, "Deadlocked", "Server", "LOW").await;
    let risk = id_of(&risk_path);
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

/// Sends `request` while a session of the test's own has deleted `row` with `delete` and commits
/// once the API waits for it (or has answered without waiting); returns the API's answer.
async fn answer_while_deleted(
    app: &TestApp,
    delete: &str,
    row: uuid::Uuid,
    request: impl Future<Output = reqwest::Response>,
) -> reqwest::Response {
    let deleter = session_holding(app, "BEGIN", delete, row).await;
    let mut request = std::pin::pin!(request);
    let answered_without_waiting = tokio::select! {
        response = &mut request => Some(response),
        () = until_the_api_waits_for_a_lock(&deleter) => None,
    };
    deleter.batch_execute("COMMIT").await.unwrap();
    match answered_without_waiting {
        Some(response) => response,
        None => request.await,
    }
}

#[tokio::test]
async fn a_sub_action_added_while_its_mitigation_is_deleted_is_a_404_not_a_foreign_key_error() {
    let app = spawn_app().await;
    let (token, risk_path) = (&app.a.analyst, app.create_risk_path(&app.a.analyst, "Parent").await);
    let id: uuid::Uuid =
        app.create_mitigation(token, &risk_path, "Going").await["id"].as_str().unwrap().parse().unwrap();
    let subactions = format!("{risk_path}/mitigations/{id}/subactions");
    let add = app.send_json(Method::POST, &subactions, token, json!({"title": "Late"}));
    let response = answer_while_deleted(&app, "DELETE FROM mitigations WHERE id = $1", id, add).await;
    assert_problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(app.count("SELECT count(*) FROM mitigation_subactions").await, 0);
}

/// A mitigation another transaction deleted first is a 404 to a `DELETE`, and to a `PATCH` that
/// changes nothing: a client told 204 or 200 believes the mitigation is still there or that its
/// own delete took effect.
#[tokio::test]
async fn a_mitigation_deleted_by_another_transaction_first_is_a_404_to_a_delete_or_an_empty_patch() {
    let app = spawn_app().await;
    let (token, risk_path) = (&app.a.analyst, app.create_risk_path(&app.a.analyst, "Parent").await);
    for method in [Method::DELETE, Method::PATCH] {
        let going = app.create_mitigation(token, &risk_path, "Going").await;
        let going = id_of(going["id"].as_str().unwrap());
        let path = format!("{risk_path}/mitigations/{going}");
        let request = async { app.request(method.clone(), &path, token).json(&json!({})).send().await.unwrap() };
        let response = answer_while_deleted(&app, "DELETE FROM mitigations WHERE id = $1", going, request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
    }
}

/// Two writes in plain SQL that meet on one row: `held` (on `held_row`) is left uncommitted while
/// `racing` runs in the background, a reader caches `path` meanwhile, then `held` commits and
/// `racing` finishes. Returns `path` as read once every invalidation was applied.
async fn race(
    app: &TestApp,
    (held, held_row): (&str, uuid::Uuid),
    racing: (&'static str, [uuid::Uuid; 3]),
    path: &str,
) -> Value {
    app.drain_outbox().await;
    let holder = session_holding(app, "BEGIN", held, held_row).await;
    let raced = write_in_the_background(app, racing.0, racing.1).await;
    app.drain_outbox().await;
    app.get(path, &app.a.viewer).await;
    holder.batch_execute("COMMIT").await.unwrap();
    raced.await.unwrap();
    app.drain_outbox().await;
    app.get_json(path, &app.a.viewer).await
}

#[tokio::test]
async fn a_link_made_while_its_asset_changes_leaves_no_stale_detail_and_no_stale_score() {
    let app = spawn_app().await;
    let risk_path = app.create_risk_path(&app.a.analyst, "Linked meanwhile").await;
    let asset = id_of(app.create_asset(&app.a.analyst, "Old name", "LOW").await["id"].as_str().unwrap());
    let change = "UPDATE assets SET name = 'New name', criticality = 'CRITICAL' WHERE id = $1";
    let link = "INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ($1, $2, $3)";
    let detail = race(&app, (change, asset), (link, [app.a.id, id_of(&risk_path), asset]), &risk_path).await;
    assert_eq!(detail["assets"][0]["name"], "New name", "the detail cached meanwhile was invalidated");
    assert_eq!(detail["score"], 12.0 * 1.5, "scored with the asset's committed criticality");
}

/// A link locks its asset before its risk, in the order a change of the asset's criticality takes
/// them (the asset, then the risks it re-scores): a link that held the risk while it waited for
/// the asset deadlocked with such a change. A session holds the asset as that change does; while
/// the link waits for it, the risk must be free.
#[tokio::test]
async fn a_link_waiting_for_its_asset_holds_no_lock_on_its_risk() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let asset = app.create_asset(token, "Shared", "LOW").await;
    let risk_path = app.create_risk_path(token, "Linking").await;
    let asset_id = id_of(asset["id"].as_str().unwrap());
    let holding = "SELECT 1 FROM assets WHERE id = $1 FOR NO KEY UPDATE";
    let holder = session_holding(&app, "BEGIN", holding, asset_id).await;
    let probe = app.db.connect().await;
    let probe_then_let_go = async {
        until_the_api_waits_for_a_lock(&holder).await;
        let risk_row = format!("SELECT 1 FROM risks WHERE id = '{}' FOR UPDATE NOWAIT", id_of(&risk_path));
        let probed = probe.batch_execute(&risk_row).await;
        holder.batch_execute("COMMIT").await.unwrap();
        probed
    };
    let (response, probed) = tokio::join!(app.link_asset(token, &risk_path, &asset), probe_then_let_go);
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    probed.expect("the risk was free while the link waited for its asset");
}

/// A link made while its asset's delete, or its risk's soft delete, commits is a 404: not the
/// foreign key's 422, and no link left on a deleted risk.
#[tokio::test]
async fn a_link_made_while_its_asset_or_its_risk_is_deleted_is_a_404() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    for (deleted, delete) in
        [("asset", "DELETE FROM assets WHERE id = $1"), ("risk", "UPDATE risks SET deleted_at = now() WHERE id = $1")]
    {
        let asset = app.create_asset(token, "Going", "LOW").await;
        let risk_path = app.create_risk_path(token, "Linked").await;
        let row = if deleted == "asset" { asset["id"].as_str().unwrap().parse().unwrap() } else { id_of(&risk_path) };
        let link = app.link_asset(token, &risk_path, &asset);
        let response = answer_while_deleted(&app, delete, row, link).await;
        assert_problem(response, StatusCode::NOT_FOUND).await;
        assert_eq!(app.count("SELECT count(*) FROM risk_assets").await, 0, "the {deleted} deleted");
    }
}

#[tokio::test]
async fn a_sub_action_written_while_its_mitigation_moves_reaches_the_new_risks_detail() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let (from, to) = (app.create_risk_path(token, "From").await, app.create_risk_path(token, "To").await);
    let mitigation = id_of(app.create_mitigation(token, &from, "Moving").await["id"].as_str().unwrap());
    let subaction = "INSERT INTO mitigation_subactions (tenant_id, mitigation_id, title)
                     SELECT tenant_id, id, 'Written meanwhile' FROM mitigations WHERE id = $1";
    let moving = "UPDATE mitigations SET risk_id = $2 WHERE tenant_id = $1 AND id = $3";
    let detail = race(&app, (subaction, mitigation), (moving, [app.a.id, id_of(&to), mitigation]), &to).await;
    assert_eq!(detail["mitigations"][0]["subactions"][0]["title"], "Written meanwhile");
}
