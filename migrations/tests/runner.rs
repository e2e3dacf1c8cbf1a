//! The runner beside a live system: a migration never queues the table's queries behind a long
//! transaction, a migration removed from the code after it was applied is refused, a newer one
//! is left alone, and a failure names its cause.

use std::time::Duration;

use openrisk_migrations::{MIGRATIONS, Migration, migrate, migrate_these};
use openrisk_test_support::TestDatabase;

/// This binary's migrations followed by `extra` (versions far above the real ones).
fn with(extra: &[Migration]) -> Vec<Migration> {
    [MIGRATIONS, extra].concat()
}

const CREATE: Migration = Migration { version: 1000, name: "create", sql: "CREATE TABLE runner_t (x int)" };

#[tokio::test]
async fn a_migration_waiting_behind_a_long_transaction_lets_the_tables_queries_through_and_runs_again() {
    let db = TestDatabase::create().await;
    let mut runner = db.connect().await;
    migrate_these(&mut runner, &with(&[CREATE])).await.expect("the table is created");
    let reader = db.connect().await;
    reader.batch_execute("BEGIN; SELECT * FROM runner_t").await.unwrap();

    let alter = Migration { version: 1001, name: "alter", sql: "ALTER TABLE runner_t ADD COLUMN y int" };
    let migrating = tokio::spawn(async move { migrate_these(&mut runner, &with(&[CREATE, alter])).await });
    let watcher = db.connect().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                   AND query LIKE 'ALTER TABLE runner_t%' AND datname = current_database()";
    for attempt in 0.. {
        if watcher.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) > 0 {
            break;
        }
        assert!(attempt < 1500, "the migration was never seen waiting for the reader's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Behind a waiting ALTER, this would wait for the reader's transaction to end.
    let other = db.connect().await;
    let read = tokio::time::timeout(Duration::from_secs(20), other.query_one("SELECT count(*) FROM runner_t", &[]));
    let read = read.await;
    reader.batch_execute("COMMIT").await.unwrap();

    assert!(read.is_ok(), "a query of the table waited behind the migration until the transaction ended");
    let applied = migrating.await.unwrap().expect("the migration ran again and went through");
    assert_eq!(applied, [1001]);
}

#[tokio::test]
async fn a_migration_applied_then_removed_from_the_code_is_refused_and_a_newer_one_left_alone() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    migrate_these(&mut client, &with(&[CREATE])).await.expect("1000 is applied");

    let replaced = Migration { version: 1001, name: "other", sql: "SELECT 1" };
    let error = migrate_these(&mut client, &with(&[replaced])).await.expect_err("1000 is not known any more");
    assert!(error.to_string().contains("[1000]"), "{error}");

    let applied = migrate(&mut client).await.expect("a newer database is left as it is");
    assert!(applied.is_empty(), "{applied:?}");
}

#[tokio::test]
async fn a_failed_migration_is_named_with_the_databases_own_words_and_leaves_nothing() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let broken =
        Migration { version: 1000, name: "broken", sql: "CREATE TABLE runner_u (x int); SELECT * FROM nowhere" };
    let error = migrate_these(&mut client, &with(&[broken])).await.expect_err("the migration fails");
    let message = error.to_string();
    assert!(message.contains("1000 (broken)") && message.contains("\"nowhere\" does not exist"), "{message}");
    let left: i64 =
        client.query_one("SELECT count(*) FROM pg_tables WHERE tablename = 'runner_u'", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "the failed migration's first statement was rolled back");
    let unlocked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&openrisk_shared::advisory_locks::MIGRATION])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked, "the migration lock was released");
}

#[test]
fn a_migration_checked_out_with_windows_line_endings_has_the_checksum_it_was_applied_with() {
    let unix = Migration { version: 1, name: "x", sql: "SELECT 1;\nSELECT 2;\n" };
    let windows = Migration { sql: "SELECT 1;\r\nSELECT 2;\r\n", ..unix };
    assert_eq!(unix.checksum(), windows.checksum());
}
