//! End-to-end: the `duplex` binary as users run it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::*;
use duplex_testkit::eventually;

use duplex_client::Connection;
use duplex_shared::protocol::Frame;
use duplex_store::RedisStore;
use duplex_store::Routes;
use duplex_testkit::TestRedis;

#[tokio::test]
async fn all_in_one_with_memory_store_serves_tcp_and_websocket_with_a_minted_token() {
    let mut run = start(&[]);
    let token = mint("alice");
    let mut tcp = Connection::tcp(run.tcp).await.expect("tcp");
    let hello = tcp.handshake(&token, "phone-1", 0).await.expect("tcp handshake");
    assert!(hello.node_id.starts_with("n-"));
    ping_pong(&mut tcp).await;
    let mut ws = Connection::ws(&format!("ws://{}/", run.ws)).await.expect("ws");
    ws.handshake(&token, "tablet-1", 0).await.expect("ws handshake");
    ping_pong(&mut ws).await;
    let metrics = reqwest::get(format!("http://{}/metrics", run.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        "duplex_build_info{version=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(series), "{series} in /metrics");
    }
    sigterm(&run.child);
    // Each client is told within the go_away window (10 s) and leaves, as clients do.
    for conn in [&mut tcp, &mut ws] {
        let frame = tokio::time::timeout(Duration::from_secs(12), conn.recv())
            .await
            .expect("in time")
            .expect("ok");
        assert!(matches!(frame, Some(Frame::GoAway(_))), "{frame:?}");
    }
    drop((tcp, ws));
    let status = wait_exit(&mut run.child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// Connects `client_id` to `run` and checks Redis holds its route to `node_id`.
async fn connect_and_check_route(run: &Running, store: &RedisStore, client_id: &str, node_id: &str) {
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("bob"), client_id, 0).await.expect("handshake");
    let route = store
        .get_route(client_id)
        .await
        .expect("get")
        .expect("route written to Redis");
    assert_eq!(route.node_id, node_id);
}

#[tokio::test]
async fn redis_url_switches_to_the_redis_store() {
    let redis = TestRedis::start().expect("redis-server");
    let store = RedisStore::connect(&redis.url(), "dx:").await.expect("redis");
    // The environment variable works like the flag.
    let mut by_env = start_with_env(&["--node-id", "e2e-env"], &[("DUPLEX_REDIS_URL", &redis.url())]);
    connect_and_check_route(&by_env, &store, "phone-env", "e2e-env").await;
    assert!(terminate(&mut by_env).await.success());

    let mut by_flag = start(&["--redis", &redis.url(), "--node-id", "e2e-node"]);
    connect_and_check_route(&by_flag, &store, "phone-2", "e2e-node").await;
    assert!(terminate(&mut by_flag).await.success());
    assert_eq!(
        store.get_route("phone-2").await.expect("get"),
        None,
        "route released on shutdown"
    );
}

/// Kubernetes puts `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT...` into every pod for
/// every Service: a Service named `duplex-clients` gives `DUPLEX_CLIENTS_*`. They
/// name no configuration key: the node warns and runs (it used to exit 64 and crash-loop).
#[tokio::test]
async fn kubernetes_service_variables_do_not_stop_the_node() {
    let env = [
        ("DUPLEX_CLIENTS_SERVICE_HOST", "10.96.0.12"),
        ("DUPLEX_CLIENTS_SERVICE_PORT", "7070"),
        ("DUPLEX_CLIENTS_PORT", "tcp://10.96.0.12:7070"),
        ("DUPLEX_CLIENTS_PORT_7070_TCP_ADDR", "10.96.0.12"),
        ("DUPLEX_ACCESS__HEARTBEAT_MS", "20000"),
    ];
    let mut run = start_with_env(&[], &env);
    let mut tcp = Connection::tcp(run.tcp).await.expect("tcp");
    let hello = tcp.handshake(&mint("kate"), "kate-phone", 0).await.expect("handshake");
    assert_eq!(hello.heartbeat_ms, 20_000, "real keys still apply");
    drop(tcp);
    assert!(terminate(&mut run).await.success());
}

/// The ignored variable is named in a warning, and logs written to a pipe carry no colour codes.
#[test]
fn an_ignored_variable_is_logged_without_colour_codes() {
    let mut child = Command::new(BIN)
        .args(EPHEMERAL_LISTENERS)
        .env("DUPLEX_CLIENTS_SERVICE_HOST", "10.96.0.12")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let warning = BufReader::new(stderr)
        .lines()
        .take(20)
        .map_while(Result::ok)
        .find(|line| line.contains("DUPLEX_CLIENTS_SERVICE_HOST"));
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.expect("a warning naming the variable");
    assert!(
        warning.contains("WARN") && warning.contains("names no configuration key"),
        "{warning}"
    );
    assert!(!warning.contains('\u{1b}'), "no ANSI escapes on a pipe: {warning:?}");
}

/// `duplex check-config` names every problem at once (not just the first) and exits 64;
/// a good configuration says so and exits 0.
#[test]
fn check_config_reports_every_problem_at_once() {
    let ok = Command::new(BIN).arg("check-config").output().expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "configuration OK");
    let bad = Command::new(BIN)
        .args(["check-config", "--admin-listen", "0.0.0.0:7090"])
        .env("DUPLEX_KEY_PREFIX", "{x}")
        .env("DUPLEX_ACCESS__HEARTBEAT_MS", "0")
        .env("DUPLEX_LOG__FORMAT", "xml")
        .env("DUPLEX_NO_SUCH_KEY", "1")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    for named in [
        "key_prefix",
        "access.heartbeat_ms",
        "admin.token",
        "log.format",
        "DUPLEX_NO_SUCH_KEY",
        "4 problem(s)",
    ] {
        assert!(err.contains(named), "{named} in {err}");
    }
}

/// What support needs at INFO: connects and disconnects with who, how, why and for how
/// long; refused connections with the code and the peer; refused push API calls.
#[tokio::test]
async fn connections_refusals_and_refused_push_calls_are_logged_at_info() {
    let (run, logs) = start_logged(&[]);
    let logged = |parts: &'static [&'static str]| {
        let logs = logs.clone();
        move || {
            let logs = logs.clone();
            async move {
                let lines = logs.lock().unwrap_or_else(|p| p.into_inner());
                lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
            }
        }
    };
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("lou"), "lou-phone", 0).await.expect("handshake");
    eventually(
        "connect logged",
        logged(&[
            "INFO",
            "client connected",
            "client_id=lou-phone",
            "user_id=lou",
            "transport=\"tcp\"",
        ]),
    )
    .await;
    drop(conn);
    eventually(
        "disconnect logged",
        logged(&[
            "client disconnected",
            "client_id=lou-phone",
            "reason=\"client_left\"",
            "duration_ms=",
        ]),
    )
    .await;
    let mut bad = Connection::tcp(run.tcp).await.expect("tcp");
    assert!(bad.handshake("not-a-jwt", "lou-tablet", 0).await.is_err());
    eventually(
        "refusal logged",
        logged(&["INFO", "connection refused", "code=token_invalid", "peer=127.0.0.1:"]),
    )
    .await;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("wrong-key")
        .body("{}")
        .send()
        .await
        .expect("push");
    assert_eq!(refused.status(), 401);
    eventually(
        "refused push call logged",
        logged(&["INFO", "push API call refused", "status=401"]),
    )
    .await;
}

/// JSON logs: one object per line, the caller's trace id on a push API line.
#[tokio::test]
async fn json_logs_carry_the_callers_trace_id() {
    let (run, logs) = start_logged(&["--log-format", "json"]);
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(r#"{"client_ids": ["bad id"], "payload": 1}"#)
        .send()
        .await
        .expect("push");
    assert_eq!(refused.status(), 400);
    let refusal = move || {
        let logs = logs.clone();
        async move {
            let lines = logs.lock().unwrap_or_else(|p| p.into_inner());
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| {
                    v["fields"]["message"] == "push API call refused"
                        && v["fields"]["code"] == "bad_client_id"
                        && v["span"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
                        && v["span"]["path"] == "/v1/push"
                })
        }
    };
    eventually("the refusal logged as JSON with the trace id", refusal).await;
}

#[test]
fn invalid_configuration_exits_64_with_a_readable_message() {
    let out = Command::new(BIN)
        .env("DUPLEX_ACCESS__HEARTBEAT_MS", "soon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HEARTBEAT_MS"), "{err}");

    let out = Command::new(BIN)
        .args(["--tcp-listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.secret"));

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, "[access]\nmax_conections = 5\n").expect("write");
    let out = Command::new(BIN)
        .args(["--config", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
}

#[test]
fn a_split_node_with_real_secrets_needs_the_internal_secret() {
    let out = Command::new(BIN)
        .args(["upstream", "--redis", "redis://127.0.0.1:1/"])
        .env("DUPLEX_AUTH__SECRET", "9f2c4d1be0a3477c8a51d2f0c1e4b7aa9f2c4d1b")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("internal_secret"), "{err}");
}

#[test]
fn unreachable_redis_exits_69() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = Command::new(BIN)
        .args(EPHEMERAL_LISTENERS)
        .args(["--redis", &format!("redis://:hunter2-secret@127.0.0.1:{port}/")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    // The operator learns where and why, never the password.
    assert!(err.contains(&format!("redis://:***@127.0.0.1:{port}/")), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_push_acknowledged_with_202_survives_sigkill_with_the_redis_store() {
    let redis = TestRedis::start().expect("redis-server");
    let key = "binary-test-api-key-0123456789";
    let env = [("DUPLEX_DOWNSTREAM__API_KEYS", "[\"binary-test-api-key-0123456789\"]")];
    let mut first = start_with_env(&["--redis", &redis.url()], &env);
    let mut conn = Connection::tcp(first.tcp).await.expect("tcp");
    conn.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/push", first.push))
        .bearer_auth(key)
        .json(&serde_json::json!({"client_ids": ["zoe-phone"], "payload": {"n": 1}}))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 202);
    // No grace: SIGKILL right after the 202.
    first.child.kill().expect("sigkill");
    first.child.wait().expect("reaped");
    drop(conn);
    let second = start_with_env(&["--redis", &redis.url()], &env);
    let mut conn = Connection::tcp(second.tcp).await.expect("tcp");
    conn.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");
    let got = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("in time")
        .expect("ok");
    match got {
        Some(Frame::Push(p)) => {
            assert_eq!(p.seq, 1);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&p.payload).expect("json"),
                serde_json::json!({"n": 1})
            );
        }
        other => panic!("expected the pushed message after restart, got {other:?}"),
    }
}

/// Polls `/readyz` (up to 10 s) until it answers `want`; returns the last status.
async fn wait_for_readyz(http: &reqwest::Client, admin: &str, want: u16) -> u16 {
    let mut status = 0;
    for _ in 0..400 {
        status = http
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    status
}

fn metric(text: &str, series: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_readiness_follows_redis() {
    let mut redis = TestRedis::start().expect("redis-server");
    let port = redis.port();
    let run = start(&["--redis", &redis.url()]);
    let http = reqwest::Client::new();
    let admin = format!("http://{}", run.admin);
    let get_text = |path: &'static str| {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            http.get(format!("{admin}{path}"))
                .send()
                .await
                .expect("admin")
                .text()
                .await
                .expect("text")
        }
    };
    assert_eq!(
        http.get(format!("{admin}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );

    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("mia"), "mia-phone", 0).await.expect("handshake");
    let mut bad = Connection::tcp(run.tcp).await.expect("tcp");
    assert!(bad.handshake("not-a-token", "x", 0).await.is_err());
    let resp = http
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&serde_json::json!({"client_ids": ["mia-phone"], "payload": 1}))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 202);
    let push = match tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("in time")
        .expect("ok")
    {
        Some(Frame::Push(p)) => p,
        other => panic!("{other:?}"),
    };
    conn.send(&Frame::Ack(duplex_shared::protocol::Ack { id: 1, seq: push.seq }))
        .await
        .expect("ack");
    let mut text = String::new();
    for _ in 0..200 {
        text = get_text("/metrics").await;
        if metric(&text, "duplex_messages_acked_total") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&text, "duplex_connections{transport=\"tcp\"}"), 1, "{text}");
    assert_eq!(metric(&text, "duplex_connects_total{transport=\"tcp\"}"), 1);
    assert_eq!(metric(&text, "duplex_auth_failures_total{code=\"token_invalid\"}"), 1);
    assert_eq!(metric(&text, "duplex_pushes_accepted_total{qos=\"1\"}"), 1);
    assert_eq!(metric(&text, "duplex_pushes_delivered_total"), 1);
    assert_eq!(metric(&text, "duplex_messages_acked_total"), 1, "{text}");
    assert_eq!(metric(&text, "duplex_push_delivery_seconds_count"), 1, "{text}");
    assert_eq!(
        metric(&text, "duplex_frames_out_total{type=\"connected\"}"),
        1,
        "{text}"
    );
    assert_eq!(metric(&text, "duplex_frames_out_total{type=\"push\"}"), 1, "{text}");
    assert_eq!(
        metric(&text, "duplex_frames_out_total{type=\"error\"}"),
        1,
        "the bad token's refusal"
    );
    assert_eq!(metric(&text, "duplex_push_delivery_seconds_bucket{le=\"+Inf\"}"), 1);
    assert!(
        metric(&text, "duplex_store_ping_seconds_count") >= 1,
        "Redis latency is probed"
    );
    assert!(!text.contains("mia"), "no client ids in metric labels");

    // Admin endpoints are not on the public ports.
    assert_eq!(
        http.get(format!("http://{}/metrics", run.push))
            .send()
            .await
            .expect("push port")
            .status(),
        404
    );

    // Redis stops: not ready. Redis returns: ready again.
    drop(redis);
    assert_eq!(
        wait_for_readyz(&http, &admin, 503).await,
        503,
        "not ready while Redis is down"
    );
    redis = TestRedis::start_on(port).expect("redis again");
    assert_eq!(
        wait_for_readyz(&http, &admin, 200).await,
        200,
        "ready again once Redis is back"
    );
    drop(redis);
}

#[tokio::test]
async fn the_cli_client_prints_a_push_sent_with_http_and_refuses_bad_tokens() {
    let run = start(&[]);
    let mut cli = Command::new(BIN)
        .args(["client", "--url", &format!("tcp://{}", run.tcp), "--client-id", "cli-1"])
        .env("DUPLEX_TOKEN", mint("cleo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("duplex client");
    // The client reports its connection on stderr; wait for it before pushing.
    let stderr = cli.stderr.take().expect("stderr");
    let mut err_lines = BufReader::new(stderr).lines();
    let first = err_lines
        .by_ref()
        .map(|l| l.expect("utf8"))
        .find(|l| !l.starts_with("connecting to"))
        .expect("a line");
    assert!(first.starts_with("connected to"), "{first}");
    std::thread::spawn(move || err_lines.for_each(drop));
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&serde_json::json!({"client_ids": ["cli-1"], "payload": {"hello": "cli"}}))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 202);
    let stdout = cli.stdout.take().expect("stdout");
    let line = std::thread::spawn(move || BufReader::new(stdout).lines().next())
        .join()
        .expect("reader")
        .expect("a line")
        .expect("utf8");
    // SIGTERM: the client sends the ack it holds (100 ms by default) before
    // exiting, so the message is not left pending.
    let term = Command::new("kill")
        .args(["-TERM", &cli.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let exit = cli.wait().expect("the client exits");
    assert!(exit.success(), "{exit:?}");
    // The node stores the ack on its own time after the connection closed.
    let http = reqwest::Client::new();
    common::eventually("the held ack is stored", || async {
        let client: serde_json::Value = http
            .get(format!("http://{}/v1/clients/cli-1", run.push))
            .bearer_auth("duplex-dev-api-key")
            .send()
            .await
            .expect("client info")
            .json()
            .await
            .expect("json");
        client["pending"] == 0 && client["last_acked_seq"] == 1
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(
        (v["seq"].clone(), v["payload"].clone()),
        (serde_json::json!(1), serde_json::json!({"hello": "cli"}))
    );

    let out = Command::new(BIN)
        .args(["client", "--url", &format!("tcp://{}", run.tcp), "--token", "bad-token"])
        .output()
        .expect("duplex client");
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_invalid"));
}
