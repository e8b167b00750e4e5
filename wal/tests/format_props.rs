//! Property tests of the decoder on in-memory segments: it never panics, never accepts a
//! modified record, and tells a torn last batch from damage before a later batch.

use proptest::prelude::*;
use rivet_wal::format::{
    self, encode_record, encode_segment_header, SegmentHeader, FLAG_BATCH_START, KIND_ENTRY,
    KIND_HARD_STATE,
};
use rivet_wal::{decode_segment_bytes, AfterDamage, SegmentEnd};

/// A valid segment of `segment_bytes` holding `batches`; returns the bytes, the offset
/// of each batch's first record, and the end of the data.
fn build_segment(batches: &[Vec<Vec<u8>>], segment_bytes: usize) -> (Vec<u8>, Vec<usize>, usize) {
    let header = SegmentHeader {
        sequence: 5,
        first_index: 1,
        segment_bytes: segment_bytes as u64,
        chain_seed: 0xfeed_f00d,
        metadata: b"member",
        hard_state: Some(b"term=3"),
        snapshot: None,
    };
    let mut bytes = Vec::new();
    let mut crc = encode_segment_header(&mut bytes, &header);
    let mut batch_starts = Vec::new();
    let mut index = 1;
    for batch in batches {
        batch_starts.push(bytes.len());
        for (position, payload) in batch.iter().enumerate() {
            let flags = if position == 0 { FLAG_BATCH_START } else { 0 };
            let kind = if position % 3 == 2 {
                KIND_HARD_STATE
            } else {
                KIND_ENTRY
            };
            crc = encode_record(
                &mut bytes,
                crc,
                kind,
                flags,
                if kind == KIND_ENTRY { index } else { 0 },
                payload,
            );
            index += 1;
        }
    }
    let end = bytes.len();
    bytes.resize(segment_bytes.max(end), 0);
    (bytes, batch_starts, end)
}

fn batches_strategy() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5),
        1..12,
    )
}

fn payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    match decode_segment_bytes(bytes) {
        Ok(decoded) => decoded
            .records
            .iter()
            .map(|record| record.payload.to_vec())
            .collect(),
        Err(_) => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_segment_bytes(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes_after_a_valid_header(
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (mut bytes, _, end) = build_segment(&[], 0);
        bytes.truncate(end);
        bytes.extend_from_slice(&tail);
        let _ = decode_segment_bytes(&bytes);
    }

    #[test]
    fn decoded_records_are_a_prefix_whatever_the_mutation(
        batches in batches_strategy(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (mut bytes, _, _) = build_segment(&batches, 4096);
        let original: Vec<Vec<u8>> = batches.concat();
        for (position, value) in mutations {
            let position = position.index(bytes.len());
            bytes[position] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let decoded = payloads(&bytes);
        prop_assert!(decoded.len() <= original.len());
        prop_assert_eq!(&decoded[..], &original[..decoded.len()]);
    }

    #[test]
    fn unmodified_segment_decodes_cleanly(batches in batches_strategy(), slack in 0_usize..64) {
        let (bytes, _, end) = build_segment(&batches, 0);
        let mut bytes = bytes;
        bytes.resize(end + slack * 8, 0);
        let decoded = decode_segment_bytes(&bytes).unwrap();
        prop_assert_eq!(decoded.end, SegmentEnd::Clean { offset: end as u64 });
        let got: Vec<Vec<u8>> = decoded.records.iter().map(|record| record.payload.to_vec()).collect();
        prop_assert_eq!(got, batches.concat());
    }

    /// A torn last write: any suffix of the last batch's bytes lost (zeroed), any
    /// sectors of it lost. Never classified as damage with a later batch after it.
    #[test]
    fn torn_last_batch_is_never_mid_log_damage(
        batches in batches_strategy(),
        lost in prop::collection::vec((any::<prop::sample::Index>(), 1_usize..64), 1..4),
    ) {
        let (mut bytes, starts, end) = build_segment(&batches, 0);
        let last_start = *starts.last().unwrap();
        for (start, len) in lost {
            let start = last_start + start.index(end - last_start);
            let stop = (start + len).min(end);
            bytes[start..stop].fill(0);
        }
        let decoded = decode_segment_bytes(&bytes).unwrap();
        if let SegmentEnd::Invalid { after, .. } = decoded.end {
            prop_assert_eq!(after, AfterDamage::NothingValid);
        }
    }

    /// One flipped byte anywhere before the last batch: damage with a later batch after.
    #[test]
    fn flipped_byte_before_the_last_batch_is_mid_log_damage(
        batches in batches_strategy().prop_filter("two batches", |b| b.len() >= 2),
        position in any::<prop::sample::Index>(),
        flip in 1_u8..,
    ) {
        let (mut bytes, starts, _) = build_segment(&batches, 0);
        let first = starts[0];
        let last_start = *starts.last().unwrap();
        let target = first + position.index(last_start - first);
        bytes[target] ^= flip;
        let decoded = decode_segment_bytes(&bytes).unwrap();
        match decoded.end {
            SegmentEnd::Invalid { after: AfterDamage::ValidBatchAt { .. }, offset, .. } => {
                prop_assert!(offset as usize <= target);
            }
            other => prop_assert!(false, "flip at {target} gave {other:?}"),
        }
    }
}

#[test]
fn scan_work_is_bounded_on_crafted_input() {
    // Plausible headers at every 8-byte boundary, each claiming a payload to the end of
    // the buffer: without a bound the scan would be quadratic.
    let mut bytes = Vec::new();
    let header = SegmentHeader {
        sequence: 0,
        first_index: 1,
        segment_bytes: 0,
        chain_seed: 0,
        metadata: b"",
        hard_state: None,
        snapshot: None,
    };
    encode_segment_header(&mut bytes, &header);
    let start = bytes.len();
    let total = 4 << 20;
    // 16-byte units: len, crc, kind, flags, reserved; the next unit is this header's index.
    while bytes.len() + 16 <= total {
        let remaining = total.saturating_sub(bytes.len() + format::RECORD_HEADER_BYTES) as u32;
        bytes.extend_from_slice(&remaining.to_le_bytes());
        bytes.extend_from_slice(&[0xff; 4]);
        bytes.push(KIND_ENTRY);
        bytes.push(0);
        bytes.extend_from_slice(&[0; 6]);
    }
    let started = std::time::Instant::now();
    let decoded = decode_segment_bytes(&bytes).unwrap();
    assert!(
        matches!(decoded.end, SegmentEnd::Invalid { offset, after: AfterDamage::Undecided, .. } if offset as usize == start),
        "{:?}",
        decoded.end
    );
    // Not a timing assertion: a bounded scan finishes; an unbounded one would take hours.
    eprintln!(
        "crafted 4 MiB scan: {:?} -> {:?}",
        started.elapsed(),
        decoded.end
    );
}
