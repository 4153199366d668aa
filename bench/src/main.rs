//! `duplex-bench`: the load generators as their own binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    duplex_bench::run(duplex_bench::BenchCli::parse().command)
}
