//! `duplex bench push --peer mosquitto|nchan`: the same clients and
//! payloads against a peer in the same invocation. Mosquitto: each client is an MQTT 3.1.1
//! subscriber of its own topic (`bp/<i>`, qos 0, clean session: Mosquitto
//! stores nothing), like a Duplex client connected for unicast pushes; the
//! messages go round-robin to the clients from publisher connections that
//! write them as fast as TCP takes them (qos 0 has no acks to pace on).
//! Each payload carries its send time, as the Duplex pushes do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::procfs::tree_usage;
use super::push::{wall_us, PushArgs, RunFigures};
use super::servers::{free_ports, start_mosquitto};

/// Publisher connections.
const PUBLISHERS: usize = 4;

/// What the subscribers of one run received; cheap to clone.
#[derive(Clone)]
struct Receipts {
    count: Arc<AtomicU64>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Receipts {
    fn new() -> anyhow::Result<Self> {
        Ok(Receipts {
            count: Arc::new(AtomicU64::new(0)),
            latency: Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?)),
        })
    }

    /// One message received: its latency from the send time in its payload.
    fn record(&self, payload: &[u8]) {
        let now = wall_us();
        let sent = serde_json::from_slice::<super::push::Stamp>(payload).map_or(now, |s| s.t);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(now.saturating_sub(sent).max(1));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until `n` arrived (60 s at most); how many did.
    async fn wait_for(&self, n: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count.load(Ordering::Relaxed)
    }

    fn figures(&self, got: u64, secs: f64, cpu_s: f64, rss_kib: u64) -> anyhow::Result<RunFigures> {
        let h = self
            .latency
            .lock()
            .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
        Ok(RunFigures::of_run(got, secs, cpu_s, rss_kib, &h))
    }
}

/// MQTT's variable-length "remaining length".
fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    remaining_length(2 + topic.len() + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// SUBSCRIBE to `topic` at qos 0, and its SUBACK.
async fn subscribe(stream: &mut TcpStream, topic: &str) -> anyhow::Result<()> {
    let mut packet = vec![0x82];
    remaining_length(2 + 2 + topic.len() + 1, &mut packet);
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic.as_bytes());
    packet.push(0);
    stream.write_all(&packet).await?;
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await?;
    if suback != [0x90, 0x03, 0x00, 0x01, 0x00] {
        bail!("SUBACK {suback:?}");
    }
    Ok(())
}

/// Reads PUBLISH packets until the connection ends: counts them and records
/// their latency from the stamp in the payload.
async fn read_publishes(stream: TcpStream, receipts: Receipts) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut body = Vec::new();
    loop {
        let Ok(kind) = reader.read_u8().await else { return };
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let Ok(byte) = reader.read_u8().await else { return };
            len |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        body.resize(len, 0);
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if kind >> 4 != 3 || body.len() < 2 {
            continue;
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        receipts.record(body.get(2 + topic_len..).unwrap_or_default());
    }
}

/// One run against a fresh Mosquitto.
#[allow(clippy::print_stdout)]
pub async fn run_mosquitto(args: &PushArgs) -> anyhow::Result<RunFigures> {
    let dir = std::env::temp_dir().join(format!("duplex-bench-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_ports()?.0;
    let server = start_mosquitto(port, &dir).await?;
    let pid = server.child.id();
    let receipts = Receipts::new()?;
    // Dropped at the end of the run, which stops every reader.
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .context("connecting a subscriber")?;
        let mut stream = super::worker::mqtt_connect(stream, &format!("bp-{i}"))
            .await
            .context("MQTT CONNECT refused")?;
        subscribe(&mut stream, &format!("bp/{i}")).await?;
        readers.spawn(read_publishes(stream, receipts.clone()));
    }
    let _progress = super::Progress::start("delivered", receipts.count.clone(), args.messages as u64);
    let (base_cpu, _) = tree_usage(pid);
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut stream = super::worker::mqtt_connect(stream, &format!("bp-publisher-{p}"))
            .await
            .context("MQTT CONNECT refused")?;
        let (clients, messages, batch) = (args.clients, args.messages, args.batch.max(1));
        publishers.spawn(async move {
            let mine: Vec<usize> = (p..messages).step_by(PUBLISHERS).collect();
            let mut out = Vec::with_capacity(batch * 64);
            for chunk in mine.chunks(batch) {
                out.clear();
                for k in chunk {
                    let payload = format!("{{\"t\":{}}}", wall_us());
                    publish(&format!("bp/{}", k % clients), payload.as_bytes(), &mut out);
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            // Held open until the readers are done: closing could drop what Mosquitto has not read.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
    }
    let got = receipts.wait_for(args.messages).await;
    let secs = started.elapsed().as_secs_f64();
    let (cpu_now, rss) = tree_usage(pid);
    let cpu = cpu_now - base_cpu;
    drop((publishers, readers, server));
    let _ = std::fs::remove_dir_all(&dir);
    let figures = receipts.figures(got, secs, cpu, rss)?;
    println!(
        "mosquitto: delivered {got} of {} in {secs:.2} s = {:.0} msgs/s; latency p50 {:.2} ms, p99 {:.2} ms; \
         server CPU {cpu:.2} s ({:.1} us per message), RSS {rss} KiB",
        args.messages, figures.delivered_per_s, figures.p50_ms, figures.p99_ms, figures.cpu_us_per_msg
    );
    if got < args.messages as u64 {
        bail!("mosquitto delivered {got} of {} within 60 s", args.messages);
    }
    Ok(figures)
}

/// One run against a fresh nginx with Nchan: each client a WebSocket
/// subscriber of its own channel (`/sub/bp<i>`), each message one HTTP POST
/// to its channel (`/pub/bp<i>`; Nchan has no batch publish), `--concurrency`
/// POSTs in flight on keep-alive connections.
#[allow(clippy::print_stdout)]
pub async fn run_nchan(args: &PushArgs) -> anyhow::Result<RunFigures> {
    use futures_util::StreamExt;

    let dir = std::env::temp_dir().join(format!("duplex-bench-nchan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_ports()?.0;
    let server = super::servers::start_nchan(port, &dir).await?;
    let pid = server.child.id();
    let receipts = Receipts::new()?;
    // Dropped at the end of the run, which stops every reader.
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/sub/bp{i}"))
            .await
            .context("connecting a WebSocket subscriber to Nchan")?;
        let receipts = receipts.clone();
        readers.spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let payload = match &message {
                    tokio_tungstenite::tungstenite::Message::Text(t) => t.as_bytes(),
                    tokio_tungstenite::tungstenite::Message::Binary(b) => b.as_ref(),
                    _ => continue,
                };
                receipts.record(payload);
            }
        });
    }
    let _progress = super::Progress::start("delivered", receipts.count.clone(), args.messages as u64);
    let (base_cpu, _) = tree_usage(pid);
    let load = Arc::new(super::http_load::LoadClient::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "unused",
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..args.messages {
        let permit = sem.clone().acquire_owned().await?;
        let (load, errors, clients) = (load.clone(), errors.clone(), args.clients);
        calls.spawn(async move {
            let body = format!("{{\"t\":{}}}", wall_us());
            match load
                .post_json(&format!("/pub/bp{}", k % clients), body.as_bytes())
                .await
            {
                Ok(status) if (200..300).contains(&status) => {}
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    while calls.join_next().await.is_some() {}
    let got = receipts.wait_for(args.messages).await;
    let secs = started.elapsed().as_secs_f64();
    let (cpu_now, rss) = tree_usage(pid);
    let cpu = cpu_now - base_cpu;
    drop((readers, server));
    let _ = std::fs::remove_dir_all(&dir);
    let figures = receipts.figures(got, secs, cpu, rss)?;
    println!(
        "nchan: delivered {got} of {} in {secs:.2} s = {:.0} msgs/s ({} publish errors); latency p50 {:.2} ms, \
         p99 {:.2} ms; nginx CPU {cpu:.2} s ({:.1} us per message), RSS {rss} KiB",
        args.messages,
        figures.delivered_per_s,
        errors.load(Ordering::Relaxed),
        figures.p50_ms,
        figures.p99_ms,
        figures.cpu_us_per_msg
    );
    if got < args.messages as u64 {
        bail!("nchan delivered {got} of {} within 60 s", args.messages);
    }
    Ok(figures)
}
