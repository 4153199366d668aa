//! One message, two paths: a push whose socket delivery was late can also
//! reach the app as an OS notification (the push fallback, docs/API.md),
//! whose data carries `duplex_message_id`. The app reports such
//! notifications (`Client::notified`); whichever copy comes first is the
//! app's, the other is dropped: a notification for a message the socket
//! handed over already is reported as not new, and the socket's copy of a
//! message the app was notified of is acked without being handed over.
//!
//! Bounded: the last [`REMEMBERED`] message ids; a copy arriving after that
//! many others is handed over again.

use std::collections::{HashMap, VecDeque};

/// Message ids remembered.
pub const REMEMBERED: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Came {
    Socket,
    Notification,
}

#[derive(Debug, Default)]
pub(crate) struct Seen {
    order: VecDeque<String>,
    came: HashMap<String, Came>,
}

impl Seen {
    /// The socket brought `msg_id`; whether to hand it to the app.
    pub fn by_socket(&mut self, msg_id: &str) -> bool {
        match self.came.get(msg_id) {
            Some(Came::Notification) => false,
            Some(Came::Socket) => true,
            None => {
                self.remember(msg_id, Came::Socket);
                true
            }
        }
    }

    /// The app got a notification for `msg_id`; whether the message is new to it.
    pub fn by_notification(&mut self, msg_id: &str) -> bool {
        if self.came.contains_key(msg_id) {
            return false;
        }
        self.remember(msg_id, Came::Notification);
        true
    }

    fn remember(&mut self, msg_id: &str, came: Came) {
        if self.order.len() >= REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.came.remove(&oldest);
            }
        }
        self.order.push_back(msg_id.to_owned());
        self.came.insert(msg_id.to_owned(), came);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whichever_copy_comes_first_is_the_apps() {
        let mut seen = Seen::default();
        assert!(seen.by_socket("a"), "first by socket: handed over");
        assert!(!seen.by_notification("a"), "then its notification is not new");
        assert!(seen.by_notification("b"), "first by notification: new");
        assert!(!seen.by_socket("b"), "then the socket's copy is dropped");
        assert!(!seen.by_notification("b"), "a second notification is not new either");
    }

    #[test]
    fn only_the_latest_ids_are_remembered() {
        let mut seen = Seen::default();
        seen.by_notification("old");
        for i in 0..REMEMBERED {
            seen.by_socket(&i.to_string());
        }
        assert_eq!(seen.came.len(), REMEMBERED);
        assert!(seen.by_socket("old"), "forgotten: handed over");
    }
}
