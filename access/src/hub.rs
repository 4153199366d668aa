//! The session table of one access node.
//!
//! It maps `client_id` to a handle holding only metadata and the connection's
//! `Outbox` (bounded queue plus close signal); the socket stays with its
//! connection task. Deliveries are encoded once and queued without waiting,
//! so a slow client can never block the caller; see `outbox` for the
//! overflow policy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use duplex_shared::links::{LinkError, NodeLink};
use duplex_shared::protocol::Frame;
use duplex_store::Route;

use crate::send::body;

pub use crate::outbox::{CloseReason, Outbox, Outgoing, Queued};
use tokio::time::Instant;

/// What the table holds for one connection.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub conn_epoch: u64,
    /// Encoded frames for the connection task to write, and its close signal.
    pub outbox: Arc<Outbox>,
    /// Wall-clock connect time, ms since the Unix epoch.
    pub connected_at_ms: u64,
}

/// A connection lost the race for its client id to a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded;

/// How long a kick is remembered for connections that have not registered yet.
const KICK_MEMORY: Duration = Duration::from_secs(120);

/// All sessions of this node.
#[derive(Debug)]
pub struct Hub {
    node_id: String,
    sessions: DashMap<String, SessionHandle>,
    /// Kicks that arrived before their connection registered (it claimed its
    /// route, then a newer connection elsewhere claimed it and kicked it, all
    /// before the first one reached `register`): client -> highest epoch kicked.
    kicked: DashMap<String, (u64, Instant)>,
    /// `duplex_frames_out_total`, set when the access tier starts.
    frames_out: std::sync::OnceLock<duplex_shared::metrics::FrameCounts>,
    /// `duplex_outbound_deferred_total`, set with `frames_out`.
    deferred: std::sync::OnceLock<duplex_shared::metrics::Counter>,
}

impl Hub {
    pub fn new(node_id: impl Into<String>) -> Self {
        Hub {
            node_id: node_id.into(),
            sessions: DashMap::new(),
            kicked: DashMap::new(),
            frames_out: std::sync::OnceLock::new(),
            deferred: std::sync::OnceLock::new(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Adds a session; a present older session of the same client is told to
    /// close as replaced. Refused when a newer session (or a kick) already won.
    pub fn register(&self, client_id: &str, handle: SessionHandle) -> Result<(), Superseded> {
        if let Some(k) = self.kicked.get(client_id) {
            if k.0 >= handle.conn_epoch {
                return Err(Superseded);
            }
        }
        match self.sessions.entry(client_id.to_owned()) {
            Entry::Occupied(mut e) => {
                if e.get().conn_epoch > handle.conn_epoch {
                    return Err(Superseded);
                }
                let old = e.insert(handle);
                old.outbox.close(CloseReason::Kicked("replaced".into()));
            }
            Entry::Vacant(e) => {
                e.insert(handle);
            }
        }
        Ok(())
    }

    /// The sweeper's pass: see [`Outbox::sweep`].
    pub(crate) fn sweep(&self, now_ms: u64, draining: bool) {
        for session in self.sessions.iter() {
            session.outbox.sweep(now_ms, draining);
        }
    }

    /// Removes the session only if it is still connection `conn_epoch`.
    pub fn unregister(&self, client_id: &str, conn_epoch: u64) {
        self.sessions.remove_if(client_id, |_, h| h.conn_epoch == conn_epoch);
    }

    /// The current session of `client_id`, if any.
    pub fn get(&self, client_id: &str) -> Option<SessionHandle> {
        self.sessions.get(client_id).map(|h| h.clone())
    }

    /// Closes connections of `client_id` up to `conn_epoch` with `Kicked`, and
    /// remembers the kick for a connection that has not registered yet.
    pub fn kick_local(&self, client_id: &str, conn_epoch: u64, reason: &str) {
        self.kicked
            .entry(client_id.to_owned())
            .and_modify(|k| {
                k.0 = k.0.max(conn_epoch);
                k.1 = Instant::now();
            })
            .or_insert((conn_epoch, Instant::now()));
        if let Some(h) = self.sessions.get(client_id) {
            if h.conn_epoch <= conn_epoch {
                h.outbox.close(CloseReason::Kicked(reason.to_owned()));
            }
        }
    }

    /// Counts the frames this hub queues for clients in `counts`, and the
    /// deliveries left to the store for a full queue in `deferred`.
    pub fn count_into(&self, counts: duplex_shared::metrics::FrameCounts, deferred: duplex_shared::metrics::Counter) {
        let _ = self.frames_out.set(counts);
        let _ = self.deferred.set(deferred);
    }

    fn counted(&self, frame: &Frame, times: u64) {
        if let Some(c) = self.frames_out.get() {
            c.add(frame.type_name(), times);
        }
    }

    /// Queues `frame` for the session of `client_id` (exactly `conn_epoch`, if given).
    pub fn deliver_local(&self, client_id: &str, conn_epoch: Option<u64>, frame: &Frame) -> Result<(), LinkError> {
        let handle = self.get(client_id).ok_or(LinkError::NotHere)?;
        if conn_epoch.is_some_and(|e| e != handle.conn_epoch) {
            return Err(LinkError::NotHere);
        }
        let seq = match frame {
            Frame::Push(p) => p.seq,
            Frame::Reply(r) => r.seq,
            _ => 0,
        };
        match handle.outbox.push(Outgoing::Frame { seq, body: body(frame) })? {
            Queued::Frame => self.counted(frame, 1),
            // Counted as a frame out when the catch-up writes it.
            Queued::FromStore => {
                if let Some(c) = self.deferred.get() {
                    c.inc();
                }
            }
        }
        Ok(())
    }

    /// Queues `frame` (unsequenced) for every session; returns how many took it
    /// (a session whose queue is full drops it, as any qos-0 frame).
    pub fn broadcast_local(&self, frame: &Frame) -> u64 {
        let body = body(frame);
        let handles: Vec<Arc<Outbox>> = self.sessions.iter().map(|e| e.outbox.clone()).collect();
        let took = handles
            .iter()
            .filter(|o| {
                o.push(Outgoing::Frame {
                    seq: 0,
                    body: body.clone(),
                })
                .is_ok()
            })
            .count() as u64;
        self.counted(frame, took);
        took
    }

    /// Every session's route, for lease renewal.
    pub fn routes(&self) -> Vec<(String, Route)> {
        self.sessions
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    Route {
                        node_id: self.node_id.clone(),
                        conn_epoch: e.conn_epoch,
                    },
                )
            })
            .collect()
    }

    /// Forgets kicks old enough that their connection can no longer register.
    pub fn prune_kicks(&self) {
        let now = Instant::now();
        self.kicked.retain(|_, (_, at)| now.duration_since(*at) < KICK_MEMORY);
    }

    /// Tells every session to close (used by tests and admin tooling).
    pub fn close_all(&self, reason: CloseReason) {
        for e in self.sessions.iter() {
            e.outbox.close(reason.clone());
        }
    }
}

/// `NodeLink` for a process that holds the only access node: calls to this
/// node go to its hub; any other node id is unreachable from here.
#[derive(Debug, Clone)]
pub struct LocalNodes {
    hub: Arc<Hub>,
}

impl LocalNodes {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalNodes { hub }
    }

    fn check(&self, node_id: &str) -> Result<(), LinkError> {
        if node_id == self.hub.node_id() {
            Ok(())
        } else {
            Err(LinkError::Unavailable(format!(
                "node {node_id} is not reachable from this process"
            )))
        }
    }
}

#[async_trait]
impl NodeLink for LocalNodes {
    async fn deliver(
        &self,
        node_id: &str,
        client_id: &str,
        conn_epoch: Option<u64>,
        frame: Frame,
    ) -> Result<(), LinkError> {
        self.check(node_id)?;
        self.hub.deliver_local(client_id, conn_epoch, &frame)
    }

    async fn kick(&self, client_id: &str, route: &Route, reason: &str) -> Result<(), LinkError> {
        self.check(&route.node_id)?;
        self.hub.kick_local(client_id, route.conn_epoch, reason);
        Ok(())
    }

    async fn broadcast(&self, frame: Frame) -> Result<u64, LinkError> {
        Ok(self.hub.broadcast_local(&frame))
    }

    async fn connected_since(&self, client_id: &str, route: &Route) -> Result<Option<u64>, LinkError> {
        self.check(&route.node_id)?;
        Ok(self
            .hub
            .get(client_id)
            .filter(|h| h.conn_epoch == route.conn_epoch)
            .map(|h| h.connected_at_ms))
    }
}
