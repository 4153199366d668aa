//! A live connection's token expires like any other: at `exp` the client is
//! told (`token_expired`, retryable, not closing) and has the configured
//! grace to send `refresh` with a new token for the same user and client id;
//! without one the connection is closed with `token_expired`. A refresh
//! replaces the token in-band, so a long-lived connection never has to
//! reconnect just because its token aged.
//!
//! Deadlines run on tokio's clock from the token's remaining lifetime at the
//! moment it was accepted (wall clock), so tests can move them with a paused
//! clock.

use std::time::Duration;

use crate::auth::unix_now;
use crate::sweeper::Clock;
use duplex_shared::protocol::{ErrorCode, Frame};

/// 16 bytes: it is kept per connection. The expiry itself is not kept (only
/// `connected` reports it, at the start); the deadline is in ms on the node's
/// clock, like the connection's other deadlines.
#[derive(Debug)]
pub(crate) struct TokenLife {
    /// When the current deadline falls: the expiry, or the end of the grace.
    due_ms: u64,
    warned: bool,
}

/// What an expired token leads to.
pub(crate) enum Expiry {
    /// Tell the client; the connection stays open for the grace.
    Warn(Frame),
    /// The grace passed without a refresh: tell the client and close.
    Close(Frame),
}

/// `expires_at` (Unix seconds) on `clock`; saturates, so a token that
/// expires in the far future never overflows the clock.
fn due_at(expires_at: u64, clock: &Clock) -> u64 {
    let left_ms = expires_at.saturating_sub(unix_now()).saturating_mul(1000);
    clock.now_ms().saturating_add(left_ms)
}

impl TokenLife {
    pub fn new(expires_at: u64, clock: &Clock) -> Self {
        TokenLife {
            due_ms: due_at(expires_at, clock),
            warned: false,
        }
    }

    /// When [`Self::on_due`] must next be called, in ms on the node's clock.
    pub fn due_ms(&self) -> u64 {
        self.due_ms
    }

    /// `grace`: how long a warned client has to refresh (the node's setting).
    pub fn on_due(&mut self, grace: Duration, clock: &Clock) -> Expiry {
        if self.warned {
            return Expiry::Close(ErrorCode::TokenExpired.frame(
                None,
                "the token expired and no refresh came: reconnect with a new token",
                true,
            ));
        }
        self.warned = true;
        self.due_ms = clock.now_ms().saturating_add(grace.as_millis() as u64);
        Expiry::Warn(ErrorCode::TokenExpired.frame(
            None,
            format!(
                "the token expired: send `refresh` with a new one within {} s or the connection closes",
                grace.as_secs()
            ),
            false,
        ))
    }

    /// The connection now runs on a token expiring at `expires_at`.
    pub fn refreshed(&mut self, expires_at: u64, clock: &Clock) {
        self.due_ms = due_at(expires_at, clock);
        self.warned = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_warns_then_closes_after_the_grace() {
        let clock = Clock::new();
        let mut life = TokenLife::new(unix_now() + 10, &clock);
        // Whole seconds: the wall clock may tick between the two reads.
        assert!((9_000..=10_000).contains(&life.due_ms()), "{}", life.due_ms());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(life.on_due(Duration::from_secs(30), &clock), Expiry::Warn(_)));
        assert_eq!(life.due_ms(), clock.now_ms() + 30_000);
        assert!(matches!(life.on_due(Duration::from_secs(30), &clock), Expiry::Close(_)));
        life.refreshed(unix_now() + 60, &clock);
        assert!(life.due_ms() >= clock.now_ms() + 59_000);
        assert!(matches!(life.on_due(Duration::from_secs(30), &clock), Expiry::Warn(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_far_or_past_expiry_neither_overflows_nor_waits() {
        let clock = Clock::new();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(TokenLife::new(u64::MAX, &clock).due_ms(), u64::MAX);
        assert_eq!(TokenLife::new(0, &clock).due_ms(), 5);
    }
}
