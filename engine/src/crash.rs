//! Test-only crash points: `RIVET_TEST_CRASH_AT=<name>` makes the process kill itself with
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

use std::sync::OnceLock;

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
