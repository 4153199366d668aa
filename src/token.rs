//! `duplex token`: a development token from the configured secret.

use std::process::ExitCode;

use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_node::config::{Config, JwtAlgorithm, DEV_SECRET};

use crate::cli::TokenArgs;

#[allow(clippy::print_stdout)]
pub fn print(config: &Config, args: &TokenArgs) -> ExitCode {
    if config.auth.algorithm != JwtAlgorithm::HS256 {
        eprintln!(
            "duplex: `duplex token` mints HS256 tokens; the configured algorithm is {:?}",
            config.auth.algorithm
        );
        return ExitCode::from(64);
    }
    let secret = config.auth.secret.as_deref().unwrap_or(DEV_SECRET);
    match mint_hs256(secret, &dev_claims(&args.sub, args.ttl)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("duplex: cannot mint token: {e}");
            ExitCode::from(70)
        }
    }
}
