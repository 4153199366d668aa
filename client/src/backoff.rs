//! Spreading reconnects: full-jitter backoff and a cheap random number.

use std::time::Duration;

/// Delay before reconnect attempt `attempt` (0-based): uniform in
/// `[0, min(max, min_delay * 2^attempt)]` ("full jitter"). `unit` is a random
/// number in `[0, 1)`.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in `0..n` (`n > 0`), for spreading choices.
pub(crate) fn rand_below(n: u32) -> u32 {
    ((rand_unit() * f64::from(n)) as u32).min(n.saturating_sub(1))
}

pub(crate) fn rand_unit() -> f64 {
    // Spread reconnects of many clients; quality needs are modest.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
