//! The page file's manifest: which segment slots garbage collection rewrote or emptied.
//!
//! Segments live in *slots*: chain segment `n` (`{n:010}.page`, appended in order, with
//! checkpoints) occupies slot `n`. When garbage collection rewrites the live records of
//! a slot, they go to a *relocated* segment of the same slot (`{n:010}.r1.page`, or
//! `.r2.page` when rewriting a `.r1` one), so a record keeps its place in the order of
//! the file (`PagePtr` orders by slot, then generation, then offset) — the order that
//! gives the events of one revision in apply order. A slot whose records all died is
//! *empty*: it has no file.
//!
//! The manifest is the one place that says which slots are relocated or empty; it is
//! replaced atomically (written to `manifest.tmp`, synced, renamed, directory synced), so
//! a rewrite commits at one point. Before it, the old segment rules and the new file is
//! garbage; after it, the new file rules and the old one is garbage. [`super::PageFile::open`]
//! removes the garbage of either side.
//!
//! # Format (little-endian)
//!
//! ```text
//! 0        8      12        16           20       24
//! ┌────────┬──────┬─────────┬────────────┬────────┬──────────────────────────────┐
//! │ magic  │ crc  │ version │ first slot │ count  │ count × entry (8 bytes each) │
//! │RIVETMF\0│ u32 │ u32 = 1 │ u32        │ u32    │                              │
//! └────────┴──────┴─────────┴────────────┴────────┴──────────────────────────────┘
//! entry: slot u32 | state u8 (1 = relocated, 2 = empty) | generation u8 | reserved u16 = 0
//! ```
//!
//! The CRC-32C covers every byte after it. Entries are sorted by slot, without
//! duplicates; a relocated entry's generation is 1 or 2, an empty one's 0. `first slot`:
//! every slot below it is gone (no file of any kind), so its entries need not be kept.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{field_u32, field_u8};

/// The manifest's file name in a page file's directory.
pub const MANIFEST_FILE: &str = "manifest";
/// Where a new manifest is written before it replaces the old one.
pub const MANIFEST_TEMP_FILE: &str = "manifest.tmp";
/// The first eight bytes of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"RIVETMF\0";
/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const CRC_OFFSET: usize = MAGIC_OFFSET + 8;
const VERSION_OFFSET: usize = CRC_OFFSET + 4;
const FIRST_SLOT_OFFSET: usize = VERSION_OFFSET + 4;
const COUNT_OFFSET: usize = FIRST_SLOT_OFFSET + 4;
/// The fixed part; entries follow.
pub const MANIFEST_HEADER_BYTES: usize = COUNT_OFFSET + 4;
const ENTRY_SLOT_OFFSET: usize = 0;
const ENTRY_STATE_OFFSET: usize = 4;
const ENTRY_GENERATION_OFFSET: usize = 5;
const ENTRY_RESERVED_OFFSET: usize = 6;
/// One entry.
pub const MANIFEST_ENTRY_BYTES: usize = 8;

const STATE_RELOCATED: u8 = 1;
const STATE_EMPTY: u8 = 2;

const _: () = assert!(MANIFEST_HEADER_BYTES == 24);

/// What garbage collection made of a slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlotState {
    /// The slot's records live in relocated segment `{slot}.r{generation}.page`.
    Relocated { generation: u8 },
    /// Every record of the slot died: it has no segment.
    Empty,
}

/// The decoded manifest. A page file without one has an empty manifest: every slot is a
/// chain segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Slots below this one have no file at all.
    pub first_slot: u32,
    pub slots: BTreeMap<u32, SlotState>,
}

/// Why manifest bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a page manifest (bad magic)")]
    BadMagic,
    #[error("cut short: {available} bytes where {needed} are needed")]
    Truncated { available: usize, needed: usize },
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("manifest version {0} is not supported (this build reads {MANIFEST_VERSION})")]
    UnsupportedVersion(u32),
    #[error("{0} bytes after the last entry")]
    TrailingBytes(usize),
    #[error("entry {index}: {reason}")]
    BadEntry { index: usize, reason: &'static str },
}

impl Manifest {
    /// The state of `slot`: `None` for a chain segment (or a slot below `first_slot`).
    #[must_use]
    pub fn state(&self, slot: u32) -> Option<SlotState> {
        self.slots.get(&slot).copied()
    }

    /// Whether `slot` holds no chain segment: relocated, empty, or below `first_slot`.
    #[must_use]
    pub fn replaces_chain(&self, slot: u32) -> bool {
        slot < self.first_slot || self.slots.contains_key(&slot)
    }

    /// Drops the entries below the lowest slot that still has a file (`lowest_present`):
    /// those slots are then covered by `first_slot`.
    pub fn prune(&mut self, lowest_present: u32) {
        let lowest_relocated = self
            .slots
            .iter()
            .find(|(_, state)| matches!(state, SlotState::Relocated { .. }))
            .map(|(slot, _)| *slot);
        let floor = lowest_relocated.map_or(lowest_present, |r| r.min(lowest_present));
        if floor > self.first_slot {
            self.first_slot = floor;
        }
        let first = self.first_slot;
        self.slots.retain(|slot, _| *slot >= first);
    }

    /// The encoded manifest.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(MANIFEST_HEADER_BYTES + self.slots.len() * MANIFEST_ENTRY_BYTES);
        bytes.extend_from_slice(&MANIFEST_MAGIC);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.first_slot.to_le_bytes());
        let count = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&count.to_le_bytes());
        for (slot, state) in &self.slots {
            bytes.extend_from_slice(&slot.to_le_bytes());
            let (state, generation) = match state {
                SlotState::Relocated { generation } => (STATE_RELOCATED, *generation),
                SlotState::Empty => (STATE_EMPTY, 0),
            };
            bytes.extend_from_slice(&[state, generation, 0, 0]);
        }
        let crc = crc32c::crc32c(bytes.get(VERSION_OFFSET..).unwrap_or_default());
        if let Some(field) = bytes.get_mut(CRC_OFFSET..CRC_OFFSET + 4) {
            field.copy_from_slice(&crc.to_le_bytes());
        }
        bytes
    }

    /// Decodes a manifest; never panics, whatever the bytes (fuzz target `page_record`).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let truncated = |needed| ManifestError::Truncated {
            available: bytes.len(),
            needed,
        };
        if bytes.len() < MANIFEST_HEADER_BYTES {
            return Err(truncated(MANIFEST_HEADER_BYTES));
        }
        if bytes.get(..8) != Some(MANIFEST_MAGIC.as_slice()) {
            return Err(ManifestError::BadMagic);
        }
        let stored = field_u32(bytes, CRC_OFFSET).ok_or_else(|| truncated(CRC_OFFSET + 4))?;
        let computed = crc32c::crc32c(bytes.get(VERSION_OFFSET..).unwrap_or_default());
        if stored != computed {
            return Err(ManifestError::CrcMismatch { stored, computed });
        }
        let version = field_u32(bytes, VERSION_OFFSET).ok_or_else(|| truncated(VERSION_OFFSET))?;
        if version != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let first_slot =
            field_u32(bytes, FIRST_SLOT_OFFSET).ok_or_else(|| truncated(FIRST_SLOT_OFFSET))?;
        let count = field_u32(bytes, COUNT_OFFSET).ok_or_else(|| truncated(COUNT_OFFSET))? as usize;
        let needed = count
            .checked_mul(MANIFEST_ENTRY_BYTES)
            .and_then(|entries| entries.checked_add(MANIFEST_HEADER_BYTES))
            .ok_or(ManifestError::BadEntry {
                index: 0,
                reason: "entry count overflows",
            })?;
        if bytes.len() < needed {
            return Err(truncated(needed));
        }
        if bytes.len() > needed {
            return Err(ManifestError::TrailingBytes(bytes.len() - needed));
        }
        let mut slots = BTreeMap::new();
        let mut previous: Option<u32> = None;
        for index in 0..count {
            let entry = bytes
                .get(MANIFEST_HEADER_BYTES + index * MANIFEST_ENTRY_BYTES..)
                .unwrap_or_default();
            let bad = |reason| ManifestError::BadEntry { index, reason };
            let slot = field_u32(entry, ENTRY_SLOT_OFFSET).ok_or(bad("cut short"))?;
            let state = field_u8(entry, ENTRY_STATE_OFFSET).ok_or(bad("cut short"))?;
            let generation = field_u8(entry, ENTRY_GENERATION_OFFSET).ok_or(bad("cut short"))?;
            let reserved = entry.get(ENTRY_RESERVED_OFFSET..ENTRY_RESERVED_OFFSET + 2);
            if reserved != Some([0, 0].as_slice()) {
                return Err(bad("reserved bytes are not zero"));
            }
            if previous.is_some_and(|previous| slot <= previous) {
                return Err(bad("slots are not strictly ascending"));
            }
            if slot < first_slot {
                return Err(bad("slot below the first slot"));
            }
            if slot > super::format::SLOT_MAX {
                return Err(bad("slot beyond the largest slot"));
            }
            previous = Some(slot);
            let state = match (state, generation) {
                (STATE_RELOCATED, 1 | 2) => SlotState::Relocated { generation },
                (STATE_EMPTY, 0) => SlotState::Empty,
                _ => return Err(bad("unknown state or generation")),
            };
            slots.insert(slot, state);
        }
        Ok(Manifest { first_slot, slots })
    }
}

/// Reads the manifest of `dir`; an absent file is the empty manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, (PathBuf, io::Error)> {
    let path = dir.join(MANIFEST_FILE);
    match fs::read(&path) {
        Ok(bytes) => Manifest::decode(&bytes).map_err(|e| (path, io::Error::other(e.to_string()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(error) => Err((path, error)),
    }
}

/// Why [`write_manifest`] failed, and whether the new manifest may be in place already
/// (the rename was done: only the directory sync failed).
#[derive(Debug)]
pub struct ManifestWriteError {
    pub path: PathBuf,
    pub source: io::Error,
    pub renamed: bool,
}

/// Replaces the manifest of `dir` atomically: temporary file, fsync, rename, fsync of the
/// directory. When this returns, the new manifest is durable; if it fails or the process
/// dies inside, either the old or the new manifest is in place.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ManifestWriteError> {
    let temp = dir.join(MANIFEST_TEMP_FILE);
    let target = dir.join(MANIFEST_FILE);
    let failed = |path: &Path, renamed: bool| {
        let path = path.to_path_buf();
        move |source| ManifestWriteError {
            path,
            source,
            renamed,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(failed(&temp, false))?;
    file.write_all(&manifest.encode())
        .map_err(failed(&temp, false))?;
    file.sync_all().map_err(failed(&temp, false))?;
    drop(file);
    crate::crash::point("gc-manifest-written");
    fs::rename(&temp, &target).map_err(failed(&target, false))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(failed(dir, true))?;
    Ok(())
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "tests index buffers they built")]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut manifest = Manifest::default();
        manifest
            .slots
            .insert(3, SlotState::Relocated { generation: 1 });
        manifest.slots.insert(4, SlotState::Empty);
        manifest
            .slots
            .insert(9, SlotState::Relocated { generation: 2 });
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(manifest.clone()));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(Manifest::decode(&damaged).is_err(), "byte {i}");
        }
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Manifest::decode(&[]).is_err());
    }

    #[test]
    fn prune_keeps_relocated_slots_and_drops_empty_ones_below_the_files() {
        let mut manifest = Manifest::default();
        manifest.slots.insert(0, SlotState::Empty);
        manifest.slots.insert(1, SlotState::Empty);
        manifest
            .slots
            .insert(2, SlotState::Relocated { generation: 1 });
        manifest.slots.insert(3, SlotState::Empty);
        manifest.prune(5);
        assert_eq!(manifest.first_slot, 2);
        assert_eq!(manifest.slots.len(), 2);
        assert!(manifest.replaces_chain(0));
        assert!(manifest.replaces_chain(3));
        assert!(!manifest.replaces_chain(5));
    }
}
