//! The WAL's io_uring: one write linked to one fdatasync, submitted together.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use crate::limits::{LINUX_WRITE_BYTES_MAX, RING_ENTRIES};

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

/// How a [`Ring::write_and_sync`] failed.
#[derive(Debug)]
pub(crate) enum RingError {
    /// The write, or the fdatasync, or submitting them failed with this error.
    Failed {
        operation: &'static str,
        source: io::Error,
    },
    /// `io_uring_enter` failed in a way that leaves unknown whether the kernel still
    /// holds the buffer. The caller must not free or reuse it (it leaks it).
    BufferMaybeInFlight { source: io::Error },
}

/// Counts kept by the ring, merged into [`crate::WalStats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingCounts {
    pub fdatasyncs: u64,
    pub short_write_retries: u64,
}

pub(crate) struct Ring {
    ring: IoUring,
    pub counts: RingCounts,
}

impl Ring {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new(RING_ENTRIES)?,
            counts: RingCounts::default(),
        })
    }

    /// Writes all of `buf` at `offset` of `fd`, then fdatasyncs `fd`: one IORING_OP_WRITE
    /// linked (IOSQE_IO_LINK) to one IORING_OP_FSYNC with IORING_FSYNC_DATASYNC, submitted
    /// in one `io_uring_enter`. Returns once both completed, and only Ok if both succeeded.
    ///
    /// Short writes: a short write breaks the link, so the kernel cancels the fdatasync
    /// (-ECANCELED). The rest of the buffer is then submitted again, linked to a new
    /// fdatasync, until all of it is written; a write that makes no progress is an error.
    /// On a regular file with preallocated space a short write should not happen at all.
    pub fn write_and_sync(&mut self, fd: RawFd, buf: &[u8], offset: u64) -> Result<(), RingError> {
        assert!(
            buf.len() as u64 <= LINUX_WRITE_BYTES_MAX,
            "write of {} bytes exceeds one write(2) ({LINUX_WRITE_BYTES_MAX})",
            buf.len()
        );
        let mut written = 0_usize;
        loop {
            let rest = buf.get(written..).unwrap_or_default();
            let rest_len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let write = opcode::Write::new(types::Fd(fd), rest.as_ptr(), rest_len)
                .offset(offset + written as u64)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(USER_DATA_WRITE);
            let sync = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(USER_DATA_SYNC);
            // SAFETY: `rest` lives until both completions have been reaped below (or, if
            // that cannot be known, the caller leaks the buffer: `BufferMaybeInFlight`).
            // The queue is empty here: every earlier submission was fully reaped.
            unsafe { self.ring.submission().push_multiple(&[write, sync]) }.map_err(|_| {
                RingError::Failed {
                    operation: "io_uring submission queue push",
                    source: io::Error::other("submission queue full"),
                }
            })?;
            let (write_result, sync_result) = self.submit_and_reap_two()?;
            if write_result < 0 {
                return Err(RingError::Failed {
                    operation: "io_uring write",
                    source: io::Error::from_raw_os_error(-write_result),
                });
            }
            if write_result == 0 && !rest.is_empty() {
                return Err(RingError::Failed {
                    operation: "io_uring write",
                    source: io::Error::new(io::ErrorKind::WriteZero, "write made no progress"),
                });
            }
            written += write_result.unsigned_abs() as usize;
            if written < buf.len() {
                // The linked fdatasync was cancelled (or ran uselessly); go again.
                self.counts.short_write_retries += 1;
                continue;
            }
            if sync_result < 0 {
                return Err(RingError::Failed {
                    operation: "io_uring fdatasync",
                    source: io::Error::from_raw_os_error(-sync_result),
                });
            }
            self.counts.fdatasyncs += 1;
            return Ok(());
        }
    }

    /// Submits the queued write and fdatasync and waits for both completions.
    fn submit_and_reap_two(&mut self) -> Result<(i32, i32), RingError> {
        let mut write_result = None;
        let mut sync_result = None;
        while write_result.is_none() || sync_result.is_none() {
            let reaped = usize::from(write_result.is_some()) + usize::from(sync_result.is_some());
            match self.ring.submit_and_wait(2 - reaped) {
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(source) => return Err(RingError::BufferMaybeInFlight { source }),
            }
            for completion in self.ring.completion() {
                match completion.user_data() {
                    USER_DATA_WRITE => write_result = Some(completion.result()),
                    USER_DATA_SYNC => sync_result = Some(completion.result()),
                    other => unreachable!("completion with unknown user_data {other}"),
                }
            }
        }
        Ok((
            write_result.unwrap_or_default(),
            sync_result.unwrap_or_default(),
        ))
    }
}
