//! Bounds on sockets that have not authenticated yet, so that nobody
//! holding no token can fill the node: a node-wide cap (apart from
//! `max_connections`), a cap per source address and a connect rate per
//! source address. A source is an IPv4 address or an IPv6 /64 (one host
//! usually owns a whole /64).
//!
//! The per-source table is bounded by `MAX_SOURCES`: when it is full, idle
//! sources (nothing pending, bucket refilled) are forgotten first, then any
//! source with nothing pending (losing its rate history). Sources with
//! pending sockets are at most `max_unauthenticated`, far fewer, so a new
//! source always finds room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::AccessConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use duplex_shared::rate::TokenBucket;

/// Sources remembered at most.
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Net(u64),
}

fn source_of(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(v4) => Source::V4(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Source::V4(u32::from(v4)),
            None => Source::V6Net((u128::from(v6) >> 64) as u64),
        },
    }
}

#[derive(Debug)]
struct SourceState {
    pending: u32,
    connects: TokenBucket,
}

/// Why a socket was turned away before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The node-wide cap of unauthenticated sockets.
    NodeFull,
    /// This source has too many unauthenticated sockets, or connects too fast.
    SourceLimited,
}

pub(crate) struct PreAuth {
    total: Arc<Semaphore>,
    sources: Mutex<HashMap<Source, SourceState>>,
    per_source: u32,
    rate: u32,
    burst: u32,
}

/// Held by a socket until it authenticates (or ends).
pub(crate) struct PreAuthGuard {
    owner: Arc<PreAuth>,
    source: Source,
    _slot: OwnedSemaphorePermit,
}

impl Drop for PreAuthGuard {
    fn drop(&mut self) {
        let mut sources = self.owner.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = sources.get_mut(&self.source) {
            state.pending = state.pending.saturating_sub(1);
        }
    }
}

impl PreAuth {
    pub fn new(config: &AccessConfig) -> Arc<Self> {
        Arc::new(PreAuth {
            total: Arc::new(Semaphore::new(config.max_unauthenticated)),
            sources: Mutex::new(HashMap::new()),
            per_source: config.max_unauthenticated_per_source,
            rate: config.connect_rate_per_source,
            burst: config.connect_burst_per_source,
        })
    }

    /// Admits a new socket from `peer`, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Result<PreAuthGuard, Refusal> {
        let source = source_of(peer);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            self.forget_some(&mut sources, now);
        }
        let state = sources.entry(source).or_insert_with(|| SourceState {
            pending: 0,
            connects: TokenBucket::new(self.rate, self.burst),
        });
        if !state.connects.take(now) || state.pending >= self.per_source {
            return Err(Refusal::SourceLimited);
        }
        let slot = self.total.clone().try_acquire_owned().map_err(|_| Refusal::NodeFull)?;
        state.pending += 1;
        Ok(PreAuthGuard {
            owner: self.clone(),
            source,
            _slot: slot,
        })
    }

    fn forget_some(&self, sources: &mut HashMap<Source, SourceState>, now: Instant) {
        sources.retain(|_, s| s.pending > 0 || !s.connects.is_full(now));
        if sources.len() >= MAX_SOURCES {
            sources.retain(|_, s| s.pending > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(total: usize, per_source: u32, rate: u32, burst: u32) -> AccessConfig {
        AccessConfig {
            max_unauthenticated: total,
            max_unauthenticated_per_source: per_source,
            connect_rate_per_source: rate,
            connect_burst_per_source: burst,
            ..AccessConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_source_cannot_take_every_slot() {
        let pre = PreAuth::new(&config(10, 3, 1000, 1000));
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..3).map(|_| pre.admit(a, now).expect("admitted")).collect();
        assert_eq!(pre.admit(a, now).err(), Some(Refusal::SourceLimited));
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let _b = pre.admit(b, now).expect("another source is unaffected");
        drop(held);
        pre.admit(a, now)
            .expect("slots come back once sockets authenticate or end");
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_wide_cap_holds_across_sources() {
        let pre = PreAuth::new(&config(4, 4, 1000, 1000));
        let now = Instant::now();
        let held: Vec<_> = (1..=4)
            .map(|i| {
                pre.admit(format!("10.0.0.{i}").parse().expect("ip"), now)
                    .expect("admitted")
            })
            .collect();
        let fifth: IpAddr = "10.0.0.5".parse().expect("ip");
        assert_eq!(pre.admit(fifth, now).err(), Some(Refusal::NodeFull));
        drop(held);
        pre.admit(fifth, now).expect("room again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_connect_rate_is_per_source_and_ipv6_counts_by_64() {
        let pre = PreAuth::new(&config(100, 100, 1, 2));
        let now = Instant::now();
        let one: IpAddr = "2001:db8::1".parse().expect("ip");
        let same_net: IpAddr = "2001:db8::2".parse().expect("ip");
        drop(pre.admit(one, now).expect("1"));
        drop(pre.admit(same_net, now).expect("2"));
        assert_eq!(pre.admit(one, now).err(), Some(Refusal::SourceLimited));
        let other_net: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        drop(pre.admit(other_net, now).expect("another /64"));
        drop(pre.admit(one, now + Duration::from_secs(1)).expect("refilled"));
    }
}
