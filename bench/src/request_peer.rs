//! `duplex bench request --peer pushpin`: the same clients and requests
//! through Pushpin's WebSocket-over-HTTP, in the same invocation. Each client
//! is a WebSocket connection to Pushpin; each request is one text message,
//! which Pushpin turns into an HTTP POST of `application/websocket-events` to
//! the same trivial backend, whose response carries the reply message back.
//! Closed loop, one request in flight per client, as the Duplex clients do.
//! Pushpin (Debian package `pushpin`, with its `zurl`) runs as child
//! processes on loopback, configured under a scratch directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::procfs::{cpu_seconds, tree_usage};
use super::request::{new_hist, record, take, Phase};
use super::servers::{free_ports, Server};

/// The backend's reply to each request, on both paths.
pub const REPLY_BODY: &str = "{\"ok\":true}";

/// What each Pushpin client sends as a request.
const REQUEST_BODY: &str = "{\"get\":\"/bench\"}";

/// Largest events body the backend answers (the bench's own messages are tiny).
const MAX_EVENTS: usize = 64 * 1024;

/// Attempts to open one Pushpin client before the phase fails.
const OPEN_TRIES: u32 = 20;

/// Connection attempts one Pushpin client may spend on reconnecting after resets.
const MAX_RECONNECTS: u32 = 1000;

type PeerSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Pushpin's WebSocket-over-HTTP from the backend's side: `body` is the
/// connection's events (`TYPE[ hex-length]\r\n[content\r\n]`); returns the
/// events to send back: `OPEN` accepts the connection, each text or binary
/// message gets one text reply, a `CLOSE` is echoed, a `PING` answered.
pub fn websocket_events(body: &[u8]) -> Result<Vec<u8>, &'static str> {
    if body.len() > MAX_EVENTS {
        return Err("events body too large");
    }
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("event line without CRLF")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "event line not UTF-8")?;
        rest = &rest[line_end + 2..];
        let (kind, content) = match line.split_once(' ') {
            Some((kind, hex)) => {
                let len = usize::from_str_radix(hex, 16).map_err(|_| "event length not hex")?;
                if rest.len() < len + 2 || &rest[len..len + 2] != b"\r\n" {
                    return Err("event content shorter than its length");
                }
                let content = &rest[..len];
                rest = &rest[len + 2..];
                (kind, Some(content))
            }
            None => (line, None),
        };
        match kind {
            "OPEN" => out.extend_from_slice(b"OPEN\r\n"),
            "TEXT" | "BINARY" => {
                out.extend_from_slice(format!("TEXT {:x}\r\n{REPLY_BODY}\r\n", REPLY_BODY.len()).as_bytes());
            }
            "CLOSE" => match content {
                Some(content) => {
                    out.extend_from_slice(format!("CLOSE {:x}\r\n", content.len()).as_bytes());
                    out.extend_from_slice(content);
                    out.extend_from_slice(b"\r\n");
                }
                None => out.extend_from_slice(b"CLOSE\r\n"),
            },
            "PING" => out.extend_from_slice(b"PONG\r\n"),
            _ => {}
        }
    }
    Ok(out)
}

/// Pushpin's runner (condure, pushpin-proxy, pushpin-handler) and zurl, its
/// HTTP client towards the backend; stopped on drop.
pub struct Pushpin {
    pub port: u16,
    runner: Server,
    zurl: Server,
}

impl Pushpin {
    /// CPU seconds and RSS (KiB) of every Pushpin process.
    pub fn usage(&self) -> (f64, u64) {
        let (a, b) = (tree_usage(self.runner.child.id()), tree_usage(self.zurl.child.id()));
        (a.0 + b.0, a.1 + b.1)
    }
}

/// Starts zurl and Pushpin under `dir`, routing every path to the backend
/// over WebSocket-over-HTTP. Its rate limiter is off (`message_rate=0`: its
/// default stalls sustained traffic); every ZeroMQ socket is an IPC path under
/// `dir`, so two runs never share one. The settings are those of
/// `../shared/peers/` (pushpin-norate.conf, zurl.conf).
pub async fn start_pushpin(backend_port: u16, dir: &Path) -> anyhow::Result<Pushpin> {
    let run = dir.join("run");
    std::fs::create_dir_all(&run)?;
    std::fs::create_dir_all(dir.join("log"))?;
    let r = run.display();
    let zurl_conf = dir.join("zurl.conf");
    std::fs::write(
        &zurl_conf,
        format!(
            "[General]\ninstance_id=\nin_spec=ipc://{r}/zurl-in\nin_stream_spec=ipc://{r}/zurl-in-stream\n\
             out_spec=ipc://{r}/zurl-out\nin_req_spec=ipc://{r}/zurl-req\nipc_file_mode=660\n\
             defpolicy=allow\nallow=\ndeny=\nmax_open_requests=2000\nbuffer_size=200000\ntimeout=600\n\
             in_hwm=1000\nout_hwm=1000\n"
        ),
    )?;
    // Debian's internal.conf expects zurl's sockets under /var/run/zurl; point them at ours.
    let internal = std::fs::read_to_string("/usr/lib/pushpin/internal.conf")
        .context("reading /usr/lib/pushpin/internal.conf (apt-get install pushpin)")?
        .replace("ipc:///var/run/zurl/", &format!("ipc://{r}/"));
    std::fs::write(dir.join("internal.conf"), internal)?;
    let (port, publish_port, _) = free_ports()?;
    let conf = dir.join("pushpin.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\ninclude={d}/internal.conf\nrundir={r}\nipc_prefix=pp-\nport_offset=0\n\
             stats_connection_ttl=120\n\n\
             [runner]\nservices=condure,pushpin-proxy,pushpin-handler\nhttp_port=127.0.0.1:{port}\n\
             logdir={d}/log\nlog_level=1\nclient_buffer_size=8192\nclient_maxconn=50000\n\
             condure_bin=condure\nmongrel2_bin=mongrel2\nm2sh_bin=m2sh\nzurl_bin=zurl\n\n\
             [proxy]\nroutesfile=routes\ndebug=false\nauto_cross_origin=false\n\
             accept_x_forwarded_protocol=false\nset_x_forwarded_protocol=proto-only\nx_forwarded_for=\n\
             x_forwarded_for_trusted=\norig_headers_need_mark=\naccept_pushpin_route=false\nlog_from=false\n\
             log_user_agent=false\nsig_iss=pushpin\nsig_key=changeme\nupstream_key=\nupdates_check=off\n\
             organization_name=\n\n\
             [handler]\npush_in_spec=ipc://{r}/push-in\npush_in_sub_specs=ipc://{r}/push-in-sub\n\
             push_in_sub_connect=false\npush_in_http_addr=127.0.0.1\npush_in_http_port={publish_port}\n\
             push_in_http_max_headers_size=10000\npush_in_http_max_body_size=1000000\n\
             stats_spec=ipc://{r}/pp-stats\ncommand_spec=ipc://{r}/command\nmessage_rate=0\n\
             message_hwm=25000\nmessage_wait=5000\nid_cache_ttl=60\nconnection_subscription_max=20\n\
             subscription_linger=60\nstats_subscription_ttl=60\nstats_report_interval=10\n\
             stats_format=tnetstring\n",
            d = dir.display()
        ),
    )?;
    std::fs::write(dir.join("routes"), format!("* 127.0.0.1:{backend_port},over_http\n"))?;
    let zurl = Server {
        child: Command::new("zurl")
            .arg(format!("--config={}", zurl_conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting zurl (apt-get install pushpin)")?,
        metrics_url: None,
    };
    let runner = Server {
        child: Command::new("pushpin")
            .arg("--config")
            .arg(&conf)
            .args(["--loglevel", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting pushpin (apt-get install pushpin)")?,
        metrics_url: None,
    };
    let pushpin = Pushpin { port, runner, zurl };
    // Ready when a WebSocket is accepted end to end (condure, proxy, zurl, backend).
    for _ in 0..200 {
        if let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/bench")),
        )
        .await
        {
            let _ = ws.close(None).await;
            return Ok(pushpin);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("pushpin did not accept a WebSocket on 127.0.0.1:{port}")
}

/// `clients` WebSocket clients sending `requests` messages through Pushpin and
/// waiting for each reply, `in_flight` at a time as in the Duplex phase. CPU is
/// Pushpin's (all its processes) plus the backend's.
#[allow(clippy::print_stdout)]
pub async fn through_pushpin(
    pushpin: &Pushpin,
    (clients, in_flight): (usize, usize),
    requests: usize,
    backend_pid: u32,
) -> anyhow::Result<Phase> {
    let url = format!("ws://127.0.0.1:{}/bench", pushpin.port);
    // Connected 64 at a time: each open is a backend call through zurl, which
    // Pushpin answers with 502 now and then under load; a client tries again.
    let mut groups: Vec<Vec<PeerSocket>> = (0..in_flight).map(|_| Vec::new()).collect();
    let mut opening = futures_util::stream::iter(0..clients)
        .map(|_| async {
            let mut tries = OPEN_TRIES;
            reconnect(&url, &mut tries).await
        })
        .buffer_unordered(64);
    let mut opened = 0;
    while let Some(ws) = opening.next().await {
        let ws = ws.with_context(|| format!("Pushpin refused a WebSocket {OPEN_TRIES} times"))?;
        groups[opened % in_flight].push(ws);
        opened += 1;
    }
    drop(opening);
    let (hist, errors, next) = (new_hist()?, Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reconnects = Arc::new(AtomicU64::new(0));
    let cpu0 = pushpin.usage().0 + cpu_seconds(backend_pid).unwrap_or(0.0);
    let _progress = super::Progress::start("requests through pushpin", next.clone(), requests as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut group in groups {
        let (hist, errors, next, reconnects, url) = (
            hist.clone(),
            errors.clone(),
            next.clone(),
            reconnects.clone(),
            url.clone(),
        );
        tasks.spawn(async move {
            let mut left = MAX_RECONNECTS;
            let mut turn = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                let size = group.len();
                let ws = &mut group[turn % size];
                turn += 1;
                let t = Instant::now();
                let ok = ws.send(Message::text(REQUEST_BODY)).await.is_ok() && reply(ws).await;
                record(&hist, t, ok, &errors);
                if ok {
                    continue;
                }
                // Pushpin resets some connections under load (its proxy cancels
                // the session); a mobile client connects again, so does this one.
                match reconnect(&url, &mut left).await {
                    Some(fresh) => {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        *ws = fresh;
                    }
                    None => return,
                }
            }
            for ws in &mut group {
                let _ = ws.close(None).await;
            }
        });
    }
    let bounded = tokio::time::timeout(Duration::from_secs(600), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if bounded.is_err() {
        bail!("the pushpin phase did not finish within 600 s");
    }
    let reconnects = reconnects.load(Ordering::Relaxed);
    if reconnects > 0 {
        println!("pushpin : {reconnects} connections reset by pushpin during the phase and opened again");
    }
    let (hist, errors) = (take(&hist)?, errors.load(Ordering::Relaxed));
    Ok(Phase {
        rps: hist.len() as f64 / started.elapsed().as_secs_f64(),
        hist,
        errors,
        cpu: pushpin.usage().0 + cpu_seconds(backend_pid).unwrap_or(0.0) - cpu0,
    })
}

/// A new connection in place of one Pushpin reset; `None` once `left` attempts are spent.
async fn reconnect(url: &str, left: &mut u32) -> Option<PeerSocket> {
    while *left > 0 {
        *left -= 1;
        if let Ok((fresh, _)) = tokio_tungstenite::connect_async(url).await {
            return Some(fresh);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The reply to one request: the next text message (30 s at most).
async fn reply(ws: &mut PeerSocket) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str() == REPLY_BODY,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_accepts_answers_and_echoes_close() {
        let out = websocket_events(b"OPEN\r\nTEXT 3\r\nabc\r\nPING\r\nCLOSE 2\r\n\x03\xe8\r\nCLOSE\r\n")
            .expect("well-formed events");
        assert_eq!(
            out,
            b"OPEN\r\nTEXT b\r\n{\"ok\":true}\r\nPONG\r\nCLOSE 2\r\n\x03\xe8\r\nCLOSE\r\n".to_vec()
        );
    }

    #[test]
    fn malformed_events_are_refused() {
        assert!(websocket_events(b"TEXT 5\r\nab\r\n").is_err());
        assert!(websocket_events(b"TEXT zz\r\nab\r\n").is_err());
        assert!(websocket_events(b"OPEN").is_err());
        assert!(websocket_events(&vec![b'x'; MAX_EVENTS + 1]).is_err());
    }
}
