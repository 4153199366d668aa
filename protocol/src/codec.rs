//! Encoding and decoding of frames; no I/O, no clock.
//!
//! On TCP a frame is a 4-byte big-endian body length followed by the body; on
//! WebSocket one binary message is one body. Decoding checks the length prefix
//! against the limit before any body is buffered, then walks the body's
//! structure (`check`) before serde parses it.

use serde::de::DeserializeOwned;

use super::check::{check_body, CheckError, MAX_NESTING_LIMIT};
use super::frame::*;

/// Bytes of the TCP length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Decoding limits, taken from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body, in bytes (default 64 KiB).
    pub max_frame_bytes: u32,
    /// Deepest accepted MessagePack nesting, the frame map itself counting 1 (default 16).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_depth: 16,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_frame_bytes < 256 {
            return Err(LimitsError::FrameTooSmall);
        }
        if self.max_depth < 2 || self.max_depth > MAX_NESTING_LIMIT {
            return Err(LimitsError::DepthOutOfRange);
        }
        Ok(())
    }
}

/// Limits no connection could work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("the frame size limit must be at least 256 bytes")]
    FrameTooSmall,
    #[error("the nesting limit must be within 2..={MAX_NESTING_LIMIT}")]
    DepthOutOfRange,
}

/// Why bytes could not become a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    #[error("frame nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown frame type `{0}`")]
    UnknownType(String),
    /// A failure in a frame whose `id` could still be read: the error frame
    /// names it, so the client knows which of its frames failed.
    #[error("{error}")]
    InFrame { id: u64, error: Box<DecodeError> },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::TooDeep { .. } => ErrorCode::NestingTooDeep,
            DecodeError::Malformed(_) => ErrorCode::Malformed,
            DecodeError::UnknownType(_) => ErrorCode::UnknownFrameType,
            DecodeError::InFrame { error, .. } => error.code(),
        }
    }

    /// The `id` of the frame that failed, when it could be read.
    pub fn id(&self) -> Option<u64> {
        match self {
            DecodeError::InFrame { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// An oversized length prefix leaves the byte stream unsynchronised (the
    /// body is never read), so the connection must close. Other errors
    /// concern one body whose bounds are known; the stream stays usable.
    pub fn must_close(&self) -> bool {
        match self {
            DecodeError::InFrame { error, .. } => error.must_close(),
            other => matches!(other, DecodeError::TooLarge { .. }),
        }
    }

    /// The error frame telling the client about this failure.
    pub fn to_frame(&self) -> Frame {
        self.code().frame(self.id(), self.to_string(), self.must_close())
    }
}

/// Appends `frame` as a length-prefixed TCP frame to `out`.
pub fn encode_tcp(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    encode_body(frame, out);
    let len = (out.len() - start - LENGTH_PREFIX) as u32;
    out[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Appends `frame`'s MessagePack body (the WebSocket message) to `out`.
/// Room for `frame`'s encoded body, so that encoding it does not grow the
/// buffer step by step (each step a copy; measurable per push).
pub fn body_capacity(frame: &Frame) -> usize {
    let headers = |h: &crate::Headers| h.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
    match frame {
        Frame::Push(p) => 64 + p.msg_id.len() + headers(&p.headers) + p.payload.len(),
        Frame::Reply(r) => 64 + headers(&r.headers) + r.body.len(),
        _ => 128,
    }
}

pub fn encode_body(frame: &Frame, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail and every frame field is serialisable.
    if let Err(e) = rmp_serde::encode::write_named(out, frame) {
        unreachable!("encoding a frame into memory failed: {e}");
    }
}

/// Returns the body length of the first TCP frame in `buf` once it is fully
/// buffered, `None` while it is incomplete, and an error as soon as the prefix
/// announces more than the limit (so a 4 GiB prefix never allocates).
pub fn tcp_frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > limits.max_frame_bytes {
        return Err(DecodeError::TooLarge {
            len: u64::from(len),
            max: limits.max_frame_bytes,
        });
    }
    let len = len as usize;
    Ok((buf.len() >= LENGTH_PREFIX + len).then_some(len))
}

/// Decodes one frame body (without length prefix).
pub fn decode_body(body: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
    if body.len() > limits.max_frame_bytes as usize {
        return Err(DecodeError::TooLarge {
            len: body.len() as u64,
            max: limits.max_frame_bytes,
        });
    }
    let frame_type = match check_body(body, limits.max_depth) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(DecodeError::Malformed("missing `type` field".into())),
        Err(CheckError::TooDeep) => return Err(DecodeError::TooDeep { max: limits.max_depth }),
        Err(CheckError::Malformed(why)) => return Err(DecodeError::Malformed(why.into())),
    };
    decode_typed(frame_type, body).map_err(|error| match frame_id(body) {
        Some(id) => DecodeError::InFrame {
            id,
            error: Box::new(error),
        },
        None => error,
    })
}

/// The `id` field of a well-formed frame map, if it has a valid one.
fn frame_id(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    rmp_serde::from_slice::<IdOnly>(body).ok().and_then(|f| f.id)
}

fn decode_typed(frame_type: &str, body: &[u8]) -> Result<Frame, DecodeError> {
    Ok(match frame_type {
        "connect" => Frame::Connect(parse(body)?),
        "connected" => Frame::Connected(parse(body)?),
        "error" => Frame::Error(parse(body)?),
        "ping" => Frame::Ping(parse(body)?),
        "pong" => Frame::Pong(parse(body)?),
        "upload" => Frame::Upload(parse(body)?),
        "upload_ack" => Frame::UploadAck(parse(body)?),
        "request" => Frame::Request(parse(body)?),
        "reply" => Frame::Reply(parse(body)?),
        "push" => Frame::Push(parse(body)?),
        "ack" => Frame::Ack(parse(body)?),
        "gap" => Frame::Gap(parse(body)?),
        "kicked" => Frame::Kicked(parse(body)?),
        "go_away" => Frame::GoAway(parse(body)?),
        "refresh" => Frame::Refresh(parse(body)?),
        "refreshed" => Frame::Refreshed(parse(body)?),
        "register_push" => Frame::RegisterPush(parse(body)?),
        "push_registered" => Frame::PushRegistered(parse(body)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(DecodeError::UnknownType(shown));
        }
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Incremental TCP decoder over a caller-owned buffer: feed bytes, take frames.
#[derive(Debug, Default)]
pub struct TcpDecoder {
    buf: Vec<u8>,
}

impl TcpDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete frame. `Ok(None)` means more bytes are needed.
    /// A body that fails to decode is consumed, so the caller may continue
    /// unless the error says `must_close`.
    pub fn next_frame(&mut self, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
        let Some(len) = tcp_frame_len(&self.buf, limits)? else {
            return Ok(None);
        };
        let result = decode_body(&self.buf[LENGTH_PREFIX..LENGTH_PREFIX + len], limits);
        self.buf.drain(..LENGTH_PREFIX + len);
        if self.buf.is_empty() {
            // Idle connections keep no buffer: memory per idle connection is what
            // bounds how many one node can hold.
            self.buf = Vec::new();
        }
        result.map(Some)
    }
}
