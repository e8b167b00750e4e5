//! The next segment's file, made ahead of the rollover on a thread of its own.
//!
//! A new segment is zero-filled over its whole length ([`segment::zero_fill`]), so that
//! appends write into written space and each fdatasync has no extent metadata to write.
//! Zeroing 64 MiB and syncing it takes tens of milliseconds: done at the rollover it would
//! stall the raft core and every write waiting on it. So once the active segment is half
//! full, a thread makes the spare file (`spare.wal.tmp`, preallocated, zero-filled,
//! fdatasynced), and the rollover only writes the header into it and renames it (what it
//! did before with a freshly `fallocate`d file). etcd's WAL keeps a preallocated file
//! ready the same way (its file pipeline), without the zeroing.
//!
//! The thread shares nothing with the WAL but the directory: it owns its file until the
//! rollover joins it and takes the file. A spare that failed, or whose size does not fit
//! the rollover (a batch larger than a segment), is not used: the rollover makes the
//! segment itself, as before, and a failure there poisons the WAL as before. Dropping the
//! WAL waits for a spare still being made, so no thread outlives it writing into the
//! directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::error::IoError;
use crate::segment;

pub(crate) struct Spare {
    path: PathBuf,
    /// Length of the spare file: the WAL's configured segment size.
    bytes: u64,
    making: Option<JoinHandle<Result<File, IoError>>>,
}

impl Spare {
    pub(crate) fn new(dir: &Path, bytes: u64) -> Spare {
        Spare {
            path: dir.join(segment::SPARE_FILE_NAME),
            bytes,
            making: None,
        }
    }

    /// Whether a spare is being made or is ready.
    pub(crate) fn started(&self) -> bool {
        self.making.is_some()
    }

    /// Starts making the spare on a thread of its own, unless one is started already.
    pub(crate) fn start(&mut self) {
        if self.making.is_some() {
            return;
        }
        let path = self.path.clone();
        let bytes = self.bytes;
        let spawned = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || make(&path, bytes));
        match spawned {
            Ok(handle) => self.making = Some(handle),
            // The rollover makes the segment itself, as it does without a spare.
            Err(error) => tracing::warn!(%error, "could not start the WAL spare segment thread"),
        }
    }

    /// The spare file and its path, if one of `bytes` was made; waits for it if it is still
    /// being made. None (the rollover makes its own segment) if none was started, if its
    /// size differs (the spare is kept for the next rollover), or if making it failed
    /// (logged).
    pub(crate) fn take(&mut self, bytes: u64) -> Option<(File, PathBuf)> {
        if bytes != self.bytes {
            return None;
        }
        let handle = self.making.take()?;
        match handle.join() {
            Ok(Ok(file)) => Some((file, self.path.clone())),
            Ok(Err(error)) => {
                tracing::warn!(%error, "making the WAL's spare segment failed; the rollover makes its own");
                None
            }
            // With `panic = "abort"` a panic never gets here; in tests it fails the test.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(handle) = self.making.take() {
            let _ = handle.join();
        }
    }
}

fn make(path: &Path, bytes: u64) -> Result<File, IoError> {
    let file = segment::open_for_writing(path, true)?;
    segment::preallocate(&file, path, bytes)?;
    segment::zero_fill(&file, path, 0, bytes)?;
    Ok(file)
}
