//! The frame set of the Duplex wire protocol, identical on TCP and WebSocket.
//!
//! Every frame is a MessagePack map with a `type` string and the fields of
//! that type (see `docs/PROTOCOL.md`). Client-initiated frames carry an `id`
//! chosen by the client; server answers echo it so a client can match them.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build; `Connect.version` must equal it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest `Connect.last_seq` accepted (2^52; more is `bad_last_seq`).
/// Seqs start at 1 and grow by one per message, so no client can have seen
/// more; the cap keeps every seq exact where stores and SDKs hold it as a
/// double (Redis scripts, JavaScript) with 2^52 messages of headroom.
pub const MAX_LAST_SEQ: u64 = 1 << 52;

/// The wire name of every frame type.
pub const FRAME_TYPES: [&str; 18] = [
    "connect",
    "connected",
    "error",
    "ping",
    "pong",
    "upload",
    "upload_ack",
    "request",
    "reply",
    "push",
    "ack",
    "gap",
    "kicked",
    "go_away",
    "refresh",
    "refreshed",
    "register_push",
    "push_registered",
];

/// Header map carried by uploads, requests, replies and pushes.
pub type Headers = BTreeMap<String, String>;

/// One frame, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Connect(Connect),
    Connected(Connected),
    Error(ErrorFrame),
    Ping(Ping),
    Pong(Pong),
    Upload(Upload),
    UploadAck(UploadAck),
    Request(Request),
    Reply(Reply),
    Push(Push),
    Ack(Ack),
    Gap(Gap),
    Kicked(Kicked),
    GoAway(GoAway),
    Refresh(Refresh),
    Refreshed(Refreshed),
    RegisterPush(RegisterPush),
    PushRegistered(PushRegistered),
}

impl Frame {
    /// The wire name of this frame's type, as written in the `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::Connect(_) => "connect",
            Frame::Connected(_) => "connected",
            Frame::Error(_) => "error",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::Upload(_) => "upload",
            Frame::UploadAck(_) => "upload_ack",
            Frame::Request(_) => "request",
            Frame::Reply(_) => "reply",
            Frame::Push(_) => "push",
            Frame::Ack(_) => "ack",
            Frame::Gap(_) => "gap",
            Frame::Kicked(_) => "kicked",
            Frame::GoAway(_) => "go_away",
            Frame::Refresh(_) => "refresh",
            Frame::Refreshed(_) => "refreshed",
            Frame::RegisterPush(_) => "register_push",
            Frame::PushRegistered(_) => "push_registered",
        }
    }
}

/// First frame of every connection (client -> server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    pub id: u64,
    pub version: u32,
    /// JWT; `sub` is the user id.
    pub token: String,
    /// Stable id of this app install (device id), 1..=128 bytes of `[A-Za-z0-9._:-]`.
    pub client_id: String,
    /// Highest push seq the client has processed; 0 when it has none.
    #[serde(default)]
    pub last_seq: u64,
}

/// Successful answer to `Connect` (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// Echo of `Connect.id`.
    pub id: u64,
    pub session_id: String,
    pub node_id: String,
    /// The client sends a `Ping` at least this often; silence for 3 intervals closes.
    pub heartbeat_ms: u64,
    /// Advised reconnect backoff: start at `min`, grow exponentially with full jitter up to `max`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Largest frame body the server accepts, in bytes.
    pub max_frame_bytes: u32,
    /// When the connect's token expires (`exp`, seconds since the Unix
    /// epoch): send `Refresh` with a new token before then.
    #[serde(default)]
    pub token_expires_at: u64,
    /// A `ping` not answered within this long (ms) means the connection is
    /// dead: close it and reconnect, preferably elsewhere. 0: not advertised.
    #[serde(default)]
    pub pong_deadline_ms: u64,
}

/// A new token for the live connection (client -> server), for the same
/// user and client id; answered by `Refreshed` or an `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refresh {
    pub id: u64,
    pub token: String,
}

/// One of this app install's OS push tokens, for the push fallback (client
/// -> server); answered by `PushRegistered` or an `Error` with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterPush {
    pub id: u64,
    /// `apns`, `fcm` or `webpush`.
    pub provider: String,
    /// APNs device token (hex), FCM registration token, or the Web Push subscription as JSON text.
    pub token: String,
    /// APNs topic (bundle id), FCM app or Web Push site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The token is stored with the connection's client id (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRegistered {
    /// Echo of `RegisterPush.id`.
    pub id: u64,
}

/// The connection now runs on the refreshed token (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refreshed {
    /// Echo of `Refresh.id`.
    pub id: u64,
    /// The new token's `exp`, seconds since the Unix epoch.
    pub token_expires_at: u64,
}

/// An error (server -> client). `id` names the client frame it answers, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default)]
    pub id: Option<u64>,
    /// Stable machine-readable code; see `ErrorCode`.
    pub code: String,
    pub message: String,
    /// Whether repeating the same action later can succeed.
    pub retry: bool,
    /// Whether the server closes the connection after this frame.
    #[serde(default)]
    pub close: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub id: u64,
}

/// One-way data for a backend service (client -> server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub id: u64,
    pub service: String,
    pub path: String,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub body: Bytes,
}

/// Answer to `Upload`: the backend accepted it (or it was durably spooled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadAck {
    pub id: u64,
    /// Backend HTTP status, or 202 when spooled.
    pub status: u16,
    #[serde(default)]
    pub spooled: bool,
}

/// A request whose backend response comes back as a `Reply` (client -> server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub service: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub body: Bytes,
    /// Overall deadline; 0 means the service's configured deadline.
    #[serde(default)]
    pub timeout_ms: u64,
}

fn default_method() -> String {
    "POST".to_owned()
}

/// The backend's response to a `Request` (server -> client); `id` is the request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub status: u16,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub body: Bytes,
    /// Store seq when the reply travelled as a stored message; ack it like a push.
    #[serde(default)]
    pub seq: u64,
}

/// A message pushed by a backend (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// Per-client, strictly increasing; 0 for qos-0 pushes, which are never stored.
    pub seq: u64,
    pub msg_id: String,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub payload: Bytes,
    /// A backend call is waiting for this push's ack (`wait_ack_ms`): ack it
    /// at once rather than with the next batch of acks. Sent only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack_now: bool,
}

/// Cumulative acknowledgement of every push with `seq <=` this one (client -> server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub id: u64,
    pub seq: u64,
}

/// Seqs `from..=to` were lost (expired or dropped) and will never arrive (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// The connection was closed by the server on purpose (server -> client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kicked {
    /// `replaced` (same client connected elsewhere), `admin`, `slow_consumer`, ...
    pub reason: String,
    pub message: String,
}

/// The node is draining: reconnect after `reconnect_after_ms`, preferably elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoAway {
    pub reconnect_after_ms: u64,
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// Stable error codes carried in `ErrorFrame.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    FrameTooLarge,
    Malformed,
    NestingTooDeep,
    UnknownFrameType,
    UnexpectedFrame,
    UnsupportedVersion,
    InvalidClientId,
    /// The client id belongs to another user (or the token names another one).
    ClientIdTaken,
    /// `connect.last_seq` beyond any seq a client can have been given.
    BadLastSeq,
    AuthTimeout,
    TokenInvalid,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongAlgorithm,
    TokenBadAudience,
    TokenBadIssuer,
    ServerFull,
    RateLimited,
    /// A push token that is not of its provider's shape.
    BadPushToken,
    StoreUnavailable,
    UpstreamUnavailable,
    /// The backend side refused the frame; repeating it will not help.
    Rejected,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Malformed => "malformed_frame",
            ErrorCode::NestingTooDeep => "nesting_too_deep",
            ErrorCode::UnknownFrameType => "unknown_frame_type",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::ClientIdTaken => "client_id_taken",
            ErrorCode::BadLastSeq => "bad_last_seq",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::TokenWrongAlgorithm => "token_wrong_algorithm",
            ErrorCode::TokenBadAudience => "token_bad_audience",
            ErrorCode::TokenBadIssuer => "token_bad_issuer",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadPushToken => "bad_push_token",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Rejected => "rejected",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the same action may succeed if the client tries again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::AuthTimeout
                | ErrorCode::TokenExpired
                | ErrorCode::TokenNotYetValid
                | ErrorCode::ServerFull
                | ErrorCode::RateLimited
                | ErrorCode::StoreUnavailable
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::Internal
        )
    }

    /// Builds the frame for this code.
    pub fn frame(self, id: Option<u64>, message: impl Into<String>, close: bool) -> Frame {
        Frame::Error(ErrorFrame {
            id,
            code: self.as_str().to_owned(),
            message: message.into(),
            retry: self.retryable(),
            close,
        })
    }
}

/// Checks a client id: 1..=128 bytes of `[A-Za-z0-9._:-]`, so it is safe in store keys and logs.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
