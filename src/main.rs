//! The `duplex` binary: parses configuration, sets up logging, and hands over
//! to `duplex-node` (or to the SDK for `duplex client`, to the bench crate
//! for `duplex bench`). Exit codes: 64 bad configuration or usage, 69 a
//! dependency (Redis) unavailable at start, 70 an internal failure, 71 cannot
//! bind a listener.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use duplex_node::config::{Config, LogConfig, OtelConfig};
use duplex_node::{Node, Tiers, Wiring};
use tracing::{info, warn};

// jemalloc: glibc malloc took ~38% of the CPU in the push benchmark (perf);
// jemalloc gave +25% Redis push throughput at the same memory per connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod cert;
mod cli;
mod client_cli;
mod env_keys;
mod otel;
mod signal;
mod token;

use cli::{Cli, Command};

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli::Loaded {
        mut config,
        ignored_variables: ignored,
    } = match cli::load_config(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::CheckConfig = command {
        return check_config(&mut config, &ignored);
    }
    if let Err(e) = config.validate() {
        eprintln!("duplex: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match command {
        Command::CheckConfig => check_config(&mut config, &ignored),
        Command::Token(args) => token::print(&config, &args),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Run => run(config, Tiers::ALL, &ignored),
        Command::Access => run(config, Tiers::ACCESS, &ignored),
        Command::Upstream => run(config, Tiers::UPSTREAM, &ignored),
        Command::Downstream => run(config, Tiers::DOWNSTREAM, &ignored),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Client(args) => client_cli::run(*args),
    }
}

/// `duplex check-config`: every problem at once on stderr, exit 64 if any.
fn check_config(config: &mut Config, ignored_variables: &[String]) -> ExitCode {
    for variable in ignored_variables {
        eprintln!("duplex: warning: {variable} names no configuration key and is ignored");
    }
    let problems = config.problems();
    for problem in &problems {
        eprintln!("duplex: {problem}");
    }
    if problems.is_empty() {
        let _ = writeln!(std::io::stdout(), "configuration OK");
        ExitCode::SUCCESS
    } else {
        eprintln!("duplex: {} problem(s) in the configuration", problems.len());
        ExitCode::from(EXIT_CONFIG)
    }
}

/// Log lines on stderr, and spans to an OTLP collector when `[otel]` says
/// so (each with its own filter: the log filter does not limit the export).
fn init_tracing(log: &LogConfig, otel: &OtelConfig) -> Result<Option<otel::Export>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    // Colours only for a person at a terminal: not in files, journald or a log collector.
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = if log.format == "json" {
        lines.json().with_filter(filter).boxed()
    } else {
        lines.with_filter(filter).boxed()
    };
    let registry = tracing_subscriber::registry().with(lines);
    match otel::layer(otel)? {
        Some((export_layer, export)) => {
            registry.with(export_layer).init();
            Ok(Some(export))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}

/// Runs a node until SIGTERM or Ctrl-C, then drains it.
fn run(config: Config, tiers: Tiers, ignored_variables: &[String]) -> ExitCode {
    let export = match init_tracing(&config.log, &config.otel) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let code = run_node(config, tiers, ignored_variables);
    if let Some(export) = export {
        export.shutdown();
    }
    code
}

fn run_node(config: Config, tiers: Tiers, ignored_variables: &[String]) -> ExitCode {
    for variable in ignored_variables {
        warn!(%variable, "ignoring an environment variable that names no configuration key (a typo, or another program's)");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    runtime.block_on(async move {
        let hangup = signal::keep_sighup();
        let node = match Node::start(config, tiers, Wiring::default()).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("duplex: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        // Whoever started us may have stopped reading stdout; that must not end the node.
        let _ = write!(std::io::stdout(), "{}", node.banner());
        signal::wait_for_signal(hangup).await;
        info!("signal received");
        match node.stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(70),
        }
    })
}
