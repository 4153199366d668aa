//! `duplex bench metrics`: what recording a metric costs on the hot path,
//! through `duplex_shared::metrics` (the node's handles over
//! prometheus-client's registry) next to prometheus-client's own metrics
//! used bare, in the same process: a counter increment and a latency
//! histogram observation, from 1 and from 2 threads at once (two threads on
//! one series is what a 2-core node does with `duplex_push_delivery_seconds`
//! under load). The first run of this bench compared the hand-written
//! registry the node had then (docs/BENCHMARKS.md); now it shows what the
//! handles add.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::median;
use duplex_shared::metrics::Metrics;
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Operations per thread and per case.
    #[arg(long, default_value_t = 20_000_000)]
    pub ops: u64,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// The bucket bounds `duplex_shared::metrics` uses, for a like-for-like histogram.
const BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// ns per operation with `threads` threads each running `op` `ops` times.
fn per_op(threads: usize, ops: u64, op: Arc<dyn Fn(u64) + Send + Sync>) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let op = op.clone();
            std::thread::spawn(move || {
                for i in 0..ops {
                    op(i);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    started.elapsed().as_nanos() as f64 / ops as f64
}

// The report is the command's output.
#[allow(clippy::print_stdout)]
pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.ops > 0 && args.rounds > 0, "ops and rounds must be positive");
    println!("{}", super::procfs::machine_line());
    println!(
        "bench metrics: {} operations per thread and case, median of {} rounds, ns per operation (wall time / ops per thread)",
        args.ops, args.rounds
    );
    let ours = Metrics::new();
    let our_counter = ours.counter("duplex_connects_total", &[("transport", "bench")]);
    let our_histogram = ours.histogram("duplex_push_delivery_seconds", &[]);
    let their_counter = PcCounter::<u64>::default();
    let their_histogram = PcHistogram::new(BUCKETS);
    // Latencies spread over the buckets, as a delivery histogram sees them.
    let latency = |i: u64| Duration::from_micros(100 + (i % 4096) * 50);
    type Op = Arc<dyn Fn(u64) + Send + Sync>;
    let cases: Vec<(&str, Op, Op)> = vec![
        (
            "counter +1",
            Arc::new(move |_| our_counter.inc()),
            Arc::new(move |_| {
                their_counter.inc();
            }),
        ),
        (
            "histogram observe",
            Arc::new(move |i| our_histogram.observe(latency(i))),
            Arc::new(move |i| their_histogram.observe(latency(i).as_secs_f64())),
        ),
    ];
    println!("| case | threads | duplex-shared ns/op | prometheus-client ns/op | prometheus-client / duplex-shared |");
    println!("|---|---|---|---|---|");
    for (name, ours, theirs) in &cases {
        for threads in [1, 2] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            // Alternating, so neither gets the warmer machine.
            for _ in 0..args.rounds {
                a.push(per_op(threads, args.ops, ours.clone()));
                b.push(per_op(threads, args.ops, theirs.clone()));
            }
            let (a, b) = (median(a), median(b));
            println!("| {name} | {threads} | {a:.1} | {b:.1} | {:.2}x |", b / a);
        }
    }
    Ok(())
}
