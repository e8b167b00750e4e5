//! The on-disk format: record framing, the segment header, and the decoder.
//!
//! This is the second copy of the format; the first is the byte diagram in
//! `docs/format/wal.md`. Both must agree: each offset constant below is built from the
//! previous one, exactly as the diagram lays the fields out.
//!
//! Everything here is pure (bytes in, values out) so it can be fuzzed: the decoder reads
//! untrusted bytes and must never panic, which the lints below enforce.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::arithmetic_side_effects
)]

use crate::limits::{
    RECORD_PAYLOAD_BYTES_MAX, RESUME_SCAN_CHECKSUM_FACTOR, RESUME_SCAN_SEEDS_MAX,
    SEGMENT_HEADER_RECORD_BYTES_MAX,
};

// ---------------------------------------------------------------------------------------
// Record framing. All integers little-endian. A record starts on an 8-byte boundary and
// its payload is followed by zero padding up to the next 8-byte boundary.
//
//   0      4      8    9     10          16            24
//   +------+------+----+-----+-----------+-------------+-------------------+---------+
//   | len  | crc  |kind|flags| reserved  |   index     | payload (len B)   | padding |
//   | u32  | u32  | u8 | u8  | 6 B, zero |    u64      |                   | to 8 B  |
//   +------+------+----+-----+-----------+-------------+-------------------+---------+
// ---------------------------------------------------------------------------------------

/// Payload length in bytes, padding excluded.
pub const RECORD_LEN_OFFSET: usize = 0;
pub const RECORD_LEN_BYTES: usize = 4;
/// CRC32C chained from the previous record's CRC; see [`record_crc`].
pub const RECORD_CRC_OFFSET: usize = RECORD_LEN_OFFSET + RECORD_LEN_BYTES;
pub const RECORD_CRC_BYTES: usize = 4;
/// A [`crate::RecordKind`] or [`KIND_SEGMENT_HEADER`]; 0 never is a kind.
pub const RECORD_KIND_OFFSET: usize = RECORD_CRC_OFFSET + RECORD_CRC_BYTES;
pub const RECORD_KIND_BYTES: usize = 1;
/// Bit set of `FLAG_*`.
pub const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + RECORD_KIND_BYTES;
pub const RECORD_FLAGS_BYTES: usize = 1;
/// Must be zero.
pub const RECORD_RESERVED_OFFSET: usize = RECORD_FLAGS_OFFSET + RECORD_FLAGS_BYTES;
pub const RECORD_RESERVED_BYTES: usize = 6;
/// Raft index for Entry and Snapshot records, 0 for every other kind.
pub const RECORD_INDEX_OFFSET: usize = RECORD_RESERVED_OFFSET + RECORD_RESERVED_BYTES;
pub const RECORD_INDEX_BYTES: usize = 8;
pub const RECORD_HEADER_BYTES: usize = RECORD_INDEX_OFFSET + RECORD_INDEX_BYTES;
/// Records start, and so end, on multiples of this.
pub const RECORD_ALIGNMENT_BYTES: usize = 8;

const _: () = assert!(RECORD_HEADER_BYTES == 24);
const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGNMENT_BYTES == 0);
const _: () = assert!(RECORD_INDEX_OFFSET % 8 == 0);

/// The first record of every batch handed to one `append` carries this flag. Recovery
/// uses it to tell a torn last write from damage in the middle: records of the torn batch
/// may survive after a damaged one, but a valid batch *start* after damage proves that a
/// later, acknowledged append exists.
pub const FLAG_BATCH_START: u8 = 0x01;
pub const FLAGS_KNOWN: u8 = FLAG_BATCH_START;

pub const KIND_ENTRY: u8 = 1;
pub const KIND_HARD_STATE: u8 = 2;
pub const KIND_SNAPSHOT: u8 = 3;
pub const KIND_METADATA: u8 = 4;
/// Internal kind: the first record of every segment. Never returned to callers.
pub const KIND_SEGMENT_HEADER: u8 = 16;

// ---------------------------------------------------------------------------------------
// Segment header: the payload of the record at offset 0 of every segment (kind 16,
// flags 0, index 0). Its CRC chains from `chain_seed`, which it carries itself, so every
// segment can be verified alone; the next records chain from the header's CRC.
//
//   0        8       12       16         24            32              40          44
//   +--------+-------+--------+----------+-------------+---------------+-----------+
//   | magic  |version|reserved| sequence | first_index | segment_bytes | chain_seed|
//   | 8 B    | u32   | u32 = 0|   u64    |     u64     |     u64       |    u32    |
//   +--------+-------+--------+----------+-------------+---------------+-----------+
//   44       48             52               56               64             68       72
//   +--------+--------------+----------------+----------------+--------------+--------+
//   |carried | metadata_len | hard_state_len | snapshot_index | snapshot_len |reserved|
//   | u32    |     u32      |      u32       |      u64       |     u32      | u32 = 0|
//   +--------+--------------+----------------+----------------+--------------+--------+
//   72: metadata bytes, then hard state bytes, then snapshot bytes (no padding between).
// ---------------------------------------------------------------------------------------

pub const SEGMENT_MAGIC: [u8; 8] = *b"rivetWAL";
pub const SEGMENT_VERSION: u32 = 1;

pub const HEADER_MAGIC_OFFSET: usize = 0;
pub const HEADER_MAGIC_BYTES: usize = 8;
pub const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + HEADER_MAGIC_BYTES;
pub const HEADER_VERSION_BYTES: usize = 4;
pub const HEADER_RESERVED_A_OFFSET: usize = HEADER_VERSION_OFFSET + HEADER_VERSION_BYTES;
pub const HEADER_RESERVED_A_BYTES: usize = 4;
/// Position of the segment in the log; consecutive from the first segment ever created.
pub const HEADER_SEQUENCE_OFFSET: usize = HEADER_RESERVED_A_OFFSET + HEADER_RESERVED_A_BYTES;
pub const HEADER_SEQUENCE_BYTES: usize = 8;
/// The index the next Entry was expected to carry when the segment was created (the last
/// appended Entry's index + 1); it also appears in the file name.
pub const HEADER_FIRST_INDEX_OFFSET: usize = HEADER_SEQUENCE_OFFSET + HEADER_SEQUENCE_BYTES;
pub const HEADER_FIRST_INDEX_BYTES: usize = 8;
/// The length the file was preallocated to.
pub const HEADER_SEGMENT_BYTES_OFFSET: usize = HEADER_FIRST_INDEX_OFFSET + HEADER_FIRST_INDEX_BYTES;
pub const HEADER_SEGMENT_BYTES_BYTES: usize = 8;
/// CRC of the last record of the previous segment (0 in the first segment).
pub const HEADER_CHAIN_SEED_OFFSET: usize =
    HEADER_SEGMENT_BYTES_OFFSET + HEADER_SEGMENT_BYTES_BYTES;
pub const HEADER_CHAIN_SEED_BYTES: usize = 4;
/// Bit set of `CARRIED_*`: which optional copies follow.
pub const HEADER_CARRIED_OFFSET: usize = HEADER_CHAIN_SEED_OFFSET + HEADER_CHAIN_SEED_BYTES;
pub const HEADER_CARRIED_BYTES: usize = 4;
pub const HEADER_METADATA_LEN_OFFSET: usize = HEADER_CARRIED_OFFSET + HEADER_CARRIED_BYTES;
pub const HEADER_METADATA_LEN_BYTES: usize = 4;
pub const HEADER_HARD_STATE_LEN_OFFSET: usize =
    HEADER_METADATA_LEN_OFFSET + HEADER_METADATA_LEN_BYTES;
pub const HEADER_HARD_STATE_LEN_BYTES: usize = 4;
pub const HEADER_SNAPSHOT_INDEX_OFFSET: usize =
    HEADER_HARD_STATE_LEN_OFFSET + HEADER_HARD_STATE_LEN_BYTES;
pub const HEADER_SNAPSHOT_INDEX_BYTES: usize = 8;
pub const HEADER_SNAPSHOT_LEN_OFFSET: usize =
    HEADER_SNAPSHOT_INDEX_OFFSET + HEADER_SNAPSHOT_INDEX_BYTES;
pub const HEADER_SNAPSHOT_LEN_BYTES: usize = 4;
pub const HEADER_RESERVED_B_OFFSET: usize = HEADER_SNAPSHOT_LEN_OFFSET + HEADER_SNAPSHOT_LEN_BYTES;
pub const HEADER_RESERVED_B_BYTES: usize = 4;
pub const HEADER_FIXED_BYTES: usize = HEADER_RESERVED_B_OFFSET + HEADER_RESERVED_B_BYTES;

pub const CARRIED_HARD_STATE: u32 = 0x1;
pub const CARRIED_SNAPSHOT: u32 = 0x2;
pub const CARRIED_KNOWN: u32 = CARRIED_HARD_STATE | CARRIED_SNAPSHOT;

const _: () = assert!(HEADER_FIXED_BYTES == 72);
const _: () = assert!(HEADER_SEQUENCE_OFFSET % 8 == 0);
const _: () = assert!(HEADER_SNAPSHOT_INDEX_OFFSET % 8 == 0);
// limits.rs sizes the largest header record from the fixed part and three carried copies.
const _: () = assert!(
    (RECORD_HEADER_BYTES + HEADER_FIXED_BYTES + RECORD_ALIGNMENT_BYTES) as u64
        + 3 * RECORD_PAYLOAD_BYTES_MAX
        <= SEGMENT_HEADER_RECORD_BYTES_MAX
);

// ---------------------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------------------

/// Size of a framed record with `payload_bytes` of payload: header plus padded payload.
/// `payload_bytes` is at most [`RECORD_PAYLOAD_BYTES_MAX`], so this cannot overflow.
pub const fn record_bytes(payload_bytes: usize) -> usize {
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "callers bound payload_bytes by RECORD_PAYLOAD_BYTES_MAX"
    )]
    let total = RECORD_HEADER_BYTES
        + payload_bytes.div_ceil(RECORD_ALIGNMENT_BYTES) * RECORD_ALIGNMENT_BYTES;
    total
}

/// The CRC of the framed record `record` (header and padded payload) chained from `seed`,
/// the previous record's CRC: CRC32C over the length field and then everything after the
/// CRC field (kind, flags, reserved, index, payload, padding). Returns `None` when
/// `record` is shorter than a header.
pub fn record_crc(seed: u32, record: &[u8]) -> Option<u32> {
    let len_field = record.get(RECORD_LEN_OFFSET..RECORD_CRC_OFFSET)?;
    let rest = record.get(RECORD_KIND_OFFSET..)?;
    Some(crc32c::crc32c_append(
        crc32c::crc32c_append(seed, len_field),
        rest,
    ))
}

/// Appends one framed record to `buf` and returns its CRC, chained from `seed`.
/// `write_payload` appends exactly `payload_bytes` bytes of payload to the buffer it gets.
fn encode_record_with(
    buf: &mut Vec<u8>,
    seed: u32,
    kind: u8,
    flags: u8,
    index: u64,
    payload_bytes: u32,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> u32 {
    let start = buf.len();
    buf.extend_from_slice(&payload_bytes.to_le_bytes());
    buf.extend_from_slice(&[0; RECORD_CRC_BYTES]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&[0; RECORD_RESERVED_BYTES]);
    buf.extend_from_slice(&index.to_le_bytes());
    write_payload(buf);
    let written = buf.len().saturating_sub(start);
    assert_eq!(
        written,
        RECORD_HEADER_BYTES.saturating_add(payload_bytes as usize),
        "payload writer wrote the wrong number of bytes (kind {kind}, payload {payload_bytes})"
    );
    let end = start.saturating_add(record_bytes(payload_bytes as usize));
    buf.resize(end, 0);
    let record = buf.get_mut(start..end).unwrap_or_default();
    let crc = record_crc(seed, record).unwrap_or_default();
    if let Some(field) = record.get_mut(RECORD_CRC_OFFSET..RECORD_KIND_OFFSET) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    crc
}

/// Appends one framed user record to `buf` and returns its CRC, chained from `seed`.
///
/// The caller has checked `payload.len() <= RECORD_PAYLOAD_BYTES_MAX`.
pub fn encode_record(
    buf: &mut Vec<u8>,
    seed: u32,
    kind: u8,
    flags: u8,
    index: u64,
    payload: &[u8],
) -> u32 {
    let payload_bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert!(
        u64::from(payload_bytes) <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {} bytes exceeds the limit of {RECORD_PAYLOAD_BYTES_MAX}",
        payload.len()
    );
    encode_record_with(buf, seed, kind, flags, index, payload_bytes, |buf| {
        buf.extend_from_slice(payload)
    })
}

/// The fields of a segment header, borrowed from wherever they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader<'a> {
    pub sequence: u64,
    pub first_index: u64,
    /// The length the segment file was preallocated to.
    pub segment_bytes: u64,
    /// The CRC of the last record of the previous segment; 0 in the first segment.
    pub chain_seed: u32,
    /// The latest metadata when the segment was created.
    pub metadata: &'a [u8],
    /// The latest HardState payload appended before the segment was created, if any.
    pub hard_state: Option<&'a [u8]>,
    /// The latest Snapshot record (index, payload) appended before the segment was
    /// created, if any.
    pub snapshot: Option<(u64, &'a [u8])>,
}

fn len_u32(bytes: &[u8]) -> u32 {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    assert!(
        u64::from(len) <= RECORD_PAYLOAD_BYTES_MAX,
        "carried copy of {} bytes exceeds the record payload limit {RECORD_PAYLOAD_BYTES_MAX}",
        bytes.len()
    );
    len
}

/// Size of the framed segment header record for `header`.
pub fn segment_header_record_bytes(header: &SegmentHeader<'_>) -> usize {
    record_bytes(segment_header_payload_bytes(header) as usize)
}

fn segment_header_payload_bytes(header: &SegmentHeader<'_>) -> u32 {
    let hard_state = header.hard_state.unwrap_or_default();
    let snapshot = header
        .snapshot
        .map(|(_, payload)| payload)
        .unwrap_or_default();
    // Each part is at most RECORD_PAYLOAD_BYTES_MAX (checked by len_u32), and limits.rs
    // asserts that three of them plus the fixed part fit in a u32.
    [
        len_u32(header.metadata),
        len_u32(hard_state),
        len_u32(snapshot),
    ]
    .iter()
    .fold(
        u32::try_from(HEADER_FIXED_BYTES).unwrap_or(u32::MAX),
        |sum, part| sum.saturating_add(*part),
    )
}

/// Appends the framed segment header record to `buf` and returns its CRC, chained from
/// `header.chain_seed`. The records that follow in the segment chain from this CRC.
pub fn encode_segment_header(buf: &mut Vec<u8>, header: &SegmentHeader<'_>) -> u32 {
    let hard_state = header.hard_state.unwrap_or_default();
    let (snapshot_index, snapshot) = header.snapshot.unwrap_or_default();
    let mut carried = 0;
    if header.hard_state.is_some() {
        carried |= CARRIED_HARD_STATE;
    }
    if header.snapshot.is_some() {
        carried |= CARRIED_SNAPSHOT;
    }
    let payload_bytes = segment_header_payload_bytes(header);
    encode_record_with(
        buf,
        header.chain_seed,
        KIND_SEGMENT_HEADER,
        0,
        0,
        payload_bytes,
        |buf| {
            buf.extend_from_slice(&SEGMENT_MAGIC);
            buf.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
            buf.extend_from_slice(&0_u32.to_le_bytes());
            buf.extend_from_slice(&header.sequence.to_le_bytes());
            buf.extend_from_slice(&header.first_index.to_le_bytes());
            buf.extend_from_slice(&header.segment_bytes.to_le_bytes());
            buf.extend_from_slice(&header.chain_seed.to_le_bytes());
            buf.extend_from_slice(&carried.to_le_bytes());
            buf.extend_from_slice(&len_u32(header.metadata).to_le_bytes());
            buf.extend_from_slice(&len_u32(hard_state).to_le_bytes());
            buf.extend_from_slice(&snapshot_index.to_le_bytes());
            buf.extend_from_slice(&len_u32(snapshot).to_le_bytes());
            buf.extend_from_slice(&0_u32.to_le_bytes());
            buf.extend_from_slice(header.metadata);
            buf.extend_from_slice(hard_state);
            buf.extend_from_slice(snapshot);
        },
    )
}

// ---------------------------------------------------------------------------------------
// Decoding. Nothing below may panic, whatever the bytes.
// ---------------------------------------------------------------------------------------

fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    read_array(bytes, offset).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    read_array(bytes, offset).map(u64::from_le_bytes)
}

/// The fields of a record header, before any check.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    len: u32,
    crc: u32,
    kind: u8,
    flags: u8,
    reserved_zero: bool,
    index: u64,
}

fn read_raw_header(bytes: &[u8], offset: usize) -> Option<RawHeader> {
    let header: [u8; RECORD_HEADER_BYTES] = read_array(bytes, offset)?;
    Some(RawHeader {
        len: read_u32(&header, RECORD_LEN_OFFSET)?,
        crc: read_u32(&header, RECORD_CRC_OFFSET)?,
        kind: *header.get(RECORD_KIND_OFFSET)?,
        flags: *header.get(RECORD_FLAGS_OFFSET)?,
        reserved_zero: header
            .get(RECORD_RESERVED_OFFSET..RECORD_INDEX_OFFSET)?
            .iter()
            .all(|byte| *byte == 0),
        index: read_u64(&header, RECORD_INDEX_OFFSET)?,
    })
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("only {available} bytes left, fewer than a record header, and they are not all zero")]
    TruncatedHeader { available: u64 },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("unknown flag bits {flags:#04x}")]
    UnknownFlags { flags: u8 },
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("payload length {len} exceeds the limit of {RECORD_PAYLOAD_BYTES_MAX} bytes")]
    PayloadTooLong { len: u32 },
    #[error(
        "record of {record_bytes} bytes runs past the end of the data ({available} bytes left)"
    )]
    TruncatedRecord { record_bytes: u64, available: u64 },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error(
        "end-of-data marker (zero header) followed by non-zero bytes at offset {first_nonzero}"
    )]
    DataAfterEnd { first_nonzero: u64 },
}

/// The header of a record that passed every check a header alone allows.
#[derive(Debug, Clone, Copy)]
struct PlausibleRecord {
    crc: u32,
    kind: u8,
    flags: u8,
    index: u64,
    payload_len: usize,
    size: usize,
}

/// Checks everything about the record at `offset` except its CRC.
fn plausible_record(
    bytes: &[u8],
    offset: usize,
    raw: &RawHeader,
) -> Result<PlausibleRecord, RecordProblem> {
    if !matches!(
        raw.kind,
        KIND_ENTRY | KIND_HARD_STATE | KIND_SNAPSHOT | KIND_METADATA
    ) {
        return Err(RecordProblem::UnknownKind { kind: raw.kind });
    }
    if raw.flags & !FLAGS_KNOWN != 0 {
        return Err(RecordProblem::UnknownFlags { flags: raw.flags });
    }
    if !raw.reserved_zero {
        return Err(RecordProblem::ReservedNotZero);
    }
    if u64::from(raw.len) > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordProblem::PayloadTooLong { len: raw.len });
    }
    let payload_len = raw.len as usize;
    let size = record_bytes(payload_len);
    let available = bytes.len().saturating_sub(offset);
    if size > available {
        return Err(RecordProblem::TruncatedRecord {
            record_bytes: size as u64,
            available: available as u64,
        });
    }
    Ok(PlausibleRecord {
        crc: raw.crc,
        kind: raw.kind,
        flags: raw.flags,
        index: raw.index,
        payload_len,
        size,
    })
}

/// One valid record of a segment, borrowed from the segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// Byte offset of the record in its segment.
    pub offset: u64,
    pub kind: u8,
    pub flags: u8,
    pub index: u64,
    pub payload: &'a [u8],
    pub crc: u32,
}

/// How the valid data of a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// The data ends at `offset` and every byte from there to the end of the buffer is
    /// zero (or the buffer ends exactly there).
    Clean { offset: u64 },
    /// The bytes at `offset` are not a valid record.
    Invalid {
        offset: u64,
        problem: RecordProblem,
        /// Whether a later, separately appended batch can be verified after the damage.
        after: AfterDamage,
    },
}

impl SegmentEnd {
    /// Where the valid data ends.
    pub fn offset(&self) -> u64 {
        match self {
            SegmentEnd::Clean { offset } | SegmentEnd::Invalid { offset, .. } => *offset,
        }
    }
}

/// What [`scan_for_resumption`] found after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDamage {
    /// No valid batch start after the damage: the damage is (at most) a torn last write.
    NothingValid,
    /// A valid record starting a batch at this offset: the damage has valid, acknowledged
    /// data after it.
    ValidBatchAt { offset: u64 },
    /// The scan hit its work bound before deciding; treat as damage.
    Undecided,
}

/// A decoded segment: its header, its valid records, and how its data ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment<'a> {
    pub header: SegmentHeader<'a>,
    /// CRC of the header record; the first record chains from it.
    pub header_crc: u32,
    /// The valid records after the header, in order.
    pub records: Vec<DecodedRecord<'a>>,
    /// CRC of the last valid record (the header's when there is none): the seed of the
    /// next record, or of the next segment.
    pub crc_last: u32,
    pub end: SegmentEnd,
}

/// Why the first record of a segment is not a valid segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("segment is {len} bytes, too short for a segment header")]
    TooShort { len: u64 },
    #[error("first record has kind {kind}, not a segment header ({KIND_SEGMENT_HEADER})")]
    NotAHeader { kind: u8 },
    #[error("segment header record is malformed (flags, reserved bytes or length)")]
    Malformed,
    #[error("bad magic bytes")]
    BadMagic,
    #[error("unsupported format version {version} (this build reads {SEGMENT_VERSION})")]
    UnsupportedVersion { version: u32 },
    #[error("segment header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("segment header carried-copy lengths do not add up to its payload length")]
    BadLengths,
}

/// Decodes the segment header at the start of `bytes`, returning it, its CRC and the
/// size of its record.
pub fn decode_segment_header(
    bytes: &[u8],
) -> Result<(SegmentHeader<'_>, u32, usize), HeaderProblem> {
    let too_short = HeaderProblem::TooShort {
        len: bytes.len() as u64,
    };
    let raw = read_raw_header(bytes, 0).ok_or(too_short)?;
    if raw.kind != KIND_SEGMENT_HEADER {
        return Err(HeaderProblem::NotAHeader { kind: raw.kind });
    }
    if raw.flags != 0
        || !raw.reserved_zero
        || raw.index != 0
        || u64::from(raw.len) > SEGMENT_HEADER_RECORD_BYTES_MAX
    {
        return Err(HeaderProblem::Malformed);
    }
    let size = record_bytes(raw.len as usize);
    let record = bytes.get(..size).ok_or(too_short)?;
    let payload = record.get(RECORD_HEADER_BYTES..).ok_or(too_short)?;
    let payload = payload.get(..raw.len as usize).ok_or(too_short)?;
    let field = |offset| read_u32(payload, offset).ok_or(HeaderProblem::Malformed);
    let field_u64 = |offset| read_u64(payload, offset).ok_or(HeaderProblem::Malformed);
    if read_array::<HEADER_MAGIC_BYTES>(payload, HEADER_MAGIC_OFFSET) != Some(SEGMENT_MAGIC) {
        return Err(HeaderProblem::BadMagic);
    }
    let version = field(HEADER_VERSION_OFFSET)?;
    if version != SEGMENT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion { version });
    }
    // Verify the CRC before trusting any other field.
    let chain_seed = field(HEADER_CHAIN_SEED_OFFSET)?;
    let computed = record_crc(chain_seed, record).ok_or(too_short)?;
    if computed != raw.crc {
        return Err(HeaderProblem::CrcMismatch {
            stored: raw.crc,
            computed,
        });
    }
    let carried = field(HEADER_CARRIED_OFFSET)?;
    if carried & !CARRIED_KNOWN != 0
        || field(HEADER_RESERVED_A_OFFSET)? != 0
        || field(HEADER_RESERVED_B_OFFSET)? != 0
    {
        return Err(HeaderProblem::Malformed);
    }
    let metadata_len = field(HEADER_METADATA_LEN_OFFSET)? as usize;
    let hard_state_len = field(HEADER_HARD_STATE_LEN_OFFSET)? as usize;
    let snapshot_len = field(HEADER_SNAPSHOT_LEN_OFFSET)? as usize;
    let snapshot_index = field_u64(HEADER_SNAPSHOT_INDEX_OFFSET)?;
    if carried & CARRIED_HARD_STATE == 0 && hard_state_len != 0
        || carried & CARRIED_SNAPSHOT == 0 && (snapshot_len != 0 || snapshot_index != 0)
    {
        return Err(HeaderProblem::Malformed);
    }
    let mut rest = payload
        .get(HEADER_FIXED_BYTES..)
        .ok_or(HeaderProblem::BadLengths)?;
    let mut take = |len: usize| -> Result<&[u8], HeaderProblem> {
        let part = rest.get(..len).ok_or(HeaderProblem::BadLengths)?;
        rest = rest.get(len..).unwrap_or_default();
        Ok(part)
    };
    let metadata = take(metadata_len)?;
    let hard_state = take(hard_state_len)?;
    let snapshot = take(snapshot_len)?;
    if !rest.is_empty() {
        return Err(HeaderProblem::BadLengths);
    }
    let header = SegmentHeader {
        sequence: field_u64(HEADER_SEQUENCE_OFFSET)?,
        first_index: field_u64(HEADER_FIRST_INDEX_OFFSET)?,
        segment_bytes: field_u64(HEADER_SEGMENT_BYTES_OFFSET)?,
        chain_seed,
        metadata,
        hard_state: (carried & CARRIED_HARD_STATE != 0).then_some(hard_state),
        snapshot: (carried & CARRIED_SNAPSHOT != 0).then_some((snapshot_index, snapshot)),
    };
    Ok((header, raw.crc, size))
}

/// Decodes one whole segment file's bytes: the header, then records until the data ends.
///
/// This is the decoder's entry point for fuzzing: it never panics, and on damage it
/// reports the offset of the first invalid record and whether valid data follows it
/// (the caller decides whether that is a torn tail or damage in the middle).
pub fn decode_segment_bytes(bytes: &[u8]) -> Result<DecodedSegment<'_>, HeaderProblem> {
    let (header, header_crc, header_size) = decode_segment_header(bytes)?;
    let mut records = Vec::new();
    let mut crc_last = header_crc;
    let mut offset = header_size;
    let end = loop {
        let available = bytes.len().saturating_sub(offset);
        let Some(raw) = read_raw_header(bytes, offset) else {
            // Fewer bytes left than a header: fine if they are zeros (a segment whose
            // last record ends within a header's length of the end).
            let tail = bytes.get(offset..).unwrap_or_default();
            break if tail.iter().all(|byte| *byte == 0) {
                SegmentEnd::Clean {
                    offset: offset as u64,
                }
            } else {
                let problem = RecordProblem::TruncatedHeader {
                    available: available as u64,
                };
                SegmentEnd::Invalid {
                    offset: offset as u64,
                    problem,
                    after: AfterDamage::NothingValid,
                }
            };
        };
        if raw.len == 0
            && raw.crc == 0
            && raw.kind == 0
            && raw.flags == 0
            && raw.reserved_zero
            && raw.index == 0
        {
            // End-of-data marker: the preallocated file is zeros after the last record.
            let tail = bytes.get(offset..).unwrap_or_default();
            break match tail.iter().position(|byte| *byte != 0) {
                None => SegmentEnd::Clean {
                    offset: offset as u64,
                },
                Some(position) => SegmentEnd::Invalid {
                    offset: offset as u64,
                    problem: RecordProblem::DataAfterEnd {
                        first_nonzero: offset.saturating_add(position) as u64,
                    },
                    after: scan_for_resumption(bytes, offset, &[crc_last]),
                },
            };
        }
        let record = match plausible_record(bytes, offset, &raw) {
            Ok(record) => record,
            Err(problem) => {
                let after = scan_for_resumption(bytes, offset, &[crc_last, raw.crc]);
                break SegmentEnd::Invalid {
                    offset: offset as u64,
                    problem,
                    after,
                };
            }
        };
        let framed = bytes
            .get(offset..offset.saturating_add(record.size))
            .unwrap_or_default();
        let computed = record_crc(crc_last, framed).unwrap_or(!raw.crc);
        if computed != record.crc {
            // If only the payload is damaged, the next record chains from the stored CRC;
            // if only the CRC field is damaged, it chains from the computed one.
            let after = scan_for_resumption(bytes, offset, &[crc_last, record.crc, computed]);
            let problem = RecordProblem::CrcMismatch {
                stored: record.crc,
                computed,
            };
            break SegmentEnd::Invalid {
                offset: offset as u64,
                problem,
                after,
            };
        }
        let payload_start = offset.saturating_add(RECORD_HEADER_BYTES);
        let payload = bytes
            .get(payload_start..payload_start.saturating_add(record.payload_len))
            .unwrap_or_default();
        records.push(DecodedRecord {
            offset: offset as u64,
            kind: record.kind,
            flags: record.flags,
            index: record.index,
            payload,
            crc: record.crc,
        });
        crc_last = record.crc;
        offset = offset.saturating_add(record.size);
    };
    Ok(DecodedSegment {
        header,
        header_crc,
        records,
        crc_last,
        end,
    })
}

/// Looks for a valid record that starts a batch somewhere after the invalid data at
/// `damage_offset`.
///
/// A record can only be verified with the CRC of the record before it, which the damage
/// may have destroyed; `seeds` are the candidates known at the damage (the chain so far,
/// the damaged record's stored CRC, the CRC computed over its bytes). The scan walks
/// every 8-byte boundary after the damage; each header that passes the checks a header
/// alone allows adds its stored CRC to the seeds (a damaged record usually keeps its CRC
/// field), each record that verifies is skipped whole and its CRC becomes a seed. It
/// answers as soon as a verified record has [`FLAG_BATCH_START`]: records of the torn
/// last write may survive after its damage, but a batch start proves a later append.
pub fn scan_for_resumption(bytes: &[u8], damage_offset: usize, seeds: &[u32]) -> AfterDamage {
    let mut seed_ring = SeedRing::default();
    for seed in seeds {
        seed_ring.push(*seed);
    }
    let mut budget = bytes.len().saturating_mul(RESUME_SCAN_CHECKSUM_FACTOR);
    let mut offset = damage_offset.saturating_add(RECORD_ALIGNMENT_BYTES);
    while let Some(raw) = read_raw_header(bytes, offset) {
        let Ok(record) = plausible_record(bytes, offset, &raw) else {
            offset = offset.saturating_add(RECORD_ALIGNMENT_BYTES);
            continue;
        };
        let framed = bytes
            .get(offset..offset.saturating_add(record.size))
            .unwrap_or_default();
        let Some(payload) = framed.get(RECORD_KIND_OFFSET..) else {
            break;
        };
        if budget < framed.len() {
            return AfterDamage::Undecided;
        }
        budget = budget.saturating_sub(framed.len());
        // CRC of the record with seed 0, then combined with each seed: crc32c_append(seed, data)
        // equals crc32c_combine(seed, crc32c(data), data.len()), so the payload is read once.
        let len_field = framed
            .get(RECORD_LEN_OFFSET..RECORD_CRC_OFFSET)
            .unwrap_or_default();
        let unseeded = crc32c::crc32c_combine(
            crc32c::crc32c(len_field),
            crc32c::crc32c(payload),
            payload.len(),
        );
        let covered = len_field.len().saturating_add(payload.len());
        let verified = seed_ring
            .seeds()
            .iter()
            .any(|seed| crc32c::crc32c_combine(*seed, unseeded, covered) == record.crc);
        seed_ring.push(record.crc);
        if verified {
            if record.flags & FLAG_BATCH_START != 0 {
                return AfterDamage::ValidBatchAt {
                    offset: offset as u64,
                };
            }
            offset = offset.saturating_add(record.size);
        } else {
            offset = offset.saturating_add(RECORD_ALIGNMENT_BYTES);
        }
    }
    AfterDamage::NothingValid
}

/// The most recent [`RESUME_SCAN_SEEDS_MAX`] chain seeds seen by the resumption scan.
#[derive(Default)]
struct SeedRing {
    seeds: [u32; RESUME_SCAN_SEEDS_MAX],
    pushed: usize,
}

impl SeedRing {
    fn push(&mut self, seed: u32) {
        if let Some(slot) = self.seeds.get_mut(self.pushed % RESUME_SCAN_SEEDS_MAX) {
            *slot = seed;
        }
        self.pushed = self.pushed.saturating_add(1);
    }

    fn seeds(&self) -> &[u32] {
        self.seeds
            .get(..self.pushed.min(RESUME_SCAN_SEEDS_MAX))
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn combine_equals_append() {
        let data = b"some payload bytes of odd length";
        for seed in [0, 1, 0xdead_beef, u32::MAX] {
            let appended = crc32c::crc32c_append(seed, data);
            let combined = crc32c::crc32c_combine(seed, crc32c::crc32c(data), data.len());
            assert_eq!(appended, combined, "seed {seed:#x}");
        }
    }

    #[test]
    fn record_layout_matches_constants() {
        let mut buf = Vec::new();
        let crc = encode_record(&mut buf, 7, KIND_ENTRY, FLAG_BATCH_START, 42, b"abc");
        assert_eq!(buf.len(), 32);
        assert_eq!(
            &buf[RECORD_LEN_OFFSET..RECORD_CRC_OFFSET],
            &3_u32.to_le_bytes()
        );
        assert_eq!(
            &buf[RECORD_CRC_OFFSET..RECORD_KIND_OFFSET],
            &crc.to_le_bytes()
        );
        assert_eq!(buf[RECORD_KIND_OFFSET], KIND_ENTRY);
        assert_eq!(buf[RECORD_FLAGS_OFFSET], FLAG_BATCH_START);
        assert_eq!(
            &buf[RECORD_INDEX_OFFSET..RECORD_HEADER_BYTES],
            &42_u64.to_le_bytes()
        );
        assert_eq!(&buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + 3], b"abc");
        assert_eq!(&buf[RECORD_HEADER_BYTES + 3..], &[0; 5]);
        assert_eq!(record_crc(7, &buf), Some(crc));
        assert_ne!(record_crc(8, &buf), Some(crc), "the seed is covered");
    }

    #[test]
    fn segment_header_round_trip() {
        let header = SegmentHeader {
            sequence: 3,
            first_index: 17,
            segment_bytes: 4096,
            chain_seed: 0x1234_5678,
            metadata: b"member 1",
            hard_state: Some(b"hs"),
            snapshot: Some((9, b"snap")),
        };
        let mut buf = Vec::new();
        let crc = encode_segment_header(&mut buf, &header);
        assert_eq!(buf.len(), segment_header_record_bytes(&header));
        let (decoded, decoded_crc, size) = decode_segment_header(&buf).unwrap();
        assert_eq!((decoded, decoded_crc, size), (header, crc, buf.len()));
        buf[RECORD_HEADER_BYTES + HEADER_SEQUENCE_OFFSET] ^= 1;
        assert!(matches!(
            decode_segment_header(&buf),
            Err(HeaderProblem::CrcMismatch { .. })
        ));
    }
}
