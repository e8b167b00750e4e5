//! Feeds raw bytes to the WAL segment decoder. It must never panic, and whatever it
//! accepts must be exactly what the encoder produces for the decoded values: re-encoding
//! the decoded header and records gives back the input's bytes up to the end of the data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_wal::format::{encode_record, encode_segment_header};
use rivet_wal::{decode_segment_bytes, AfterDamage, SegmentEnd};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode_segment_bytes(data) else {
        return;
    };
    let end = decoded.end.offset() as usize;
    assert!(
        end <= data.len(),
        "end {end} past the input ({} bytes)",
        data.len()
    );

    let mut encoded = Vec::new();
    let mut crc = encode_segment_header(&mut encoded, &decoded.header);
    assert_eq!(crc, decoded.header_crc);
    for record in &decoded.records {
        assert_eq!(
            record.offset as usize,
            encoded.len(),
            "records are contiguous"
        );
        crc = encode_record(
            &mut encoded,
            crc,
            record.kind,
            record.flags,
            record.index,
            record.payload,
        );
        assert_eq!(crc, record.crc);
    }
    assert_eq!(crc, decoded.crc_last);
    assert_eq!(
        encoded.len(),
        end,
        "valid data ends where the last record ends"
    );
    assert_eq!(
        &data[..end],
        &encoded[..],
        "decoded values re-encode to the same bytes"
    );

    match decoded.end {
        SegmentEnd::Clean { .. } => assert!(data[end..].iter().all(|byte| *byte == 0)),
        SegmentEnd::Invalid {
            after: AfterDamage::ValidBatchAt { offset },
            ..
        } => {
            assert!(offset as usize > end && (offset as usize) < data.len());
        }
        SegmentEnd::Invalid { .. } => {}
    }
});
