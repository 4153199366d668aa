//! A live connection's token expires: the client is told, may refresh it
//! in-band, and is closed after the grace if it does not (paused clock).

mod common;

use std::time::Duration;

use common::*;
use duplex_access::auth::{dev_claims, mint_hs256, unix_now};
use duplex_client::Connection;
use duplex_shared::protocol::{Frame, Ping, Refresh};
use tokio::time::Instant;

fn token_for(user: &str, ttl_s: u64) -> String {
    mint_hs256(SECRET, &dev_claims(user, ttl_s)).expect("mint")
}

async fn next(conn: &mut Connection) -> Frame {
    conn.recv().await.expect("readable").expect("a frame")
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_refreshed_in_band_or_the_connection_closes() {
    for via in [Via::Tcp, Via::Ws] {
        // Heartbeats far apart, so only the token decides here.
        let node = start_node(StoreKind::Memory, |c| {
            c.heartbeat_ms = 3_600_000;
            c.route_ttl_ms = 7_200_000;
        })
        .await;
        let mut conn = node.open(via).await;
        let hello = conn
            .handshake(&token_for("alice", 120), "phone-1", 0)
            .await
            .expect("connected");
        assert!(hello.token_expires_at.abs_diff(unix_now() + 120) <= 2, "{hello:?}");

        let started = Instant::now();
        let Frame::Error(warning) = next(&mut conn).await else {
            panic!("{via:?}: expected a warning")
        };
        assert_eq!(
            (warning.code.as_str(), warning.close, warning.retry),
            ("token_expired", false, true)
        );
        assert!(started.elapsed() >= Duration::from_secs(115), "{:?}", started.elapsed());

        // Another user's token does not take over the connection ...
        let theirs = Frame::Refresh(Refresh {
            id: 8,
            token: token_for("bob", 3600),
        });
        conn.send(&theirs).await.expect("send");
        let Frame::Error(e) = next(&mut conn).await else {
            panic!("{via:?}: expected a refusal")
        };
        assert_eq!((e.id, e.code.as_str(), e.close), (Some(8), "token_invalid", false));
        // ... a new one of alice's does.
        let ours = Frame::Refresh(Refresh {
            id: 9,
            token: token_for("alice", 3600),
        });
        conn.send(&ours).await.expect("send");
        let Frame::Refreshed(r) = next(&mut conn).await else {
            panic!("{via:?}: expected refreshed")
        };
        assert_eq!(r.id, 9);
        assert!(r.token_expires_at >= unix_now() + 3500);

        // Well past the old token's grace the connection still serves.
        let quiet = tokio::time::timeout(Duration::from_secs(600), conn.recv()).await;
        assert!(quiet.is_err(), "{via:?}: nothing arrives, nothing closes: {quiet:?}");
        conn.send(&Frame::Ping(Ping { id: 3 })).await.expect("send");
        assert!(matches!(next(&mut conn).await, Frame::Pong(p) if p.id == 3));

        // Without a refresh: warned, then closed when the grace ends.
        let mut late = node.open(via).await;
        late.handshake(&token_for("carol", 30), "phone-2", 0)
            .await
            .expect("connected");
        let Frame::Error(warning) = next(&mut late).await else {
            panic!("expected a warning")
        };
        assert!(!warning.close);
        let warned = Instant::now();
        let Frame::Error(last) = next(&mut late).await else {
            panic!("expected the close")
        };
        assert_eq!((last.code.as_str(), last.close), ("token_expired", true));
        let grace = warned.elapsed();
        assert!(
            grace >= Duration::from_secs(59) && grace <= Duration::from_secs(61),
            "{grace:?}"
        );
        assert!(late.recv().await.expect("readable").is_none(), "closed");
        let store = node.store.clone();
        eventually("carol's route released", || {
            let store = store.clone();
            async move { store.get_route("phone-2").await.expect("store").is_none() }
        })
        .await;
    }
}
