//! `duplex bench request`: N clients send requests through Duplex to a
//! trivial local backend and wait for each reply (closed loop, one request in
//! flight per client, or `--in-flight` requests spread over all the clients
//! in turn); as many HTTP clients as requests in flight call the same backend
//! directly, in the same run. Reports requests/s and latency of both, and
//! what Duplex adds.
//!
//! The backend (`duplex bench backend`, hidden) and the duplex server run as
//! child processes on loopback; clients run in this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_client::Connection;
use duplex_node::config::DEV_SECRET;
use duplex_shared::protocol::{Ack, Frame, Request};
use hdrhistogram::Histogram;

use super::median;
use super::procfs::{cpu_seconds, machine_line, rss_kib};
use super::servers::{duplex_exe, free_ports, redis_for, start_duplex_with, Server};

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Requests in flight at once, each from the next client in turn (default:
    /// one per client). Fewer than `--clients` holds many connections open while
    /// the load stays what a backend pool takes; every client still sends.
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Requests per phase.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// How the Duplex clients connect: `tcp` (length-prefixed frames) or `ws`.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "ws"])]
    pub transport: String,
    /// Body of each request (an upload: POST with this many bytes; 0: a GET);
    /// at most 60 KiB, under the access tier's default frame limit.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Redis URL for the server (default: its in-memory store).
    #[arg(long, conflicts_with = "private_redis")]
    pub redis: Option<String>,
    /// Start a private `redis-server` on a free loopback port, and stop it after.
    #[arg(long)]
    pub private_redis: bool,
    /// Also send requests through this peer, same clients, in the same run:
    /// `pushpin` (WebSocket-over-HTTP; Debian package `pushpin`).
    #[arg(long, value_parser = ["pushpin"])]
    pub peer: Option<String>,
    /// Requests per peer phase (Pushpin is far slower: fewer keep the run short).
    #[arg(long, default_value_t = 20_000)]
    pub peer_requests: usize,
    /// Duplex and peer phases, alternating; medians and the median ratio are printed.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    #[arg(long)]
    pub port: u16,
}

/// The trivial backend: 200 with a small JSON body for every request, and
/// for Pushpin's WebSocket-over-HTTP calls the same body as each reply message.
pub async fn backend(args: BackendArgs) -> anyhow::Result<()> {
    use axum::http::{header::CONTENT_TYPE, HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    const EVENTS: &str = "application/websocket-events";
    let listener = duplex_shared::net::bind_listener(([127, 0, 0, 1], args.port).into(), 4096, false)?;
    let app = axum::Router::new().fallback(|headers: HeaderMap, body: bytes::Bytes| async move {
        if headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(EVENTS.as_bytes()))
        {
            return match super::request_peer::websocket_events(&body) {
                Ok(events) => ([(CONTENT_TYPE, EVENTS)], events).into_response(),
                Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
            };
        }
        ([(CONTENT_TYPE, "application/json")], super::request_peer::REPLY_BODY).into_response()
    });
    axum::serve(listener, app).await?;
    Ok(())
}

pub(crate) struct Phase {
    pub rps: f64,
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub cpu: f64,
}

impl Phase {
    fn line(&self, name: &str, requests: usize, rss_kib: Option<u64>) -> String {
        format!(
            "{name}: {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  max {:.2} ms  errors {}  CPU {:.2} s ({:.1} us per request){}",
            self.rps,
            self.hist.value_at_quantile(0.5) as f64 / 1000.0,
            self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            self.hist.max() as f64 / 1000.0,
            self.errors,
            self.cpu,
            self.cpu * 1e6 / requests as f64,
            rss_kib.map(|k| format!("  RSS {k} KiB")).unwrap_or_default()
        )
    }
}

#[allow(clippy::print_stdout)]
pub async fn run(args: RequestArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 10_000 || args.requests < args.clients {
        bail!("--clients within 1..=10000 and --requests at least --clients");
    }
    if args.body_bytes > 60 * 1024 {
        bail!("--body-bytes at most 61440 (the default max_frame_bytes is 64 KiB)");
    }
    let in_flight = args.in_flight.unwrap_or(args.clients);
    if in_flight == 0 || in_flight > args.clients {
        bail!("--in-flight within 1..=--clients");
    }
    if args.rounds == 0 || (args.peer.is_some() && args.peer_requests < in_flight) {
        bail!("--rounds must be positive and --peer-requests at least --in-flight");
    }
    let exe = duplex_exe()?;
    let generator = std::env::current_exe().context("locating the duplex-bench binary")?;
    let backend_port = free_ports()?.0;
    let backend = Server {
        child: std::process::Command::new(&generator)
            .args(["backend", "--port", &backend_port.to_string()])
            .spawn()
            .context("starting the bench backend")?,
        metrics_url: None,
    };
    let backend_pid = backend.child.id();
    let dir = std::env::temp_dir().join(format!("duplex-bench-request-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            "# Each bench client sends as fast as replies come back: lift the per-connection frame rate.\n[access]\nframe_rate_per_s = 1000000\nframe_burst = 1000000\n\n[upstream.services.bench]\nendpoints = [{{ url = \"http://127.0.0.1:{backend_port}\" }}]\nmax_concurrency = 4096\n"
        ),
    )?;
    let (private, redis_url) = redis_for(args.private_redis, &args.redis)?;
    let ports = free_ports()?;
    let servers = start_duplex_with(&exe, 1, ports, redis_url.as_deref(), Some(&config), "bench")?;
    let duplex_pid = servers[0].child.id();
    wait_for_port(backend_port).await?;
    let pushpin = match args.peer {
        Some(_) => Some(super::request_peer::start_pushpin(backend_port, &dir.join("pushpin")).await?),
        None => None,
    };
    println!("{}", machine_line());
    println!(
        "bench request: {} requests per phase, {} {} clients, {in_flight} requests in flight, {} body bytes, {} store",
        args.requests,
        args.clients,
        args.transport,
        args.body_bytes,
        if redis_url.is_some() { "redis" } else { "memory" }
    );

    // Warm both paths (connections, allocator), then measure them one after the other.
    direct(
        in_flight,
        args.body_bytes,
        backend_port,
        in_flight.min(1000) * 20,
        backend_pid,
    )
    .await?;
    let d = direct(in_flight, args.body_bytes, backend_port, args.requests, backend_pid).await?;
    println!("{}", d.line("direct  ", args.requests, None));
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        settle(&pushpin, &[duplex_pid, backend_pid]).await;
        let redis_cpu0 = private.as_ref().and_then(|r| cpu_seconds(r.pid())).unwrap_or(0.0);
        let x = through_duplex(&args, in_flight, ports, args.requests, (duplex_pid, backend_pid)).await?;
        let redis_cpu = private.as_ref().and_then(|r| cpu_seconds(r.pid())).unwrap_or(0.0) - redis_cpu0;
        println!("{}", x.line("duplex  ", args.requests, rss_kib(duplex_pid)));
        if private.is_some() {
            println!(
                "private redis-server CPU during the duplex phase: {redis_cpu:.2} s ({:.1} us per request)",
                redis_cpu * 1e6 / args.requests as f64
            );
        }
        if round == 0 {
            println!(
                "duplex adds: p50 +{:.3} ms, p99 +{:.3} ms; throughput ratio duplex/direct {:.2}",
                (x.hist.value_at_quantile(0.5) as f64 - d.hist.value_at_quantile(0.5) as f64) / 1000.0,
                (x.hist.value_at_quantile(0.99) as f64 - d.hist.value_at_quantile(0.99) as f64) / 1000.0,
                x.rps / d.rps
            );
            println!(
                "CPU per request: backend direct {:.1} us; duplex + backend {:.1} us",
                d.cpu * 1e6 / args.requests as f64,
                x.cpu * 1e6 / args.requests as f64
            );
        }
        if let Some(pushpin) = &pushpin {
            settle(&Some(pushpin), &[duplex_pid, backend_pid]).await;
            let p = super::request_peer::through_pushpin(
                pushpin,
                (args.clients, in_flight),
                args.peer_requests,
                backend_pid,
            )
            .await?;
            println!("{}", p.line("pushpin ", args.peer_requests, Some(pushpin.usage().1)));
            ratios.push(x.rps / p.rps.max(f64::MIN_POSITIVE));
            theirs.push(p.rps);
        }
        ours.push(x.rps);
    }
    if pushpin.is_some() {
        println!(
            "medians of {} rounds at {} clients, {in_flight} in flight: duplex {:.0} req/s, pushpin {:.0} req/s; ratio duplex/pushpin {:.2}x",
            args.rounds,
            args.clients,
            median(ours),
            median(theirs),
            median(ratios)
        );
    }
    drop((pushpin, servers, backend));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Waits (60 s at most) until the servers are idle: the last phase's clients
/// closed 10,000 connections, and Pushpin calls the backend for each close;
/// a phase started before that would share the cores with it.
async fn settle<P: std::borrow::Borrow<super::request_peer::Pushpin>>(pushpin: &Option<P>, pids: &[u32]) {
    let busy = || {
        pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>()
            + pushpin.as_ref().map_or(0.0, |p| p.borrow().usage().0)
    };
    let mut last = busy();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = busy();
        // Under 5% of one core over the last half second.
        if now - last < 0.025 {
            return;
        }
        last = now;
    }
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

pub(crate) fn new_hist() -> anyhow::Result<Arc<Mutex<Histogram<u64>>>> {
    Ok(Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?)))
}

pub(crate) fn take(hist: &Mutex<Histogram<u64>>) -> anyhow::Result<Histogram<u64>> {
    Ok(hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone())
}

/// `clients` HTTP clients calling the backend themselves.
async fn direct(
    clients: usize,
    body_bytes: usize,
    port: u16,
    requests: usize,
    backend_pid: u32,
) -> anyhow::Result<Phase> {
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("http://127.0.0.1:{port}/bench");
    let (hist, errors, next) = (new_hist()?, Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu0 = cpu_seconds(backend_pid).unwrap_or(0.0);
    let _progress = super::Progress::start("direct calls", next.clone(), requests as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, hist, errors, next, body) = (
            http.clone(),
            url.clone(),
            hist.clone(),
            errors.clone(),
            next.clone(),
            body.clone(),
        );
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                let t = Instant::now();
                let call = match body.is_empty() {
                    true => http.get(&url),
                    false => http.post(&url).body(body.clone()),
                };
                let ok = match call.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                record(&hist, t, ok, &errors);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let hist = take(&hist)?;
    Ok(Phase {
        rps: hist.len() as f64 / started.elapsed().as_secs_f64(),
        hist,
        errors: errors.load(Ordering::Relaxed),
        cpu: cpu_seconds(backend_pid).unwrap_or(0.0) - cpu0,
    })
}

pub(crate) fn record(hist: &Mutex<Histogram<u64>>, started: Instant, ok: bool, errors: &AtomicU64) {
    if !ok {
        errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Ok(mut h) = hist.lock() {
        let _ = h.record((started.elapsed().as_micros() as u64).max(1));
    }
}

/// `clients` Duplex clients sending request frames and acking the replies,
/// `in_flight` at a time (each worker sends from its share of the clients in turn).
async fn through_duplex(
    args: &RequestArgs,
    in_flight: usize,
    (tcp_port, ws_port, _): (u16, u16, u16),
    requests: usize,
    pids: (u32, u32),
) -> anyhow::Result<Phase> {
    let (clients, body) = (args.clients, bytes::Bytes::from(vec![b'x'; args.body_bytes]));
    let token = mint_hs256(DEV_SECRET, &dev_claims("bench", 3600))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let ws_url = format!("ws://127.0.0.1:{ws_port}/");
    let mut groups: Vec<Vec<Connection>> = (0..in_flight).map(|_| Vec::new()).collect();
    for i in 0..clients {
        let mut conn = match args.transport.as_str() {
            "ws" => Connection::ws(&ws_url).await,
            _ => Connection::tcp(addr).await,
        }
        .context("connecting a client")?;
        conn.handshake(&token, &format!("br-{i}"), 0)
            .await
            .context("handshake")?;
        groups[i % in_flight].push(conn);
    }
    let (hist, errors, next) = (new_hist()?, Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu0 = cpu_seconds(pids.0).unwrap_or(0.0) + cpu_seconds(pids.1).unwrap_or(0.0);
    let _progress = super::Progress::start("requests through duplex", next.clone(), requests as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut group in groups {
        let (hist, errors, next, body) = (hist.clone(), errors.clone(), next.clone(), body.clone());
        tasks.spawn(async move {
            let mut id = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                let size = group.len();
                let conn = &mut group[id as usize % size];
                id += 1;
                let t = Instant::now();
                let ok = round_trip(conn, id, &body).await;
                record(&hist, t, ok, &errors);
            }
        });
    }
    let bounded = tokio::time::timeout(Duration::from_secs(300), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if bounded.is_err() {
        bail!("the duplex phase did not finish within 300 s");
    }
    let hist = take(&hist)?;
    Ok(Phase {
        rps: hist.len() as f64 / started.elapsed().as_secs_f64(),
        hist,
        errors: errors.load(Ordering::Relaxed),
        cpu: cpu_seconds(pids.0).unwrap_or(0.0) + cpu_seconds(pids.1).unwrap_or(0.0) - cpu0,
    })
}

/// One request and its reply (acked); false on an error frame or a non-2xx reply.
async fn round_trip(conn: &mut Connection, id: u64, body: &bytes::Bytes) -> bool {
    let frame = Frame::Request(Request {
        id,
        service: "bench".into(),
        method: if body.is_empty() { "GET" } else { "POST" }.into(),
        path: "/bench".into(),
        headers: Default::default(),
        body: body.clone(),
        timeout_ms: 0,
    });
    if conn.send(&frame).await.is_err() {
        return false;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
            Ok(Ok(Some(Frame::Reply(r)))) if r.id == id => {
                let acked = conn.send(&Frame::Ack(Ack { id: r.seq, seq: r.seq })).await.is_ok();
                return acked && (200..300).contains(&r.status);
            }
            Ok(Ok(Some(Frame::Error(e)))) if e.id == Some(id) => {
                tracing::warn!(code = %e.code, message = %e.message, "request refused");
                return false;
            }
            Ok(Ok(Some(_))) => continue,
            _ => return false,
        }
    }
}
