//! Route lease renewal for every connection of this node, batched.
//!
//! A connection's route is a lease in the store. While the connection lives
//! (its heartbeats keep it open) the node renews all leases in pipelined
//! batches every third of the lease time, instead of one store call per
//! connection per heartbeat. A lease found gone (the store restarted or
//! expired it during an outage) is written back; a lease found taken by a
//! newer connection closes ours.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::Shared;

pub(crate) async fn renew_forever(shared: Arc<Shared>) {
    let period = shared.route_ttl() / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => renew_once(&shared).await,
        }
    }
}

pub(crate) async fn renew_once(shared: &Shared) {
    shared.hub.prune_kicks();
    let routes = shared.hub.routes();
    if routes.is_empty() {
        return;
    }
    let ttl = shared.route_ttl();
    let renewals = match tokio::time::timeout(
        ttl / 3 + Duration::from_secs(1),
        shared.store.refresh_routes(&routes, ttl),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(error = %e, routes = routes.len(), "route renewal failed; retrying next period");
            return;
        }
        Err(_) => {
            warn!(routes = routes.len(), "route renewal timed out; retrying next period");
            return;
        }
    };
    let mut restored = 0usize;
    for ((client_id, route), renewal) in routes.iter().zip(renewals) {
        match renewal {
            duplex_shared::store::Renewal::Renewed => {}
            duplex_shared::store::Renewal::Restored => restored += 1,
            duplex_shared::store::Renewal::Replaced => {
                shared.hub.kick_local(client_id, route.conn_epoch, "replaced");
            }
        }
    }
    if restored > 0 {
        warn!(
            restored,
            "route leases had vanished from the store and were written back"
        );
    }
    debug!(routes = routes.len(), "route leases renewed");
}
