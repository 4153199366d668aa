//! One generator process of `bench connect`: opens its share of connections
//! from one 127.x.y.z source address, reports, and holds them until its
//! stdin closes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use duplex_client::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target: SocketAddr,
    /// `tcp`, `ws`, `tls`, `wss`, or `mqtt` (an MQTT 3.1.1 CONNECT, for the Mosquitto baseline).
    #[arg(long)]
    pub transport: String,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub source: Ipv4Addr,
    #[arg(long)]
    pub token: String,
    #[arg(long)]
    pub prefix: String,
    #[arg(long)]
    pub concurrency: usize,
    /// For `tls` and `wss`: the CA the servers' certificate is signed by.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// For `tls` and `wss`: a full handshake for every connection.
    #[arg(long)]
    pub no_resumption: bool,
    /// Once all are up, each connection sends a heartbeat this often (spread
    /// evenly over the connections) and reads its answer: Duplex `ping` /
    /// `pong`, MQTT PINGREQ / PINGRESP. 0: silent.
    #[arg(long, default_value_t = 0)]
    pub ping_every_ms: u64,
}

/// A held connection; only kept alive, never read.
enum Held {
    Duplex { _conn: Box<Connection> },
    Raw { _stream: TcpStream },
}

#[allow(clippy::print_stdout)]
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    if !args.target.ip().is_loopback() || !IpAddr::V4(args.source).is_loopback() {
        bail!("bench targets and sources must be on 127.0.0.0/8");
    }
    if args.count > 19_000 {
        bail!("a generator holds at most 19,000 connections");
    }
    // One TLS client for all of this generator's connections: with
    // resumption on, each full handshake leaves tickets the next ones use.
    let tls = match &args.ca_file {
        Some(ca) => {
            let tls = duplex_client::TlsClient::with_extra_ca(ca)?;
            Some(if args.no_resumption {
                tls.without_resumption()?
            } else {
                tls
            })
        }
        None => None,
    };
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let sem = sem.clone();
        let (token, client_id) = (args.token.clone(), format!("{}-{i}", args.prefix));
        let (target, source, transport, tls) = (args.target, args.source, args.transport.clone(), tls.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let attempt = async {
                let socket = TcpSocket::new_v4().ok()?;
                // A port of an earlier run may still be in TIME_WAIT on this address.
                socket.set_reuseaddr(true).ok()?;
                // An explicit port: bind() to port 0 on a fixed address searches the
                // port space on every call, which turns 100k connects quadratic.
                socket
                    .bind(SocketAddr::new(IpAddr::V4(source), 20_000 + i as u16))
                    .ok()?;
                let stream = socket.connect(target).await.ok()?;
                match transport.as_str() {
                    "mqtt" => mqtt_connect(stream, &client_id).await.map(|s| Held::Raw { _stream: s }),
                    "ws" => {
                        let mut conn = Connection::ws_over(stream, &format!("ws://{target}/")).await.ok()?;
                        conn.handshake(&token, &client_id, 0).await.ok()?;
                        Some(Held::Duplex { _conn: Box::new(conn) })
                    }
                    "tls" => {
                        let host = target.ip().to_string();
                        let mut conn = Connection::tls_over(stream, &host, tls.as_ref()?).await.ok()?;
                        conn.handshake(&token, &client_id, 0).await.ok()?;
                        Some(Held::Duplex { _conn: Box::new(conn) })
                    }
                    "wss" => {
                        let url = format!("wss://{target}/");
                        let mut conn = Connection::wss_over(stream, &url, tls.as_ref()?).await.ok()?;
                        conn.handshake(&token, &client_id, 0).await.ok()?;
                        Some(Held::Duplex { _conn: Box::new(conn) })
                    }
                    _ => {
                        let mut conn = Connection::from_tcp(stream);
                        conn.handshake(&token, &client_id, 0).await.ok()?;
                        Some(Held::Duplex { _conn: Box::new(conn) })
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), attempt)
                .await
                .ok()
                .flatten()
        });
    }
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut last = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Some(c)) => held.push(c),
            _ => failed += 1,
        }
        if last.elapsed() > Duration::from_millis(500) {
            println!("progress {}", held.len());
            last = Instant::now();
        }
    }
    println!("ready {} {failed}", held.len());
    // Hold until the coordinator closes our stdin, with heartbeats if asked.
    let stop = async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    };
    let (mut pinged, mut ping_failed) = (0u64, 0u64);
    if args.ping_every_ms > 0 && !held.is_empty() {
        let gap = Duration::from_millis(args.ping_every_ms) / u32::try_from(held.len()).unwrap_or(u32::MAX);
        let pinging = async {
            let mut tick = tokio::time::interval(gap.max(Duration::from_micros(20)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                for h in held.iter_mut() {
                    tick.tick().await;
                    match tokio::time::timeout(Duration::from_secs(5), h.ping()).await {
                        Ok(true) => pinged += 1,
                        _ => ping_failed += 1,
                    }
                }
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = pinging => {}
        }
    } else {
        stop.await;
    }
    println!("pinged {pinged} {ping_failed}");
    drop(held);
    Ok(())
}

impl Held {
    /// One heartbeat and its answer; `false` if the answer was not one.
    async fn ping(&mut self) -> bool {
        match self {
            Held::Duplex { _conn: conn } => {
                let ping = duplex_shared::protocol::Frame::Ping(duplex_shared::protocol::Ping { id: 1 });
                if conn.send(&ping).await.is_err() {
                    return false;
                }
                // A push may come first (none are sent in this bench): bounded.
                for _ in 0..4 {
                    match conn.recv().await {
                        Ok(Some(duplex_shared::protocol::Frame::Pong(_))) => return true,
                        Ok(Some(_)) => continue,
                        _ => return false,
                    }
                }
                false
            }
            Held::Raw { _stream: stream } => {
                let mut answer = [0u8; 2];
                stream.write_all(&[0xC0, 0x00]).await.is_ok()
                    && stream.read_exact(&mut answer).await.is_ok()
                    && answer == [0xD0, 0x00]
            }
        }
    }
}

/// MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s) and its CONNACK.
pub(crate) async fn mqtt_connect(mut stream: TcpStream, client_id: &str) -> Option<TcpStream> {
    let id = client_id.as_bytes();
    let mut packet = vec![0x10, (10 + 2 + id.len()) as u8];
    packet.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x02, 0x58]);
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    stream.write_all(&packet).await.ok()?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.ok()?;
    (connack == [0x20, 0x02, 0x00, 0x00]).then_some(stream)
}
