//! A service's backend pool: endpoint choice and fault isolation.
//!
//! - Balancing: weighted power of two choices on outstanding calls. Two
//!   endpoints are drawn by weight; the one with fewer calls in flight per
//!   unit of weight wins. It avoids a slow endpoint without the herding of
//!   "least loaded" when every node acts on the same stale view.
//! - An endpoint is a candidate when it is not isolated by an operator, not
//!   ejected, not failing its active health check, and below its concurrency
//!   limit. No candidate: the caller fails fast, nothing queues.
//! - Passive ejection after `eject_after_failures` consecutive failures, for a
//!   backoff that doubles per repeated ejection; it ends only after a
//!   successful probe (`health`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{ServiceConfig, UpstreamConfig};
use rand::Rng;
use reqwest::Url;
use tokio::time::Instant;

pub struct Endpoint {
    pub url: Url,
    /// `service url`: how operators and the store name this endpoint.
    pub key: String,
    weight: u32,
    outstanding: AtomicU32,
    isolated: AtomicBool,
    /// False while the active health check fails.
    healthy: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    consecutive_failures: u32,
    until: Option<Instant>,
    /// Ejections in a row without a long healthy run: sets the next backoff.
    count: u32,
    admitted_at: Option<Instant>,
}

/// An endpoint's state as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointView {
    pub url: String,
    pub weight: u32,
    pub outstanding: u32,
    pub isolated: bool,
    pub healthy: bool,
    pub ejected: bool,
    pub consecutive_failures: u32,
}

impl Endpoint {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ejection> {
        // A panic while holding this lock cannot leave the counters inconsistent.
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_ejected(&self) -> bool {
        self.lock().until.is_some()
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::Relaxed);
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    fn view(&self) -> EndpointView {
        let e = self.lock();
        EndpointView {
            url: self.url.to_string(),
            weight: self.weight,
            outstanding: self.outstanding.load(Ordering::Relaxed),
            isolated: self.is_isolated(),
            healthy: self.healthy.load(Ordering::Relaxed),
            ejected: e.until.is_some(),
            consecutive_failures: e.consecutive_failures,
        }
    }
}

/// A call slot on one endpoint; dropping it ends the call.
pub struct Permit {
    pub endpoint: Arc<Endpoint>,
    pub index: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Pool {
    pub endpoints: Vec<Arc<Endpoint>>,
    max_concurrency: u32,
    eject_after: u32,
    eject_base: Duration,
    eject_max: Duration,
}

impl Pool {
    /// Builds the pool of `service`; endpoint URLs were checked with the config.
    pub fn new(service: &str, config: &ServiceConfig, upstream: &UpstreamConfig) -> Result<Self, String> {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let url = Url::parse(&e.url).map_err(|err| format!("endpoint {}: {err}", e.url))?;
                Ok(Arc::new(Endpoint {
                    key: format!("{service} {}", e.url),
                    url,
                    weight: e.weight,
                    outstanding: AtomicU32::new(0),
                    isolated: AtomicBool::new(false),
                    healthy: AtomicBool::new(true),
                    ejection: Mutex::new(Ejection::default()),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Pool {
            endpoints,
            max_concurrency: config.max_concurrency,
            eject_after: upstream.eject_after_failures,
            eject_base: Duration::from_millis(upstream.eject_base_ms),
            eject_max: Duration::from_millis(upstream.eject_max_ms),
        })
    }

    fn candidate(&self, i: usize, exclude: &[usize]) -> bool {
        let e = &self.endpoints[i];
        !exclude.contains(&i)
            && !e.is_isolated()
            && e.healthy.load(Ordering::Relaxed)
            && !e.is_ejected()
            && e.outstanding.load(Ordering::Relaxed) < self.max_concurrency
    }

    /// Picks an endpoint (weighted power of two choices), skipping `exclude`.
    pub fn pick(&self, exclude: &[usize]) -> Option<Permit> {
        let candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| self.candidate(i, exclude))
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            _ => {
                let a = self.draw(&candidates, None);
                let b = self.draw(&candidates, Some(a));
                if self.load(a) <= self.load(b) {
                    a
                } else {
                    b
                }
            }
        };
        let endpoint = self.endpoints[chosen].clone();
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            endpoint,
            index: chosen,
        })
    }

    /// Outstanding calls per unit of weight. Ties (idle pools) go to the first
    /// draw, which was weighted, so weights hold at any load.
    fn load(&self, i: usize) -> f64 {
        let e = &self.endpoints[i];
        f64::from(e.outstanding.load(Ordering::Relaxed)) / f64::from(e.weight)
    }

    /// A weighted random candidate, other than `not` when there is a choice.
    fn draw(&self, candidates: &[usize], not: Option<usize>) -> usize {
        let pool: Vec<usize> = candidates.iter().copied().filter(|&i| Some(i) != not).collect();
        let total: u32 = pool.iter().map(|&i| self.endpoints[i].weight).sum();
        let mut ticket = rand::thread_rng().gen_range(0..total.max(1));
        for &i in &pool {
            let w = self.endpoints[i].weight;
            if ticket < w {
                return i;
            }
            ticket -= w;
        }
        pool[0]
    }

    /// Records a call's outcome; returns true when this failure ejected the endpoint.
    pub fn record(&self, index: usize, ok: bool) -> bool {
        let mut e = self.endpoints[index].lock();
        if ok {
            e.consecutive_failures = 0;
            return false;
        }
        e.consecutive_failures += 1;
        if e.consecutive_failures < self.eject_after || e.until.is_some() {
            return false;
        }
        self.eject(&mut e);
        true
    }

    fn eject(&self, e: &mut Ejection) {
        let now = Instant::now();
        // A long healthy run forgives earlier ejections.
        if e.admitted_at.is_some_and(|at| now.duration_since(at) > self.eject_max) {
            e.count = 0;
        }
        let backoff = self.eject_base.saturating_mul(1 << e.count.min(16)).min(self.eject_max);
        e.count += 1;
        e.until = Some(now + backoff);
    }

    /// Ejected endpoints whose backoff has passed: due for a probe.
    pub fn due_for_probe(&self) -> Vec<usize> {
        let now = Instant::now();
        (0..self.endpoints.len())
            .filter(|&i| self.endpoints[i].lock().until.is_some_and(|until| until <= now))
            .collect()
    }

    /// A probe's result for an ejected endpoint: readmit it, or eject it again for longer.
    pub fn probed(&self, index: usize, ok: bool) {
        let mut e = self.endpoints[index].lock();
        if e.until.is_none() {
            return;
        }
        if ok {
            e.until = None;
            e.consecutive_failures = 0;
            e.admitted_at = Some(Instant::now());
        } else {
            self.eject(&mut e);
        }
    }

    /// Whether endpoint `index` takes traffic now, concurrency aside.
    pub fn is_up(&self, index: usize) -> bool {
        let e = &self.endpoints[index];
        !e.is_isolated() && e.healthy.load(Ordering::Relaxed) && !e.is_ejected()
    }

    pub fn any_available(&self) -> bool {
        (0..self.endpoints.len()).any(|i| self.candidate(i, &[]))
    }

    pub fn view(&self) -> Vec<EndpointView> {
        self.endpoints.iter().map(|e| e.view()).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::EndpointConfig;

    use super::*;

    fn pool(weights: &[u32], max_concurrency: u32) -> Pool {
        let service = ServiceConfig {
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| EndpointConfig {
                    url: format!("http://127.0.0.1:{}", 1000 + i),
                    weight,
                })
                .collect(),
            max_concurrency,
            ..ServiceConfig::default()
        };
        Pool::new("svc", &service, &UpstreamConfig::default()).expect("pool")
    }

    #[test]
    fn weights_shape_the_traffic_share_idle_and_busy() {
        let p = pool(&[1, 3], 10_000);
        let mut idle = [0u32; 2];
        for _ in 0..4_000 {
            idle[p.pick(&[]).expect("pick").index] += 1;
        }
        let mut held = Vec::new();
        let mut busy = [0u32; 2];
        for _ in 0..4_000 {
            let permit = p.pick(&[]).expect("pick");
            busy[permit.index] += 1;
            held.push(permit);
        }
        for hits in [idle, busy] {
            let share = f64::from(hits[1]) / 4_000.0;
            assert!((0.70..0.80).contains(&share), "{hits:?}");
        }
    }

    #[test]
    fn busy_endpoints_lose_and_full_ones_are_skipped() {
        let p = pool(&[1, 1], 2);
        let held: Vec<Permit> = (0..4).filter_map(|_| p.pick(&[])).collect();
        assert_eq!(held.len(), 4);
        assert!(p.pick(&[]).is_none(), "both at their concurrency limit: fail fast");
        drop(held);
        assert!(p.pick(&[]).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_until_a_probe_succeeds() {
        let p = pool(&[1, 1], 100);
        for _ in 0..4 {
            assert!(!p.record(0, false));
        }
        assert!(p.record(0, false), "fifth failure ejects");
        for _ in 0..50 {
            assert_eq!(p.pick(&[]).expect("pick").index, 1);
        }
        assert!(p.due_for_probe().is_empty());
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(p.due_for_probe(), vec![0]);
        p.probed(0, false);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(p.due_for_probe().is_empty(), "a failed probe doubles the ejection");
        tokio::time::advance(Duration::from_millis(1_000)).await;
        p.probed(0, true);
        assert!(!p.endpoints[0].is_ejected());
        assert!(p.pick(&[1]).is_some());
    }

    #[test]
    fn isolated_and_unhealthy_endpoints_get_nothing() {
        let p = pool(&[1, 1], 100);
        p.endpoints[0].set_isolated(true);
        p.endpoints[1].set_healthy(false);
        assert!(p.pick(&[]).is_none());
        assert!(!p.any_available());
        p.endpoints[1].set_healthy(true);
        assert_eq!(p.pick(&[]).expect("pick").index, 1);
    }
}
