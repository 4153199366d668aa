//! `duplex client`: connects like an app, prints pushes as JSON lines on
//! stdout (connection events go to stderr), and exits non-zero with a readable
//! message when the first connection is refused (e.g. a bad token).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use clap::Args;
use duplex_client::{Client, ClientOptions, Endpoint, Event};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Endpoint(s): tcp://host:port or ws://host:port/ (repeat for fallbacks).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// JWT to connect with.
    #[arg(long, env = "DUPLEX_TOKEN")]
    pub token: String,
    /// This client's id.
    #[arg(long, default_value = "cli")]
    pub client_id: String,
    /// Resume after this seq.
    #[arg(long, default_value_t = 0)]
    pub last_seq: u64,
}

#[allow(clippy::print_stdout)]
pub fn run(args: ClientArgs) -> ExitCode {
    let endpoints: Result<Vec<Endpoint>, String> = args.urls.iter().map(|u| Endpoint::parse(u)).collect();
    let endpoints = match endpoints {
        Ok(e) => e,
        Err(e) => {
            eprintln!("duplex client: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex client: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let token = args.token.clone();
    let mut options = ClientOptions::new(endpoints, args.client_id, Arc::new(move || token.clone()));
    options.last_seq = args.last_seq;
    runtime.block_on(async move {
        let mut client = Client::start(options);
        let mut connected_once = false;
        while let Some(event) = client.next().await {
            match event {
                Event::Connected { node_id, session_id } => {
                    connected_once = true;
                    eprintln!("connected to {node_id} (session {session_id})");
                }
                Event::Disconnected { reason } if !connected_once => {
                    eprintln!("duplex client: cannot connect: {reason}");
                    return ExitCode::from(if reason.contains("token") { 77 } else { 69 });
                }
                Event::Disconnected { reason } => eprintln!("disconnected: {reason}; reconnecting"),
                Event::Push(p) => {
                    let payload = serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap_or_else(|_| {
                        serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&p.payload) })
                    });
                    let line = serde_json::json!({
                        "seq": p.seq, "msg_id": p.msg_id, "headers": p.headers, "payload": payload
                    });
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return ExitCode::SUCCESS;
                    }
                }
                Event::Gap(g) => eprintln!("gap: messages {}..={} {}", g.from, g.to, g.reason),
                Event::Replaced => {
                    eprintln!("duplex client: replaced by another connection of this client id");
                    return ExitCode::from(75);
                }
            }
        }
        ExitCode::SUCCESS
    })
}
