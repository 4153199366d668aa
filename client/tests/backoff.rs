//! Reconnect timing on tokio's paused clock: delays grow with full jitter and
//! follow the server's advice rather than the client's defaults.

use std::sync::Arc;
use std::time::Duration;

use duplex_client::{Client, ClientOptions, Endpoint, Event};
use duplex_protocol::{encode_tcp, Connected, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_the_servers_advice_with_jitter() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The fake server: the first connection gets `connected` advising 2..8 s and
    // is then closed; every later one is closed at once. It records accept times.
    let accepts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = accepts.clone();
    tokio::spawn(async move {
        for i in 0..8 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            seen.lock().expect("lock").push(Instant::now());
            if i == 0 {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let mut out = Vec::new();
                encode_tcp(
                    &Frame::Connected(Connected {
                        id: 1,
                        session_id: "s".into(),
                        node_id: "fake".into(),
                        heartbeat_ms: 600_000,
                        reconnect_min_ms: 2_000,
                        reconnect_max_ms: 8_000,
                        max_frame_bytes: 65_536,
                        token_expires_at: u64::MAX,
                        pong_deadline_ms: 5_000,
                    }),
                    &mut out,
                );
                let _ = sock.write_all(&out).await;
            }
            drop(sock);
        }
    });
    let mut options = ClientOptions::new(vec![Endpoint::Tcp(addr)], "c", Arc::new(|| "token".to_owned()));
    // Client defaults far above the advice: if they were used, delays would exceed 8 s.
    options.backoff_min = Duration::from_secs(60);
    options.backoff_max = Duration::from_secs(600);
    let mut client = Client::start(options);
    assert!(matches!(next_state(&mut client).await, Some(Event::Connected { .. })));
    for _ in 0..7 {
        assert!(matches!(
            next_state(&mut client).await,
            Some(Event::Disconnected { .. })
        ));
    }
    let times = accepts.lock().expect("lock").clone();
    assert!(times.len() >= 7, "{}", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (attempt, gap) in gaps.iter().enumerate() {
        let cap = Duration::from_millis(2_000 * (1u64 << attempt)).min(Duration::from_millis(8_000));
        assert!(
            *gap <= cap + Duration::from_millis(50),
            "attempt {attempt}: {gap:?} > {cap:?}"
        );
    }
    let distinct: std::collections::HashSet<_> = gaps.iter().map(|g| g.as_millis() / 10).collect();
    assert!(distinct.len() > 1, "delays are jittered: {gaps:?}");
    assert!(
        gaps.iter().any(|g| *g > Duration::from_millis(100)),
        "delays are not all zero: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reconnect_now_cuts_a_long_backoff_short() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = accepts.clone();
    // Every connection is closed at once: the client keeps backing off.
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen.lock().expect("lock").push(Instant::now());
            drop(sock);
        }
    });
    let mut options = ClientOptions::new(vec![Endpoint::Tcp(addr)], "c", Arc::new(|| "token".to_owned()));
    options.backoff_min = Duration::from_secs(600);
    options.backoff_max = Duration::from_secs(600);
    let mut client = Client::start(options);
    assert!(matches!(
        next_state(&mut client).await,
        Some(Event::Disconnected { .. })
    ));
    // Let the client enter its (up to 10 minute) backoff, then wake it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let woke_at = Instant::now();
    client.reconnect_now();
    assert!(matches!(
        next_state(&mut client).await,
        Some(Event::Disconnected { .. })
    ));
    let times = accepts.lock().expect("lock").clone();
    assert_eq!(times.len(), 2);
    assert!(times[1] - woke_at < Duration::from_secs(1), "{:?}", times[1] - woke_at);
}

/// The next event other than `Connecting`.
async fn next_state(client: &mut Client) -> Option<Event> {
    loop {
        match client.next().await {
            Some(Event::Connecting { .. }) => continue,
            other => return other,
        }
    }
}
