//! `duplex bench connect`: idle authenticated connections at scale.
//!
//! A process may hold at most ~19.9k sockets here, so a run starts several
//! server processes on one port (`SO_REUSEPORT`) and several generator
//! processes, each bound to its own 127.x.y.z source address; the address
//! changes every run so TIME_WAIT sockets of the last run never collide.
//! With `--peer mosquitto` the same load runs against Mosquitto in the same
//! invocation, and the report gives Duplex's figures as ratios to it.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_node::config::DEV_SECRET;

use super::procfs::{cpu_seconds, machine_line, rss_kib};
use super::servers::{duplex_exe, free_ports, redis_for, start_duplex, start_duplex_with, start_mosquitto, Server};

/// Connections one server process is asked to hold at most (fd limit 20,000).
const PER_SERVER: usize = 18_000;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// `tcp`, `ws`, `tls` or `wss`. With `tls` and `wss` the run is done twice on
    /// fresh servers, full handshakes then resumed sessions, and compared.
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
    /// Also run the same load against this peer and report ratios: `mosquitto` (one process,
    /// so at most 19,000 connections).
    #[arg(long)]
    pub peer: Option<String>,
    /// While holding, each connection sends a heartbeat this often (Duplex
    /// `ping`, MQTT PINGREQ) and reads the answer; the server CPU of the hold
    /// is reported per connection per second. 0: silent connections.
    #[arg(long, default_value_t = 0)]
    pub ping_every_ms: u64,
}

/// Figures of one target under load.
struct Outcome {
    ok: usize,
    failed: usize,
    connect_secs: f64,
    base_rss: u64,
    up_rss: u64,
    end_rss: u64,
    cpu: f64,
    /// Server CPU seconds between "all up" and the end of the hold, and how long that was.
    hold_cpu: f64,
    hold_secs: f64,
    /// Server RSS per connection at points along the way: (connected, KiB).
    along: Vec<(usize, f64)>,
    /// Heartbeats answered and not, over all generators.
    pings: (u64, u64),
}

impl Outcome {
    fn per_conn_kib(&self, rss: u64) -> f64 {
        rss.saturating_sub(self.base_rss) as f64 / self.ok.max(1) as f64
    }
}

#[allow(clippy::print_stdout)]
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    if !matches!(args.transport.as_str(), "tcp" | "ws" | "tls" | "wss") {
        bail!("--transport must be tcp, ws, tls or wss");
    }
    if args.connections == 0 || args.per_worker == 0 || args.per_worker > 19_000 {
        bail!("--connections must be positive and --per-worker within 1..=19000");
    }
    if let Some(peer) = &args.peer {
        if peer != "mosquitto" || args.connections > 19_000 {
            bail!("--peer supports `mosquitto`, with at most 19,000 connections (one process)");
        }
    }
    let exe = duplex_exe()?;
    let generator = std::env::current_exe().context("locating the duplex-bench binary")?;
    let (private, redis_url) = redis_for(args.private_redis, &args.redis)?;
    let servers_n = args.servers.unwrap_or(args.connections.div_ceil(PER_SERVER)).max(1);
    println!("{}", machine_line());
    println!(
        "bench connect: {} idle {} connections, {} duplex process(es), {} store",
        args.connections,
        args.transport,
        servers_n,
        if redis_url.is_some() { "redis" } else { "memory" }
    );

    if matches!(args.transport.as_str(), "tls" | "wss") {
        return measure_tls(&exe, &generator, &args, servers_n, redis_url.as_deref()).await;
    }
    let ports = free_ports()?;
    let servers = start_duplex(&exe, servers_n, ports, redis_url.as_deref())?;
    let port = if args.transport == "tcp" { ports.0 } else { ports.1 };
    let duplex = measure(&generator, &args, &servers, port, &args.transport, &[]).await?;
    drop(servers);
    report("duplex", &duplex, args.hold);
    if let Some(r) = &private {
        println!(
            "  private redis-server: RSS {} KiB, CPU {:.2} s",
            rss_kib(r.pid()).unwrap_or(0),
            cpu_seconds(r.pid()).unwrap_or(0.0)
        );
    }

    if args.peer.is_some() {
        let dir = std::env::temp_dir().join(format!("duplex-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = free_ports()?.0; // mosquitto needs one
        let server = start_mosquitto(port, &dir).await?;
        let peer = measure(&generator, &args, std::slice::from_ref(&server), port, "mqtt", &[]).await;
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        let peer = peer?;
        report("mosquitto", &peer, args.hold);
        println!(
            "ratio duplex/mosquitto: RSS per connection {:.2}x, connect rate {:.2}x, CPU per connection {:.2}x",
            duplex.per_conn_kib(duplex.end_rss) / peer.per_conn_kib(peer.end_rss).max(0.001),
            (duplex.ok as f64 / duplex.connect_secs) / (peer.ok as f64 / peer.connect_secs),
            (duplex.cpu / duplex.ok.max(1) as f64) / (peer.cpu / peer.ok.max(1) as f64).max(1e-9),
        );
    }
    if duplex.failed > 0 {
        bail!("{} connections failed", duplex.failed);
    }
    Ok(())
}

/// TLS or WSS: full handshakes, then resumed sessions, each on fresh
/// servers with a certificate from a CA made for the run.
#[allow(clippy::print_stdout)]
async fn measure_tls(
    exe: &Path,
    generator: &Path,
    args: &ConnectArgs,
    servers_n: usize,
    redis_url: Option<&str>,
) -> anyhow::Result<()> {
    let certs = duplex_testkit::TestCa::new("duplex bench CA").files(&["127.0.0.1"]);
    let (tls_port, wss_port, _) = free_ports()?;
    let config = certs.cert.with_file_name("duplex.toml");
    std::fs::write(
        &config,
        format!(
            "[access]\ntls_listen = \"127.0.0.1:{tls_port}\"\nwss_listen = \"127.0.0.1:{wss_port}\"\n\
             tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )?;
    let plain = if args.transport == "tls" { "tcp" } else { "ws" };
    let ca = certs.ca.to_string_lossy().into_owned();
    let mut outcomes = Vec::new();
    // The plain transport first, on servers configured the same, for the side-by-side ratios.
    for (name, transport, extra) in [
        ("plain", plain, vec![]),
        (
            "full handshakes",
            args.transport.as_str(),
            vec!["--ca-file", ca.as_str(), "--no-resumption"],
        ),
        (
            "resumed sessions",
            args.transport.as_str(),
            vec!["--ca-file", ca.as_str()],
        ),
    ] {
        let ports = free_ports()?;
        let port = match transport {
            "tcp" => ports.0,
            "ws" => ports.1,
            "tls" => tls_port,
            _ => wss_port,
        };
        let servers = start_duplex_with(exe, servers_n, ports, redis_url, Some(&config), "bench")?;
        let outcome = measure(generator, args, &servers, port, transport, &extra).await?;
        drop(servers);
        report(&format!("duplex {transport} ({name})"), &outcome, args.hold);
        outcomes.push(outcome);
    }
    let (plain, full, resumed) = (&outcomes[0], &outcomes[1], &outcomes[2]);
    let rate = |o: &Outcome| o.ok as f64 / o.connect_secs;
    let cpu = |o: &Outcome| o.cpu / o.ok.max(1) as f64;
    println!(
        "{} adds {:.2} KiB per idle connection to {}",
        args.transport,
        full.per_conn_kib(full.end_rss) - plain.per_conn_kib(plain.end_rss),
        plain_name(&args.transport)
    );
    println!(
        "ratio resumed/full: connect rate {:.2}x, server CPU per connection {:.2}x; full/plain connect rate {:.2}x",
        rate(resumed) / rate(full),
        cpu(resumed) / cpu(full).max(1e-9),
        rate(full) / rate(plain),
    );
    if full.failed + resumed.failed > 0 {
        bail!("{} connections failed", full.failed + resumed.failed);
    }
    Ok(())
}

fn plain_name(transport: &str) -> &'static str {
    if transport == "tls" {
        "plain TCP"
    } else {
        "plain WebSocket"
    }
}

#[allow(clippy::print_stdout)]
fn report(name: &str, o: &Outcome, hold: u64) {
    println!(
        "{name}: {} up, {} failed, in {:.2} s = {:.0} connects/s",
        o.ok,
        o.failed,
        o.connect_secs,
        o.ok as f64 / o.connect_secs
    );
    println!(
        "  server RSS: baseline {} KiB, with connections {} KiB; per connection {:.2} KiB after connect, {:.2} KiB after {hold} s",
        o.base_rss,
        o.end_rss,
        o.per_conn_kib(o.up_rss),
        o.per_conn_kib(o.end_rss)
    );
    println!(
        "  server CPU for connect + hold: {:.2} s ({:.1} us per connection)",
        o.cpu,
        o.cpu * 1e6 / o.ok.max(1) as f64
    );
    // Each point: the average so far, and what the connections since the
    // point before added each (the processes' fixed growth weighs on the first).
    let mut points = o.along.clone();
    points.push((o.ok, o.per_conn_kib(o.end_rss)));
    let mut before = (0usize, 0.0f64);
    let along: Vec<String> = points
        .iter()
        .map(|&(n, kib)| {
            let added = (kib * n as f64 - before.1) / n.saturating_sub(before.0).max(1) as f64;
            before = (n, kib * n as f64);
            format!("{n}: {kib:.2} ({added:.2} each since)")
        })
        .collect();
    if points.len() > 1 {
        println!(
            "  RSS per connection along the way (connected: KiB): {}",
            along.join(", ")
        );
    }
    println!(
        "  server CPU while holding: {:.2} s over {:.1} s = {:.3} us per connection per second; heartbeats {} answered, {} not",
        o.hold_cpu,
        o.hold_secs,
        o.hold_cpu * 1e6 / (o.ok.max(1) as f64 * o.hold_secs.max(1e-9)),
        o.pings.0,
        o.pings.1
    );
}

/// Opens the connections against running `servers` on `port` and measures them.
#[allow(clippy::print_stdout)]
async fn measure(
    exe: &Path,
    args: &ConnectArgs,
    servers: &[Server],
    port: u16,
    transport: &str,
    extra: &[&str],
) -> anyhow::Result<Outcome> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let base_rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
    let base_cpu: f64 = pids.iter().filter_map(|&p| cpu_seconds(p)).sum();
    let token = mint_hs256(DEV_SECRET, &dev_claims("bench", 3600))?;
    let run_tag: u8 = rand::random::<u8>().max(1);
    let workers_n = args.connections.div_ceil(args.per_worker);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    let started = Instant::now();
    for w in 0..workers_n {
        let count = args.per_worker.min(args.connections - w * args.per_worker);
        let source = Ipv4Addr::new(127, run_tag, (w / 250) as u8 + 1, (w % 250) as u8 + 2);
        let mut child = Command::new(exe)
            .args(["connect-worker", "--target", &format!("127.0.0.1:{port}")])
            .args(["--transport", transport, "--count", &count.to_string()])
            .args(["--source", &source.to_string(), "--token", &token])
            .args([
                "--prefix",
                &format!("b{run_tag}-{w}"),
                "--concurrency",
                &args.concurrency.to_string(),
            ])
            .args(["--ping-every-ms", &args.ping_every_ms.to_string()])
            .args(extra)
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
    // RSS is sampled when the count passes these: is it flat from the first 5k to the top?
    let mut marks: Vec<usize> = [
        5_000,
        args.connections / 4,
        args.connections / 2,
        args.connections * 3 / 4,
    ]
    .into_iter()
    .filter(|&m| m >= 5_000 && m < args.connections)
    .collect();
    marks.dedup();
    let mut along = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("connections not up within 300 s");
        }
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((w, line)) => match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["progress", n] => progress[w] = n.parse().unwrap_or(0),
                ["ready", ok, failed] => {
                    let ok: usize = ok.parse().unwrap_or(0);
                    progress[w] = ok;
                    done[w] = Some((ok, failed.parse().unwrap_or(0)));
                }
                _ => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("a generator exited early"),
        }
        let connected = progress.iter().sum::<usize>();
        if marks.first().is_some_and(|&m| connected >= m) {
            marks.remove(0);
            let rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
            along.push((connected, rss.saturating_sub(base_rss) as f64 / connected as f64));
        }
        eprint!("\r  connected {connected:>7} / {}", args.connections);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let up_rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
    let up_cpu: f64 = pids.iter().filter_map(|&p| cpu_seconds(p)).sum();
    let held_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let end_rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
    let end_cpu: f64 = pids.iter().filter_map(|&p| cpu_seconds(p)).sum();
    let hold_secs = held_from.elapsed().as_secs_f64();
    let cpu = pids.iter().filter_map(|&p| cpu_seconds(p)).sum::<f64>() - base_cpu;
    let gen_rss: u64 = workers.iter().filter_map(|w| rss_kib(w.id())).sum();
    let gen_cpu: f64 = workers.iter().filter_map(|w| cpu_seconds(w.id())).sum();
    println!("  generators for {transport} ({workers_n} processes): RSS {gen_rss} KiB, CPU {gen_cpu:.2} s");
    for mut w in workers {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    // Each generator's last line: how its heartbeats went (bounded wait for the readers).
    let mut pings = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(10);
    while let Ok((_, line)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        if let ["pinged", ok, failed] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
            pings.0 += ok.parse::<u64>().unwrap_or(0);
            pings.1 += failed.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(Outcome {
        ok: done.iter().flatten().map(|d| d.0).sum(),
        failed: done.iter().flatten().map(|d| d.1).sum(),
        connect_secs,
        base_rss,
        up_rss,
        end_rss,
        cpu,
        hold_cpu: end_cpu - up_cpu,
        hold_secs,
        along,
        pings,
    })
}
