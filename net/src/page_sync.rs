//! A shard core's page file syncs through glommio's io_uring (issue 17 item 2): the
//! checkpoint's `fdatasync`s are submitted to the executor's ring and the core goes on
//! serving reads until they complete, instead of blocking its thread in the system call.
//!
//! The engine takes the sync as a function (`ShardCore::run_apply`), as it takes
//! `yield_now` for garbage collection, so that it depends on no executor.

use std::io;
use std::os::unix::io::{FromRawFd, IntoRawFd};

use rivet_engine::page::{sync::before_sync, SyncTarget};

/// Syncs one target of a page file's sync job on the current glommio executor: a segment
/// with an `fdatasync` through the ring; the directory with an `fsync` on glommio's
/// blocking thread (glommio's ring offers only the data sync, and a directory's entries
/// are what must become durable). Either way the executor's thread never waits.
pub async fn page_sync(target: SyncTarget) -> io::Result<()> {
    before_sync(&target)?;
    if target.directory {
        let file = target.file;
        return glommio::executor()
            .spawn_blocking(move || file.sync_all())
            .await;
    }
    // SAFETY: the descriptor is `target.file`'s own, moved out of it: the BufferedFile is
    // its only owner and closes it.
    let file = unsafe { glommio::io::BufferedFile::from_raw_fd(target.file.into_raw_fd()) };
    let synced = file.fdatasync().await;
    if let Err(error) = file.close().await {
        tracing::debug!(path = %target.path.display(), %error, "closing a synced segment");
    }
    synced.map_err(io::Error::from)
}
