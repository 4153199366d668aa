//! `duplex bench push`: qos-1 pushes through the HTTP API to connected
//! clients, end to end (push call to client receipt), acked by the clients.
//!
//! A fresh duplex server (memory store, or Redis with `--private-redis` /
//! `--redis`) runs as a child process; N clients connect over TCP from this
//! process and ack every push. Each payload carries its send time, so the
//! latency is measured at receipt. Two rates: delivered (until the last
//! receipt) and acked (until the server has removed every message on the
//! clients' acks, read from its metrics): the second includes the ack work. Loads are bounded by `--messages`, and
//! open-loop when `--rate` is given. `--qos 0` pushes unstored messages
//! (nothing to ack); `--peer mosquitto` runs the same load against Mosquitto
//! too (`push_peer.rs`), alternating for `--rounds`, and prints the ratios.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_client::Connection;
use duplex_node::config::{DEV_API_KEY, DEV_SECRET};
use duplex_shared::protocol::{Ack, Frame};
use hdrhistogram::Histogram;
use serde_json::json;

use super::http_load::LoadClient;
use super::median;
use super::procfs::{cpu_seconds, machine_line, rss_kib};
use super::servers::{duplex_exe, free_ports, redis_for, start_duplex};
use super::store::{loopback_url, redis_counters};

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Connected clients (pushes go round-robin to distinct clients).
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Pushes to send.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Pushes per HTTP call: 1 uses `POST /v1/push`, more use `POST /v1/push/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// HTTP calls in flight at once (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: start this many pushes per second regardless of completions.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Redis URL for the server (default: its in-memory store).
    #[arg(long, conflicts_with = "private_redis")]
    pub redis: Option<String>,
    /// Start a private `redis-server` on a free loopback port, and stop it after.
    #[arg(long)]
    pub private_redis: bool,
    /// How long a client holds an ack for the pushes that follow (the SDK's
    /// `ack_delay`; default the SDK's default, 0 acks every burst at once).
    #[arg(long, default_value_t = duplex_client::DEFAULT_ACK_DELAY.as_millis() as u64)]
    pub ack_delay_ms: u64,
    /// 1: stored pushes, acked by the clients; 0: unstored, delivered to connected clients only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Also run the same clients and messages against this peer: `mosquitto`
    /// (qos-0 MQTT subscribers, one topic per client; Debian package `mosquitto`)
    /// or `nchan` (WebSocket subscribers, one channel per client, one HTTP publish
    /// per message; Debian packages `nginx`, `libnginx-mod-nchan`).
    #[arg(long)]
    pub peer: Option<String>,
    /// Runs of each (alternating which goes first); medians are compared.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// What one run came to, for comparing runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFigures {
    pub delivered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_msg: f64,
    pub rss_kib: u64,
}

impl RunFigures {
    /// From a run's count, wall time, server CPU seconds, RSS and latencies.
    pub(crate) fn of_run(got: u64, secs: f64, cpu_s: f64, rss_kib: u64, latency: &Histogram<u64>) -> Self {
        RunFigures {
            delivered_per_s: got as f64 / secs,
            p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
            cpu_us_per_msg: cpu_s * 1e6 / got.max(1) as f64,
            rss_kib,
        }
    }
}

/// The send time every bench payload carries (`{"t": <us since the epoch>}`).
#[derive(serde::Deserialize)]
pub(crate) struct Stamp {
    pub t: u64,
}

pub(crate) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)]
pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 15_000 || args.batch == 0 || args.batch > 100 || args.messages == 0 {
        bail!("--clients within 1..=15000, --batch within 1..=100, --messages positive");
    }
    if args.rounds == 0 {
        bail!("--rounds must be positive");
    }
    let Some(peer) = args.peer.clone() else {
        for _ in 0..args.rounds {
            run_duplex(&args).await?;
        }
        return Ok(());
    };
    let run_peer = |args: &PushArgs| {
        let args = args.clone();
        async move {
            match args.peer.as_deref() {
                Some("nchan") => super::push_peer::run_nchan(&args).await,
                _ => super::push_peer::run_mosquitto(&args).await,
            }
        }
    };
    if !["mosquitto", "nchan"].contains(&peer.as_str()) {
        bail!("--peer supports `mosquitto` and `nchan`");
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        println!("== round {}", round + 1);
        // Alternating, so neither always gets the warmer machine.
        if round % 2 == 0 {
            ours.push(run_duplex(&args).await?);
            theirs.push(run_peer(&args).await?);
        } else {
            theirs.push(run_peer(&args).await?);
            ours.push(run_duplex(&args).await?);
        }
    }
    let med = |v: &[RunFigures], f: fn(&RunFigures) -> f64| median(v.iter().map(f).collect());
    let rate = |r: &RunFigures| r.delivered_per_s;
    let cpu = |r: &RunFigures| r.cpu_us_per_msg;
    let p99 = |r: &RunFigures| r.p99_ms;
    let rss = |r: &RunFigures| r.rss_kib as f64;
    println!(
        "medians of {} rounds: duplex qos {} {:.0} msgs/s ({:.1} us server CPU per message, p99 {:.2} ms), \
         {peer} {:.0} msgs/s ({:.1} us, p99 {:.2} ms)",
        args.rounds,
        args.qos,
        med(&ours, rate),
        med(&ours, cpu),
        med(&ours, p99),
        med(&theirs, rate),
        med(&theirs, cpu),
        med(&theirs, p99),
    );
    println!(
        "ratio duplex/{peer}: delivered rate {:.2}x, server CPU per message {:.2}x, server RSS {:.2}x",
        med(&ours, rate) / med(&theirs, rate),
        med(&ours, cpu) / med(&theirs, cpu),
        med(&ours, rss) / med(&theirs, rss)
    );
    Ok(())
}

/// One run against a fresh duplex server.
#[allow(clippy::print_stdout)]
async fn run_duplex(args: &PushArgs) -> anyhow::Result<RunFigures> {
    let exe = duplex_exe()?;
    let (private, redis_url) = redis_for(args.private_redis, &args.redis)?;
    let ports = free_ports()?;
    let servers = start_duplex(&exe, 1, ports, redis_url.as_deref())?;
    let pid = servers[0].child.id();
    println!("{}", machine_line());
    println!(
        "bench push: {} qos-{} messages to {} clients, {} per call, {}, {} store, clients hold acks {} ms",
        args.messages,
        args.qos,
        args.clients,
        args.batch,
        args.rate
            .map_or(format!("{} calls in flight", args.concurrency), |r| format!(
                "open loop at {r} msgs/s"
            )),
        if redis_url.is_some() { "redis" } else { "memory" },
        args.ack_delay_ms
    );

    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], ports.0));
    let readers = ReceivingClients::connect(tcp, "bp", args.clients, Duration::from_millis(args.ack_delay_ms)).await?;
    let (received, hist) = (readers.received.clone(), readers.latency.clone());

    // For the server's metrics; the load goes through `LoadClient`.
    let http = reqwest::Client::new();
    let load = Arc::new(LoadClient::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], ports.2)),
        DEV_API_KEY,
    ));
    let calls = args.messages.div_ceil(args.batch);
    let errors = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    // Redis's own counters, when it runs on this machine (its CPU shares the cores).
    let mut redis_conn = match redis_url.as_deref().filter(|u| loopback_url(u)) {
        Some(url) => Some(redis::Client::open(url)?.get_multiplexed_async_connection().await?),
        None => None,
    };
    let redis_before = match redis_conn.as_mut() {
        Some(c) => Some(redis_counters(c).await?),
        None => None,
    };
    let base_cpu = cpu_seconds(pid).unwrap_or(0.0);
    let own_base_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let _progress = super::Progress::start("delivered", received.clone(), args.messages as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..calls {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64((c * args.batch) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        } else {
            let permit = sem.clone().acquire_owned().await?;
            let (load, errors) = (load.clone(), errors.clone());
            let (batch, clients, messages, qos) = (args.batch, args.clients, args.messages, args.qos);
            tasks.spawn(async move {
                send(&load, c, batch, clients, messages, qos, &errors).await;
                drop(permit);
            });
            continue;
        }
        let (load, errors) = (load.clone(), errors.clone());
        let (batch, clients, messages, qos) = (args.batch, args.clients, args.messages, args.qos);
        tasks.spawn(async move { send(&load, c, batch, clients, messages, qos, &errors).await });
    }
    while tasks.join_next().await.is_some() {}
    let accepted_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < args.messages as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    // Receipt is not the end of the work: the clients' acks may still be
    // queued. Wait until the server has removed every delivered message.
    let mut acked_secs = None;
    if let Some(url) = servers[0].metrics_url.as_ref().filter(|_| args.qos == 1) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if acked_count(&http, url).await.is_some_and(|n| n >= got) {
                acked_secs = Some(started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - base_cpu;
    let own_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - own_base_cpu;
    let redis_used = match (redis_conn.as_mut(), redis_before) {
        (Some(c), Some(before)) => Some((redis_counters(c).await?, before)),
        _ => None,
    };
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();
    println!(
        "accepted {} pushes in {accepted_secs:.2} s ({:.0}/s); delivered {got} in {total_secs:.2} s = {:.0} msgs/s; {} HTTP errors",
        args.messages,
        args.messages as f64 / accepted_secs,
        got as f64 / total_secs,
        errors.load(Ordering::Relaxed)
    );
    match acked_secs {
        _ if args.qos == 0 => {}
        Some(secs) => println!(
            "acked: all {got} removed from the store on the clients' acks in {secs:.2} s = {:.0} msgs/s",
            got as f64 / secs
        ),
        None => println!("acked: the server had not removed every delivered message within 60 s"),
    }
    println!(
        "latency push call -> client receipt: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    let rss = rss_kib(pid).unwrap_or(0);
    println!(
        "server: CPU {cpu:.2} s until {} ({:.1} us per message), RSS {rss} KiB",
        if args.qos == 1 { "acked" } else { "delivered" },
        cpu * 1e6 / got.max(1) as f64,
    );
    let figures = RunFigures::of_run(got, total_secs, cpu, rss, &h);
    if let Some(url) = &servers[0].metrics_url {
        // Reads the connections made to fill holes: deliveries that overtook
        // the ones under them cost a store read each.
        let holes = metric(&http, url, "duplex_sequencer_fetches_total{reason=\"hole\"} ").await;
        println!("store reads for out-of-order deliveries: {}", holes.unwrap_or(0));
    }
    let per_msg = |secs: f64| secs * 1e6 / got.max(1) as f64;
    println!(
        "bench (HTTP load and clients): CPU {own_cpu:.2} s ({:.1} us per message)",
        per_msg(own_cpu)
    );
    if let Some((after, before)) = redis_used {
        let cpu = after.cpu_s - before.cpu_s;
        let commands = after.commands.saturating_sub(before.commands);
        println!(
            "redis-server: CPU {cpu:.2} s ({:.1} us per message), {:.2} commands and {:.3} script calls per message",
            per_msg(cpu),
            commands as f64 / got.max(1) as f64,
            after.script_calls.saturating_sub(before.script_calls) as f64 / got.max(1) as f64
        );
    }
    if let Some(r) = &private {
        println!("private redis-server: RSS {} KiB", rss_kib(r.pid()).unwrap_or(0));
    }
    drop(readers);
    drop(servers);
    if got < args.messages as u64 {
        bail!(
            "{} of {} pushes were not delivered within 60 s",
            args.messages as u64 - got,
            args.messages
        );
    }
    Ok(figures)
}

/// Sends call number `c`: one push, or a batch of `batch` pushes to consecutive clients.
async fn send(load: &LoadClient, c: usize, batch: usize, clients: usize, messages: usize, qos: u8, errors: &AtomicU64) {
    let first = c * batch;
    let items: Vec<_> = (first..(first + batch).min(messages))
        .map(|k| json!({"client_ids": [format!("bp-{}", k % clients)], "payload": {"t": wall_us()}, "qos": qos}))
        .collect();
    let (url, body) = if batch == 1 {
        ("/v1/push", items[0].clone())
    } else {
        ("/v1/push/batch", json!({ "pushes": items }))
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    match load.post_json(url, &body).await {
        Ok(202) => {}
        _ => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `n` connected clients (`<prefix>-<i>`) reading pushes, counting them,
/// recording their latency and acking them as the SDK does.
pub(crate) struct ReceivingClients {
    pub received: Arc<AtomicU64>,
    pub latency: Arc<Mutex<Histogram<u64>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl ReceivingClients {
    pub async fn connect(
        tcp: std::net::SocketAddr,
        prefix: &str,
        n: usize,
        ack_delay: Duration,
    ) -> anyhow::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?));
        let token = mint_hs256(DEV_SECRET, &dev_claims("bench", 3600))?;
        let mut readers = Vec::with_capacity(n);
        for i in 0..n {
            let mut conn = Connection::tcp(tcp).await.context("connecting a client")?;
            conn.handshake(&token, &format!("{prefix}-{i}"), 0)
                .await
                .context("client handshake")?;
            readers.push(tokio::spawn(read_and_ack(
                conn,
                ack_delay,
                received.clone(),
                latency.clone(),
            )));
        }
        Ok(ReceivingClients {
            received,
            latency,
            readers,
        })
    }
}

impl Drop for ReceivingClients {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// One bench client: records each push's latency and acks as the SDK does:
/// the pushes already received are taken together, and their cumulative ack
/// waits `ack_delay` for the acks of the pushes that follow.
async fn read_and_ack(
    mut conn: Connection,
    ack_delay: Duration,
    received: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
) {
    let mut owed = 0u64;
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let got = match due {
            Some(at) => tokio::select! {
                got = conn.recv() => got,
                _ = tokio::time::sleep_until(at) => {
                    due = None;
                    if conn.send(&Frame::Ack(Ack { id: owed, seq: owed })).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            None => conn.recv().await,
        };
        let Ok(Some(frame)) = got else { return };
        let mut next = Some(frame);
        let mut ack = 0;
        while let Some(frame) = next.take() {
            if let Frame::Push(p) = frame {
                let now = wall_us();
                let sent = serde_json::from_slice::<Stamp>(&p.payload).map_or(now, |s| s.t);
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
                received.fetch_add(1, Ordering::Relaxed);
                ack = ack.max(p.seq);
            }
            next = conn.recv_buffered().ok().flatten();
        }
        if ack > owed {
            owed = ack;
            if ack_delay.is_zero() {
                if conn.send(&Frame::Ack(Ack { id: owed, seq: owed })).await.is_err() {
                    return;
                }
            } else {
                due.get_or_insert_with(|| tokio::time::Instant::now() + ack_delay);
            }
        }
    }
}

/// Messages the server removed on the clients' acks, from its metrics.
async fn acked_count(http: &reqwest::Client, metrics_url: &str) -> Option<u64> {
    metric(http, metrics_url, "duplex_messages_acked_total ").await
}

/// One series of the server's metrics (`name{labels} ` as written there).
async fn metric(http: &reqwest::Client, metrics_url: &str, series: &str) -> Option<u64> {
    let text = http.get(metrics_url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
