//! Appends submitted without waiting (`Wal::start_append`, io_uring): the completion
//! eventfd signals, `poll_append` reports the append durable, and every started append
//! survives a reopen, across segment rollovers and a drop with one in flight.

mod common;

use std::os::fd::AsRawFd;

use common::{entry, hard_state, payload_for, TINY};
use rivet_wal::{OwnedRecord, Record, Wal};

fn start(wal: &mut Wal, batch: &[OwnedRecord]) -> bool {
    let records: Vec<Record<'_>> = batch.iter().map(OwnedRecord::as_record).collect();
    wal.start_append(&records).expect("start append")
}

/// Waits (poll(2), 10 s at most) until the completion eventfd is readable, and resets it.
fn wait_signalled(fd: &std::os::fd::OwnedFd) {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 10_000) };
    assert_eq!(ready, 1, "the completion eventfd never became readable");
    let mut counter = [0_u8; 8];
    // SAFETY: reads 8 bytes into a live 8-byte buffer.
    let read = unsafe { libc::read(fd.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
    assert_eq!(read, 8);
}

#[test]
fn started_appends_signal_their_completion_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::create(dir.path(), b"meta", TINY).expect("create");
    let mut written = Vec::new();
    let batch = vec![entry(1, &payload_for(1, 100)), hard_state(b"hs1")];
    let in_flight = start(&mut wal, &batch);
    written.extend(batch);
    match wal.completion_fd() {
        Some(fd) => {
            let fd = fd.expect("eventfd");
            assert!(in_flight, "with io_uring the append returns in flight");
            assert!(wal.append_in_flight());
            // The caller learns of the completion from the eventfd, then reaps it.
            while !wal.poll_append().expect("poll") {
                wait_signalled(&fd);
            }
            assert!(!wal.append_in_flight());
        }
        None => {
            eprintln!("io_uring is not available here: appends block");
            assert!(!in_flight);
        }
    }
    // Started back to back: each start waits for the one in flight; with one-page
    // segments most of them roll over (which must not happen under an append in flight).
    for index in 2..40_u64 {
        let batch = vec![
            entry(index, &payload_for(index, (index as usize * 97) % 1500)),
            hard_state(format!("hs{index}").as_bytes()),
        ];
        start(&mut wal, &batch);
        written.extend(batch);
    }
    // Dropped with the last one in flight: the drop waits for the kernel.
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), TINY).expect("open");
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(recovery.records, written);
    assert!(wal.stats().fdatasyncs == 0, "reopening writes nothing");
}
