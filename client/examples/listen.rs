//! Connects to a Duplex node and prints every push, reconnecting as needed.
//!
//!     TOKEN=$(cargo run -q -- token --sub alice)
//!     cargo run -p duplex-client --example listen -- tcp://127.0.0.1:7070 phone-1 "$TOKEN"

use std::sync::Arc;

use duplex_client::{Client, ClientOptions, Endpoint, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: listen <tcp://host:port | ws://host:port/> <client_id> <token>";
    let endpoint = Endpoint::parse(&args.next().ok_or(usage)?).map_err(|e| e.to_string())?;
    let client_id = args.next().ok_or(usage)?;
    let token = args.next().ok_or(usage)?;
    let mut client = Client::start(ClientOptions::new(
        vec![endpoint],
        client_id,
        Arc::new(move || token.clone()),
    ));
    while let Some(event) = client.next().await {
        match event {
            Event::Push(p) => eprintln!("push #{}: {}", p.seq, String::from_utf8_lossy(&p.payload)),
            other => eprintln!("{other:?}"),
        }
    }
    Ok(())
}
