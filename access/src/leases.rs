//! Route lease renewal for every connection of this node, batched.
//!
//! A connection's route is a lease in the store. While the connection lives
//! (its heartbeats keep it open) the node renews all leases in pipelined
//! batches every third of the lease time, instead of one store call per
//! connection per heartbeat. A lease found gone (the store restarted or
//! expired it during an outage) is written back; a lease found taken by a
//! newer connection closes ours.
//!
//! Each renewal also reads the client's highest stored seq. A connection
//! that has not written that far is told to pull the rest from the store:
//! the safety net for a delivery that never came (a downstream node that died
//! between storing a message and handing it over, or retries that gave up),
//! so an online client waits at most a renewal period, not for a reconnect.

use std::sync::Arc;
use std::time::Duration;

use duplex_store::Renewal;
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
    let mut caught_up = 0i64;
    for ((client_id, route), check) in routes.iter().zip(renewals) {
        match check.renewal {
            Renewal::Renewed => {}
            Renewal::Restored => restored += 1,
            Renewal::Replaced => {
                shared.hub.kick_local(client_id, route.conn_epoch, "replaced");
                continue;
            }
        }
        if let Some(session) = shared.hub.get(client_id).filter(|h| h.conn_epoch == route.conn_epoch) {
            caught_up += i64::from(session.outbox.catch_up_to(check.last_seq));
        }
    }
    if caught_up > 0 {
        shared
            .metrics
            .counter("duplex_lease_catch_ups_total", &[])
            .add(caught_up);
        debug!(
            caught_up,
            "connections behind their stored messages pull them from the store"
        );
    }
    if restored > 0 {
        warn!(
            restored,
            "route leases had vanished from the store and were written back"
        );
    }
    debug!(routes = routes.len(), "route leases renewed");
}
