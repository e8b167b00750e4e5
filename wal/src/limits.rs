//! Every limit of the WAL, each with the reason for its value.
//!
//! The relationships between them are checked at compile time at the bottom of this file,
//! so changing one number cannot silently break another.

/// Segment files are preallocated and sized in whole pages, so that the unused tail of a
/// segment is whole zero pages and `fallocate` works on page boundaries.
pub const PAGE_BYTES: u64 = 4096;

/// Default segment size. etcd uses 64 MiB: large enough that rollover (a file create,
/// a header write, an fdatasync, a rename and a directory fsync) is rare, small enough that
/// `release_before` frees space in useful steps and recovery reads one segment at a time.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Smallest allowed `WalOptions::segment_bytes`: one page. Tests use it so that rollover
/// runs on nearly every append ("cold code is buggy code"). A batch that does not fit in
/// an empty segment of this size gets a larger segment of its own.
pub const SEGMENT_BYTES_MIN: u64 = PAGE_BYTES;

/// Largest allowed `WalOptions::segment_bytes`. Recovery reads a whole segment into memory
/// before decoding it, so this bounds the memory that recovery needs beyond the records
/// it returns.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Largest payload of one record. etcd caps a request at 1.5 MiB (`--max-request-bytes`)
/// and a WAL entry at 10 MiB; 64 MiB leaves room for operators who raise the request limit
/// while keeping a corrupt length field from making recovery trust a gigantic record.
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Largest encoded batch handed to one `append`. Linux transfers at most 0x7fff_f000
/// bytes in one write(2), so one batch must stay below
/// that to remain ONE write; 1 GiB is a round number under it.
pub const BATCH_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// What a single write(2) on Linux transfers at most (`MAX_RW_COUNT`).
pub const LINUX_WRITE_BYTES_MAX: u64 = 0x7fff_f000;

/// Largest segment the WAL ever creates: a segment is `segment_bytes` long, or longer when
/// one batch (plus the segment header with its carried copies) does not fit in that.
pub const SEGMENT_BYTES_LIMIT: u64 =
    SEGMENT_BYTES_MAX + BATCH_BYTES_MAX + SEGMENT_HEADER_RECORD_BYTES_MAX;

/// Largest segment header record: the fixed header, plus the three carried copies
/// (metadata, hard state, snapshot marker) each at most one record payload, plus the
/// record framing and alignment padding.
pub const SEGMENT_HEADER_RECORD_BYTES_MAX: u64 = 128 + 3 * RECORD_PAYLOAD_BYTES_MAX;

/// How many chain seeds the resumption scan keeps when it looks for valid records after
/// damage (see `format::scan_for_resumption`). Each seed is the CRC of a recent record
/// header seen by the scan; the record that follows a damaged one chains from the damaged
/// one's CRC, so a handful of recent seeds covers several damaged records in a row.
pub const RESUME_SCAN_SEEDS_MAX: usize = 8;

/// The resumption scan checksums candidate records; it stops (and answers "undecided",
/// which recovery treats as damage) once it has checksummed this many times the size of
/// the bytes it scans. Real segments need about 1x (each real record is checksummed once);
/// the bound keeps crafted input (a fuzzer's, say) from making recovery quadratic.
pub const RESUME_SCAN_CHECKSUM_FACTOR: usize = 4;

const _: () = assert!(SEGMENT_BYTES_DEFAULT % PAGE_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN % PAGE_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MAX % PAGE_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
// A record's length field is a u32.
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX <= u32::MAX as u64);
// The segment header record's payload (three carried copies) must fit its u32 length field.
const _: () = assert!(SEGMENT_HEADER_RECORD_BYTES_MAX <= u32::MAX as u64);
// The largest record must fit in one batch, and one batch in one write.
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX + 64 <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= LINUX_WRITE_BYTES_MAX);
// The segment header written at rollover is also one write.
const _: () = assert!(SEGMENT_HEADER_RECORD_BYTES_MAX <= LINUX_WRITE_BYTES_MAX);
// Whole segments are read into memory and addressed with usize.
const _: () = assert!(SEGMENT_BYTES_LIMIT <= usize::MAX as u64);
const _: () = assert!(RESUME_SCAN_SEEDS_MAX >= 2);

/// Zeros written back at a time when a segment is zero-filled (`segment::zero_fill`): an
/// append's fdatasync issued meanwhile waits behind at most this much writeback
/// (~0.2 ms on this project's VM disk, which wrote 64 MiB in ~45 ms).
pub const ZERO_FILL_CHUNK_BYTES: usize = 256 * 1024;
