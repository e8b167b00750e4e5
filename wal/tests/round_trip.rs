//! Property test of the whole framing through real files: arbitrary batches, arbitrary
//! (including tiny) segment sizes, reopen, identical records.

mod common;

use common::append;
use proptest::prelude::*;
use rivet_wal::{OwnedRecord, RecordKind, Wal, WalOptions};

fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
    let kind = prop_oneof![
        6 => Just(RecordKind::Entry),
        2 => Just(RecordKind::HardState),
        1 => Just(RecordKind::Snapshot),
        1 => Just(RecordKind::Metadata),
    ];
    let payload = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 3000..9000),
    ];
    (kind, any::<u64>(), payload).prop_map(|(kind, index, payload)| OwnedRecord {
        kind,
        index: if kind.has_index() { index } else { 0 },
        payload,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn records_survive_reopen(
        pages in prop_oneof![Just(1_u64), Just(2), Just(3), Just(16)],
        metadata in prop::collection::vec(any::<u8>(), 0..100),
        batches in prop::collection::vec(prop::collection::vec(record_strategy(), 1..8), 1..30),
    ) {
        let options = WalOptions { segment_bytes: pages * 4096 };
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), &metadata, options).unwrap();
        // Reopen half-way too, so appends after recovery are covered.
        let (first, second) = batches.split_at(batches.len() / 2);
        for batch in first {
            append(&mut wal, batch);
        }
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
        for batch in second {
            append(&mut wal, batch);
        }
        drop(wal);

        let written: Vec<OwnedRecord> = batches.concat();
        let expected_metadata = written
            .iter()
            .rev()
            .find(|record| record.kind == RecordKind::Metadata)
            .map_or(metadata.clone(), |record| record.payload.clone());
        for _ in 0..2 {
            let (_wal, recovery) = Wal::open(dir.path(), options).unwrap();
            prop_assert_eq!(&recovery.records, &written);
            prop_assert_eq!(&recovery.metadata, &expected_metadata);
            prop_assert_eq!(&recovery.torn_tail, &None);
        }
    }
}
