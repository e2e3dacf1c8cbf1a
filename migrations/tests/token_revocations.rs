//! Every change of what a verification reads (a revocation, another role, tenant or hash), a
//! deletion and a `TRUNCATE` of tokens are announced when they commit, each with the token's
//! SHA-256 in hex (empty for every token), and nothing else is (migrations 14 and 15).

mod common;

use common::tenant;
use openrisk_test_support::TestDatabase;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A session listening on the migrations' channel, and the payloads it hears.
async fn listener(db: &TestDatabase) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    let (heard, payloads) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                let _ = heard.send(notification.payload().to_owned());
            }
        }
    });
    let channel: String = client.query_one("SELECT api_token_channel()", &[]).await.unwrap().get(0);
    client.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
    (client, payloads)
}

/// Runs each of `statements` on `client`, then returns every payload heard up to a last marker.
async fn announced(client: &Client, payloads: &mut mpsc::UnboundedReceiver<String>, statements: &str) -> Vec<String> {
    client.batch_execute(statements).await.unwrap();
    client.batch_execute("SELECT pg_notify(api_token_channel(), 'end')").await.unwrap();
    let mut heard = Vec::new();
    while let Some(payload) = payloads.recv().await {
        if payload == "end" {
            return heard;
        }
        heard.push(payload);
    }
    panic!("the listening session ended");
}

#[tokio::test]
async fn every_change_a_verification_reads_a_deletion_and_a_truncate_of_tokens_are_announced_once_they_commit() {
    let db = TestDatabase::create().await;
    let sql = db.connect().await;
    let (a, b, c) = (tenant(&sql, "acme").await, tenant(&sql, "bolt").await, tenant(&sql, "coil").await);
    let hash = |byte: u8| format!("{byte:02x}").repeat(32);
    sql.batch_execute(&format!(
        "INSERT INTO api_tokens (tenant_id, token_hash, role) VALUES
             ('{a}', '\\x{}', 'viewer'), ('{a}', '\\x{}', 'viewer'), ('{a}', '\\x{}', 'admin'), ('{b}', '\\x{}', 'viewer')",
        hash(1),
        hash(2),
        hash(3),
        hash(4)
    ))
    .await
    .unwrap();
    let (listening, mut payloads) = listener(&db).await;

    let quiet = "UPDATE api_tokens SET last_used_at = now();
                 BEGIN; UPDATE api_tokens SET revoked_at = now(); ROLLBACK;";
    assert_eq!(announced(&sql, &mut payloads, quiet).await, Vec::<String>::new());
    let revoked = format!("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = '\\x{}'", hash(1));
    assert_eq!(announced(&sql, &mut payloads, &revoked).await, [hash(1)]);
    assert_eq!(announced(&sql, &mut payloads, &revoked).await, Vec::<String>::new(), "revoked once only");
    let deleted =
        format!("DELETE FROM api_tokens WHERE token_hash = '\\x{}'; DELETE FROM tenants WHERE id = '{b}'", hash(2));
    assert_eq!(announced(&sql, &mut payloads, &deleted).await, [hash(2), hash(4)]);
    let elsewhere = format!(
        "SET search_path = pg_catalog; UPDATE public.api_tokens SET revoked_at = now() WHERE token_hash = '\\x{}';
         RESET search_path",
        hash(3)
    );
    assert_eq!(announced(&sql, &mut payloads, &elsewhere).await, [hash(3)], "whatever the search_path");
    let demoted = format!("UPDATE api_tokens SET role = 'viewer' WHERE token_hash = '\\x{}'", hash(3));
    assert_eq!(announced(&sql, &mut payloads, &demoted).await, [hash(3)], "another role");
    let moved = format!("UPDATE api_tokens SET tenant_id = '{c}' WHERE token_hash = '\\x{}'", hash(3));
    assert_eq!(announced(&sql, &mut payloads, &moved).await, [hash(3)], "another tenant");
    let reissued = format!("UPDATE api_tokens SET token_hash = '\\x{}' WHERE token_hash = '\\x{}'", hash(5), hash(3));
    assert_eq!(announced(&sql, &mut payloads, &reissued).await, [hash(3), hash(5)], "another hash: both");
    let restored = format!("UPDATE api_tokens SET revoked_at = NULL WHERE token_hash = '\\x{}'", hash(5));
    assert_eq!(announced(&sql, &mut payloads, &restored).await, [hash(5)], "valid again");
    let unchanged = format!("UPDATE api_tokens SET name = 'renamed', role = role WHERE token_hash = '\\x{}'", hash(5));
    assert_eq!(announced(&sql, &mut payloads, &unchanged).await, Vec::<String>::new(), "nothing verified changed");
    assert_eq!(announced(&sql, &mut payloads, "TRUNCATE api_tokens").await, [""]);
    drop(listening);
}
