//! `duplex bench connect`: idle authenticated connections at scale.
//!
//! A process may hold at most ~19.9k sockets here, so the run starts several
//! server processes on one port (`SO_REUSEPORT`) and several generator
//! processes, each bound to its own 127.x.y.z source address (about 28k
//! ephemeral ports each; the address changes every run so TIME_WAIT sockets
//! of the last run never collide).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use duplex_client::Connection;
use duplex_shared::auth::{dev_claims, mint_hs256};
use duplex_shared::config::DEV_SECRET;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

use super::procfs::{cpu_seconds, machine_line, rss_kib};

/// Connections one server process is asked to hold at most (fd limit 20,000).
const PER_SERVER: usize = 18_000;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// `tcp` or `ws`.
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// Server processes sharing the port; default: enough for 18,000 connections each.
    #[arg(long)]
    pub servers: Option<usize>,
    /// Connections per generator process (at most 19,000).
    #[arg(long, default_value_t = 16_000)]
    pub per_worker: usize,
    /// Concurrent connection attempts per generator.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold the connections once all are up (RSS is measured again at the end).
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Redis URL for the servers (default: their in-memory store). Keys use the `dx:` prefix.
    #[arg(long, conflicts_with = "private_redis")]
    pub redis: Option<String>,
    /// Start a private `redis-server` on a free loopback port for the servers, and stop it after.
    #[arg(long)]
    pub private_redis: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long)]
    pub transport: String,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub source: Ipv4Addr,
    #[arg(long)]
    pub token: String,
    #[arg(long)]
    pub prefix: String,
    #[arg(long)]
    pub concurrency: usize,
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
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

/// Two distinct free loopback ports (both held while choosing, so they differ).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

#[allow(clippy::print_stdout)]
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    if !matches!(args.transport.as_str(), "tcp" | "ws") {
        bail!("--transport must be tcp or ws");
    }
    if args.connections == 0 || args.per_worker == 0 || args.per_worker > 19_000 {
        bail!("--connections must be positive and --per-worker within 1..=19000");
    }
    let exe = std::env::current_exe().context("locating the duplex binary")?;
    let private = if args.private_redis {
        Some(duplex_shared::testing::TestRedis::start().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let redis_url = args.redis.clone().or(private.as_ref().map(|r| r.url()));
    let servers_n = args.servers.unwrap_or(args.connections.div_ceil(PER_SERVER)).max(1);
    let (tcp_port, ws_port) = free_ports()?;
    println!("{}", machine_line());
    println!(
        "bench connect: {} {} connections, {} server process(es), store {}",
        args.connections,
        args.transport,
        servers_n,
        if redis_url.is_some() { "redis" } else { "memory" }
    );
    let mut servers = Vec::new();
    for i in 0..servers_n {
        let mut cmd = Command::new(&exe);
        cmd.args(["--tcp-listen", &format!("127.0.0.1:{tcp_port}")])
            .args(["--ws-listen", &format!("127.0.0.1:{ws_port}")])
            .args(["--node-id", &format!("bench-{i}")])
            .env("DUPLEX_ACCESS__REUSE_PORT", "true")
            .env("DUPLEX_ACCESS__MAX_CONNECTIONS", "19500")
            // Generators stay silent while holding; keep them inside the heartbeat window.
            .env("DUPLEX_ACCESS__HEARTBEAT_MS", "600000")
            .env("DUPLEX_ACCESS__ROUTE_TTL_MS", "1800000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = &redis_url {
            cmd.env("DUPLEX_REDIS_URL", url);
        }
        let mut child = cmd.spawn().context("starting a duplex server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let server = Server { child };
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.by_ref().take(10).any(|l| l.is_ok_and(|l| l.contains("client websocket:")));
        // Keep draining the server's stdout so it never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        if !ready {
            bail!("server {i} did not start");
        }
        servers.push(server);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let base_rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
    let base_cpu: f64 = pids.iter().filter_map(|&p| cpu_seconds(p)).sum();

    let token = mint_hs256(DEV_SECRET, &dev_claims("bench", 3600)).map_err(anyhow::Error::msg)?;
    let target_port = if args.transport == "tcp" { tcp_port } else { ws_port };
    let run_tag: u8 = rand::random::<u8>().max(1);
    let workers_n = args.connections.div_ceil(args.per_worker);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    let started = Instant::now();
    for w in 0..workers_n {
        let count = args.per_worker.min(args.connections - w * args.per_worker);
        let source = Ipv4Addr::new(127, run_tag, (w / 250) as u8 + 1, (w % 250) as u8 + 2);
        let mut child = Command::new(&exe)
            .args(["bench", "connect-worker", "--target", &format!("127.0.0.1:{target_port}")])
            .args(["--transport", &args.transport, "--count", &count.to_string()])
            .args(["--source", &source.to_string(), "--token", &token])
            .args(["--prefix", &format!("b{run_tag}-{w}"), "--concurrency", &args.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a generator")?;
        let stdout = child.stdout.take().context("generator stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((w, line)).is_err() {
                    return;
                }
            }
        });
        workers.push(child);
    }
    drop(tx);
    let mut progress = vec![0usize; workers_n];
    let mut done = vec![None::<(usize, usize)>; workers_n];
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("connections not up within 300 s");
        }
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((w, line)) => {
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.as_slice() {
                    ["progress", n] => progress[w] = n.parse().unwrap_or(0),
                    ["ready", ok, failed] => {
                        let ok: usize = ok.parse().unwrap_or(0);
                        progress[w] = ok;
                        done[w] = Some((ok, failed.parse().unwrap_or(0)));
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("a generator exited early"),
        }
        eprint!("\r  connected {:>7} / {}", progress.iter().sum::<usize>(), args.connections);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!();
    let ok: usize = done.iter().flatten().map(|d| d.0).sum();
    let failed: usize = done.iter().flatten().map(|d| d.1).sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<u64> = pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect();
    let up_rss: u64 = rss.iter().sum();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let end_rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
    let cpu: f64 = pids.iter().filter_map(|&p| cpu_seconds(p)).sum::<f64>() - base_cpu;
    let per_conn = |total: u64| (total.saturating_sub(base_rss)) as f64 / ok.max(1) as f64;
    println!("connections: {ok} up, {failed} failed, in {connect_secs:.2} s = {:.0} connects/s", ok as f64 / connect_secs);
    println!("server RSS: baseline {base_rss} KiB, with connections {up_rss} KiB (per process {rss:?})");
    println!(
        "server RSS per connection: {:.2} KiB after connect, {:.2} KiB after holding {} s",
        per_conn(up_rss),
        per_conn(end_rss),
        args.hold
    );
    println!("server CPU for connect + hold: {cpu:.2} s ({:.1} us per connection)", cpu * 1e6 / ok.max(1) as f64);
    let gen_rss: u64 = workers.iter().filter_map(|w| rss_kib(w.id())).sum();
    let gen_cpu: f64 = workers.iter().filter_map(|w| cpu_seconds(w.id())).sum();
    println!("generators ({} processes): RSS {gen_rss} KiB, CPU {gen_cpu:.2} s", workers.len());
    if let Some(r) = &private {
        println!(
            "private redis-server: RSS {} KiB, CPU {:.2} s",
            rss_kib(r.pid()).unwrap_or(0),
            cpu_seconds(r.pid()).unwrap_or(0.0)
        );
    }
    for mut w in workers {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    drop(servers);
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    if !args.target.ip().is_loopback() || !IpAddr::V4(args.source).is_loopback() {
        bail!("bench targets and sources must be on 127.0.0.0/8");
    }
    if args.count > 19_000 {
        bail!("a generator holds at most 19,000 connections");
    }
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let sem = sem.clone();
        let (token, client_id) = (args.token.clone(), format!("{}-{i}", args.prefix));
        let (target, source, ws) = (args.target, args.source, args.transport == "ws");
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let attempt = async {
                let socket = TcpSocket::new_v4().ok()?;
                // An explicit port: bind() to port 0 on a fixed address searches the
                // port space on every call, which turns 100k connects quadratic.
                socket.bind(SocketAddr::new(IpAddr::V4(source), 20_000 + i as u16)).ok()?;
                let stream = socket.connect(target).await.ok()?;
                let mut conn = if ws {
                    Connection::ws_over(stream, &format!("ws://{target}/")).await.ok()?
                } else {
                    Connection::from_tcp(stream)
                };
                conn.handshake(&token, &client_id, 0).await.ok()?;
                Some(conn)
            };
            tokio::time::timeout(Duration::from_secs(30), attempt).await.ok().flatten()
        });
    }
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut last = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Some(c)) => held.push(c),
            _ => failed += 1,
        }
        if last.elapsed() > Duration::from_millis(500) {
            println!("progress {}", held.len());
            last = Instant::now();
        }
    }
    println!("ready {} {failed}", held.len());
    // Hold until the coordinator closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(held);
    Ok(())
}
