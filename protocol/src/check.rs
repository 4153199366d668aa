//! Structural check of a MessagePack body before it is parsed.
//!
//! Serde would happily recurse as deep as the input nests and trust declared
//! container lengths; this walk runs first, in constant stack, so that parsing
//! only ever sees bodies whose nesting is capped and whose every declared
//! length fits inside the bytes actually received. It also finds the
//! top-level `type` string, which tells "unknown frame type" apart from
//! "malformed body".

use rmp::Marker;

/// Highest nesting cap a configuration may set.
pub const MAX_NESTING_LIMIT: usize = 64;

/// Why a body failed the structural check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// Nesting deeper than allowed.
    TooDeep,
    /// Truncated, trailing bytes, a reserved marker, or a non-map top level.
    Malformed(&'static str),
}

/// Walks `body`, which must hold exactly one MessagePack value: a map.
/// Returns the value of its top-level `type` key when that is a string.
pub fn check_body(body: &[u8], max_depth: usize) -> Result<Option<&str>, CheckError> {
    let mut cur = Cursor { buf: body, pos: 0 };
    if body.is_empty() {
        return Err(CheckError::Malformed("empty body"));
    }
    let first = Marker::from_u8(body[0]);
    let top_len = match first {
        Marker::FixMap(n) => {
            cur.pos = 1;
            n as usize
        }
        Marker::Map16 => {
            cur.pos = 1;
            cur.be(2)? as usize
        }
        Marker::Map32 => {
            cur.pos = 1;
            cur.be(4)? as usize
        }
        _ => return Err(CheckError::Malformed("frame is not a map")),
    };
    if max_depth == 0 {
        return Err(CheckError::TooDeep);
    }
    let mut frame_type = None;
    for _ in 0..top_len {
        let key = cur.str_value()?;
        if key == Some("type") {
            frame_type = cur.str_value()?;
            if frame_type.is_none() {
                return Err(CheckError::Malformed("`type` is not a string"));
            }
        } else {
            if key.is_none() {
                // Non-string keys are legal MessagePack; skip the key we peeked at.
                cur.skip_value(max_depth - 1)?;
            }
            cur.skip_value(max_depth - 1)?;
        }
    }
    if cur.pos != body.len() {
        return Err(CheckError::Malformed("trailing bytes after frame"));
    }
    Ok(frame_type)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(CheckError::Malformed("truncated body"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, CheckError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Reads a string value if the next value is a string; otherwise leaves the cursor unmoved.
    fn str_value(&mut self) -> Result<Option<&'a str>, CheckError> {
        let start = self.pos;
        let marker = Marker::from_u8(*self.buf.get(self.pos).ok_or(CheckError::Malformed("truncated body"))?);
        self.pos += 1;
        let len = match marker {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 => self.be(1)? as usize,
            Marker::Str16 => self.be(2)? as usize,
            Marker::Str32 => self.be(4)? as usize,
            _ => {
                self.pos = start;
                return Ok(None);
            }
        };
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CheckError::Malformed("string is not UTF-8"))
    }

    /// Skips one value whose containers may nest `depth_left` more levels.
    /// An explicit stack of pending item counts keeps recursion off the call stack.
    fn skip_value(&mut self, depth_left: usize) -> Result<(), CheckError> {
        // pending[i] counts values still to skip at nesting level i; a fixed
        // array keeps this walk allocation-free.
        let mut pending = [0u64; MAX_NESTING_LIMIT + 1];
        pending[0] = 1;
        let mut len = 1usize;
        while len > 0 {
            if pending[len - 1] == 0 {
                len -= 1;
                continue;
            }
            pending[len - 1] -= 1;
            let marker = Marker::from_u8(self.take(1)?[0]);
            let children: u64 = match marker {
                Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => 0,
                Marker::U8 | Marker::I8 => self.skip(1)?,
                Marker::U16 | Marker::I16 => self.skip(2)?,
                Marker::U32 | Marker::I32 | Marker::F32 => self.skip(4)?,
                Marker::U64 | Marker::I64 | Marker::F64 => self.skip(8)?,
                Marker::FixStr(n) => self.skip(n as usize)?,
                Marker::Str8 | Marker::Bin8 => self.skip_len(1)?,
                Marker::Str16 | Marker::Bin16 => self.skip_len(2)?,
                Marker::Str32 | Marker::Bin32 => self.skip_len(4)?,
                Marker::FixExt1 => self.skip(2)?,
                Marker::FixExt2 => self.skip(3)?,
                Marker::FixExt4 => self.skip(5)?,
                Marker::FixExt8 => self.skip(9)?,
                Marker::FixExt16 => self.skip(17)?,
                Marker::Ext8 => self.skip_ext(1)?,
                Marker::Ext16 => self.skip_ext(2)?,
                Marker::Ext32 => self.skip_ext(4)?,
                Marker::FixArray(n) => u64::from(n),
                Marker::Array16 => self.be(2)?,
                Marker::Array32 => self.be(4)?,
                Marker::FixMap(n) => 2 * u64::from(n),
                Marker::Map16 => 2 * self.be(2)?,
                Marker::Map32 => 2 * self.be(4)?,
                Marker::Reserved => return Err(CheckError::Malformed("reserved marker 0xc1")),
            };
            let is_container = matches!(
                marker,
                Marker::FixArray(_)
                    | Marker::Array16
                    | Marker::Array32
                    | Marker::FixMap(_)
                    | Marker::Map16
                    | Marker::Map32
            );
            if is_container {
                // Every element takes at least one byte, so a count beyond the
                // remaining bytes is a lie and is refused before anything trusts it.
                if children > (self.buf.len() - self.pos) as u64 {
                    return Err(CheckError::Malformed("container longer than body"));
                }
                if len > depth_left || len >= MAX_NESTING_LIMIT {
                    return Err(CheckError::TooDeep);
                }
                pending[len] = children;
                len += 1;
            }
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<u64, CheckError> {
        self.take(n)?;
        Ok(0)
    }

    fn skip_len(&mut self, width: usize) -> Result<u64, CheckError> {
        let n = self.be(width)? as usize;
        self.skip(n)
    }

    fn skip_ext(&mut self, width: usize) -> Result<u64, CheckError> {
        let n = self.be(width)? as usize;
        self.skip(n + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_type_and_accepts_nested_values_within_limit() {
        let body = rmp_serde::to_vec_named(&serde_json::json!({
            "a": [1, [2, [3]]], "type": "ping", "id": 7
        }))
        .expect("encode");
        assert_eq!(check_body(&body, 8), Ok(Some("ping")));
    }

    #[test]
    fn refuses_deep_nesting() {
        let mut v = serde_json::json!(1);
        for _ in 0..40 {
            v = serde_json::json!([v]);
        }
        let body = rmp_serde::to_vec_named(&serde_json::json!({"type": "ping", "x": v})).expect("encode");
        assert_eq!(check_body(&body, 16), Err(CheckError::TooDeep));
        assert!(check_body(&body, 64).is_ok());
    }

    #[test]
    fn refuses_lying_lengths_truncation_and_trailing_bytes() {
        // map of one entry whose value claims an array of 2^32-1 elements.
        let lying = [0x81, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(check_body(&lying, 16), Err(CheckError::Malformed(_))));
        assert!(matches!(
            check_body(&[0x81, 0xa4, b't'], 16),
            Err(CheckError::Malformed(_))
        ));
        assert!(matches!(check_body(&[0x80, 0x00], 16), Err(CheckError::Malformed(_))));
        assert!(matches!(
            check_body(&[0x93, 1, 2, 3], 16),
            Err(CheckError::Malformed(_))
        ));
        assert!(matches!(check_body(&[0xc1], 16), Err(CheckError::Malformed(_))));
    }
}
