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
use duplex_shared::protocol::{ErrorCode, Frame};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TokenLife {
    expires_at: u64,
    /// When the current deadline falls: the expiry, or the end of the grace.
    due: Instant,
    warned: bool,
}

/// What an expired token leads to.
pub(crate) enum Expiry {
    /// Tell the client; the connection stays open for the grace.
    Warn(Frame),
    /// The grace passed without a refresh: tell the client and close.
    Close(Frame),
}

fn due_at(expires_at: u64) -> Instant {
    Instant::now() + Duration::from_secs(expires_at.saturating_sub(unix_now()))
}

impl TokenLife {
    pub fn new(expires_at: u64) -> Self {
        TokenLife {
            expires_at,
            due: due_at(expires_at),
            warned: false,
        }
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// When [`Self::on_due`] must next be called.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// `grace`: how long a warned client has to refresh (the node's setting).
    pub fn on_due(&mut self, grace: Duration) -> Expiry {
        if self.warned {
            return Expiry::Close(ErrorCode::TokenExpired.frame(
                None,
                "the token expired and no refresh came: reconnect with a new token",
                true,
            ));
        }
        self.warned = true;
        self.due = Instant::now() + grace;
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
    pub fn refreshed(&mut self, expires_at: u64) {
        self.expires_at = expires_at;
        self.due = due_at(expires_at);
        self.warned = false;
    }
}
