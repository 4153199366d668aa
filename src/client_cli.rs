//! `duplex client`: connects like an app, prints pushes as JSON lines on
//! stdout (connection events go to stderr), and exits non-zero with a readable
//! message when the first connection is refused (e.g. a bad token). With
//! `--request` or `--upload` it sends that one call instead, prints the answer
//! and exits.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use clap::Args;
use duplex_client::{Client, ClientOptions, Endpoint, Event};
use duplex_shared::protocol::{Frame, Request, Upload};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Endpoint(s): tcp://host:port, tls://host:port, ws://host:port/ or
    /// wss://host:port/ (repeat for fallbacks).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PEM file of a CA to trust for tls:// and wss:// besides the webpki roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// JWT to connect with.
    #[arg(long, env = "DUPLEX_TOKEN")]
    pub token: String,
    /// This client's id.
    #[arg(long, default_value = "cli")]
    pub client_id: String,
    /// Resume after this seq.
    #[arg(long, default_value_t = 0)]
    pub last_seq: u64,
    /// Send one request to this backend service, print the reply as a JSON line, and exit
    /// (0 for a 2xx reply, 1 otherwise).
    #[arg(long, value_name = "SERVICE", conflicts_with = "upload")]
    pub request: Option<String>,
    /// Send one upload to this backend service, print the ack as a JSON line, and exit
    /// (0 when accepted or spooled, 1 otherwise).
    #[arg(long, value_name = "SERVICE")]
    pub upload: Option<String>,
    /// Path of the request or upload.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Method of the request.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Body of the request or upload.
    #[arg(long, default_value = "")]
    pub body: String,
    /// Header `name=value` of the request or upload (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Longest wait for the answer, ms.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
}

/// The one call `duplex client` was asked to make, if any.
fn call_of(args: &ClientArgs) -> Result<Option<Frame>, String> {
    let mut headers = duplex_shared::protocol::Headers::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| format!("header {h:?}: use NAME=VALUE"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.to_owned());
    }
    let body = args.body.clone().into_bytes().into();
    Ok(match (&args.request, &args.upload) {
        (Some(service), _) => Some(Frame::Request(Request {
            id: 0,
            service: service.clone(),
            method: args.method.to_ascii_uppercase(),
            path: args.path.clone(),
            headers,
            body,
            timeout_ms: 0,
        })),
        (None, Some(service)) => Some(Frame::Upload(Upload {
            id: 0,
            service: service.clone(),
            path: args.path.clone(),
            headers,
            body,
        })),
        (None, None) => None,
    })
}

/// Makes `call` once connected and prints its answer; the exit code says how it went.
#[allow(clippy::print_stdout)]
async fn one_call(client: &Client, call: Frame, timeout: std::time::Duration) -> ExitCode {
    let answer = match call {
        Frame::Request(r) => tokio::time::timeout(timeout, client.request(r)).await.map(|r| {
            r.map(|reply| {
                let body = serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&reply.body) }));
                let ok = (200..300).contains(&reply.status);
                (
                    serde_json::json!({"id": reply.id, "status": reply.status, "headers": reply.headers, "body": body}),
                    ok,
                )
            })
        }),
        Frame::Upload(u) => tokio::time::timeout(timeout, client.upload(u)).await.map(|r| {
            r.map(|ack| {
                let ok = (200..300).contains(&ack.status);
                (
                    serde_json::json!({"id": ack.id, "status": ack.status, "spooled": ack.spooled}),
                    ok,
                )
            })
        }),
        _ => return ExitCode::from(70),
    };
    match answer {
        Ok(Ok((line, ok))) => {
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(e)) => {
            eprintln!("duplex client: {e}");
            ExitCode::from(65)
        }
        Err(_) => {
            eprintln!("duplex client: no answer within {} ms", timeout.as_millis());
            ExitCode::from(75)
        }
    }
}

#[allow(clippy::print_stdout)]
pub fn run(args: ClientArgs) -> ExitCode {
    let endpoints: Result<Vec<Endpoint>, _> = args.urls.iter().map(|u| Endpoint::parse(u)).collect();
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
    let call = match call_of(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("duplex client: {e}");
            return ExitCode::from(64);
        }
    };
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    let token = args.token.clone();
    let mut options = ClientOptions::new(endpoints, args.client_id, Arc::new(move || token.clone()));
    options.last_seq = args.last_seq;
    if let Some(ca) = &args.ca_file {
        match duplex_client::TlsClient::with_extra_ca(ca) {
            Ok(tls) => options.tls = Some(tls),
            Err(e) => {
                eprintln!("duplex client: {e}");
                return ExitCode::from(64);
            }
        }
    }
    runtime.block_on(async move {
        let mut client = Client::start(options);
        let mut connected_once = false;
        let stop = crate::signal::wait_for_signal(None);
        tokio::pin!(stop);
        loop {
            let event = tokio::select! {
                event = client.next() => event,
                () = &mut stop => {
                    // Ctrl-C or SIGTERM: the ack held for the last pushes goes out first.
                    client.close().await;
                    return ExitCode::SUCCESS;
                }
            };
            let Some(event) = event else { break };
            match event {
                Event::Connecting { endpoint } => eprintln!("connecting to {endpoint}"),
                Event::Connected { node_id, session_id } => {
                    connected_once = true;
                    eprintln!("connected to {node_id} (session {session_id})");
                    if let Some(call) = call.clone() {
                        let code = one_call(&client, call, timeout).await;
                        // A reply is a stored message: its ack goes out before the exit.
                        client.close().await;
                        return code;
                    }
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
                        drop(out);
                        client.close().await;
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
