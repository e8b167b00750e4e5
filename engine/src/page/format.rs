//! The page file's byte layout, written as offset constants each built from the previous
//! one (the same layout as `docs/format/page.md`; the two must agree), with the decoder
//! and the encoder. Pure functions over byte slices: nothing here touches a file, and
//! the decoder never panics, whatever the bytes.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::limits::{RECORD_BYTES_MAX, SEGMENT_ALIGNMENT_BYTES, SEGMENT_BYTES_MIN};

// ---------------------------------------------------------------------------------------
// Format: segment header (32 bytes at offset 0 of every segment file, little-endian).
// ---------------------------------------------------------------------------------------

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RIVETPG\0";
/// The format version this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

pub(super) const SEGMENT_MAGIC_OFFSET: usize = 0;
pub(super) const SEGMENT_MAGIC_SIZE: usize = SEGMENT_MAGIC.len();
/// crc32c of the header bytes from the format version to the end of the header.
pub(super) const SEGMENT_CRC_OFFSET: usize = SEGMENT_MAGIC_OFFSET + SEGMENT_MAGIC_SIZE;
pub(super) const SEGMENT_CRC_SIZE: usize = 4;
pub(super) const SEGMENT_FORMAT_VERSION_OFFSET: usize = SEGMENT_CRC_OFFSET + SEGMENT_CRC_SIZE;
pub(super) const SEGMENT_FORMAT_VERSION_SIZE: usize = 4;
/// The segment's id; equals the number in its file name.
pub(super) const SEGMENT_ID_OFFSET: usize =
    SEGMENT_FORMAT_VERSION_OFFSET + SEGMENT_FORMAT_VERSION_SIZE;
pub(super) const SEGMENT_ID_SIZE: usize = 4;
/// The size of the segment file; a file of another length is damaged.
pub(super) const SEGMENT_FILE_BYTES_OFFSET: usize = SEGMENT_ID_OFFSET + SEGMENT_ID_SIZE;
pub(super) const SEGMENT_FILE_BYTES_SIZE: usize = 4;
/// Where the records of the previous segment ended (0 for a first segment): lets the
/// loader tell a segment that ends early (lost writes) from one that was sealed there.
pub(super) const SEGMENT_PREVIOUS_END_OFFSET: usize =
    SEGMENT_FILE_BYTES_OFFSET + SEGMENT_FILE_BYTES_SIZE;
pub(super) const SEGMENT_PREVIOUS_END_SIZE: usize = 4;
/// Zero; reserved for later format versions.
pub(super) const SEGMENT_RESERVED_OFFSET: usize =
    SEGMENT_PREVIOUS_END_OFFSET + SEGMENT_PREVIOUS_END_SIZE;
pub(super) const SEGMENT_RESERVED_SIZE: usize = 4;
/// The size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_RESERVED_OFFSET + SEGMENT_RESERVED_SIZE;

// ---------------------------------------------------------------------------------------
// Format: records (little-endian, each starting at a multiple of RECORD_ALIGNMENT).
// ---------------------------------------------------------------------------------------

/// Records start at multiples of 8 bytes; the padding after a record is zero and is not
/// covered by its CRC.
pub const RECORD_ALIGNMENT: usize = 8;

/// crc32c of the record's bytes from the length field to the end of the record.
pub(super) const RECORD_CRC_OFFSET: usize = 0;
pub(super) const RECORD_CRC_SIZE: usize = 4;
/// Bytes of the record from its first byte to its last (padding excluded). Zero, with a
/// zero CRC, marks the end of the records of a segment.
pub(super) const RECORD_LENGTH_OFFSET: usize = RECORD_CRC_OFFSET + RECORD_CRC_SIZE;
pub(super) const RECORD_LENGTH_SIZE: usize = 4;
/// [`KIND_KEY`] or [`KIND_CHECKPOINT`].
pub(super) const RECORD_KIND_OFFSET: usize = RECORD_LENGTH_OFFSET + RECORD_LENGTH_SIZE;
pub(super) const RECORD_KIND_SIZE: usize = 1;
/// Key records: [`FLAG_TOMBSTONE`]. Checkpoint records: zero.
pub(super) const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + RECORD_KIND_SIZE;
pub(super) const RECORD_FLAGS_SIZE: usize = 1;
/// Zero; reserved.
pub(super) const RECORD_RESERVED_OFFSET: usize = RECORD_FLAGS_OFFSET + RECORD_FLAGS_SIZE;
pub(super) const RECORD_RESERVED_SIZE: usize = 2;
/// The part of the header shared by all kinds of records.
pub(super) const RECORD_COMMON_BYTES: usize = RECORD_RESERVED_OFFSET + RECORD_RESERVED_SIZE;

/// Key record body: key length, four i64 fields, then key bytes, then value bytes.
pub(super) const KEY_RECORD_KEY_LENGTH_OFFSET: usize = RECORD_COMMON_BYTES;
pub(super) const KEY_RECORD_KEY_LENGTH_SIZE: usize = 4;
pub(super) const KEY_RECORD_CREATE_REVISION_OFFSET: usize =
    KEY_RECORD_KEY_LENGTH_OFFSET + KEY_RECORD_KEY_LENGTH_SIZE;
pub(super) const KEY_RECORD_MOD_REVISION_OFFSET: usize = KEY_RECORD_CREATE_REVISION_OFFSET + 8;
pub(super) const KEY_RECORD_VERSION_OFFSET: usize = KEY_RECORD_MOD_REVISION_OFFSET + 8;
pub(super) const KEY_RECORD_LEASE_OFFSET: usize = KEY_RECORD_VERSION_OFFSET + 8;
/// The fixed part of a key record; the key starts here, the value right after the key
/// (value length = record length − header − key length).
pub const KEY_RECORD_HEADER_BYTES: usize = KEY_RECORD_LEASE_OFFSET + 8;

/// Checkpoint record body: a reserved word, then three 8-byte fields.
pub(super) const CHECKPOINT_RESERVED_OFFSET: usize = RECORD_COMMON_BYTES;
pub(super) const CHECKPOINT_RESERVED_SIZE: usize = 4;
pub(super) const CHECKPOINT_APPLIED_INDEX_OFFSET: usize =
    CHECKPOINT_RESERVED_OFFSET + CHECKPOINT_RESERVED_SIZE;
pub(super) const CHECKPOINT_REVISION_OFFSET: usize = CHECKPOINT_APPLIED_INDEX_OFFSET + 8;
pub(super) const CHECKPOINT_COMPACT_REVISION_OFFSET: usize = CHECKPOINT_REVISION_OFFSET + 8;
/// A checkpoint record has exactly this length.
pub const CHECKPOINT_RECORD_BYTES: usize = CHECKPOINT_COMPACT_REVISION_OFFSET + 8;

#[expect(
    clippy::cast_possible_truncation,
    reason = "40 fits in u32; checked at compile time below"
)]
pub(super) const CHECKPOINT_RECORD_LENGTH: u32 = CHECKPOINT_RECORD_BYTES as u32;
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
// Types.
// ---------------------------------------------------------------------------------------

/// Where a record lives: its segment and the byte offset of the record in it. 8 bytes;
/// offsets are multiples of [`RECORD_ALIGNMENT`].
///
/// A segment is named by its *slot* and *generation* (see [`super::manifest`]): chain
/// segment `n` is slot `n`, generation 0; garbage collection rewrites a slot's live
/// records into generation 1 or 2 of the same slot. Pointers order by slot, then
/// generation, then offset, so a rewritten record keeps its place among the others.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PagePtr {
    /// `slot << GENERATION_BITS | generation`.
    segment: u32,
    offset: u32,
}

/// Bits of a segment key that hold the generation (0: chain; 1, 2: relocated).
pub const GENERATION_BITS: u32 = 2;
/// The largest slot a segment can have.
pub const SLOT_MAX: u32 = u32::MAX >> GENERATION_BITS;

/// The key of segment (`slot`, `generation`) in [`PagePtr`]s.
#[must_use]
pub const fn segment_key(slot: u32, generation: u8) -> u32 {
    (slot << GENERATION_BITS) | (generation as u32 & ((1 << GENERATION_BITS) - 1))
}

/// The slot of a segment key.
#[must_use]
pub const fn key_slot(key: u32) -> u32 {
    key >> GENERATION_BITS
}

/// The generation of a segment key.
#[must_use]
pub const fn key_generation(key: u32) -> u8 {
    (key & ((1 << GENERATION_BITS) - 1)) as u8
}

impl PagePtr {
    /// A pointer to the record at `offset` of chain segment `segment` (generation 0).
    #[must_use]
    pub const fn new(segment: u32, offset: u32) -> PagePtr {
        PagePtr {
            segment: segment_key(segment, 0),
            offset,
        }
    }

    /// A pointer into the segment with key `key` (see [`segment_key`]).
    #[must_use]
    pub const fn in_segment(key: u32, offset: u32) -> PagePtr {
        PagePtr {
            segment: key,
            offset,
        }
    }

    /// The segment's slot: for a chain segment, the number in its file name.
    #[must_use]
    pub const fn segment(self) -> u32 {
        key_slot(self.segment)
    }

    /// The segment's generation: 0 for a chain segment, 1 or 2 for a relocated one.
    #[must_use]
    pub const fn generation(self) -> u8 {
        key_generation(self.segment)
    }

    /// The segment key (slot and generation).
    #[must_use]
    pub const fn segment_key(self) -> u32 {
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
        match self.generation() {
            0 => write!(formatter, "{}:{}", self.segment(), self.offset),
            generation => write!(
                formatter,
                "{}.r{generation}:{}",
                self.segment(),
                self.offset
            ),
        }
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

// ---------------------------------------------------------------------------------------
// Errors.
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

/// Why a record could not be appended ([`super::PageFile::append`], [`encode_key_record`]).
/// The page file is unchanged.
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

// ---------------------------------------------------------------------------------------
// Decoding: never panics, whatever the bytes.
// ---------------------------------------------------------------------------------------

pub(super) fn field<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

pub(super) fn field_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    field(bytes, offset).map(u32::from_le_bytes)
}

pub(super) fn field_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    field(bytes, offset).map(u64::from_le_bytes)
}

pub(super) fn field_i64(bytes: &[u8], offset: usize) -> Option<i64> {
    field(bytes, offset).map(i64::from_le_bytes)
}

pub(super) fn field_u8(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// `Truncated` for a field that lies beyond `bytes`.
pub(super) fn truncated(bytes: &[u8], needed: usize) -> DecodeError {
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
pub(super) fn align_record(offset: usize) -> Option<usize> {
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
pub(super) fn decode_record_body(record: &[u8], length: u32) -> Result<Record<'_>, DecodeError> {
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
pub(super) fn put(destination: &mut [u8], offset: usize, source: &[u8]) {
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
pub(super) fn key_record_length(record: &KeyRecord<'_>) -> Result<usize, AppendError> {
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
pub(super) fn encode_key_record_into(destination: &mut [u8], record: &KeyRecord<'_>) {
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

pub(super) fn encode_checkpoint(checkpoint: &Checkpoint) -> [u8; CHECKPOINT_RECORD_BYTES] {
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

pub(super) fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
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
