//! `duplex bench storm`: a reconnect storm. N SDK clients connect to node A;
//! node A is drained (SIGTERM: every client gets `go_away` with a delay
//! spread over the go-away window) and the clients move to node B, which
//! shares A's Redis. Prints progress every second (clients back, latency of
//! the move so far from HdrHistogram) and the final distribution: how long
//! clients were away, and how evenly the window spread the reconnects.
//! With `--kill`, node A is SIGKILLed instead: no `go_away`, the clients see
//! their sockets close and come back on their own, spread only by the
//! reconnect backoff the server advised in `connected`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_client::{Client, ClientOptions, Endpoint, Event};
use duplex_node::config::DEV_SECRET;
use hdrhistogram::Histogram;

use super::procfs::machine_line;
use super::servers::{duplex_exe, free_ports, start_duplex_with};

#[derive(Debug, Args)]
pub struct StormArgs {
    /// SDK clients (one connection each; at most 15,000 in this process).
    #[arg(long, default_value_t = 2_000)]
    pub clients: usize,
    /// The go-away window node A spreads reconnects over, ms.
    #[arg(long, default_value_t = 5_000)]
    pub window_ms: u64,
    /// SIGKILL node A instead of draining it.
    #[arg(long)]
    pub kill: bool,
}

type Shared = Arc<Mutex<Histogram<u64>>>;

#[allow(clippy::print_stdout)]
pub async fn run(args: StormArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 15_000 || args.window_ms == 0 {
        bail!("--clients within 1..=15000 and a positive --window-ms");
    }
    let exe = duplex_exe()?;
    let redis = duplex_testkit::TestRedis::start().map_err(anyhow::Error::msg)?;
    let dir = std::env::temp_dir().join(format!("duplex-bench-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("duplex.toml");
    std::fs::write(&config, format!("[access]\ngoaway_window_ms = {}\n", args.window_ms))?;
    let (ports_a, ports_b) = (free_ports()?, free_ports()?);
    let a = start_duplex_with(&exe, 1, ports_a, Some(&redis.url()), Some(&config), "storm-a")?;
    let b = start_duplex_with(&exe, 1, ports_b, Some(&redis.url()), Some(&config), "storm-b")?;
    println!("{}", machine_line());
    let how = if args.kill {
        "SIGKILLed (clients back off as the server advised)".to_owned()
    } else {
        format!("drained with a {} ms go-away window", args.window_ms)
    };
    println!(
        "bench storm: {} SDK clients on node A, {how}, move to node B (private Redis)",
        args.clients
    );

    let token = mint_hs256(DEV_SECRET, &dev_claims("storm", 3600))?;
    let endpoints = vec![
        Endpoint::Tcp(([127, 0, 0, 1], ports_a.0).into()),
        Endpoint::Tcp(([127, 0, 0, 1], ports_b.0).into()),
    ];
    let away: Shared = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?));
    let back_at: Shared = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?));
    let (connected, moved) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Clients whose first connection was to node A: the ones that must move.
    let on_a = Arc::new(AtomicU64::new(0));
    let drained_at = Arc::new(Mutex::new(None::<Instant>));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let token = token.clone();
        let mut options = ClientOptions::new(endpoints.clone(), format!("storm-{i}"), Arc::new(move || token.clone()));
        options.backoff_min = Duration::from_millis(100);
        let (away, back_at, connected, moved, drained_at, on_a) = (
            away.clone(),
            back_at.clone(),
            connected.clone(),
            moved.clone(),
            drained_at.clone(),
            on_a.clone(),
        );
        tasks.spawn(async move {
            let mut client = Client::start(options);
            // A first attempt refused under the connect burst (over the node's
            // pre-auth cap) is retried by the SDK: it is no move.
            let mut was_connected = false;
            let mut left: Option<Instant> = None;
            while let Some(event) = client.next().await {
                match event {
                    Event::Connected { node_id, .. } if !was_connected => {
                        was_connected = true;
                        if node_id.starts_with("storm-a") {
                            on_a.fetch_add(1, Ordering::Relaxed);
                        }
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Connected { .. } => {
                        let now = Instant::now();
                        if let (Some(l), Ok(mut h)) = (left, away.lock()) {
                            let _ = h.record(now.duration_since(l).as_micros().max(1) as u64);
                        }
                        let start = drained_at.lock().ok().and_then(|d| *d);
                        if let (Some(s), Ok(mut h)) = (start, back_at.lock()) {
                            let _ = h.record(now.duration_since(s).as_micros().max(1) as u64);
                        }
                        moved.fetch_add(1, Ordering::Relaxed);
                        // Stay connected (quietly) until the bench ends.
                        while client.next().await.is_some() {}
                        return;
                    }
                    Event::Disconnected { .. } if was_connected && left.is_none() => left = Some(Instant::now()),
                    _ => {}
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < args.clients as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} clients connected within 120 s",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signal = if args.kill { "-KILL" } else { "-TERM" };
    // Under the connect burst node A refuses some first attempts (its pre-auth
    // cap) and the SDK tries node B: those start there and do not move.
    let expected = on_a.load(Ordering::Relaxed);
    println!(
        "{} clients connected, {expected} of them to node A; kill {signal} it",
        args.clients
    );
    let pid = a[0].child.id().to_string();
    *drained_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(Instant::now());
    std::process::Command::new("kill").args([signal, &pid]).status()?;
    let started = Instant::now();
    let limit = Duration::from_millis(args.window_ms) + Duration::from_secs(60);
    let (mut before, mut peak) = (0u64, 0u64);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = moved.load(Ordering::Relaxed);
        peak = peak.max(n - before);
        before = n;
        let h = back_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        println!(
            "t={:>4.1}s  back on node B {n:>6}/{}  since the signal: p50 {:.2} s  p99 {:.2} s  max {:.2} s",
            started.elapsed().as_secs_f64(),
            expected,
            h.value_at_quantile(0.5) as f64 / 1e6,
            h.value_at_quantile(0.99) as f64 / 1e6,
            h.max() as f64 / 1e6
        );
        if n >= expected || started.elapsed() > limit {
            break;
        }
    }
    let n = moved.load(Ordering::Relaxed);
    let away = away.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    println!(
        "moved {n}/{} clients; peak reconnect rate {peak}/s; time away (disconnected -> connected to B): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        expected,
        away.value_at_quantile(0.5) as f64 / 1e6,
        away.value_at_quantile(0.99) as f64 / 1e6,
        away.max() as f64 / 1e6
    );
    // Node A is exiting after its drain; dropping it waits for that.
    drop(a);
    tasks.abort_all();
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    if n < expected {
        bail!("{} clients did not reach node B", expected - n);
    }
    Ok(())
}
