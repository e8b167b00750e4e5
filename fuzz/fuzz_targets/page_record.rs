//! Fuzzes the page record decoder: arbitrary bytes as a run of records and as a whole
//! segment file, and the page manifest decoder (`engine/src/page/manifest.rs`). They must
//! never panic; whatever they accept must stay inside the input, and a manifest that
//! decodes encodes back to the same bytes.
//!
//! `cargo +nightly fuzz run page_record` (from the repository root). On a stable
//! toolchain, without AddressSanitizer (only its flag needs nightly; the decoder has no
//! unsafe code), from `fuzz/`:
//!
//! ```text
//! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
//!   -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
//!   -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
//!   cargo build --release --bin page_record --target x86_64-unknown-linux-gnu
//! target/x86_64-unknown-linux-gnu/release/page_record corpus/ -max_total_time=120
//! ```
//!
//! (`--target` keeps the flags off build scripts.) The comparison tracing lets libFuzzer
//! solve the CRC checks, so it reaches the field checks behind them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_engine::page::{decode_records, decode_segment, Manifest, Record, Records};

fn check(bytes: &[u8], records: Records<'_>) {
    let mut previous = None;
    for item in records {
        let Ok((offset, record)) = item else { break };
        assert!(offset < bytes.len());
        assert!(
            previous.is_none_or(|previous| offset > previous),
            "offsets go forward"
        );
        previous = Some(offset);
        if let Record::Key(view) = record {
            let range = bytes.as_ptr_range();
            assert!(range.contains(&view.key.as_ptr()) || view.key.is_empty());
            if let Some(value) = view.value {
                assert!(value.len() <= bytes.len());
            }
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    check(bytes, decode_records(bytes));
    if let Ok((_header, records)) = decode_segment(bytes) {
        check(bytes, records);
    }
    if let Ok(manifest) = Manifest::decode(bytes) {
        assert_eq!(manifest.encode(), bytes, "a decoded manifest encodes back");
    }
});
