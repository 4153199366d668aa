//! A token bucket on tokio's clock: a connection's frame rate, a source's
//! connect rate, a backend service's retry budget; and the backoff every
//! retry loop uses.

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate_per_s`.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        TokenBucket {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// A bucket holding `tokens` now, refilled at `rate_per_s` up to `burst`.
    pub fn starting_with(rate_per_s: f64, burst: f64, tokens: f64) -> Self {
        TokenBucket {
            rate_per_s,
            burst,
            tokens: tokens.min(burst),
            last: Instant::now(),
        }
    }

    /// Adds `tokens` (up to the burst), as earned by something other than time.
    pub fn add(&mut self, tokens: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + tokens).min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
    }

    /// Whether the bucket has refilled completely by `now` (nothing to remember).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate_per_s >= self.burst
    }

    /// Takes one token if available.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket of 16 bytes for what is kept per connection: the rate and
/// burst are the caller's (one setting for all), and time is milliseconds on
/// the caller's monotonic clock. Starts full.
#[derive(Debug, Clone, Copy)]
pub struct SmallBucket {
    /// Tokens taken beyond a full bucket's `burst`, as of `last_ms`: 0 is full.
    spent: f64,
    last_ms: u64,
}

impl SmallBucket {
    pub fn new(now_ms: u64) -> Self {
        SmallBucket {
            spent: 0.0,
            last_ms: now_ms,
        }
    }

    /// Takes one token if one is left of `burst`, refilled at `rate_per_s`.
    pub fn take(&mut self, now_ms: u64, rate_per_s: u32, burst: u32) -> bool {
        let elapsed_s = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.spent = (self.spent - elapsed_s * f64::from(rate_per_s)).max(0.0);
        if self.spent + 1.0 <= f64::from(burst) {
            self.spent += 1.0;
            true
        } else {
            false
        }
    }
}

/// Exponential backoff from `min` to `max` with full jitter: uniform in
/// [0, min * 2^attempt capped at max].
pub fn full_jitter(min: std::time::Duration, max: std::time::Duration, attempt: u32) -> std::time::Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    cap.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_the_sustained_rate() {
        let mut b = TokenBucket::new(10, 5);
        let now = Instant::now();
        assert_eq!((0..8).filter(|_| b.take(now)).count(), 5);
        let later = now + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn the_small_bucket_allows_the_same_burst_then_rate() {
        let mut b = SmallBucket::new(1_000);
        assert_eq!((0..8).filter(|_| b.take(1_000, 10, 5)).count(), 5);
        assert_eq!((0..8).filter(|_| b.take(1_300, 10, 5)).count(), 3);
        // A clock read earlier than the last one refills nothing and spends as usual.
        assert!(!b.take(1_200, 10, 5));
        assert_eq!(
            (0..8).filter(|_| b.take(60_000, 10, 5)).count(),
            5,
            "full again, never more"
        );
    }
}
