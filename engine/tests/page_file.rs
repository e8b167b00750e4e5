//! Page file tests. Segments are 4 KiB (the minimum) so that rollover happens every few
//! records and oversized records are common: the cold paths run in every test.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use rivet_engine::page::{
    AppendError, Checkpoint, CheckpointError, KeyRecord, OpenError, PageFile, PageOptions, PagePtr,
    ReadError, SEGMENT_HEADER_BYTES,
};

const TINY: PageOptions = PageOptions {
    segment_bytes: 4096,
};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    key: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    value: Option<Vec<u8>>,
}

impl Owned {
    fn record(&self) -> KeyRecord<'_> {
        KeyRecord {
            key: &self.key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: self.value.as_deref(),
        }
    }

    fn from_view(view: KeyRecord<'_>) -> Owned {
        Owned {
            key: view.key.to_vec(),
            create_revision: view.create_revision,
            mod_revision: view.mod_revision,
            version: view.version,
            lease: view.lease,
            value: view.value.map(<[u8]>::to_vec),
        }
    }
}

/// Deterministic records: small values mostly, empty values, tombstones, and now and
/// then a value larger than a whole 4 KiB segment.
fn records(count: usize, seed: u64) -> Vec<Owned> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|index| {
            let revision = i64::try_from(index).unwrap_or(0) + 1;
            let choice = next() % 20;
            let value = match choice {
                0 => None,
                1 => Some(Vec::new()),
                2 => Some(vec![
                    0xA5;
                    5000 + usize::try_from(next() % 7000).unwrap_or(0)
                ]),
                _ => Some(
                    (0..next() % 300)
                        .map(|byte| u8::try_from(byte % 251).unwrap_or(0))
                        .collect(),
                ),
            };
            Owned {
                key: format!("/registry/pods/ns-{}/pod-{index}", next() % 5).into_bytes(),
                create_revision: revision - i64::try_from(next() % 3).unwrap_or(0),
                mod_revision: revision,
                version: i64::try_from(next() % 10).unwrap_or(0) + 1,
                lease: if next() % 4 == 0 { 7_587_000_000 } else { 0 },
                value,
            }
        })
        .collect()
}

fn append_all(page_file: &mut PageFile, records: &[Owned]) -> Vec<PagePtr> {
    records
        .iter()
        .map(|record| page_file.append(&record.record()).expect("append"))
        .collect()
}

fn checkpoint(applied_index: u64) -> Checkpoint {
    Checkpoint {
        applied_index,
        revision: i64::try_from(applied_index).unwrap_or(0) * 10,
        compact_revision: 3,
    }
}

type Loaded = Vec<(PagePtr, Owned)>;

fn open(dir: &Path, index: u64) -> Result<(PageFile, Option<Checkpoint>, Loaded), OpenError> {
    let mut loaded = Vec::new();
    let (page_file, found) = PageFile::open(dir, TINY, index, |ptr, view| {
        loaded.push((ptr, Owned::from_view(view)));
    })?;
    Ok((page_file, found, loaded))
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                fs::read(entry.path()).expect("read"),
            )
        })
        .collect()
}

fn segment_path(dir: &Path, id: u32) -> std::path::PathBuf {
    dir.join(format!("{id:010}.page"))
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

fn assert_reads(page_file: &PageFile, ptrs: &[PagePtr], records: &[Owned]) {
    for (ptr, record) in ptrs.iter().zip(records) {
        let view = page_file
            .read(*ptr)
            .unwrap_or_else(|error| panic!("read {ptr}: {error}"));
        assert_eq!(view, record.record(), "record at {ptr}");
    }
}

#[test]
fn round_trip_with_constant_rollover_and_oversized_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, found, loaded) = open(dir.path(), 0).expect("open");
    assert!(found.is_none() && loaded.is_empty());
    let records = records(600, 1);
    let ptrs = append_all(&mut page_file, &records);
    assert_reads(&page_file, &ptrs, &records);

    // Rollover happened constantly, oversized records got segments of their own.
    assert!(page_file.segment_count() > 50, "{page_file:?}");
    let oversized = records
        .iter()
        .zip(&ptrs)
        .filter(|(record, _)| {
            record
                .value
                .as_ref()
                .is_some_and(|value| value.len() > 4096)
        })
        .count();
    assert!(oversized > 10);
    let mut segment_sizes: Vec<u64> = fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .collect();
    assert!(segment_sizes.iter().any(|size| *size > 4096));
    assert!(segment_sizes.iter().all(|size| size % 4096 == 0));
    segment_sizes.sort_unstable();
    assert_eq!(page_file.size_bytes(), segment_sizes.iter().sum::<u64>());

    // Pointers are distinct, aligned, and ascending in file order.
    assert!(ptrs.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(ptrs.iter().all(|ptr| ptr.offset() % 8 == 0));
}

#[test]
fn reopen_at_checkpoint_replays_the_records_before_it_and_discards_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = records(500, 2);
    let (first, rest) = all.split_at(200);
    let (second, third) = rest.split_at(200);
    let (ptrs_first, ptrs_second, ptrs_third) = {
        let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
        let ptrs_first = append_all(&mut page_file, first);
        page_file
            .checkpoint(&checkpoint(10))
            .expect("checkpoint 10");
        let ptrs_second = append_all(&mut page_file, second);
        page_file
            .checkpoint(&checkpoint(20))
            .expect("checkpoint 20");
        let ptrs_third = append_all(&mut page_file, third);
        (ptrs_first, ptrs_second, ptrs_third)
    };

    // At 20: the first two batches, in order, at the same pointers; the third is gone.
    let (page_file, found, loaded) = open(dir.path(), 20).expect("open at 20");
    assert_eq!(found, Some(checkpoint(20)));
    let expected: Loaded = ptrs_first
        .iter()
        .chain(&ptrs_second)
        .copied()
        .zip(first.iter().chain(second).cloned())
        .collect();
    assert_eq!(loaded, expected);
    assert_reads(&page_file, &ptrs_first, first);
    assert_reads(&page_file, &ptrs_second, second);
    assert!(ptrs_third.iter().all(|ptr| page_file.read(*ptr).is_err()));
    drop(page_file);

    // Twice gives the same result, and the second open changes no byte.
    let before = snapshot(dir.path());
    let (_, found_again, loaded_again) = open(dir.path(), 20).expect("open at 20 again");
    assert_eq!((found_again, &loaded_again), (found, &loaded));
    assert_eq!(snapshot(dir.path()), before);

    // At 10: only the first batch; everything after checkpoint 10 is discarded, so
    // checkpoint 20 no longer exists.
    let (mut page_file, found, loaded) = open(dir.path(), 10).expect("open at 10");
    assert_eq!(found, Some(checkpoint(10)));
    assert_eq!(loaded, expected[..200].to_vec());
    assert!(ptrs_second.iter().all(|ptr| page_file.read(*ptr).is_err()));
    // Appending continues where checkpoint 10 ended; the WAL would replay here.
    let replayed = records(50, 3);
    let ptrs_replayed = append_all(&mut page_file, &replayed);
    assert_eq!(ptrs_replayed[0].segment(), ptrs_first[199].segment());
    page_file
        .checkpoint(&checkpoint(15))
        .expect("checkpoint 15");
    drop(page_file);
    assert!(matches!(
        open(dir.path(), 20),
        Err(OpenError::CheckpointNotFound { index: 20, .. })
    ));
    let (page_file, _, loaded) = open(dir.path(), 15).expect("open at 15");
    assert_eq!(loaded.len(), 250);
    assert_reads(&page_file, &ptrs_replayed, &replayed);
}

/// Builds checkpoint 10 over `first`, then checkpoint 20 over `second` while `third` is
/// appended between its steps (the apply loop goes on during a checkpoint's syncs), so
/// that `third` fills the segment of checkpoint 20's record and rolls over. With
/// `finish`, checkpoint 20 is written and ended; without, the "process" stops after its
/// first step (the record's place stays zero). Returns the pointers of the three.
fn checkpoint_while_appending(dir: &Path, finish: bool) -> [Vec<(PagePtr, Owned)>; 3] {
    let all = records(420, 7);
    let (first, rest) = all.split_at(60);
    let (second, third) = rest.split_at(60);
    let (mut page_file, _, _) = open(dir, 0).expect("open");
    let ptrs_first = append_all(&mut page_file, first);
    page_file
        .checkpoint(&checkpoint(10))
        .expect("checkpoint 10");
    let ptrs_second = append_all(&mut page_file, second);
    let records_job = page_file
        .checkpoint_begin(&checkpoint(20))
        .expect("begin 20");
    assert!(matches!(
        page_file.checkpoint_begin(&checkpoint(30)),
        Err(CheckpointError::OutOfOrder(_))
    ));
    let (during, after) = third.split_at(third.len() - 20);
    let mut ptrs_third = append_all(&mut page_file, during);
    assert!(
        ptrs_third.last().expect("appended").segment() > ptrs_second[59].segment() + 2,
        "the appends during the checkpoint roll over past its record's segment"
    );
    if finish {
        let records_synced = records_job.run_blocking();
        let record_job = page_file
            .checkpoint_write(&checkpoint(20), records_synced)
            .expect("write 20");
        ptrs_third.extend(append_all(&mut page_file, after));
        let record_synced = record_job.run_blocking();
        page_file
            .checkpoint_end(&checkpoint(20), record_synced)
            .expect("end 20");
        assert_eq!(page_file.last_checkpoint_index(), 20);
        assert_eq!(
            page_file.last_checkpoint_slot(),
            ptrs_second[59].segment(),
            "the checkpoint lies in the segment it was reserved in, not the active one"
        );
    }
    assert_reads(&page_file, &ptrs_first, first);
    assert_reads(&page_file, &ptrs_second, second);
    assert_reads(&page_file, &ptrs_third, &third[..ptrs_third.len()]);
    let pair = |ptrs: Vec<PagePtr>, records: &[Owned]| {
        ptrs.into_iter().zip(records.iter().cloned()).collect()
    };
    [
        pair(ptrs_first, first),
        pair(ptrs_second, second),
        pair(ptrs_third, third),
    ]
}

#[test]
fn records_appended_during_a_checkpoint_are_not_covered_by_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [first, second, third] = checkpoint_while_appending(dir.path(), true);
    // At 20: exactly what was appended before it began; the rest is the WAL's to replay.
    let (mut page_file, found, loaded) = open(dir.path(), 20).expect("open at 20");
    assert_eq!(found, Some(checkpoint(20)));
    let expected: Loaded = first.iter().chain(&second).cloned().collect();
    assert_eq!(loaded, expected);
    assert!(third.iter().all(|(ptr, _)| page_file.read(*ptr).is_err()));
    // The next checkpoint goes on from there.
    let replayed = records(30, 8);
    let ptrs_replayed = append_all(&mut page_file, &replayed);
    page_file
        .checkpoint(&checkpoint(30))
        .expect("checkpoint 30");
    drop(page_file);
    let (page_file, _, loaded) = open(dir.path(), 30).expect("open at 30");
    assert_eq!(loaded.len(), expected.len() + replayed.len());
    assert_reads(&page_file, &ptrs_replayed, &replayed);
}

#[test]
fn a_checkpoint_that_never_wrote_its_record_leaves_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [first, _, _] = checkpoint_while_appending(dir.path(), false);
    // The zeros reserved for checkpoint 20 end the scan: 20 is not there...
    assert!(matches!(
        open(dir.path(), 20),
        Err(OpenError::CheckpointNotFound { index: 20, .. })
    ));
    // ...and 10 is, with only what it covered.
    let (_, found, loaded) = open(dir.path(), 10).expect("open at 10");
    assert_eq!(found, Some(checkpoint(10)));
    assert_eq!(loaded, first);
}

#[test]
fn open_at_zero_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ptrs = {
        let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
        let ptrs = append_all(&mut page_file, &records(100, 4));
        page_file.checkpoint(&checkpoint(5)).expect("checkpoint");
        ptrs
    };
    let (page_file, found, loaded) = open(dir.path(), 0).expect("open at 0");
    assert!(found.is_none() && loaded.is_empty());
    assert_eq!(page_file.segment_count(), 1);
    // A directory that does not exist yet is created.
    let nested = dir.path().join("shards/0");
    let (fresh, _, _) = open(&nested, 0).expect("open a new directory");
    assert_eq!(fresh.dir(), nested.as_path());
    drop(fresh);
    fs::remove_dir_all(dir.path().join("shards")).expect("cleanup");
    assert_eq!(page_file.size_bytes(), 4096);
    assert_eq!(snapshot(dir.path()).len(), 1);
    assert!(ptrs.iter().all(|ptr| page_file.read(*ptr).is_err()));
    drop(page_file);
    assert!(matches!(
        open(dir.path(), 5),
        Err(OpenError::CheckpointNotFound { .. })
    ));
}

#[test]
fn missing_checkpoint_is_an_error_naming_dir_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
        append_all(&mut page_file, &records(80, 5));
        page_file.checkpoint(&checkpoint(7)).expect("checkpoint");
        append_all(&mut page_file, &records(30, 6));
        page_file.checkpoint(&checkpoint(9)).expect("checkpoint");
    }
    let before = snapshot(dir.path());
    for index in [8, 99, 6] {
        let error = open(dir.path(), index).expect_err("no such checkpoint");
        assert!(
            matches!(error, OpenError::CheckpointNotFound { index: got, .. } if got == index),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains(&index.to_string()), "{message}");
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a failed open modified the files"
    );

    // An empty directory has no checkpoint either.
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        open(empty.path(), 1),
        Err(OpenError::CheckpointNotFound { index: 1, .. })
    ));
}

/// Writes 300 records with checkpoint 42 after them and 50 more after that; returns
/// the pointers of the first 300.
fn write_checkpointed(dir: &Path) -> (Vec<PagePtr>, Vec<Owned>) {
    let records = records(300, 7);
    let (mut page_file, _, _) = open(dir, 0).expect("open");
    let ptrs = append_all(&mut page_file, &records);
    page_file.checkpoint(&checkpoint(42)).expect("checkpoint");
    append_all(&mut page_file, &self::records(50, 8));
    (ptrs, records)
}

#[test]
fn flipped_byte_before_the_checkpoint_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ptrs, _) = write_checkpointed(dir.path());
    let pristine = snapshot(dir.path());
    // A byte inside records in the first, a middle and the last sealed segment: the key
    // bytes, the CRC field, the length field.
    for (record, delta) in [(0, 50), (150, 0), (150, 5), (290, 13), (299, 48)] {
        let ptr = ptrs[record];
        let path = segment_path(dir.path(), ptr.segment());
        flip_byte(&path, ptr.offset() as usize + delta);
        let damaged = snapshot(dir.path());
        for _ in 0..2 {
            let error = open(dir.path(), 42).expect_err("damage before the checkpoint");
            match &error {
                OpenError::Corrupt {
                    path: got_path,
                    offset,
                    index: 42,
                    ..
                } => {
                    assert_eq!(got_path, &path);
                    assert_eq!(*offset, u64::from(ptr.offset()));
                }
                other => panic!("record {record} +{delta}: expected Corrupt, got {other}"),
            }
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&ptr.offset().to_string()), "{message}");
            assert_eq!(
                snapshot(dir.path()),
                damaged,
                "a failed open modified the files"
            );
        }
        flip_byte(&path, ptr.offset() as usize + delta);
        assert_eq!(snapshot(dir.path()), pristine);
    }

    // A flipped byte in a segment header.
    let path = segment_path(dir.path(), ptrs[100].segment());
    flip_byte(&path, 20);
    let error = open(dir.path(), 42).expect_err("damaged header");
    assert!(
        matches!(&error, OpenError::BadSegment { path: got, .. } if *got == path),
        "{error}"
    );
    flip_byte(&path, 20);

    // All undone: it opens.
    let (_, found, loaded) = open(dir.path(), 42).expect("open");
    assert_eq!(found, Some(checkpoint(42)));
    assert_eq!(loaded.len(), 300);
}

#[test]
fn lost_writes_before_the_checkpoint_are_detected() {
    // A zeroed range in the middle of a sealed segment: the previous-end check in the
    // next segment's header catches it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (ptrs, _) = write_checkpointed(dir.path());
    let ptr = ptrs[100];
    let path = segment_path(dir.path(), ptr.segment());
    let mut bytes = fs::read(&path).expect("read");
    let start = ptr.offset() as usize;
    bytes[start..].fill(0);
    fs::write(&path, &bytes).expect("write");
    let error = open(dir.path(), 42).expect_err("lost writes");
    assert!(matches!(error, OpenError::BadSegment { .. }), "{error}");

    // A missing segment in the middle.
    let dir = tempfile::tempdir().expect("tempdir");
    let (ptrs, _) = write_checkpointed(dir.path());
    fs::remove_file(segment_path(dir.path(), ptrs[100].segment())).expect("remove");
    let error = open(dir.path(), 42).expect_err("missing segment");
    assert!(
        matches!(&error, OpenError::BadSegment { detail, .. } if detail.contains("missing")),
        "{error}"
    );

    // The first record of the checkpoint's segment zeroed: that segment seems to end at
    // once, the next segment's header disagrees, and the checkpoint is found beyond.
    let dir = tempfile::tempdir().expect("tempdir");
    let (ptrs, _) = write_checkpointed(dir.path());
    let last = ptrs[299];
    let path = segment_path(dir.path(), last.segment());
    let mut bytes = fs::read(&path).expect("read");
    let start = last.offset() as usize;
    bytes[start..start + 8].fill(0);
    fs::write(&path, &bytes).expect("write");
    let error = open(dir.path(), 42).expect_err("lost writes");
    assert!(matches!(&error, OpenError::BadSegment { .. }), "{error}");

    // The same with no segment after the checkpoint's: the records end early, and the
    // probe finds the checkpoint beyond that end.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
    let ptrs = append_all(&mut page_file, &records(300, 7));
    page_file.checkpoint(&checkpoint(42)).expect("checkpoint");
    drop(page_file);
    let last = ptrs[299];
    let path = segment_path(dir.path(), last.segment());
    let mut bytes = fs::read(&path).expect("read");
    let start = last.offset() as usize;
    bytes[start..start + 8].fill(0);
    fs::write(&path, &bytes).expect("write");
    let before = snapshot(dir.path());
    let error = open(dir.path(), 42).expect_err("lost writes");
    assert!(
        matches!(&error, OpenError::BadSegment { detail, .. } if detail.contains("end early")),
        "{error}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn damage_after_the_checkpoint_is_a_torn_tail_and_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ptrs, records) = write_checkpointed(dir.path());
    // Garbage after the checkpoint in its segment, and a stray half-created segment.
    let checkpoint_segment = ptrs[299].segment();
    let path = segment_path(dir.path(), checkpoint_segment);
    let mut bytes = fs::read(&path).expect("read");
    let tail = bytes.len() - 200;
    bytes[tail..].fill(0xEE);
    fs::write(&path, &bytes).expect("write");
    let stray = segment_path(dir.path(), checkpoint_segment + 1000);
    fs::write(&stray, b"half a header").expect("write");

    let (page_file, found, loaded) = open(dir.path(), 42).expect("open");
    assert_eq!(found, Some(checkpoint(42)));
    let expected: Loaded = ptrs.iter().copied().zip(records.iter().cloned()).collect();
    assert_eq!(loaded, expected);
    assert_eq!(page_file.segment_count(), checkpoint_segment as usize + 1);
    drop(page_file);
    assert!(!stray.exists());
    let bytes = fs::read(&path).expect("read");
    assert!(
        bytes[tail..].iter().all(|byte| *byte == 0),
        "tail not zeroed"
    );
    // And again: same result.
    let (_, _, again) = open(dir.path(), 42).expect("open again");
    assert_eq!(again, expected);
}

#[test]
fn read_checks_bounds_and_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
    let ptr = page_file
        .append(&records(1, 9)[0].record())
        .expect("append");
    page_file.checkpoint(&checkpoint(1)).expect("checkpoint");
    let next = page_file
        .append(&records(1, 10)[0].record())
        .expect("append");
    let checkpoint_ptr = PagePtr::new(next.segment(), next.offset() - 40);

    assert!(matches!(
        page_file.read(PagePtr::new(77, 32)),
        Err(ReadError::NoSuchSegment { .. })
    ));
    for bad in [
        PagePtr::new(ptr.segment(), 0),
        PagePtr::new(ptr.segment(), ptr.offset() + 4),
        PagePtr::new(next.segment(), next.offset() + 4096),
        PagePtr::new(next.segment(), u32::MAX - 7),
    ] {
        assert!(
            matches!(page_file.read(bad), Err(ReadError::OutOfBounds { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        page_file.read(checkpoint_ptr),
        Err(ReadError::NotAKeyRecord { .. })
    ));
    // Not written yet (zeros after the last record).
    let unwritten = PagePtr::new(next.segment(), next.offset() + 1024);
    assert!(page_file.read(unwritten).is_err());
    assert!(page_file.read(ptr).is_ok() && page_file.read(next).is_ok());
}

#[test]
fn checkpoint_indexes_must_increase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
    assert!(matches!(
        page_file.checkpoint(&checkpoint(0)),
        Err(CheckpointError::NotIncreasing { .. })
    ));
    page_file.checkpoint(&checkpoint(3)).expect("checkpoint");
    assert!(matches!(
        page_file.checkpoint(&checkpoint(3)),
        Err(CheckpointError::NotIncreasing {
            previous: 3,
            given: 3
        })
    ));
    // Reopened at 3, the next checkpoint must still exceed 3.
    drop(page_file);
    let (mut page_file, _, _) = open(dir.path(), 3).expect("open");
    assert!(page_file.checkpoint(&checkpoint(2)).is_err());
    page_file.checkpoint(&checkpoint(4)).expect("checkpoint");
}

#[test]
fn too_large_records_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
    // calloc'd and never touched: costs address space, not memory.
    let huge = vec![0_u8; rivet_engine::limits::RECORD_BYTES_MAX as usize];
    let record = KeyRecord {
        key: b"k",
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: 0,
        value: Some(&huge),
    };
    assert!(matches!(
        page_file.append(&record),
        Err(AppendError::TooLarge { .. })
    ));
    drop(huge);
    for segment_bytes in [0, 4095, 4097, 8191, 2048] {
        let error = PageFile::open(dir.path(), PageOptions { segment_bytes }, 0, |_, _| {})
            .expect_err("invalid options");
        assert!(matches!(error, OpenError::InvalidOptions(_)), "{error}");
    }
    assert!(page_file.segment_count() == 1);
}

#[test]
fn segment_files_start_with_a_header_and_records_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
    let ptrs = append_all(&mut page_file, &records(40, 11));
    page_file.checkpoint(&checkpoint(1)).expect("checkpoint");
    for ptr in &ptrs {
        assert!(ptr.offset() as usize >= SEGMENT_HEADER_BYTES);
    }
    // Every segment decodes on its own through the public decoder.
    for (name, bytes) in snapshot(dir.path()) {
        let (header, records) = rivet_engine::page::decode_segment(&bytes).expect(&name);
        assert_eq!(header.file_bytes as usize, bytes.len());
        let decoded: Vec<_> = records.collect::<Result<_, _>>().expect("valid records");
        assert!(!decoded.is_empty(), "{name}");
    }
}

/// Random appends, checkpoints and reopens against a model: after each reopen the
/// records replayed must be exactly those appended before that checkpoint, in order.
#[derive(Clone, Debug)]
enum PageOp {
    Append {
        key: u8,
        value_bytes: u16,
        tombstone: bool,
    },
    Checkpoint,
    /// Reopen at the n-th (modulo) checkpoint still on disk, or at 0.
    Reopen(u8),
}

fn page_op() -> impl Strategy<Value = PageOp> {
    prop_oneof![
        12 => (any::<u8>(), prop_oneof![4 => 0..400_u16, 1 => 4000..9000_u16], any::<bool>())
            .prop_map(|(key, value_bytes, tombstone)| PageOp::Append { key, value_bytes, tombstone }),
        2 => Just(PageOp::Checkpoint),
        1 => any::<u8>().prop_map(PageOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn page_file_matches_model(ops in prop::collection::vec(page_op(), 1..120)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut page_file, _, _) = open(dir.path(), 0).expect("open");
        // The records appended so far, and for each checkpoint on disk the count of
        // records before it.
        let mut appended: Vec<(PagePtr, Owned)> = Vec::new();
        let mut checkpoints: Vec<(u64, usize)> = Vec::new();
        let mut next_index = 1_u64;
        let mut revision = 0_i64;
        for op in ops {
            match op {
                PageOp::Append { key, value_bytes, tombstone } => {
                    revision += 1;
                    let record = Owned {
                        key: vec![b'k', key],
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                        lease: 0,
                        value: (!tombstone).then(|| vec![key; usize::from(value_bytes)]),
                    };
                    let ptr = page_file.append(&record.record()).expect("append");
                    appended.push((ptr, record));
                }
                PageOp::Checkpoint => {
                    page_file.checkpoint(&checkpoint(next_index)).expect("checkpoint");
                    checkpoints.push((next_index, appended.len()));
                    next_index += 1;
                }
                PageOp::Reopen(pick) => {
                    drop(page_file);
                    let target = if checkpoints.is_empty() {
                        None
                    } else {
                        Some(usize::from(pick) % (checkpoints.len() + 1))
                    };
                    match target.and_then(|position| checkpoints.get(position).copied()) {
                        Some((index, count)) => {
                            let (reopened, found, loaded) = open(dir.path(), index).expect("reopen");
                            prop_assert_eq!(found.map(|found| found.applied_index), Some(index));
                            appended.truncate(count);
                            prop_assert_eq!(&loaded, &appended);
                            checkpoints.retain(|(kept, _)| *kept <= index);
                            page_file = reopened;
                        }
                        None => {
                            let (reopened, found, loaded) = open(dir.path(), 0).expect("reopen");
                            prop_assert!(found.is_none() && loaded.is_empty());
                            appended.clear();
                            checkpoints.clear();
                            page_file = reopened;
                        }
                    }
                }
            }
            for (ptr, record) in &appended {
                prop_assert_eq!(page_file.read(*ptr).expect("read"), record.record());
            }
        }
    }
}

/// The active segment lets go of the pages it appended to every
/// `PAGE_RESIDENT_APPEND_BYTES` (`madvise(MADV_DONTNEED)` on a shared file mapping): the
/// records stay readable, the checkpoint record written into a slot reserved before
/// the release lands, and a reopen at that checkpoint finds every record it covers —
/// the dirty pages went to the page cache and the checkpoint's sync wrote them.
#[test]
fn records_on_released_pages_read_back_and_reopen() {
    const LARGE: PageOptions = PageOptions {
        segment_bytes: 64 * 1024 * 1024,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let released = rivet_engine::limits::PAGE_RESIDENT_APPEND_BYTES;
    // ~600 bytes a record on average: ~15 MB (three releases and more) before the
    // checkpoint begins, ~10 MB while it is in the making.
    let all = records(10 * released / 1024, 11);
    let (before, during) = all.split_at(all.len() * 3 / 5);
    let (mut page_file, _) = PageFile::open(dir.path(), LARGE, 0, |_, _| {}).expect("open");
    let ptrs_before = append_all(&mut page_file, before);
    let records_job = page_file
        .checkpoint_begin(&checkpoint(40))
        .expect("begin 40");
    let ptrs_during = append_all(&mut page_file, during);
    assert_eq!(
        ptrs_during.last().expect("appended").segment(),
        ptrs_before[0].segment(),
        "one segment: the appends are released, not rolled over"
    );
    let records_synced = records_job.run_blocking();
    let record_job = page_file
        .checkpoint_write(&checkpoint(40), records_synced)
        .expect("write 40");
    let record_synced = record_job.run_blocking();
    page_file
        .checkpoint_end(&checkpoint(40), record_synced)
        .expect("end 40");
    assert_reads(&page_file, &ptrs_before, before);
    assert_reads(&page_file, &ptrs_during, during);
    drop(page_file);
    let mut loaded = Vec::new();
    let (page_file, found) = PageFile::open(dir.path(), LARGE, 40, |ptr, view| {
        loaded.push((ptr, Owned::from_view(view)));
    })
    .expect("reopen at 40");
    assert_eq!(found, Some(checkpoint(40)));
    let expected: Loaded = ptrs_before
        .iter()
        .copied()
        .zip(before.iter().cloned())
        .collect();
    assert_eq!(loaded, expected);
    assert_reads(&page_file, &ptrs_before, before);
}
