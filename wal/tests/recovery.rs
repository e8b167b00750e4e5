//! One test per way a WAL can break, plus the recovery guarantees around them.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::*;
use rivet_wal::{Damage, OpenError, OwnedRecord, RecordKind, Wal, WalOptions};

const METADATA: &[u8] = b"member=0x1 cluster=0x7";
/// Large enough that every batch of `write_log` lands in one segment.
const ROOMY: WalOptions = WalOptions {
    segment_bytes: 64 * 1024,
};

/// Creates a WAL and appends `batches` batches of (Entry i, HardState), returning all
/// records appended.
fn write_log(dir: &Path, options: WalOptions, batches: u64) -> Vec<OwnedRecord> {
    let mut wal = Wal::create(dir, METADATA, options).expect("create");
    let mut all = Vec::new();
    for index in 1..=batches {
        let len = 10 + (index as usize * 37) % 600;
        let batch = vec![
            entry(index, &payload_for(index, len)),
            hard_state(format!("term=1 commit={index}").as_bytes()),
        ];
        append(&mut wal, &batch);
        all.extend(batch);
    }
    all
}

fn open(dir: &Path, options: WalOptions) -> (Wal, rivet_wal::Recovery) {
    Wal::open(dir, options).expect("open")
}

fn expect_damage(dir: &Path, options: WalOptions) -> (std::path::PathBuf, u64, Damage) {
    let before = snapshot_dir(dir);
    let error = match Wal::open(dir, options) {
        Ok(_) => panic!("open accepted a damaged WAL"),
        Err(error) => error,
    };
    assert_eq!(snapshot_dir(dir), before, "a refused open modified files");
    let message = error.to_string();
    match error {
        OpenError::Damaged {
            file,
            offset,
            damage,
        } => {
            assert!(
                message.contains(&file.display().to_string()),
                "message names the file: {message}"
            );
            assert!(
                message.contains(&offset.to_string()),
                "message names the offset: {message}"
            );
            (file, offset, damage)
        }
        other => panic!("expected Damaged, got {other}"),
    }
}

#[test]
fn clean_reopen_returns_everything() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), TINY, 40);
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, written);
    assert_eq!(recovery.metadata, METADATA);
    assert_eq!(recovery.torn_tail, None);
    assert!(
        segment_files(dir.path()).len() > 3,
        "tiny segments roll over"
    );
}

#[test]
fn torn_tail_cut_mid_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), ROOMY, 20);
    let segment = segment_files(dir.path()).pop().unwrap();
    let last = *record_offsets(&segment).last().unwrap();
    let end = data_end(&segment);
    // A torn write: the first 30 bytes of the last record reached the disk, not the rest.
    let mut bytes = fs::read(&segment).unwrap();
    bytes[last as usize + 30..end as usize].fill(0);
    fs::write(&segment, &bytes).unwrap();

    let ((_wal, recovery), warnings) = capture_warnings(|| open(dir.path(), ROOMY));
    assert_eq!(recovery.records, written[..written.len() - 1]);
    let torn = recovery.torn_tail.expect("torn tail reported");
    assert_eq!(
        (torn.file.as_path(), torn.offset),
        (segment.as_path(), last)
    );
    assert!(
        torn.bytes > 0 && torn.bytes <= 30,
        "cut {} bytes",
        torn.bytes
    );
    // The warning says exactly what was cut.
    let [warning] = &warnings[..] else {
        panic!("expected one warning, got {warnings:?}")
    };
    for expected in [
        format!("file={}", segment.display()),
        format!("offset={last} "),
        format!("bytes={} ", torn.bytes),
    ] {
        assert!(
            warning.contains(&expected),
            "warning {warning:?} lacks {expected:?}"
        );
    }
    let repaired = fs::read(&segment).unwrap();
    assert_eq!(
        repaired.len() as u64,
        ROOMY.segment_bytes,
        "stays preallocated"
    );
    assert!(
        repaired[last as usize..].iter().all(|byte| *byte == 0),
        "tail zeroed"
    );
}

#[test]
fn torn_write_of_a_whole_batch_with_lost_first_sector_is_truncated() {
    // The last batch's first record never reached the disk but its second did (sectors
    // persist in any order): records of the torn batch survive after the damage, but no
    // later batch starts, so it is still a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), ROOMY, 20);
    let segment = segment_files(dir.path()).pop().unwrap();
    let offsets = record_offsets(&segment);
    let batch_start = offsets[offsets.len() - 2];
    let mut bytes = fs::read(&segment).unwrap();
    bytes[batch_start as usize..batch_start as usize + 40].fill(0);
    fs::write(&segment, &bytes).unwrap();

    let (_wal, recovery) = open(dir.path(), ROOMY);
    assert_eq!(recovery.records, written[..written.len() - 2]);
    assert_eq!(recovery.torn_tail.unwrap().offset, batch_start);
}

#[test]
fn flipped_byte_mid_log_is_refused_for_every_field() {
    // Offsets within a record: len, crc, kind, flags, reserved, index, payload.
    for field_offset in [0, 5, 8, 9, 12, 17, 30] {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), ROOMY, 20);
        let segment = segment_files(dir.path()).pop().unwrap();
        // The Entry record of batch 10 of 20 (records: [entry, hard state] per batch).
        let target = record_offsets(&segment)[18];
        flip_byte(&segment, target + field_offset);

        let (file, offset, damage) = expect_damage(dir.path(), ROOMY);
        assert_eq!(
            (file, offset),
            (segment.clone(), target),
            "field offset {field_offset}: {damage}"
        );
        assert!(
            matches!(damage, Damage::ValidDataAfter { .. }),
            "field offset {field_offset}: {damage}"
        );
    }
}

#[test]
fn flipped_byte_in_last_record_of_a_middle_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), ROOMY, 20);
    let segment = segment_files(dir.path()).pop().unwrap();
    let target = record_offsets(&segment)[19]; // hard state of batch 10
    flip_byte(&segment, target + 26);
    let (file, offset, _) = expect_damage(dir.path(), ROOMY);
    assert_eq!((file, offset), (segment, target));
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let segments = segment_files(dir.path());
    let middle = &segments[1];
    let target = *record_offsets(middle).last().unwrap();
    flip_byte(middle, target + 26);
    let (file, offset, damage) = expect_damage(dir.path(), TINY);
    assert_eq!((&file, offset), (middle, target));
    assert!(matches!(damage, Damage::InSealedSegment { .. }), "{damage}");
}

#[test]
fn flipped_byte_in_a_segment_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let last = segment_files(dir.path()).pop().unwrap();
    flip_byte(&last, 60); // inside the header's payload
    let (file, offset, damage) = expect_damage(dir.path(), TINY);
    assert_eq!((file, offset), (last, 0));
    assert!(matches!(damage, Damage::Header(_)), "{damage}");
}

#[test]
fn flipped_byte_in_the_very_last_record_is_indistinguishable_from_a_torn_tail() {
    // The documented limit: with nothing after it, a damaged last record looks exactly
    // like a torn write, so it is cut. It was the last append; if that append had been
    // acknowledged, raft's quorum still holds it.
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), ROOMY, 20);
    let segment = segment_files(dir.path()).pop().unwrap();
    let last = *record_offsets(&segment).last().unwrap();
    flip_byte(&segment, last + 26);
    let (_wal, recovery) = open(dir.path(), ROOMY);
    assert_eq!(recovery.records, written[..written.len() - 1]);
    assert_eq!(recovery.torn_tail.unwrap().offset, last);
}

#[test]
fn truncated_last_segment_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), TINY, 40);
    let last = segment_files(dir.path()).pop().unwrap();
    let offsets = record_offsets(&last);
    let cut_record = *offsets.last().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut_record + 10)
        .unwrap();

    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, written[..written.len() - 1]);
    let torn = recovery.torn_tail.unwrap();
    assert_eq!(
        (torn.file.as_path(), torn.offset),
        (last.as_path(), cut_record)
    );
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        TINY.segment_bytes,
        "preallocated again"
    );
}

#[test]
fn truncated_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let middle = segment_files(dir.path())[1].clone();
    let cut = record_offsets(&middle)[1] + 10;
    fs::OpenOptions::new()
        .write(true)
        .open(&middle)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (file, offset, damage) = expect_damage(dir.path(), TINY);
    assert_eq!((file, offset), (middle, cut));
    assert!(
        matches!(damage, Damage::SegmentTruncated { .. }),
        "{damage}"
    );
}

#[test]
fn records_lost_at_the_end_of_a_middle_segment_break_the_chain() {
    // Zeroing whole records at the end of a sealed segment leaves a segment that decodes
    // cleanly; the next segment's chain seed exposes it.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let segments = segment_files(dir.path());
    let middle = &segments[1];
    let last_record = *record_offsets(middle).last().unwrap();
    let mut bytes = fs::read(middle).unwrap();
    bytes[last_record as usize..].fill(0);
    fs::write(middle, &bytes).unwrap();
    let (file, offset, damage) = expect_damage(dir.path(), TINY);
    assert_eq!((&file, offset), (&segments[2], 0));
    assert!(matches!(damage, Damage::ChainBroken { .. }), "{damage}");
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), ROOMY, 20);
    let segment = segment_files(dir.path()).pop().unwrap();
    let end = data_end(&segment);
    let garbage: Vec<u8> = (0..100_u32).map(|i| (i * 97 + 13) as u8 | 1).collect();
    let mut file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.seek(SeekFrom::Start(end)).unwrap();
    file.write_all(&garbage).unwrap();
    drop(file);

    let (_wal, recovery) = open(dir.path(), ROOMY);
    assert_eq!(recovery.records, written);
    let torn = recovery.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes), (end, 100));
}

#[test]
fn garbage_appended_past_the_preallocated_end_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), TINY, 40);
    let last = segment_files(dir.path()).pop().unwrap();
    let end = data_end(&last);
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(b"not a record at all")
        .unwrap();

    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, written);
    let torn = recovery.torn_tail.unwrap();
    assert_eq!(
        (torn.offset, torn.bytes),
        (end, TINY.segment_bytes + 19 - end)
    );
    assert_eq!(fs::metadata(&last).unwrap().len(), TINY.segment_bytes);
}

#[test]
fn missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let segments = segment_files(dir.path());
    fs::remove_file(&segments[2]).unwrap();
    let (file, offset, damage) = expect_damage(dir.path(), TINY);
    assert_eq!((&file, offset), (&segments[3], 0));
    assert!(
        matches!(
            damage,
            Damage::SequenceGap {
                expected: 2,
                found: 3
            }
        ),
        "{damage}"
    );
}

#[test]
fn renamed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let segments = segment_files(dir.path());
    // Swap the contents of two segments: names and headers disagree.
    let (one, two) = (
        fs::read(&segments[1]).unwrap(),
        fs::read(&segments[2]).unwrap(),
    );
    fs::write(&segments[1], two).unwrap();
    fs::write(&segments[2], one).unwrap();
    let (file, _, damage) = expect_damage(dir.path(), TINY);
    assert_eq!(file, segments[1]);
    assert!(matches!(damage, Damage::NameMismatch { .. }), "{damage}");
}

#[test]
fn recovery_twice_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), TINY, 40);
    let last = segment_files(dir.path()).pop().unwrap();
    let cut = *record_offsets(&last).last().unwrap() + 10;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (wal, first) = open(dir.path(), TINY);
    drop(wal);
    assert!(first.torn_tail.is_some());
    let files = snapshot_dir(dir.path());
    let (wal, second) = open(dir.path(), TINY);
    drop(wal);
    assert_eq!(
        (&second.metadata, &second.records),
        (&first.metadata, &first.records)
    );
    assert_eq!(second.torn_tail, None, "nothing left to cut");
    assert_eq!(
        snapshot_dir(dir.path()),
        files,
        "the second recovery changed nothing"
    );
}

#[test]
fn append_after_torn_tail_recovery_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = write_log(dir.path(), TINY, 40);
    let last = segment_files(dir.path()).pop().unwrap();
    let cut = *record_offsets(&last).last().unwrap() + 10;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    expected.pop();

    let (mut wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, expected);
    for index in 41..=60 {
        let batch = vec![
            entry(index, &payload_for(index, 200)),
            hard_state(format!("commit={index}").as_bytes()),
        ];
        append(&mut wal, &batch);
        expected.extend(batch);
    }
    drop(wal);
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, expected);
    assert_eq!(recovery.torn_tail, None);
}

#[test]
fn release_before_keeps_hard_state_snapshot_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::create(dir.path(), METADATA, TINY).unwrap();
    for index in 1..=100_u64 {
        let mut batch = vec![
            entry(index, &payload_for(index, 300)),
            hard_state(format!("commit={index}").as_bytes()),
        ];
        if index == 70 {
            batch.push(snapshot(70, b"snapshot term=1 index=70"));
        }
        append(&mut wal, &batch);
    }
    let segments_before = wal.segment_paths().count();
    wal.release_before(75).unwrap();
    let segments_after = wal.segment_paths().count();
    assert!(
        segments_after < segments_before / 2,
        "{segments_before} -> {segments_after}"
    );
    assert_eq!(
        wal.stats().segments_released as usize,
        segments_before - segments_after
    );
    drop(wal);

    let (mut wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.metadata, METADATA);
    assert_eq!(recovery.hard_state().unwrap().payload, b"commit=100");
    assert_eq!(recovery.snapshot().unwrap().index, 70);
    let entries: Vec<u64> = recovery
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Entry)
        .map(|r| r.index)
        .collect();
    assert_eq!(entries.last(), Some(&100));
    assert!(
        entries.first().is_some_and(|first| *first <= 75),
        "entries from 75 on survive: {entries:?}"
    );
    assert!(entries.windows(2).all(|pair| pair[1] == pair[0] + 1));

    // Release everything releasable: only the segment being written survives, and it
    // still yields the latest state through its header.
    wal.release_before(u64::MAX).unwrap();
    assert_eq!(wal.segment_paths().count(), 1);
    append(
        &mut wal,
        &[OwnedRecord {
            kind: RecordKind::Metadata,
            index: 0,
            payload: b"member=0x1 cluster=0x8".to_vec(),
        }],
    );
    // Force a rollover so the newest state is only in a header, then release again.
    append(&mut wal, &[entry(101, &[7; 3000])]);
    append(&mut wal, &[entry(102, &[8; 3000])]);
    wal.release_before(u64::MAX).unwrap();
    drop(wal);
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.metadata, b"member=0x1 cluster=0x8");
    assert_eq!(recovery.hard_state().unwrap().payload, b"commit=100");
    assert_eq!(recovery.snapshot().unwrap().index, 70);
    assert_eq!(recovery.records.last().unwrap().index, 102);
}

#[test]
fn one_fdatasync_per_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::create(dir.path(), METADATA, ROOMY).unwrap();
    assert_eq!(wal.fsync_count(), 1, "the first segment's header");
    for index in 1..=10 {
        let batch: Vec<OwnedRecord> = (0..8).map(|i| entry(index * 8 + i, b"x")).collect();
        append(&mut wal, &batch);
    }
    assert_eq!(wal.fsync_count(), 11);
    wal.append(&[]).unwrap();
    assert_eq!(wal.fsync_count(), 11, "an empty batch does no I/O");
    assert_eq!(wal.stats().records, 80);
}

#[test]
fn batch_larger_than_a_segment_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::create(dir.path(), METADATA, TINY).unwrap();
    let big = vec![entry(1, &vec![0xab; 10_000]), entry(2, &vec![0xcd; 5_000])];
    append(&mut wal, &big);
    append(&mut wal, &[entry(3, b"small")]);
    drop(wal);
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records[..2], big[..]);
    assert_eq!(recovery.records.len(), 3);
}

#[test]
fn create_open_and_lock_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Wal::exists(dir.path()));
    assert!(matches!(
        Wal::open(dir.path(), TINY),
        Err(OpenError::NotFound { .. })
    ));
    let wal = Wal::create(&dir.path().join("wal"), METADATA, TINY).unwrap();
    assert!(Wal::exists(&dir.path().join("wal")));
    assert!(matches!(
        Wal::create(&dir.path().join("wal"), METADATA, TINY),
        Err(rivet_wal::CreateError::NotEmpty { .. })
    ));
    assert!(matches!(
        Wal::open(&dir.path().join("wal"), TINY),
        Err(OpenError::Locked { .. })
    ));
    drop(wal);
    assert!(matches!(
        Wal::open(
            &dir.path().join("wal"),
            WalOptions {
                segment_bytes: 5000
            }
        ),
        Err(OpenError::Options(_))
    ));
    let (mut wal, _) = open(&dir.path().join("wal"), TINY);
    let bad = rivet_wal::Record {
        kind: RecordKind::HardState,
        index: 3,
        payload: b"",
    };
    assert!(matches!(
        wal.append(&[bad]),
        Err(rivet_wal::AppendError::InvalidRecord { position: 0, .. })
    ));
}

#[test]
fn leftover_temporary_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), TINY, 10);
    let leftover = dir.path().join("00000000000000ff-0000000000000001.wal.tmp");
    fs::write(&leftover, b"half-created segment").unwrap();
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.records, written);
    assert!(!leftover.exists());
}

#[test]
fn metadata_larger_than_a_segment_and_extreme_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = vec![0x6d; 10_000];
    let mut wal = Wal::create(dir.path(), &metadata, TINY).unwrap();
    append(&mut wal, &[entry(u64::MAX, b"last possible index")]);
    // Rollover after an Entry at u64::MAX: the next segment's first index saturates.
    append(&mut wal, &[entry(5, &[1; 4000])]);
    drop(wal);
    let (_wal, recovery) = open(dir.path(), TINY);
    assert_eq!(recovery.metadata, metadata);
    assert_eq!(recovery.records.len(), 2);
}

/// Whether any extent of `path` is reserved but unwritten (`FIEMAP_EXTENT_UNWRITTEN`), or
/// None where the file system does not answer FIEMAP (tmpfs).
fn has_unwritten_extent(path: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd as _;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS: usize = 64;
    // struct fiemap (32 bytes) followed by EXTENTS struct fiemap_extent (56 bytes each).
    let mut buf = vec![0_u64; (32 + 56 * EXTENTS) / 8];
    buf[1] = u64::MAX; // fm_length
                       // fm_flags (low half of word 2), fm_extent_count (low half of word 3).
    buf[2] = u64::from(FIEMAP_FLAG_SYNC);
    buf[3] = EXTENTS as u64;
    let file = fs::File::open(path).unwrap();
    // SAFETY: FIEMAP writes at most EXTENTS extents into the buffer sized for them.
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) } != 0 {
        return None;
    }
    let mapped = (buf[2] >> 32) as usize;
    assert!(mapped < EXTENTS, "more extents than the test reads");
    Some((0..mapped).any(|i| {
        // fe_flags is the u32 at byte 40 of the extent.
        let word = buf[(32 + 56 * i + 40) / 8];
        (word as u32) & FIEMAP_EXTENT_UNWRITTEN != 0
    }))
}

#[test]
fn segments_are_zero_filled_and_made_ahead_of_the_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 256 * 1024,
    };
    let mut wal = Wal::create(dir.path(), METADATA, options).unwrap();
    let mut written = Vec::new();
    for index in 1..=200 {
        let batch = vec![entry(index, &payload_for(index, 4000))];
        append(&mut wal, &batch);
        written.extend(batch);
    }
    let stats = wal.stats();
    assert!(stats.segments_created >= 4, "{stats:?}");
    // Every rollover found its segment made ahead (each segment passes half full long
    // before it rolls over); only the first was made at create.
    assert_eq!(
        stats.segments_from_spare,
        stats.segments_created - 1,
        "{stats:?}"
    );
    let files = segment_files(dir.path());
    for file in &files {
        if let Some(unwritten) = has_unwritten_extent(file) {
            assert!(!unwritten, "{} has unwritten extents", file.display());
        }
    }
    drop(wal);
    // The spare made for the next rollover is left over; open deletes it and recovers
    // everything.
    let (wal, recovery) = open(dir.path(), options);
    assert!(!dir.path().join("spare.wal.tmp").exists());
    let entries: Vec<_> = recovery
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Entry)
        .cloned()
        .collect();
    assert_eq!(entries, written);
    drop(wal);
}
