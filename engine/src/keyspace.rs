//! The vocabulary of the key space that every part of the engine shares: which shard owns
//! a key, a key range's end, the head of a live key and the mutations the sequencer
//! streams to the shards. A leaf: it imports nothing from the rest of the crate, so any
//! module may use it without creating a cycle.

use bytes::Bytes;
use rivet_api::mvccpb::KeyValue;

/// The shard that owns `key`. Stable across restarts and members: page files are
/// partitioned by it, so it must never change for a data dir.
pub fn shard_of(key: &[u8], shard_count: usize) -> usize {
    if shard_count <= 1 {
        return 0;
    }
    (crc32c::crc32c(key) as usize) % shard_count
}

/// The end of a key range in etcd's encoding (`range_end`).
///
/// Worked example, with the key `b`:
/// - `range_end` empty → [`RangeEnd::Single`]: only `b`;
/// - `range_end == "\0"` → [`RangeEnd::FromKey`]: `b` and every key after it (with the key
///   `"\0"` or the empty key, every key);
/// - `range_end == "d"` → [`RangeEnd::Before`]: `b`, `c`, `cz…`, not `d`;
/// - `range_end == "a"` → [`RangeEnd::Before`] with `end <= key`: no key at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// `range_end` empty: just the key.
    Single,
    /// `range_end == "\0"`: every key at or after the key.
    FromKey,
    /// `[key, end)`; empty when `end <= key`.
    Before(Bytes),
}

impl RangeEnd {
    pub fn from_request(range_end: &Bytes) -> RangeEnd {
        if range_end.is_empty() {
            RangeEnd::Single
        } else if range_end.as_ref() == [0] {
            RangeEnd::FromKey
        } else {
            RangeEnd::Before(range_end.clone())
        }
    }

    /// Whether `candidate` lies in the range that starts at `key`.
    pub fn contains(&self, key: &[u8], candidate: &[u8]) -> bool {
        match self {
            RangeEnd::Single => candidate == key,
            RangeEnd::FromKey => candidate >= key,
            RangeEnd::Before(end) => candidate >= key && candidate < end.as_ref(),
        }
    }
}

/// The newest version of one live key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

impl Head {
    /// The key-value etcd answers for this head.
    pub fn key_value(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

/// One change for the shard that owns the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put { key: Bytes, head: Head },
    Delete { key: Bytes, revision: i64 },
}

impl Mutation {
    pub fn key(&self) -> &Bytes {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key, .. } => key,
        }
    }

    /// The revision this change belongs to.
    pub fn revision(&self) -> i64 {
        match self {
            Mutation::Put { head, .. } => head.mod_revision,
            Mutation::Delete { revision, .. } => *revision,
        }
    }
}

/// The changes a watch asks for were compacted away at this revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactedAt(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_ends_follow_etcds_encoding() {
        let b = b"b".as_slice();
        assert!(RangeEnd::from_request(&Bytes::new()).contains(b, b"b"));
        assert!(!RangeEnd::Single.contains(b, b"c"));
        let from = RangeEnd::from_request(&Bytes::from_static(b"\0"));
        assert_eq!(from, RangeEnd::FromKey);
        assert!(from.contains(b, b"zzz") && !from.contains(b, b"a"));
        let before = RangeEnd::from_request(&Bytes::from_static(b"d"));
        assert!(before.contains(b, b"cz") && !before.contains(b, b"d"));
        let inverted = RangeEnd::from_request(&Bytes::from_static(b"a"));
        assert!(!inverted.contains(b, b"b"));
    }

    #[test]
    fn shard_of_is_stable() {
        // Page files are partitioned by it: these values must never change.
        assert_eq!(shard_of(b"anything", 1), 0);
        assert_eq!(shard_of(b"foo", 3), (crc32c::crc32c(b"foo") as usize) % 3);
    }
}
