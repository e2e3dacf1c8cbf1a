//! What a client can do with its connections: how long a slow or idle one is kept, how many are
//! served at once, HTTP/2, and what a shutdown does to the requests in flight.

mod common;

use std::time::Duration;

use common::{TestApp, assert_problem, cache_status, spawn_app, spawn_app_with};
use openrisk_api::AppOptions;
use openrisk_test_support::RedisNamespace;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An app whose connections idle out after 300 ms and whose requests time out after 200 ms.
async fn spawn_app_with_short_http_timeouts() -> TestApp {
    let short = |settings: &mut openrisk_shared::Settings| {
        settings.http.idle_timeout_ms = 300;
        settings.http.request_timeout_ms = 200;
    };
    spawn_app_with(RedisNamespace::new(), short, AppOptions::default()).await
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_or_sits_idle_is_closed() {
    let app = spawn_app_with_short_http_timeouts().await;
    let mut stalled = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    for (name, connection) in [("stalled headers", &mut stalled), ("idle keep-alive", &mut idle)] {
        let mut received = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), connection.read_to_end(&mut received)).await;
        assert!(closed.is_ok(), "the {name} connection is still open");
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_idle_timeout() {
    let app = spawn_app_with_short_http_timeouts().await;
    let mut trickling = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ").await.unwrap();
    // A byte every 50 ms: never idle for 300 ms, but the headers never end. Without a deadline
    // for the headers as a whole this goes on for the test's 10 s.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if trickling.write_all(b"a").await.is_err() {
                return;
            }
            let mut byte = [0u8; 1];
            if let Ok(read) = tokio::time::timeout(Duration::ZERO, trickling.read(&mut byte)).await {
                assert!(!matches!(read, Ok(1..)), "the server answered headers that never ended");
                return;
            }
        }
    };
    let cut_off = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    assert!(cut_off.is_ok(), "a client trickling its headers kept its connection for 10 s");
}

#[tokio::test]
async fn a_client_trickling_its_body_is_answered_408_at_the_request_timeout_and_its_connection_closed() {
    let app = spawn_app_with_short_http_timeouts().await;
    // Its token verified once already, so the 200 ms go to the body alone.
    assert_eq!(app.get("/api/v1/risks", &app.a.analyst).await.status(), StatusCode::OK);
    let mut trickling = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/risks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.a.analyst
    );
    trickling.write_all(head.as_bytes()).await.unwrap();
    // A byte of the promised 1,000 every 50 ms: never idle, never done.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut answer = vec![0u8; 1024];
            if let Ok(read) = tokio::time::timeout(Duration::ZERO, trickling.read(&mut answer)).await {
                answer.truncate(read.unwrap_or(0));
                // The whole answer, up to the server closing the connection.
                let rest = tokio::time::timeout(Duration::from_secs(5), trickling.read_to_end(&mut answer)).await;
                assert!(rest.is_ok(), "the connection stayed open after the answer");
                return answer;
            }
            if trickling.write_all(b" ").await.is_err() {
                return Vec::new();
            }
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    let answer = answer.expect("a client trickling its body kept its request open for 10 s");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "the client, not the server, was too slow: {answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "the rest of the body is not read as a request: {answer}");
}

/// The server reads no body for a client without a valid token: such a request is answered 401
/// at once, however much of its body is still to come, so it holds no buffer while it waits.
#[tokio::test]
async fn a_body_sent_without_a_valid_token_is_answered_401_without_waiting_for_it() {
    let app = spawn_app().await;
    let unknown = format!("Authorization: Bearer ort_{}\r\n", "0".repeat(64));
    for authorization in ["", unknown.as_str()] {
        let mut client = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/risks HTTP/1.1\r\nHost: x\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{\"title\": "
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(3), client.read(&mut answer)).await;
        let read = read.expect("no answer within 3 s: the server waited for the body").unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 401"), "{authorization:?}: {answer}");
    }
}

/// Request headers larger than an HTTP/1 connection's buffer are refused with 431 rather than
/// buffered (hyper's default buffer is 400 KiB a connection).
#[tokio::test]
async fn http1_request_headers_over_the_limit_are_refused_431() {
    let app = spawn_app().await;
    let mut client = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let padding = format!("X-Padding: {}\r\n", "p".repeat(1000)).repeat(40);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{padding}\r\n");
    let _ = client.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
}

/// A statement still running when its request times out is stopped by the server at the same
/// deadline (`statement_timeout`): the request's answer is gone, and the statement must not go on
/// holding a backend, a pooled connection and its place in a lock queue.
#[tokio::test]
async fn a_statement_outliving_its_request_is_stopped_by_the_server_at_the_request_timeout() {
    let app = spawn_app_timing_out_after(1000).await;
    let risk_path = app.create_risk_path(&app.a.analyst, "Held").await;
    let holder = app.db.connect().await;
    common::hold_risk(&holder, &risk_path).await;

    let change = serde_json::json!({"title": "Waits"});
    let request = app.send_json(reqwest::Method::PATCH, &risk_path, &app.a.analyst, change);
    let (response, ()) = tokio::join!(request, common::until_the_api_waits_for_a_lock(&holder));
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "the request timed out waiting for the lock");
    let mut waiting: i64 = 1;
    for _ in 0..50 {
        waiting = common::api_sessions_waiting_for_a_lock(&holder).await;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting, 0, "the API's statement still waits for the lock 5 s after its request ended");
}

/// An app whose requests time out after `request_timeout_ms` (connections idle out later).
async fn spawn_app_timing_out_after(request_timeout_ms: u64) -> TestApp {
    let timeouts = move |settings: &mut openrisk_shared::Settings| {
        (settings.http.request_timeout_ms, settings.http.idle_timeout_ms) =
            (request_timeout_ms, request_timeout_ms * 4);
    };
    spawn_app_with(RedisNamespace::new(), timeouts, AppOptions::default()).await
}

/// The body of a risk [`slow_to_commit`] makes slow.
fn slow_risk() -> serde_json::Value {
    serde_json::json!({"title": "Slow to commit", "impact": 2, "probability": 2})
}

/// Creates a risk [`slow_to_commit`] makes slow, as the analyst of tenant A.
async fn post_slow_risk(app: &TestApp) -> reqwest::Response {
    app.send_json(reqwest::Method::POST, "/api/v1/risks", &app.a.analyst, slow_risk()).await
}

/// Makes a risk titled "Slow to commit" slow twice over in the test's database: its INSERT
/// sleeps `before_commit` seconds, and a deferred constraint trigger sleeps `at_commit` seconds
/// inside the COMMIT itself.
async fn slow_to_commit(app: &TestApp, before_commit: f64, at_commit: f64) {
    let session = app.db.connect().await;
    let sql = format!(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.title = 'Slow to commit' THEN PERFORM pg_sleep({before_commit}); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_insert BEFORE INSERT ON risks FOR EACH ROW EXECUTE FUNCTION slow_insert();
         CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.title = 'Slow to commit' THEN PERFORM pg_sleep({at_commit}); END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON risks DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION slow_commit();"
    );
    session.batch_execute(&sql).await.unwrap();
}

async fn risks_titled_slow_to_commit(db: &openrisk_test_support::TestDatabase) -> i64 {
    let session = db.connect().await;
    session.query_one("SELECT count(*) FROM risks WHERE title = 'Slow to commit'", &[]).await.unwrap().get(0)
}

/// The deadline (2 s) passes while the write's COMMIT runs (from 1.2 s to 2.7 s). Cut short with
/// 503 "retry", the client would send again a write that was made: the answer waits for the
/// commit instead, and says what it did.
#[tokio::test]
async fn a_write_still_committing_at_the_request_deadline_is_answered_with_its_outcome_not_503() {
    let app = spawn_app_timing_out_after(2000).await;
    slow_to_commit(&app, 1.2, 1.5).await;

    let response = post_slow_risk(&app).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
    assert_eq!(risks_titled_slow_to_commit(&app.db).await, 1);
}

/// The risk list, read twice so that the second is a hit: what a write's invalidation must end.
async fn cached_risk_list(app: &TestApp) {
    app.get("/api/v1/risks", &app.a.viewer).await;
    let again = app.get("/api/v1/risks", &app.a.viewer).await;
    assert!(cache_status(&again).is_hit(), "the list was not cached");
}

/// A COMMIT whose session ends before it answers may or may not have been applied: the client
/// gets a 500 that says so, not a 503 that invites it to send the write again, and what the
/// write may have changed is invalidated all the same, so the read it is told to make first
/// does not show it the state from before a write that was made.
#[tokio::test]
async fn a_write_whose_commit_loses_its_connection_is_not_answered_retry_and_is_invalidated() {
    let app = spawn_app().await;
    slow_to_commit(&app, 0.0, 30.0).await;
    cached_risk_list(&app).await;
    let watcher = app.db.connect().await;
    let committing = "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = 'COMMIT'
                      AND datname = current_database() AND pid <> pg_backend_pid()";
    let kill = async {
        for _ in 0..100 {
            if let Some(row) = watcher.query_opt(committing, &[]).await.unwrap() {
                let pid: i32 = row.get(0);
                watcher.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };

    let (response, killed) = tokio::join!(post_slow_risk(&app), kill);
    assert!(killed, "no session of the API was seen committing");
    let problem = assert_problem(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("may or may not have been applied"), "{detail}");
    let list = app.get("/api/v1/risks", &app.a.viewer).await;
    assert!(!cache_status(&list).is_hit(), "the list cached before the write was still served");
}

/// The deadline (1 s) and the wait for a committing write (1 s more) pass while its COMMIT runs
/// (3 s): the client is answered that the outcome is unknown, and once the commit is done what
/// it changed is invalidated, though no request waits for it any more.
#[tokio::test]
async fn a_write_answered_before_its_commit_ended_is_invalidated_when_it_ends() {
    let app = spawn_app_timing_out_after(1000).await;
    slow_to_commit(&app, 0.0, 3.0).await;
    cached_risk_list(&app).await;

    let response = post_slow_risk(&app).await;
    let problem = assert_problem(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert!(problem["detail"].as_str().unwrap().contains("may or may not have been applied"), "{problem}");
    for _ in 0..200 {
        if risks_titled_slow_to_commit(&app.db).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(risks_titled_slow_to_commit(&app.db).await, 1, "the write was not committed");
    let mut list = app.get("/api/v1/risks", &app.a.viewer).await;
    for _ in 0..200 {
        if !cache_status(&list).is_hit() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        list = app.get("/api/v1/risks", &app.a.viewer).await;
    }
    let body: serde_json::Value = list.json().await.unwrap();
    assert_eq!(body["total"], 1, "the list cached before the write is still served: {body}");
}

#[tokio::test]
async fn an_http2_client_with_prior_knowledge_is_served_as_an_http1_client_is() {
    let app = spawn_app().await;
    let http2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let path = format!("{}/api/v1/risks", app.url);
    let response = http2.get(&path).bearer_auth(&app.a.viewer).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let http1 = app.get("/api/v1/risks", &app.a.viewer).await;
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), http1.text().await.unwrap());
}

#[tokio::test]
async fn a_connection_in_use_stays_open_past_its_idle_timeout() {
    let app = spawn_app_with_short_http_timeouts().await;
    let mut connection = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    // Ten requests 100 ms apart on one keep-alive connection: a second in all, bytes moving
    // every 100 ms, so the 300 ms idle deadline must keep moving on.
    for request in 0..10 {
        connection.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let response = read_response(&mut connection).await;
        assert!(response.starts_with("HTTP/1.1 200"), "request {request}: {response}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_http2_connection_that_only_pings_is_closed_at_the_idle_timeout() {
    let app = spawn_app_with_short_http_timeouts().await;
    let socket = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let (_requests, mut connection) = h2::client::handshake(socket).await.unwrap();
    let mut pings = connection.ping_pong().expect("a new connection can ping");
    // A ping every 50 ms, each answered: bytes move both ways far inside the 300 ms idle timeout,
    // but no request is ever made. Without a limit on time without requests this goes on for the
    // test's 10 s.
    let mut answered = 0;
    let pinging = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            answered += 1;
        }
    };
    let closed = async {
        tokio::select! {
            _ = &mut connection => {}
            () = pinging => {}
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), closed).await;
    assert!(closed.is_ok(), "an HTTP/2 connection making no request kept its slot for 10 s");
    assert!(answered >= 2, "closed after {answered} pings answered: not by the idle timeout of a working connection");
}

#[tokio::test]
async fn an_http2_client_trickling_a_headers_frame_is_closed_at_the_idle_timeout() {
    let app = spawn_app_with_short_http_timeouts().await;
    let (mut from_server, mut to_server) = tokio::net::TcpStream::connect(app.app.addr).await.unwrap().into_split();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then the head of a 1,000-byte HEADERS frame on stream 1.
    opening.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    opening.extend_from_slice(&[0, 0x03, 0xe8, 0x1, 0x4, 0, 0, 0, 1]);
    to_server.write_all(&opening).await.unwrap();
    // A byte of the frame every 50 ms (an indexed `:method GET`, again and again): never idle for
    // 300 ms, the frame done only after 50 s, so no request ever starts.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = to_server.write_all(&[0x82]).await;
        }
    };
    let mut received = Vec::new();
    let closed = async {
        let _ = from_server.read_to_end(&mut received).await;
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            () = closed => {}
            () = trickle => {}
        }
    })
    .await;
    assert!(closed.is_ok(), "a client trickling one HTTP/2 frame kept its connection for 10 s");
    // The server spoke HTTP/2 first (its SETTINGS frame, type 4): the close is the idle
    // timeout's, not a refusal of the preface.
    assert_eq!(received.get(3), Some(&0x4), "the server's first frame: {received:?}");
}

#[tokio::test]
async fn an_http2_connection_in_use_stays_open_past_its_idle_timeout() {
    let app = spawn_app_with_short_http_timeouts().await;
    let socket = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let (requests, connection) = h2::client::handshake(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    // Ten requests 100 ms apart on one connection, a second in all: never 300 ms without one.
    for request in 0..10 {
        let mut requests = requests.clone().ready().await.expect("the connection takes requests");
        let healthz = poem::http::Request::get(format!("http://{}/healthz", app.app.addr)).body(()).unwrap();
        let (response, _) = requests.send_request(healthz, true).unwrap();
        let response = response.await.unwrap_or_else(|error| panic!("request {request}: {error}"));
        assert_eq!(response.status(), StatusCode::OK, "request {request}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!connection.is_finished(), "the connection was closed while in use");
}

/// One whole response (head and `content-length` body) from a keep-alive connection.
async fn read_response(connection: &mut tokio::net::TcpStream) -> String {
    let mut response = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().to_owned()))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let mut chunk = [0u8; 1024];
        let read = connection.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the connection was closed while in use");
        response.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let app =
        spawn_app_with(RedisNamespace::new(), |settings| settings.http.max_connections = 1, AppOptions::default())
            .await;
    let holder = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let mut waiting = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut first)).await;
    assert!(early.is_err(), "a second connection was served while the first held the only slot");
    drop(holder);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), waiting.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "served once the slot was free");
}

#[tokio::test]
async fn a_shutdown_answers_the_request_in_flight_and_accepts_no_new_connection() {
    let (app, gate) = common::spawn_gated_app(|_| {}).await;
    let TestApp { app: server, client, url, a, db: _db, redis: _redis, .. } = app;
    let addr = server.addr;
    gate.arm("/api/v1/stats");
    let in_flight = tokio::spawn(client.get(format!("{url}/api/v1/stats")).bearer_auth(&a.viewer).send());
    gate.reached().await;
    let mut stopping = tokio::spawn(server.shutdown());
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused).await.expect("the listener closed");
    let early = tokio::time::timeout(Duration::from_millis(300), &mut stopping).await;
    assert!(early.is_err(), "the shutdown finished while a request was still in flight");
    gate.release();
    let response = in_flight.await.unwrap().expect("the request in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    stopping.await.unwrap().expect("the server stops cleanly");
}

/// A shutdown begun while a write runs waits for it past the request deadline (3 s) as long as
/// the request itself does: its COMMIT runs from 2.8 s to 4.8 s, after one request timeout and
/// a second of grace from the shutdown but within the one more timeout a committing write gets.
#[tokio::test]
async fn a_shutdown_waits_for_a_write_committing_past_its_deadline() {
    let app = spawn_app_timing_out_after(3000).await;
    slow_to_commit(&app, 2.8, 2.0).await;
    let TestApp { app: server, client, url, a, db, redis: _redis, .. } = app;
    let risk = slow_risk();
    let request = client.post(format!("{url}/api/v1/risks")).bearer_auth(&a.analyst).json(&risk).send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.shutdown());

    let response = in_flight.await.unwrap().expect("the write in flight is answered, not reset");
    assert_eq!(response.status(), StatusCode::CREATED);
    stopping.await.unwrap().expect("the server stops cleanly");
    assert_eq!(risks_titled_slow_to_commit(&db).await, 1);
}

/// A write answered "outcome unknown" at its deadline while its COMMIT still runs (3 s): a
/// shutdown begun right after waits for the commit and its invalidation before it returns.
#[tokio::test]
async fn a_shutdown_waits_for_a_commit_whose_request_was_already_answered() {
    let app = spawn_app_timing_out_after(1000).await;
    slow_to_commit(&app, 0.0, 3.0).await;
    let response = post_slow_risk(&app).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR, "answered before the commit ended");
    let TestApp { app: server, db, redis: _redis, .. } = app;
    let state = std::sync::Arc::clone(&server.state);
    assert_eq!(state.commits.len(), 1, "the commit still runs");

    server.shutdown().await.expect("the server stops cleanly");
    assert!(state.commits.is_empty(), "the shutdown returned while a commit still ran");
    assert_eq!(risks_titled_slow_to_commit(&db).await, 1);
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_answered_503() {
    let (app, gate) = common::spawn_gated_app(|settings| settings.http.request_timeout_ms = 200).await;
    gate.arm("/api/v1/stats");
    let held = app.get("/api/v1/stats", &app.a.viewer);
    let (response, ()) = tokio::join!(held, gate.reached());
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    gate.release();
}
