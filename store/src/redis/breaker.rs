//! The store's circuit breaker. Once a call finds Redis unreachable (I/O
//! error, dropped connection, timeout), every call fails at once with a
//! retryable error, except one probe per [`PROBE_EVERY`] that goes through;
//! the first success closes the circuit again. Without it each call waited
//! out the connect and response timeouts while Redis was down, and the push
//! API held callers for seconds instead of answering `503` at once.
//!
//! Errors Redis itself answers (a script error, a wrong type) prove it is
//! reachable and leave the circuit as it is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::conn::RedisConn;

/// While the circuit is open, one call per this interval is let through to see
/// whether Redis is back.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(super) struct Breaker {
    open: AtomicBool,
    /// When the next probe may go, ms since `base`.
    next_probe_ms: AtomicU64,
    base: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            open: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

fn unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether a call may go out: always while closed; while open, only the probe.
    fn admit(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_probe_ms.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn record<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => {
                if self.open.swap(false, Ordering::AcqRel) {
                    tracing::info!("Redis answers again: store calls go through");
                }
            }
            Err(e) if unreachable(e) => {
                self.next_probe_ms
                    .store(self.now_ms() + PROBE_EVERY.as_millis() as u64, Ordering::Release);
                if !self.open.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "Redis unreachable: store calls fail at once until it answers again");
                }
            }
            Err(_) => {}
        }
    }

    fn refusal() -> RedisError {
        RedisError::from((
            redis::ErrorKind::IoError,
            "Redis unreachable",
            "the last calls failed; probing again every 250 ms".to_owned(),
        ))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if !self.breaker().admit() {
                return Err(Breaker::refusal());
            }
            let result = self.link.req_packed_command(cmd).await;
            self.breaker().record(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if !self.breaker().admit() {
                return Err(Breaker::refusal());
            }
            let result = self.link.req_packed_commands(cmd, offset, count).await;
            self.breaker().record(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), RedisError> {
        Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    #[test]
    fn an_unreachable_redis_opens_the_circuit_until_a_probe_succeeds() {
        let breaker = Breaker::default();
        assert!(breaker.admit());
        breaker.record(&refused());
        assert!(!breaker.admit(), "calls fail at once while open");
        breaker.next_probe_ms.store(0, Ordering::Release);
        assert!(breaker.admit(), "the probe goes through");
        assert!(!breaker.admit(), "one probe at a time");
        breaker.record(&Ok(()));
        assert!(breaker.admit() && breaker.admit(), "closed again");
        let answered: Result<(), RedisError> = Err(RedisError::from((redis::ErrorKind::TypeError, "wrong type")));
        breaker.record(&answered);
        assert!(breaker.admit(), "an error Redis answered proves it is there");
    }
}
