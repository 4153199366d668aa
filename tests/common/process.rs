//! The `duplex` binary as a child process on ephemeral loopback ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame, Ping, Push, Reply};

pub const BIN: &str = env!("CARGO_BIN_EXE_duplex");

pub struct Running {
    pub child: Child,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub push: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listeners, when configured.
    pub tls: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The node-to-node listener (`http://` or `https://`).
    pub internal: Option<SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every listener on an ephemeral loopback port.
pub const EPHEMERAL_LISTENERS: [&str; 8] = [
    "--tcp-listen",
    "127.0.0.1:0",
    "--ws-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// A configuration file in its own temporary directory, removed when dropped.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: String,
}

pub fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, toml).expect("write config");
    ConfigFile {
        path: path.to_str().expect("utf-8 path").to_owned(),
        _dir: dir,
    }
}

/// Calls `url` with `method` (and the bearer `token`, when given); the status and the JSON body.
pub async fn call_json(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Starts `duplex` on ephemeral ports and reads the addresses it prints.
pub fn start(extra: &[&str]) -> Running {
    start_with_env(extra, &[])
}

pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Running {
    let (child, printed) = spawn(&[], extra, env, None);
    running(child, printed)
}

/// Log lines a node wrote to stderr, as they come.
pub type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `duplex` logging at INFO; its log lines are collected.
pub fn start_logged(extra: &[&str]) -> (Running, LogLines) {
    let lines = LogLines::default();
    let (child, printed) = spawn(&[], extra, &[], Some(lines.clone()));
    (running(child, printed), lines)
}

fn running(child: Child, printed: HashMap<&'static str, SocketAddr>) -> Running {
    let addr = |label: &str| *printed.get(label).unwrap_or_else(|| panic!("printed {label} address"));
    Running {
        tcp: addr("tcp"),
        ws: addr("ws"),
        push: addr("push"),
        admin: addr("admin"),
        tls: printed.get("tls").copied(),
        wss: printed.get("wss").copied(),
        internal: printed.get("internal").copied(),
        child,
    }
}

/// A node running one tier (split mode); the addresses it printed.
pub struct TierNode {
    pub child: Child,
    pub tcp: Option<SocketAddr>,
    pub push: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub internal: Option<SocketAddr>,
}

impl Drop for TierNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TierNode {
    pub fn tcp(&self) -> SocketAddr {
        self.tcp.expect("an access node")
    }

    pub fn push(&self) -> SocketAddr {
        self.push.expect("a downstream node")
    }

    /// SIGTERM, then the exit status (within 10 s).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        signal_and_wait(&mut self.child).await
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `duplex <tier>` (access, upstream or downstream) on ephemeral ports.
pub fn start_tier(tier: &str, extra: &[&str]) -> TierNode {
    let (child, printed) = spawn(&[tier], extra, &[], None);
    TierNode {
        child,
        tcp: printed.get("tcp").copied(),
        push: printed.get("push").copied(),
        admin: *printed.get("admin").expect("printed admin address"),
        internal: printed.get("internal").copied(),
    }
}

/// Spawns the binary and reads the addresses it prints, up to the admin line (always last).
fn spawn(
    command: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
    logs: Option<LogLines>,
) -> (Child, HashMap<&'static str, SocketAddr>) {
    let mut child = Command::new(BIN)
        .args(command)
        .args(EPHEMERAL_LISTENERS)
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", if logs.is_some() { "info" } else { "warn" })
        .stdout(Stdio::piped())
        .stderr(if logs.is_some() { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("spawn duplex");
    if let (Some(logs), Some(stderr)) = (logs, child.stderr.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = HashMap::new();
    let labels = [
        ("client tcp:", "tcp", "", ""),
        ("client websocket:", "ws", "ws://", "/"),
        ("client tls:", "tls", "tls://", ""),
        ("client wss:", "wss", "wss://", "/"),
        ("push API:", "push", "http://", "/v1/push"),
        ("internal:", "internal", "https://", ""),
        ("admin:", "admin", "http://", "/metrics"),
    ];
    for _ in 0..10 {
        let Some(Ok(line)) = lines.next() else { break };
        for (prefix, label, scheme, suffix) in labels {
            if let Some(a) = line.trim().strip_prefix(prefix) {
                let a = a
                    .trim()
                    .trim_start_matches(scheme)
                    .trim_start_matches("http://")
                    .trim_end_matches(suffix);
                printed.insert(label, a.parse().unwrap_or_else(|_| panic!("{label} address {a}")));
            }
        }
        if printed.contains_key("admin") {
            break;
        }
    }
    // Keep reading stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, printed)
}

pub fn mint(sub: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--sub", sub])
        .output()
        .expect("duplex token");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

pub async fn ping_pong(conn: &mut Connection) {
    conn.send(&Frame::Ping(Ping { id: 1 })).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("in time")
        .expect("ok");
    assert!(matches!(got, Some(Frame::Pong(_))), "{got:?}");
}

pub async fn terminate(run: &mut Running) -> std::process::ExitStatus {
    signal_and_wait(&mut run.child).await
}

async fn signal_and_wait(child: &mut Child) -> std::process::ExitStatus {
    sigterm(child);
    wait_exit(child).await
}

pub fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
}

/// The exit status, within the default shutdown grace (15 s) and a margin:
/// a draining node waits for its clients to leave until then.
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..400 {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("duplex did not exit within 20 s of SIGTERM");
}

/// Sends a request and waits for its reply; replies to earlier requests that
/// are replayed first (at least once) are acked and skipped.
pub async fn ask_with(conn: &mut Connection, id: u64, service: &str, method: &str, path: &str) -> Reply {
    conn.send(&super::request_frame(id, service, method, path))
        .await
        .expect("send");
    for _ in 0..10 {
        match next_frame(conn).await {
            Some(Frame::Reply(r)) => {
                conn.send(&Frame::Ack(Ack { id: r.seq, seq: r.seq }))
                    .await
                    .expect("ack");
                if r.id == id {
                    return r;
                }
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    panic!("no reply to request {id}");
}

/// The next frame, within 10 s.
pub async fn next_frame(conn: &mut Connection) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(10), conn.recv())
        .await
        .expect("a frame within 10 s")
        .expect("readable")
}

/// Posts `{"hi": 1}` for `client_id` to `push_api` (development API key); the answer.
pub async fn push_hi(push_api: SocketAddr, client_id: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("http://{push_api}/v1/push"))
        .bearer_auth("duplex-dev-api-key")
        .json(&serde_json::json!({"client_ids": [client_id], "payload": {"hi": 1}}))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("json")
}

/// Posts `{"hi": 1}` for `client_id` to `push_api`, which must hand it to the
/// client's node at once; `conn` receives and acks it.
pub async fn push_arrives_live(push_api: SocketAddr, client_id: &str, conn: &mut Connection) -> Push {
    let resp = push_hi(push_api, client_id).await;
    assert_eq!(resp["messages"][0]["state"], "delivered_to_node", "{resp}");
    let push = match next_frame(conn).await {
        Some(Frame::Push(p)) => p,
        other => panic!("expected the push, got {other:?}"),
    };
    conn.send(&Frame::Ack(Ack { id: 1, seq: push.seq })).await.expect("ack");
    push
}
