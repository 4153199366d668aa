//! One timer for every connection of the node.
//!
//! A tokio timer per connection (silence, token expiry, drain) cost ~112
//! bytes each and a timer-wheel update on every frame that reset the silence
//! deadline. Instead each connection states its next deadline in its outbox
//! (lazily: a read only moves `last_read`, the deadline is re-stated when
//! the alarm finds it not due yet), and this task walks the session table
//! every `interval` and raises the alarm of those whose deadline has come,
//! and of all of them once when the node starts to drain.
//!
//! Cost: one pass over the table per interval, two atomic loads per
//! connection (measured below 20 ns each); deadlines are late by at most one
//! interval (at most 1 s, and an eighth of the silence limit).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::Shared;

/// Milliseconds on the node's own monotonic clock (tokio's, so a paused
/// test clock moves it too).
#[derive(Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { base: Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

/// How often the sweeper looks: an eighth of the silence limit, within 10 ms..=1 s.
pub(crate) fn interval(heartbeat: Duration) -> Duration {
    (3 * heartbeat / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Runs until aborted (after the node's drain: drains need it too).
pub(crate) async fn sweep_forever(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(interval(shared.config.heartbeat()));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut told_drain = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // The drain is announced at once, not at the next tick.
            _ = shared.shutdown.cancelled(), if !told_drain => {}
        }
        let draining = shared.shutdown.is_cancelled();
        told_drain |= draining;
        shared.hub.sweep(shared.clock.now_ms(), draining);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let clock = Clock::new();
        assert_eq!(clock.now_ms(), 0);
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(clock.now_ms(), 7);
    }

    #[test]
    fn the_interval_follows_the_heartbeat_within_bounds() {
        assert_eq!(interval(Duration::from_secs(25)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_millis(800)), Duration::from_millis(300));
        assert_eq!(interval(Duration::from_millis(1)), Duration::from_millis(10));
    }
}
