//! Writes seed inputs for the `wal_segment` fuzz target: real segment files (tiny
//! segments, several batches, a torn one, one with garbage after the data). The decoder's
//! CRCs make valid inputs all but impossible to find from nothing, so the fuzzer starts
//! from these and mutates.
//!
//! `cargo run -p rivet-wal --example fuzz_seeds -- fuzz/seeds/wal_segment`

use std::fs;
use std::path::PathBuf;

use rivet_wal::{Record, RecordKind, Wal, WalOptions};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_seeds OUT_DIR"));
    fs::create_dir_all(&out).expect("create out dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::create(
        dir.path(),
        b"member=1 cluster=2",
        WalOptions {
            segment_bytes: 4096,
        },
    )
    .expect("create");
    for index in 1..=40_u64 {
        let payload = vec![index as u8; (index as usize * 53) % 700];
        let mut batch = vec![
            Record {
                kind: RecordKind::Entry,
                index,
                payload: &payload,
            },
            Record {
                kind: RecordKind::HardState,
                index: 0,
                payload: b"term=2 vote=1 commit=9",
            },
        ];
        if index % 13 == 0 {
            batch.push(Record {
                kind: RecordKind::Snapshot,
                index,
                payload: b"snapshot",
            });
        }
        wal.append(&batch).expect("append");
    }
    let segments: Vec<PathBuf> = wal.segment_paths().map(PathBuf::from).collect();
    drop(wal);
    for (number, segment) in segments.iter().take(3).enumerate() {
        let bytes = fs::read(segment).expect("read segment");
        // Trailing zeros add nothing for the fuzzer; keep a little of them.
        let end = bytes
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(0, |last| last + 1);
        let data = &bytes[..(end + 64).min(bytes.len())];
        fs::write(out.join(format!("segment-{number}")), data).expect("write seed");
        fs::write(out.join(format!("torn-{number}")), &data[..end * 3 / 4]).expect("write seed");
        let mut garbage = data[..end].to_vec();
        garbage.extend_from_slice(b"\x01\x00\x00\x00garbage after the last record");
        fs::write(out.join(format!("garbage-{number}")), garbage).expect("write seed");
    }
    println!("wrote seeds to {}", out.display());
}
