//! The watchers of one watch stream, held compactly: a stream may hold a million of them,
//! so each costs one 32-byte slot in a chunked table, one allocation holding its key (and
//! range end), a 4-byte entry in an ID array (or an ID hash table) and one in a key hash
//! table: about 70 bytes for a 20-byte key, against 420 bytes by RSS when each watcher
//! was a `BTreeMap` value with its `Bytes` key and range end, plus a
//! `HashMap<Bytes, Vec<i64>>` entry and its `Vec`.
//!
//! - `slots`: the watchers, in no particular order (a removed watcher's slot is filled
//!   with the last one), in chunks of [`CHUNK`] slots. A slot holds the watch ID, the
//!   flags in one byte, the key (with the range end after it, for a range watcher) in one
//!   boxed slice, copied out of the request, so a watcher never keeps a request buffer
//!   alive, and `chain`, the next slot watching the same single key.
//! - `dense`: watch ID → slot for IDs 0, 1, 2, …: the IDs the stream assigns (clients
//!   send watch ID 0, "any") come in that order, so they cost 4 bytes each here.
//! - `by_id`: watch ID → slot for the other IDs (a client's own choice), a hash table of
//!   slot numbers hashed by the slot's ID (the ID is stored once, in the slot).
//! - `by_key`: single key → the first slot of the chain of the watchers of that key
//!   (hashed by the slot's key, stored once, in the slot). A revision's events look up
//!   their watchers here instead of testing every watcher.
//! - `ranged`: the IDs of range watchers, which every event is tested against.
//! - `unsynced`: the next revision of each watcher that reads history (catch-up). A
//!   synced watcher's next revision is the stream's, so it is not stored per watcher.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// No next slot in a key's chain.
const NONE: u32 = u32::MAX;
/// Slots per chunk of the slot table (32 KiB): the table grows by chunks, not by copying
/// itself into a larger block, so growing leaves no freed blocks behind (the allocator
/// keeps freed memory resident until it purges it), and a stream with few watchers
/// holds one small chunk.
const CHUNK: usize = 1024;

/// The watcher reads the stream's live changes (it is not catching up).
pub const SYNCED: u8 = 1;
/// etcd's `NOPUT` filter.
pub const NO_PUT: u8 = 1 << 1;
/// etcd's `NODELETE` filter.
pub const NO_DELETE: u8 = 1 << 2;
pub const PREV_KV: u8 = 1 << 3;
pub const PROGRESS_NOTIFY: u8 = 1 << 4;
/// No events went out since the last progress tick (etcd's `sws.progress[id]`).
pub const QUIET: u8 = 1 << 5;
pub const FRAGMENT: u8 = 1 << 6;
/// The watcher has a range end: its bytes are the key's length (4 bytes, little endian),
/// the key, then the range end as asked for.
const RANGED: u8 = 1 << 7;

/// One watcher.
pub struct Slot {
    id: i64,
    /// The key, or for a range watcher the key's length, the key and the range end.
    bytes: Box<[u8]>,
    /// The next slot watching the same single key, or [`NONE`].
    chain: u32,
    flags: u8,
}

impl Slot {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn ranged(&self) -> bool {
        self.has(RANGED)
    }

    fn split(&self) -> (&[u8], &[u8]) {
        if !self.ranged() {
            return (&self.bytes, &[]);
        }
        let (length, rest) = self.bytes.split_at(4);
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        rest.split_at(length)
    }

    /// The watched key.
    pub fn key(&self) -> &[u8] {
        self.split().0
    }

    /// The range end as asked for: empty for a single key, `"\0"` for every key from the
    /// key on.
    pub fn range_end(&self) -> &[u8] {
        self.split().1
    }

    /// Whether `candidate` is in the watched range (as [`rivet_engine::keyspace::RangeEnd`]).
    pub fn contains(&self, candidate: &[u8]) -> bool {
        let (key, end) = self.split();
        match end {
            [] => candidate == key,
            [0] => candidate >= key,
            end => candidate >= key && candidate < end,
        }
    }
}

/// A new watcher's settings.
pub struct NewWatcher<'a> {
    pub id: i64,
    pub key: &'a [u8],
    pub range_end: &'a [u8],
    /// [`NO_PUT`], [`NO_DELETE`], [`PREV_KV`], [`PROGRESS_NOTIFY`], [`QUIET`],
    /// [`FRAGMENT`]; [`SYNCED`] is set from `next`.
    pub flags: u8,
    /// The next revision to read, for a watcher that starts in the past or the future;
    /// `None` for one that starts at the stream's live position.
    pub next: Option<i64>,
}

/// The slot table: chunks of [`CHUNK`] slots, the first grown by doubling up to that.
#[derive(Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.chunks.iter_mut().flatten()
    }

    fn push(&mut self, slot: Slot) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => {
                if chunk.len() == chunk.capacity() {
                    let grow = chunk.len().clamp(4, CHUNK - chunk.len());
                    chunk.reserve_exact(grow);
                }
                chunk.push(slot);
            }
            _ => {
                let first = self.chunks.is_empty();
                let mut chunk = Vec::with_capacity(if first { 4 } else { CHUNK });
                chunk.push(slot);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// Removes slot `s`, moving the last slot into its place.
    fn swap_remove(&mut self, s: usize) -> Slot {
        assert!(s < self.len, "slot {s} of {}", self.len);
        let mut chunk = self.chunks.pop().expect("a chunk when a slot is held");
        let last = chunk.pop().expect("no empty chunk is kept");
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
        self.len -= 1;
        if s == self.len {
            return last;
        }
        std::mem::replace(&mut self[s], last)
    }

    /// Gives a mostly unused first chunk's memory back.
    fn shrink(&mut self) {
        if let [chunk] = self.chunks.as_mut_slice() {
            if chunk.len() < chunk.capacity() / 4 {
                chunk.shrink_to(chunk.len() * 2);
            }
        }
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, s: usize) -> &Slot {
        &self.chunks[s / CHUNK][s % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, s: usize) -> &mut Slot {
        &mut self.chunks[s / CHUNK][s % CHUNK]
    }
}

#[derive(Default)]
pub struct Watchers {
    slots: Slots,
    /// Slot of each ID below its length, or [`NONE`]; never ends with [`NONE`]. An ID
    /// below its length is never in `by_id`.
    dense: Vec<u32>,
    /// Entries of `dense` that are not [`NONE`].
    dense_live: usize,
    by_id: HashTable<u32>,
    by_key: HashTable<u32>,
    ranged: BTreeSet<i64>,
    unsynced: BTreeMap<i64, i64>,
    /// Synced watchers, and those of them that asked for `prev_kv`: whether the live
    /// changes need reading at all, and with previous versions, without a scan.
    synced: usize,
    synced_prev_kv: usize,
    hasher: RandomState,
}

impl Watchers {
    pub fn new() -> Watchers {
        Watchers::default()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The watchers, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Synced watchers: (any, any of them asked for `prev_kv`).
    pub fn synced(&self) -> (bool, bool) {
        (self.synced > 0, self.synced_prev_kv > 0)
    }

    /// Watchers catching up, by ID, with their next revision.
    pub fn unsynced(&self) -> &BTreeMap<i64, i64> {
        &self.unsynced
    }

    pub fn contains(&self, id: i64) -> bool {
        self.slot_of(id).is_some()
    }

    pub fn get(&self, id: i64) -> Option<&Slot> {
        self.slot_of(id).map(|s| &self.slots[s as usize])
    }

    fn slot_of(&self, id: i64) -> Option<u32> {
        if let Some(&s) = self.dense_index(id).map(|i| &self.dense[i]) {
            return (s != NONE).then_some(s);
        }
        let slots = &self.slots;
        self.by_id
            .find(self.hasher.hash_one(id), |&s| slots[s as usize].id == id)
            .copied()
    }

    /// The place of `id` in `dense`, if it is below its length.
    fn dense_index(&self, id: i64) -> Option<usize> {
        usize::try_from(id).ok().filter(|&i| i < self.dense.len())
    }

    /// Indexes slot `s` under its ID.
    fn index_id(&mut self, id: i64, s: u32) {
        if let Some(i) = self.dense_index(id) {
            debug_assert_eq!(self.dense[i], NONE, "watch ID {id}");
            self.dense[i] = s;
            self.dense_live += 1;
            return;
        }
        if usize::try_from(id).ok() != Some(self.dense.len()) {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.by_id.insert_unique(hasher.hash_one(id), s, |&t| {
                hasher.hash_one(slots[t as usize].id)
            });
            return;
        }
        self.dense.push(s);
        self.dense_live += 1;
        // IDs taken before the dense range reached them move in.
        loop {
            let next = self.dense.len() as i64;
            let (slots, hasher) = (&self.slots, &self.hasher);
            let Ok(entry) = self
                .by_id
                .find_entry(hasher.hash_one(next), |&t| slots[t as usize].id == next)
            else {
                break;
            };
            let (t, _) = entry.remove();
            self.dense.push(t);
            self.dense_live += 1;
        }
    }

    /// Takes slot `s`, of watch ID `id`, out of the ID indexes.
    fn unindex_id(&mut self, id: i64, s: u32) {
        let Some(i) = self.dense_index(id) else {
            let hash = self.hasher.hash_one(id);
            if let Ok(entry) = self.by_id.find_entry(hash, |&t| t == s) {
                entry.remove();
            }
            return;
        };
        self.dense[i] = NONE;
        self.dense_live -= 1;
        while self.dense.last() == Some(&NONE) {
            self.dense.pop();
        }
        if self.dense_live * 4 < self.dense.len() {
            // Mostly holes (many cancels): the live IDs move to the hash table.
            let (slots, hasher) = (&self.slots, &self.hasher);
            for (i, &t) in self.dense.iter().enumerate() {
                if t != NONE {
                    self.by_id
                        .insert_unique(hasher.hash_one(i as i64), t, |&u| {
                            hasher.hash_one(slots[u as usize].id)
                        });
                }
            }
            self.dense = Vec::new();
            self.dense_live = 0;
        } else if self.dense.len() < self.dense.capacity() / 4 {
            self.dense.shrink_to(self.dense.len() * 2);
        }
    }

    /// Sets or clears flags other than [`SYNCED`] of one watcher.
    pub fn set_flags(&mut self, id: i64, flags: u8, on: bool) {
        debug_assert_eq!(flags & (SYNCED | RANGED | PREV_KV), 0, "{flags:#x}");
        if let Some(s) = self.slot_of(id) {
            let slot = &mut self.slots[s as usize];
            if on {
                slot.flags |= flags;
            } else {
                slot.flags &= !flags;
            }
        }
    }

    /// Sets `flags` (not [`SYNCED`]) on every watcher.
    pub fn set_flags_all(&mut self, flags: u8) {
        debug_assert_eq!(flags & (SYNCED | RANGED | PREV_KV), 0, "{flags:#x}");
        for slot in self.slots.iter_mut() {
            slot.flags |= flags;
        }
    }

    /// The watchers of one key: those of exactly it, and the range watchers (which the
    /// caller tests with [`Slot::contains`]).
    pub fn candidates<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a Slot> + 'a {
        let slots = &self.slots;
        let mut next = self
            .by_key
            .find(self.hasher.hash_one(key), |&s| {
                slots[s as usize].key() == key
            })
            .copied()
            .unwrap_or(NONE);
        let single = std::iter::from_fn(move || {
            if next == NONE {
                return None;
            }
            let slot = &slots[next as usize];
            next = slot.chain;
            Some(slot)
        });
        single.chain(self.ranged.iter().filter_map(|&id| self.get(id)))
    }

    /// Adds a watcher; its ID must not be in use.
    pub fn insert(&mut self, new: NewWatcher<'_>) {
        debug_assert!(!self.contains(new.id), "watch ID {} in use", new.id);
        let s = u32::try_from(self.slots.len())
            .ok()
            .filter(|&s| s != NONE)
            .expect("fewer than 2^32 - 1 watchers on a stream");
        let mut flags = new.flags & !(SYNCED | RANGED);
        let bytes: Box<[u8]> = if new.range_end.is_empty() {
            new.key.into()
        } else {
            flags |= RANGED;
            let length = u32::try_from(new.key.len()).expect("a key under 4 GiB");
            let mut bytes = Vec::with_capacity(4 + new.key.len() + new.range_end.len());
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(new.key);
            bytes.extend_from_slice(new.range_end);
            bytes.into_boxed_slice()
        };
        match new.next {
            None => {
                flags |= SYNCED;
                self.synced += 1;
                if flags & PREV_KV != 0 {
                    self.synced_prev_kv += 1;
                }
            }
            Some(next) => {
                self.unsynced.insert(new.id, next);
            }
        }
        self.slots.push(Slot {
            id: new.id,
            bytes,
            chain: NONE,
            flags,
        });
        self.index_id(new.id, s);
        let (slots, hasher) = (&self.slots, &self.hasher);
        if flags & RANGED != 0 {
            self.ranged.insert(new.id);
            return;
        }
        let key = slots[s as usize].key();
        let hash = hasher.hash_one(key);
        match self
            .by_key
            .find_mut(hash, |&t| slots[t as usize].key() == key)
        {
            Some(head) => {
                // The new watcher heads the chain.
                let old = std::mem::replace(head, s);
                self.slots[s as usize].chain = old;
            }
            None => {
                self.by_key
                    .insert_unique(hash, s, |&t| hasher.hash_one(slots[t as usize].key()));
            }
        }
    }

    /// Removes a watcher: whether it was synced, or `None` if no watcher has this ID.
    pub fn remove(&mut self, id: i64) -> Option<bool> {
        let s = self.slot_of(id)?;
        let (synced, prev_kv) = {
            let slot = &self.slots[s as usize];
            (slot.has(SYNCED), slot.has(PREV_KV))
        };
        if synced {
            self.synced -= 1;
            if prev_kv {
                self.synced_prev_kv -= 1;
            }
        } else {
            self.unsynced.remove(&id);
        }
        self.unlink(s);
        let last = (self.slots.len() - 1) as u32;
        if s != last {
            // The last slot moves into the freed one: the references to it follow.
            self.repoint(last, s);
        }
        self.slots.swap_remove(s as usize);
        self.shrink();
        Some(synced)
    }

    /// Takes slot `s` out of the indexes.
    fn unlink(&mut self, s: u32) {
        let id = self.slots[s as usize].id;
        self.unindex_id(id, s);
        let (slots, hasher) = (&self.slots, &self.hasher);
        let slot = &slots[s as usize];
        if slot.ranged() {
            self.ranged.remove(&id);
            return;
        }
        let key = slot.key();
        let Ok(mut entry) = self
            .by_key
            .find_entry(hasher.hash_one(key), |&t| slots[t as usize].key() == key)
        else {
            debug_assert!(false, "watcher {id} not in its key's chain");
            return;
        };
        if *entry.get() == s {
            if slot.chain == NONE {
                entry.remove();
            } else {
                *entry.get_mut() = slot.chain;
            }
            return;
        }
        // Same cost as the chain's length, as each watcher of the key costs per event.
        let after = slot.chain;
        let mut p = *entry.get();
        while self.slots[p as usize].chain != s {
            p = self.slots[p as usize].chain;
        }
        self.slots[p as usize].chain = after;
    }

    /// Points the references to slot `from` (still in place) at slot `to`.
    fn repoint(&mut self, from: u32, to: u32) {
        let id = self.slots[from as usize].id;
        if let Some(i) = self.dense_index(id) {
            self.dense[i] = to;
        } else if let Some(entry) = self
            .by_id
            .find_mut(self.hasher.hash_one(id), |&t| t == from)
        {
            *entry = to;
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        let slot = &slots[from as usize];
        if slot.ranged() {
            return;
        }
        let key = slot.key();
        let Some(head) = self
            .by_key
            .find_mut(hasher.hash_one(key), |&t| slots[t as usize].key() == key)
        else {
            debug_assert!(false, "watcher {} not in its key's chain", slot.id);
            return;
        };
        if *head == from {
            *head = to;
            return;
        }
        let mut p = *head;
        while self.slots[p as usize].chain != from {
            p = self.slots[p as usize].chain;
        }
        self.slots[p as usize].chain = to;
    }

    /// Gives memory back once most of it is unused (after many cancels).
    fn shrink(&mut self) {
        self.slots.shrink();
        let (slots, hasher) = (&self.slots, &self.hasher);
        if self.by_id.len() < self.by_id.capacity() / 4 {
            self.by_id
                .shrink_to(0, |&t| hasher.hash_one(slots[t as usize].id));
        }
        if self.by_key.len() < self.by_key.capacity() / 4 {
            self.by_key
                .shrink_to(0, |&t| hasher.hash_one(slots[t as usize].key()));
        }
    }

    /// Marks a synced watcher as catching up from `next`.
    pub fn unsync(&mut self, id: i64, next: i64) {
        let Some(s) = self.slot_of(id) else { return };
        let slot = &mut self.slots[s as usize];
        if slot.has(SYNCED) {
            slot.flags &= !SYNCED;
            self.synced -= 1;
            if slot.has(PREV_KV) {
                self.synced_prev_kv -= 1;
            }
        }
        self.unsynced.insert(id, next);
    }

    /// Sets the next revision of a watcher that is catching up.
    pub fn set_next(&mut self, id: i64, next: i64) {
        if let Some(n) = self.unsynced.get_mut(&id) {
            *n = next;
        }
    }

    /// Marks a watcher that caught up as synced.
    pub fn sync(&mut self, id: i64) {
        if self.unsynced.remove(&id).is_none() {
            return;
        }
        let Some(s) = self.slot_of(id) else { return };
        let slot = &mut self.slots[s as usize];
        slot.flags |= SYNCED;
        self.synced += 1;
        if slot.has(PREV_KV) {
            self.synced_prev_kv += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the watchers should be: by ID, (key, range end, synced, next).
    type Model = BTreeMap<i64, (Vec<u8>, Vec<u8>, u8, Option<i64>)>;

    fn check(watchers: &Watchers, model: &Model) {
        assert_eq!(watchers.len(), model.len());
        assert_ne!(watchers.dense.last(), Some(&NONE));
        let live = watchers.dense.iter().filter(|&&s| s != NONE).count();
        assert_eq!(live, watchers.dense_live);
        assert_eq!(watchers.dense_live + watchers.by_id.len(), model.len());
        let mut synced = 0;
        let mut synced_prev_kv = 0;
        for (&id, (key, range_end, flags, next)) in model {
            let slot = watchers.get(id).unwrap_or_else(|| panic!("watcher {id}"));
            assert_eq!(slot.id(), id);
            assert_eq!(slot.key(), key.as_slice());
            assert_eq!(slot.range_end(), range_end.as_slice());
            assert_eq!(slot.flags() & !(SYNCED | RANGED), *flags & !SYNCED);
            assert_eq!(slot.has(SYNCED), next.is_none());
            assert_eq!(watchers.unsynced().get(&id).copied(), *next);
            if next.is_none() {
                synced += 1;
                if flags & PREV_KV != 0 {
                    synced_prev_kv += 1;
                }
            }
        }
        assert_eq!(watchers.synced(), (synced > 0, synced_prev_kv > 0));
        assert_eq!(watchers.unsynced().len(), model.len() - synced);
        // Each key's candidates: exactly the model's watchers of that key, and every
        // range watcher.
        let keys: BTreeSet<&Vec<u8>> = model.values().map(|w| &w.0).collect();
        for key in keys {
            let mut got: Vec<i64> = watchers.candidates(key).map(Slot::id).collect();
            got.sort_unstable();
            let want: Vec<i64> = model
                .iter()
                .filter(|(_, w)| &w.0 == key || !w.1.is_empty())
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(got, want, "candidates of {key:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            id: i64,
            key: u8,
            ranged: bool,
            flags: u8,
            next: Option<i64>,
        },
        Remove(i64),
        Unsync(i64, i64),
        Sync(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (-3i64..40, 0u8..6, any::<bool>(), any::<u8>(), proptest::option::of(0i64..9))
                .prop_map(|(id, key, ranged, flags, next)| Op::Insert { id, key, ranged, flags, next }),
            3 => (-3i64..40).prop_map(Op::Remove),
            1 => (0i64..40, 0i64..9).prop_map(|(id, next)| Op::Unsync(id, next)),
            1 => (0i64..40).prop_map(Op::Sync),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..300)) {
            let mut watchers = Watchers::new();
            let mut model = Model::new();
            for op in ops {
                match op {
                    Op::Insert { id, key, ranged, flags, next } => {
                        // Negative: the smallest free ID from 0 on, as the stream assigns.
                        let id = if id < 0 {
                            (0..).find(|i| !model.contains_key(i)).unwrap_or(0)
                        } else {
                            id
                        };
                        if model.contains_key(&id) {
                            continue;
                        }
                        let key = vec![b'k', key];
                        let range_end = if ranged { vec![b'k', 4] } else { vec![] };
                        let flags = flags & !(SYNCED | RANGED);
                        watchers.insert(NewWatcher {
                            id,
                            key: &key,
                            range_end: &range_end,
                            flags,
                            next,
                        });
                        model.insert(id, (key, range_end, flags, next));
                    }
                    Op::Remove(id) => {
                        let want = model.remove(&id).map(|w| w.3.is_none());
                        prop_assert_eq!(watchers.remove(id), want);
                    }
                    Op::Unsync(id, next) => {
                        if let Some(w) = model.get_mut(&id) {
                            watchers.unsync(id, next);
                            w.3 = Some(next);
                        }
                    }
                    Op::Sync(id) => {
                        if let Some(w) = model.get_mut(&id) {
                            watchers.sync(id);
                            w.3 = None;
                        }
                    }
                }
                check(&watchers, &model);
            }
        }
    }

    #[test]
    fn range_ends_and_contains() {
        let mut watchers = Watchers::new();
        for (id, range_end) in [(1, &b""[..]), (2, b"\0"), (3, b"c")] {
            watchers.insert(NewWatcher {
                id,
                key: b"b",
                range_end,
                flags: 0,
                next: None,
            });
        }
        let single = watchers.get(1).expect("1");
        assert!(single.contains(b"b") && !single.contains(b"ba"));
        let from = watchers.get(2).expect("2");
        assert_eq!(from.range_end(), b"\0");
        assert!(from.contains(b"b") && from.contains(b"zz") && !from.contains(b"a"));
        let range = watchers.get(3).expect("3");
        assert_eq!((range.key(), range.range_end()), (&b"b"[..], &b"c"[..]));
        assert!(range.contains(b"bz") && !range.contains(b"c"));
    }

    #[test]
    fn many_watchers_then_none() {
        let mut watchers = Watchers::new();
        for id in 0..10_000 {
            let key = format!("key/{}", id % 100);
            watchers.insert(NewWatcher {
                id,
                key: key.as_bytes(),
                range_end: b"",
                flags: QUIET,
                next: None,
            });
        }
        assert_eq!(watchers.candidates(b"key/7").count(), 100);
        // Odd IDs first, from the last: slots move across chunks.
        for id in (0..10_000).rev().step_by(2) {
            assert_eq!(watchers.remove(id), Some(true), "{id}");
        }
        let mut left: Vec<i64> = watchers.candidates(b"key/8").map(Slot::id).collect();
        left.sort_unstable();
        assert_eq!(left, (0..100).map(|i| i * 100 + 8).collect::<Vec<i64>>());
        assert_eq!(watchers.candidates(b"key/7").count(), 0);
        for id in (0..10_000).step_by(2) {
            assert_eq!(watchers.get(id).map(Slot::id), Some(id));
            assert_eq!(watchers.remove(id), Some(true), "{id}");
        }
        assert!(watchers.is_empty());
        assert!(watchers.slots.chunks.is_empty());
        assert_eq!(watchers.candidates(b"key/7").count(), 0);
    }
}
