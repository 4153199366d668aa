//! Retry budget: retries may add at most `percent` extra calls to a service
//! (plus a small steady allowance so a quiet service can still retry). When a
//! pool fails as a whole, retries stop at that share instead of multiplying
//! the load on whatever is left.

use std::sync::Mutex;

use duplex_shared::rate::TokenBucket;
use tokio::time::Instant;

pub struct RetryBudget {
    ratio: f64,
    /// Retries available: earned by calls (`ratio` each) and by time
    /// (`min_per_s`), at most ten beyond the steady allowance.
    tokens: Mutex<TokenBucket>,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_s: u32) -> Self {
        let min_per_s = f64::from(min_per_s);
        RetryBudget {
            ratio: f64::from(percent) / 100.0,
            tokens: Mutex::new(TokenBucket::starting_with(min_per_s, 10.0 + min_per_s, min_per_s)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        f(&mut self.tokens.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts a first attempt: it earns `percent`/100 of a retry.
    pub fn on_call(&self) {
        self.with(|tokens| tokens.add(self.ratio, Instant::now()));
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_retry(&self) -> bool {
        self.with(|tokens| tokens.take(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_share_of_calls() {
        let budget = RetryBudget::new(20, 0);
        let mut retries = 0;
        for _ in 0..1_000 {
            budget.on_call();
            if budget.try_retry() {
                retries += 1;
            }
        }
        assert!((195..=200).contains(&retries), "{retries}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_gets_its_steady_allowance() {
        let budget = RetryBudget::new(0, 5);
        let first: usize = (0..20).filter(|_| budget.try_retry()).count();
        assert_eq!(first, 5);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let second: usize = (0..20).filter(|_| budget.try_retry()).count();
        assert_eq!(second, 5);
    }
}
