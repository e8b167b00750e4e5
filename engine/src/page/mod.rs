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
//! A shard core checkpoints in steps ([`PageFile::checkpoint_begin`], `_write`, `_end`)
//! and goes on appending between them: the checkpoint record's place is reserved (zeros)
//! when it begins, right after the records it covers, and written once they are durable.
//! Records appended meanwhile lie after it, in the tail a restart at it discards.
//!
//! Damage *before* the checkpoint is different: those bytes were synced, so a CRC mismatch
//! there is corruption. [`PageFile::open`] then refuses to start, names the file and offset,
//! and modifies nothing.
//!
//! # Format
//!
//! The byte layout is specified in `docs/format/page.md`; the same layout is written below
//! as offset constants, each built from the previous one. The two must agree.
//!
//! # Where things are
//!
//! - [`format`](mod@format): the byte layout, and the decoder and encoder of segment headers and
//!   records (pure functions over byte slices; the fuzz target's entry point);
//! - [`file`](mod@file): a page file that is open: appending, reading, checkpoints and the segment
//!   files under it;
//! - [`sync`](mod@sync): what one round of syncing must make durable, run blocking or
//!   handed to an asynchronous sync (a shard core's io_uring);
//! - [`recovery`]: opening a page file at a checkpoint: the scan that rebuilds the index,
//!   damage before the checkpoint told apart from an unsynced tail after it.
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

pub mod file;
pub mod format;
pub mod gc;
pub mod manifest;
pub mod recovery;
pub mod sync;

pub use file::{CheckpointError, PageFile, PageOptions, ReadError, SegmentStats, SegmentView};
pub use format::{
    decode_record_at, decode_records, decode_segment, decode_segment_header,
    encode_checkpoint_record, encode_key_record, key_generation, key_slot, segment_key,
    AppendError, Checkpoint, DecodeError, KeyRecord, PagePtr, Record, RecordView, Records,
    SegmentHeader, CHECKPOINT_RECORD_BYTES, FLAG_TOMBSTONE, KEY_RECORD_HEADER_BYTES,
    KIND_CHECKPOINT, KIND_KEY, RECORD_ALIGNMENT, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
};
pub use gc::{GcError, Keep, Relocated, StepProgress};
pub use manifest::{Manifest, ManifestError, SlotState};
pub use recovery::OpenError;
pub use sync::{SyncJob, SyncTarget, Synced};
