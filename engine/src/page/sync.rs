//! Syncing a page file without holding it: a [`SyncJob`] is what one round of syncing
//! must make durable, taken out of the [`PageFile`](super::PageFile) with file
//! descriptors of its own, so that the syncs can run while the shard's executor goes on
//! serving reads (issue 17 item 2).
//!
//! A job holds one `fdatasync` per segment with unsynced bytes (the sealed ones that were
//! written since the last sync, and the active one, whose records were written through its
//! mapping: `msync(MS_SYNC)` of a shared mapping is `vfs_fsync_range(.., datasync)` in
//! Linux, so an `fdatasync` of the file makes the same pages durable), and one `fsync` of
//! the directory when segment files were created or removed since it was last synced.
//!
//! [`SyncJob::run_blocking`] runs it on the calling thread (tools, tests, the
//! simulation); [`SyncJob::run`] hands every target to an asynchronous sync (on a shard
//! core, glommio's io_uring `fdatasync`, `rivet-net`'s `page_sync`) and waits for all of
//! them. Either way the page file learns the result through
//! [`PageFile::checkpoint_write`](super::PageFile::checkpoint_write) or
//! [`PageFile::checkpoint_end`](super::PageFile::checkpoint_end); a failure poisons it.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::PathBuf;

use super::file::CheckpointError;

/// One file a [`SyncJob`] syncs: its own descriptor (a duplicate of the page file's, so it
/// shares the open file's write-back error state), for the caller to close.
#[derive(Debug)]
pub struct SyncTarget {
    pub path: PathBuf,
    pub file: File,
    /// The page file's directory: `fsync` it (its entries are its data); otherwise
    /// `fdatasync` the segment file.
    pub directory: bool,
}

impl SyncTarget {
    /// Syncs this target on the calling thread.
    pub fn sync_blocking(&self) -> io::Result<()> {
        before_sync(self)?;
        if self.directory {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        }
    }
}

/// The test-only fault layer (`RIVET_TEST_DISK_FAULTS`, `page-fdatasync-fails-after`):
/// called before every segment `fdatasync`, blocking or not.
pub fn before_sync(target: &SyncTarget) -> io::Result<()> {
    if target.directory {
        Ok(())
    } else {
        rivet_wal::faults::page_fdatasync()
    }
}

/// What one round of syncing a page file must make durable. Taken by
/// [`PageFile::checkpoint_begin`](super::PageFile::checkpoint_begin) and
/// [`PageFile::checkpoint_write`](super::PageFile::checkpoint_write).
#[derive(Debug)]
#[must_use = "a sync job must be run and its result given back to the page file"]
pub struct SyncJob {
    pub(super) targets: Vec<SyncTarget>,
    /// The active segment's slot and the offset its sync covers.
    pub(super) active: Option<(u32, usize)>,
}

/// A [`SyncJob`] that completed: every target is durable.
#[derive(Debug)]
#[must_use]
pub struct Synced {
    pub(super) active: Option<(u32, usize)>,
}

impl SyncJob {
    /// The files this job syncs.
    #[must_use]
    pub fn targets(&self) -> &[SyncTarget] {
        &self.targets
    }

    /// Runs every sync on the calling thread, in order; stops at the first failure.
    pub fn run_blocking(self) -> Result<Synced, CheckpointError> {
        for target in &self.targets {
            target
                .sync_blocking()
                .map_err(|source| CheckpointError::Sync {
                    path: target.path.clone(),
                    source,
                })?;
        }
        Ok(Synced {
            active: self.active,
        })
    }

    /// Submits every sync at once through `sync` and waits for all of them; a failure of
    /// any fails the job (the page file is then poisoned, so the others' results do not
    /// matter). Their order does not matter: all of them complete before the page file
    /// takes its next step (the checkpoint record, or recording the checkpoint).
    pub async fn run<S, F>(self, sync: &S) -> Result<Synced, CheckpointError>
    where
        S: Fn(SyncTarget) -> F,
        F: Future<Output = io::Result<()>>,
    {
        let SyncJob { targets, active } = self;
        let mut paths = Vec::with_capacity(targets.len());
        let mut pending = Vec::with_capacity(targets.len());
        for target in targets {
            paths.push(target.path.clone());
            pending.push(sync(target));
        }
        let results = futures::future::join_all(pending).await;
        for (path, result) in paths.into_iter().zip(results) {
            result.map_err(|source| CheckpointError::Sync { path, source })?;
        }
        Ok(Synced { active })
    }
}
