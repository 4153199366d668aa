//! Which endpoint to try next: round robin (or weighted at random, when a
//! dispatcher gave weights), skipping endpoints that failed recently (a node
//! that refused connections or told us to go away), so a reconnect goes to a
//! healthy node first instead of hammering a dead one.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct Chooser {
    failed_at: Vec<Option<Instant>>,
    /// Relative shares; all equal means round robin.
    weights: Vec<u32>,
    next: usize,
    memory: Duration,
}

impl Chooser {
    pub fn new(count: usize, memory: Duration) -> Self {
        Self::weighted(vec![1; count.max(1)], memory)
    }

    pub fn weighted(weights: Vec<u32>, memory: Duration) -> Self {
        let weights = if weights.is_empty() { vec![1] } else { weights };
        Chooser {
            failed_at: vec![None; weights.len()],
            weights,
            next: 0,
            memory,
        }
    }

    /// The next endpoint in turn that did not fail within the memory; when all
    /// did, the one whose failure is oldest.
    pub fn pick(&mut self) -> usize {
        let n = self.failed_at.len();
        let now = Instant::now();
        let usable = |i: usize| self.failed_at[i].is_none_or(|at| now.duration_since(at) >= self.memory);
        let fresh = if self.weights.iter().all(|&w| w == self.weights[0]) {
            (0..n).map(|k| (self.next + k) % n).find(|&i| usable(i))
        } else {
            let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
            let total: u32 = candidates.iter().map(|&i| self.weights[i].max(1)).sum();
            let mut ticket = crate::backoff::rand_below(total.max(1));
            candidates.into_iter().find(|&i| {
                let w = self.weights[i].max(1);
                if ticket < w {
                    true
                } else {
                    ticket -= w;
                    false
                }
            })
        };
        let chosen = fresh.unwrap_or_else(|| (0..n).min_by_key(|&i| self.failed_at[i]).unwrap_or(0));
        self.next = (chosen + 1) % n;
        chosen
    }

    pub fn failed(&mut self, index: usize) {
        if let Some(slot) = self.failed_at.get_mut(index) {
            *slot = Some(Instant::now());
        }
    }

    /// When endpoint `index` last failed, if it did.
    pub fn failed_at(&self, index: usize) -> Option<Instant> {
        self.failed_at.get(index).copied().flatten()
    }

    /// Carries a failure seen before the endpoint list was refreshed.
    pub fn failed_since(&mut self, index: usize, at: Instant) {
        if let Some(slot) = self.failed_at.get_mut(index) {
            *slot = Some(at);
        }
    }

    pub fn succeeded(&mut self, index: usize) {
        if let Some(slot) = self.failed_at.get_mut(index) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn recently_failed_endpoints_are_skipped_until_they_are_forgiven() {
        let mut c = Chooser::new(3, Duration::from_secs(30));
        assert_eq!((c.pick(), c.pick(), c.pick(), c.pick()), (0, 1, 2, 0));
        c.failed(1);
        assert_eq!((c.pick(), c.pick(), c.pick()), (2, 0, 2), "1 is skipped");
        tokio::time::advance(Duration::from_secs(1)).await;
        c.failed(2);
        c.failed(0);
        assert_eq!(c.pick(), 1, "all failed: the oldest failure first");
        tokio::time::advance(Duration::from_secs(31)).await;
        c.failed(0);
        assert_eq!(
            (c.pick(), c.pick()),
            (2, 1),
            "forgiven after the memory; 0 failed again"
        );
        c.succeeded(0);
        assert_eq!((c.pick(), c.pick()), (2, 0), "a success clears the failure");
    }
}
