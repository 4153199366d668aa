//! `duplex bench ...` runs `duplex-bench ...`, the load generators' own
//! binary (crate `duplex-bench`), so that the product binary carries none
//! of their code.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use clap::Args;

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// Arguments for `duplex-bench` (`duplex bench --help` lists its commands).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: BenchArgs) -> ExitCode {
    let bench = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("duplex-bench"),
        Err(e) => {
            eprintln!("duplex: cannot locate this binary: {e}");
            return ExitCode::from(71);
        }
    };
    // exec only returns on failure.
    let error = Command::new(&bench).args(&args.args).exec();
    eprintln!(
        "duplex: cannot run {}: {error} (build it: `cargo build --release --workspace`, or `-p duplex-bench`)",
        bench.display()
    );
    ExitCode::from(69)
}
