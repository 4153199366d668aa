//! The routing table at run time. Operators replace or remove a service
//! through the admin API; the change is validated like the configuration
//! file, written to the store (so every node follows it within a second and a
//! restart keeps it), then applied: the changed service gets a new pool and
//! background work, the others keep theirs untouched.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ServiceConfig, UpstreamConfig};

use crate::call::Service;
use crate::{health, spool, AdminError, Upstream};

pub(crate) type Table = BTreeMap<String, Arc<Service>>;

impl Upstream {
    pub(crate) fn table(&self) -> Arc<Table> {
        self.services.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn start_service(self: &Arc<Self>, service: Arc<Service>) {
        if service.sink.is_some() {
            // Declares the queue at start: RabbitMQ was seen to lose a queue declared
            // seconds before a crash, with what it had confirmed (docs/QUEUES.md).
            let s = service.clone();
            self.background.spawn(async move {
                let Some(sink) = s.sink.as_ref() else { return };
                tokio::select! {
                    _ = s.stop.cancelled() => {}
                    connected = sink.connect() => {
                        if let Err(e) = connected {
                            tracing::warn!(service = %s.name, error = %e, "queue sink not reachable yet; its uploads get retryable errors until it is");
                        }
                    }
                }
            });
        }
        self.background
            .spawn(health::watch(self.clone(), service.clone(), service.stop.clone()));
        self.background
            .spawn(spool::drain(self.clone(), service.clone(), service.stop.clone()));
    }

    /// The services in force, as configuration.
    pub fn routing(&self) -> BTreeMap<String, ServiceConfig> {
        self.table()
            .iter()
            .map(|(n, s)| (n.clone(), s.config.clone()))
            .collect()
    }

    /// Adds or replaces (`Some`) or removes (`None`) service `name`, for every
    /// node and across restarts. Nothing changes when it is invalid.
    pub async fn set_service(self: &Arc<Self>, name: &str, service: Option<ServiceConfig>) -> Result<(), AdminError> {
        let _changing = self.changing.lock().await;
        let mut services = self.routing();
        match service {
            Some(s) => {
                services.insert(name.to_owned(), s);
            }
            None => {
                services
                    .remove(name)
                    .ok_or_else(|| AdminError::UnknownService(name.to_owned()))?;
            }
        }
        let checked = self.check(services)?;
        let json = serde_json::to_string(&checked).map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.store
            .set_routing_table(&json)
            .await
            .map_err(|e| AdminError::Store(e.to_string()))?;
        self.apply(checked).map_err(AdminError::Invalid)?;
        tracing::info!(service = name, "routing table changed by an operator");
        Ok(())
    }

    /// Validates a whole table as the configuration file would be.
    fn check(&self, services: BTreeMap<String, ServiceConfig>) -> Result<BTreeMap<String, ServiceConfig>, AdminError> {
        let mut config = UpstreamConfig {
            services,
            ..self.config.clone()
        };
        config.validate().map_err(|e| AdminError::Invalid(e.to_string()))?;
        Ok(config.services)
    }

    /// Swaps in `services`: unchanged services keep their pool (and its health
    /// state), changed ones start afresh, removed ones stop.
    fn apply(self: &Arc<Self>, services: BTreeMap<String, ServiceConfig>) -> Result<(), String> {
        let old = self.table();
        let mut table = Table::new();
        let mut started = Vec::new();
        for (name, config) in &services {
            match old.get(name) {
                Some(s) if s.config == *config => {
                    table.insert(name.clone(), s.clone());
                }
                _ => {
                    let s = Arc::new(Service::new(
                        name,
                        config,
                        &self.config,
                        self.http.clone(),
                        &self.metrics,
                        self.stop.child_token(),
                    )?);
                    table.insert(name.clone(), s.clone());
                    started.push(s);
                }
            }
        }
        *self.services.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        for (name, s) in old.iter() {
            let new = services.get(name);
            if new != Some(&s.config) {
                s.stop.cancel();
            }
            // Before the new watchers start: they register the series that stay.
            match new {
                None => self.metrics.forget(&[("service", name)]),
                Some(new) => {
                    for gone in s
                        .config
                        .endpoints
                        .iter()
                        .filter(|e| !new.endpoints.iter().any(|n| n.url == e.url))
                    {
                        self.metrics
                            .forget(&[("service", name), ("endpoint", gone.url.as_str())]);
                    }
                }
            }
        }
        if !self.stop.is_cancelled() {
            for s in started {
                self.start_service(s);
            }
        }
        Ok(())
    }

    /// Adopts the routing table in the store when another node (or an earlier
    /// run) changed it. An unreadable or invalid stored table is ignored.
    pub(crate) async fn sync_routing(self: &Arc<Self>) -> Result<(), String> {
        let Some(json) = self.store.routing_table().await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let _changing = self.changing.lock().await;
        let services: BTreeMap<String, ServiceConfig> =
            serde_json::from_str(&json).map_err(|e| format!("stored routing table: {e}"))?;
        if services == self.routing() {
            return Ok(());
        }
        let checked = self.check(services).map_err(|e| e.to_string())?;
        self.apply(checked)
    }
}
