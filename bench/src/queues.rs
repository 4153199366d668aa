//! `duplex bench queues`: qos-1 pushes end to end (publish -> client receipt,
//! acked) through the HTTP push API and through each message-queue source
//! (NATS JetStream, RabbitMQ, Redis Streams), side by side in one run on one
//! server with the Redis store. Rounds alternate the paths; medians are
//! printed with the ratio to HTTP.
//!
//! Private `redis-server`, `nats-server -js` and `rabbitmq-server` run on free
//! loopback ports (Debian packages). Every path carries the same JSON (with an
//! idempotency key, which a queue requires) to the same clients; a path's
//! rate is its messages over the time from its first publish to its last receipt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use duplex_brokers::config::{AmqpSinkConfig, NatsSinkConfig, RedisSinkConfig};
use duplex_brokers::{connect_sink, Sink, SinkConfig};
use duplex_node::config::DEV_API_KEY;
use duplex_testkit::{TestNats, TestRabbit, TestRedis};
use hdrhistogram::Histogram;
use serde_json::json;

use super::http_load::LoadClient;
use super::median;
use super::procfs::{cpu_seconds, machine_cpu_seconds, machine_line};
use super::push::{wall_us, ReceivingClients};
use super::servers::{duplex_exe, free_ports, start_duplex_with};

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Connected clients (pushes go round-robin to distinct clients).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Pushes per path and round.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Publishes (or HTTP calls) in flight at once, per path.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds; each runs every path once, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Where a phase publishes.
enum Path {
    Http(Arc<LoadClient>),
    Queue(Arc<dyn Sink>),
}

struct Phase {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_us: f64,
    /// Share of all cores busy during the phase (every process: duplex, Redis, the broker, the bench).
    machine_busy: f64,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: QueuesArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 15_000 || args.messages == 0 || args.rounds == 0 || args.concurrency == 0 {
        bail!("--clients within 1..=15000; --messages, --rounds and --concurrency positive");
    }
    let exe = duplex_exe()?;
    let store = TestRedis::start().map_err(anyhow::Error::msg)?;
    let nats = TestNats::start().map_err(anyhow::Error::msg)?;
    let rabbit = TestRabbit::start().map_err(anyhow::Error::msg)?;
    let dir = std::env::temp_dir().join(format!("duplex-bench-queues-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            "[downstream]\nqueue_max_messages = 100000\nqueue_max_bytes = 104857600\n\n\
             [[downstream.sources]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"{}\"\nstream = \"BENCH\"\nsubject = \"bench.push\"\ndead_letter_subject = \"bench.dead\"\n\n\
             [[downstream.sources]]\nkind = \"amqp\"\nname = \"amqp\"\nurl = \"{}\"\nqueue = \"bench.push\"\ndead_letter_queue = \"bench.dead\"\n\n\
             [[downstream.sources]]\nkind = \"redis\"\nname = \"redis\"\nurl = \"{}\"\nstream = \"bench:push\"\ndead_letter_stream = \"bench:dead\"\n",
            nats.url(),
            rabbit.url(),
            store.url()
        ),
    )?;
    let ports = free_ports()?;
    let servers = start_duplex_with(&exe, 1, ports, Some(&store.url()), Some(&config), "bench")?;
    let pid = servers[0].child.id();
    println!("{}", machine_line());
    println!(
        "bench queues: {} qos-1 pushes per path and round to {} clients, {} in flight, {} rounds, redis store",
        args.messages, args.clients, args.concurrency, args.rounds
    );

    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], ports.0));
    let readers = ReceivingClients::connect(tcp, "bq", args.clients, duplex_client::DEFAULT_ACK_DELAY).await?;
    let (received, hist) = (readers.received.clone(), readers.latency.clone());

    let http = Path::Http(Arc::new(LoadClient::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], ports.2)),
        DEV_API_KEY,
    )));
    let sink = |c: SinkConfig| async move {
        connect_sink(&c)
            .await
            .map(Arc::from)
            .map(Path::Queue)
            .map_err(anyhow::Error::from)
    };
    let paths = [
        ("http", http),
        (
            "nats",
            sink(SinkConfig::Nats(NatsSinkConfig {
                ca_file: None,
                url: nats.url(),
                stream: "BENCH".into(),
                subject: "bench.push".into(),
            }))
            .await?,
        ),
        (
            "amqp",
            sink(SinkConfig::Amqp(AmqpSinkConfig {
                ca_file: None,
                url: rabbit.url(),
                queue: "bench.push".into(),
            }))
            .await?,
        ),
        (
            "redis",
            sink(SinkConfig::Redis(RedisSinkConfig {
                ca_file: None,
                url: store.url(),
                stream: "bench:push".into(),
                max_len: 10_000_000,
            }))
            .await?,
        ),
    ];
    let mut results: Vec<Vec<Phase>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, (name, path)) in paths.iter().enumerate() {
            let phase = phase(&args, round, name, path, &received, &hist, pid).await?;
            println!(
                "round {round} {name:>5}: {:>8.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms, duplex CPU {:.1} us/msg, cores busy {:.0}%",
                phase.rate,
                phase.p50_ms,
                phase.p99_ms,
                phase.server_us,
                phase.machine_busy * 100.0
            );
            results[i].push(phase);
        }
    }
    let http_rate = median(results[0].iter().map(|p| p.rate).collect());
    println!(
        "medians of {} rounds (ratio to the HTTP push API in the same run):",
        args.rounds
    );
    for ((name, _), phases) in paths.iter().zip(&results) {
        let rate = median(phases.iter().map(|p| p.rate).collect());
        println!(
            "  {name:>5}: {rate:>8.0} msgs/s ({:.2}x), p50 {:.2} ms, p99 {:.2} ms, duplex CPU {:.1} us/msg, cores busy {:.0}%",
            rate / http_rate.max(1.0),
            median(phases.iter().map(|p| p.p50_ms).collect()),
            median(phases.iter().map(|p| p.p99_ms).collect()),
            median(phases.iter().map(|p| p.server_us).collect()),
            median(phases.iter().map(|p| p.machine_busy * 100.0).collect()),
        );
    }
    drop(readers);
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn phase(
    args: &QueuesArgs,
    round: usize,
    name: &str,
    path: &Path,
    received: &Arc<AtomicU64>,
    hist: &Arc<Mutex<Histogram<u64>>>,
    pid: u32,
) -> anyhow::Result<Phase> {
    if let Ok(mut h) = hist.lock() {
        h.reset();
    }
    let base = received.load(Ordering::Relaxed);
    let target = base + args.messages as u64;
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let machine_before = machine_cpu_seconds().unwrap_or((0.0, 0.0));
    let errors = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..args.messages {
        let permit = sem.clone().acquire_owned().await?;
        let body = json!({
            "client_ids": [format!("bq-{}", k % args.clients)],
            "payload": {"t": wall_us()},
            "idempotency_key": format!("{name}-{round}-{k}"),
        })
        .to_string();
        let errors = errors.clone();
        match path {
            Path::Http(load) => {
                let load = load.clone();
                tasks.spawn(async move {
                    if !matches!(load.post_json("/v1/push", body.as_bytes()).await, Ok(202)) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
            Path::Queue(sink) => {
                let sink = sink.clone();
                tasks.spawn(async move {
                    if sink.publish(Bytes::from(body), &[]).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed).saturating_sub(base);
    let failed = errors.load(Ordering::Relaxed);
    if got < args.messages as u64 || failed > 0 {
        bail!(
            "{name}: {got} of {} delivered within 120 s, {failed} publishes failed",
            args.messages
        );
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let machine_after = machine_cpu_seconds().unwrap_or((0.0, 0.0));
    let machine_busy = (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(0.01);
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();
    Ok(Phase {
        rate: got as f64 / secs,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        server_us: cpu * 1e6 / got.max(1) as f64,
        machine_busy,
    })
}
