//! The page record decoder on raw bytes: it never panics, it decodes what the encoder
//! wrote, and a single damaged byte is never read back as a different valid record.

use proptest::prelude::*;
use rivet_engine::page::{
    decode_records, decode_segment, encode_checkpoint_record, encode_key_record, Checkpoint,
    DecodeError, KeyRecord, Record,
};

#[derive(Clone, Debug)]
enum Owned {
    Key {
        key: Vec<u8>,
        numbers: [i64; 4],
        value: Option<Vec<u8>>,
    },
    Checkpoint(Checkpoint),
}

impl Owned {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Owned::Key {
                key,
                numbers,
                value,
            } => encode_key_record(&Owned::key_record(key, numbers, value.as_deref()), out)
                .expect("small record"),
            Owned::Checkpoint(checkpoint) => encode_checkpoint_record(checkpoint, out),
        }
    }

    fn key_record<'a>(key: &'a [u8], numbers: &[i64; 4], value: Option<&'a [u8]>) -> KeyRecord<'a> {
        KeyRecord {
            key,
            create_revision: numbers[0],
            mod_revision: numbers[1],
            version: numbers[2],
            lease: numbers[3],
            value,
        }
    }

    fn matches(&self, record: &Record<'_>) -> bool {
        match (self, record) {
            (
                Owned::Key {
                    key,
                    numbers,
                    value,
                },
                Record::Key(view),
            ) => *view == Owned::key_record(key, numbers, value.as_deref()),
            (Owned::Checkpoint(expected), Record::Checkpoint(got)) => expected == got,
            _ => false,
        }
    }
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        8 => (
            prop::collection::vec(any::<u8>(), 0..40),
            any::<[i64; 4]>(),
            prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..200)),
        )
            .prop_map(|(key, numbers, value)| Owned::Key { key, numbers, value }),
        1 => any::<(u64, i64, i64)>().prop_map(|(applied_index, revision, compact_revision)| {
            Owned::Checkpoint(Checkpoint { applied_index, revision, compact_revision })
        }),
    ]
}

/// Decodes everything, returning the records and the error that stopped decoding.
fn decode_all(bytes: &[u8]) -> (Vec<(usize, Record<'_>)>, Option<DecodeError>) {
    let mut records = Vec::new();
    for item in decode_records(bytes) {
        match item {
            Ok(record) => records.push(record),
            Err(error) => return (records, Some(error)),
        }
    }
    (records, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary bytes: decoding never panics and never runs past the input.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (records, _) = decode_all(&bytes);
        for (offset, record) in records {
            prop_assert!(offset < bytes.len());
            if let Record::Key(view) = record {
                prop_assert!(view.key.len() + view.value.map_or(0, <[u8]>::len) <= bytes.len());
            }
        }
        if let Ok((_, records)) = decode_segment(&bytes) {
            for item in records {
                if item.is_err() {
                    break;
                }
            }
        }
    }

    /// Arbitrary bytes behind a plausible record header: exercises the length, kind and
    /// flag checks past the CRC (the CRC is made to match).
    #[test]
    fn forged_headers_never_panic(
        length in 0_u32..200,
        kind in 0_u8..4,
        flags in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = vec![0_u8; 12];
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        bytes[8] = kind;
        bytes[9] = flags;
        bytes.extend_from_slice(&body);
        let covered_end = (length as usize).clamp(4, bytes.len());
        let crc = crc32c::crc32c(&bytes[4..covered_end]);
        bytes[0..4].copy_from_slice(&crc.to_le_bytes());
        let _decoded = decode_all(&bytes);
    }

    /// What the encoder writes, the decoder reads back, at the offsets written.
    #[test]
    fn round_trip(records in prop::collection::vec(owned(), 0..20)) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for record in &records {
            offsets.push(bytes.len());
            record.encode(&mut bytes);
            prop_assert_eq!(bytes.len() % 8, 0);
        }
        let (decoded, error) = decode_all(&bytes);
        prop_assert!(error.is_none(), "{:?}", error);
        prop_assert_eq!(decoded.len(), records.len());
        for ((offset, record), (expected_offset, expected)) in decoded.iter().zip(offsets.iter().zip(&records)) {
            prop_assert_eq!(offset, expected_offset);
            prop_assert!(expected.matches(record), "{:?} != {:?}", expected, record);
        }
    }

    /// One damaged byte: the records before it decode unchanged; the damaged record is
    /// reported as an error (or, if the byte was padding, decodes unchanged) — never as a
    /// different valid record.
    #[test]
    fn one_damaged_byte_is_detected(
        records in prop::collection::vec(owned(), 1..10),
        position in any::<prop::sample::Index>(),
        xor in 1_u8..,
    ) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for record in &records {
            offsets.push(bytes.len());
            record.encode(&mut bytes);
        }
        let damaged_at = position.index(bytes.len());
        bytes[damaged_at] ^= xor;
        let damaged_record = offsets.iter().rposition(|offset| *offset <= damaged_at).unwrap_or(0);
        let (decoded, error) = decode_all(&bytes);
        for (index, (offset, record)) in decoded.iter().enumerate() {
            prop_assert_eq!(*offset, offsets[index]);
            prop_assert!(records[index].matches(record), "record {} changed: {:?}", index, record);
        }
        if decoded.len() < records.len() {
            prop_assert_eq!(decoded.len(), damaged_record);
            prop_assert!(error.is_some() || damaged_at < offsets[damaged_record] + 8);
        }
    }
}
