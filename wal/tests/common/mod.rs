//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rivet_wal::{OwnedRecord, Record, RecordKind, Wal, WalOptions};

/// One page: rollover on nearly every append.
pub const TINY: WalOptions = WalOptions {
    segment_bytes: 4096,
};

pub fn entry(index: u64, payload: &[u8]) -> OwnedRecord {
    OwnedRecord {
        kind: RecordKind::Entry,
        index,
        payload: payload.to_vec(),
    }
}

pub fn hard_state(payload: &[u8]) -> OwnedRecord {
    OwnedRecord {
        kind: RecordKind::HardState,
        index: 0,
        payload: payload.to_vec(),
    }
}

pub fn snapshot(index: u64, payload: &[u8]) -> OwnedRecord {
    OwnedRecord {
        kind: RecordKind::Snapshot,
        index,
        payload: payload.to_vec(),
    }
}

pub fn append(wal: &mut Wal, batch: &[OwnedRecord]) {
    let records: Vec<Record<'_>> = batch.iter().map(OwnedRecord::as_record).collect();
    wal.append(&records).expect("append");
}

/// A deterministic payload for entry `index`: recognisable bytes of varying length.
pub fn payload_for(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (index as usize * 31 + i * 7 + 1) as u8)
        .collect()
}

/// Segment files of `dir`, sorted by name (= by sequence).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// Every file of `dir` with its bytes, to prove a failed open modified nothing.
pub fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect()
}

/// The offsets of the records (header excluded) of a segment file, from the decoder.
pub fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = fs::read(path).expect("read segment");
    let decoded = rivet_wal::decode_segment_bytes(&bytes).expect("valid segment");
    decoded.records.iter().map(|record| record.offset).collect()
}

/// Where the valid data of a segment file ends.
pub fn data_end(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read segment");
    rivet_wal::decode_segment_bytes(&bytes)
        .expect("valid segment")
        .end
        .offset()
}

pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

/// Runs `f` with a subscriber that captures WARN events on this thread, one line each:
/// `name=value` pairs of the event's fields.
pub fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};
    use tracing::span::{Attributes, Id, Record as SpanRecord};

    struct Capture(Arc<Mutex<Vec<String>>>);
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() != tracing::Level::WARN {
                return;
            }
            let mut line = String::new();
            event.record(
                &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    let _ = write!(line, "{}={:?} ", field.name(), value);
                },
            );
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let lines = Arc::new(Mutex::new(Vec::new()));
    let result = tracing::subscriber::with_default(Capture(Arc::clone(&lines)), f);
    let lines = lines.lock().unwrap().clone();
    (result, lines)
}
