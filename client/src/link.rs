//! One live connection of the reconnecting client: resends unanswered
//! calls, then serves frames in both directions (pushes to the application
//! with their acks, the application's calls and acks to the server, the
//! heartbeat) until the connection ends, and says how it ended.

use std::time::Duration;

use duplex_protocol::{Ack, Frame, Ping, Refresh};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::acks::Acks;
use crate::calls::Command;
use crate::calls::InFlight;
use crate::options::{Event, TokenProvider};
use crate::Connection;

/// How one connection ended.
pub(crate) enum Ended {
    Lost(String),
    /// A ping went unanswered past the server's pong deadline: the node
    /// hangs, so the next attempt goes to another endpoint.
    Unresponsive(String),
    /// The server refused the token as expired: a fresh one is worth trying at once.
    TokenExpired(String),
    GoAway(Duration),
    Replaced,
    AppGone,
}

/// One live connection and what it works with.
pub(crate) struct Link<'a> {
    pub(crate) conn: &'a mut Connection,
    pub(crate) acks: &'a mut Acks,
    pub(crate) events: &'a mpsc::Sender<Event>,
    pub(crate) commands: &'a mut mpsc::Receiver<Command>,
    pub(crate) in_flight: &'a mut InFlight,
    /// The cumulative ack owed and not sent yet. It goes out `ack_delay`
    /// after the burst that made it owed ended (no further frame already
    /// waiting), so pushes arriving within that time share one ack frame and
    /// the server one store call. Already counted in `acks.acked`: if the
    /// connection drops first, the next Connect's `last_seq` carries it.
    pub(crate) held_ack: Option<u64>,
    pub(crate) ack_delay: Duration,
    /// When the held ack goes out.
    pub(crate) ack_due: Option<Instant>,
    /// A push in the current burst asked for its ack at once (`ack_now`).
    pub(crate) ack_urgent: bool,
    /// Set by `Client::close`: send the held ack and end.
    pub(crate) closing: &'a mut watch::Receiver<bool>,
    /// Asked for a new token when the connection's token expires.
    pub(crate) token: &'a TokenProvider,
    /// Messages the app got as OS notifications (`notified.rs`).
    pub(crate) seen: &'a std::sync::Mutex<crate::notified::Seen>,
}

/// The id of the SDK's own `refresh` frames, apart from the application's calls.
const REFRESH_ID: u64 = u64::MAX;

impl Link<'_> {
    /// `pong_deadline`: the liveness rule (PROTOCOL.md): a ping unanswered
    /// that long ends the connection.
    pub(crate) async fn serve(&mut self, heartbeat: Duration, pong_deadline: Duration) -> Ended {
        for frame in self.in_flight.unanswered() {
            if let Err(e) = self.conn.send(&frame).await {
                return Ended::Lost(e.to_string());
            }
        }
        let mut next_ping = Instant::now() + heartbeat;
        let mut ping_id = 0u64;
        // When the oldest unanswered ping's pong is due.
        let mut pong_due: Option<Instant> = None;
        loop {
            let frame = tokio::select! {
                _ = sleep_until(pong_due.unwrap_or(next_ping)), if pong_due.is_some() => {
                    return Ended::Unresponsive(format!(
                        "no pong within {} ms: the node does not answer",
                        pong_deadline.as_millis()
                    ));
                }
                received = self.conn.recv() => match received {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ended::Lost("server closed the connection".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                Some(command) = self.commands.recv() => {
                    let call = match command {
                        Command::Call(call) => call,
                        Command::Ack(seq) => {
                            hold(&mut self.held_ack, self.acks.app_acked(seq));
                            if let Some(ended) = self.release_ack().await {
                                return ended;
                            }
                            continue;
                        }
                    };
                    let frame = call.frame.clone();
                    // Registered before sending: if the send fails, the next connection resends it.
                    self.in_flight.add(call);
                    if let Err(e) = self.conn.send(&frame).await {
                        return Ended::Lost(e.to_string());
                    }
                    continue;
                }
                Ok(()) = self.closing.changed() => {
                    return self.send_held_ack().await.unwrap_or(Ended::AppGone);
                }
                _ = sleep_until(self.ack_due.unwrap_or(next_ping)), if self.ack_due.is_some() => {
                    if let Some(ended) = self.send_held_ack().await {
                        return ended;
                    }
                    continue;
                }
                _ = sleep_until(next_ping) => {
                    ping_id += 1;
                    if let Err(e) = self.conn.send(&Frame::Ping(Ping { id: ping_id })).await {
                        return Ended::Lost(e.to_string());
                    }
                    next_ping = Instant::now() + heartbeat;
                    if pong_due.is_none() {
                        pong_due = Some(Instant::now() + pong_deadline);
                    }
                    continue;
                }
            };
            // The frames already received are handled before the ack goes
            // out; a connection that has failed leaves its ack to the resume
            // (`acks.acked` is the next Connect's `last_seq`).
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if matches!(frame, Frame::Pong(_)) {
                    pong_due = None;
                }
                if let Some(ended) = self.handle(frame).await {
                    if let Ended::GoAway(_) = ended {
                        // The server asked to move; the connection still
                        // carries what this one owes.
                        let _ = self.send_held_ack().await;
                    }
                    return ended;
                }
                next = match self.conn.recv_buffered() {
                    Ok(next) => next,
                    Err(e) => return Ended::Lost(e.to_string()),
                };
            }
            if let Some(ended) = self.release_ack().await {
                return ended;
            }
        }
    }

    /// Whether a stored push the socket brought is new to the app (not notified already).
    fn seen_by_socket(&self, msg_id: &str) -> bool {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).by_socket(msg_id)
    }

    /// Acts on one server frame; `Some` when the connection is over.
    async fn handle(&mut self, frame: Frame) -> Option<Ended> {
        match frame {
            Frame::Push(p) => {
                // seq 0: qos 0, never stored, nothing to dedupe or ack.
                let (seq, p_ack_now) = (p.seq, p.ack_now);
                if self.acks.is_duplicate(seq) || (seq != 0 && !self.seen_by_socket(&p.msg_id)) {
                    hold(&mut self.held_ack, self.acks.passed(seq));
                    return None;
                }
                if self.events.send(Event::Push(p)).await.is_err() {
                    return Some(Ended::AppGone);
                }
                if seq == 0 {
                    return None;
                }
                self.ack_urgent |= p_ack_now;
                hold(&mut self.held_ack, self.acks.push_delivered(seq));
                None
            }
            Frame::Reply(r) => {
                let seq = r.seq;
                if !self.acks.is_duplicate(seq) {
                    self.in_flight.replied(r);
                }
                if seq == 0 {
                    return None;
                }
                hold(&mut self.held_ack, self.acks.passed(seq));
                None
            }
            Frame::UploadAck(a) => {
                self.in_flight.upload_acked(a);
                None
            }
            Frame::PushRegistered(r) => {
                self.in_flight.push_registered(r.id);
                None
            }
            Frame::Gap(g) => {
                let to = g.to;
                if self.events.send(Event::Gap(g)).await.is_err() {
                    return Some(Ended::AppGone);
                }
                hold(&mut self.held_ack, self.acks.passed(to));
                None
            }
            Frame::Kicked(k) if k.reason == "replaced" => Some(Ended::Replaced),
            Frame::Kicked(k) => Some(Ended::Lost(format!("kicked: {}", k.reason))),
            Frame::GoAway(g) => Some(Ended::GoAway(Duration::from_millis(g.reconnect_after_ms))),
            Frame::Error(e) if e.close && e.code == "token_expired" => {
                Some(Ended::TokenExpired(format!("{}: {}", e.code, e.message)))
            }
            Frame::Error(e) if e.close => Some(Ended::Lost(format!("{}: {}", e.code, e.message))),
            // The connection's token expired: hand over a new one in-band. If
            // that one is refused too, the server closes after its grace and
            // the reconnect asks the provider again.
            Frame::Error(e) if e.code == "token_expired" && e.id.is_none() => {
                let refresh = Frame::Refresh(Refresh {
                    id: REFRESH_ID,
                    token: (self.token)(),
                });
                match self.conn.send(&refresh).await {
                    Ok(()) => None,
                    Err(e) => Some(Ended::Lost(e.to_string())),
                }
            }
            Frame::Error(e) if e.id == Some(REFRESH_ID) => None,
            Frame::Error(e) => {
                self.in_flight.refused(&e);
                None
            }
            _ => None,
        }
    }

    /// At the end of a burst: sends the held ack now if there is no delay
    /// or a push asked for it, else makes sure it is due within the delay.
    async fn release_ack(&mut self) -> Option<Ended> {
        self.held_ack?;
        if self.ack_delay.is_zero() || self.ack_urgent {
            return self.send_held_ack().await;
        }
        self.ack_due.get_or_insert_with(|| Instant::now() + self.ack_delay);
        None
    }

    /// Sends the held cumulative ack, if any.
    async fn send_held_ack(&mut self) -> Option<Ended> {
        self.ack_due = None;
        self.ack_urgent = false;
        let seq = self.held_ack.take()?;
        match self.conn.send(&Frame::Ack(Ack { id: seq, seq })).await {
            Ok(()) => None,
            Err(e) => Some(Ended::Lost(e.to_string())),
        }
    }
}

/// Notes a cumulative ack to send with the end of the burst (the highest wins).
fn hold(held: &mut Option<u64>, ack: Option<u64>) {
    if let Some(seq) = ack {
        *held = Some(held.map_or(seq, |h| h.max(seq)));
    }
}
