//! Load generators (`duplex bench ...`).

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> ExitCode {
    match cmd {}
}
