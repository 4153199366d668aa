//! Lifecycle events the access tier reports to backends (docs/EVENTS.md): the
//! event types and the non-blocking [`EventSink`] they are handed to. The
//! delivery (webhooks, a queue) is `duplex-events`; this is only what tiers share.

use serde::Serialize;

/// What happened to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection authenticated.
    Connected,
    /// An authenticated connection ended (with the reason and how long it lasted).
    Disconnected,
    /// The client acked stored messages up to a seq; they are gone from the store.
    Acked,
    /// The client was told that messages expired before it fetched them.
    Gap,
    /// A stored message expired before its client acked it (reported by
    /// the downstream tier's expiry scan, one event per message).
    Expired,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Connected,
        EventKind::Disconnected,
        EventKind::Acked,
        EventKind::Gap,
        EventKind::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Acked => "acked",
            EventKind::Gap => "gap",
            EventKind::Expired => "expired",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.label() == name)
    }
}

/// The fields that only some kinds carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EventDetail {
    Connected {
        transport: &'static str,
    },
    Disconnected {
        transport: &'static str,
        reason: &'static str,
        duration_ms: u64,
    },
    Acked {
        up_to_seq: u64,
        messages: u64,
    },
    Gap {
        from_seq: u64,
        to_seq: u64,
        reason: &'static str,
    },
    Expired {
        message_id: String,
        seq: u64,
        created_ms: u64,
        expires_ms: u64,
    },
}

/// One event as backends receive it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub time_ms: u64,
    pub node_id: String,
    pub client_id: String,
    pub user_id: String,
    #[serde(flatten)]
    pub detail: EventDetail,
}

/// Where the access tier hands events. `emit` never waits: a full buffer
/// drops the event (and counts it), so clients are never slowed by backends.
pub trait EventSink: Send + Sync {
    /// Whether events of this kind are configured (skip building them otherwise).
    fn wants(&self, kind: EventKind) -> bool;
    fn emit(&self, event: ClientEvent);
}
