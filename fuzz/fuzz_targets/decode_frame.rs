//! Feeds arbitrary bytes to the TCP decoder and the WebSocket body decoder.
//! Neither may panic, allocate beyond the frame limit, or loop; any frame
//! that decodes must encode and decode back to itself.
#![no_main]

use duplex_protocol::{decode_body, encode_body, Limits, TcpDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_frame_bytes: 4096, max_depth: 16 };
    if let Ok(frame) = decode_body(data, &limits) {
        let mut again = Vec::new();
        encode_body(&frame, &mut again);
        assert_eq!(decode_body(&again, &Limits { max_frame_bytes: u32::MAX, max_depth: 16 }).ok(), Some(frame));
    }
    let mut decoder = TcpDecoder::new();
    // Split the input at an arbitrary point to exercise partial frames.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for part in [&data[..cut], &data[cut..]] {
        decoder.feed(part);
        for _ in 0..=data.len() {
            match decoder.next_frame(&limits) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.must_close() => return,
                Err(_) => {}
            }
        }
    }
});
