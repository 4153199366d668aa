//! Which stored messages the client has, and what it tells the server.
//!
//! Acks are cumulative, and pushes and replies share one seq space. With
//! automatic acks (the default) a push counts as processed once it is handed
//! to the application. With explicit acks (`ClientOptions::auto_ack =
//! false`) the application acks pushes itself (`Client::ack`), and the client
//! never acks past a push the application has not acked: a reply or a gap
//! after it waits. After a reconnect the server replays everything above the
//! last ack it got, so unacked pushes come again (same seq and id).

use std::collections::BTreeSet;

#[derive(Debug)]
pub(crate) struct Acks {
    auto: bool,
    /// Told to the server (and the resume point of the next connection).
    pub acked: u64,
    /// Highest seq received on this connection.
    delivered: u64,
    /// Highest seq the application acked (explicit mode).
    app_acked: u64,
    /// Pushes handed to the application and not acked by it yet (explicit mode).
    outstanding: BTreeSet<u64>,
}

impl Acks {
    pub fn new(last_seq: u64, auto: bool) -> Self {
        Acks {
            auto,
            acked: last_seq,
            delivered: last_seq,
            app_acked: last_seq,
            outstanding: BTreeSet::new(),
        }
    }

    /// A new connection resumes from the last ack; anything above it comes again.
    pub fn on_connect(&mut self) {
        self.delivered = self.acked;
        self.outstanding.clear();
    }

    /// Seen already: on this connection, or acked by the application.
    pub fn is_duplicate(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.delivered.max(self.app_acked)
    }

    /// A stored push was handed to the application; returns an ack to send, if any.
    pub fn push_delivered(&mut self, seq: u64) -> Option<u64> {
        self.delivered = self.delivered.max(seq);
        if !self.auto {
            self.outstanding.insert(seq);
        }
        self.frontier()
    }

    /// Everything up to `seq` needs nothing from the application (a reply, a gap, a duplicate).
    pub fn passed(&mut self, seq: u64) -> Option<u64> {
        self.delivered = self.delivered.max(seq);
        self.frontier()
    }

    /// The application processed every push up to `seq`.
    pub fn app_acked(&mut self, seq: u64) -> Option<u64> {
        self.app_acked = self.app_acked.max(seq);
        self.outstanding.retain(|&s| s > seq);
        self.frontier()
    }

    fn frontier(&mut self) -> Option<u64> {
        let limit = match self.outstanding.first() {
            Some(&first) => first - 1,
            None => self.delivered,
        };
        (limit > self.acked).then(|| {
            self.acked = limit;
            limit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_acks_follow_delivery() {
        let mut a = Acks::new(0, true);
        assert_eq!(a.push_delivered(1), Some(1));
        assert_eq!(a.passed(2), Some(2));
        assert!(a.is_duplicate(2));
    }

    #[test]
    fn explicit_acks_never_pass_an_unprocessed_push() {
        let mut a = Acks::new(0, false);
        assert_eq!(a.push_delivered(1), None);
        assert_eq!(a.passed(2), None, "a reply after push 1 waits for it");
        assert_eq!(a.push_delivered(3), None);
        assert_eq!(a.app_acked(1), Some(2));
        assert_eq!(a.app_acked(3), Some(3));
        assert_eq!(a.acked, 3);
    }

    #[test]
    fn unacked_pushes_come_again_after_a_reconnect_and_acked_ones_do_not() {
        let mut a = Acks::new(0, false);
        a.push_delivered(1);
        a.push_delivered(2);
        assert_eq!(a.app_acked(1), Some(1));
        a.on_connect();
        assert!(a.is_duplicate(1));
        assert!(!a.is_duplicate(2), "push 2 was never acked: it is handed over again");
        assert_eq!(a.push_delivered(2), None);
        assert_eq!(a.app_acked(2), Some(2));
    }
}
