//! KeyIndex against a simple model: random sequences of put / delete / delete-range /
//! compact with increasing revisions; after every step every query is compared with the
//! model at revisions at or after the compact revision, for every form of range end.
//!
//! Two models run side by side: `compacted` applies etcd's compaction rule the obvious
//! way, and `full` never compacts — queries at revisions >= the compact revision must give
//! the same answers on both (compaction must not change visible history).

use std::collections::BTreeMap;

use proptest::prelude::*;
use rivet_engine::keyspace::RangeEnd;
use rivet_engine::mvcc::{Change, KeyIndex};
use rivet_engine::page::PagePtr;

/// key → versions in revision order: (revision, Some(ptr) for a put, None for a tombstone).
type Model = BTreeMap<Vec<u8>, Vec<(i64, Option<u64>)>>;

/// Keys chosen to sit next to each other in byte order, including "\0" and 0xff.
const KEYS: &[&[u8]] = &[
    b"\0",
    b"\0\0",
    b"a",
    b"a\0",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"c",
    b"\xff",
    b"\xff\xff",
];
/// Range starts and ends: the keys plus the empty key and keys not in the index.
const BOUNDS: &[&[u8]] = &[
    b"",
    b"\0",
    b"\0\0",
    b"a",
    b"a\0",
    b"aa",
    b"ab",
    b"abc",
    b"b",
    b"bb",
    b"c",
    b"\xff",
    b"\xff\xff",
    b"\xff\xff\xff",
];

fn ptr_of(revision: i64) -> PagePtr {
    let revision = u32::try_from(revision).expect("small revisions");
    PagePtr::new(revision % 3, revision * 8)
}

fn ptr_bits(ptr: PagePtr) -> u64 {
    (u64::from(ptr.segment()) << 32) | u64::from(ptr.offset())
}

#[derive(Clone, Debug)]
enum EndSpec {
    Single,
    FromKey,
    Before(usize),
}

impl EndSpec {
    fn to_range_end(&self) -> RangeEnd {
        match self {
            EndSpec::Single => RangeEnd::Single,
            EndSpec::FromKey => RangeEnd::FromKey,
            EndSpec::Before(index) => RangeEnd::Before(bytes::Bytes::from_static(BOUNDS[*index])),
        }
    }
}

#[derive(Clone, Debug)]
struct Probe {
    /// Picks a revision between the compact revision and the current one (+1).
    at: u16,
    start: usize,
    end: EndSpec,
    /// Picks the `changes` window.
    from: u16,
    to: u16,
}

#[derive(Clone, Debug)]
enum Op {
    Put(usize),
    Delete(usize),
    DeleteRange(usize, EndSpec),
    /// Compacts at a revision picked between the last compact revision and the current one.
    Compact(u16),
}

fn end_spec() -> impl Strategy<Value = EndSpec> {
    prop_oneof![
        1 => Just(EndSpec::Single),
        1 => Just(EndSpec::FromKey),
        3 => (0..BOUNDS.len()).prop_map(EndSpec::Before),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS.len()).prop_map(Op::Put),
        2 => (0..KEYS.len()).prop_map(Op::Delete),
        1 => ((0..BOUNDS.len()), end_spec()).prop_map(|(start, end)| Op::DeleteRange(start, end)),
        1 => any::<u16>().prop_map(Op::Compact),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        any::<u16>(),
        0..BOUNDS.len(),
        end_spec(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(at, start, end, from, to)| Probe {
            at,
            start,
            end,
            from,
            to,
        })
}

fn in_range(key: &[u8], start: &[u8], end: &EndSpec) -> bool {
    match end {
        EndSpec::Single => key == start,
        EndSpec::FromKey => key >= start,
        EndSpec::Before(index) => key >= start && key < BOUNDS[*index],
    }
}

fn model_visible(history: &[(i64, Option<u64>)], at: i64) -> Option<(i64, u64)> {
    let (revision, ptr) = history.iter().rev().find(|(revision, _)| *revision <= at)?;
    ptr.map(|ptr| (*revision, ptr))
}

fn model_range(model: &Model, start: &[u8], end: &EndSpec, at: i64) -> Vec<(Vec<u8>, i64, u64)> {
    model
        .iter()
        .filter(|(key, _)| in_range(key, start, end))
        .filter_map(|(key, history)| {
            model_visible(history, at).map(|(revision, ptr)| (key.clone(), revision, ptr))
        })
        .collect()
}

fn model_changes(
    model: &Model,
    start: &[u8],
    end: &EndSpec,
    from: i64,
    to: i64,
) -> Vec<(Vec<u8>, i64, u64, bool)> {
    let mut changes: Vec<_> = model
        .iter()
        .filter(|(key, _)| in_range(key, start, end))
        .flat_map(|(key, history)| {
            history
                .iter()
                .filter(|(revision, _)| from <= *revision && *revision <= to)
                .map(|(revision, ptr)| {
                    let bits = ptr.unwrap_or_else(|| ptr_bits(ptr_of(*revision)));
                    (key.clone(), *revision, bits, ptr.is_none())
                })
        })
        .collect();
    changes.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    changes
}

fn model_compact(model: &mut Model, at: i64) {
    model.retain(|_, history| {
        if let Some(latest) = history.iter().rposition(|(revision, _)| *revision <= at) {
            let keep_from = if history[latest].1.is_none() {
                latest + 1
            } else {
                latest
            };
            history.drain(..keep_from);
        }
        !history.is_empty()
    });
}

fn model_is_live(model: &Model, key: &[u8]) -> bool {
    model
        .get(key)
        .and_then(|history| history.last())
        .is_some_and(|(_, ptr)| ptr.is_some())
}

fn index_range(index: &KeyIndex, start: &[u8], end: &EndSpec, at: i64) -> Vec<(Vec<u8>, i64, u64)> {
    index
        .range(start, &end.to_range_end(), at)
        .map(|(key, revision, ptr)| (key.to_vec(), revision, ptr_bits(ptr)))
        .collect()
}

fn index_changes(changes: &[Change<'_>]) -> Vec<(Vec<u8>, i64, u64, bool)> {
    changes
        .iter()
        .map(|change| {
            (
                change.key.to_vec(),
                change.revision,
                ptr_bits(change.ptr),
                change.tombstone,
            )
        })
        .collect()
}

struct State {
    index: KeyIndex,
    compacted: Model,
    full: Model,
    revision: i64,
    compact_revision: i64,
}

impl State {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(key) => {
                self.revision += 1;
                let key = KEYS[*key];
                let ptr = ptr_of(self.revision);
                self.index.put(key, self.revision, ptr);
                for model in [&mut self.compacted, &mut self.full] {
                    model
                        .entry(key.to_vec())
                        .or_default()
                        .push((self.revision, Some(ptr_bits(ptr))));
                }
            }
            Op::Delete(key) => self.delete(&[KEYS[*key]]),
            Op::DeleteRange(start, end) => {
                let keys: Vec<&[u8]> = KEYS
                    .iter()
                    .copied()
                    .filter(|key| in_range(key, BOUNDS[*start], end))
                    .collect();
                self.delete(&keys);
            }
            Op::Compact(pick) => {
                let span = self.revision - self.compact_revision + 1;
                let at = self.compact_revision + i64::from(*pick) % span;
                self.index.compact(at);
                model_compact(&mut self.compacted, at);
                self.compact_revision = at;
            }
        }
    }

    /// One delete request: all live keys among `keys` get tombstones at one new revision,
    /// which is consumed only if something was deleted (etcd's rule).
    fn delete(&mut self, keys: &[&[u8]]) {
        let revision = self.revision + 1;
        let mut deleted = false;
        for key in keys {
            let live = model_is_live(&self.compacted, key);
            assert_eq!(model_is_live(&self.full, key), live);
            let done = self.index.tombstone(key, revision, ptr_of(revision));
            assert_eq!(done, live, "tombstone({key:?}) at {revision}");
            if live {
                for model in [&mut self.compacted, &mut self.full] {
                    model.get_mut(*key).expect("live").push((revision, None));
                }
                deleted = true;
            }
        }
        if deleted {
            self.revision = revision;
        }
    }

    fn pick_revision(&self, pick: u16) -> i64 {
        let span = self.revision - self.compact_revision + 2;
        self.compact_revision + i64::from(pick) % span
    }

    fn check(&self, probes: &[Probe]) {
        assert_eq!(self.index.key_count(), self.compacted.len(), "key_count");
        let versions: usize = self.compacted.values().map(Vec::len).sum();
        assert_eq!(self.index.version_count(), versions, "version_count");

        for at in [self.compact_revision, self.revision, self.revision + 1] {
            for key in KEYS.iter().chain(BOUNDS) {
                let expected = self
                    .compacted
                    .get(*key)
                    .and_then(|history| model_visible(history, at));
                let got = self
                    .index
                    .get(key, at)
                    .map(|(revision, ptr)| (revision, ptr_bits(ptr)));
                assert_eq!(got, expected, "get({key:?}, {at})");
                let full = self
                    .full
                    .get(*key)
                    .and_then(|history| model_visible(history, at));
                assert_eq!(
                    got, full,
                    "get({key:?}, {at}) against the uncompacted history"
                );
            }
        }

        for probe in probes {
            let at = self.pick_revision(probe.at);
            let start = BOUNDS[probe.start];
            let expected = model_range(&self.compacted, start, &probe.end, at);
            let got = index_range(&self.index, start, &probe.end, at);
            assert_eq!(got, expected, "range({start:?}, {:?}, {at})", probe.end);
            assert_eq!(
                model_range(&self.full, start, &probe.end, at),
                expected,
                "compaction changed range({start:?}, {:?}, {at})",
                probe.end
            );
            let mut reversed: Vec<_> = self
                .index
                .range_rev(start, &probe.end.to_range_end(), at)
                .map(|(key, revision, ptr)| (key.to_vec(), revision, ptr_bits(ptr)))
                .collect();
            reversed.reverse();
            assert_eq!(
                reversed, expected,
                "range_rev({start:?}, {:?}, {at})",
                probe.end
            );
            assert_eq!(
                self.index.count(start, &probe.end.to_range_end(), at),
                expected.len(),
                "count({start:?}, {:?}, {at})",
                probe.end
            );

            // changes over any window, including below the compact revision (compared with
            // the compacted model) and above it (also with the full history).
            let first = self
                .pick_revision(probe.from)
                .min(self.pick_revision(probe.to));
            let last = self
                .pick_revision(probe.from)
                .max(self.pick_revision(probe.to));
            for (from, to) in [(first, last), (0, last), (last, first), (first, i64::MAX)] {
                let expected = model_changes(&self.compacted, start, &probe.end, from, to);
                let got = index_changes(&self.index.changes(
                    start,
                    &probe.end.to_range_end(),
                    from,
                    to,
                ));
                assert_eq!(
                    got, expected,
                    "changes({start:?}, {:?}, {from}, {to})",
                    probe.end
                );
                if from > self.compact_revision {
                    let full = model_changes(&self.full, start, &probe.end, from, to);
                    assert_eq!(got, full, "changes after the compact revision differ");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn key_index_matches_model(steps in prop::collection::vec((op(), prop::collection::vec(probe(), 0..4)), 1..80)) {
        let mut state = State {
            index: KeyIndex::new(),
            compacted: Model::new(),
            full: Model::new(),
            revision: 0,
            compact_revision: 0,
        };
        for (op, probes) in &steps {
            state.apply(op);
            state.check(probes);
        }
        // A final compaction at the current revision leaves exactly the live keys, one
        // version each.
        state.apply(&Op::Compact(u16::MAX));
        let live = state.full.keys().filter(|key| model_is_live(&state.full, key)).count();
        let at = state.revision;
        state.index.compact(at);
        model_compact(&mut state.compacted, at);
        state.compact_revision = at;
        state.check(&[]);
        prop_assert_eq!(state.index.key_count(), live);
        prop_assert_eq!(state.index.version_count(), live);
    }
}

#[test]
fn range_edges() {
    let mut index = KeyIndex::new();
    for (revision, key) in (1..).zip([b"\0".as_slice(), b"a", b"b", b"c"]) {
        index.put(key, revision, ptr_of(revision));
    }
    let keys = |iter: &mut dyn Iterator<Item = (&[u8], i64, PagePtr)>| -> Vec<Vec<u8>> {
        iter.map(|(key, _, _)| key.to_vec()).collect()
    };
    // etcd's "all keys": key "\0" (or empty) with range_end "\0".
    assert_eq!(
        keys(&mut index.range(b"\0", &RangeEnd::FromKey, 10)).len(),
        4
    );
    assert_eq!(keys(&mut index.range(b"", &RangeEnd::FromKey, 10)).len(), 4);
    // Inverted and empty ranges are empty, not a panic.
    assert!(
        keys(&mut index.range(b"c", &RangeEnd::Before(bytes::Bytes::from_static(b"a")), 10))
            .is_empty()
    );
    assert!(
        keys(&mut index.range(b"b", &RangeEnd::Before(bytes::Bytes::from_static(b"b")), 10))
            .is_empty()
    );
    assert!(
        keys(&mut index.range(b"a", &RangeEnd::Before(bytes::Bytes::from_static(b"")), 10))
            .is_empty()
    );
    assert!(keys(&mut index.range(b"", &RangeEnd::Single, 10)).is_empty());
    assert_eq!(
        keys(&mut index.range(b"a", &RangeEnd::Before(bytes::Bytes::from_static(b"c")), 10)),
        [b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        keys(&mut index.range_rev(b"a", &RangeEnd::FromKey, 10)),
        [b"c".to_vec(), b"b".to_vec(), b"a".to_vec()]
    );
    // Before the keys were written, nothing is visible.
    assert_eq!(index.count(b"", &RangeEnd::FromKey, 2), 2);
    assert_eq!(index.count(b"", &RangeEnd::FromKey, 0), 0);
}
