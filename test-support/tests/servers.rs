//! The fixtures fail loudly instead of standing in for what a test meant to use.

use std::process::{Command, Stdio};

use openrisk_test_support::{PrivateRedis, RedisNamespace, free_port, node_command};

#[test]
#[should_panic(expected = "scan the test's keys")]
fn listing_keys_on_a_redis_that_does_not_answer_panics_rather_than_finding_none() {
    let port = free_port();
    RedisNamespace::on(&format!("redis://127.0.0.1:{port}")).keys();
}

#[test]
fn a_private_redis_restarted_on_a_port_another_server_took_fails_instead_of_using_that_server() {
    let mut redis = PrivateRedis::start();
    redis.kill();
    let mut intruder = Command::new("redis-server")
        .args(["--port", &redis.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start another redis-server");
    let url = redis.url();
    for attempt in 0.. {
        if node_command(&url, &["PING"]).is_some() {
            break;
        }
        assert!(attempt < 500, "the other redis-server never answered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| redis.restart()));
    intruder.kill().expect("kill the other redis-server");
    intruder.wait().expect("wait for the other redis-server");

    let message = restarted.expect_err("the other server must not pass for the restarted one");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("private redis exited"), "{message}");
}
