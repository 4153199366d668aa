//! Load generators (`duplex-bench ...`, also run as `duplex bench ...`).
//! Every load is bounded in count and time and only ever targets
//! 127.0.0.0/8. They start `duplex` servers as child processes (the binary
//! next to `duplex-bench`), so the product binary carries none of this code
//! and none of the test support it uses (private Redis servers).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connect;
mod http_load;
mod internal;
mod metrics;
mod overload;
mod procfs;
mod push;
mod push_peer;
mod queues;
mod request;
mod request_peer;
mod servers;
mod store;
mod storm;
mod worker;

/// `duplex-bench`'s command line.
#[derive(Debug, Parser)]
#[command(name = "duplex-bench", version, about = "Duplex load generators (127.0.0.0/8 only)")]
pub struct BenchCli {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open N idle authenticated connections against freshly started duplex
    /// servers and report server RSS per connection and the connect rate.
    Connect(connect::ConnectArgs),
    /// Push qos-1 messages through the HTTP API to connected clients and report
    /// delivered msgs/s and end-to-end latency.
    Push(push::PushArgs),
    /// Send requests through duplex to a trivial local backend and, in the same
    /// run, straight to it; report requests/s, latency, and what duplex adds.
    Request(request::RequestArgs),
    /// A reconnect storm: N SDK clients on node A move to node B when A drains;
    /// progress every second and the distribution of the move.
    Storm(storm::StormArgs),
    /// Compare transports for calls between nodes (HTTP/1.1 pool, HTTP/2,
    /// Redis streams) carrying the same deliver call, side by side.
    Internal(internal::InternalArgs),
    /// Push through the HTTP API and through each message-queue source (NATS
    /// JetStream, RabbitMQ, Redis Streams) side by side, Redis store; msgs/s and ratios.
    Queues(queues::QueuesArgs),
    /// The message queue's own cost per message (store, sent mark, ack) on the
    /// memory store and Redis side by side, without HTTP or clients.
    Store(store::StoreArgs),
    /// Pushes at twice the sustained rate for a minute, then at half: server
    /// RSS, refusals counted, and how soon latency is back to normal.
    Overload(overload::OverloadArgs),
    /// What recording a metric costs: Duplex's registry next to prometheus-client.
    Metrics(metrics::MetricsArgs),
    /// Internal: the trivial backend of `bench request`.
    #[command(hide = true)]
    Backend(request::BackendArgs),
    /// Internal: one generator process of `bench connect`.
    #[command(hide = true)]
    ConnectWorker(worker::WorkerArgs),
}

/// The middle of `v` (the upper one of an even count; 0 when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Prints `label done / total` on stderr every second until dropped.
pub(crate) struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    pub fn start(label: &'static str, done: std::sync::Arc<std::sync::atomic::AtomicU64>, total: u64) -> Self {
        Progress(tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let n = done.load(std::sync::atomic::Ordering::Relaxed).min(total);
                eprintln!(
                    "  t={:>5.1}s  {label} {n:>8} / {total}",
                    started.elapsed().as_secs_f64()
                );
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn run(cmd: BenchCommand) -> ExitCode {
    // The push bench's clients and load run on one thread: on a 2-core
    // machine shared with the server and Redis, a second worker mostly added
    // cross-thread wakeups (measured: ~1.3 us less bench CPU per message).
    let mut builder = match cmd {
        BenchCommand::Push(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex bench: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let result = match cmd {
        BenchCommand::Connect(args) => runtime.block_on(connect::run(args)),
        BenchCommand::Push(args) => runtime.block_on(push::run(args)),
        BenchCommand::Request(args) => runtime.block_on(request::run(args)),
        BenchCommand::Storm(args) => runtime.block_on(storm::run(args)),
        BenchCommand::Internal(args) => runtime.block_on(internal::run(args)),
        BenchCommand::Store(args) => runtime.block_on(store::run(args)),
        BenchCommand::Metrics(args) => runtime.block_on(metrics::run(args)),
        BenchCommand::Overload(args) => runtime.block_on(overload::run(args)),
        BenchCommand::Queues(args) => runtime.block_on(queues::run(args)),
        BenchCommand::Backend(args) => runtime.block_on(request::backend(args)),
        BenchCommand::ConnectWorker(args) => runtime.block_on(worker::worker(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duplex bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
