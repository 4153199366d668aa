//! Active health checks, probes of ejected endpoints, and the operators'
//! isolation list, read from the store so every node honours it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::call::Service;
use crate::Upstream;

/// Failed active checks in a row before an endpoint counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 2;
/// How often ejected endpoints are looked at for a due probe.
const PROBE_TICK: Duration = Duration::from_millis(100);
const ISOLATION_SYNC: Duration = Duration::from_secs(1);

pub(crate) async fn watch(up: Arc<Upstream>, service: Arc<Service>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(service.config.health_interval_ms);
    // Labelled with the configured URL, like the call metrics.
    let up_gauges: Vec<_> = service
        .config
        .endpoints
        .iter()
        .map(|e| {
            up.metrics.counter(
                "duplex_backend_endpoint_up",
                &[("service", &service.name), ("endpoint", e.url.as_str())],
            )
        })
        .collect();
    let mut failures = vec![0u32; service.pool.endpoints.len()];
    let mut next_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_TICK) => {}
        }
        for (index, gauge) in up_gauges.iter().enumerate() {
            let up = i64::from(service.pool.is_up(index));
            gauge.add(up - gauge.get());
        }
        for index in service.pool.due_for_probe() {
            let ok = service.probe(index).await;
            service.pool.probed(index, ok);
            if ok {
                tracing::info!(service = %service.name, endpoint = %service.pool.endpoints[index].url, "endpoint readmitted after a successful probe");
            }
        }
        if service.config.health_path.is_none() || tokio::time::Instant::now() < next_check {
            continue;
        }
        next_check = tokio::time::Instant::now() + interval;
        for (index, endpoint) in service.pool.endpoints.iter().enumerate() {
            if endpoint.is_isolated() {
                continue;
            }
            if service.probe(index).await {
                failures[index] = 0;
                endpoint.set_healthy(true);
            } else {
                failures[index] += 1;
                if failures[index] >= UNHEALTHY_AFTER {
                    endpoint.set_healthy(false);
                }
            }
        }
    }
}

/// Follows what operators changed on any node: the routing table, and the
/// isolation list applied to this node's pools.
pub(crate) async fn sync_shared_state(up: Arc<Upstream>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = up.sync_routing().await {
            tracing::debug!(error = %e, "cannot follow the stored routing table");
        }
        match up.store.isolated().await {
            Ok(keys) => {
                for service in up.table().values() {
                    for e in &service.pool.endpoints {
                        e.set_isolated(keys.contains(&e.key));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read isolated endpoints; keeping the last list"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ISOLATION_SYNC) => {}
        }
    }
}
