//! Servers under test, started as child processes: duplex itself (several
//! processes on one port with `SO_REUSEPORT`) or a peer such as Mosquitto.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child server process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    /// The admin listener's `/metrics` URL, as the duplex server printed it.
    pub metrics_url: Option<String>,
}

impl Drop for Server {
    // Synchronous on purpose: it runs in Drop.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis the servers should use: a private `redis-server` started here
/// (kept alive by the returned handle), the given URL, or none (memory store).
/// The `duplex` binary the bench starts: `$BENCH_DUPLEX_BIN`, else the one next
/// to this `duplex-bench` (both are built by `cargo build --release --workspace`).
/// Not a `DUPLEX_` name: the servers inherit the environment and read every
/// `DUPLEX_*` variable as configuration.
pub fn duplex_exe() -> anyhow::Result<PathBuf> {
    let exe = match std::env::var_os("BENCH_DUPLEX_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .context("locating the duplex-bench binary")?
            .with_file_name("duplex"),
    };
    if !exe.is_file() {
        bail!(
            "no duplex binary at {} (build both with `cargo build --release --workspace`, or set BENCH_DUPLEX_BIN)",
            exe.display()
        );
    }
    Ok(exe)
}

pub fn redis_for(
    private: bool,
    url: &Option<String>,
) -> anyhow::Result<(Option<duplex_testkit::TestRedis>, Option<String>)> {
    if private {
        let server = duplex_testkit::TestRedis::start().map_err(anyhow::Error::msg)?;
        let url = server.url();
        return Ok((Some(server), Some(url)));
    }
    Ok((None, url.clone()))
}

/// Three distinct free loopback ports (all held while choosing, so they differ).
pub fn free_ports() -> anyhow::Result<(u16, u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    let c = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port(), c.local_addr()?.port()))
}

/// Starts `count` duplex processes sharing `tcp_port` and `ws_port`.
pub fn start_duplex(
    exe: &Path,
    count: usize,
    ports: (u16, u16, u16),
    redis_url: Option<&str>,
) -> anyhow::Result<Vec<Server>> {
    start_duplex_with(exe, count, ports, redis_url, None, "bench")
}

/// `start_duplex` with a configuration file.
pub fn start_duplex_with(
    exe: &Path,
    count: usize,
    ports: (u16, u16, u16),
    redis_url: Option<&str>,
    config: Option<&Path>,
    node_prefix: &str,
) -> anyhow::Result<Vec<Server>> {
    let mut servers = Vec::new();
    for i in 0..count {
        let mut cmd = Command::new(exe);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["--tcp-listen", &format!("127.0.0.1:{}", ports.0)])
            .args(["--ws-listen", &format!("127.0.0.1:{}", ports.1)])
            .args(["--node-id", &format!("{node_prefix}-{i}")])
            .args(["--http-listen", &format!("127.0.0.1:{}", ports.2)])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("DUPLEX_ACCESS__REUSE_PORT", "true")
            .env("DUPLEX_ACCESS__MAX_CONNECTIONS", "19500")
            // A generator process opens up to 19,000 connections from one
            // source address as fast as it can: lift the per-source bounds
            // meant for the open internet (the node-wide ones stay).
            .env("DUPLEX_ACCESS__MAX_UNAUTHENTICATED_PER_SOURCE", "1024")
            .env("DUPLEX_ACCESS__CONNECT_RATE_PER_SOURCE", "1000000")
            .env("DUPLEX_ACCESS__CONNECT_BURST_PER_SOURCE", "1000000")
            // Generators stay silent while holding; keep them inside the heartbeat window.
            .env("DUPLEX_ACCESS__HEARTBEAT_MS", "600000")
            .env("DUPLEX_ACCESS__ROUTE_TTL_MS", "1800000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = redis_url {
            cmd.env("DUPLEX_REDIS_URL", url);
        }
        let mut child = cmd.spawn().context("starting a duplex server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut server = Server {
            child,
            metrics_url: None,
        };
        let mut lines = BufReader::new(stdout).lines();
        // The banner ends with the admin line (after the listeners).
        let mut ready = false;
        for line in lines.by_ref().take(10).map_while(Result::ok) {
            ready |= line.contains("client websocket:");
            if let Some(url) = line.trim().strip_prefix("admin:") {
                server.metrics_url = Some(url.trim().to_owned());
            }
            if server.metrics_url.is_some() || line.contains("mint a token:") {
                break;
            }
        }
        // Keep draining the server's stdout so it never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        if !ready {
            bail!("duplex server {i} did not start");
        }
        servers.push(server);
    }
    Ok(servers)
}

/// Starts Mosquitto (Debian package `mosquitto`) on `port` with a throwaway config.
pub async fn start_mosquitto(port: u16, dir: &Path) -> anyhow::Result<Server> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\n\
             log_dest stderr\nlog_type error\nset_tcp_nodelay true\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    listening(child, port, "mosquitto").await
}

/// Starts nginx with the Nchan module (Debian packages `nginx`,
/// `libnginx-mod-nchan`) on `port`, one worker, under `dir`: WebSocket
/// subscribers at `/sub/<channel>`, HTTP publishers at `/pub/<channel>`.
pub async fn start_nchan(port: u16, dir: &Path) -> anyhow::Result<Server> {
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;\n\
             worker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\ndaemon off;\n\
             events {{ worker_connections 19500; use epoll; multi_accept on; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             keepalive_requests 10000000;\n keepalive_timeout 300s;\n nchan_shared_memory_size 256m;\n\
             server {{\n  listen 127.0.0.1:{port} backlog=4096;\n\
             location ~ ^/sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; }}\n\
             location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; \
             nchan_message_buffer_length 1; nchan_message_timeout 30s; }}\n }}\n}}\n"
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx (apt-get install nginx libnginx-mod-nchan)")?;
    listening(child, port, "nginx").await
}

/// A peer server once it accepts connections on `port` (5 s at most).
async fn listening(child: Child, port: u16, what: &str) -> anyhow::Result<Server> {
    let server = Server {
        child,
        metrics_url: None,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{what} did not listen on {port}")
}
