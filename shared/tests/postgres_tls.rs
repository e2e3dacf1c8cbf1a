//! The direct connections' TLS against a private server that refuses every session without it:
//! libpq's `sslmode` values, `sslrootcert` (read at every connection), and what each lets through.

use openrisk_shared::db::{self, ConnectError};
use openrisk_test_support::{PrivatePostgres, sslrootcert_param};

/// The server's URL through `host`, with `query`.
fn url(server: &PrivatePostgres, host: &str, query: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{query}", server.port)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, ConnectError> {
    db::connect(url, "openrisk-tls-test", &Default::default()).await
}

/// Whether `url` connects, in a session the server sees encrypted; the error otherwise.
async fn encrypted_session(url: &str) -> Result<(), String> {
    let client = connect(url).await.map_err(|error| error.to_string())?;
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "{url}: connected without encryption");
    Ok(())
}

#[tokio::test]
async fn a_server_that_refuses_plain_sessions_is_reached_with_the_default_sslmode_and_the_session_is_encrypted() {
    let server = PrivatePostgres::start_tls_only();
    let refused = encrypted_session(&url(&server, "127.0.0.1", "sslmode=disable")).await.unwrap_err();
    assert!(refused.contains("no encryption"), "{refused}");
    for query in ["", "sslmode=prefer", "sslmode=require"] {
        // Nothing names a root: encryption without checking the certificate, as libpq does.
        encrypted_session(&url(&server, "localhost", query)).await.unwrap_or_else(|error| panic!("{query:?}: {error}"));
    }
}

#[tokio::test]
async fn the_verify_modes_and_a_root_file_accept_the_server_only_as_libpq_would() {
    let server = PrivatePostgres::start_tls_only();
    let own_ca = sslrootcert_param(&server.ca_certificate());
    let other_ca = sslrootcert_param(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"));
    // (host, query, whether it connects): the certificate names 127.0.0.1 and db.test only.
    let cases = [
        ("127.0.0.1", format!("sslmode=verify-full&{own_ca}"), true),
        ("localhost", format!("sslmode=verify-full&{own_ca}"), false),
        ("localhost", format!("sslmode=verify-ca&{own_ca}"), true),
        ("127.0.0.1", "sslmode=verify-full".to_owned(), false),
        ("127.0.0.1", "sslmode=verify-ca".to_owned(), false),
        ("localhost", format!("sslmode=require&{own_ca}"), true),
        ("127.0.0.1", format!("sslmode=require&{other_ca}"), false),
    ];
    for (host, query, connects) in cases {
        let outcome = encrypted_session(&url(&server, host, &query)).await;
        match outcome {
            Ok(()) => assert!(connects, "{host} {query}: connected"),
            Err(error) => {
                assert!(!connects, "{host} {query}: {error}");
                assert!(error.contains("certificate"), "{host} {query}: the error names the certificate: {error}");
            }
        }
    }
    // libpq reads the root file at every connection: a replaced file counts from the next one.
    let rotated = tempfile::NamedTempFile::new().unwrap();
    let rotated_url = url(&server, "127.0.0.1", &format!("sslmode=verify-full&{}", sslrootcert_param(rotated.path())));
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", rotated.path()).unwrap();
    encrypted_session(&rotated_url).await.expect_err("the root file does not hold the server's CA yet");
    std::fs::copy(server.ca_certificate(), rotated.path()).unwrap();
    encrypted_session(&rotated_url).await.expect("the replaced root file is read at the next connection");
}
