//! Test-only disk faults, for the tests of what a member does when its disk fails
//! (issue 10 item 7): set `RIVET_TEST_DISK_FAULTS` to a comma-separated list of
//!
//! - `wal-fdatasync-fails-after=N`: every WAL fdatasync after the first N fails with EIO;
//! - `wal-enospc-after-bytes=N`: a WAL write that would take the bytes written by this
//!   process past N fails with ENOSPC;
//! - `page-enospc-after-bytes=N`: the same for the space page files reserve (new segments);
//! - `page-fdatasync-fails-after=N`: every page file segment fdatasync (a checkpoint's)
//!   after the first N fails with EIO.
//!
//! Read once per process; without the variable every check is one load of a flag.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VARIABLE: &str = "RIVET_TEST_DISK_FAULTS";

#[derive(Debug, Default)]
struct DiskFaults {
    wal_fdatasync_fails_after: Option<u64>,
    wal_enospc_after_bytes: Option<u64>,
    page_enospc_after_bytes: Option<u64>,
    page_fdatasync_fails_after: Option<u64>,
}

static FAULTS: OnceLock<Option<DiskFaults>> = OnceLock::new();
static WAL_SYNCS: AtomicU64 = AtomicU64::new(0);
static WAL_BYTES: AtomicU64 = AtomicU64::new(0);
static PAGE_BYTES: AtomicU64 = AtomicU64::new(0);
static PAGE_SYNCS: AtomicU64 = AtomicU64::new(0);

fn faults() -> Option<&'static DiskFaults> {
    FAULTS
        .get_or_init(|| {
            let text = std::env::var(VARIABLE).ok()?;
            let mut faults = DiskFaults::default();
            for item in text.split(',').filter(|i| !i.is_empty()) {
                let (name, value) = item.split_once('=')?;
                let value: u64 = value.trim().parse().ok()?;
                match name.trim() {
                    "wal-fdatasync-fails-after" => faults.wal_fdatasync_fails_after = Some(value),
                    "wal-enospc-after-bytes" => faults.wal_enospc_after_bytes = Some(value),
                    "page-enospc-after-bytes" => faults.page_enospc_after_bytes = Some(value),
                    "page-fdatasync-fails-after" => {
                        faults.page_fdatasync_fails_after = Some(value);
                    }
                    _ => return None,
                }
            }
            Some(faults)
        })
        .as_ref()
}

fn take_space(counter: &AtomicU64, limit: Option<u64>, bytes: u64) -> io::Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if counter.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

/// Before a WAL write of `bytes`.
pub fn wal_write(bytes: u64) -> io::Result<()> {
    match faults() {
        Some(f) => take_space(&WAL_BYTES, f.wal_enospc_after_bytes, bytes),
        None => Ok(()),
    }
}

/// Before a WAL fdatasync.
pub fn wal_fdatasync() -> io::Result<()> {
    let Some(limit) = faults().and_then(|f| f.wal_fdatasync_fails_after) else {
        return Ok(());
    };
    if WAL_SYNCS.fetch_add(1, Ordering::Relaxed) >= limit {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// Before a page file segment's fdatasync.
pub fn page_fdatasync() -> io::Result<()> {
    let Some(limit) = faults().and_then(|f| f.page_fdatasync_fails_after) else {
        return Ok(());
    };
    if PAGE_SYNCS.fetch_add(1, Ordering::Relaxed) >= limit {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// Before a page file reserves `bytes` on disk.
pub fn page_reserve(bytes: u64) -> io::Result<()> {
    match faults() {
        Some(f) => take_space(&PAGE_BYTES, f.page_enospc_after_bytes, bytes),
        None => Ok(()),
    }
}
