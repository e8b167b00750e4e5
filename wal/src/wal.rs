//! The `Wal`: create, open (recovery), append, release.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::durable::{Durable, WriteError};
use crate::error::{
    AppendError, CreateError, Damage, InvalidRecord, IoError, OpenError, OptionsError, ReleaseError,
};
use crate::format::{self, AfterDamage, SegmentEnd, SegmentHeader, FLAG_BATCH_START};
use crate::limits::{
    BATCH_BYTES_MAX, PAGE_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
use crate::segment::{self, SegmentName};
use crate::spare::Spare;
use crate::{OwnedRecord, Record, RecordKind, Recovery, TornTail, WalOptions, WalStats};

/// A write-ahead log open for appending. See the crate docs.
pub struct Wal {
    dir: PathBuf,
    /// Held open for the directory flock and for directory fsyncs.
    directory: File,
    options: WalOptions,
    durable: Durable,
    /// The segment being written (always the last of `segments`).
    active: ActiveSegment,
    /// Every live segment, oldest first; the last one is `active`.
    segments: VecDeque<LiveSegment>,
    /// CRC of the last record written: the seed of the next one.
    crc_last: u32,
    /// Index of the last Entry appended (0 before any).
    entry_index_last: u64,
    /// The latest metadata, hard state and snapshot marker, carried into each new
    /// segment's header. Kept in reused buffers so appends do not allocate.
    metadata: Vec<u8>,
    hard_state: Option<Vec<u8>>,
    snapshot: Option<(u64, Vec<u8>)>,
    /// Encoding buffer, reused by every append and rollover.
    buf: Vec<u8>,
    stats: WalStats,
    poisoned: bool,
    /// The next segment's file, zero-filled ahead of the rollover.
    spare: Spare,
}

// The raft core owns its `Wal`; it may be created on one thread and moved to the core.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Wal>();
};

struct ActiveSegment {
    file: File,
    path: PathBuf,
    sequence: u64,
    /// Length the file is preallocated to.
    segment_bytes: u64,
    /// Where the next record goes.
    write_offset: u64,
}

struct LiveSegment {
    path: PathBuf,
    /// The highest Entry index in the segment, None if it holds no Entry.
    entry_index_max: Option<u64>,
}

fn check_options(options: &WalOptions) -> Result<(), OptionsError> {
    let segment_bytes = options.segment_bytes;
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
        return Err(OptionsError::SegmentBytesOutOfRange { segment_bytes });
    }
    if segment_bytes % PAGE_BYTES != 0 {
        return Err(OptionsError::SegmentBytesNotPageMultiple {
            segment_bytes,
            page_bytes: PAGE_BYTES,
        });
    }
    Ok(())
}

/// The size of a new segment: `options.segment_bytes`, or more (in whole pages) when the
/// header with its carried copies plus the batch that triggered it do not fit in that.
fn segment_bytes_for(options: &WalOptions, header: &SegmentHeader<'_>, batch_bytes: u64) -> u64 {
    let needed = format::segment_header_record_bytes(header) as u64 + batch_bytes;
    options
        .segment_bytes
        .max(needed.div_ceil(PAGE_BYTES) * PAGE_BYTES)
}

impl Wal {
    /// Whether `dir` holds a WAL (at least one segment file).
    pub fn exists(dir: &Path) -> bool {
        segment::list_directory(dir).is_ok_and(|listing| !listing.segments.is_empty())
    }

    /// Creates a WAL in a new or empty directory. The metadata (opaque bytes: member id,
    /// cluster id, …) is durable before this returns: the first segment, whose header
    /// carries it, is written, fdatasynced, renamed into place, and the directory (and
    /// its parent, if the directory was created) fsynced.
    pub fn create(dir: &Path, metadata: &[u8], options: WalOptions) -> Result<Wal, CreateError> {
        check_options(&options)?;
        if metadata.len() as u64 > RECORD_PAYLOAD_BYTES_MAX {
            return Err(CreateError::MetadataTooLarge {
                bytes: metadata.len(),
            });
        }
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(CreateError::NotEmpty {
                        dir: dir.to_path_buf(),
                    });
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| IoError::new("create directory", dir, e))?;
                if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    let parent_directory = segment::open_directory(parent)?;
                    segment::sync_directory(&parent_directory, parent)?;
                }
            }
            Err(error) => return Err(IoError::new("read directory", dir, error).into()),
        }
        let directory = segment::open_directory(dir)?;
        if !segment::lock_directory(&directory, dir)? {
            return Err(CreateError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        let mut durable = Durable::default();
        let mut buf = Vec::new();
        let mut header = SegmentHeader {
            sequence: 0,
            first_index: 1,
            segment_bytes: 0,
            chain_seed: 0,
            metadata,
            hard_state: None,
            snapshot: None,
        };
        header.segment_bytes = segment_bytes_for(&options, &header, 0);
        let created = write_segment_file(&mut durable, dir, &directory, &mut buf, &header)?;
        let stats = WalStats {
            directory_syncs: 1,
            segments_created: 1,
            ..WalStats::default()
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            directory,
            options,
            durable,
            active: created.active,
            segments: VecDeque::from([LiveSegment {
                path: created.path,
                entry_index_max: None,
            }]),
            crc_last: created.header_crc,
            entry_index_last: 0,
            metadata: metadata.to_vec(),
            hard_state: None,
            snapshot: None,
            buf: Vec::new(),
            stats,
            poisoned: false,
            spare: Spare::new(dir, options.segment_bytes),
        })
    }

    /// Opens an existing WAL and recovers it. See the crate docs for what is a torn tail
    /// (cut, with a warning, and reported in [`Recovery::torn_tail`]) and what is damage
    /// (refused with [`OpenError::Damaged`], nothing modified).
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), OpenError> {
        check_options(&options)?;
        let directory = match segment::open_directory(dir) {
            Ok(directory) => directory,
            Err(error) if error.source.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound {
                    dir: dir.to_path_buf(),
                })
            }
            Err(error) => return Err(error.into()),
        };
        if !segment::lock_directory(&directory, dir)? {
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        let listing = segment::list_directory(dir)?;
        if let Some(path) = listing.bad_names.first() {
            return Err(OpenError::Damaged {
                file: path.clone(),
                offset: 0,
                damage: Damage::BadFileName,
            });
        }
        if listing.segments.is_empty() {
            return Err(OpenError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        let scanned = scan_segments(&listing.segments)?;

        // Everything is verified; only now may recovery modify files.
        let last = listing
            .segments
            .last()
            .map(|name| name.path.clone())
            .unwrap_or_default();
        let mut directory_syncs = 0;
        let torn_tail = repair_tail(&last, &scanned.tail)?;
        for temporary in &listing.temporaries {
            if temporary.file_name() == Some(segment::SPARE_FILE_NAME.as_ref()) {
                // Made ahead of a rollover that did not come: no sign of trouble.
                tracing::debug!(file = %temporary.display(), "removing the unused spare segment");
            } else {
                tracing::warn!(file = %temporary.display(), "removing the leftover of an interrupted segment creation");
            }
            fs::remove_file(temporary)
                .map_err(|e| IoError::new("remove temporary segment", temporary, e))?;
        }
        if !listing.temporaries.is_empty() {
            segment::sync_directory(&directory, dir)?;
            directory_syncs += 1;
        }

        let file = segment::open_for_writing(&last, false)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            directory,
            options,
            durable: Durable::default(),
            active: ActiveSegment {
                file,
                path: last,
                sequence: scanned.tail.sequence,
                segment_bytes: scanned.tail.segment_bytes,
                write_offset: scanned.tail.end_offset,
            },
            segments: scanned.live,
            crc_last: scanned.crc_last,
            entry_index_last: scanned.entry_index_last,
            metadata: scanned.metadata.clone(),
            hard_state: scanned.hard_state,
            snapshot: scanned.snapshot,
            buf: Vec::new(),
            stats: WalStats {
                directory_syncs,
                ..WalStats::default()
            },
            poisoned: false,
            spare: Spare::new(dir, options.segment_bytes),
        };
        let recovery = Recovery {
            metadata: scanned.metadata,
            records: scanned.records,
            torn_tail,
        };
        Ok((wal, recovery))
    }

    /// Appends `records` durably: ONE write of the whole encoded batch, then ONE
    /// fdatasync; returns once the fdatasync completed.
    /// When the batch does not fit in the current segment, a new preallocated segment is
    /// created first (it gets a larger size if the batch needs it). An empty batch does
    /// nothing.
    ///
    /// Any I/O failure poisons the WAL: later calls return [`AppendError::Poisoned`].
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<(), AppendError> {
        if self.poisoned {
            return Err(AppendError::Poisoned);
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut batch_bytes = 0_u64;
        for (position, record) in records.iter().enumerate() {
            if record.payload.len() as u64 > RECORD_PAYLOAD_BYTES_MAX {
                let reason = InvalidRecord::PayloadTooLarge {
                    bytes: record.payload.len(),
                };
                return Err(AppendError::InvalidRecord { position, reason });
            }
            if !record.kind.has_index() && record.index != 0 {
                let reason = InvalidRecord::IndexNotZero {
                    kind: record.kind,
                    index: record.index,
                };
                return Err(AppendError::InvalidRecord { position, reason });
            }
            batch_bytes += format::record_bytes(record.payload.len()) as u64;
        }
        if batch_bytes > BATCH_BYTES_MAX {
            return Err(AppendError::BatchTooLarge { bytes: batch_bytes });
        }
        if self.active.write_offset + batch_bytes > self.active.segment_bytes {
            let sequence = self.active.sequence + 1;
            self.create_segment(sequence, batch_bytes)?;
        }

        self.buf.clear();
        let mut crc = self.crc_last;
        for (position, record) in records.iter().enumerate() {
            let flags = if position == 0 { FLAG_BATCH_START } else { 0 };
            crc = format::encode_record(
                &mut self.buf,
                crc,
                record.kind as u8,
                flags,
                record.index,
                record.payload,
            );
        }
        assert_eq!(
            self.buf.len() as u64,
            batch_bytes,
            "encoded batch size differs from the computed size"
        );
        let offset = self.active.write_offset;
        let result = self
            .durable
            .write_and_sync(self.active.file.as_raw_fd(), &self.buf, offset);
        self.write_result(result, "append to segment")?;

        self.active.write_offset += batch_bytes;
        self.crc_last = crc;
        if !self.spare.started() && self.active.write_offset >= self.active.segment_bytes / 2 {
            self.spare.start();
        }
        self.stats.appends += 1;
        self.stats.records += records.len() as u64;
        self.stats.bytes_written += batch_bytes;
        for record in records {
            match record.kind {
                RecordKind::Entry => {
                    self.entry_index_last = record.index;
                    if let Some(live) = self.segments.back_mut() {
                        live.entry_index_max = Some(
                            live.entry_index_max
                                .map_or(record.index, |max| max.max(record.index)),
                        );
                    }
                }
                RecordKind::HardState => copy_into(&mut self.hard_state, record.payload),
                RecordKind::Snapshot => {
                    let snapshot = self.snapshot.get_or_insert_with(|| (0, Vec::new()));
                    snapshot.0 = record.index;
                    snapshot.1.clear();
                    snapshot.1.extend_from_slice(record.payload);
                }
                RecordKind::Metadata => {
                    self.metadata.clear();
                    self.metadata.extend_from_slice(record.payload);
                }
            }
        }
        Ok(())
    }

    /// Deletes, oldest first, the segment files none of whose Entry records has an index
    /// at or above `index`, stopping at the first one that has (so the survivors stay a
    /// contiguous run) and never deleting the segment being written. What the deleted
    /// segments held of the hard state, snapshot marker and metadata lives on in the
    /// header of the first surviving segment.
    pub fn release_before(&mut self, index: u64) -> Result<(), ReleaseError> {
        if self.poisoned {
            return Err(ReleaseError::Poisoned);
        }
        let mut released = 0;
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            if oldest.entry_index_max.is_some_and(|max| max >= index) {
                break;
            }
            if let Err(error) = fs::remove_file(&oldest.path) {
                self.poisoned = true;
                return Err(IoError::new("remove segment", &oldest.path, error).into());
            }
            tracing::debug!(file = %oldest.path.display(), index, "released segment");
            self.segments.pop_front();
            released += 1;
        }
        if released > 0 {
            if let Err(error) = segment::sync_directory(&self.directory, &self.dir) {
                self.poisoned = true;
                return Err(error.into());
            }
            self.stats.directory_syncs += 1;
            self.stats.segments_released += released;
        }
        Ok(())
    }

    /// Counters since create/open.
    pub fn stats(&self) -> WalStats {
        WalStats {
            fdatasyncs: self.durable.counts.fdatasyncs,
            short_write_retries: self.durable.counts.short_write_retries,
            ..self.stats
        }
    }

    /// fdatasyncs completed since create/open (appends and segment headers).
    pub fn fsync_count(&self) -> u64 {
        self.durable.counts.fdatasyncs
    }

    /// The directory of this WAL.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options this WAL was opened with.
    pub fn options(&self) -> WalOptions {
        self.options
    }

    /// Paths of the live segment files, oldest first.
    pub fn segment_paths(&self) -> impl Iterator<Item = &Path> {
        self.segments.iter().map(|segment| segment.path.as_path())
    }

    /// Rolls over: creates segment `sequence`, sized for at least `batch_bytes` after its
    /// header, and makes it the active one. Its header carries the chain seed and the
    /// latest metadata, hard state and snapshot marker.
    fn create_segment(&mut self, sequence: u64, batch_bytes: u64) -> Result<(), AppendError> {
        let mut header = SegmentHeader {
            sequence,
            first_index: self.entry_index_last.saturating_add(1),
            segment_bytes: 0,
            chain_seed: self.crc_last,
            metadata: &self.metadata,
            hard_state: self.hard_state.as_deref(),
            snapshot: self
                .snapshot
                .as_ref()
                .map(|(index, payload)| (*index, payload.as_slice())),
        };
        header.segment_bytes = segment_bytes_for(&self.options, &header, batch_bytes);
        let created = match self.spare.take(header.segment_bytes) {
            Some((file, spare)) => {
                self.stats.segments_from_spare += 1;
                install_segment(
                    &mut self.durable,
                    &self.dir,
                    &self.directory,
                    &mut self.buf,
                    &header,
                    file,
                    &spare,
                )
            }
            None => write_segment_file(
                &mut self.durable,
                &self.dir,
                &self.directory,
                &mut self.buf,
                &header,
            ),
        };
        match created {
            Ok(created) => {
                self.stats.directory_syncs += 1;
                self.stats.segments_created += 1;
                self.active = created.active;
                self.segments.push_back(LiveSegment {
                    path: created.path,
                    entry_index_max: None,
                });
                self.crc_last = created.header_crc;
                Ok(())
            }
            Err(error) => Err(self.poison(error)),
        }
    }

    fn poison(&mut self, error: IoError) -> AppendError {
        self.poisoned = true;
        AppendError::Io(error)
    }

    fn write_result(
        &mut self,
        result: Result<(), WriteError>,
        operation: &'static str,
    ) -> Result<(), AppendError> {
        result.map_err(|error| {
            let error = io_error(error, operation, &self.active.path);
            self.poison(error)
        })
    }
}

/// A segment file written by [`write_segment_file`].
struct CreatedSegment {
    active: ActiveSegment,
    path: PathBuf,
    header_crc: u32,
}

/// The WAL's error for a failed write or fdatasync of `path`, logged.
fn io_error(error: WriteError, operation: &'static str, path: &Path) -> IoError {
    tracing::error!(file = %path.display(), source = %error.source, write_operation = error.operation, "WAL write failed");
    IoError::new(operation, path, error.source)
}

/// Creates the segment file for `header`: under a temporary name, preallocated and
/// zero-filled to `header.segment_bytes` ([`segment::zero_fill`]), then installed
/// ([`install_segment`]).
fn write_segment_file(
    durable: &mut Durable,
    dir: &Path,
    directory: &File,
    buf: &mut Vec<u8>,
    header: &SegmentHeader<'_>,
) -> Result<CreatedSegment, IoError> {
    let temporary = dir.join(segment::temporary_file_name(
        header.sequence,
        header.first_index,
    ));
    let file = segment::open_for_writing(&temporary, true)?;
    segment::preallocate(&file, &temporary, header.segment_bytes)?;
    segment::zero_fill(&file, &temporary, 0, header.segment_bytes)?;
    install_segment(durable, dir, directory, buf, header, file, &temporary)
}

/// Makes `file` (at the temporary path `temporary`, zero-filled to `header.segment_bytes`)
/// the segment of `header`: header record written and fdatasynced, then renamed into place
/// and the directory fsynced. So a segment that has its name always has a valid header,
/// and the records appended after it chain from the returned header CRC.
fn install_segment(
    durable: &mut Durable,
    dir: &Path,
    directory: &File,
    buf: &mut Vec<u8>,
    header: &SegmentHeader<'_>,
    file: File,
    temporary: &Path,
) -> Result<CreatedSegment, IoError> {
    buf.clear();
    let header_crc = format::encode_segment_header(buf, header);
    let name = segment::segment_file_name(header.sequence, header.first_index);
    let path = dir.join(&name);
    durable
        .write_and_sync(file.as_raw_fd(), buf, 0)
        .map_err(|error| io_error(error, "write segment header", temporary))?;
    fs::rename(temporary, &path).map_err(|e| IoError::new("rename segment", temporary, e))?;
    segment::sync_directory(directory, dir)?;
    tracing::debug!(file = %path.display(), segment_bytes = header.segment_bytes, "created segment");
    let active = ActiveSegment {
        file,
        path: path.clone(),
        sequence: header.sequence,
        segment_bytes: header.segment_bytes,
        write_offset: buf.len() as u64,
    };
    Ok(CreatedSegment {
        active,
        path,
        header_crc,
    })
}

fn copy_into(slot: &mut Option<Vec<u8>>, payload: &[u8]) {
    let buffer = slot.get_or_insert_with(Vec::new);
    buffer.clear();
    buffer.extend_from_slice(payload);
}

/// What recovery needs to know about the last segment to repair it.
struct Tail {
    sequence: u64,
    segment_bytes: u64,
    /// File length found on disk.
    file_bytes: u64,
    /// End of the valid data: the next append goes here.
    end_offset: u64,
    /// End of the non-zero data (>= end_offset).
    nonzero_end: u64,
    /// Why the valid data ends before the non-zero data, if it does.
    problem: Option<format::RecordProblem>,
}

/// Everything read by [`scan_segments`].
struct Scanned {
    records: Vec<OwnedRecord>,
    metadata: Vec<u8>,
    hard_state: Option<Vec<u8>>,
    snapshot: Option<(u64, Vec<u8>)>,
    live: VecDeque<LiveSegment>,
    crc_last: u32,
    entry_index_last: u64,
    tail: Tail,
}

/// Reads and verifies every segment, classifying damage. Modifies nothing.
fn scan_segments(names: &[SegmentName]) -> Result<Scanned, OpenError> {
    let damaged = |name: &SegmentName, offset: u64, damage: Damage| OpenError::Damaged {
        file: name.path.clone(),
        offset,
        damage,
    };
    let mut scanned = Scanned {
        records: Vec::new(),
        metadata: Vec::new(),
        hard_state: None,
        snapshot: None,
        live: VecDeque::new(),
        crc_last: 0,
        entry_index_last: 0,
        tail: Tail {
            sequence: 0,
            segment_bytes: 0,
            file_bytes: 0,
            end_offset: 0,
            nonzero_end: 0,
            problem: None,
        },
    };
    let mut bytes = Vec::new();
    for (position, name) in names.iter().enumerate() {
        let is_last = position + 1 == names.len();
        if let Some(previous) = position
            .checked_sub(1)
            .and_then(|previous| names.get(previous))
        {
            let expected = previous.sequence.saturating_add(1);
            if name.sequence != expected {
                let damage = Damage::SequenceGap {
                    expected,
                    found: name.sequence,
                };
                return Err(damaged(name, 0, damage));
            }
        }
        bytes.clear();
        let mut file =
            File::open(&name.path).map_err(|e| IoError::new("open segment", &name.path, e))?;
        io::Read::read_to_end(&mut file, &mut bytes)
            .map_err(|e| IoError::new("read segment", &name.path, e))?;
        let decoded = format::decode_segment_bytes(&bytes)
            .map_err(|problem| damaged(name, 0, Damage::Header(problem)))?;
        let header = &decoded.header;
        if (header.sequence, header.first_index) != (name.sequence, name.first_index) {
            let damage = Damage::NameMismatch {
                name_sequence: name.sequence,
                name_index: name.first_index,
                header_sequence: header.sequence,
                header_index: header.first_index,
            };
            return Err(damaged(name, 0, damage));
        }
        if position > 0 && header.chain_seed != scanned.crc_last {
            let damage = Damage::ChainBroken {
                chain_seed: header.chain_seed,
                previous_crc: scanned.crc_last,
            };
            return Err(damaged(name, 0, damage));
        }
        let file_bytes = bytes.len() as u64;
        if !is_last && file_bytes < header.segment_bytes {
            let damage = Damage::SegmentTruncated {
                expected: header.segment_bytes,
                actual: file_bytes,
            };
            return Err(damaged(name, file_bytes, damage));
        }
        let problem = match decoded.end {
            SegmentEnd::Clean { .. } => None,
            SegmentEnd::Invalid {
                offset,
                problem,
                after,
            } => {
                let damage = match after {
                    _ if !is_last => Some(Damage::InSealedSegment { problem }),
                    AfterDamage::ValidBatchAt { offset: resumes_at } => {
                        Some(Damage::ValidDataAfter {
                            problem,
                            resumes_at,
                        })
                    }
                    AfterDamage::Undecided => Some(Damage::Undecided { problem }),
                    AfterDamage::NothingValid => None,
                };
                if let Some(damage) = damage {
                    return Err(damaged(name, offset, damage));
                }
                Some(problem)
            }
        };

        if position == 0 {
            // Copies of what the (released) earlier segments held come first.
            scanned.metadata = header.metadata.to_vec();
            if let Some((index, payload)) = header.snapshot {
                scanned.records.push(OwnedRecord {
                    kind: RecordKind::Snapshot,
                    index,
                    payload: payload.to_vec(),
                });
                scanned.snapshot = Some((index, payload.to_vec()));
            }
            if let Some(payload) = header.hard_state {
                scanned.records.push(OwnedRecord {
                    kind: RecordKind::HardState,
                    index: 0,
                    payload: payload.to_vec(),
                });
                scanned.hard_state = Some(payload.to_vec());
            }
            scanned.entry_index_last = header.first_index.saturating_sub(1);
        }
        let mut entry_index_max = None;
        for record in &decoded.records {
            let Some(kind) = RecordKind::from_byte(record.kind) else {
                let problem = format::RecordProblem::UnknownKind { kind: record.kind };
                return Err(damaged(name, record.offset, Damage::Record { problem }));
            };
            match kind {
                RecordKind::Entry => {
                    entry_index_max = Some(
                        entry_index_max.map_or(record.index, |max: u64| max.max(record.index)),
                    );
                    scanned.entry_index_last = record.index;
                }
                RecordKind::HardState => scanned.hard_state = Some(record.payload.to_vec()),
                RecordKind::Snapshot => {
                    scanned.snapshot = Some((record.index, record.payload.to_vec()))
                }
                RecordKind::Metadata => scanned.metadata = record.payload.to_vec(),
            }
            scanned.records.push(OwnedRecord {
                kind,
                index: record.index,
                payload: record.payload.to_vec(),
            });
        }
        scanned.live.push_back(LiveSegment {
            path: name.path.clone(),
            entry_index_max,
        });
        scanned.crc_last = decoded.crc_last;
        let end_offset = decoded.end.offset();
        let nonzero_end = bytes
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(0, |last| last as u64 + 1);
        scanned.tail = Tail {
            sequence: header.sequence,
            segment_bytes: header.segment_bytes,
            file_bytes,
            end_offset,
            nonzero_end: nonzero_end.max(end_offset),
            problem,
        };
    }
    Ok(scanned)
}

/// Cuts the torn tail of the last segment, if it has one, and restores its preallocated
/// length: truncate to the end of the valid data, preallocate again and zero-fill the cut
/// part, fdatasync. Idempotent: a second recovery finds nothing to do.
fn repair_tail(path: &Path, tail: &Tail) -> Result<Option<TornTail>, IoError> {
    let cut_bytes = tail.nonzero_end - tail.end_offset;
    if cut_bytes == 0 && tail.file_bytes == tail.segment_bytes {
        return Ok(None);
    }
    let reason = tail.problem.map_or_else(
        || "segment file length differs from its header".to_string(),
        |p| p.to_string(),
    );
    tracing::warn!(
        file = %path.display(),
        offset = tail.end_offset,
        bytes = cut_bytes,
        file_bytes = tail.file_bytes,
        segment_bytes = tail.segment_bytes,
        %reason,
        "WAL torn tail: cutting {cut_bytes} bytes at offset {} of {}", tail.end_offset, path.display()
    );
    let file = segment::open_for_writing(path, false)?;
    file.set_len(tail.end_offset)
        .map_err(|e| IoError::new("truncate torn tail", path, e))?;
    segment::preallocate(&file, path, tail.segment_bytes)?;
    segment::zero_fill(&file, path, tail.end_offset, tail.segment_bytes)?;
    Ok(Some(TornTail {
        file: path.to_path_buf(),
        offset: tail.end_offset,
        bytes: cut_bytes,
    }))
}
