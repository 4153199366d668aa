//! W3C trace context (`traceparent`): continued from whoever called us when
//! they sent a valid one, started here otherwise.

/// The trace id of a valid version-00 `traceparent`, else `None`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    let valid = parts.len() == 4 && parts[0] == "00" && hex(parts[1], 32) && hex(parts[2], 16) && parts[3].len() == 2;
    valid.then(|| parts[1])
}

/// A `traceparent` for our next hop: the caller's trace when `from` is valid,
/// a new trace otherwise; always a new span id.
pub fn child_traceparent(from: Option<&str>) -> String {
    let span: u64 = rand::random::<u64>() | 1;
    let trace = from
        .and_then(trace_id)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>() | 1));
    format!("00-{trace}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_parents_are_continued_and_others_replaced() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(parent), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let child = child_traceparent(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, parent);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
            assert_eq!(trace_id(&child_traceparent(Some(bad))).map(str::len), Some(32));
        }
    }
}
