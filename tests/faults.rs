//! Faults under a counted qos-1 stream: 1,000 pushes to an SDK client on node
//! A of two nodes on one Redis, with a fault after the 300th arrived. Each
//! test asserts that every accepted push reached the app exactly once, with
//! the seq it was accepted with, in seq order.

mod common;

use common::process::*;
use common::scenarios;
use duplex_testkit::TestRedis;

/// Both nodes: a fast heartbeat and pong deadline (the liveness rule) and a
/// short registry lease, so a hung node is left and skipped within seconds.
const FAST_FAILOVER: [(&str, &str); 3] = [
    ("DUPLEX_ACCESS__HEARTBEAT_MS", "500"),
    ("DUPLEX_ACCESS__PONG_DEADLINE_MS", "1000"),
    ("DUPLEX_REGISTRY__LEASE_MS", "1000"),
];

fn signal(pid: u32, sig: &str) {
    let done = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(done.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn a_killed_access_node_loses_nothing_that_was_accepted() {
    let redis = TestRedis::start().expect("redis-server");
    let mut a = start(&["--redis", &redis.url(), "--node-id", "node-a"]);
    let b = start(&["--redis", &redis.url(), "--node-id", "node-b"]);
    let a_tcp = a.tcp;
    scenarios::kill_during_a_push_stream(a_tcp, b.tcp, "node-a", b.push, move || {
        a.child.kill().expect("SIGKILL node A");
        let _ = a.child.wait();
    })
    .await;
}

#[tokio::test]
async fn a_hung_access_node_loses_nothing_that_was_accepted() {
    let redis = TestRedis::start().expect("redis-server");
    let a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &FAST_FAILOVER);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &FAST_FAILOVER);
    let a_pid = a.child.id();
    scenarios::kill_during_a_push_stream(a.tcp, b.tcp, "node-a", b.push, move || signal(a_pid, "-STOP")).await;
    // Let it run again, so it can be stopped like any other at the end.
    signal(a_pid, "-CONT");
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_that_was_accepted() {
    let dir = std::env::temp_dir().join(format!("duplex-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = TestRedis::start().expect("a free port").port();
    let redis = TestRedis::start_durable_on(port, &dir).expect("durable redis-server");
    let url = redis.url();
    let a = start_with_env(&["--redis", &url, "--node-id", "node-a"], &FAST_FAILOVER);
    let b = start_with_env(&["--redis", &url, "--node-id", "node-b"], &FAST_FAILOVER);
    let restarted = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = restarted.clone();
    scenarios::kill_during_a_push_stream(a.tcp, b.tcp, "node-a", b.push, move || {
        // SIGKILL: whatever Redis acknowledged is in its append-only file.
        drop(redis);
        let again = TestRedis::start_durable_on(port, &dir).expect("redis-server again");
        *keep.lock().expect("lock") = Some(again);
    })
    .await;
    assert!(restarted.lock().expect("lock").is_some());
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("duplex-faults-{}", std::process::id())));
}
