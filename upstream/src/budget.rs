//! Retry budget: retries may add at most `percent` extra calls to a service
//! (plus a small steady allowance so a quiet service can still retry). When a
//! pool fails as a whole, retries stop at that share instead of multiplying
//! the load on whatever is left.

use std::sync::Mutex;

use tokio::time::Instant;

pub struct RetryBudget {
    ratio: f64,
    min_per_s: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_s: u32) -> Self {
        let min_per_s = f64::from(min_per_s);
        RetryBudget {
            ratio: f64::from(percent) / 100.0,
            min_per_s,
            cap: 10.0 + min_per_s,
            state: Mutex::new((min_per_s, Instant::now())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.min_per_s).min(self.cap);
        state.1 = now;
        f(&mut state.0)
    }

    /// Counts a first attempt: it earns `percent`/100 of a retry.
    pub fn on_call(&self) {
        let (ratio, cap) = (self.ratio, self.cap);
        self.with(|tokens| *tokens = (*tokens + ratio).min(cap));
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_retry(&self) -> bool {
        self.with(|tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
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
