//! The WAL's io_uring: an append's write linked (IOSQE_IO_LINK) to an fdatasync
//! (IORING_FSYNC_DATASYNC), submitted together without waiting; the kernel signals each
//! completion on an eventfd, which the caller's event loop polls (the raft core's tokio
//! runtime, through `AsyncFd`), so the caller goes on while the disk works.
//!
//! One append is in flight at a time ([`crate::limits::APPENDS_IN_FLIGHT_MAX`] says why).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::limits::{APPENDS_IN_FLIGHT_MAX, RING_ENTRIES};

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

// The ring below tracks exactly one write and one fdatasync.
const _: () = assert!(APPENDS_IN_FLIGHT_MAX == 1);
// Two entries per append.
const _: () = assert!(RING_ENTRIES >= 2 * APPENDS_IN_FLIGHT_MAX as u32);

/// The results of one write and its fdatasync (negative: -errno).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completed {
    pub write: i32,
    pub sync: i32,
}

pub(crate) struct Ring {
    ring: IoUring,
    /// Signalled by the kernel on every completion.
    eventfd: OwnedFd,
    write: Option<i32>,
    sync: Option<i32>,
    /// A write and fdatasync were submitted and not both reaped.
    busy: bool,
}

/// `io_uring_enter` failed in a way that leaves unknown whether the kernel holds the
/// buffer: the caller must never free or reuse it.
#[derive(Debug)]
pub(crate) struct MaybeInFlight(pub io::Error);

impl Ring {
    /// A ring with its completion eventfd; an error where io_uring is not available (an
    /// old kernel, a seccomp profile that forbids it).
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd takes no memory; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Ring {
            ring,
            eventfd,
            write: None,
            sync: None,
            busy: false,
        })
    }

    /// A descriptor of the completion eventfd for the caller's event loop: readable when
    /// a completion may be waiting. Read it (8 bytes, non-blocking) to reset it before
    /// reaping.
    pub fn eventfd(&self) -> io::Result<OwnedFd> {
        self.eventfd.try_clone()
    }

    /// Submits a write of `len` bytes at `buf` to `offset` of `fd`, linked to an
    /// fdatasync of `fd`, and returns without waiting.
    ///
    /// # Safety
    /// The `len` bytes at `buf` must stay valid and unchanged until [`Ring::reap`] or
    /// [`Ring::wait`] returned this write's completion (or forever, after an error).
    pub unsafe fn submit(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    ) -> Result<(), MaybeInFlight> {
        debug_assert!(!self.busy, "one append in flight at a time");
        let write = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(USER_DATA_WRITE);
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_SYNC);
        // SAFETY: the caller keeps the buffer alive until the completions are reaped; the
        // queue is empty (nothing is in flight), so two entries fit.
        if unsafe { self.ring.submission().push_multiple(&[write, sync]) }.is_err() {
            return Err(MaybeInFlight(io::Error::other("submission queue full")));
        }
        self.busy = true;
        self.write = None;
        self.sync = None;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(error) => return Err(MaybeInFlight(error)),
            }
        }
    }

    /// Takes the completions that arrived, without waiting: both results once the write
    /// and its fdatasync completed, None before.
    pub fn reap(&mut self) -> Option<Completed> {
        if !self.busy {
            return None;
        }
        for completion in self.ring.completion() {
            match completion.user_data() {
                USER_DATA_WRITE => self.write = Some(completion.result()),
                USER_DATA_SYNC => self.sync = Some(completion.result()),
                _ => {}
            }
        }
        let (Some(write), Some(sync)) = (self.write, self.sync) else {
            return None;
        };
        self.busy = false;
        self.write = None;
        self.sync = None;
        Some(Completed { write, sync })
    }

    /// Waits for the write and fdatasync in flight to complete.
    pub fn wait(&mut self) -> Result<Completed, MaybeInFlight> {
        loop {
            if let Some(completed) = self.reap() {
                return Ok(completed);
            }
            if !self.busy {
                return Err(MaybeInFlight(io::Error::other("nothing in flight")));
            }
            let outstanding = usize::from(self.write.is_none()) + usize::from(self.sync.is_none());
            match self.ring.submit_and_wait(outstanding) {
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(error) => return Err(MaybeInFlight(error)),
            }
        }
    }
}
