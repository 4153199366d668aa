//! `duplex bench internal`: the candidate transports for calls between
//! nodes, side by side in one run, each carrying the same deliver call (a
//! push frame in wire encoding, decoded by the receiver, answered with a
//! status) with the same concurrency: HTTP/1.1 keep-alive with a connection
//! pool (what nodes use), HTTP/2 with prior knowledge (one multiplexed
//! connection), and Redis streams (XADD to the node's stream, the node reads
//! in batches and answers on the caller's reply list).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use clap::Args;
use duplex_shared::protocol::{decode_body, encode_body, Frame, Headers, Limits, Push};
use hdrhistogram::Histogram;
use redis::AsyncCommands;

#[derive(Debug, Args)]
pub struct InternalArgs {
    /// Calls per transport.
    #[arg(long, default_value_t = 50_000)]
    pub calls: u64,
    /// Callers in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Payload bytes of each pushed frame.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Redis for the streams variant (default: a private redis-server).
    #[arg(long)]
    pub redis: Option<String>,
}

fn frame(payload: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let push = Frame::Push(Push {
        seq: 1,
        msg_id: "bench~1~00000000".into(),
        headers: Headers::new(),
        payload: vec![b'x'; payload].into(),
        ack_now: false,
    });
    encode_body(&push, &mut body);
    body
}

async fn deliver(body: Bytes) -> StatusCode {
    match decode_body(&body, &Limits::default()) {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Runs `calls` calls of `one` over `concurrency` callers; calls/s and latency.
async fn drive<F, Fut>(name: &str, args: &InternalArgs, one: F) -> anyhow::Result<(f64, Histogram<u64>)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let _progress = super::Progress::start("calls", done.clone(), args.calls);
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..args.concurrency {
        let (one, done, share) = (one.clone(), done.clone(), args.calls / args.concurrency);
        callers.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            for _ in 0..share {
                let t = Instant::now();
                one(caller).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        });
    }
    let mut all = Histogram::<u64>::new(3)?;
    while let Some(h) = callers.join_next().await {
        all.add(h??)?;
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!("  {name}: {rate:.0} calls/s");
    Ok((rate, all))
}

// The report is the command's output.
#[allow(clippy::print_stdout)]
pub async fn run(args: InternalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.calls >= args.concurrency,
        "calls >= concurrency > 0"
    );
    let body = Bytes::from(frame(args.payload));
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse()?, 4096, false)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/internal/v1/deliver", axum::routing::post(deliver));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/internal/v1/deliver");

    let http1 = duplex_node::links::cluster::internal_http(Duration::from_secs(5), None)?;
    let (b, u) = (body.clone(), url.clone());
    let h1 = drive("http/1.1 keep-alive pool", &args, move |_| {
        let (c, b, u) = (http1.clone(), b.clone(), u.clone());
        async move {
            let r = c.post(u).body(b).send().await?;
            anyhow::ensure!(r.status() == StatusCode::NO_CONTENT, "answered {}", r.status());
            Ok(())
        }
    })
    .await?;

    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .tcp_nodelay(true)
        .build()?;
    let (b, u) = (body.clone(), url.clone());
    let h2 = drive("http/2 one connection", &args, move |_| {
        let (c, b, u) = (http2.clone(), b.clone(), u.clone());
        async move {
            let r = c.post(u).body(b).send().await?;
            anyhow::ensure!(r.status() == StatusCode::NO_CONTENT, "answered {}", r.status());
            Ok(())
        }
    })
    .await?;

    let private = match &args.redis {
        Some(_) => None,
        None => Some(duplex_testkit::TestRedis::start().map_err(anyhow::Error::msg)?),
    };
    let redis_url = args
        .redis
        .clone()
        .or(private.as_ref().map(|r| r.url()))
        .context("redis")?;
    let streams = streams(&redis_url, &args, body.clone()).await?;

    println!(
        "internal transport, {} calls of {} B frames, {} in flight:",
        args.calls,
        body.len(),
        args.concurrency
    );
    println!("| transport | calls/s | p50 us | p99 us | vs http/1.1 |");
    println!("|---|---|---|---|---|");
    for (name, (rate, h)) in [
        ("HTTP/1.1 keep-alive pool (used)", &h1),
        ("HTTP/2, one connection", &h2),
        ("Redis stream + reply list", &streams),
    ] {
        println!(
            "| {name} | {rate:.0} | {} | {} | {:.2}x |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            rate / h1.0
        );
    }
    Ok(())
}

/// The receiving node reads its stream in batches, decodes, and answers each
/// caller on that caller's list; callers block on their list (one connection each).
async fn streams(url: &str, args: &InternalArgs, body: Bytes) -> anyhow::Result<(f64, Histogram<u64>)> {
    let client = redis::Client::open(url)?;
    let prefix = format!("bench{:08x}:", rand::random::<u32>());
    let stream = format!("{prefix}node");
    let mut reader = client.get_multiplexed_async_connection().await?;
    let mut answers = client.get_multiplexed_async_connection().await?;
    let (s, p) = (stream.clone(), prefix.clone());
    let node = tokio::spawn(async move {
        let mut last = "0-0".to_owned();
        loop {
            let read: redis::streams::StreamReadReply = reader
                .xread_options(
                    &[&s],
                    &[&last],
                    &redis::streams::StreamReadOptions::default().count(256).block(1000),
                )
                .await?;
            let mut pipe = redis::pipe();
            for entry in read.keys.iter().flat_map(|k| &k.ids) {
                last = entry.id.clone();
                let caller: String = entry.get("c").unwrap_or_default();
                let frame: Vec<u8> = entry.get("f").unwrap_or_default();
                let status = if decode_body(&frame, &Limits::default()).is_ok() {
                    204
                } else {
                    400
                };
                pipe.lpush(format!("{p}reply:{caller}"), status).ignore();
                pipe.xdel(&s, &[&entry.id]).ignore();
            }
            let () = pipe.query_async(&mut answers).await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        callers.push(client.get_multiplexed_async_connection().await?);
    }
    let callers = Arc::new(callers.into_iter().map(tokio::sync::Mutex::new).collect::<Vec<_>>());
    let result = drive("redis stream + reply list", args, move |caller| {
        let (callers, body, stream, prefix) = (callers.clone(), body.clone(), stream.clone(), prefix.clone());
        async move {
            let mut conn = callers[caller as usize].lock().await;
            let _: String = conn
                .xadd(
                    &stream,
                    "*",
                    &[("c", caller.to_string().into_bytes()), ("f", body.to_vec())],
                )
                .await?;
            let answer: Option<(String, u16)> = conn.blpop(format!("{prefix}reply:{caller}"), 5.0).await?;
            anyhow::ensure!(answer.is_some_and(|(_, s)| s == 204), "no answer within 5 s");
            Ok(())
        }
    })
    .await;
    node.abort();
    result
}
