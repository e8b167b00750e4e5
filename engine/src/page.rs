//! The page file of one shard: an append-only, log-structured file of key records.
//!
//! Every write the shard applies becomes one *key record* (key, create/mod revision,
//! version, lease, and the value or a tombstone) appended to the page file. The in-memory
//! index ([`crate::mvcc::KeyIndex`]) keeps only a [`PagePtr`] per version; values are read
//! back zero-copy from a memory mapping of the file.
//!
//! # Files
//!
//! The page file is a directory of *segments*, `0000000000.page`, `0000000001.page`, …,
//! numbered without gaps. Every segment is a preallocated file of a fixed size
//! ([`PageOptions::segment_bytes`], 64 MiB by default) mapped read-write; appending a
//! record is a `memcpy` into the mapping, with no system call. A record never spans two
//! segments: when the next record does not fit, the segment is *sealed* (mapped read-only)
//! and a new one is created. A record larger than a segment gets a segment of its own,
//! sized to fit.
//!
//! # Durability
//!
//! The page file is **not** synced per write: the WAL is the source of truth. Only
//! [`PageFile::checkpoint`] makes data durable: it syncs every appended record, then
//! appends and syncs a checkpoint record ("applied up to raft index X"). On restart the
//! shard opens the page file at the last checkpoint it knows of, rebuilds its index from
//! the records before that checkpoint, and replays the WAL after X. Everything after the
//! checkpoint is discarded — it may be torn, since it was never synced, and the WAL replay
//! writes it again.
//!
//! Damage *before* the checkpoint is different: those bytes were synced, so a CRC mismatch
//! there is corruption. [`PageFile::open`] then refuses to start, names the file and offset,
//! and modifies nothing.
//!
//! # Format
//!
//! The byte layout is specified in `docs/format/page.md`; the same layout is written below
//! as offset constants, each built from the previous one. The two must agree.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::undocumented_unsafe_blocks
)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions};

use crate::limits::{
    RECORD_BYTES_MAX, SEGMENT_ALIGNMENT_BYTES, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};

// ---------------------------------------------------------------------------------------
// Format: segment header (32 bytes at offset 0 of every segment file, little-endian).
// ---------------------------------------------------------------------------------------

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RIVETPG\0";
/// The format version this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

const SEGMENT_MAGIC_OFFSET: usize = 0;
const SEGMENT_MAGIC_SIZE: usize = SEGMENT_MAGIC.len();
/// crc32c of the header bytes from the format version to the end of the header.
const SEGMENT_CRC_OFFSET: usize = SEGMENT_MAGIC_OFFSET + SEGMENT_MAGIC_SIZE;
const SEGMENT_CRC_SIZE: usize = 4;
const SEGMENT_FORMAT_VERSION_OFFSET: usize = SEGMENT_CRC_OFFSET + SEGMENT_CRC_SIZE;
const SEGMENT_FORMAT_VERSION_SIZE: usize = 4;
/// The segment's id; equals the number in its file name.
const SEGMENT_ID_OFFSET: usize = SEGMENT_FORMAT_VERSION_OFFSET + SEGMENT_FORMAT_VERSION_SIZE;
const SEGMENT_ID_SIZE: usize = 4;
/// The size of the segment file; a file of another length is damaged.
const SEGMENT_FILE_BYTES_OFFSET: usize = SEGMENT_ID_OFFSET + SEGMENT_ID_SIZE;
const SEGMENT_FILE_BYTES_SIZE: usize = 4;
/// Where the records of the previous segment ended (0 for a first segment): lets the
/// loader tell a segment that ends early (lost writes) from one that was sealed there.
const SEGMENT_PREVIOUS_END_OFFSET: usize = SEGMENT_FILE_BYTES_OFFSET + SEGMENT_FILE_BYTES_SIZE;
const SEGMENT_PREVIOUS_END_SIZE: usize = 4;
/// Zero; reserved for later format versions.
const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_PREVIOUS_END_OFFSET + SEGMENT_PREVIOUS_END_SIZE;
const SEGMENT_RESERVED_SIZE: usize = 4;
/// The size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_RESERVED_OFFSET + SEGMENT_RESERVED_SIZE;

// ---------------------------------------------------------------------------------------
// Format: records (little-endian, each starting at a multiple of RECORD_ALIGNMENT).
// ---------------------------------------------------------------------------------------

/// Records start at multiples of 8 bytes; the padding after a record is zero and is not
/// covered by its CRC.
pub const RECORD_ALIGNMENT: usize = 8;

/// crc32c of the record's bytes from the length field to the end of the record.
const RECORD_CRC_OFFSET: usize = 0;
const RECORD_CRC_SIZE: usize = 4;
/// Bytes of the record from its first byte to its last (padding excluded). Zero, with a
/// zero CRC, marks the end of the records of a segment.
const RECORD_LENGTH_OFFSET: usize = RECORD_CRC_OFFSET + RECORD_CRC_SIZE;
const RECORD_LENGTH_SIZE: usize = 4;
/// [`KIND_KEY`] or [`KIND_CHECKPOINT`].
const RECORD_KIND_OFFSET: usize = RECORD_LENGTH_OFFSET + RECORD_LENGTH_SIZE;
const RECORD_KIND_SIZE: usize = 1;
/// Key records: [`FLAG_TOMBSTONE`]. Checkpoint records: zero.
const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + RECORD_KIND_SIZE;
const RECORD_FLAGS_SIZE: usize = 1;
/// Zero; reserved.
const RECORD_RESERVED_OFFSET: usize = RECORD_FLAGS_OFFSET + RECORD_FLAGS_SIZE;
const RECORD_RESERVED_SIZE: usize = 2;
/// The part of the header shared by all kinds of records.
const RECORD_COMMON_BYTES: usize = RECORD_RESERVED_OFFSET + RECORD_RESERVED_SIZE;

/// Key record body: key length, four i64 fields, then key bytes, then value bytes.
const KEY_RECORD_KEY_LENGTH_OFFSET: usize = RECORD_COMMON_BYTES;
const KEY_RECORD_KEY_LENGTH_SIZE: usize = 4;
const KEY_RECORD_CREATE_REVISION_OFFSET: usize =
    KEY_RECORD_KEY_LENGTH_OFFSET + KEY_RECORD_KEY_LENGTH_SIZE;
const KEY_RECORD_MOD_REVISION_OFFSET: usize = KEY_RECORD_CREATE_REVISION_OFFSET + 8;
const KEY_RECORD_VERSION_OFFSET: usize = KEY_RECORD_MOD_REVISION_OFFSET + 8;
const KEY_RECORD_LEASE_OFFSET: usize = KEY_RECORD_VERSION_OFFSET + 8;
/// The fixed part of a key record; the key starts here, the value right after the key
/// (value length = record length − header − key length).
pub const KEY_RECORD_HEADER_BYTES: usize = KEY_RECORD_LEASE_OFFSET + 8;

/// Checkpoint record body: a reserved word, then three 8-byte fields.
const CHECKPOINT_RESERVED_OFFSET: usize = RECORD_COMMON_BYTES;
const CHECKPOINT_RESERVED_SIZE: usize = 4;
const CHECKPOINT_APPLIED_INDEX_OFFSET: usize =
    CHECKPOINT_RESERVED_OFFSET + CHECKPOINT_RESERVED_SIZE;
const CHECKPOINT_REVISION_OFFSET: usize = CHECKPOINT_APPLIED_INDEX_OFFSET + 8;
const CHECKPOINT_COMPACT_REVISION_OFFSET: usize = CHECKPOINT_REVISION_OFFSET + 8;
/// A checkpoint record has exactly this length.
pub const CHECKPOINT_RECORD_BYTES: usize = CHECKPOINT_COMPACT_REVISION_OFFSET + 8;

#[expect(
    clippy::cast_possible_truncation,
    reason = "40 fits in u32; checked at compile time below"
)]
const CHECKPOINT_RECORD_LENGTH: u32 = CHECKPOINT_RECORD_BYTES as u32;
const _: () = assert!(CHECKPOINT_RECORD_LENGTH as usize == CHECKPOINT_RECORD_BYTES);

/// Record kind: a key record (a put or a delete of one key at one revision).
pub const KIND_KEY: u8 = 1;
/// Record kind: a checkpoint record.
pub const KIND_CHECKPOINT: u8 = 2;
/// Key record flag: the record is a tombstone (the key was deleted); it has no value.
pub const FLAG_TOMBSTONE: u8 = 1;

// The numbers in docs/format/page.md; a change here must change the document too.
const _: () = assert!(SEGMENT_HEADER_BYTES == 32);
const _: () = assert!(RECORD_COMMON_BYTES == 12);
const _: () = assert!(KEY_RECORD_HEADER_BYTES == 48);
const _: () = assert!(CHECKPOINT_RECORD_BYTES == 40);
// Every i64 field sits at a multiple of 8 within an 8-aligned record.
const _: () = assert!(KEY_RECORD_CREATE_REVISION_OFFSET % 8 == 0);
const _: () = assert!(CHECKPOINT_APPLIED_INDEX_OFFSET % 8 == 0);
const _: () = assert!(SEGMENT_HEADER_BYTES % RECORD_ALIGNMENT == 0);
const _: () = assert!(SEGMENT_ALIGNMENT_BYTES as usize % RECORD_ALIGNMENT == 0);
// A minimum-size segment holds its header and at least one small record.
const _: () = assert!(SEGMENT_HEADER_BYTES + KEY_RECORD_HEADER_BYTES < SEGMENT_BYTES_MIN as usize);

// ---------------------------------------------------------------------------------------
// Public types.
// ---------------------------------------------------------------------------------------

/// Where a record lives: segment id and byte offset of the record in that segment.
/// 8 bytes; offsets are multiples of [`RECORD_ALIGNMENT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PagePtr {
    segment: u32,
    offset: u32,
}

impl PagePtr {
    /// A pointer to the record at `offset` of segment `segment`.
    #[must_use]
    pub const fn new(segment: u32, offset: u32) -> PagePtr {
        PagePtr { segment, offset }
    }

    /// The segment id.
    #[must_use]
    pub const fn segment(self) -> u32 {
        self.segment
    }

    /// The byte offset of the record within its segment.
    #[must_use]
    pub const fn offset(self) -> u32 {
        self.offset
    }
}

impl fmt::Display for PagePtr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.segment, self.offset)
    }
}

/// One key record: a put (`value` is `Some`) or a delete (`value` is `None`, a tombstone)
/// of one key at one revision. Used both to append (borrowing the caller's bytes) and to
/// read back (as [`RecordView`], borrowing the mapped file).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyRecord<'a> {
    pub key: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    /// `None` for a tombstone (a delete).
    pub value: Option<&'a [u8]>,
}

/// A key record read from the page file: `key` and `value` borrow the memory mapping
/// (zero-copy); the four integers are decoded from their little-endian bytes.
pub type RecordView<'a> = KeyRecord<'a>;

/// A checkpoint: everything appended before it is durable, and it covers the raft log up
/// to `applied_index`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
}

/// A decoded record of either kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Record<'a> {
    Key(RecordView<'a>),
    Checkpoint(Checkpoint),
}

/// A decoded segment header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    pub id: u32,
    pub file_bytes: u32,
    pub previous_end: u32,
}

/// How a page file is laid out on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageOptions {
    /// The size of a segment file: a multiple of [`SEGMENT_ALIGNMENT_BYTES`] between
    /// [`SEGMENT_BYTES_MIN`] and [`SEGMENT_BYTES_MAX`]. Tests use the minimum so that
    /// rollover happens every few records.
    pub segment_bytes: u32,
}

impl Default for PageOptions {
    fn default() -> PageOptions {
        PageOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors: one type per operation, plus the decoder's.
// ---------------------------------------------------------------------------------------

/// Why bytes are not a valid record or segment header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("cut short: {available} bytes left where {needed} are needed")]
    Truncated { available: usize, needed: usize },
    #[error("record length {length} is invalid ({available} bytes left, minimum {minimum})")]
    BadLength {
        length: u32,
        available: usize,
        minimum: usize,
    },
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("invalid flags {flags:#04x} for record kind {kind}")]
    BadFlags { kind: u8, flags: u8 },
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
    #[error("key length {key_length} does not fit in a record of {length} bytes")]
    BadKeyLength { key_length: u32, length: u32 },
    #[error("tombstone carries {0} value bytes")]
    TombstoneWithValue(usize),
    #[error("not a segment file (bad magic)")]
    BadMagic,
    #[error(
        "segment format version {0} is not supported (this build reads {SEGMENT_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
}

/// Why [`PageFile::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("page file options are invalid: {0}")]
    InvalidOptions(String),
    #[error("page file I/O on {} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("page file in {} has no checkpoint with applied index {index}: {detail}", dir.display())]
    CheckpointNotFound {
        dir: PathBuf,
        index: u64,
        detail: String,
    },
    #[error(
        "page file segment {} is damaged at offset {offset}, before checkpoint {index}: \
         {error}; nothing was modified",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        index: u64,
        error: DecodeError,
    },
    #[error(
        "page file segment {} is damaged, before checkpoint {index}: {detail}; \
         nothing was modified",
        path.display()
    )]
    BadSegment {
        path: PathBuf,
        index: u64,
        detail: String,
    },
}

/// Why [`PageFile::append`] failed. The page file is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("record of {bytes} bytes exceeds the limit of {RECORD_BYTES_MAX} bytes")]
    TooLarge { bytes: u64 },
    #[error("creating page segment {} failed: {source}", path.display())]
    CreateSegment {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("page file has used up its segment ids")]
    SegmentIdsExhausted,
    #[error("page file is unusable after a failed sync; reopen it")]
    Poisoned,
}

/// Why [`PageFile::checkpoint`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint applied index {given} must exceed the previous checkpoint's {previous}")]
    NotIncreasing { previous: u64, given: u64 },
    #[error(
        "syncing {} failed: {source}; the page file is now unusable, reopen it",
        path.display()
    )]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("appending the checkpoint record failed: {0}")]
    Append(#[from] AppendError),
}

/// Why [`PageFile::read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("page pointer {ptr}: no such segment")]
    NoSuchSegment { ptr: PagePtr },
    #[error(
        "page pointer {ptr}: outside the {data_end} written bytes of its segment, or misaligned"
    )]
    OutOfBounds { ptr: PagePtr, data_end: usize },
    #[error("page pointer {ptr}: a checkpoint record, not a key record")]
    NotAKeyRecord { ptr: PagePtr },
    #[error("page pointer {ptr} in {}: {error}", path.display())]
    Damaged {
        ptr: PagePtr,
        path: PathBuf,
        error: DecodeError,
    },
}

// ---------------------------------------------------------------------------------------
// Decoding: never panics, whatever the bytes.
// ---------------------------------------------------------------------------------------

fn field<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn field_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    field(bytes, offset).map(u32::from_le_bytes)
}

fn field_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    field(bytes, offset).map(u64::from_le_bytes)
}

fn field_i64(bytes: &[u8], offset: usize) -> Option<i64> {
    field(bytes, offset).map(i64::from_le_bytes)
}

fn field_u8(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// `Truncated` for a field that lies beyond `bytes`.
fn truncated(bytes: &[u8], needed: usize) -> DecodeError {
    DecodeError::Truncated {
        available: bytes.len(),
        needed,
    }
}

/// Decodes a segment header from the first [`SEGMENT_HEADER_BYTES`] of `bytes`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
    let header = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or_else(|| truncated(bytes, SEGMENT_HEADER_BYTES))?;
    let too_short = || truncated(bytes, SEGMENT_HEADER_BYTES);
    if field::<SEGMENT_MAGIC_SIZE>(header, SEGMENT_MAGIC_OFFSET) != Some(SEGMENT_MAGIC) {
        return Err(DecodeError::BadMagic);
    }
    let stored = field_u32(header, SEGMENT_CRC_OFFSET).ok_or_else(too_short)?;
    let covered = header
        .get(SEGMENT_FORMAT_VERSION_OFFSET..)
        .ok_or_else(too_short)?;
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    let version = field_u32(header, SEGMENT_FORMAT_VERSION_OFFSET).ok_or_else(too_short)?;
    if version != SEGMENT_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if field_u32(header, SEGMENT_RESERVED_OFFSET) != Some(0) {
        return Err(DecodeError::ReservedNotZero);
    }
    Ok(SegmentHeader {
        id: field_u32(header, SEGMENT_ID_OFFSET).ok_or_else(too_short)?,
        file_bytes: field_u32(header, SEGMENT_FILE_BYTES_OFFSET).ok_or_else(too_short)?,
        previous_end: field_u32(header, SEGMENT_PREVIOUS_END_OFFSET).ok_or_else(too_short)?,
    })
}

/// `offset` rounded up to the next record boundary, or `None` on overflow.
fn align_record(offset: usize) -> Option<usize> {
    offset
        .checked_add(RECORD_ALIGNMENT - 1)
        .map(|end| end & !(RECORD_ALIGNMENT - 1))
}

/// Decodes the record at `offset` of `bytes`. `Ok(None)` means the records end here: an
/// end marker (eight zero bytes), or fewer than eight bytes left that are all zero.
/// On success also returns the offset of the next record.
#[deny(clippy::arithmetic_side_effects)]
pub fn decode_record_at(
    bytes: &[u8],
    offset: usize,
) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    let rest = bytes.get(offset..).unwrap_or_default();
    let marker = rest.get(..RECORD_KIND_OFFSET).unwrap_or(rest);
    if marker.iter().all(|byte| *byte == 0) {
        return Ok(None);
    }
    let stored = field_u32(rest, RECORD_CRC_OFFSET).ok_or_else(|| truncated(rest, 8))?;
    let length = field_u32(rest, RECORD_LENGTH_OFFSET).ok_or_else(|| truncated(rest, 8))?;
    let length_bytes = length as usize;
    let bad_length = DecodeError::BadLength {
        length,
        available: rest.len(),
        minimum: RECORD_COMMON_BYTES,
    };
    if length_bytes < RECORD_COMMON_BYTES || length > RECORD_BYTES_MAX {
        return Err(bad_length);
    }
    let record = rest.get(..length_bytes).ok_or(bad_length)?;
    let covered = record.get(RECORD_LENGTH_OFFSET..).unwrap_or_default();
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    let decoded = decode_record_body(record, length)?;
    let next = offset
        .checked_add(length_bytes)
        .and_then(align_record)
        .ok_or(DecodeError::BadLength {
            length,
            available: rest.len(),
            minimum: RECORD_COMMON_BYTES,
        })?;
    Ok(Some((decoded, next)))
}

/// Decodes a record whose length and CRC have been checked.
#[deny(clippy::arithmetic_side_effects)]
fn decode_record_body(record: &[u8], length: u32) -> Result<Record<'_>, DecodeError> {
    let short = |needed| truncated(record, needed);
    let kind = field_u8(record, RECORD_KIND_OFFSET).ok_or_else(|| short(RECORD_COMMON_BYTES))?;
    let flags = field_u8(record, RECORD_FLAGS_OFFSET).ok_or_else(|| short(RECORD_COMMON_BYTES))?;
    let reserved = field::<RECORD_RESERVED_SIZE>(record, RECORD_RESERVED_OFFSET)
        .ok_or_else(|| short(RECORD_COMMON_BYTES))?;
    if reserved != [0; RECORD_RESERVED_SIZE] {
        return Err(DecodeError::ReservedNotZero);
    }
    match kind {
        KIND_KEY => {
            if flags & !FLAG_TOMBSTONE != 0 {
                return Err(DecodeError::BadFlags { kind, flags });
            }
            if record.len() < KEY_RECORD_HEADER_BYTES {
                return Err(DecodeError::BadLength {
                    length,
                    available: record.len(),
                    minimum: KEY_RECORD_HEADER_BYTES,
                });
            }
            let short = || short(KEY_RECORD_HEADER_BYTES);
            let key_length = field_u32(record, KEY_RECORD_KEY_LENGTH_OFFSET).ok_or_else(short)?;
            let body = record.get(KEY_RECORD_HEADER_BYTES..).unwrap_or_default();
            let (key, value) = body
                .split_at_checked(key_length as usize)
                .ok_or(DecodeError::BadKeyLength { key_length, length })?;
            let value = if flags & FLAG_TOMBSTONE == 0 {
                Some(value)
            } else if value.is_empty() {
                None
            } else {
                return Err(DecodeError::TombstoneWithValue(value.len()));
            };
            Ok(Record::Key(KeyRecord {
                key,
                create_revision: field_i64(record, KEY_RECORD_CREATE_REVISION_OFFSET)
                    .ok_or_else(short)?,
                mod_revision: field_i64(record, KEY_RECORD_MOD_REVISION_OFFSET)
                    .ok_or_else(short)?,
                version: field_i64(record, KEY_RECORD_VERSION_OFFSET).ok_or_else(short)?,
                lease: field_i64(record, KEY_RECORD_LEASE_OFFSET).ok_or_else(short)?,
                value,
            }))
        }
        KIND_CHECKPOINT => {
            if flags != 0 {
                return Err(DecodeError::BadFlags { kind, flags });
            }
            if record.len() != CHECKPOINT_RECORD_BYTES {
                return Err(DecodeError::BadLength {
                    length,
                    available: record.len(),
                    minimum: CHECKPOINT_RECORD_BYTES,
                });
            }
            let short = || short(CHECKPOINT_RECORD_BYTES);
            if field_u32(record, CHECKPOINT_RESERVED_OFFSET).ok_or_else(short)? != 0 {
                return Err(DecodeError::ReservedNotZero);
            }
            Ok(Record::Checkpoint(Checkpoint {
                applied_index: field_u64(record, CHECKPOINT_APPLIED_INDEX_OFFSET)
                    .ok_or_else(short)?,
                revision: field_i64(record, CHECKPOINT_REVISION_OFFSET).ok_or_else(short)?,
                compact_revision: field_i64(record, CHECKPOINT_COMPACT_REVISION_OFFSET)
                    .ok_or_else(short)?,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// An iterator over the records in a byte slice, yielding each record with its offset.
/// It stops at the end marker, or after yielding the first error.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Records<'a> {
    /// Records of `bytes` starting at `offset`.
    #[must_use]
    pub fn new(bytes: &'a [u8], offset: usize) -> Records<'a> {
        Records {
            bytes,
            offset,
            done: false,
        }
    }

    /// Where the next record would start; after the end or an error, where decoding stopped.
    #[must_use]
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(usize, Record<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match decode_record_at(self.bytes, self.offset) {
            Ok(Some((record, next))) => {
                let offset = self.offset;
                self.offset = next;
                Some(Ok((offset, record)))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Decodes the records laid out from the start of `bytes` (a segment's bytes after its
/// header, or records built with [`encode_key_record`]). Never panics, whatever the
/// bytes: this is the entry point the fuzz target and the property tests feed.
#[must_use]
pub fn decode_records(bytes: &[u8]) -> Records<'_> {
    Records::new(bytes, 0)
}

/// Decodes a whole segment file: its header, then an iterator over its records.
pub fn decode_segment(bytes: &[u8]) -> Result<(SegmentHeader, Records<'_>), DecodeError> {
    let header = decode_segment_header(bytes)?;
    Ok((header, Records::new(bytes, SEGMENT_HEADER_BYTES)))
}

// ---------------------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------------------

/// Copies `source` into `destination` at `offset`. The caller has sized `destination`;
/// a miss is a programmer error.
fn put(destination: &mut [u8], offset: usize, source: &[u8]) {
    let end = offset + source.len();
    assert!(
        end <= destination.len(),
        "encoding {} bytes at offset {offset} into a buffer of {}",
        source.len(),
        destination.len()
    );
    if let Some(target) = destination.get_mut(offset..end) {
        target.copy_from_slice(source);
    }
}

/// The length of `record` once encoded, or `TooLarge`.
fn key_record_length(record: &KeyRecord<'_>) -> Result<usize, AppendError> {
    let value_length = record.value.map_or(0, <[u8]>::len);
    let bytes = (KEY_RECORD_HEADER_BYTES as u64)
        .saturating_add(record.key.len() as u64)
        .saturating_add(value_length as u64);
    if bytes > u64::from(RECORD_BYTES_MAX) {
        return Err(AppendError::TooLarge { bytes });
    }
    usize::try_from(bytes).map_err(|_| AppendError::TooLarge { bytes })
}

/// Encodes `record` into `destination`, which must be exactly its encoded length.
fn encode_key_record_into(destination: &mut [u8], record: &KeyRecord<'_>) {
    let length = u32::try_from(destination.len()).unwrap_or(u32::MAX);
    let key_length = u32::try_from(record.key.len()).unwrap_or(u32::MAX);
    assert!(
        destination.len() <= RECORD_BYTES_MAX as usize
            && destination.len()
                == KEY_RECORD_HEADER_BYTES + record.key.len() + record.value.map_or(0, <[u8]>::len),
        "key record buffer of {} bytes does not match the record",
        destination.len()
    );
    let mut header = [0_u8; KEY_RECORD_HEADER_BYTES];
    put(&mut header, RECORD_LENGTH_OFFSET, &length.to_le_bytes());
    put(&mut header, RECORD_KIND_OFFSET, &[KIND_KEY]);
    let flags = if record.value.is_none() {
        FLAG_TOMBSTONE
    } else {
        0
    };
    put(&mut header, RECORD_FLAGS_OFFSET, &[flags]);
    put(
        &mut header,
        KEY_RECORD_KEY_LENGTH_OFFSET,
        &key_length.to_le_bytes(),
    );
    put(
        &mut header,
        KEY_RECORD_CREATE_REVISION_OFFSET,
        &record.create_revision.to_le_bytes(),
    );
    put(
        &mut header,
        KEY_RECORD_MOD_REVISION_OFFSET,
        &record.mod_revision.to_le_bytes(),
    );
    put(
        &mut header,
        KEY_RECORD_VERSION_OFFSET,
        &record.version.to_le_bytes(),
    );
    put(
        &mut header,
        KEY_RECORD_LEASE_OFFSET,
        &record.lease.to_le_bytes(),
    );
    let value = record.value.unwrap_or_default();
    let mut crc = crc32c::crc32c(header.get(RECORD_LENGTH_OFFSET..).unwrap_or_default());
    crc = crc32c::crc32c_append(crc, record.key);
    crc = crc32c::crc32c_append(crc, value);
    put(&mut header, RECORD_CRC_OFFSET, &crc.to_le_bytes());
    put(destination, 0, &header);
    put(destination, KEY_RECORD_HEADER_BYTES, record.key);
    put(
        destination,
        KEY_RECORD_HEADER_BYTES + record.key.len(),
        value,
    );
}

fn encode_checkpoint(checkpoint: &Checkpoint) -> [u8; CHECKPOINT_RECORD_BYTES] {
    let mut record = [0_u8; CHECKPOINT_RECORD_BYTES];
    let length = CHECKPOINT_RECORD_LENGTH;
    put(&mut record, RECORD_LENGTH_OFFSET, &length.to_le_bytes());
    put(&mut record, RECORD_KIND_OFFSET, &[KIND_CHECKPOINT]);
    put(
        &mut record,
        CHECKPOINT_APPLIED_INDEX_OFFSET,
        &checkpoint.applied_index.to_le_bytes(),
    );
    put(
        &mut record,
        CHECKPOINT_REVISION_OFFSET,
        &checkpoint.revision.to_le_bytes(),
    );
    put(
        &mut record,
        CHECKPOINT_COMPACT_REVISION_OFFSET,
        &checkpoint.compact_revision.to_le_bytes(),
    );
    let crc = crc32c::crc32c(record.get(RECORD_LENGTH_OFFSET..).unwrap_or_default());
    put(&mut record, RECORD_CRC_OFFSET, &crc.to_le_bytes());
    record
}

fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut bytes = [0_u8; SEGMENT_HEADER_BYTES];
    put(&mut bytes, SEGMENT_MAGIC_OFFSET, &SEGMENT_MAGIC);
    put(
        &mut bytes,
        SEGMENT_FORMAT_VERSION_OFFSET,
        &SEGMENT_FORMAT_VERSION.to_le_bytes(),
    );
    put(&mut bytes, SEGMENT_ID_OFFSET, &header.id.to_le_bytes());
    put(
        &mut bytes,
        SEGMENT_FILE_BYTES_OFFSET,
        &header.file_bytes.to_le_bytes(),
    );
    put(
        &mut bytes,
        SEGMENT_PREVIOUS_END_OFFSET,
        &header.previous_end.to_le_bytes(),
    );
    let crc = crc32c::crc32c(
        bytes
            .get(SEGMENT_FORMAT_VERSION_OFFSET..)
            .unwrap_or_default(),
    );
    put(&mut bytes, SEGMENT_CRC_OFFSET, &crc.to_le_bytes());
    bytes
}

/// Appends `record`, encoded and padded to [`RECORD_ALIGNMENT`], to `out`. For tools,
/// tests and fuzz seeds; the page file encodes straight into its mapping.
pub fn encode_key_record(record: &KeyRecord<'_>, out: &mut Vec<u8>) -> Result<(), AppendError> {
    let length = key_record_length(record)?;
    let start = out.len();
    out.resize(start + length, 0);
    encode_key_record_into(out.get_mut(start..).unwrap_or_default(), record);
    out.resize(align_record(out.len()).unwrap_or(out.len()), 0);
    Ok(())
}

/// Appends a checkpoint record (already a multiple of [`RECORD_ALIGNMENT`]) to `out`.
pub fn encode_checkpoint_record(checkpoint: &Checkpoint, out: &mut Vec<u8>) {
    out.extend_from_slice(&encode_checkpoint(checkpoint));
}

// ---------------------------------------------------------------------------------------
// Files.
// ---------------------------------------------------------------------------------------

fn segment_file_name(id: u32) -> String {
    format!("{id:010}.page")
}

/// The segment id in a file name of the form `0000000042.page`.
fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".page")?;
    if digits.len() != 10 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, sorted by id.
fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, OpenError> {
    let io_error = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(parse_segment_file_name) {
            segments.push((id, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(segments)
}

fn retry_interrupted(mut call: impl FnMut() -> libc::c_int) -> io::Result<()> {
    loop {
        if call() == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

/// Writes zeros over `length` bytes at `offset`, one chunk at a time.
fn write_zeros(file: &File, offset: u64, length: u64) -> io::Result<()> {
    const CHUNK: u64 = 1024 * 1024;
    let zeros = vec![0_u8; 1024 * 1024];
    let mut done = 0;
    while done < length {
        let chunk = (length - done).min(CHUNK);
        let slice = zeros
            .get(..usize::try_from(chunk).unwrap_or(zeros.len()))
            .unwrap_or_default();
        file.write_all_at(slice, offset + done)?;
        done += chunk;
    }
    Ok(())
}

/// Reserves `bytes` of disk blocks for a new, empty `file` and sets its length.
///
/// The blocks must really be allocated, not just a sparse length: writing through a
/// mapping into a hole on a full disk raises `SIGBUS` instead of returning an error.
/// `fallocate` reserves them at once; where the filesystem lacks it, zeros are written.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    let length = libc::off_t::try_from(bytes).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for as long as `file` lives; fallocate reads no memory.
    let result = retry_interrupted(|| unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) });
    match result {
        Err(error) if is_unsupported(&error) => {
            file.set_len(bytes)?;
            write_zeros(file, 0, bytes)
        }
        other => other,
    }
}

/// Zeros `length` bytes of `file` at `offset` without changing its length.
fn zero_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let start = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let count = libc::off_t::try_from(length).map_err(io::Error::other)?;
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: as in `preallocate`.
    let result =
        retry_interrupted(|| unsafe { libc::fallocate(file.as_raw_fd(), mode, start, count) });
    match result {
        Err(error) if is_unsupported(&error) => write_zeros(file, offset, length),
        other => other,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being appended to: mapped read-write.
struct ActiveSegment {
    id: u32,
    path: PathBuf,
    file: File,
    map: MmapMut,
    /// Where the next record goes; every byte from here to the end of the file is zero.
    write_offset: usize,
    /// Bytes before this offset are durable.
    synced_offset: usize,
}

/// A segment no longer appended to: mapped read-only.
struct SealedSegment {
    id: u32,
    path: PathBuf,
    map: Mmap,
    data_end: usize,
    /// Kept while the segment has bytes that the next checkpoint must sync.
    unsynced_file: Option<File>,
}

/// Creates segment `id` of `file_bytes` bytes, preallocated and mapped, with its header
/// written. On failure the file is removed again.
fn create_segment(
    dir: &Path,
    id: u32,
    file_bytes: u32,
    previous_end: u32,
) -> Result<ActiveSegment, AppendError> {
    let path = dir.join(segment_file_name(id));
    let created = (|| -> io::Result<(File, MmapMut)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, u64::from(file_bytes))?;
        // SAFETY: the page file owns its directory; no other process or mapping changes
        // this file while it is mapped (documented on `PageFile`).
        let map = unsafe { MmapOptions::new().len(file_bytes as usize).map_mut(&file)? };
        Ok((file, map))
    })();
    let (file, mut map) = match created {
        Ok(created) => created,
        Err(source) => {
            if let Err(error) = fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), %error, "removing a failed segment");
            }
            return Err(AppendError::CreateSegment { path, source });
        }
    };
    let header = encode_segment_header(&SegmentHeader {
        id,
        file_bytes,
        previous_end,
    });
    put(&mut map, 0, &header);
    Ok(ActiveSegment {
        id,
        path,
        file,
        map,
        write_offset: SEGMENT_HEADER_BYTES,
        synced_offset: 0,
    })
}

/// How the scan of one segment ended.
enum SegmentScan {
    /// The records end here; the checkpoint must be in a later segment.
    End { data_end: usize },
    /// The checkpoint sought; the next record would start at `end`.
    Found { checkpoint: Checkpoint, end: usize },
    /// A later checkpoint came first: the one sought does not exist.
    Overshot { applied_index: u64, offset: usize },
    /// A record that does not decode.
    Damaged { offset: usize, error: DecodeError },
}

fn scan_segment(
    map: &[u8],
    id: u32,
    checkpoint_index: u64,
    on_record: &mut impl FnMut(PagePtr, RecordView<'_>),
) -> SegmentScan {
    let mut records = Records::new(map, SEGMENT_HEADER_BYTES);
    for item in &mut records {
        match item {
            Ok((offset, Record::Key(view))) => {
                // The segment is at most u32::MAX bytes (checked before mapping).
                let offset = u32::try_from(offset).unwrap_or(u32::MAX);
                on_record(PagePtr::new(id, offset), view);
            }
            Ok((offset, Record::Checkpoint(checkpoint))) => {
                if checkpoint.applied_index == checkpoint_index {
                    return SegmentScan::Found {
                        checkpoint,
                        end: offset.saturating_add(CHECKPOINT_RECORD_BYTES),
                    };
                }
                if checkpoint.applied_index > checkpoint_index {
                    return SegmentScan::Overshot {
                        applied_index: checkpoint.applied_index,
                        offset,
                    };
                }
            }
            Err(error) => {
                return SegmentScan::Damaged {
                    offset: records.offset(),
                    error,
                }
            }
        }
    }
    SegmentScan::End {
        data_end: records.offset(),
    }
}

/// Looks for a valid checkpoint record with `applied_index` at every record boundary of
/// `bytes` from `start`, skipping over damage. Used only after a scan stopped early, to
/// tell damage before the checkpoint (the checkpoint is found further on) from a
/// checkpoint that was never written.
fn probe_checkpoint(bytes: &[u8], start: usize, applied_index: u64) -> Option<usize> {
    let first = align_record(start)?;
    (first..bytes.len())
        .step_by(RECORD_ALIGNMENT)
        .find(|offset| {
            let Some(head) = bytes.get(*offset..) else {
                return false;
            };
            let plausible = field_u32(head, RECORD_LENGTH_OFFSET) == Some(CHECKPOINT_RECORD_LENGTH)
                && field_u8(head, RECORD_KIND_OFFSET) == Some(KIND_CHECKPOINT)
                && field_u64(head, CHECKPOINT_APPLIED_INDEX_OFFSET) == Some(applied_index);
            plausible
                && matches!(
                    decode_record_at(bytes, *offset),
                    Ok(Some((Record::Checkpoint(found), _))) if found.applied_index == applied_index
                )
        })
}

/// A segment mapped read-only during `open`, before the checkpoint is found.
struct ScannedSegment {
    id: u32,
    path: PathBuf,
    file: File,
    map: Mmap,
    data_end: usize,
}

/// Where and why the scan stopped without finding the checkpoint.
struct ScanStop {
    /// Index into the listed segments where the probe for the checkpoint starts.
    position: usize,
    /// Offset within that segment where the probe starts.
    offset: usize,
    /// The segment and offset to blame if the checkpoint turns out to lie beyond.
    path: PathBuf,
    blame: Blame,
}

enum Blame {
    Record { offset: usize, error: DecodeError },
    Segment { detail: String },
    End,
    Overshot { applied_index: u64, offset: usize },
}

/// The page file of one shard. See the module documentation.
///
/// Safety of the mappings: the page file assumes it alone writes the files in its
/// directory while it is open. Another process truncating or writing a segment would
/// change bytes that `read` has lent out.
pub struct PageFile {
    dir: PathBuf,
    options: PageOptions,
    /// Sealed segments in id order; their ids are consecutive, ending at `active.id − 1`.
    sealed: Vec<SealedSegment>,
    active: ActiveSegment,
    last_checkpoint_index: u64,
    /// Segment files were created or removed since the directory was last synced.
    dir_unsynced: bool,
    /// A sync failed: the state of the page cache is unknown (fsyncgate), so every
    /// further append and checkpoint fails until the page file is reopened.
    poisoned: bool,
}

impl fmt::Debug for PageFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PageFile")
            .field("dir", &self.dir)
            .field("segments", &(self.sealed.len() + 1))
            .field("active_segment", &self.active.id)
            .field("write_offset", &self.active.write_offset)
            .field("last_checkpoint_index", &self.last_checkpoint_index)
            .finish_non_exhaustive()
    }
}

impl PageFile {
    /// Opens (creating if absent) the page file in `dir`, and loads it up to and including
    /// the checkpoint record whose `applied_index` is `checkpoint_index`; 0 loads nothing
    /// and starts empty.
    ///
    /// Calls `on_record(ptr, view)` for every key record before that checkpoint, in file
    /// order, segment by segment, borrowing the mapped bytes: nothing is copied, so the
    /// caller can rebuild its index in chunks. Everything after the checkpoint is
    /// discarded (later segments removed, the rest of the checkpoint's segment zeroed),
    /// because it was never synced and the WAL replays it.
    ///
    /// Errors: `CheckpointNotFound` (naming the directory and index) if there is no such
    /// checkpoint; `Corrupt` or `BadSegment` (naming the file and offset) if the bytes
    /// before it are damaged. On these errors no file is modified, but `on_record` may
    /// already have been called for the records before the damage: discard what was
    /// built from them.
    pub fn open(
        dir: &Path,
        options: PageOptions,
        checkpoint_index: u64,
        mut on_record: impl FnMut(PagePtr, RecordView<'_>),
    ) -> Result<(PageFile, Option<Checkpoint>), OpenError> {
        validate_options(&options)?;
        let dir_error = |source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        let listed = list_segments(dir)?;

        if checkpoint_index == 0 {
            for (_, path) in listed.iter().rev() {
                fs::remove_file(path).map_err(|source| OpenError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
            let active = create_segment(dir, 0, options.segment_bytes, 0)
                .map_err(|error| append_to_open_error(dir, error))?;
            sync_dir(dir).map_err(dir_error)?;
            if !listed.is_empty() {
                tracing::info!(dir = %dir.display(), segments = listed.len(),
                    "page file opened at checkpoint 0: discarded all segments");
            }
            let page_file = PageFile {
                dir: dir.to_path_buf(),
                options,
                sealed: Vec::new(),
                active,
                last_checkpoint_index: 0,
                dir_unsynced: false,
                poisoned: false,
            };
            return Ok((page_file, None));
        }

        let mut scanned: Vec<ScannedSegment> = Vec::new();
        let mut found = None;
        let mut stop = None;
        for (position, (id, path)) in listed.iter().enumerate() {
            let previous = scanned.last();
            // If this segment turns out unusable, look for the checkpoint from where the
            // valid records ended: the damage may lie anywhere after them.
            let probe_from = match previous {
                Some(segment) => (position.saturating_sub(1), segment.data_end),
                None => (position, 0),
            };
            let expected_id = previous.map_or(Some(*id), |segment| segment.id.checked_add(1));
            if expected_id != Some(*id) {
                stop = Some(ScanStop {
                    position: probe_from.0,
                    offset: probe_from.1,
                    path: path.clone(),
                    blame: Blame::Segment {
                        detail: format!(
                            "segment {} is missing",
                            expected_id
                                .map_or_else(|| "after u32::MAX".to_owned(), |id| id.to_string())
                        ),
                    },
                });
                break;
            }
            let previous_end = previous.map(|segment| segment.data_end);
            let (file, map) = match map_segment_for_scan(path)? {
                Ok(mapped) => mapped,
                Err(detail) => {
                    stop = Some(ScanStop {
                        position: probe_from.0,
                        offset: probe_from.1,
                        path: path.clone(),
                        blame: Blame::Segment { detail },
                    });
                    break;
                }
            };
            if let Err(detail) = check_segment_header(&map, *id, previous_end) {
                stop = Some(ScanStop {
                    position: probe_from.0,
                    offset: probe_from.1,
                    path: path.clone(),
                    blame: Blame::Segment { detail },
                });
                break;
            }
            if let Err(error) = map.advise(Advice::Sequential) {
                tracing::debug!(path = %path.display(), %error, "madvise(SEQUENTIAL) failed");
            }
            let scan = scan_segment(&map, *id, checkpoint_index, &mut on_record);
            let mut segment = ScannedSegment {
                id: *id,
                path: path.clone(),
                file,
                map,
                data_end: 0,
            };
            match scan {
                SegmentScan::End { data_end } => {
                    segment.data_end = data_end;
                    scanned.push(segment);
                }
                SegmentScan::Found { checkpoint, end } => {
                    segment.data_end = end;
                    found = Some((position, checkpoint, segment));
                    break;
                }
                SegmentScan::Overshot {
                    applied_index,
                    offset,
                } => {
                    stop = Some(ScanStop {
                        position,
                        offset,
                        path: path.clone(),
                        blame: Blame::Overshot {
                            applied_index,
                            offset,
                        },
                    });
                    break;
                }
                SegmentScan::Damaged { offset, error } => {
                    stop = Some(ScanStop {
                        position,
                        offset,
                        path: path.clone(),
                        blame: Blame::Record { offset, error },
                    });
                    break;
                }
            }
        }

        let Some((position, checkpoint, last)) = found else {
            let stop = stop.unwrap_or_else(|| match scanned.last() {
                Some(last) => ScanStop {
                    position: listed.len().saturating_sub(1),
                    offset: last.data_end,
                    path: last.path.clone(),
                    blame: Blame::End,
                },
                None => ScanStop {
                    position: 0,
                    offset: 0,
                    path: dir.to_path_buf(),
                    blame: Blame::End,
                },
            });
            return Err(scan_error(dir, &listed, checkpoint_index, stop));
        };

        // The checkpoint is found: from here on the page file is modified.
        let mut dir_changed = false;
        for (_, path) in listed.iter().skip(position + 1).rev() {
            fs::remove_file(path).map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?;
            dir_changed = true;
        }
        let io_error = |source| OpenError::Io {
            path: last.path.clone(),
            source,
        };
        let tail = last.map.get(last.data_end..).unwrap_or_default();
        let discarded = last_nonzero(tail);
        let file_bytes = last.map.len();
        drop(last.map);
        if let Some(last_nonzero) = discarded {
            zero_range(
                &last.file,
                last.data_end as u64,
                (file_bytes - last.data_end) as u64,
            )
            .map_err(io_error)?;
            last.file.sync_data().map_err(io_error)?;
            tracing::info!(path = %last.path.display(), offset = last.data_end,
                bytes = last_nonzero + 1,
                "page file: discarded bytes after checkpoint {checkpoint_index} (the WAL replays them)");
        }
        if dir_changed {
            tracing::info!(dir = %dir.display(), segments = listed.len() - position - 1,
                "page file: removed segments after checkpoint {checkpoint_index}");
            sync_dir(dir).map_err(dir_error)?;
        }
        // SAFETY: see `create_segment`.
        let map = unsafe { MmapMut::map_mut(&last.file) }.map_err(io_error)?;
        let active = ActiveSegment {
            id: last.id,
            path: last.path,
            file: last.file,
            map,
            write_offset: last.data_end,
            synced_offset: last.data_end,
        };
        let sealed = scanned
            .into_iter()
            .map(|segment| SealedSegment {
                id: segment.id,
                path: segment.path,
                map: segment.map,
                data_end: segment.data_end,
                unsynced_file: None,
            })
            .collect();
        let page_file = PageFile {
            dir: dir.to_path_buf(),
            options,
            sealed,
            active,
            last_checkpoint_index: checkpoint_index,
            dir_unsynced: false,
            poisoned: false,
        };
        Ok((page_file, Some(checkpoint)))
    }

    /// Appends a key record and returns where it lives. In steady state this is a `memcpy`
    /// into the mapping, with no system call; when the record does not fit in the current
    /// segment a new one is created. Not durable until the next [`PageFile::checkpoint`].
    pub fn append(&mut self, record: &KeyRecord<'_>) -> Result<PagePtr, AppendError> {
        let length = key_record_length(record)?;
        let offset = self.reserve(length)?;
        let end = offset + length;
        let destination = self
            .active
            .map
            .get_mut(offset..end)
            .ok_or(AppendError::TooLarge {
                bytes: length as u64,
            })?;
        encode_key_record_into(destination, record);
        debug_assert!(
            matches!(
                decode_record_at(&self.active.map, offset),
                Ok(Some((Record::Key(view), _))) if view == *record
            ),
            "the record just written at {}:{offset} does not read back",
            self.active.id
        );
        // `reserve` checked that the aligned end fits the segment.
        self.active.write_offset = align_record(end).unwrap_or(end);
        Ok(PagePtr::new(
            self.active.id,
            u32::try_from(offset).unwrap_or(u32::MAX),
        ))
    }

    /// Makes room for a record of `length` bytes in the active segment, rolling over to a
    /// new segment if needed, and returns the offset where it goes.
    fn reserve(&mut self, length: usize) -> Result<usize, AppendError> {
        if self.poisoned {
            return Err(AppendError::Poisoned);
        }
        let too_large = AppendError::TooLarge {
            bytes: length as u64,
        };
        let padded = align_record(length).ok_or(too_large)?;
        let offset = self.active.write_offset;
        if offset.saturating_add(padded) <= self.active.map.len() {
            return Ok(offset);
        }
        self.roll_over(padded)?;
        Ok(self.active.write_offset)
    }

    /// Seals the active segment and starts a new one that fits `padded` record bytes.
    fn roll_over(&mut self, padded: usize) -> Result<(), AppendError> {
        let alignment = SEGMENT_ALIGNMENT_BYTES as usize;
        let needed = (SEGMENT_HEADER_BYTES + padded).div_ceil(alignment) * alignment;
        let file_bytes =
            u32::try_from(needed.max(self.options.segment_bytes as usize)).map_err(|_| {
                AppendError::TooLarge {
                    bytes: padded as u64,
                }
            })?;
        let id = self
            .active
            .id
            .checked_add(1)
            .ok_or(AppendError::SegmentIdsExhausted)?;
        // Map the old segment read-only first: if that fails, nothing has changed.
        // SAFETY: see `create_segment`.
        let sealed_map = unsafe { Mmap::map(&self.active.file) }.map_err(|source| {
            AppendError::CreateSegment {
                path: self.active.path.clone(),
                source,
            }
        })?;
        let data_end = self.active.write_offset;
        let previous_end = u32::try_from(data_end).unwrap_or(u32::MAX);
        let next = create_segment(&self.dir, id, file_bytes, previous_end)?;
        let old = std::mem::replace(&mut self.active, next);
        // Dropping the old read-write mapping leaves its dirty pages in the page cache;
        // syncing the file writes them.
        let unsynced = old.synced_offset < old.write_offset;
        self.sealed.push(SealedSegment {
            id: old.id,
            path: old.path,
            map: sealed_map,
            data_end,
            unsynced_file: unsynced.then_some(old.file),
        });
        self.dir_unsynced = true;
        Ok(())
    }

    /// Reads the key record at `ptr`, zero-copy from the mapping.
    ///
    /// Checks that `ptr` lies within the written bytes of an existing segment, that the
    /// record is a key record, and verifies its CRC. The CRC check is kept on every read:
    /// crc32c runs in hardware (SSE 4.2 / ARMv8 CRC) at several GB/s, so for the small
    /// values etcd stores it costs tens of nanoseconds, and it catches bytes damaged on
    /// disk after the file was loaded before they reach a client.
    pub fn read(&self, ptr: PagePtr) -> Result<RecordView<'_>, ReadError> {
        let (bytes, data_end, path): (&[u8], usize, &Path) = if ptr.segment == self.active.id {
            (
                &self.active.map,
                self.active.write_offset,
                &self.active.path,
            )
        } else {
            let first = self
                .sealed
                .first()
                .map_or(self.active.id, |segment| segment.id);
            let segment = ptr
                .segment
                .checked_sub(first)
                .and_then(|index| self.sealed.get(index as usize))
                .ok_or(ReadError::NoSuchSegment { ptr })?;
            (&segment.map, segment.data_end, &segment.path)
        };
        let offset = ptr.offset as usize;
        if offset < SEGMENT_HEADER_BYTES
            || offset % RECORD_ALIGNMENT != 0
            || offset.saturating_add(KEY_RECORD_HEADER_BYTES) > data_end
        {
            return Err(ReadError::OutOfBounds { ptr, data_end });
        }
        let written = bytes.get(..data_end).unwrap_or_default();
        match decode_record_at(written, offset) {
            Ok(Some((Record::Key(view), _))) => Ok(view),
            Ok(Some((Record::Checkpoint(_), _))) => Err(ReadError::NotAKeyRecord { ptr }),
            Ok(None) => Err(ReadError::OutOfBounds { ptr, data_end }),
            Err(error) => Err(ReadError::Damaged {
                ptr,
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    /// Makes every appended record durable (`fdatasync` of sealed segments with unsynced
    /// bytes, `msync` of the written range of the active one, and the directory if
    /// segments were created), then appends a checkpoint record and syncs it too.
    ///
    /// The two rounds are needed: the kernel writes dirty pages back in any order, so a
    /// checkpoint written together with the records could become durable before them.
    /// After a failed sync the page file refuses further appends and checkpoints: reopen it
    /// (the WAL replays what was lost).
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        if self.poisoned {
            return Err(CheckpointError::Append(AppendError::Poisoned));
        }
        if checkpoint.applied_index <= self.last_checkpoint_index {
            return Err(CheckpointError::NotIncreasing {
                previous: self.last_checkpoint_index,
                given: checkpoint.applied_index,
            });
        }
        self.sync()?;
        let offset = self.reserve(CHECKPOINT_RECORD_BYTES)?;
        let record = encode_checkpoint(checkpoint);
        put(&mut self.active.map, offset, &record);
        debug_assert!(matches!(
            decode_record_at(&self.active.map, offset),
            Ok(Some((Record::Checkpoint(read), _))) if read == *checkpoint
        ));
        self.active.write_offset = offset + CHECKPOINT_RECORD_BYTES;
        self.sync()?;
        self.last_checkpoint_index = checkpoint.applied_index;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), CheckpointError> {
        let result = self.sync_unpoisoned();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn sync_unpoisoned(&mut self) -> Result<(), CheckpointError> {
        for segment in &mut self.sealed {
            if let Some(file) = &segment.unsynced_file {
                file.sync_data().map_err(|source| CheckpointError::Sync {
                    path: segment.path.clone(),
                    source,
                })?;
                segment.unsynced_file = None;
            }
        }
        let active = &mut self.active;
        if active.synced_offset < active.write_offset {
            active
                .map
                .flush_range(
                    active.synced_offset,
                    active.write_offset - active.synced_offset,
                )
                .map_err(|source| CheckpointError::Sync {
                    path: active.path.clone(),
                    source,
                })?;
            active.synced_offset = active.write_offset;
        }
        if self.dir_unsynced {
            sync_dir(&self.dir).map_err(|source| CheckpointError::Sync {
                path: self.dir.clone(),
                source,
            })?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Bytes of segment files on disk. Segments are preallocated to their full size, so
    /// this is the sum of the segment sizes, computed when called.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.sealed
            .iter()
            .map(|segment| segment.map.len() as u64)
            .sum::<u64>()
            + self.active.map.len() as u64
    }

    /// Bytes of records written (headers included), read from the segments' end offsets
    /// when called: what the data takes, without the preallocated tails. This is the size
    /// rivet reports as `dbSize` and checks against `--quota-backend-bytes`.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.sealed
            .iter()
            .map(|segment| segment.data_end as u64)
            .sum::<u64>()
            + self.active.write_offset as u64
    }

    /// The applied index of the last checkpoint (written or loaded); 0 if none.
    #[must_use]
    pub fn last_checkpoint_index(&self) -> u64 {
        self.last_checkpoint_index
    }

    /// The number of segment files.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The directory of this page file.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn validate_options(options: &PageOptions) -> Result<(), OpenError> {
    let bytes = options.segment_bytes;
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes)
        || bytes % SEGMENT_ALIGNMENT_BYTES != 0
    {
        return Err(OpenError::InvalidOptions(format!(
            "segment_bytes {bytes} must be a multiple of {SEGMENT_ALIGNMENT_BYTES} \
             between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
        )));
    }
    Ok(())
}

fn append_to_open_error(dir: &Path, error: AppendError) -> OpenError {
    match error {
        AppendError::CreateSegment { path, source } => OpenError::Io { path, source },
        other => OpenError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Opens and maps a segment for the scan. The outer error is I/O (fail at once); the
/// inner one describes a file that cannot be a segment (damage, or a torn creation).
fn map_segment_for_scan(path: &Path) -> Result<Result<(File, Mmap), String>, OpenError> {
    let io_error = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error)?;
    let length = file.metadata().map_err(io_error)?.len();
    if length < SEGMENT_HEADER_BYTES as u64 || length > u64::from(u32::MAX) {
        return Ok(Err(format!("its length {length} cannot be a segment's")));
    }
    // SAFETY: see `create_segment`.
    let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
    Ok(Ok((file, map)))
}

fn check_segment_header(map: &[u8], id: u32, previous_end: Option<usize>) -> Result<(), String> {
    let header = decode_segment_header(map).map_err(|error| format!("header: {error}"))?;
    if header.id != id {
        return Err(format!(
            "header names segment {}, the file name {id}",
            header.id
        ));
    }
    if header.file_bytes as usize != map.len() {
        return Err(format!(
            "header gives a size of {} bytes, the file has {}",
            header.file_bytes,
            map.len()
        ));
    }
    if let Some(previous_end) = previous_end {
        if header.previous_end as usize != previous_end {
            return Err(format!(
                "header says segment {} ended at offset {}, but its records end at {previous_end}",
                id.saturating_sub(1),
                header.previous_end
            ));
        }
    }
    Ok(())
}

/// The error for a scan that stopped without finding the checkpoint: damage if the
/// checkpoint is found further on, "not found" otherwise.
fn scan_error(
    dir: &Path,
    listed: &[(u32, PathBuf)],
    checkpoint_index: u64,
    stop: ScanStop,
) -> OpenError {
    let beyond = if matches!(stop.blame, Blame::Overshot { .. }) {
        None
    } else {
        find_checkpoint_beyond(listed, stop.position, stop.offset, checkpoint_index)
    };
    let where_ = |offset: usize| format!("{}:{offset}", stop.path.display());
    match (stop.blame, beyond) {
        (Blame::Record { offset, error }, Some(_)) => OpenError::Corrupt {
            path: stop.path,
            offset: offset as u64,
            index: checkpoint_index,
            error,
        },
        (Blame::Segment { detail }, Some(_)) => OpenError::BadSegment {
            path: stop.path,
            index: checkpoint_index,
            detail,
        },
        (Blame::End, Some(found)) => OpenError::BadSegment {
            path: stop.path.clone(),
            index: checkpoint_index,
            detail: format!(
                "its records end early at offset {}: the checkpoint lies beyond, at {found}",
                stop.offset
            ),
        },
        (Blame::Record { offset, error }, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!("valid records end at {} ({error})", where_(offset)),
        },
        (Blame::Segment { detail }, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!(
                "valid segments end before {} ({detail})",
                stop.path.display()
            ),
        },
        (Blame::End, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: if listed.is_empty() {
                "there are no segments".to_owned()
            } else {
                format!("records end at {}", where_(stop.offset))
            },
        },
        (
            Blame::Overshot {
                applied_index,
                offset,
            },
            _,
        ) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!(
                "a later checkpoint ({applied_index}) comes first, at {}",
                where_(offset)
            ),
        },
    }
}

/// Probes segment `position` from `offset`, then every later segment, for the checkpoint.
fn find_checkpoint_beyond(
    listed: &[(u32, PathBuf)],
    position: usize,
    offset: usize,
    checkpoint_index: u64,
) -> Option<String> {
    listed
        .iter()
        .enumerate()
        .skip(position)
        .find_map(|(index, (_, path))| {
            let start = if index == position {
                offset.max(SEGMENT_HEADER_BYTES)
            } else {
                SEGMENT_HEADER_BYTES
            };
            let Ok(Ok((_file, map))) = map_segment_for_scan(path) else {
                return None;
            };
            probe_checkpoint(&map, start, checkpoint_index)
                .map(|found| format!("{}:{found}", path.display()))
        })
}

/// The position of the last non-zero byte of `bytes`. Compares 64 KiB chunks against
/// zeros with `memcmp` from the end, so a mostly empty 64 MiB segment tail is checked fast
/// (also in debug builds) and only the chunk that holds data is scanned byte by byte.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = bytes.get(start..end).unwrap_or_default();
        if chunk != ZEROS.get(..chunk.len()).unwrap_or_default() {
            return chunk.iter().rposition(|byte| *byte != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "tests index fixed-size buffers")]
mod last_nonzero_tests {
    use super::last_nonzero;

    #[test]
    fn finds_the_last_nonzero_byte() {
        let mut bytes = vec![0u8; 200_000];
        assert_eq!(last_nonzero(&bytes), None);
        bytes[5] = 1;
        assert_eq!(last_nonzero(&bytes), Some(5));
        bytes[131_072] = 7;
        assert_eq!(last_nonzero(&bytes), Some(131_072));
        bytes[199_999] = 1;
        assert_eq!(last_nonzero(&bytes), Some(199_999));
        assert_eq!(last_nonzero(&[]), None);
    }
}
