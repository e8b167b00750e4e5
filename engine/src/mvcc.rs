//! The versioned in-memory key index of one shard.
//!
//! For every key the shard owns, the index keeps the history of its versions: the
//! revision at which each version was written and where its record lives in the page file
//! ([`PagePtr`]). Everything else — value, create revision, version, lease — stays in the
//! page record, so the index costs little memory per key and per version (see
//! `examples/index_memory.rs` for measured figures).
//!
//! Semantics follow etcd's `keyIndex` (mvcc/key_index.go): a key's history is a series
//! of *generations*; a tombstone (delete) ends the current generation and the next put
//! starts a new one. Here the generations are implicit: a history is one list of versions
//! in revision order, and a tombstone version marks the end of a generation.
//!
//! # Example
//!
//! put(1), put(2), tombstone(3), put(4), tombstone(5) on key "foo" give:
//!
//! ```text
//! key "foo": [1, 2, 3(t), 4, 5(t)]     generations: {1, 2, 3(t)} {4, 5(t)} {}
//! get("foo", at 2) = version 2     get("foo", at 3) = none     get("foo", at 4) = version 4
//! ```
//!
//! Compaction at revision `r` keeps, for every key, the latest version at or before `r` —
//! unless that version is a tombstone, which is dropped too — and every version after `r`.
//! A key left with no versions is removed. On the example:
//!
//! ```text
//! compact(2):  [2, 3(t), 4, 5(t)]    2 is the latest at or before 2: kept
//! compact(3):  [4, 5(t)]             3(t) is the latest at or before 3: a tombstone, dropped
//! compact(4):  [4, 5(t)]
//! compact(5):  []                    5(t) dropped: the key is removed
//! ```
//!
//! After `compact(r)`, every query at a revision `>= r` answers exactly as before.
//!
//! # Memory layout
//!
//! The index is a `BTreeSet` of [`KeyEntry`] handles — one pointer (8 bytes) per key in
//! the tree's nodes. Each handle owns one heap block holding the key's whole state:
//!
//! ```text
//! [count: u32][key length: u32][versions: capacity × 16 bytes][key bytes]
//! ```
//!
//! A version is 16 bytes: the revision (an `i64`, always positive) with the tombstone
//! flag folded into its top bit, and the 8-byte `PagePtr`. The capacity is a function of
//! the count (exact up to 32 versions, then at most 1/16 slack), so it is not stored; a
//! push that outgrows it reallocates the block and moves the key bytes up.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::ptr::NonNull;

use crate::keyspace::RangeEnd;
use crate::limits::KEY_BYTES_MAX;
use crate::page::PagePtr;

/// A version the index cannot take (see [`KeyIndex::try_put`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version of key {key:?} at revision {revision}: {problem}", key = String::from_utf8_lossy(key))]
pub struct IndexError {
    pub key: Vec<u8>,
    pub revision: i64,
    pub problem: String,
}

/// One change of a key, as watch needs it: see [`KeyIndex::changes`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Change<'a> {
    pub key: &'a [u8],
    pub revision: i64,
    pub ptr: PagePtr,
    pub tombstone: bool,
}

/// The versioned index of one shard's keys. See the module documentation for semantics
/// and layout.
///
/// `Send` but not `Sync`: a shard's index lives on its core.
#[derive(Default)]
pub struct KeyIndex {
    keys: BTreeSet<KeyEntry>,
    version_count: usize,
}

impl fmt::Debug for KeyIndex {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyIndex")
            .field("key_count", &self.keys.len())
            .field("version_count", &self.version_count)
            .finish()
    }
}

/// The checks of a version read from disk that need no lookup.
fn check_fields(key: &[u8], revision: i64, put: bool) -> Result<(), IndexError> {
    let problem = if revision <= 0 {
        Some("revision is not positive")
    } else if key.len() > KEY_BYTES_MAX as usize {
        Some("key is longer than the limit")
    } else if put && key.is_empty() {
        Some("the empty key cannot be put")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(IndexError {
            key: key.to_vec(),
            revision,
            problem: problem.to_string(),
        }),
        None => Ok(()),
    }
}

/// A put, or a tombstone of a live key, must come after the key's latest version.
fn check_after_latest(
    key: &[u8],
    revision: i64,
    entry: &KeyEntry,
    put: bool,
) -> Result<(), IndexError> {
    let latest = entry.latest();
    let live = !latest.is_tombstone();
    if (put || live) && revision <= latest.revision() {
        return Err(IndexError {
            key: key.to_vec(),
            revision,
            problem: format!("not after the key's latest revision {}", latest.revision()),
        });
    }
    Ok(())
}

impl KeyIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Records a put of `key` at `revision`, its record at `ptr`. Starts a new generation
    /// if the key was deleted.
    ///
    /// # Panics
    /// If `key` is empty or longer than [`KEY_BYTES_MAX`], if `revision` is not positive,
    /// or if it is not greater than the key's latest revision: all programmer errors.
    pub fn put(&mut self, key: &[u8], revision: i64, ptr: PagePtr) {
        let version = Version::new(revision, ptr, false);
        if let Some(entry) = self.keys.get(key) {
            entry.push(version);
        } else {
            assert!(!key.is_empty(), "the empty key cannot be put");
            self.keys.insert(KeyEntry::new(key, version));
        }
        self.version_count += 1;
    }

    /// Records a delete of `key` at `revision`, its tombstone record at `ptr`, if the key
    /// is live (exists and its latest version is not a tombstone). Returns whether it was.
    ///
    /// # Panics
    /// If the key is live and `revision` is not greater than its latest revision.
    pub fn tombstone(&mut self, key: &[u8], revision: i64, ptr: PagePtr) -> bool {
        let Some(entry) = self.keys.get(key) else {
            return false;
        };
        if entry.latest().is_tombstone() {
            return false;
        }
        entry.push(Version::new(revision, ptr, true));
        self.version_count += 1;
        true
    }

    /// [`KeyIndex::put`] for versions read from disk or a peer's snapshot: the same
    /// conditions are checked and answered as an error instead of a panic. One search of
    /// the tree for a key already there (a restart rebuilds the index with it, one call
    /// per record).
    pub fn try_put(&mut self, key: &[u8], revision: i64, ptr: PagePtr) -> Result<(), IndexError> {
        check_fields(key, revision, true)?;
        let version = Version::new(revision, ptr, false);
        if let Some(entry) = self.keys.get(key) {
            check_after_latest(key, revision, entry, true)?;
            entry.push(version);
        } else {
            self.keys.insert(KeyEntry::new(key, version));
        }
        self.version_count += 1;
        Ok(())
    }

    /// [`KeyIndex::tombstone`] for versions read from disk or a peer's snapshot.
    pub fn try_tombstone(
        &mut self,
        key: &[u8],
        revision: i64,
        ptr: PagePtr,
    ) -> Result<bool, IndexError> {
        check_fields(key, revision, false)?;
        let Some(entry) = self.keys.get(key) else {
            return Ok(false);
        };
        check_after_latest(key, revision, entry, false)?;
        if entry.latest().is_tombstone() {
            return Ok(false);
        }
        entry.push(Version::new(revision, ptr, true));
        self.version_count += 1;
        Ok(true)
    }

    /// The version of `key` visible at `at_revision`: its mod revision and record, or
    /// `None` if the key did not exist then (never put, deleted, or compacted away).
    #[must_use]
    pub fn get(&self, key: &[u8], at_revision: i64) -> Option<(i64, PagePtr)> {
        self.keys.get(key)?.visible_at(at_revision)
    }

    /// The keys of the range live at `at_revision`, ascending, with their mod revision and
    /// record. Allocates nothing.
    pub fn range<'a>(
        &'a self,
        key: &[u8],
        end: &RangeEnd,
        at_revision: i64,
    ) -> impl DoubleEndedIterator<Item = (&'a [u8], i64, PagePtr)> + 'a {
        self.entries(key, end).filter_map(move |entry| {
            entry
                .visible_at(at_revision)
                .map(|(revision, ptr)| (entry.key(), revision, ptr))
        })
    }

    /// As [`KeyIndex::range`], descending (etcd's sort order DESCEND by key).
    pub fn range_rev<'a>(
        &'a self,
        key: &[u8],
        end: &RangeEnd,
        at_revision: i64,
    ) -> impl Iterator<Item = (&'a [u8], i64, PagePtr)> + 'a {
        self.range(key, end, at_revision).rev()
    }

    /// The number of keys of the range live at `at_revision`.
    #[must_use]
    pub fn count(&self, key: &[u8], end: &RangeEnd, at_revision: i64) -> usize {
        self.range(key, end, at_revision).count()
    }

    /// Every version (puts and tombstones) of the keys in the range with
    /// `from_revision <= revision <= to_revision`, ordered by revision, then page pointer.
    /// A shard appends the records of one revision in apply order (a txn's op order, a
    /// range delete's key order) and never moves them, so within a revision this is the
    /// order etcd's sub-revisions give; equal pointers keep key order.
    ///
    /// This walks every key of the range; for a catch-up over the whole key space that is
    /// the whole index.
    #[must_use]
    pub fn changes(
        &self,
        key: &[u8],
        end: &RangeEnd,
        from_revision: i64,
        to_revision: i64,
    ) -> Vec<Change<'_>> {
        let mut changes = Vec::new();
        if from_revision > to_revision {
            return changes;
        }
        for entry in self.entries(key, end) {
            let versions = entry.versions();
            let first = versions.partition_point(|version| version.revision() < from_revision);
            for version in versions.iter().skip(first) {
                if version.revision() > to_revision {
                    break;
                }
                changes.push(Change {
                    key: entry.key(),
                    revision: version.revision(),
                    ptr: version.ptr,
                    tombstone: version.is_tombstone(),
                });
            }
        }
        // Stable: equal pointers keep keys ascending.
        changes.sort_by_key(|change| (change.revision, change.ptr));
        changes
    }

    /// etcd compaction at `revision`: for every key, keeps the latest version at or before
    /// `revision` (dropping it too if it is a tombstone) and every version after it; removes
    /// keys left without versions. Visits every key.
    pub fn compact(&mut self, revision: i64) {
        self.compact_with(revision, |_| {});
    }

    /// [`KeyIndex::compact`], handing `removed` the record of every version it drops
    /// (the page file counts them dead).
    pub fn compact_with(&mut self, revision: i64, mut removed: impl FnMut(PagePtr)) {
        let version_count = &mut self.version_count;
        self.keys
            .retain(|entry| match entry.compact(revision, &mut removed) {
                Compacted::Kept { removed } => {
                    *version_count -= removed;
                    true
                }
                Compacted::Empty { removed } => {
                    *version_count -= removed;
                    false
                }
            });
    }

    /// The record of `key`'s version at exactly `revision`, and whether it is a tombstone.
    #[must_use]
    pub fn version_at(&self, key: &[u8], revision: i64) -> Option<(PagePtr, bool)> {
        let entry = self.keys.get(key)?;
        let versions = entry.versions();
        let index = versions
            .binary_search_by_key(&revision, |version| version.revision())
            .ok()?;
        versions
            .get(index)
            .map(|version| (version.ptr, version.is_tombstone()))
    }

    /// `key`'s oldest version still held: its revision and whether it is a tombstone.
    #[must_use]
    pub fn first_version(&self, key: &[u8]) -> Option<(i64, bool)> {
        let version = *self.keys.get(key)?.versions().first()?;
        Some((version.revision(), version.is_tombstone()))
    }

    /// Moves `key`'s version at `revision` from record `from` to record `to` (garbage
    /// collection rewrote it). False, and nothing changed, when the index holds no such
    /// version at `from` (it was compacted away meanwhile).
    pub fn relocate(&mut self, key: &[u8], revision: i64, from: PagePtr, to: PagePtr) -> bool {
        let Some(entry) = self.keys.get(key) else {
            return false;
        };
        entry.relocate(revision, from, to)
    }

    /// Calls `each` with the record of every version held, key by key.
    pub fn for_each_ptr(&self, mut each: impl FnMut(PagePtr)) {
        for entry in &self.keys {
            for version in entry.versions() {
                each(version.ptr);
            }
        }
    }

    /// The number of keys with at least one version.
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The number of versions of all keys, tombstones included.
    #[must_use]
    pub fn version_count(&self) -> usize {
        self.version_count
    }

    fn entries(
        &self,
        key: &[u8],
        end: &RangeEnd,
    ) -> std::collections::btree_set::Range<'_, KeyEntry> {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match end {
            RangeEnd::Single => (Bound::Included(key), Bound::Included(key)),
            RangeEnd::FromKey => (Bound::Included(key), Bound::Unbounded),
            // BTreeSet::range panics on an inverted range; [key, key) is empty instead.
            RangeEnd::Before(end) if end.as_ref() <= key => {
                (Bound::Included(key), Bound::Excluded(key))
            }
            RangeEnd::Before(end) => (Bound::Included(key), Bound::Excluded(end.as_ref())),
        };
        self.keys.range::<[u8], _>(bounds)
    }
}

/// One version of a key: 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Version {
    /// The revision (positive) in the low 63 bits, [`Version::TOMBSTONE`] in the top bit.
    revision_and_flag: u64,
    ptr: PagePtr,
}

const _: () = assert!(size_of::<Version>() == 16);
const _: () = assert!(align_of::<Version>() <= HEADER_BYTES);

impl Version {
    const TOMBSTONE: u64 = 1 << 63;

    fn new(revision: i64, ptr: PagePtr, tombstone: bool) -> Version {
        assert!(revision > 0, "revision {revision} is not positive");
        let flag = if tombstone { Version::TOMBSTONE } else { 0 };
        Version {
            revision_and_flag: revision.unsigned_abs() | flag,
            ptr,
        }
    }

    fn revision(self) -> i64 {
        // The top bit is masked off, so the value fits in i64.
        i64::try_from(self.revision_and_flag & !Version::TOMBSTONE).unwrap_or(i64::MAX)
    }

    fn is_tombstone(self) -> bool {
        self.revision_and_flag & Version::TOMBSTONE != 0
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.is_tombstone() { "(t)" } else { "" };
        write!(formatter, "{}{mark}@{}", self.revision(), self.ptr)
    }
}

enum Compacted {
    Kept { removed: usize },
    Empty { removed: usize },
}

/// The block header: version count and key length, both `u32`.
const HEADER_BYTES: usize = 8;
const BLOCK_ALIGN: usize = 8;
const VERSION_BYTES: usize = size_of::<Version>();

/// The number of version slots a block with `count` versions has: exact up to 32, then
/// rounded up to a multiple of 1/32 of the next power of two, so a growing history
/// reallocates every few pushes (amortized O(32) bytes copied per push) and wastes at
/// most 1/16 of its versions.
fn capacity_for(count: usize) -> usize {
    if count <= 32 {
        return count;
    }
    // Between p/2 and p (p a power of two), the step p/32 is at most count/16.
    let step = count.next_power_of_two() / 32;
    count.div_ceil(step) * step
}

/// A key and its versions in one heap block (layout in the module documentation).
///
/// The block pointer sits in a `Cell` so that a key's history can grow in place while the
/// entry is inside the `BTreeSet` (which hands out only shared references to its
/// elements). This never changes the key, so the set's order is unaffected. Mutation
/// happens only from `&mut KeyIndex` methods, so no reference into the block is alive
/// while it is reallocated.
struct KeyEntry {
    block: Cell<NonNull<u8>>,
}

// SAFETY: a KeyEntry owns its block exclusively, like a Box; moving it to another thread
// moves that ownership. (It is not Sync: the Cell allows mutation through `&`.)
unsafe impl Send for KeyEntry {}

impl KeyEntry {
    fn layout(count: usize, key_length: usize) -> std::alloc::Layout {
        let bytes = HEADER_BYTES + capacity_for(count) * VERSION_BYTES + key_length;
        match std::alloc::Layout::from_size_align(bytes, BLOCK_ALIGN) {
            Ok(layout) => layout,
            Err(error) => panic!("key block of {bytes} bytes: {error}"),
        }
    }

    fn new(key: &[u8], first: Version) -> KeyEntry {
        assert!(
            key.len() <= KEY_BYTES_MAX as usize,
            "key of {} bytes exceeds the limit of {KEY_BYTES_MAX}",
            key.len()
        );
        let layout = KeyEntry::layout(1, key.len());
        // SAFETY: the layout has a non-zero size (at least the header).
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(block) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the block is `layout.size()` bytes, 8-aligned: header, one version slot,
        // then the key bytes, all written within it.
        unsafe {
            block.as_ptr().cast::<u32>().write(1);
            block
                .as_ptr()
                .add(4)
                .cast::<u32>()
                .write(u32::try_from(key.len()).unwrap_or(u32::MAX));
            block
                .as_ptr()
                .add(HEADER_BYTES)
                .cast::<Version>()
                .write(first);
            std::ptr::copy_nonoverlapping(
                key.as_ptr(),
                block.as_ptr().add(HEADER_BYTES + VERSION_BYTES),
                key.len(),
            );
        }
        KeyEntry {
            block: Cell::new(block),
        }
    }

    fn count(&self) -> usize {
        // SAFETY: the block always starts with the 8-aligned header.
        unsafe { self.block.get().as_ptr().cast::<u32>().read() as usize }
    }

    fn key_length(&self) -> usize {
        // SAFETY: as in `count`.
        unsafe { self.block.get().as_ptr().add(4).cast::<u32>().read() as usize }
    }

    fn key_offset(count: usize) -> usize {
        HEADER_BYTES + capacity_for(count) * VERSION_BYTES
    }

    fn key(&self) -> &[u8] {
        let offset = KeyEntry::key_offset(self.count());
        // SAFETY: the key bytes follow the version slots, within the block; the block is
        // not reallocated while `&self` is borrowed (see the type documentation).
        unsafe {
            std::slice::from_raw_parts(self.block.get().as_ptr().add(offset), self.key_length())
        }
    }

    fn versions(&self) -> &[Version] {
        // SAFETY: `count` initialized versions start right after the 8-aligned header.
        unsafe {
            std::slice::from_raw_parts(
                self.block
                    .get()
                    .as_ptr()
                    .add(HEADER_BYTES)
                    .cast::<Version>(),
                self.count(),
            )
        }
    }

    fn latest(&self) -> Version {
        match self.versions().last() {
            Some(version) => *version,
            None => unreachable!("a key entry always has a version"),
        }
    }

    fn visible_at(&self, revision: i64) -> Option<(i64, PagePtr)> {
        let versions = self.versions();
        let after = versions.partition_point(|version| version.revision() <= revision);
        let version = versions.get(after.checked_sub(1)?)?;
        (!version.is_tombstone()).then(|| (version.revision(), version.ptr))
    }

    /// Appends a version, growing the block if needed.
    fn push(&self, version: Version) {
        let latest = self.latest();
        assert!(
            version.revision() > latest.revision(),
            "revision {} of key {:?} is not after its latest revision {}",
            version.revision(),
            String::from_utf8_lossy(self.key()),
            latest.revision()
        );
        let count = self.count();
        assert!(count < u32::MAX as usize, "too many versions of one key");
        let key_length = self.key_length();
        let mut block = self.block.get();
        if capacity_for(count + 1) != capacity_for(count) {
            let old = KeyEntry::layout(count, key_length);
            let new = KeyEntry::layout(count + 1, key_length);
            // SAFETY: `block` was allocated with `old`; `new` has the same alignment and a
            // non-zero size. The key bytes are then moved from their old offset to the new
            // one (regions may overlap: `copy` is memmove), all within the new block.
            unsafe {
                let raw = std::alloc::realloc(block.as_ptr(), old, new.size());
                block = match NonNull::new(raw) {
                    Some(block) => block,
                    None => std::alloc::handle_alloc_error(new),
                };
                std::ptr::copy(
                    block.as_ptr().add(KeyEntry::key_offset(count)),
                    block.as_ptr().add(KeyEntry::key_offset(count + 1)),
                    key_length,
                );
            }
            self.block.set(block);
        }
        // SAFETY: slot `count` is within the capacity of `count + 1` versions.
        unsafe {
            block
                .as_ptr()
                .add(HEADER_BYTES + count * VERSION_BYTES)
                .cast::<Version>()
                .write(version);
            block
                .as_ptr()
                .cast::<u32>()
                .write(u32::try_from(count + 1).unwrap_or(u32::MAX));
        }
    }

    /// Points the version at `revision` at `to` instead of `from`; false if there is no
    /// such version at `from`.
    fn relocate(&self, revision: i64, from: PagePtr, to: PagePtr) -> bool {
        let versions = self.versions();
        let Ok(index) = versions.binary_search_by_key(&revision, |version| version.revision())
        else {
            return false;
        };
        if versions.get(index).map(|version| version.ptr) != Some(from) {
            return false;
        }
        // SAFETY: `index` < count: slot `index` holds an initialized version within the
        // block; only its pointer changes (the revision, and so the order, stays).
        unsafe {
            let slot = self
                .block
                .get()
                .as_ptr()
                .add(HEADER_BYTES + index * VERSION_BYTES)
                .cast::<Version>();
            (*slot).ptr = to;
        }
        true
    }

    /// Compaction of one key (see [`KeyIndex::compact`]).
    fn compact(&self, revision: i64, removed: &mut impl FnMut(PagePtr)) -> Compacted {
        let versions = self.versions();
        let count = versions.len();
        let after = versions.partition_point(|version| version.revision() <= revision);
        let Some(latest_at) = after.checked_sub(1) else {
            return Compacted::Kept { removed: 0 };
        };
        let keep_from = match versions.get(latest_at) {
            Some(version) if version.is_tombstone() => after,
            _ => latest_at,
        };
        if keep_from == 0 {
            return Compacted::Kept { removed: 0 };
        }
        for version in versions.iter().take(keep_from) {
            removed(version.ptr);
        }
        if keep_from == count {
            return Compacted::Empty { removed: count };
        }
        let kept = count - keep_from;
        let key_length = self.key_length();
        let old = KeyEntry::layout(count, key_length);
        let new = KeyEntry::layout(kept, key_length);
        let mut block = self.block.get();
        // SAFETY: the kept versions and then the key are moved down within the old block
        // (memmove), the count is updated, and the block is shrunk to the new layout,
        // which keeps exactly those bytes.
        unsafe {
            let base = block.as_ptr();
            std::ptr::copy(
                base.add(HEADER_BYTES + keep_from * VERSION_BYTES),
                base.add(HEADER_BYTES),
                kept * VERSION_BYTES,
            );
            std::ptr::copy(
                base.add(KeyEntry::key_offset(count)),
                base.add(KeyEntry::key_offset(kept)),
                key_length,
            );
            base.cast::<u32>()
                .write(u32::try_from(kept).unwrap_or(u32::MAX));
            if new.size() != old.size() {
                let raw = std::alloc::realloc(base, old, new.size());
                block = match NonNull::new(raw) {
                    Some(block) => block,
                    None => std::alloc::handle_alloc_error(new),
                };
            }
        }
        self.block.set(block);
        Compacted::Kept { removed: keep_from }
    }
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        let layout = KeyEntry::layout(self.count(), self.key_length());
        // SAFETY: the block was allocated (or last reallocated) with this layout.
        unsafe { std::alloc::dealloc(self.block.get().as_ptr(), layout) }
    }
}

impl PartialEq for KeyEntry {
    fn eq(&self, other: &KeyEntry) -> bool {
        self.key() == other.key()
    }
}

impl Eq for KeyEntry {}

impl PartialOrd for KeyEntry {
    fn partial_cmp(&self, other: &KeyEntry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyEntry {
    fn cmp(&self, other: &KeyEntry) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl std::borrow::Borrow<[u8]> for KeyEntry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyEntry")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("versions", &self.versions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(revision: i64) -> PagePtr {
        PagePtr::new(0, u32::try_from(revision).unwrap_or(0) * 8)
    }

    /// Versions read from disk go through the checked calls: what `put` would panic on
    /// is an error, and the index is left as it was.
    #[test]
    fn checked_calls_refuse_what_put_panics_on() {
        let mut index = KeyIndex::new();
        assert!(index.try_put(b"", 1, ptr(1)).is_err());
        assert!(index.try_put(b"a", 0, ptr(1)).is_err());
        assert!(index.try_tombstone(b"a", -1, ptr(1)).is_err());
        index.try_put(b"a", 5, ptr(5)).expect("first version");
        assert!(index.try_put(b"a", 5, ptr(5)).is_err());
        assert!(index.try_put(b"a", 4, ptr(4)).is_err());
        assert!(index.try_tombstone(b"a", 5, ptr(5)).is_err());
        assert_eq!(index.try_tombstone(b"a", 6, ptr(6)), Ok(true));
        // A tombstone of a deleted key changes nothing, whatever its revision.
        assert_eq!(index.try_tombstone(b"a", 2, ptr(2)), Ok(false));
        assert_eq!(index.version_count(), 2);
    }

    /// The worked example of the module documentation.
    #[test]
    fn worked_example() {
        let mut index = KeyIndex::new();
        index.put(b"foo", 1, ptr(1));
        index.put(b"foo", 2, ptr(2));
        assert!(index.tombstone(b"foo", 3, ptr(3)));
        assert!(
            !index.tombstone(b"foo", 4, ptr(4)),
            "not live: no tombstone"
        );
        index.put(b"foo", 4, ptr(4));
        assert!(index.tombstone(b"foo", 5, ptr(5)));
        assert_eq!(index.get(b"foo", 2), Some((2, ptr(2))));
        assert_eq!(index.get(b"foo", 3), None);
        assert_eq!(index.get(b"foo", 4), Some((4, ptr(4))));
        assert_eq!(index.version_count(), 5);

        let revisions = |index: &KeyIndex| -> Vec<(i64, bool)> {
            index
                .changes(b"foo", &RangeEnd::Single, 0, i64::MAX)
                .iter()
                .map(|change| (change.revision, change.tombstone))
                .collect()
        };
        index.compact(2);
        assert_eq!(
            revisions(&index),
            [(2, false), (3, true), (4, false), (5, true)]
        );
        index.compact(3);
        assert_eq!(revisions(&index), [(4, false), (5, true)]);
        index.compact(4);
        assert_eq!(revisions(&index), [(4, false), (5, true)]);
        assert_eq!(index.key_count(), 1);
        index.compact(5);
        assert_eq!(index.key_count(), 0);
        assert_eq!(index.version_count(), 0);
    }

    /// Growth past the exact-capacity range and compaction back down keep the key and
    /// versions intact (the block is reallocated and the key moved each way).
    #[test]
    fn long_history_grows_and_shrinks() {
        let mut index = KeyIndex::new();
        let key = b"a-key-long-enough-to-span-several-words".as_slice();
        for revision in 1..=1000 {
            index.put(key, revision, ptr(revision));
            assert_eq!(index.get(key, revision), Some((revision, ptr(revision))));
        }
        assert_eq!(index.range(b"a", &RangeEnd::FromKey, 1000).count(), 1);
        for compact in [10, 100, 500, 999] {
            index.compact(compact);
            assert_eq!(
                index.version_count(),
                usize::try_from(1001 - compact).unwrap_or(0)
            );
            assert_eq!(index.get(key, compact), Some((compact, ptr(compact))));
            assert_eq!(
                index
                    .range(key, &RangeEnd::Single, 1000)
                    .next()
                    .map(|e| e.0),
                Some(key)
            );
        }
    }

    #[test]
    fn capacity_is_monotone_and_tight() {
        let mut previous = 0;
        for count in 1..100_000 {
            let capacity = capacity_for(count);
            assert!(capacity >= count && capacity >= previous);
            assert!(
                capacity - count <= count / 16 + 1,
                "count {count} capacity {capacity}"
            );
            previous = capacity;
        }
    }

    #[test]
    #[should_panic(expected = "is not after its latest revision")]
    fn revisions_must_increase() {
        let mut index = KeyIndex::new();
        index.put(b"k", 5, ptr(5));
        index.put(b"k", 5, ptr(6));
    }
}
