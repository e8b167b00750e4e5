//! One error type per operation, each wrapping [`IoError`] for failures of the OS.

use std::io;
use std::path::PathBuf;

use crate::format::{HeaderProblem, RecordProblem};
use crate::limits::{
    BATCH_BYTES_MAX, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
use crate::RecordKind;

/// A system call failed: which one, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {}: {source}", path.display())]
pub struct IoError {
    pub operation: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub(crate) fn new(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Self {
            operation,
            path: path.into(),
            source,
        }
    }
}

/// `WalOptions` out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("segment_bytes {segment_bytes} is outside [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]")]
    SegmentBytesOutOfRange { segment_bytes: u64 },
    #[error("segment_bytes {segment_bytes} is not a multiple of the page size {page_bytes}")]
    SegmentBytesNotPageMultiple { segment_bytes: u64, page_bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    #[error("{} is not empty: a WAL is created only in a new or empty directory", dir.display())]
    NotEmpty { dir: PathBuf },
    #[error("metadata of {bytes} bytes exceeds the limit of {RECORD_PAYLOAD_BYTES_MAX} bytes")]
    MetadataTooLarge { bytes: usize },
    #[error("another process holds the WAL lock on {}", dir.display())]
    Locked { dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    #[error("no WAL in {} (no segment files)", dir.display())]
    NotFound { dir: PathBuf },
    #[error("another process holds the WAL lock on {}", dir.display())]
    Locked { dir: PathBuf },
    /// Damage that is not a torn tail: recovery refuses and modifies nothing.
    #[error("WAL damaged in {} at byte offset {offset}: {damage}; nothing was modified", file.display())]
    Damaged {
        file: PathBuf,
        offset: u64,
        damage: Damage,
    },
}

/// What is wrong in a WAL that recovery refuses to open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("file name is not `{{sequence:016x}}-{{index:016x}}.wal`")]
    BadFileName,
    #[error("bad segment header: {0}")]
    Header(HeaderProblem),
    #[error(
        "file name says sequence {name_sequence:#x} index {name_index:#x}, \
         header says sequence {header_sequence:#x} index {header_index:#x}"
    )]
    NameMismatch {
        name_sequence: u64,
        name_index: u64,
        header_sequence: u64,
        header_index: u64,
    },
    #[error("segment sequence gap: expected segment {expected:#x}, found {found:#x} (a segment is missing)")]
    SequenceGap { expected: u64, found: u64 },
    #[error(
        "CRC chain broken: this segment's chain seed {chain_seed:#010x} is not the previous \
         segment's last CRC {previous_crc:#010x} (records are missing at the end of the previous segment)"
    )]
    ChainBroken { chain_seed: u32, previous_crc: u32 },
    #[error("segment file is {actual} bytes but was preallocated to {expected} (truncated, not the last segment)")]
    SegmentTruncated { expected: u64, actual: u64 },
    #[error("{problem}, in a segment that is not the last one")]
    InSealedSegment { problem: RecordProblem },
    #[error("{problem}, and a valid later batch starts at offset {resumes_at}")]
    ValidDataAfter {
        problem: RecordProblem,
        resumes_at: u64,
    },
    #[error("{problem}, and the scan for valid data after it hit its work bound")]
    Undecided { problem: RecordProblem },
    /// A record the decoder passed that recovery cannot use (a decoder bug, reported as
    /// damage at the record's offset instead of a panic).
    #[error("{problem}")]
    Record { problem: RecordProblem },
}

/// Why a record handed to `append` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("payload of {bytes} bytes exceeds the limit of {RECORD_PAYLOAD_BYTES_MAX} bytes")]
    PayloadTooLarge { bytes: usize },
    #[error("{kind:?} records carry index 0, got {index}")]
    IndexNotZero { kind: RecordKind, index: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("record {position} of the batch is invalid: {reason}")]
    InvalidRecord {
        position: usize,
        reason: InvalidRecord,
    },
    #[error("batch of {bytes} encoded bytes exceeds the limit of {BATCH_BYTES_MAX}")]
    BatchTooLarge { bytes: u64 },
    /// An earlier write or fdatasync failed. After a failed fdatasync the kernel may have
    /// dropped the dirty pages, so what is on disk is unknown: the WAL refuses all further
    /// writes, and the process must reopen it (recovery re-reads what is really there).
    #[error("the WAL is poisoned by an earlier I/O failure; reopen it")]
    Poisoned,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the WAL is poisoned by an earlier I/O failure; reopen it")]
    Poisoned,
}
