//! The `duplex` binary: parses configuration, sets up logging, and hands over
//! to the tiers. Exit codes: 64 bad configuration or usage, 69 a dependency
//! (Redis) unavailable at start, 71 cannot bind a listener.

use std::process::ExitCode;

use clap::Parser;

// jemalloc: glibc malloc took ~38% of the CPU in the push benchmark (perf);
// jemalloc gave +25% Redis push throughput at the same memory per connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin;
mod admin_guard;
mod bench;
mod cli;
mod client_cli;
mod cluster;
mod node;
mod peers;
mod registry;
mod remote;

use cli::{Cli, Command};
use node::Tiers;

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli::load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Token(args) => node::print_token(&config, &args),
        Command::Run => run(config, Tiers::ALL),
        Command::Access => run(
            config,
            Tiers {
                access: true,
                ..Tiers::NONE
            },
        ),
        Command::Upstream => run(
            config,
            Tiers {
                upstream: true,
                ..Tiers::NONE
            },
        ),
        Command::Downstream => run(
            config,
            Tiers {
                downstream: true,
                ..Tiers::NONE
            },
        ),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Client(args) => client_cli::run(args),
    }
}

fn run(config: duplex_shared::config::Config, tiers: Tiers) -> ExitCode {
    node::init_tracing(&config.log);
    node::run(config, tiers)
}
