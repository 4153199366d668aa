//! Receives `messages` pushes with the SDK (acking them as it does by default)
//! and prints, as one JSON line, how long they took from the first to the
//! last. `sdk/js/bench/receive.mjs` runs it beside the TypeScript SDK's twin
//! (`sdk/js/bench/receiver.mjs`) on the same server and load.
//!
//!     receive <endpoint> <client_id> <token> <messages>
//!
//! It prints `ready` once connected, so the load starts after that.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use duplex_client::{Client, ClientOptions, Endpoint, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let usage = "usage: receive <endpoint> <client_id> <token> <messages>";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, client_id, token, messages] = args.as_slice() else {
        return Err(usage.into());
    };
    let endpoint = Endpoint::parse(endpoint).map_err(|e| e.to_string())?;
    let messages: usize = messages.parse().map_err(|_| usage)?;
    let token = token.clone();
    let mut client = Client::start(ClientOptions::new(
        vec![endpoint],
        client_id.clone(),
        Arc::new(move || token.clone()),
    ));
    let mut seen = HashSet::with_capacity(messages);
    let mut first: Option<Instant> = None;
    let mut reconnects = 0u32;
    while let Some(event) = client.next().await {
        match event {
            Event::Connected { .. } if reconnects == 0 => {
                reconnects += 1;
                say("ready");
            }
            Event::Connected { .. } => reconnects += 1,
            Event::Disconnected { reason } => eprintln!("rust receiver disconnected: {reason}"),
            Event::Push(p) => {
                first.get_or_insert_with(Instant::now);
                seen.insert(p.seq);
                if seen.len() == messages {
                    break;
                }
            }
            _ => {}
        }
    }
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    client.close().await;
    say(&format!(
        "{{\"received\":{},\"seconds\":{seconds},\"cpu_seconds\":{},\"connections\":{reconnects}}}",
        seen.len(),
        cpu_seconds()
    ));
    Ok(())
}

/// One line to the bench that reads this program's stdout.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// User + system CPU time of this process, from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (the first after the name is field 3); 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}
