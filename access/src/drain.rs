//! How a connection leaves a node that shuts down. Its clients must not all
//! be offline at the same moment, so each connection is told `go_away` at its
//! own random moment within `goaway_window_ms` of the shutdown, and is served
//! as before until then and afterwards, until the client leaves or
//! `shutdown_grace_ms` ends. `go_away` names the other live access nodes of
//! the registry, so the client knows where to go.

use std::time::Duration;

use duplex_shared::protocol::{Frame, GoAway};
use duplex_store::now_ms;
use tokio::time::Instant;

use crate::transport::TransportKind;
use crate::Shared;

/// Sessions end this long before the node stops waiting for them, so each
/// closes its own socket (and releases its route) in time.
const CLOSE_MARGIN: Duration = Duration::from_millis(250);

/// Where one connection is in the drain.
#[derive(Debug)]
pub(crate) struct Drain {
    /// When `go_away` is due (until it was sent).
    pub goaway_at: Option<Instant>,
    /// When the connection is closed if the client has not left.
    pub close_at: Instant,
}

impl Drain {
    /// The drain of one connection, starting now.
    pub fn start(shared: &Shared) -> Self {
        let now = Instant::now();
        let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
        let window = shared
            .config
            .goaway_window_ms
            .min(shared.config.shutdown_grace_ms)
            .max(1);
        Drain {
            goaway_at: Some(now + Duration::from_millis(rand::random::<u64>() % window)),
            close_at: now + grace.saturating_sub(CLOSE_MARGIN),
        }
    }

    /// The next moment the drain acts at.
    pub fn next_deadline(&self) -> Instant {
        self.goaway_at.unwrap_or(self.close_at)
    }
}

/// The `go_away` frame for a connection over `kind`: reconnect almost at
/// once (the moment was already spread), preferably to another live node.
pub(crate) async fn goaway_frame(shared: &Shared, kind: TransportKind) -> Frame {
    let others = shared
        .drain_targets
        .get_or_init(|| async {
            match shared.store.nodes(now_ms()).await {
                Ok(nodes) => nodes
                    .into_iter()
                    .filter(|n| n.node_id != shared.node_id && n.tiers.iter().any(|t| t == "access"))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "registry unreadable: go_away names no other node");
                    Vec::new()
                }
            }
        })
        .await;
    // A client is sent to the same kind of endpoint it came over: a TLS
    // client never to a plain one (nodes without TLS listeners are skipped).
    let endpoints = others
        .iter()
        .filter_map(|n| match kind {
            TransportKind::Tcp => Some(format!("tcp://{}", n.tcp)),
            TransportKind::WebSocket => Some(n.ws.clone()),
            TransportKind::Tls => n.tls.as_ref().map(|t| format!("tls://{t}")),
            TransportKind::Wss => n.wss.clone(),
        })
        .collect();
    Frame::GoAway(GoAway {
        reconnect_after_ms: rand::random::<u64>() % 250,
        endpoints,
    })
}
