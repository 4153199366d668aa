//! Lua scripts of the Redis message queue. Each runs atomically on keys that
//! share the client's hash slot (`dx:{c:<client>}:...`), so the queue works
//! on Redis Cluster. Layout per client, under prefix `P`:
//!
//! - `P h`: hash of the client's counters and its pending messages. Field `m`
//!   holds the counters, packed as doubles (see [`COUNTERS`] and
//!   `scripts/counters.lua`); per pending
//!   message `r<seq>` -> its record (MessagePack) and `e<seq>` -> its expiry
//!   and size, packed as two doubles (so acks and expiry read 16 bytes, not
//!   the record); `w` the highest seq written to any connection of the
//!   client (`NOTE_WRITTEN`), which bounds how far a resume may ack
//! - `P s:<seq / 10>`: status bucket (named by the seq's decimal digits
//!   without the last, so `P s:` for seqs 1-9): field `<seq>` = `<nonce> <created>
//!   <expires>`, and `<seq>s`, `<seq>a`, `<seq>x` the time the message was
//!   sent, acked, expired. A small listpack: every write scans it, so
//!   10 messages per bucket (32 cost ~6% more Redis CPU per message than
//!   16, with full buckets; a key per 10 messages costs ~6 bytes each).
//!   Sent marks are plain `HSETNX` writes (`RedisStore::mark_sent_many`).
//! - `P i:<key>`: idempotency key -> `seq~nonce`
//! - `t` in `h`: set once a message asked for its expiry to be reported;
//!   then `x` holds the seqs of messages that expired since the last
//!   `EXPIRE_DUE` scan (space-separated, `xn` of them, at most
//!   [`crate::EXPIRED_LOG_MAX`]; `xd` counts those beyond)
//! - `P{x:<n>}:expiring` (16 shards, not in the client's slot): sorted set of
//!   clients whose expiries are reported, scored no later than their
//!   earliest pending expiry (the time of an enqueue that left expiries
//!   waiting to be reported), with `P{x:<n>}:versions` (client -> version of
//!   its entry) and `P{x:<n>}:version` (the shard's counter). An enqueue
//!   that lowers a client's earliest expiry sets its entry after its script;
//!   a scan (`RedisStore::take_expired`) moves it only if its version is
//!   still the one the scan read (`EXPIRY_INDEX`)
//! - `P{f:<n>}:fallbacks-due` / `P{f:<n>}:fallbacks` (8 shards, not in the
//!   client's slot): the push fallback's schedule (`fallbacks.rs`), entry
//!   `<seq>|<client>` -> due time / `<expires>\n<spec>`
//! - `P owner`: the user the client id belongs to (written by the route
//!   claim); the enqueue extends its life with the queue's
//!
//! The pending seqs are those above the low-water mark with an `e<seq>`
//! field: seqs are given out one by one, acks remove a prefix and expiry
//! leaves holes, so a range is read by field name (or, when holes make it
//! much wider than the queue, from the hash's field names).
//!
//! A message costs two fields in `h` and one status field, no key of its
//! own: the layout is shaped by the Redis commands per message and the Lua
//! work around them, the queue's main cost under load (docs/BENCHMARKS.md).
//! Numbers are where that Lua work goes: on Redis 7.0 every `tonumber` of a
//! string is a `strtod` and every number handed to `redis.call` or joined
//! into a string an `snprintf` (each ~0.3-0.5 us here). So the counters and
//! the numeric arguments travel packed (`struct`, no text conversion at
//! all), and values that only pass through (the status text, the time of a
//! note) stay strings.
//!
//! Every key expires `STATUS_RETENTION_MS` (plus up to an hour) after the last
//! message in it would expire, so an abandoned client leaves nothing behind.
//!
//! The scripts are the Lua files in `store/scripts/`; a queue script is
//! `counters.lua` + `queue.lua` + its operation + `batch.lua`, which runs the
//! operation once per caller the call carries (see `batch.rs`): one EVALSHA
//! does the work of many concurrent callers.

/// The counters in field `m` of a client's hash, in their packed order (each
/// a little-endian double), named as `load_counters` in `counters.lua` names
/// them (see there for what each means).
pub const COUNTERS: [&str; 10] = [
    "seq",
    "pending",
    "bytes",
    "acked",
    "low",
    "expired",
    "next_expiry",
    "granted",
    "bucket",
    "bucket_until",
];

/// The name of message `seq`'s status bucket: `seq` in decimal without its
/// last digit (empty for 1-9). Decimal so that the scripts cut it from the
/// seq's text instead of dividing and formatting a number (Lua formats
/// every number as a float: ~0.4 us each on Redis 7.0).
pub fn status_bucket_name(seq: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(seq);
    text[..text.len() - 1].to_owned()
}

/// A client's counters (field `m`), named as in [`COUNTERS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    pub seq: f64,
    pub pending: f64,
    pub bytes: f64,
    pub acked: f64,
    pub low: f64,
    pub expired: f64,
    pub next_expiry: f64,
    pub granted: f64,
    pub bucket: f64,
    pub bucket_until: f64,
}

/// The counters of a client's hash (field `m`), unpacked. `None` if the
/// value is not a packed set.
pub fn unpack_counters(m: &[u8]) -> Option<Counters> {
    let mut v = [0.0; COUNTERS.len()];
    if m.len() != v.len() * 8 {
        return None;
    }
    for (value, bytes) in v.iter_mut().zip(m.chunks_exact(8)) {
        *value = f64::from_le_bytes(bytes.try_into().ok()?);
    }
    let [seq, pending, bytes, acked, low, expired, next_expiry, granted, bucket, bucket_until] = v;
    Some(Counters {
        seq,
        pending,
        bytes,
        acked,
        low,
        expired,
        next_expiry,
        granted,
        bucket,
        bucket_until,
    })
}

/// Packs numbers as the scripts' `struct.unpack('<d...')` reads them (every
/// value the queue passes is an integer below 2^53, exact in a double).
pub fn pack_numbers(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()
}

macro_rules! script {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/", $name))
    };
}

/// A batched queue script: the counters, the queue helpers, one operation
/// (`op`, with whatever it reads for all callers first) and the loop over callers.
macro_rules! queue_script {
    ($op:literal) => {
        concat!(
            script!("counters.lua"),
            script!("queue.lua"),
            script!($op),
            script!("batch.lua")
        )
    };
}

/// Stores a message (`enqueue.lua`).
pub const ENQUEUE: &str = queue_script!("enqueue.lua");
/// Reads pending messages (`pending.lua`).
pub const PENDING: &str = queue_script!("pending.lua");
/// A cumulative ack, or a resume (`ack.lua`).
pub const ACK: &str = queue_script!("ack.lua");
/// A queue's counts (`info.lua`).
pub const INFO: &str = queue_script!("info.lua");
/// Expires a client's due messages and takes its unreported expiries (`expire_due.lua`).
pub const EXPIRE_DUE: &str = queue_script!("expire_due.lua");
/// Sets a client's entry in the expiry index after an enqueue (`expiry_set.lua`, batched).
pub const EXPIRY_SET: &str = concat!(script!("expiry_set.lua"), script!("batch.lua"));
/// Reads and moves entries of one shard of the expiry index (`expiry_index.lua`).
pub const EXPIRY_INDEX: &str = script!("expiry_index.lua");
/// Raises the written high-water mark (`note_written.lua`).
pub const NOTE_WRITTEN: &str = script!("note_written.lua");
/// Claims a client's route (`claim.lua`).
pub const CLAIM: &str = concat!(script!("counters.lua"), script!("claim.lua"));
/// Renews a route lease (`renew_route.lua`).
pub const RENEW_ROUTE: &str = concat!(script!("counters.lua"), script!("renew_route.lua"));
/// Deletes a route still held by one connection (`release_route.lua`).
pub const RELEASE_ROUTE: &str = script!("release_route.lua");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::STATUS_RETENTION_MS;

    /// Messages whose statuses share one bucket key (`PER_BUCKET` in the
    /// scripts, which only compare bucket numbers; the names come from
    /// [`status_bucket_name`]).
    const STATUSES_PER_BUCKET: u64 = 10;

    #[test]
    fn the_scripts_retention_is_the_stores() {
        // The scripts spell STATUS_RETENTION_MS out: Rust cannot concat! a const.
        for script in [ENQUEUE, PENDING, ACK, INFO, EXPIRE_DUE] {
            assert!(script.contains(&format!("local RETENTION = {STATUS_RETENTION_MS}\n")));
        }
    }

    #[test]
    fn the_scripts_bucket_statuses_as_rust_does() {
        for script in [ENQUEUE, PENDING, ACK, INFO, EXPIRE_DUE] {
            assert!(script.contains(&format!("local PER_BUCKET = {STATUSES_PER_BUCKET}\n")));
        }
    }

    #[test]
    fn a_bucket_is_named_by_the_seqs_digits_but_the_last() {
        assert_eq!(status_bucket_name(1), "");
        assert_eq!(status_bucket_name(9), "");
        assert_eq!(status_bucket_name(10), "1");
        assert_eq!(status_bucket_name(19), "1");
        assert_eq!(status_bucket_name(1234), "123");
        // The bucket number the scripts compare (floor(seq / PER_BUCKET)) names the same bucket.
        for seq in [10u64, 99, 100, 12_345, (1 << 53) - 1] {
            assert_eq!(status_bucket_name(seq), (seq / STATUSES_PER_BUCKET).to_string());
        }
    }

    #[test]
    fn the_scripts_name_the_counters_in_the_packed_order() {
        let lua = include_str!("../../scripts/counters.lua");
        let names = |line: &str| -> Vec<String> {
            line.split('=')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|f| f.trim().trim_start_matches("c.").to_owned())
                .collect()
        };
        let mut lists = lua.lines().filter(|l| l.trim_start().starts_with("c.seq,")).map(names);
        let (load, default) = (lists.next().expect("load"), lists.next().expect("default"));
        assert_eq!(load, COUNTERS);
        assert_eq!(default, COUNTERS);
        let pack = lua.split("struct.pack(COUNTERS,").nth(1).expect("pack_counters");
        let packed: Vec<String> = pack
            .split(')')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().trim_start_matches("c.").to_owned())
            .collect();
        assert_eq!(packed, COUNTERS);
    }

    #[test]
    fn the_scripts_pack_the_counters_rust_unpacks() {
        let format = format!("local COUNTERS = '<{}'\n", "d".repeat(COUNTERS.len()));
        for script in [ENQUEUE, PENDING, ACK, INFO, EXPIRE_DUE] {
            assert!(script.contains(&format));
        }
        let packed = pack_numbers(&[7, 3, 300, 4, 4, 0, 9_007_199_254_740_991, 1, 2, (1 << 53) - 1]);
        let counters = unpack_counters(&packed).expect("ten doubles");
        assert_eq!((counters.seq, counters.pending, counters.bytes), (7.0, 3.0, 300.0));
        assert_eq!(counters.next_expiry, 9_007_199_254_740_991.0);
        assert_eq!(counters.bucket_until, 9_007_199_254_740_991.0);
        assert!(unpack_counters(&packed[..72]).is_none());
    }
}
