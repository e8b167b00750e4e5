//! Crash-only stops. A member that cannot go on correctly — a core thread panicked, a
//! page file cannot be written, a snapshot cannot be swapped in — ends the whole process
//! with a non-zero status at once, instead of leaving a live process around a dead core
//! that answers nothing. A supervisor restarts it, and recovery (WAL replay from the last
//! checkpoint) brings back everything that was acknowledged: an acknowledged write is in
//! the WAL, fsynced, before its answer leaves.
//!
//! Two ways in: [`stop`] for failures the code detects (I/O errors on the apply path),
//! and [`install_panic_hook`] for panics (bugs), on any thread, in every build profile
//! (release builds also set `panic = "abort"`, so nothing unwinds).

//!
//! Besides, test-only crash points ([`point`]): `RIVET_TEST_CRASH_AT=<name>` makes the process kill itself with
//! SIGKILL (exactly what `kill -9` does: no destructor, no flush, no checkpoint) the first
//! time it reaches the point of that name. Crash tests use it to stop a member between
//! two steps of a multi-step change on disk (garbage collection, a snapshot stream, an
//! import) and check that the next start loses nothing and leaves no garbage.
//!
//! Like `RIVET_TEST_FAULTS`, the switch does nothing unless the variable is set; it is
//! read once per process. The points:
//!
//! | name | where |
//! | --- | --- |
//! | `gc-copied` | a rewritten segment is written and synced, its manifest not yet |
//! | `gc-manifest-written` | the new manifest is synced under its temporary name |
//! | `gc-committed` | the manifest names the new segment; the old one still exists |
//! | `gc-deleted` | the old segment is deleted |
//! | `snapshot-streaming` | a `Maintenance.Snapshot` stream sent its first bytes |
//! | `import-staged` | an import wrote rivet's page files, not yet its WAL |
//! | `import-wal-written` | an import wrote rivet's WAL, not yet its completion mark |

use std::fmt::Display;
use std::sync::OnceLock;

/// The exit status of a member stopped by [`stop`]: 128 + SIGABRT, what a shell reports
/// for a process that aborted after a panic, so supervisors treat both alike.
pub const EXIT_STATUS: i32 = 134;

/// Logs why the member stops and ends the process (all threads) with [`EXIT_STATUS`].
/// Nothing is flushed or checkpointed: recovery never relies on a clean stop.
pub fn stop(reason: impl Display) -> ! {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    tracing::error!(thread = name, "stopping the member: {reason}");
    // SAFETY: `_exit` ends the process at once; no atexit handler (the allocator's among
    // them) runs while other threads still use what it would tear down.
    unsafe { libc::_exit(EXIT_STATUS) }
}

/// Makes every panic, on any thread, log its thread, location and message through
/// `tracing` and then abort the process. Without it, a panicking shard or raft core
/// thread would die alone and leave a process that accepts connections and answers
/// nothing (issue 10); with it, the member exits non-zero and is restarted.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown location".into());
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            thread = name,
            location = %location,
            "panic: {message}; stopping the member\n{backtrace}"
        );
        std::process::abort();
    }));
}

/// The crash point named by `RIVET_TEST_CRASH_AT`, if any.
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("RIVET_TEST_CRASH_AT")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .as_deref()
}

/// Kills the process with SIGKILL if `RIVET_TEST_CRASH_AT` names this point.
pub fn point(name: &str) {
    if armed() == Some(name) {
        tracing::warn!(
            point = name,
            "test crash point reached: killing the process (SIGKILL)"
        );
        // SAFETY: getpid and kill have no memory effects; SIGKILL ends the process here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
