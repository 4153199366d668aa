//! The `duplex` binary as a child process on ephemeral loopback ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use duplex_client::Connection;
use duplex_shared::protocol::{Frame, Ping};

pub const BIN: &str = env!("CARGO_BIN_EXE_duplex");

pub struct Running {
    pub child: Child,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub push: SocketAddr,
    pub admin: SocketAddr,
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
    let mut child = Command::new(BIN)
        .args(EPHEMERAL_LISTENERS)
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn duplex");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut tcp, mut ws, mut push, mut admin) = (None, None, None, None);
    for _ in 0..10 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(a) = line.trim().strip_prefix("client tcp:") {
            tcp = Some(a.trim().parse().expect("tcp addr"));
        }
        if let Some(a) = line.trim().strip_prefix("client websocket:") {
            ws = Some(
                a.trim()
                    .trim_start_matches("ws://")
                    .trim_end_matches('/')
                    .parse()
                    .expect("ws addr"),
            );
        }
        if let Some(a) = line.trim().strip_prefix("push API:") {
            let a = a.trim().trim_start_matches("http://").trim_end_matches("/v1/push");
            push = Some(a.parse().expect("push addr"));
        }
        if let Some(a) = line.trim().strip_prefix("admin:") {
            let a = a.trim().trim_start_matches("http://").trim_end_matches("/metrics");
            admin = Some(a.parse().expect("admin addr"));
        }
        if tcp.is_some() && ws.is_some() && push.is_some() && admin.is_some() {
            break;
        }
    }
    // Keep reading stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Running {
        child,
        tcp: tcp.expect("printed tcp address"),
        ws: ws.expect("printed ws address"),
        push: push.expect("printed push API address"),
        admin: admin.expect("printed admin address"),
    }
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
    let pid = run.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    for _ in 0..200 {
        if let Some(status) = run.child.try_wait().expect("wait") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("duplex did not exit within 10 s of SIGTERM");
}
