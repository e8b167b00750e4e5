//! rivet's write-ahead log: CRC-chained records in preallocated segment files, each
//! append made durable by one write and one fdatasync.
//!
//! The WAL knows nothing about raft: records are a kind, an index and opaque bytes. The
//! byte-level format is specified in `docs/format/wal.md` and, identically, by the
//! constants at the top of [`mod@format`].
//!
//! # Files
//!
//! A WAL is a directory of segment files named `{sequence:016x}-{first_index:016x}.wal`:
//! `sequence` counts segments from 0 without gaps, `first_index` is the raft index the next
//! Entry was expected to carry when the segment was created. Each segment is preallocated
//! (`fallocate`) and zero-filled to `WalOptions::segment_bytes`, or more when a single
//! batch needs it, and reads as zeros after its last record. Zero-filled, not only
//! reserved: an fdatasync after a write into reserved (unwritten) space must also write
//! the file's extent metadata. The next segment is made ahead of the rollover on a thread
//! of its own (`spare.wal.tmp`, see `spare.rs`). A directory flock keeps out a second `Wal`.
//!
//! # Records
//!
//! Every record is framed as `len | crc | kind | flags | reserved | index | payload`,
//! 8-byte aligned. The CRC (CRC32C) of each record is chained from the previous record's
//! CRC, across segment boundaries too, so a missing, reordered or stale record breaks the
//! chain. Each segment starts with a header record that carries the chain seed, the
//! metadata, and copies of the latest HardState and Snapshot records appended before it,
//! so deleting older segments never loses them.
//!
//! # Call order
//!
//! 1. [`Wal::create`] once, in a new or empty directory, with the metadata (member id,
//!    cluster id, …). It returns only when the metadata is durable.
//! 2. On every start, [`Wal::open`], which returns the [`Recovery`]: the latest metadata
//!    and every surviving record in append order.
//! 3. [`Wal::append`] for each raft `Ready`: all its entries, its hard state and snapshot
//!    marker in one call. It returns only after the fdatasync completed; nothing of the
//!    batch may be acknowledged (or sent as a persisted message) before.
//! 4. [`Wal::release_before`] after a raft snapshot, to delete segments holding only
//!    entries below the snapshot's index.
//!
//! # Interpreting the records
//!
//! [`Recovery::records`] holds records in append order. When older segments were deleted,
//! it starts with the copies that the first surviving segment carries (the Snapshot record,
//! then the HardState record that were the latest when that segment was created). Callers
//! replay it with these rules, which are etcd's:
//! - **HardState**: the last one wins.
//! - **Snapshot**: the last one wins; Entry records at or below its index are obsolete.
//! - **Entry**: an Entry whose index is at or below the last Entry's index replaces that
//!   entry and discards every later one (raft's log truncation on conflict).
//! - **Metadata**: the last one wins; [`Recovery::metadata`] already holds it.
//!
//! # Recovery
//!
//! Open verifies every record of every segment. It tells two kinds of damage apart:
//! - a **torn tail**, what a crash during the last append leaves: an invalid last record
//!   with no valid later batch after it, garbage after the last record, or a last segment
//!   cut short. Open zeroes the last segment from the end of its valid data (the file
//!   stays preallocated), logs a warning naming the file, offset and bytes cut, and goes on;
//! - **damage in the middle**: an invalid record followed by a valid later batch, any
//!   invalid data in a segment that is not the last, a truncated or missing middle
//!   segment, a broken CRC chain between segments. Open returns [`OpenError::Damaged`]
//!   naming the file and byte offset, and modifies nothing.
//!
//! Damage that removes the *last* segment entirely, or whole records at the end of the last
//! segment with nothing after them, cannot be told from a log that simply ended there.

mod durable;
mod error;
pub mod faults;
pub mod format;
pub mod limits;
mod segment;
mod spare;
mod wal;

pub use error::{
    AppendError, CreateError, Damage, InvalidRecord, IoError, OpenError, OptionsError, ReleaseError,
};
pub use format::{
    decode_segment_bytes, AfterDamage, DecodedSegment, HeaderProblem, RecordProblem, SegmentEnd,
};
pub use wal::Wal;

use std::path::PathBuf;

/// Options of a WAL. They may differ between runs: they apply to segments created later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Size each new segment file is preallocated to. A multiple of 4 KiB between
    /// [`limits::SEGMENT_BYTES_MIN`] and [`limits::SEGMENT_BYTES_MAX`].
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// What a record holds. The numbers are the on-disk kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A raft log entry; `index` is its raft index.
    Entry = format::KIND_ENTRY,
    /// A raft HardState (term, vote, commit); `index` is 0.
    HardState = format::KIND_HARD_STATE,
    /// A snapshot marker (term and index of a snapshot); `index` is the snapshot's index.
    Snapshot = format::KIND_SNAPSHOT,
    /// Opaque node metadata (member id, cluster id); `index` is 0.
    Metadata = format::KIND_METADATA,
}

impl RecordKind {
    /// The kind for an on-disk kind byte; None for unknown and internal kinds.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            format::KIND_ENTRY => Some(Self::Entry),
            format::KIND_HARD_STATE => Some(Self::HardState),
            format::KIND_SNAPSHOT => Some(Self::Snapshot),
            format::KIND_METADATA => Some(Self::Metadata),
            _ => None,
        }
    }

    /// Whether records of this kind carry a raft index (others must carry 0).
    pub fn has_index(self) -> bool {
        matches!(self, Self::Entry | Self::Snapshot)
    }
}

/// A record to append, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: RecordKind,
    /// Raft index for Entry and Snapshot records, 0 otherwise.
    pub index: u64,
    pub payload: &'a [u8],
}

/// A record read back by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub kind: RecordKind,
    pub index: u64,
    pub payload: Vec<u8>,
}

impl OwnedRecord {
    pub fn as_record(&self) -> Record<'_> {
        Record {
            kind: self.kind,
            index: self.index,
            payload: &self.payload,
        }
    }
}

/// What [`Wal::open`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The latest metadata: the first surviving segment's, replaced by any later Metadata
    /// record.
    pub metadata: Vec<u8>,
    /// All surviving records in append order (see the crate docs for how to interpret
    /// them).
    pub records: Vec<OwnedRecord>,
    /// What was cut from the end of the last segment, if anything.
    pub torn_tail: Option<TornTail>,
}

impl Recovery {
    /// The last HardState record, if any.
    pub fn hard_state(&self) -> Option<&OwnedRecord> {
        self.records
            .iter()
            .rev()
            .find(|record| record.kind == RecordKind::HardState)
    }

    /// The last Snapshot record, if any.
    pub fn snapshot(&self) -> Option<&OwnedRecord> {
        self.records
            .iter()
            .rev()
            .find(|record| record.kind == RecordKind::Snapshot)
    }
}

/// A torn tail cut by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment file.
    pub file: PathBuf,
    /// Where its valid data ends, and where the next append will write.
    pub offset: u64,
    /// Bytes of non-zero data discarded from `offset` on (0 when the file was only short).
    pub bytes: u64,
}

/// Counters of one `Wal` since it was created or opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Successful non-empty `append` calls.
    pub appends: u64,
    /// Records written by them.
    pub records: u64,
    /// Encoded bytes written by them (segment headers excluded).
    pub bytes_written: u64,
    /// fdatasyncs completed (appends and segment headers).
    pub fdatasyncs: u64,
    /// fsyncs of the directory (segment creation, release, recovery repairs).
    pub directory_syncs: u64,
    /// Writes continued because the kernel wrote less than asked.
    pub short_write_retries: u64,
    /// Segment files created (including the first).
    pub segments_created: u64,
    /// Segment files deleted by `release_before`.
    pub segments_released: u64,
    /// Of `segments_created`, those made ahead of their rollover on the spare thread.
    pub segments_from_spare: u64,
}
