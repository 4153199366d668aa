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
mod bench;
mod cli;
mod client_cli;
mod cluster;
mod node;
mod registry;

use cli::{Cli, Command};

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
        Command::Run => {
            node::init_tracing(&config.log);
            node::run_all_in_one(config)
        }
        Command::Bench(cmd) => bench::run(cmd),
        Command::Client(args) => client_cli::run(args),
    }
}
