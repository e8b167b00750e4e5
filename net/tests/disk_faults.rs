//! What a member does when its disk fails (issue 10 item 7), with the test-only fault
//! layer (`RIVET_TEST_DISK_FAULTS`, `wal/src/faults.rs`): a failed WAL fdatasync stops
//! the member (never retried: a retried fsync can report success for data the kernel
//! dropped), so does a failed page file fdatasync of a checkpoint (synced through the
//! shard core's io_uring) and a full disk under the WAL or under the page files; restarted with
//! the space back, the member has every write it acknowledged and takes new ones.

mod common;

use std::time::Duration;

use common::{etcdctl, etcdctl_ok, Rivet};

/// Writes `value_bytes`-byte values until a write fails; answers the keys acknowledged.
fn write_until_failure(rivet: &Rivet, value_bytes: usize, most: usize) -> Vec<String> {
    let value = "v".repeat(value_bytes);
    let mut acknowledged = Vec::new();
    for i in 0..most {
        let key = format!("disk/{i:04}");
        // The value on stdin: a megabyte does not fit an argument.
        let out = etcdctl(
            &rivet.endpoint(),
            &["put", &key, "--command-timeout", "5s"],
            Some(&value),
        );
        if !out.status.success() {
            break;
        }
        acknowledged.push(key);
    }
    acknowledged
}

fn check_fault(fault: &str, error: &str, value_bytes: usize, most: usize, extra: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data.rivet");
    let mut rivet = Rivet::start_in_with_env(&data, extra, &[("RIVET_TEST_DISK_FAULTS", fault)]);
    let acknowledged = write_until_failure(&rivet, value_bytes, most);
    assert!(
        acknowledged.len() < most,
        "{fault}: every write succeeded; the fault never struck"
    );
    let status = rivet.wait_exit(Duration::from_secs(30));
    let log = rivet.log_text();
    assert!(
        !status.success(),
        "{fault}: the member did not stop with an error ({status:?}):\n{log}"
    );
    assert!(
        log.contains(error),
        "{fault}: no {error:?} in the log:\n{log}"
    );

    rivet.restart_with_env(&[]);
    let endpoint = rivet.endpoint();
    for key in &acknowledged {
        let value = etcdctl_ok(&endpoint, &["get", key, "--print-value-only"]);
        assert_eq!(
            value.trim_end().len(),
            value_bytes,
            "{fault}: acknowledged {key} lost after the restart"
        );
    }
    etcdctl_ok(&endpoint, &["put", "after", "restart"]);
}

#[test]
fn a_failed_wal_fdatasync_stops_the_member_and_loses_nothing_acknowledged() {
    check_fault("wal-fdatasync-fails-after=40", "fdatasync", 100, 400, &[]);
}

#[test]
fn a_failed_page_file_fdatasync_stops_the_member_and_loses_nothing_acknowledged() {
    // A checkpoint every 20 entries, each syncing the one shard's segment twice (its
    // records, then its checkpoint record): the third checkpoint's first sync fails.
    check_fault(
        "page-fdatasync-fails-after=4",
        "checkpoint failed",
        100,
        400,
        &["--shards", "1", "--snapshot-count", "20"],
    );
}

#[test]
fn a_full_disk_under_the_wal_stops_the_member_and_loses_nothing_acknowledged() {
    check_fault(
        "wal-enospc-after-bytes=60000",
        "No space left on device",
        100,
        2000,
        &[],
    );
}

#[test]
fn a_full_disk_under_the_page_files_stops_the_member_and_loses_nothing_acknowledged() {
    // One shard: its first 64 MiB segment fits, the next one does not.
    check_fault(
        "page-enospc-after-bytes=70000000",
        "No space left on device",
        1 << 20,
        120,
        &["--shards", "1"],
    );
}
