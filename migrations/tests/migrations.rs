//! The migrations and the trigger machinery against a real Postgres.

mod common;

use common::{events_after, functions_for, last_event_id, tags, tenant};
use openrisk_test_support::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

async fn insert_id(client: &Client, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Uuid {
    client.query_one(sql, params).await.unwrap_or_else(|error| panic!("{sql}: {error}")).get(0)
}

/// Inserts a risk of `tenant` titled `title` with this impact and probability; returns its id.
async fn insert_risk(client: &Client, tenant: Uuid, title: &str, impact: i16, probability: i16) -> Uuid {
    insert_id(
        client,
        "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, $2, $3, $4) RETURNING id",
        &[&tenant, &title, &impact, &probability],
    )
    .await
}

/// Inserts a mitigation titled `m` of `risk`; returns its id.
async fn insert_mitigation(client: &Client, tenant: Uuid, risk: Uuid) -> Uuid {
    let sql = "INSERT INTO mitigations (tenant_id, risk_id, title) VALUES ($1, $2, 'm') RETURNING id";
    insert_id(client, sql, &[&tenant, &risk]).await
}

/// Inserts a sub-action titled `s` of `mitigation`; returns its id.
async fn insert_subaction(client: &Client, tenant: Uuid, mitigation: Uuid) -> Uuid {
    insert_subaction_result(client, tenant, mitigation).await.unwrap()
}

async fn insert_subaction_result(
    client: &Client,
    tenant: Uuid,
    mitigation: Uuid,
) -> Result<Uuid, tokio_postgres::Error> {
    let sql = "INSERT INTO mitigation_subactions (tenant_id, mitigation_id, title) VALUES ($1, $2, 's') RETURNING id";
    Ok(client.query_one(sql, &[&tenant, &mitigation]).await?.get(0))
}

/// The writers' triggers take the park lock by its number, written into `cache_emit` and into
/// every generated capture function: each function that takes an advisory lock must name the key
/// the invalidator parks on, or writers would never wake a parked invalidator.
#[tokio::test]
async fn the_park_lock_key_of_the_sql_is_the_one_the_rust_side_names() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let park = openrisk_shared::advisory_locks::PARK;
    let key: i64 = client.query_one("SELECT cache_park_lock_key()", &[]).await.unwrap().get(0);
    assert_eq!(key, park);
    let takers = client
        .query(
            r"SELECT proname::text, (regexp_matches(prosrc, 'pg_[a-z_]*advisory[a-z_]*\(([^)]*)\)', 'g'))[1]
              FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    let takers: Vec<(String, String)> = takers.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert!(takers.iter().any(|(function, _)| function == "cache_emit"), "{takers:?}");
    assert!(takers.iter().any(|(function, _)| function.starts_with("cache_capture_")), "{takers:?}");
    for (function, argument) in &takers {
        assert_eq!(argument.trim(), park.to_string(), "{function} takes another advisory lock than the park's");
    }
}

#[test]
fn every_sql_file_is_a_migration_in_version_order() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let listed: Vec<String> = openrisk_migrations::MIGRATIONS
        .iter()
        .map(|migration| format!("{:04}_{}.sql", migration.version, migration.name))
        .collect();
    assert_eq!(listed, files, "MIGRATIONS lists every file of sql/, by version, under its own name");
    let versions: Vec<i64> = openrisk_migrations::MIGRATIONS.iter().map(|migration| migration.version).collect();
    assert!(versions.windows(2).all(|pair| pair[1] == pair[0] + 1), "versions follow each other: {versions:?}");
}

#[tokio::test]
async fn migrations_apply_twice_cleanly() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let applied = openrisk_migrations::migrate(&mut client).await.expect("second run succeeds");
    assert!(applied.is_empty(), "nothing left to apply: {applied:?}");
    let versions: i64 = client.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(versions as usize, openrisk_migrations::MIGRATIONS.len());
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    client.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", &[]).await.unwrap();
    let error = openrisk_migrations::migrate(&mut client).await.expect_err("must refuse");
    assert!(error.to_string().contains("write a new migration"), "{error}");
}

#[tokio::test]
async fn every_watched_table_and_change_emits_the_expected_tags() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let t = tenant(&client, "acme").await;
    let s = |text: &str| text.to_string();

    let mark = last_event_id(&client).await;
    let risk = insert_risk(&client, t, "r", 2, 3).await;
    let other_risk = insert_risk(&client, t, "o", 1, 1).await;
    let events = events_after(&client, mark).await;
    assert_eq!(events.len(), 4, "two risks and two history rows: {events:?}");
    assert_eq!(events[0], (s("risks"), s("INSERT"), t, tags(&[format!("risk:{risk}"), s("risks")])));
    assert_eq!(events[1], (s("risk_history"), s("INSERT"), t, vec![s("risk_history")]));

    // An UPDATE that changes nothing emits nothing; one that changes something emits the row's tags.
    let mark = last_event_id(&client).await;
    client.execute("UPDATE risks SET title = title WHERE id = $1", &[&risk]).await.unwrap();
    assert!(events_after(&client, mark).await.is_empty(), "no-op update must be silent");
    client.execute("UPDATE risks SET title = 'renamed' WHERE id = $1", &[&risk]).await.unwrap();
    assert_eq!(
        events_after(&client, mark).await,
        vec![(s("risks"), s("UPDATE"), t, tags(&[format!("risk:{risk}"), s("risks")]))]
    );

    // Soft delete is an UPDATE that also records history.
    let mark = last_event_id(&client).await;
    client.execute("UPDATE risks SET deleted_at = now() WHERE id = $1", &[&other_risk]).await.unwrap();
    let events = events_after(&client, mark).await;
    assert_eq!(events[0], (s("risks"), s("UPDATE"), t, tags(&[format!("risk:{other_risk}"), s("risks")])));
    assert_eq!(events[1].0, "risk_history");

    // Mitigations and sub-actions invalidate their risk; a move invalidates both parents.
    let mark = last_event_id(&client).await;
    let mitigation = insert_mitigation(&client, t, risk).await;
    let sub = insert_subaction(&client, t, mitigation).await;
    let events = events_after(&client, mark).await;
    assert_eq!(
        events,
        vec![
            (
                s("mitigations"),
                s("INSERT"),
                t,
                tags(&[format!("risk:{risk}"), format!("mitigation:{mitigation}"), s("mitigations")])
            ),
            (
                s("mitigation_subactions"),
                s("INSERT"),
                t,
                tags(&[format!("mitigation:{mitigation}"), format!("risk:{risk}")])
            ),
        ]
    );
    let mark = last_event_id(&client).await;
    client.execute("UPDATE mitigations SET risk_id = $1 WHERE id = $2", &[&other_risk, &mitigation]).await.unwrap();
    assert_eq!(
        events_after(&client, mark).await,
        vec![(
            s("mitigations"),
            s("UPDATE"),
            t,
            tags(&[
                format!("risk:{risk}"),
                format!("risk:{other_risk}"),
                format!("mitigation:{mitigation}"),
                s("mitigations")
            ])
        )]
    );
    let mark = last_event_id(&client).await;
    client.execute("UPDATE mitigation_subactions SET completed = true WHERE id = $1", &[&sub]).await.unwrap();
    assert_eq!(
        events_after(&client, mark).await,
        vec![(
            s("mitigation_subactions"),
            s("UPDATE"),
            t,
            tags(&[format!("mitigation:{mitigation}"), format!("risk:{other_risk}")])
        )]
    );

    // Linking an asset invalidates the risk and re-scores it (a second risks event).
    let mark = last_event_id(&client).await;
    let asset = insert_id(
        &client,
        "INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'db', 'server', 'CRITICAL') RETURNING id",
        &[&t],
    )
    .await;
    client
        .execute("INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ($1, $2, $3)", &[&t, &risk, &asset])
        .await
        .unwrap();
    let events = events_after(&client, mark).await;
    assert_eq!(events[0], (s("assets"), s("INSERT"), t, tags(&[format!("asset:{asset}"), s("assets")])));
    assert_eq!(
        events[1],
        (s("risk_assets"), s("INSERT"), t, tags(&[format!("risk:{risk}"), format!("asset:{asset}")]))
    );
    assert_eq!(events[2], (s("risks"), s("UPDATE"), t, tags(&[format!("risk:{risk}"), s("risks")])));
    let score: rust_decimal_free::Score = rust_decimal_free::score(&client, risk).await;
    assert_eq!(score.0, "9.00", "2 × 3 × 1.5 (one CRITICAL asset)");

    // Changing an asset's criticality re-scores every linked risk.
    let mark = last_event_id(&client).await;
    client.execute("UPDATE assets SET criticality = 'LOW' WHERE id = $1", &[&asset]).await.unwrap();
    let events = events_after(&client, mark).await;
    assert!(events.iter().any(|e| e.0 == "risks" && e.3.contains(&format!("risk:{risk}"))), "{events:?}");
    assert_eq!(rust_decimal_free::score(&client, risk).await.0, "4.80");

    // DELETE emits the OLD row's tags, including the cascade to children.
    let mark = last_event_id(&client).await;
    client.execute("DELETE FROM mitigations WHERE id = $1", &[&mitigation]).await.unwrap();
    let events = events_after(&client, mark).await;
    assert!(events.iter().any(|e| e.0 == "mitigations" && e.1 == "DELETE"), "{events:?}");
    assert!(events.iter().any(|e| e.0 == "mitigation_subactions" && e.1 == "DELETE"), "{events:?}");

    // TRUNCATE invalidates everything of every tenant that had rows.
    let other_tenant = tenant(&client, "globex").await;
    client
        .execute("INSERT INTO assets (tenant_id, name, asset_type) VALUES ($1, 'x', 'laptop')", &[&other_tenant])
        .await
        .unwrap();
    let mark = last_event_id(&client).await;
    client.batch_execute("TRUNCATE risk_assets, assets").await.unwrap();
    let mut truncated: Vec<(String, Uuid)> = events_after(&client, mark)
        .await
        .into_iter()
        .filter(|e| e.1 == "TRUNCATE")
        .inspect(|e| assert_eq!(e.3, vec![s("all")]))
        .map(|e| (e.0, e.2))
        .collect();
    truncated.sort();
    let mut expected = vec![(s("assets"), t), (s("assets"), other_tenant), (s("risk_assets"), t)];
    expected.sort();
    assert_eq!(truncated, expected);
}

#[tokio::test]
async fn a_row_moved_to_another_tenant_invalidates_both() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let (a, b) = (tenant(&client, "a").await, tenant(&client, "b").await);
    let asset = insert_id(
        &client,
        "INSERT INTO assets (tenant_id, name, asset_type) VALUES ($1, 'x', 'laptop') RETURNING id",
        &[&a],
    )
    .await;
    let mark = last_event_id(&client).await;
    client.execute("UPDATE assets SET tenant_id = $1 WHERE id = $2", &[&b, &asset]).await.unwrap();
    let events = events_after(&client, mark).await;
    let expected_tags = tags(&[format!("asset:{asset}"), "assets".into()]);
    assert_eq!(
        events,
        vec![
            ("assets".into(), "UPDATE".into(), a, expected_tags.clone()),
            ("assets".into(), "UPDATE".into(), b, expected_tags)
        ]
    );
}

#[tokio::test]
async fn a_new_table_is_watched_with_one_sql_call() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let t = tenant(&client, "acme").await;
    let risk = insert_risk(&client, t, "r", 1, 1).await;
    client
        .batch_execute(
            "CREATE TABLE risk_comments (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 tenant_id uuid NOT NULL, risk_id uuid NOT NULL, body text NOT NULL,
                 FOREIGN KEY (tenant_id, risk_id) REFERENCES risks (tenant_id, id));
             SELECT cache_watch('risk_comments', 'r.tenant_id', $$ARRAY['risk:' || r.risk_id, 'risk_comments']$$);",
        )
        .await
        .unwrap();
    let mark = last_event_id(&client).await;
    client
        .execute("INSERT INTO risk_comments (tenant_id, risk_id, body) VALUES ($1, $2, 'hi')", &[&t, &risk])
        .await
        .unwrap();
    assert_eq!(
        events_after(&client, mark).await,
        vec![("risk_comments".into(), "INSERT".into(), t, tags(&[format!("risk:{risk}"), "risk_comments".into()]))]
    );
    let watched: i64 = client
        .query_one("SELECT count(*) FROM cache_watches WHERE table_name = 'risk_comments'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 1);

    // A tags expression that does not fit the table is refused at cache_watch time.
    let error = client
        .batch_execute("SELECT cache_watch('risk_comments', 'r.tenant_id', $$ARRAY['x:' || r.no_such_column]$$)")
        .await
        .expect_err("bad expression");
    assert!(error.as_db_error().is_some_and(|e| e.message().contains("no_such_column")), "{error:?}");
    // Tags may come from a function of the whole row.
    let of_the_row = "CREATE FUNCTION comment_tags(c risk_comments) RETURNS text[] LANGUAGE sql
                          AS $$ SELECT ARRAY['risk:' || c.risk_id] $$;
                      SELECT cache_watch('risk_comments', 'r.tenant_id', 'comment_tags(r)');";
    client.batch_execute(of_the_row).await.unwrap();
    // One that gives a single text is refused: no write could read it as tags.
    let error = client
        .batch_execute("SELECT cache_watch('risk_comments', 'r.tenant_id', $$'risk:' || r.risk_id$$)")
        .await
        .expect_err("tags that are no array");
    assert!(error.as_db_error().is_some_and(|e| e.message().contains("gives text, not an array")), "{error:?}");

    // Unwatching removes the triggers.
    client.batch_execute("SELECT cache_unwatch('risk_comments')").await.unwrap();
    let mark = last_event_id(&client).await;
    client
        .execute("INSERT INTO risk_comments (tenant_id, risk_id, body) VALUES ($1, $2, 'quiet')", &[&t, &risk])
        .await
        .unwrap();
    assert!(events_after(&client, mark).await.is_empty());
}

/// A `cache_hold_parent` trigger naming a column its child table lacks refuses the write, rather
/// than holding no row.
#[tokio::test]
async fn a_parent_hold_naming_a_column_the_child_lacks_refuses_the_write() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let t = tenant(&client, "acme").await;
    let mitigation = insert_mitigation(&client, t, insert_risk(&client, t, "r", 1, 1).await).await;
    let misspelt = "CREATE TRIGGER misspelt BEFORE INSERT OR UPDATE OR DELETE ON mitigation_subactions
                    FOR EACH ROW EXECUTE FUNCTION cache_hold_parent('mitigations', 'mitigaton_id')";
    client.batch_execute(misspelt).await.unwrap();
    let error = insert_subaction_result(&client, t, mitigation).await.expect_err("a hold of no row");
    assert!(
        error.as_db_error().is_some_and(|e| e.message().contains("needs the columns tenant_id and mitigaton_id")),
        "{error:?}"
    );
}

/// The generator's edge cases: rows with no tenant, rows with no tags, bulk statements, and a
/// watched table that must be unwatched before it can be dropped.
#[tokio::test]
async fn watched_rows_without_tenant_or_tags_and_bulk_statements() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let t = tenant(&client, "acme").await;
    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid, topic text);
             SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['note:' || r.topic]$$);",
        )
        .await
        .unwrap();

    // A NULL tenant is refused with a message naming the table, for every kind of change.
    let no_tenant = |error: tokio_postgres::Error| {
        let message = error.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert!(message.contains("notes row maps to no tenant"), "{error:?}");
    };
    no_tenant(client.execute("INSERT INTO notes VALUES (1, NULL, 'a')", &[]).await.expect_err("insert"));
    client.execute("INSERT INTO notes VALUES (1, $1, 'a'), (2, $1, 'b')", &[&t]).await.unwrap();
    no_tenant(client.execute("UPDATE notes SET tenant_id = NULL WHERE id = 1", &[]).await.expect_err("update"));

    // A row whose tags are all NULL invalidates nothing, and says so by writing no event.
    let mark = last_event_id(&client).await;
    client.execute("INSERT INTO notes VALUES (3, $1, NULL)", &[&t]).await.unwrap();
    client.execute("UPDATE notes SET id = 4 WHERE id = 3", &[]).await.unwrap();
    assert!(events_after(&client, mark).await.is_empty());

    // One statement over many rows emits one event per changed row, old and new tags together.
    let mark = last_event_id(&client).await;
    client.execute("UPDATE notes SET topic = CASE id WHEN 1 THEN 'c' ELSE topic END", &[]).await.unwrap();
    let events = events_after(&client, mark).await;
    assert_eq!(events, vec![("notes".into(), "UPDATE".into(), t, tags(&["note:a".into(), "note:c".into()]))]);
    let mark = last_event_id(&client).await;
    client.execute("DELETE FROM notes", &[]).await.unwrap();
    let mut deleted: Vec<Vec<String>> = events_after(&client, mark).await.into_iter().map(|event| event.3).collect();
    deleted.sort();
    assert_eq!(deleted, vec![vec!["note:b".to_string()], vec!["note:c".to_string()]]);

    // The generated functions take the table's row type, so it cannot be dropped while watched.
    let error = client.batch_execute("DROP TABLE notes").await.expect_err("still watched");
    assert!(error.as_db_error().is_some_and(|e| e.message().contains("depend")), "{error:?}");
    client.batch_execute("SELECT cache_unwatch('notes'); DROP TABLE notes").await.unwrap();
    assert_eq!(functions_for(&client, "notes").await, 0, "cache_unwatch drops the generated functions");
}

/// Generated function names leave out the schema and are cut at 63 bytes; a second table that
/// would get the first one's trigger function is refused, and the first keeps its own events.
#[tokio::test]
async fn tables_whose_generated_names_would_collide_are_refused() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let t = tenant(&client, "acme").await;
    let long = "a_long_table_name_whose_trigger_function_name_is_cut";
    client
        .batch_execute(&format!(
            "CREATE SCHEMA audit;
             CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid NOT NULL, topic text);
             CREATE TABLE audit.notes (id int PRIMARY KEY, tenant_id uuid NOT NULL, who text);
             CREATE TABLE {long}_one (id int PRIMARY KEY, tenant_id uuid NOT NULL);
             CREATE TABLE {long}_two (id int PRIMARY KEY, tenant_id uuid NOT NULL);
             SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['note:' || r.topic]$$);
             SELECT cache_watch('{long}_one', 'r.tenant_id', $$ARRAY['one:' || r.id]$$);"
        ))
        .await
        .unwrap();
    // Watching a table again under a new mapping is not a collision.
    client.batch_execute("SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['note:' || r.topic]$$)").await.unwrap();

    for (table, holder) in [("audit.notes", "notes".to_string()), (&format!("{long}_two"), format!("{long}_one"))] {
        let error = client
            .batch_execute(&format!("SELECT cache_watch('{table}', 'r.tenant_id', $$ARRAY['x']$$)"))
            .await
            .expect_err("colliding names");
        let error = error.as_db_error().expect("a database error");
        assert_eq!(error.code(), &tokio_postgres::error::SqlState::DUPLICATE_FUNCTION);
        assert!(error.message().contains(&format!("with the watched table {holder}")), "{error:?}");
    }

    let mark = last_event_id(&client).await;
    client
        .batch_execute(&format!(
            "INSERT INTO notes VALUES (1, '{t}', 'kept');
             INSERT INTO audit.notes VALUES (1, '{t}', 'unwatched');
             INSERT INTO {long}_one VALUES (7, '{t}');
             INSERT INTO {long}_two VALUES (8, '{t}');"
        ))
        .await
        .unwrap();
    assert_eq!(
        events_after(&client, mark).await,
        vec![
            ("notes".into(), "INSERT".into(), t, tags(&["note:kept".into()])),
            (format!("{long}_one"), "INSERT".into(), t, tags(&["one:7".into()])),
        ]
    );
}

#[tokio::test]
async fn constraint_violations_are_rejected() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let (a, b) = (tenant(&client, "a").await, tenant(&client, "b").await);
    let risk_of_a = insert_risk(&client, a, "r", 1, 1).await;
    let rejected = [
        ("impact out of range", "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'r', 6, 1)"),
        ("empty title", "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, '', 1, 1)"),
        (
            "unknown status",
            "INSERT INTO risks (tenant_id, title, impact, probability, status) VALUES ($1, 'r', 1, 1, 'OPEN')",
        ),
        (
            "non-object custom fields",
            "INSERT INTO risks (tenant_id, title, impact, probability, custom_fields) VALUES ($1, 'r', 1, 1, '[1]')",
        ),
        (
            "unknown criticality",
            "INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'a', 't', 'EXTREME')",
        ),
    ];
    for (what, sql) in rejected {
        assert!(client.execute(sql, &[&a]).await.is_err(), "{what} must be rejected");
    }
    let cross_tenant = client
        .execute("INSERT INTO mitigations (tenant_id, risk_id, title) VALUES ($1, $2, 'm')", &[&b, &risk_of_a])
        .await;
    assert!(cross_tenant.is_err(), "a mitigation cannot point at another tenant's risk");
    let progress = client
        .execute(
            "INSERT INTO mitigations (tenant_id, risk_id, title, progress) VALUES ($1, $2, 'm', 101)",
            &[&a, &risk_of_a],
        )
        .await;
    assert!(progress.is_err(), "progress above 100");
    let count: i64 = client.query_one("SELECT count(*) FROM mitigations", &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "nothing partial was written");
}

#[tokio::test]
async fn times_the_api_could_not_print_with_a_four_digit_year_are_refused_and_the_edges_kept() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let rows = one_row_of_each_table_with_served_times(&client).await;
    let set = async |table: &str, assignment: &str, id: Uuid| {
        client.execute(&format!("UPDATE {table} SET {assignment} WHERE id = $1"), &[&id]).await
    };
    for &(table, id) in &rows {
        for column in ["created_at", "updated_at"] {
            for kept in ["0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"] {
                let written = set(table, &format!("{column} = '{kept}'"), id).await;
                assert_eq!(written.map_err(|e| e.to_string()), Ok(1), "{table}.{column} = {kept}");
            }
            for refused in
                ["10000-01-01 00:00:00+00", "9999-12-31 23:00:00-05", "0001-12-31 23:59:59+00 BC", "infinity"]
            {
                let error = set(table, &format!("{column} = '{refused}'"), id)
                    .await
                    .expect_err(&format!("{table}.{column} = {refused} must be refused"));
                let constraint = error.as_db_error().and_then(|e| e.constraint()).unwrap_or_default().to_owned();
                assert_eq!(constraint, format!("{table}_times_have_four_digit_years"), "{table}.{column} = {refused}");
            }
        }
    }
    let mitigation = rows[1].1;
    for kept in ["0001-01-01", "9999-12-31"] {
        assert_eq!(set("mitigations", &format!("due_date = '{kept}'"), mitigation).await.unwrap(), 1);
    }
    for refused in ["10000-01-01", "0001-12-31 BC", "infinity"] {
        let written = set("mitigations", &format!("due_date = '{refused}'"), mitigation).await;
        assert!(written.is_err(), "mitigations.due_date = {refused} must be refused");
    }
}

/// A new tenant with one row in each table whose times the API serves: `(table, id)`, in the
/// order risks, mitigations, sub-actions, assets.
async fn one_row_of_each_table_with_served_times(client: &Client) -> [(&'static str, Uuid); 4] {
    let tenant = tenant(client, "a").await;
    let risk = insert_risk(client, tenant, "r", 1, 1).await;
    let mitigation = insert_mitigation(client, tenant, risk).await;
    let subaction = insert_subaction(client, tenant, mitigation).await;
    let sql = "INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'a', 't', 'LOW') RETURNING id";
    let asset = insert_id(client, sql, &[&tenant]).await;
    [("risks", risk), ("mitigations", mitigation), ("mitigation_subactions", subaction), ("assets", asset)]
}

/// Reads a score as text, so the test needs no decimal type.
mod rust_decimal_free {
    use tokio_postgres::Client;
    use uuid::Uuid;

    pub struct Score(pub String);

    pub async fn score(client: &Client, risk: Uuid) -> Score {
        Score(client.query_one("SELECT score::text FROM risks WHERE id = $1", &[&risk]).await.unwrap().get(0))
    }
}
