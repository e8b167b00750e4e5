//! Key-range permissions of one user, merged into disjoint intervals so that a check is a
//! binary search instead of etcd's interval-tree walk.
//!
//! etcd 3.4 (`auth/range_perm_cache.go`) puts every permission of every role of a user
//! into two interval trees (read, write) of `adt.BytesAffineInterval`s and asks
//! `Contains` (is the requested range covered by the union of the permissions?) for
//! ranges and `Intersects` for single keys. Both only depend on the *union* of the
//! intervals, so we store the union itself: sorted, disjoint, touching intervals merged.
//! A point check is then "the interval starting at or before the key ends after it", a
//! range check "one interval covers all of it".
//!
//! Key order is etcd's `BytesAffineComparable`: plain byte order, except that the empty
//! byte string is the *largest* element (+infinity). So:
//! - a permission `(key, "")` is the single key `[key, key+"\0")`;
//! - `(key, "\0")` is open-ended, `[key, +inf)` (from-key; with key `"\0"`: everything);
//! - `(key, end)` is `[key, end)`.
//!
//! Worked example: a user with role A = {READ `[a, c)`} and role B = {READWRITE `[b, e)`,
//! READ key `x`} has read intervals `[a, e)`, `[x, x\0)` and write interval `[b, e)`.
//! Reading `[a, d)` is allowed (covered by `[a, e)`), reading `[a, y)` is not (the gap
//! `[e, x)`), writing key `c` is allowed, writing `a` is not.

use bytes::Bytes;
use rivet_api::authpb::{permission, Permission};

/// The upper end of an interval: a key, or etcd's open end (the empty key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Key(Bytes),
    Infinity,
}

impl End {
    /// etcd's reading of a `range_end` given with a request or a permission whose
    /// `range_end` is not empty: `"\0"` means "to the end of the key space".
    fn from_range_end(range_end: &[u8]) -> End {
        if range_end == [0] {
            End::Infinity
        } else {
            End::Key(Bytes::copy_from_slice(range_end))
        }
    }

    fn after_key(key: &[u8]) -> End {
        let mut successor = Vec::with_capacity(key.len() + 1);
        successor.extend_from_slice(key);
        successor.push(0);
        End::Key(Bytes::from(successor))
    }

    fn is_after(&self, key: &[u8]) -> bool {
        match self {
            End::Key(end) => key < end.as_ref(),
            End::Infinity => true,
        }
    }
}

/// A half-open interval `[begin, end)` with a non-empty `begin` below `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInterval {
    pub begin: Bytes,
    pub end: End,
}

impl KeyInterval {
    /// The interval a stored permission grants, or `None` for one that grants nothing
    /// (an empty key, or an end at or before the key). Such permissions can only come
    /// from etcd 3.4.23-era data: `RoleGrantPermission` refuses them (later 3.4's
    /// `isValidPermissionRange`).
    pub fn of_permission(key: &[u8], range_end: &[u8]) -> Option<KeyInterval> {
        if key.is_empty() {
            return None;
        }
        let end = if range_end.is_empty() {
            End::after_key(key)
        } else {
            End::from_range_end(range_end)
        };
        if !end.is_after(key) {
            return None;
        }
        Some(KeyInterval {
            begin: Bytes::copy_from_slice(key),
            end,
        })
    }
}

/// A union of key intervals: sorted by `begin`, disjoint, and never touching (touching
/// intervals are merged, as etcd's `Contains` treats `[a, b)` and `[b, c)` as covering
/// `[a, c)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    intervals: Vec<KeyInterval>,
}

impl KeySet {
    /// Builds the union of any intervals, in any order.
    pub fn from_intervals(mut intervals: Vec<KeyInterval>) -> KeySet {
        intervals.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut merged: Vec<KeyInterval> = Vec::with_capacity(intervals.len());
        for interval in intervals {
            if let Some(last) = merged.last_mut() {
                // Overlapping or touching: `last.end >= interval.begin`.
                let reaches = match &last.end {
                    End::Infinity => true,
                    End::Key(end) => end.as_ref() >= interval.begin.as_ref(),
                };
                if reaches {
                    if interval.end > last.end {
                        last.end = interval.end;
                    }
                    continue;
                }
            }
            merged.push(interval);
        }
        KeySet { intervals: merged }
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    pub fn intervals(&self) -> &[KeyInterval] {
        &self.intervals
    }

    /// The interval whose `begin` is the greatest at or before `key`.
    fn interval_at(&self, key: &[u8]) -> Option<&KeyInterval> {
        let after = self
            .intervals
            .partition_point(|interval| interval.begin.as_ref() <= key);
        after.checked_sub(1).and_then(|i| self.intervals.get(i))
    }

    /// etcd's `checkKeyPoint`: does some permission hold this single key?
    ///
    /// The empty key is +infinity in etcd's order, so its "point" `["", "\0")` is an
    /// inverted interval that etcd's tree search finds overlapping only open-ended
    /// permissions (along the path it walks). We answer: any open-ended permission. No
    /// client request reaches this with an empty key except through a raw watch
    /// (`v3rpc` turns a watch's empty key into `"\0"` first) or a check the caller chose.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        if key.is_empty() {
            return self
                .intervals
                .last()
                .is_some_and(|interval| interval.end == End::Infinity);
        }
        self.interval_at(key)
            .is_some_and(|interval| interval.end.is_after(key))
    }

    /// etcd's `checkKeyInterval`: is every key of `[key, range_end)` held? `range_end`
    /// `"\0"` is open-ended; an empty `range_end` is the single key (etcd's
    /// `isRangeOpPermitted` dispatches on it before calling this).
    ///
    /// An inverted or empty request interval (end at or before its begin) is, in etcd's
    /// interval arithmetic, overlapped exactly by the permissions holding its begin key,
    /// so it is allowed when `key` itself is. A range starting at the empty key (+inf)
    /// overlaps nothing and is never allowed.
    pub fn contains_range(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.contains_key(key);
        }
        if key.is_empty() {
            return false;
        }
        let end = End::from_range_end(range_end);
        if !end.is_after(key) {
            return self.contains_key(key);
        }
        self.interval_at(key)
            .is_some_and(|interval| interval.end.is_after(key) && interval.end >= end)
    }
}

/// The merged read and write permissions of one user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePermissions {
    pub read: KeySet,
    pub write: KeySet,
}

/// What an operation needs on its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl RangePermissions {
    /// etcd's `getMergedPerms`: every permission of every given role. A permission with
    /// an unknown type grants nothing (etcd's switch has no default).
    pub fn merge<'a>(permissions: impl Iterator<Item = &'a Permission>) -> RangePermissions {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for permission in permissions {
            let Some(interval) = KeyInterval::of_permission(&permission.key, &permission.range_end)
            else {
                continue;
            };
            match permission::Type::try_from(permission.perm_type) {
                Ok(permission::Type::Read) => read.push(interval),
                Ok(permission::Type::Write) => write.push(interval),
                Ok(permission::Type::Readwrite) => {
                    read.push(interval.clone());
                    write.push(interval);
                }
                Err(_) => {}
            }
        }
        RangePermissions {
            read: KeySet::from_intervals(read),
            write: KeySet::from_intervals(write),
        }
    }

    pub fn permits(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        set.contains_range(key, range_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: permission::Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
        }
    }

    fn set(perms: &[(&str, &str)]) -> KeySet {
        KeySet::from_intervals(
            perms
                .iter()
                .filter_map(|(k, e)| KeyInterval::of_permission(k.as_bytes(), e.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn single_key_permission_holds_only_that_key() {
        let s = set(&[("foo", "")]);
        assert!(s.contains_key(b"foo"));
        assert!(!s.contains_key(b"fo"));
        assert!(!s.contains_key(b"foo\0"));
        assert!(!s.contains_key(b"foob"));
        // A range that is exactly the key.
        assert!(s.contains_range(b"foo", b"foo\0"));
        assert!(!s.contains_range(b"foo", b"foo\0\0"));
    }

    #[test]
    fn prefix_and_from_key_permissions() {
        // etcdctl role grant-permission --prefix r read foo -> [foo, fop)
        let s = set(&[("foo", "fop")]);
        assert!(s.contains_key(b"foo"));
        assert!(s.contains_key(b"foo/bar"));
        assert!(!s.contains_key(b"fop"));
        assert!(s.contains_range(b"foo/", b"foo0"));
        assert!(s.contains_range(b"foo", b"fop"));
        assert!(!s.contains_range(b"foo", b"fopa"));
        assert!(!s.contains_range(b"foo", b"\0"));
        // --from-key: [foo, +inf)
        let s = set(&[("foo", "\0")]);
        assert!(s.contains_key(b"zzz"));
        assert!(!s.contains_key(b"fo"));
        assert!(s.contains_range(b"foo", b"\0"));
        assert!(s.contains_range(b"zz", b"\0"));
        assert!(!s.contains_range(b"a", b"\0"));
    }

    #[test]
    fn whole_key_space_permission() {
        // etcdctl role grant-permission --prefix r readwrite "" sends key "\0", end "\0"
        // (ETCD_LESSONS 27).
        let s = set(&[("\0", "\0")]);
        assert!(s.contains_key(b"\0"));
        assert!(s.contains_key(b"anything"));
        assert!(s.contains_range(b"\0", b"\0"));
        assert!(s.contains_range(b"a", b"b"));
    }

    #[test]
    fn union_covers_across_touching_and_overlapping_intervals() {
        let s = set(&[("a", "c"), ("c", "e"), ("d", "g"), ("x", "")]);
        assert_eq!(s.intervals().len(), 2);
        assert!(s.contains_range(b"a", b"g"));
        assert!(s.contains_range(b"b", b"f"));
        assert!(!s.contains_range(b"a", b"h"));
        assert!(!s.contains_range(b"a", b"x\0"));
        assert!(s.contains_key(b"x"));
        // A gap between two intervals is not covered.
        let s = set(&[("a", "c"), ("d", "g")]);
        assert!(!s.contains_range(b"a", b"e"));
        assert!(s.contains_range(b"d", b"e"));
    }

    #[test]
    fn open_end_absorbs_everything_after() {
        let s = set(&[("m", "\0"), ("n", "p"), ("a", "b")]);
        assert_eq!(s.intervals().len(), 2);
        assert!(s.contains_range(b"m", b"\0"));
        assert!(!s.contains_range(b"a", b"\0"));
    }

    #[test]
    fn inverted_request_ranges_follow_etcd() {
        let s = set(&[("b", "c")]);
        // [ba, a) is inverted: allowed when its begin key is.
        assert!(s.contains_range(b"ba", b"a"));
        assert!(!s.contains_range(b"d", b"a"));
        // [b, b) is empty: same rule.
        assert!(s.contains_range(b"b", b"b"));
    }

    #[test]
    fn empty_key_is_infinity() {
        let s = set(&[("a", "\0")]);
        assert!(!s.contains_range(b"", b"\0"));
        assert!(!s.contains_range(b"", b"z"));
        assert!(s.contains_key(b""));
        let s = set(&[("a", "b")]);
        assert!(!s.contains_key(b""));
        // Permissions that grant nothing.
        assert!(KeyInterval::of_permission(b"", b"\0").is_none());
        assert!(KeyInterval::of_permission(b"", b"").is_none());
        assert!(KeyInterval::of_permission(b"b", b"a").is_none());
        assert!(KeyInterval::of_permission(b"b", b"b").is_none());
    }

    #[test]
    fn read_write_types_split() {
        let perms = [
            perm(permission::Type::Read, "r", "s"),
            perm(permission::Type::Write, "w", "x"),
            perm(permission::Type::Readwrite, "rw", ""),
            Permission {
                perm_type: 7,
                key: Bytes::from_static(b"bogus"),
                range_end: Bytes::new(),
            },
        ];
        let p = RangePermissions::merge(perms.iter());
        assert!(p.permits(b"ra", b"", Access::Read));
        assert!(!p.permits(b"ra", b"", Access::Write));
        assert!(p.permits(b"wa", b"", Access::Write));
        assert!(!p.permits(b"wa", b"", Access::Read));
        assert!(p.permits(b"rw", b"", Access::Write));
        assert!(p.permits(b"rw", b"", Access::Read));
        assert!(!p.permits(b"bogus", b"", Access::Read));
        assert!(!p.permits(b"bogus", b"", Access::Write));
    }

    /// The merged structure agrees with a direct reading of etcd's interval semantics
    /// (union coverage) on random permissions and queries.
    #[test]
    fn agrees_with_a_brute_force_model() {
        use proptest::prelude::*;
        let key = || proptest::collection::vec(0u8..4, 0..3);
        let runner_config = ProptestConfig::with_cases(512);
        proptest!(runner_config, |(
            perms in proptest::collection::vec((key(), key(), any::<bool>()), 0..8),
            queries in proptest::collection::vec((key(), key(), any::<bool>()), 1..16),
        )| {
            let intervals: Vec<KeyInterval> = perms
                .iter()
                .filter_map(|(k, e, open)| {
                    let end: Vec<u8> = if *open { vec![0] } else { e.clone() };
                    KeyInterval::of_permission(k, &end)
                })
                .collect();
            let s = KeySet::from_intervals(intervals.clone());
            for (k, e, open) in &queries {
                let end: Vec<u8> = if *open { vec![0] } else { e.clone() };
                prop_assert_eq!(s.contains_range(k, &end), model(&intervals, k, &end));
            }
        });
    }

    /// Every key of the request (over a small alphabet, bounded length) is held by some
    /// interval. Keys are compared up to length 4 over {0..4}, which decides coverage for
    /// intervals whose bounds have length < 3.
    fn model(intervals: &[KeyInterval], key: &[u8], range_end: &[u8]) -> bool {
        let held = |k: &[u8]| {
            intervals
                .iter()
                .any(|i| i.begin.as_ref() <= k && i.end.is_after(k))
        };
        if key.is_empty() {
            if range_end.is_empty() {
                return intervals.iter().any(|i| i.end == End::Infinity);
            }
            return false;
        }
        if range_end.is_empty() {
            return held(key);
        }
        let end = End::from_range_end(range_end);
        if !end.is_after(key) {
            return held(key);
        }
        let mut all = Vec::new();
        fn gen(prefix: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) {
            out.push(prefix.clone());
            if prefix.len() == 4 {
                return;
            }
            for b in 0u8..4 {
                prefix.push(b);
                gen(prefix, out);
                prefix.pop();
            }
        }
        gen(&mut Vec::new(), &mut all);
        all.iter()
            .filter(|k| !k.is_empty() && k.as_slice() >= key && end.is_after(k))
            .all(|k| held(k))
    }
}
