//! `duplex bench overload`: qos-1 pushes at twice the rate the server
//! sustains, for a minute, then at half that rate again. It answers three
//! questions: does the server's memory stay bounded by its configured queues
//! and listener bounds, are the pushes it cannot take refused (and counted)
//! rather than lost or left hanging, and how soon after the overload is the
//! latency back to normal.
//!
//! Phases, one second per report line: calibrate (closed loop, 64 calls in
//! flight: the sustained rate R), baseline (open loop at R/2: the normal p99),
//! overload (open loop at `--factor` x R), recovery (open loop at R/2). The
//! bench keeps at most `--max-in-flight` calls open (each on its own
//! connection); a call due while all are busy is skipped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use duplex_node::config::DEV_API_KEY;
use serde_json::json;

use super::http_load::LoadClient;
use super::median;
use super::procfs::{cpu_seconds, machine_line, rss_kib};
use super::push::{wall_us, ReceivingClients};
use super::servers::{duplex_exe, free_ports, redis_for, start_duplex};

#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// Connected clients acking their pushes (pushes go round-robin to them).
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Seconds of the closed-loop calibration.
    #[arg(long, default_value_t = 10)]
    pub calibrate_s: u64,
    /// Seconds at the overload rate.
    #[arg(long, default_value_t = 60)]
    pub overload_s: u64,
    /// The overload rate as a multiple of the calibrated rate.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// Seconds at half the calibrated rate after the overload.
    #[arg(long, default_value_t = 20)]
    pub recover_s: u64,
    /// Most push calls the bench keeps open at once (each on its own connection).
    #[arg(long, default_value_t = 8_192)]
    pub max_in_flight: usize,
    /// Redis URL for the server (default: its in-memory store).
    #[arg(long, conflicts_with = "private_redis")]
    pub redis: Option<String>,
    /// Start a private `redis-server` on a free loopback port, and stop it after.
    #[arg(long)]
    pub private_redis: bool,
}

/// Outcomes of the push calls, cumulative.
#[derive(Default)]
struct Outcomes {
    accepted: AtomicU64,
    queue_full: AtomicU64,
    server_full: AtomicU64,
    other_status: AtomicU64,
    /// No answer: the connection was refused or reset.
    no_answer: AtomicU64,
    skipped: AtomicU64,
}

impl Outcomes {
    fn record(&self, status: std::io::Result<u16>) {
        let counter = match status {
            Ok(202) => &self.accepted,
            Ok(429) => &self.queue_full,
            Ok(503) => &self.server_full,
            Ok(_) => &self.other_status,
            Err(_) => &self.no_answer,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 6] {
        [
            &self.accepted,
            &self.queue_full,
            &self.server_full,
            &self.no_answer,
            &self.skipped,
            &self.other_status,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

struct Bench {
    load: Arc<LoadClient>,
    readers: ReceivingClients,
    outcomes: Arc<Outcomes>,
    slots: Arc<tokio::sync::Semaphore>,
    clients: usize,
    pid: u32,
    next: Arc<AtomicU64>,
}

/// What one second of a phase came to.
struct Second {
    p99_ms: f64,
    rss_kib: u64,
}

impl Bench {
    fn spawn_push(&self) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.outcomes.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (load, outcomes, next, clients) = (
            self.load.clone(),
            self.outcomes.clone(),
            self.next.clone(),
            self.clients,
        );
        tokio::spawn(async move {
            push(&load, &outcomes, &next, clients).await;
            drop(slot);
        });
    }

    /// 64 calls in flight, each followed by the next as it returns, until dropped.
    fn closed_loop(&self) -> tokio::task::JoinSet<()> {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (load, outcomes, next, clients) = (
                self.load.clone(),
                self.outcomes.clone(),
                self.next.clone(),
                self.clients,
            );
            workers.spawn(async move {
                loop {
                    push(&load, &outcomes, &next, clients).await;
                }
            });
        }
        workers
    }

    /// Runs one phase: `rate` pushes per second (open loop), or 64 calls in
    /// flight when `None`; prints a line per second.
    #[allow(clippy::print_stdout)]
    async fn phase(&self, name: &str, rate: Option<f64>, secs: u64) -> Vec<Second> {
        let started = Instant::now();
        let mut seconds = Vec::new();
        let (mut sent, mut last) = (0u64, (self.outcomes.snapshot(), self.received()));
        self.take_p99();
        // Dropped at the end of the phase, which stops them.
        let _closed = rate.is_none().then(|| self.closed_loop());
        for s in 1..=secs {
            let end = started + Duration::from_secs(s);
            match rate {
                Some(rate) => {
                    while Instant::now() < end {
                        let due = (started.elapsed().as_secs_f64() * rate) as u64;
                        while sent < due {
                            self.spawn_push();
                            sent += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                None => tokio::time::sleep_until(end.into()).await,
            }
            let now = (self.outcomes.snapshot(), self.received());
            let d = |i: usize| now.0[i] - last.0[i];
            let second = Second {
                p99_ms: self.take_p99(),
                rss_kib: rss_kib(self.pid).unwrap_or(0),
            };
            println!(
                "  {name:<9} t={s:>3}s  accepted {:>6}  refused 429 {:>5} 503 {:>5}  no answer {:>4}  other {:>3}  skipped {:>5}  delivered {:>6}  p99 {:>8.2} ms  server RSS {:>7} KiB",
                d(0),
                d(1),
                d(2),
                d(3),
                d(5),
                d(4),
                now.1 - last.1,
                second.p99_ms,
                second.rss_kib
            );
            seconds.push(second);
            last = now;
        }
        seconds
    }

    fn received(&self) -> u64 {
        self.readers.received.load(Ordering::Relaxed)
    }

    /// p99 of the deliveries since the last call (ms), and starts a new window.
    fn take_p99(&self) -> f64 {
        let Ok(mut h) = self.readers.latency.lock() else {
            return 0.0;
        };
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        h.reset();
        p99
    }
}

/// One qos-1 push to the next client, its outcome recorded.
async fn push(load: &LoadClient, outcomes: &Outcomes, next: &AtomicU64, clients: usize) {
    let k = next.fetch_add(1, Ordering::Relaxed) as usize % clients;
    let body = json!({"client_ids": [format!("bp-{k}")], "payload": {"t": wall_us()}, "qos": 1});
    let body = serde_json::to_vec(&body).unwrap_or_default();
    outcomes.record(load.post_json("/v1/push", &body).await);
}

#[allow(clippy::print_stdout)]
pub async fn run(args: OverloadArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 15_000 || args.max_in_flight == 0 || args.max_in_flight > 15_000 {
        bail!("--clients and --max-in-flight within 1..=15000");
    }
    if !(args.factor > 0.0 && args.factor <= 100.0) || args.calibrate_s == 0 || args.overload_s == 0 {
        bail!("--factor within (0, 100], --calibrate-s and --overload-s positive");
    }
    let exe = duplex_exe()?;
    let (_private, redis_url) = redis_for(args.private_redis, &args.redis)?;
    let ports = free_ports()?;
    let servers = start_duplex(&exe, 1, ports, redis_url.as_deref())?;
    let pid = servers[0].child.id();
    println!("{}", machine_line());
    println!(
        "bench overload: {} clients, {} store; calibrate {} s, overload {}x for {} s, recover {} s; at most {} calls open",
        args.clients,
        if redis_url.is_some() { "redis" } else { "memory" },
        args.calibrate_s,
        args.factor,
        args.overload_s,
        args.recover_s,
        args.max_in_flight
    );
    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], ports.0));
    let bench = Bench {
        load: Arc::new(LoadClient::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], ports.2)),
            DEV_API_KEY,
        )),
        readers: ReceivingClients::connect(tcp, "bp", args.clients, duplex_client::DEFAULT_ACK_DELAY).await?,
        outcomes: Arc::new(Outcomes::default()),
        slots: Arc::new(tokio::sync::Semaphore::new(args.max_in_flight)),
        clients: args.clients,
        pid,
        next: Arc::new(AtomicU64::new(0)),
    };
    let rss_idle = rss_kib(pid).unwrap_or(0);
    let before = bench.received();
    bench.phase("calibrate", None, args.calibrate_s).await;
    let rate = (bench.received() - before) as f64 / args.calibrate_s as f64;
    println!("sustained: {rate:.0} pushes/s delivered (closed loop, 64 calls in flight)");
    let normal = median(
        bench
            .phase("baseline", Some(rate / 2.0), 10)
            .await
            .iter()
            .map(|s| s.p99_ms)
            .collect(),
    );
    println!("normal p99 at {:.0}/s: {normal:.2} ms", rate / 2.0);
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let outcomes0 = bench.outcomes.snapshot();
    let overload = bench.phase("overload", Some(rate * args.factor), args.overload_s).await;
    let o = bench.outcomes.snapshot();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let peak = overload.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "overload at {:.0}/s for {} s: accepted {}, refused {} (429 queue_full {}, 503 server_full {}), \
         no answer (connection refused or reset) {}, other status {}, \
         not sent (bench's {} calls all open) {}; server RSS idle {rss_idle} KiB, peak {peak} KiB; server CPU {cpu:.1} s",
        rate * args.factor,
        args.overload_s,
        o[0] - outcomes0[0],
        (o[1] - outcomes0[1]) + (o[2] - outcomes0[2]),
        o[1] - outcomes0[1],
        o[2] - outcomes0[2],
        o[3] - outcomes0[3],
        o[5] - outcomes0[5],
        args.max_in_flight,
        o[4] - outcomes0[4]
    );
    let recovery = bench.phase("recover", Some(rate / 2.0), args.recover_s).await;
    // Back to normal: the first second within 2x normal p99, and the one from
    // which every second stays there.
    let limit = 2.0 * normal.max(1.0);
    let first = recovery.iter().position(|s| s.p99_ms <= limit).map(|i| i + 1);
    let stays = (0..recovery.len())
        .find(|&i| recovery[i..].iter().all(|s| s.p99_ms <= limit))
        .map(|i| i + 1);
    let secs = |s: Option<usize>| s.map_or(format!("not within {} s", args.recover_s), |s| format!("{s} s"));
    println!(
        "p99 back within 2x normal ({limit:.2} ms) after the overload ended: first second {}, stays from {}",
        secs(first),
        secs(stays)
    );
    // Every accepted push must still arrive: wait (60 s at most) for the backlog.
    let accepted = bench.outcomes.snapshot()[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.received() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "accepted {accepted} pushes in all, delivered {} ({} missing)",
        bench.received(),
        accepted.saturating_sub(bench.received())
    );
    drop(servers);
    if bench.received() < accepted {
        bail!(
            "{} accepted pushes were not delivered within 60 s",
            accepted - bench.received()
        );
    }
    Ok(())
}
