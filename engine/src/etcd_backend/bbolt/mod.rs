//! bbolt, the file format of etcd's backend: a reader ([`Db`], [`Cursor`]) that checks
//! every offset it reads and never panics on damaged bytes, and a streaming writer
//! ([`DbWriter`], [`BucketBuilder`]) that builds trees bottom-up with one page of memory
//! per tree level. Format: `docs/format/bbolt.md`, constants in [`format`].

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod format;
mod reader;
mod writer;

pub use reader::{BucketRef, Cursor, Damage, Db, Entry, FileSource, MetaError, ReadError, Source};
pub use writer::{BucketBuilder, BucketValue, DbSummary, DbWriter, WriteError};
