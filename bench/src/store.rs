//! `duplex bench store`: the message queue's own cost, without HTTP, sockets
//! or clients in the way. Drives one store through a message's life (store,
//! sent mark, ack; each client acks each message alone, as apps do; sent
//! marks go 1,024 per call, as the node writes them) with many concurrent
//! callers, phase by phase, and reports per message the messages/s,
//! this process's CPU and, for Redis, the server's CPU, commands and script
//! calls read from `INFO` around each phase. The memory store runs the same
//! phases in the same run as the reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use duplex_store::{Enqueued, MemoryStore, QueueLimits, RedisStore, Store};
use duplex_testkit::{message, random_prefix};

use super::procfs::{cpu_seconds, machine_line};

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Clients the messages are spread over (message i goes to client i mod N).
    #[arg(long, default_value_t = 1_000)]
    pub clients: u64,
    /// Messages stored, marked sent and acked.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Redis URL on this machine (default: a private redis-server on a free port).
    #[arg(long)]
    pub redis: Option<String>,
    /// Also run the Redis life cycle with every message asking for its
    /// expiry to be reported (`expired` events), next to the run without.
    #[arg(long)]
    pub report_expiry: bool,
}

/// Server-side counters of one Redis, read with `INFO`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RedisCounters {
    pub cpu_s: f64,
    pub commands: u64,
    pub script_calls: u64,
}

pub(super) async fn redis_counters(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<RedisCounters> {
    let info: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let script_calls = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(RedisCounters {
        cpu_s: field("used_cpu_sys") + field("used_cpu_user"),
        commands: field("total_commands_processed") as u64,
        script_calls,
    })
}

/// Runs `op(i)` for i in 0..count over `concurrency` callers; returns calls/s.
async fn drive<F, Fut>(count: u64, concurrency: u64, op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// One phase's figures per message.
struct Phase {
    name: &'static str,
    rate: f64,
    own_cpu_us: f64,
    redis: Option<(f64, f64, f64)>,
}

/// Sent marks per store call: the batch of the node's sent-mark writer
/// (`downstream/src/sent.rs`).
const SENT_MARKS_PER_CALL: u64 = 1_024;

/// Store, mark sent and ack `args.messages` messages on `store`.
async fn life_cycle(
    store: Arc<dyn Store>,
    args: &StoreArgs,
    mut redis: Option<redis::aio::MultiplexedConnection>,
    report_expiry: bool,
) -> anyhow::Result<Vec<Phase>> {
    let (clients, messages) = (args.clients, args.messages);
    let payload: Arc<[u8]> = vec![b'x'; args.payload].into();
    let now = duplex_store::now_ms();
    let limits = QueueLimits {
        max_messages: messages,
        max_bytes: u64::MAX / 2,
    };
    let client = move |i: u64| format!("bench-{}", i % clients);
    let pid = std::process::id();
    let mut phases = Vec::new();
    for name in ["store", "sent mark", "ack"] {
        let before = match redis.as_mut() {
            Some(conn) => Some(redis_counters(conn).await?),
            None => None,
        };
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        let s = store.clone();
        let rate = match name {
            "store" => {
                let payload = payload.clone();
                drive(messages, args.concurrency, move |i| {
                    let (s, payload) = (s.clone(), payload.clone());
                    async move {
                        let mut msg = message(&payload, now, now + 3_600_000);
                        msg.report_expiry = report_expiry;
                        match s.enqueue(&client(i), &msg, limits, now).await? {
                            Enqueued::Stored { .. } => Ok(()),
                            other => anyhow::bail!("not stored: {other:?}"),
                        }
                    }
                })
                .await?
            }
            // Message i is the (i / clients + 1)th of its client. Marks go in
            // batches, as the node's sent-mark writer sends them.
            "sent mark" => {
                let batches = messages.div_ceil(SENT_MARKS_PER_CALL);
                let rate = drive(batches, args.concurrency.min(batches), move |b| {
                    let s = s.clone();
                    async move {
                        let first = b * SENT_MARKS_PER_CALL;
                        let marks: Vec<(String, u64)> = (first..(first + SENT_MARKS_PER_CALL).min(messages))
                            .map(|i| (client(i), i / clients + 1))
                            .collect();
                        Ok(s.mark_sent_many(&marks, now).await?)
                    }
                })
                .await?;
                rate * messages as f64 / batches as f64
            }
            _ => {
                // Each client acks its messages one by one, in order; clients run concurrently.
                let per_client = messages.div_ceil(clients);
                let total = clients.min(messages);
                let rate = drive(total, args.concurrency.min(total), move |c| {
                    let s = s.clone();
                    async move {
                        for seq in 1..=per_client {
                            if (seq - 1) * clients + c < messages {
                                s.ack(&client(c), seq, now).await?;
                            }
                        }
                        Ok(())
                    }
                })
                .await?;
                rate * messages as f64 / total as f64
            }
        };
        let own_cpu_us = (cpu_seconds(pid).unwrap_or(0.0) - cpu) * 1e6 / messages as f64;
        let redis_figures = match (redis.as_mut(), before) {
            (Some(conn), Some(b)) => {
                let a = redis_counters(conn).await?;
                let per = |d: f64| d / messages as f64;
                Some((
                    per((a.cpu_s - b.cpu_s) * 1e6),
                    per((a.commands - b.commands) as f64),
                    per((a.script_calls - b.script_calls) as f64),
                ))
            }
            _ => None,
        };
        phases.push(Phase {
            name,
            rate,
            own_cpu_us,
            redis: redis_figures,
        });
    }
    let left = store.queue_info(&client(0), now).await?.pending;
    anyhow::ensure!(left == 0, "client 0 still has {left} pending after the acks");
    Ok(phases)
}

// The report is the command's output.
#[allow(clippy::print_stdout)]
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.messages > 0 && args.concurrency > 0,
        "clients, messages and concurrency must be positive"
    );
    let (_private, url) = super::servers::redis_for(args.redis.is_none(), &args.redis)?;
    let url = url.context("no Redis URL")?;
    anyhow::ensure!(
        loopback_url(&url),
        "only a Redis on this machine (127.0.0.0/8, localhost)"
    );
    println!("{}", machine_line());
    println!(
        "bench store: {} messages over {} clients, {} calls in flight, {}-byte payloads",
        args.messages, args.clients, args.concurrency, args.payload
    );
    let memory = life_cycle(Arc::new(MemoryStore::new()), &args, None, false).await?;
    let connect = || async {
        let store = RedisStore::connect(&url, &random_prefix()).await?;
        let conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        anyhow::Ok((Arc::new(store), conn))
    };
    let (store, conn) = connect().await?;
    let redis = life_cycle(store, &args, Some(conn), false).await?;
    let reporting = if args.report_expiry {
        let (store, conn) = connect().await?;
        Some(life_cycle(store, &args, Some(conn), true).await?)
    } else {
        None
    };
    println!("| phase | memory msgs/s | redis msgs/s | redis/memory | bench CPU per msg (memory / redis) | Redis CPU per msg | Redis commands per msg | script calls per msg |");
    println!("|---|---|---|---|---|---|---|---|");
    for (m, r) in memory.iter().zip(&redis) {
        let (cpu, cmds, scripts) = r.redis.unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.0} | {:.2}x | {:.1} / {:.1} us | {cpu:.1} us | {cmds:.2} | {scripts:.3} |",
            m.name,
            m.rate,
            r.rate,
            r.rate / m.rate,
            m.own_cpu_us,
            r.own_cpu_us
        );
    }
    if let Some(reporting) = reporting {
        println!();
        println!("With every message asking for its expiry to be reported (`expired` events), Redis:");
        println!("| phase | msgs/s | vs without | Redis CPU per msg (without) | Redis commands per msg (without) |");
        println!("|---|---|---|---|---|");
        for (with, without) in reporting.iter().zip(&redis) {
            let (cpu, cmds, _) = with.redis.unwrap_or_default();
            let (cpu0, cmds0, _) = without.redis.unwrap_or_default();
            println!(
                "| {} | {:.0} | {:.2}x | {cpu:.1} us ({cpu0:.1}) | {cmds:.2} ({cmds0:.2}) |",
                with.name,
                with.rate,
                with.rate / without.rate
            );
        }
    }
    Ok(())
}

/// Whether a Redis URL names this machine (every host of a cluster or Sentinel list).
pub(super) fn loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let hosts = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
    !hosts.is_empty()
        && hosts.split(',').all(|h| {
            let host = h.rsplit_once(':').map_or(h, |(host, _)| host);
            host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        })
}

#[cfg(test)]
mod tests {
    use super::loopback_url;

    #[test]
    fn only_loopback_redis_urls_are_taken() {
        for ok in [
            "redis://127.0.0.1:6379/",
            "redis://localhost:7000",
            "redis://:pw@127.0.0.2:1/0",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        ] {
            assert!(loopback_url(ok), "{ok}");
        }
        for bad in [
            "redis://10.0.0.1:6379/",
            "redis://redis.example.com",
            "redis+cluster://127.0.0.1:7000,10.0.0.2:7001",
            "nonsense",
            "redis://",
        ] {
            assert!(!loopback_url(bad), "{bad}");
        }
    }
}
