//! Test databases left behind by runs that were killed are dropped by a later run.

use openrisk_test_support::{TestDatabase, admin_database_url, drop_abandoned_databases};
use uuid::Uuid;

#[tokio::test]
async fn databases_of_processes_that_are_gone_are_dropped_and_those_of_running_ones_kept() {
    let admin = openrisk_shared::db::connect(&admin_database_url(), "openrisk-tests", &Default::default())
        .await
        .expect("connect to postgres");
    let ours = TestDatabase::create().await;
    // `<prefix><pid>_<random>`, and the random part holds no `_`.
    let (before_random, _) = ours.name.rsplit_once('_').unwrap();
    let (prefix_without_underscore, pid) = before_random.rsplit_once('_').unwrap();
    assert_eq!(pid, std::process::id().to_string());
    let prefix = format!("{prefix_without_underscore}_");
    let mut exited = std::process::Command::new("true").spawn().expect("start true");
    exited.wait().expect("wait for true");
    let named = |pid: u32| format!("{prefix}{pid}_{}", &Uuid::new_v4().simple().to_string()[..16]);
    let (abandoned, of_init) = (named(exited.id()), named(1));
    for name in [&abandoned, &of_init] {
        admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).await.expect("create");
    }

    drop_abandoned_databases(&admin).await;

    let exists = async |name: &str| {
        admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap().is_some()
    };
    let left = (exists(&abandoned).await, exists(&of_init).await, exists(&ours.name).await);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {of_init}")).await.expect("drop");
    assert_eq!(left, (false, true, true), "(abandoned, of a running process, this test's own)");
}
