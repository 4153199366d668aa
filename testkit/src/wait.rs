//! Waiting in tests, always bounded: for a client's next frame, for a
//! condition to hold.

use std::time::Duration;

use duplex_client::Connection;
use duplex_protocol::Frame;

/// Next frame within 5 s; `None` when the server closed.
pub async fn recv(conn: &mut Connection) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("a frame or a close within 5 s")
        .expect("readable")
}

/// Polls `check` every 10 ms for up to 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
