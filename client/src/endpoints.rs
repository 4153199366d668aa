//! Which endpoint to try next: round robin, skipping endpoints that failed
//! recently (a node that refused connections or told us to go away), so a
//! reconnect goes to a healthy node first instead of hammering a dead one.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct Chooser {
    failed_at: Vec<Option<Instant>>,
    next: usize,
    memory: Duration,
}

impl Chooser {
    pub fn new(count: usize, memory: Duration) -> Self {
        Chooser {
            failed_at: vec![None; count.max(1)],
            next: 0,
            memory,
        }
    }

    /// The next endpoint in turn that did not fail within the memory; when all
    /// did, the one whose failure is oldest.
    pub fn pick(&mut self) -> usize {
        let n = self.failed_at.len();
        let now = Instant::now();
        let fresh = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.failed_at[i].is_none_or(|at| now.duration_since(at) >= self.memory));
        let chosen = fresh.unwrap_or_else(|| (0..n).min_by_key(|&i| self.failed_at[i]).unwrap_or(0));
        self.next = (chosen + 1) % n;
        chosen
    }

    pub fn failed(&mut self, index: usize) {
        if let Some(slot) = self.failed_at.get_mut(index) {
            *slot = Some(Instant::now());
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
