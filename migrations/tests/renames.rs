//! Watched tables that are renamed: their events stay known to the invalidator, and cache_watch
//! and cache_unwatch find their functions whatever names they were made under (migration 12).

mod common;

use common::{functions_for, tags, tenant};
use openrisk_test_support::TestDatabase;
use tokio_postgres::Client;

/// An outbox row as the invalidator's claim reads it: table, operation, sorted tags, and whether
/// the claim knows the table.
type Claimed = (String, String, Vec<String>, bool);

/// Runs `sql`, then tells what the invalidator's claim makes of the outbox, oldest row first
/// (claimed in a transaction rolled back).
async fn claimed_after(client: &mut Client, sql: &str) -> Vec<Claimed> {
    client.batch_execute(sql).await.unwrap();
    let transaction = client.transaction().await.unwrap();
    let held_back: [uuid::Uuid; 0] = [];
    let rows = transaction.query(openrisk_shared::outbox::CLAIM, &[&1000_i64, &held_back.as_slice()]).await.unwrap();
    rows.iter()
        .map(|row| (row.get("table_name"), row.get("op"), tags(&row.get::<_, Vec<String>>("tags")), row.get("watched")))
        .collect()
}

/// An event of `table` with the one tag `tag`, known to the claim.
fn known(table: &str, op: &str, tag: &str) -> Claimed {
    (table.into(), op.into(), vec![tag.into()], true)
}

/// A watched table keeps its events when renamed (the invalidator would dead-letter events of a
/// table it does not know, and invalidate their tenant's whole cache instead), and its TRUNCATE
/// reads the renamed table; a new table may be watched under the old name, the renamed one still
/// writing its own events; watching the renamed one again moves it to its new name, and events
/// written under a name it has left stay known; unwatching leaves no function behind.
#[tokio::test]
async fn a_renamed_watched_table_keeps_its_invalidation_and_is_rewatched_and_unwatched_under_its_new_name() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let t = tenant(&client, "acme").await;
    let steps = [
        (
            "the renamed table's events are known, and its TRUNCATE reads its own rows",
            format!(
                "CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid NOT NULL, topic text);
                 SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['note:' || r.topic]$$);
                 ALTER TABLE notes RENAME TO memos;
                 DELETE FROM cache_outbox;
                 INSERT INTO memos VALUES (1, '{t}', 'a');
                 CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid NOT NULL, topic text);
                 INSERT INTO notes VALUES (1, '{t}', 'unwatched');
                 TRUNCATE memos;"
            ),
            vec![known("notes", "INSERT", "note:a"), known("notes", "TRUNCATE", "all")],
        ),
        (
            "a new table watched under the old name leaves the renamed one its own tags",
            format!(
                "SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['new:' || r.topic]$$);
                 DELETE FROM cache_outbox;
                 INSERT INTO memos VALUES (2, '{t}', 'b');
                 INSERT INTO notes VALUES (2, '{t}', 'c');"
            ),
            vec![known("notes", "INSERT", "note:b"), known("notes", "INSERT", "new:c")],
        ),
        (
            "watched again, the renamed table writes under its new name",
            format!(
                "SELECT cache_watch('memos', 'r.tenant_id', $$ARRAY['memo:' || r.topic]$$);
                 DELETE FROM cache_outbox;
                 INSERT INTO memos VALUES (3, '{t}', 'd');"
            ),
            vec![known("memos", "INSERT", "memo:d")],
        ),
        (
            "an event written under a name the table has since left stays known when it is watched again",
            format!(
                "DELETE FROM cache_outbox;
                 ALTER TABLE memos RENAME TO jots;
                 INSERT INTO jots VALUES (5, '{t}', 'e');
                 SELECT cache_watch('jots', 'r.tenant_id', $$ARRAY['jot:' || r.topic]$$);"
            ),
            vec![known("memos", "INSERT", "memo:e")],
        ),
    ];
    for (what, sql, expected) in steps {
        assert_eq!(claimed_after(&mut client, &sql).await, expected, "{what}");
    }

    client.batch_execute("SELECT cache_unwatch('jots'), cache_unwatch('notes'); DROP TABLE jots, notes").await.unwrap();
    for table in ["jots", "memos", "notes"] {
        assert_eq!(functions_for(&client, table).await, 0, "cache_unwatch drops the generated functions of {table}");
    }
    assert_eq!(moved_functions(&client).await, 0, "cache_unwatch drops a function it moved aside");
}

/// How many trigger functions cache_watch moved aside from a name another table needed.
async fn moved_functions(client: &Client) -> i64 {
    client.query_one("SELECT count(*) FROM pg_proc WHERE proname ~ '^cache_moved_[0-9]+$'", &[]).await.unwrap().get(0)
}

/// Before migration 12, a table watched under a renamed table's old name took over its trigger
/// function, tables could swap names, a rename could give two watched tables one function name, a
/// watched table could be dropped with CASCADE, and re-watching a renamed table left its old
/// trigger function behind. The migration's regeneration goes through all of these, after which
/// each table writes its own events under its own name and nothing is left over.
#[tokio::test]
async fn watched_tables_renamed_before_migration_12_are_regenerated_whatever_their_names_became() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let t = tenant(&client, "acme").await;
    // What cache_watch did before migration 12 (its generator, without the new bookkeeping).
    let old_watch =
        |table: &str| format!("SELECT cache_watch_generate('{table}', 'r.tenant_id', $$ARRAY['{table}:' || r.id]$$);");
    let table = |name: &str| format!("CREATE TABLE {name} (id int PRIMARY KEY, tenant_id uuid NOT NULL);");
    let before = [
        table("notes"),
        old_watch("notes"),
        "ALTER TABLE notes RENAME TO memos;".into(),
        table("notes"),
        old_watch("notes"),
        table("p"),
        table("q"),
        old_watch("p"),
        old_watch("q"),
        "ALTER TABLE p RENAME TO swapping; ALTER TABLE q RENAME TO p; ALTER TABLE swapping RENAME TO q;".into(),
        table("jot"),
        old_watch("jot"),
        "CREATE SCHEMA audit;".into(),
        table("audit.x"),
        old_watch("audit.x"),
        "ALTER TABLE audit.x RENAME TO jot;".into(),
        table("gone"),
        old_watch("gone"),
        "DROP TABLE gone CASCADE;".into(),
        table("a1"),
        old_watch("a1"),
        "ALTER TABLE a1 RENAME TO b1;".into(),
        old_watch("b1"),
    ]
    .concat();
    client.batch_execute(&before).await.unwrap();
    let shared: i64 = client
        .query_one("SELECT count(DISTINCT tgfoid) FROM pg_trigger WHERE tgname = 'cache_capture' AND tgrelid IN ('memos'::regclass, 'notes'::regclass)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shared, 1, "memos and notes share one trigger function, as they came to before migration 12");

    let migration_12 = openrisk_migrations::MIGRATIONS.iter().find(|migration| migration.version == 12).unwrap();
    // The migration's statements after its function definitions.
    let regeneration = &migration_12.sql[migration_12.sql.find("DELETE FROM cache_watches w").unwrap()..];
    let written = format!(
        "{regeneration}
         DELETE FROM cache_outbox;
         INSERT INTO memos VALUES (1, '{t}'); INSERT INTO notes VALUES (2, '{t}');
         INSERT INTO p VALUES (3, '{t}'); INSERT INTO q VALUES (4, '{t}');
         INSERT INTO jot VALUES (5, '{t}'); INSERT INTO audit.jot VALUES (6, '{t}');
         INSERT INTO b1 VALUES (7, '{t}');"
    );
    assert_eq!(
        claimed_after(&mut client, &written).await,
        vec![
            known("memos", "INSERT", "notes:1"),
            known("notes", "INSERT", "notes:2"),
            known("p", "INSERT", "q:3"),
            known("q", "INSERT", "p:4"),
            known("jot", "INSERT", "jot:5"),
            known("audit.jot", "INSERT", "audit.x:6"),
            known("b1", "INSERT", "b1:7"),
        ]
    );
    let left_over: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM cache_watches w WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = w.table_name))
                  + (SELECT count(*) FROM pg_proc WHERE proname = 'cache_capture_a1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left_over, 0, "neither the dropped table's watch nor a1's old trigger function is left");
}
