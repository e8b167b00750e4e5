//! A page file that is open: appending records into the mapped active segment, reading
//! them back zero-copy, checkpoints (sync, then a checkpoint record), and the segment
//! files themselves. Opening one at a checkpoint is in [`super::recovery`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

use super::format::*;
use super::manifest::Manifest;
use super::sync::{SyncJob, SyncTarget, Synced};
use crate::limits::{SEGMENT_ALIGNMENT_BYTES, SEGMENT_BYTES_DEFAULT};

/// How a page file is laid out on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageOptions {
    /// The size of a segment file: a multiple of [`SEGMENT_ALIGNMENT_BYTES`] between
    /// [`crate::limits::SEGMENT_BYTES_MIN`] and [`crate::limits::SEGMENT_BYTES_MAX`]. Tests use the minimum so that
    /// rollover happens every few records.
    pub segment_bytes: u32,
}

impl Default for PageOptions {
    fn default() -> PageOptions {
        PageOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// Why [`PageFile::checkpoint`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint applied index {given} must exceed the previous checkpoint's {previous}")]
    NotIncreasing { previous: u64, given: u64 },
    #[error(
        "syncing {} failed: {source}; the page file is now unusable, reopen it",
        path.display()
    )]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("appending the checkpoint record failed: {0}")]
    Append(#[from] AppendError),
    #[error(
        "writing the checkpoint record into {} failed: {source}; the page file is now \
         unusable, reopen it",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a checkpoint step came out of order: {0}")]
    OutOfOrder(&'static str),
}

/// Why [`PageFile::read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("page pointer {ptr}: no such segment")]
    NoSuchSegment { ptr: PagePtr },
    #[error(
        "page pointer {ptr}: outside the {data_end} written bytes of its segment, or misaligned"
    )]
    OutOfBounds { ptr: PagePtr, data_end: usize },
    #[error("page pointer {ptr}: a checkpoint record, not a key record")]
    NotAKeyRecord { ptr: PagePtr },
    #[error("page pointer {ptr} in {}: {error}", path.display())]
    Damaged {
        ptr: PagePtr,
        path: PathBuf,
        error: DecodeError,
    },
}

// ---------------------------------------------------------------------------------------
// Files.
// ---------------------------------------------------------------------------------------

pub(super) fn segment_file_name(id: u32) -> String {
    format!("{id:010}.page")
}

/// The file name of relocated segment `generation` (1 or 2) of `slot`.
pub(super) fn relocated_file_name(slot: u32, generation: u8) -> String {
    format!("{slot:010}.r{generation}.page")
}

/// The segment id in a chain segment's file name, `0000000042.page`.
pub(super) fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".page")?;
    if digits.len() != 10 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|slot| *slot <= SLOT_MAX)
}

/// The slot and generation in a relocated segment's file name, `0000000042.r1.page`.
pub(super) fn parse_relocated_file_name(name: &str) -> Option<(u32, u8)> {
    let rest = name.strip_suffix(".page")?;
    let (digits, generation) = rest.split_once(".r")?;
    let generation = match generation {
        "1" => 1,
        "2" => 2,
        _ => return None,
    };
    if digits.len() != 10 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let slot = digits.parse().ok().filter(|slot| *slot <= SLOT_MAX)?;
    Some((slot, generation))
}

pub(super) fn retry_interrupted(mut call: impl FnMut() -> libc::c_int) -> io::Result<()> {
    loop {
        if call() == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

pub(super) fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

/// Writes zeros over `length` bytes at `offset`, one chunk at a time.
pub(super) fn write_zeros(file: &File, offset: u64, length: u64) -> io::Result<()> {
    const CHUNK: u64 = 1024 * 1024;
    let zeros = vec![0_u8; 1024 * 1024];
    let mut done = 0;
    while done < length {
        let chunk = (length - done).min(CHUNK);
        let slice = zeros
            .get(..usize::try_from(chunk).unwrap_or(zeros.len()))
            .unwrap_or_default();
        file.write_all_at(slice, offset + done)?;
        done += chunk;
    }
    Ok(())
}

/// Reserves `bytes` of disk blocks for a new, empty `file` and sets its length.
///
/// The blocks must really be allocated, not just a sparse length: writing through a
/// mapping into a hole on a full disk raises `SIGBUS` instead of returning an error.
/// `fallocate` reserves them at once; where the filesystem lacks it, zeros are written.
pub(super) fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    rivet_wal::faults::page_reserve(bytes)?;
    let length = libc::off_t::try_from(bytes).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for as long as `file` lives; fallocate reads no memory.
    let result = retry_interrupted(|| unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) });
    match result {
        Err(error) if is_unsupported(&error) => {
            file.set_len(bytes)?;
            write_zeros(file, 0, bytes)
        }
        other => other,
    }
}

/// Zeros `length` bytes of `file` at `offset` without changing its length.
pub(super) fn zero_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let start = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let count = libc::off_t::try_from(length).map_err(io::Error::other)?;
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: as in `preallocate`.
    let result =
        retry_interrupted(|| unsafe { libc::fallocate(file.as_raw_fd(), mode, start, count) });
    match result {
        Err(error) if is_unsupported(&error) => write_zeros(file, offset, length),
        other => other,
    }
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a segment holds, for garbage collection and the size metrics: bytes of key
/// records in it, and how many of them are live (a version the index holds) or pinned (a
/// dead tombstone kept because older records of its key may remain elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Key record bytes (padded), live or not.
    pub key_bytes: u64,
    pub live_bytes: u64,
    pub pinned_bytes: u64,
    /// The newest mod revision among the segment's key records (0: none).
    pub last_revision: i64,
}

impl SegmentStats {
    /// Dead key record bytes that garbage collection may drop (pinned ones excluded).
    #[must_use]
    pub fn droppable_bytes(&self) -> u64 {
        self.key_bytes
            .saturating_sub(self.live_bytes)
            .saturating_sub(self.pinned_bytes)
    }

    /// Key record bytes that are not live (pinned ones included).
    #[must_use]
    pub fn dead_bytes(&self) -> u64 {
        self.key_bytes.saturating_sub(self.live_bytes)
    }
}

/// The segment being appended to: mapped read-write. Always a chain segment.
pub(super) struct ActiveSegment {
    /// Its slot (the number in its file name).
    pub(super) id: u32,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) map: MmapMut,
    /// Where the next record goes; every byte from here to the end of the file is zero.
    pub(super) write_offset: usize,
    /// Bytes before this offset are durable.
    pub(super) synced_offset: usize,
    /// Pages before this offset were let go of by this mapping (see
    /// [`crate::limits::PAGE_RESIDENT_APPEND_BYTES`]).
    pub(super) released_offset: usize,
    pub(super) stats: SegmentStats,
}

/// A segment no longer appended to (a sealed chain segment or a relocated one): mapped
/// read-only. The mapping is shared, so that a reader that took it (a snapshot stream)
/// keeps it valid after garbage collection removed the segment.
pub(super) struct SealedSegment {
    /// Its key: slot and generation.
    pub(super) key: u32,
    pub(super) path: PathBuf,
    pub(super) map: Arc<Mmap>,
    pub(super) data_end: usize,
    /// Kept while the segment has bytes that the next checkpoint must sync.
    pub(super) unsynced_file: Option<File>,
    pub(super) stats: SegmentStats,
}

/// A read-only view of one segment's written bytes that outlives changes to the page
/// file (see [`PageFile::segment_views`]).
#[derive(Clone)]
pub struct SegmentView {
    pub key: u32,
    map: Arc<Mmap>,
    pub data_end: usize,
}

impl SegmentView {
    /// The segment's bytes up to the end of its records.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.map.get(..self.data_end).unwrap_or_default()
    }
}

impl ActiveSegment {
    /// Unmaps the whole pages written so far from this process (they stay in the page
    /// cache, dirty ones included: a shared file mapping hands its dirty bits to the page
    /// cache when unmapped). A later read or write of those bytes maps the cached page
    /// again. Then starts writing them back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`,
    /// which does not wait): the next checkpoint's sync, which alone makes them durable,
    /// then finds at most one step's worth still dirty. Left to the checkpoint, a whole
    /// checkpoint interval's pages (~33 MB after 100,000 puts of 256 bytes) went to the
    /// disk at once, every member's at the same index, and the WAL's fdatasyncs queued
    /// behind them: an 80 ms stall of every write, three members, 2026-12-07.
    fn release_written(&mut self) {
        const PAGE: usize = crate::limits::SEGMENT_ALIGNMENT_BYTES as usize;
        let end = self.write_offset / PAGE * PAGE;
        if end <= self.released_offset {
            return;
        }
        let start = self.released_offset;
        // SAFETY: the mapping is a shared mapping of a file: MADV_DONTNEED only drops this
        // process's page table entries, never the file's bytes, and no reference into
        // the mapping is alive here (`&mut self`).
        let released = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        match released {
            Ok(()) => self.released_offset = end,
            Err(error) => {
                // Only memory is at stake: these pages stay mapped, and the next step
                // tries the 4 MiB after them (not every append: a system call each).
                self.released_offset = self.write_offset;
                tracing::debug!(path = %self.path.display(), %error, "madvise(DONTNEED) failed");
            }
        }
        let (Ok(offset), Ok(length)) = (
            libc::off64_t::try_from(start),
            libc::off64_t::try_from(end - start),
        ) else {
            return;
        };
        // SAFETY: sync_file_range on a file descriptor we own; no memory is passed.
        let started = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                length,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if started != 0 {
            // Only timing is at stake: the checkpoint's sync writes these pages anyway.
            let error = io::Error::last_os_error();
            tracing::debug!(path = %self.path.display(), %error, "sync_file_range failed");
        }
    }
}

/// Turns off readahead for a mapping that records are appended to. A write fault on a
/// preallocated (unwritten) range otherwise reads ahead as far as the device's readahead
/// goes (8 MiB on the development VM): the faulting thread then zeroes megabytes of page
/// cache at once, which held the shard core for 20–30 ms every few MiB of appends and
/// made every put in flight wait (2026-12-07: the waves in the put p99 at 1000 clients).
/// Without it, each fault zeroes one page, spread evenly over the appends.
pub(super) fn without_readahead(map: &MmapMut, path: &Path) {
    if let Err(error) = map.advise(memmap2::Advice::Random) {
        tracing::debug!(path = %path.display(), %error, "madvise(RANDOM) failed");
    }
}

/// Creates segment `id` of `file_bytes` bytes, preallocated and mapped, with its header
/// written. On failure the file is removed again.
pub(super) fn create_segment(
    dir: &Path,
    id: u32,
    file_bytes: u32,
    previous_end: u32,
) -> Result<ActiveSegment, AppendError> {
    let path = dir.join(segment_file_name(id));
    let created = (|| -> io::Result<(File, MmapMut)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, u64::from(file_bytes))?;
        // SAFETY: the page file owns its directory; no other process or mapping changes
        // this file while it is mapped (documented on `PageFile`).
        let map = unsafe { MmapOptions::new().len(file_bytes as usize).map_mut(&file)? };
        without_readahead(&map, &path);
        Ok((file, map))
    })();
    let (file, mut map) = match created {
        Ok(created) => created,
        Err(source) => {
            if let Err(error) = fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), %error, "removing a failed segment");
            }
            return Err(AppendError::CreateSegment { path, source });
        }
    };
    let header = encode_segment_header(&SegmentHeader {
        id,
        file_bytes,
        previous_end,
    });
    put(&mut map, 0, &header);
    Ok(ActiveSegment {
        id,
        path,
        file,
        map,
        write_offset: SEGMENT_HEADER_BYTES,
        synced_offset: 0,
        released_offset: 0,
        stats: SegmentStats::default(),
    })
}

/// Where the record of the checkpoint in the making goes: reserved (zeros) when the
/// checkpoint begins, right after the records it covers, and written once they are
/// durable. Records appended meanwhile go after it, so they belong to the tail a restart
/// at this checkpoint discards (the WAL replays them), and a scan stops at the zeros
/// (the end of the records) before the record is written.
pub(super) struct ReservedCheckpoint {
    /// The slot of the segment it lies in: the active one when reserved, maybe sealed
    /// since (the appends after it filled that segment).
    id: u32,
    offset: usize,
    /// A descriptor of that segment, to write the record if it was sealed (its mapping
    /// is read-only then) and to sync it; taken when the record is written.
    file: Option<File>,
}

/// The page file of one shard. See the module documentation.
///
/// Safety of the mappings: the page file assumes it alone writes the files in its
/// directory while it is open. Another process truncating or writing a segment would
/// change bytes that `read` has lent out.
pub struct PageFile {
    pub(super) dir: PathBuf,
    pub(super) options: PageOptions,
    /// Sealed chain segments and relocated segments, by key (slot, then generation).
    pub(super) sealed: BTreeMap<u32, SealedSegment>,
    pub(super) active: ActiveSegment,
    /// Which slots garbage collection rewrote or emptied.
    pub(super) manifest: Manifest,
    /// A segment garbage collection is writing (see [`super::gc`]).
    pub(super) relocation: Option<Relocation>,
    /// Segments garbage collection replaced, kept mapped until the index no longer points
    /// into them ([`PageFile::relocation_release`]).
    pub(super) retiring: Vec<SealedSegment>,
    pub(super) last_checkpoint_index: u64,
    /// The slot of the last checkpoint record.
    pub(super) last_checkpoint_slot: u32,
    /// The last checkpoint record (written or loaded).
    pub(super) last_checkpoint: Option<Checkpoint>,
    /// The place reserved for the record of the checkpoint in the making, between
    /// [`PageFile::checkpoint_begin`] and [`PageFile::checkpoint_end`].
    pub(super) reserved_checkpoint: Option<ReservedCheckpoint>,
    /// Segment files were created or removed since the directory was last synced.
    pub(super) dir_unsynced: bool,
    /// A sync failed: the state of the page cache is unknown (fsyncgate), so every
    /// further append and checkpoint fails until the page file is reopened.
    pub(super) poisoned: bool,
}

impl fmt::Debug for PageFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PageFile")
            .field("dir", &self.dir)
            .field("segments", &(self.sealed.len() + 1))
            .field("active_segment", &self.active.id)
            .field("write_offset", &self.active.write_offset)
            .field("last_checkpoint_index", &self.last_checkpoint_index)
            .finish_non_exhaustive()
    }
}

impl PageFile {
    /// Appends a key record and returns where it lives. In steady state this is a `memcpy`
    /// into the mapping, with no system call; when the record does not fit in the current
    /// segment a new one is created. Not durable until the next [`PageFile::checkpoint`].
    pub fn append(&mut self, record: &KeyRecord<'_>) -> Result<PagePtr, AppendError> {
        let length = key_record_length(record)?;
        let offset = self.reserve(length)?;
        let end = offset + length;
        let destination = self
            .active
            .map
            .get_mut(offset..end)
            .ok_or(AppendError::TooLarge {
                bytes: length as u64,
            })?;
        encode_key_record_into(destination, record);
        debug_assert!(
            matches!(
                decode_record_at(&self.active.map, offset),
                Ok(Some((Record::Key(view), _))) if view == *record
            ),
            "the record just written at {}:{offset} does not read back",
            self.active.id
        );
        // `reserve` checked that the aligned end fits the segment.
        self.active.write_offset = align_record(end).unwrap_or(end);
        if self.active.write_offset - self.active.released_offset
            >= crate::limits::PAGE_RESIDENT_APPEND_BYTES
        {
            self.active.release_written();
        }
        let padded = (self.active.write_offset - offset) as u64;
        let stats = &mut self.active.stats;
        stats.key_bytes += padded;
        stats.live_bytes += padded;
        stats.last_revision = stats.last_revision.max(record.mod_revision);
        Ok(PagePtr::new(
            self.active.id,
            u32::try_from(offset).unwrap_or(u32::MAX),
        ))
    }

    /// Makes room for a record of `length` bytes in the active segment, rolling over to a
    /// new segment if needed, and returns the offset where it goes.
    fn reserve(&mut self, length: usize) -> Result<usize, AppendError> {
        if self.poisoned {
            return Err(AppendError::Poisoned);
        }
        let too_large = AppendError::TooLarge {
            bytes: length as u64,
        };
        let padded = align_record(length).ok_or(too_large)?;
        let offset = self.active.write_offset;
        if offset.saturating_add(padded) <= self.active.map.len() {
            return Ok(offset);
        }
        self.roll_over(padded)?;
        Ok(self.active.write_offset)
    }

    /// Seals the active segment and starts a new one that fits `padded` record bytes.
    fn roll_over(&mut self, padded: usize) -> Result<(), AppendError> {
        let alignment = SEGMENT_ALIGNMENT_BYTES as usize;
        let needed = (SEGMENT_HEADER_BYTES + padded).div_ceil(alignment) * alignment;
        let file_bytes =
            u32::try_from(needed.max(self.options.segment_bytes as usize)).map_err(|_| {
                AppendError::TooLarge {
                    bytes: padded as u64,
                }
            })?;
        let id = self
            .active
            .id
            .checked_add(1)
            .filter(|id| *id <= SLOT_MAX)
            .ok_or(AppendError::SegmentIdsExhausted)?;
        // Map the old segment read-only first: if that fails, nothing has changed.
        // SAFETY: see `create_segment`.
        let sealed_map = unsafe { Mmap::map(&self.active.file) }.map_err(|source| {
            AppendError::CreateSegment {
                path: self.active.path.clone(),
                source,
            }
        })?;
        let data_end = self.active.write_offset;
        let previous_end = u32::try_from(data_end).unwrap_or(u32::MAX);
        let next = create_segment(&self.dir, id, file_bytes, previous_end)?;
        let old = std::mem::replace(&mut self.active, next);
        // Dropping the old read-write mapping leaves its dirty pages in the page cache;
        // syncing the file writes them.
        let unsynced = old.synced_offset < old.write_offset;
        let key = segment_key(old.id, 0);
        self.sealed.insert(
            key,
            SealedSegment {
                key,
                path: old.path,
                map: Arc::new(sealed_map),
                data_end,
                unsynced_file: unsynced.then_some(old.file),
                stats: old.stats,
            },
        );
        self.dir_unsynced = true;
        Ok(())
    }

    /// Seals the active segment now and starts a new one, so that everything appended so
    /// far lies in sealed segments (a defragmentation wants the active segment's dead
    /// records too). Does nothing if the active segment holds no record yet.
    pub fn seal_active(&mut self) -> Result<(), AppendError> {
        if self.poisoned {
            return Err(AppendError::Poisoned);
        }
        if self.active.write_offset == SEGMENT_HEADER_BYTES {
            return Ok(());
        }
        self.roll_over(0)
    }

    /// The bytes, data end and path of the segment with key `key`, if it exists.
    fn segment_bytes(&self, key: u32) -> Option<(&[u8], usize, &Path)> {
        if key == segment_key(self.active.id, 0) {
            return Some((
                &self.active.map,
                self.active.write_offset,
                &self.active.path,
            ));
        }
        if let Some(segment) = self.sealed.get(&key) {
            return Some((&segment.map, segment.data_end, &segment.path));
        }
        if let Some(relocation) = &self.relocation {
            if relocation.key == key {
                return Some((&relocation.map, relocation.write_offset, &relocation.path));
            }
        }
        self.retiring
            .iter()
            .find(|segment| segment.key == key)
            .map(|segment| (&segment.map[..], segment.data_end, segment.path.as_path()))
    }

    /// The padded length of the record at `ptr`, read from its header; 0 if `ptr` does not
    /// point at a record.
    #[must_use]
    pub fn record_bytes(&self, ptr: PagePtr) -> u64 {
        let Some((bytes, data_end, _)) = self.segment_bytes(ptr.segment_key()) else {
            return 0;
        };
        let offset = ptr.offset() as usize;
        if offset.saturating_add(RECORD_COMMON_BYTES) > data_end {
            return 0;
        }
        field_u32(bytes, offset + RECORD_LENGTH_OFFSET)
            .and_then(|length| align_record(length as usize))
            .map_or(0, |length| length as u64)
    }

    fn stats_mut(&mut self, key: u32) -> Option<&mut SegmentStats> {
        if key == segment_key(self.active.id, 0) {
            return Some(&mut self.active.stats);
        }
        if let Some(segment) = self.sealed.get_mut(&key) {
            return Some(&mut segment.stats);
        }
        self.retiring
            .iter_mut()
            .find(|segment| segment.key == key)
            .map(|segment| &mut segment.stats)
    }

    /// The record at `ptr` is no longer live (the index dropped its version): its bytes
    /// count as dead in its segment from now on.
    pub fn release(&mut self, ptr: PagePtr) {
        let bytes = self.record_bytes(ptr);
        if let Some(stats) = self.stats_mut(ptr.segment_key()) {
            stats.live_bytes = stats.live_bytes.saturating_sub(bytes);
        }
    }

    /// Counts the live records again: every segment's live bytes are set from `live`,
    /// the pointers of every version the index holds (after opening, when the index is
    /// rebuilt and compacted).
    pub fn recount_live(&mut self, live: impl IntoIterator<Item = PagePtr>) {
        self.active.stats.live_bytes = 0;
        self.active.stats.pinned_bytes = 0;
        for segment in self.sealed.values_mut() {
            segment.stats.live_bytes = 0;
            segment.stats.pinned_bytes = 0;
        }
        for ptr in live {
            let bytes = self.record_bytes(ptr);
            if let Some(stats) = self.stats_mut(ptr.segment_key()) {
                stats.live_bytes += bytes;
            }
        }
    }

    /// Every segment's key and stats, in key order, the active one last.
    #[must_use]
    pub fn segment_stats(&self) -> Vec<(u32, SegmentStats)> {
        let mut stats: Vec<(u32, SegmentStats)> = self
            .sealed
            .iter()
            .map(|(key, segment)| (*key, segment.stats))
            .collect();
        stats.push((segment_key(self.active.id, 0), self.active.stats));
        stats
    }

    /// Read-only views of every segment as it is now, in key order: a reader that must
    /// see the records of this moment across later appends and garbage collection (a
    /// snapshot stream) holds them. The active segment is mapped once more, read-only;
    /// its view ends at its current end.
    pub fn segment_views(&self) -> io::Result<Vec<SegmentView>> {
        let mut views: Vec<SegmentView> = self
            .sealed
            .iter()
            .map(|(key, segment)| SegmentView {
                key: *key,
                map: Arc::clone(&segment.map),
                data_end: segment.data_end,
            })
            .collect();
        // SAFETY: see `create_segment`; appends only write past `write_offset`.
        let active = unsafe { Mmap::map(&self.active.file) }?;
        views.push(SegmentView {
            key: segment_key(self.active.id, 0),
            map: Arc::new(active),
            data_end: self.active.write_offset,
        });
        Ok(views)
    }

    /// Reads the key record at `ptr`, zero-copy from the mapping.
    ///
    /// Checks that `ptr` lies within the written bytes of an existing segment, that the
    /// record is a key record, and verifies its CRC. The CRC check is kept on every read:
    /// crc32c runs in hardware (SSE 4.2 / ARMv8 CRC) at several GB/s, so for the small
    /// values etcd stores it costs tens of nanoseconds, and it catches bytes damaged on
    /// disk after the file was loaded before they reach a client.
    pub fn read(&self, ptr: PagePtr) -> Result<RecordView<'_>, ReadError> {
        let (bytes, data_end, path) = self
            .segment_bytes(ptr.segment_key())
            .ok_or(ReadError::NoSuchSegment { ptr })?;
        let offset = ptr.offset() as usize;
        if offset < SEGMENT_HEADER_BYTES
            || offset % RECORD_ALIGNMENT != 0
            || offset.saturating_add(KEY_RECORD_HEADER_BYTES) > data_end
        {
            return Err(ReadError::OutOfBounds { ptr, data_end });
        }
        let written = bytes.get(..data_end).unwrap_or_default();
        match decode_record_at(written, offset) {
            Ok(Some((Record::Key(view), _))) => Ok(view),
            Ok(Some((Record::Checkpoint(_), _))) => Err(ReadError::NotAKeyRecord { ptr }),
            Ok(None) => Err(ReadError::OutOfBounds { ptr, data_end }),
            Err(error) => Err(ReadError::Damaged {
                ptr,
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    /// Makes every appended record durable (`fdatasync` of sealed segments with unsynced
    /// bytes and of the active one, and the directory if segments were created), then
    /// appends a checkpoint record and syncs it too. Blocks the calling thread on the
    /// syncs; a shard core runs the same steps asynchronously ([`PageFile::checkpoint_begin`],
    /// [`PageFile::checkpoint_write`], [`PageFile::checkpoint_end`]).
    ///
    /// The two rounds are needed: the kernel writes dirty pages back in any order, so a
    /// checkpoint written together with the records could become durable before them.
    /// After a failed sync the page file refuses further appends and checkpoints: reopen it
    /// (the WAL replays what was lost).
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let records = self.checkpoint_begin(checkpoint)?.run_blocking();
        let record = self.checkpoint_write(checkpoint, records)?.run_blocking();
        self.checkpoint_end(checkpoint, record)
    }

    /// The first step of a checkpoint: reserves the place of its record after every record
    /// appended so far, and returns what must be synced before that record is written
    /// (those records). Run the job, then give its result to
    /// [`PageFile::checkpoint_write`]. Records appended until then go after the reserved
    /// place: they are not covered by this checkpoint, and a restart at it discards them
    /// (the WAL replays them).
    pub fn checkpoint_begin(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> Result<SyncJob, CheckpointError> {
        if self.poisoned {
            return Err(CheckpointError::Append(AppendError::Poisoned));
        }
        if checkpoint.applied_index <= self.last_checkpoint_index {
            return Err(CheckpointError::NotIncreasing {
                previous: self.last_checkpoint_index,
                given: checkpoint.applied_index,
            });
        }
        self.reserve_checkpoint()?;
        self.take_sync()
    }

    /// Reserves the place of a checkpoint record at the write offset.
    fn reserve_checkpoint(&mut self) -> Result<(), CheckpointError> {
        if self.reserved_checkpoint.is_some() {
            return Err(CheckpointError::OutOfOrder(
                "a checkpoint began before the previous one ended",
            ));
        }
        let offset = self.reserve(CHECKPOINT_RECORD_BYTES)?;
        let file = self
            .active
            .file
            .try_clone()
            .map_err(|source| CheckpointError::Write {
                path: self.active.path.clone(),
                source,
            })?;
        // The reserved bytes stay zero (everything past the write offset is).
        self.active.write_offset = offset + CHECKPOINT_RECORD_BYTES;
        self.reserved_checkpoint = Some(ReservedCheckpoint {
            id: self.active.id,
            offset,
            file: Some(file),
        });
        Ok(())
    }

    /// The second step: once the records are durable (`records` is the result of the job
    /// [`PageFile::checkpoint_begin`] returned), appends the checkpoint record and returns
    /// the job that syncs it; give that job's result to [`PageFile::checkpoint_end`].
    pub fn checkpoint_write(
        &mut self,
        checkpoint: &Checkpoint,
        records: Result<Synced, CheckpointError>,
    ) -> Result<SyncJob, CheckpointError> {
        self.synced(records)?;
        let Some(reserved) = self.reserved_checkpoint.as_mut() else {
            return Err(CheckpointError::OutOfOrder(
                "a checkpoint record was written before its checkpoint began",
            ));
        };
        let (id, offset) = (reserved.id, reserved.offset);
        let file = reserved.file.take();
        let record = encode_checkpoint(checkpoint);
        if id == self.active.id {
            put(&mut self.active.map, offset, &record);
            // The bytes there changed after a sync covered them: the next one must cover
            // them again.
            self.active.synced_offset = self.active.synced_offset.min(offset);
        } else {
            let written = self.write_sealed(id, offset, &record, file);
            if written.is_err() {
                self.poisoned = true;
            }
            written?;
        }
        debug_assert!(matches!(
            self.segment_bytes(segment_key(id, 0))
                .map(|(bytes, _, _)| decode_record_at(bytes, offset)),
            Some(Ok(Some((Record::Checkpoint(read), _)))) if read == *checkpoint
        ));
        self.take_sync()
    }

    /// Writes a checkpoint record into the sealed segment `id` (sealed while its
    /// checkpoint was in the making) through `file`, and makes the next sync cover it.
    fn write_sealed(
        &mut self,
        id: u32,
        offset: usize,
        record: &[u8],
        file: Option<File>,
    ) -> Result<(), CheckpointError> {
        let segment =
            self.sealed
                .get_mut(&segment_key(id, 0))
                .ok_or(CheckpointError::OutOfOrder(
                    "the segment of a checkpoint in the making is gone",
                ))?;
        let file = file.ok_or(CheckpointError::OutOfOrder(
            "a checkpoint record was written twice",
        ))?;
        file.write_all_at(record, offset as u64)
            .map_err(|source| CheckpointError::Write {
                path: segment.path.clone(),
                source,
            })?;
        segment.unsynced_file.get_or_insert(file);
        Ok(())
    }

    /// The last step: once the checkpoint record is durable, the page file counts it as
    /// its last checkpoint.
    pub fn checkpoint_end(
        &mut self,
        checkpoint: &Checkpoint,
        record: Result<Synced, CheckpointError>,
    ) -> Result<(), CheckpointError> {
        self.synced(record)?;
        let reserved = self
            .reserved_checkpoint
            .take()
            .ok_or(CheckpointError::OutOfOrder(
                "a checkpoint ended before it began",
            ))?;
        self.last_checkpoint_index = checkpoint.applied_index;
        self.last_checkpoint_slot = reserved.id;
        self.last_checkpoint = Some(*checkpoint);
        Ok(())
    }

    /// Seals the active segment and records the last checkpoint again at the start of the
    /// new one, so that the sealed segment lies wholly before a checkpoint and garbage
    /// collection may rewrite it. Only when nothing was appended since that checkpoint
    /// (the caller checks: it has applied nothing since); does nothing without one.
    ///
    /// Opening at that checkpoint later finds its first record: in the sealed segment
    /// while it exists (the new segment, holding nothing the WAL does not replay, is then
    /// discarded as a tail), in the new one once the sealed one was rewritten.
    pub fn reseal(&mut self) -> Result<(), CheckpointError> {
        if self.poisoned {
            return Err(CheckpointError::Append(AppendError::Poisoned));
        }
        let Some(checkpoint) = self.last_checkpoint else {
            return Ok(());
        };
        self.seal_active()?;
        self.reserve_checkpoint()?;
        let records = self.take_sync()?.run_blocking();
        let record = self.checkpoint_write(&checkpoint, records)?.run_blocking();
        self.checkpoint_end(&checkpoint, record)
    }

    /// Takes what a sync must make durable now: the sealed segments with unsynced bytes
    /// (their descriptors move into the job), the active segment up to its write offset,
    /// and the directory if segment files were created or removed since its last sync.
    /// What changes after this is left for the next job.
    fn take_sync(&mut self) -> Result<SyncJob, CheckpointError> {
        let result = self.take_sync_unpoisoned();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn take_sync_unpoisoned(&mut self) -> Result<SyncJob, CheckpointError> {
        let mut targets = Vec::new();
        for segment in self.sealed.values_mut() {
            if let Some(file) = segment.unsynced_file.take() {
                targets.push(SyncTarget {
                    path: segment.path.clone(),
                    file,
                    directory: false,
                });
            }
        }
        let active = &self.active;
        let mut active_synced = None;
        if active.synced_offset < active.write_offset {
            let file = active
                .file
                .try_clone()
                .map_err(|source| CheckpointError::Sync {
                    path: active.path.clone(),
                    source,
                })?;
            targets.push(SyncTarget {
                path: active.path.clone(),
                file,
                directory: false,
            });
            active_synced = Some((active.id, active.write_offset));
        }
        if self.dir_unsynced {
            let file = File::open(&self.dir).map_err(|source| CheckpointError::Sync {
                path: self.dir.clone(),
                source,
            })?;
            targets.push(SyncTarget {
                path: self.dir.clone(),
                file,
                directory: true,
            });
            self.dir_unsynced = false;
        }
        Ok(SyncJob {
            targets,
            active: active_synced,
        })
    }

    /// Takes the result of a job [`PageFile::take_sync`] returned: on success the active
    /// segment is durable up to the offset the job covered; a failure poisons the page
    /// file (the state of the page cache is unknown: fsyncgate).
    fn synced(&mut self, result: Result<Synced, CheckpointError>) -> Result<(), CheckpointError> {
        if self.poisoned {
            return Err(CheckpointError::Append(AppendError::Poisoned));
        }
        match result {
            Ok(Synced { active }) => {
                if let Some((id, offset)) = active {
                    if self.active.id == id && self.active.synced_offset < offset {
                        self.active.synced_offset = offset;
                    }
                }
                Ok(())
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    /// Bytes of segment files on disk. Chain segments are preallocated to their full size,
    /// so this is the sum of the segment sizes, computed when called.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.sealed
            .values()
            .map(|segment| segment.map.len() as u64)
            .sum::<u64>()
            + self.active.map.len() as u64
    }

    /// Bytes of records written (headers included), read from the segments' end offsets
    /// when called: what the data takes, without the preallocated tails. This is the size
    /// rivet reports as `dbSize` and checks against `--quota-backend-bytes` (etcd checks
    /// its backend file's size, free pages included: dead records count here the same
    /// way until garbage collection drops them).
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.sealed
            .values()
            .map(|segment| segment.data_end as u64)
            .sum::<u64>()
            + self.active.write_offset as u64
    }

    /// Bytes of live key records and of the dead tombstones that must stay (see
    /// [`SegmentStats`]): rivet's `dbSizeInUse`.
    #[must_use]
    pub fn live_bytes(&self) -> u64 {
        self.sealed
            .values()
            .map(|segment| segment.stats.live_bytes + segment.stats.pinned_bytes)
            .sum::<u64>()
            + self.active.stats.live_bytes
            + self.active.stats.pinned_bytes
    }

    /// The applied index of the last checkpoint (written or loaded); 0 if none.
    #[must_use]
    pub fn last_checkpoint_index(&self) -> u64 {
        self.last_checkpoint_index
    }

    /// The number of segment files.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The slot of the active segment.
    #[must_use]
    pub fn active_slot(&self) -> u32 {
        self.active.id
    }

    /// The slot of the last checkpoint record (written or loaded).
    #[must_use]
    pub fn last_checkpoint_slot(&self) -> u32 {
        self.last_checkpoint_slot
    }

    /// The directory of this page file.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A segment being written by garbage collection.
/// (Its steps are in `gc.rs`; the state lives with the page file it belongs to.)
pub(crate) struct Relocation {
    /// The new segment's key.
    pub(crate) key: u32,
    /// The segment being rewritten.
    pub(crate) source: u32,
    pub(crate) path: PathBuf,
    pub(crate) file: std::fs::File,
    pub(crate) map: MmapMut,
    pub(crate) write_offset: usize,
    pub(crate) source_map: Arc<Mmap>,
    pub(crate) source_end: usize,
    /// Where the next record of the source starts.
    pub(crate) cursor: usize,
    /// The source and new offsets of every copied record, in copy order.
    pub(crate) moved: Vec<(u32, u32)>,
    pub(crate) stats: SegmentStats,
}
