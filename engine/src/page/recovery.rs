//! Opening a page file at a checkpoint: the scan that hands every key record before the
//! checkpoint to the caller (who rebuilds its index from them), discards the unsynced
//! tail after it, and tells damage before the checkpoint (refuse to start, modify
//! nothing) from a checkpoint that was never written.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Advice, Mmap, MmapMut};

use super::file::*;
use super::format::*;
use super::manifest::{read_manifest, Manifest, SlotState, MANIFEST_FILE, MANIFEST_TEMP_FILE};
use crate::limits::{SEGMENT_ALIGNMENT_BYTES, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

/// Why [`PageFile::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("page file options are invalid: {0}")]
    InvalidOptions(String),
    #[error("page file I/O on {} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("page file in {} has no checkpoint with applied index {index}: {detail}", dir.display())]
    CheckpointNotFound {
        dir: PathBuf,
        index: u64,
        detail: String,
    },
    #[error(
        "page file segment {} is damaged at offset {offset}, before checkpoint {index}: \
         {error}; nothing was modified",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        index: u64,
        error: DecodeError,
    },
    #[error(
        "page file segment {} is damaged, before checkpoint {index}: {detail}; \
         nothing was modified",
        path.display()
    )]
    BadSegment {
        path: PathBuf,
        index: u64,
        detail: String,
    },
    #[error("page file manifest {} is damaged: {detail}; nothing was modified", path.display())]
    BadManifest { path: PathBuf, detail: String },
}

/// The files of a page file's directory.
#[derive(Default)]
struct Listing {
    /// Chain segments, sorted by slot.
    chain: Vec<(u32, PathBuf)>,
    /// Relocated segments by (slot, generation).
    relocated: BTreeMap<(u32, u8), PathBuf>,
    /// `manifest.tmp`, if present.
    manifest_temp: Option<PathBuf>,
}

/// The segment files of `dir`.
fn list_segments(dir: &Path) -> Result<Listing, OpenError> {
    let io_error = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_file_name(name) {
            listing.chain.push((id, entry.path()));
        } else if let Some((slot, generation)) = parse_relocated_file_name(name) {
            listing.relocated.insert((slot, generation), entry.path());
        } else if name == MANIFEST_TEMP_FILE {
            listing.manifest_temp = Some(entry.path());
        }
    }
    listing.chain.sort_unstable_by_key(|(id, _)| *id);
    Ok(listing)
}

/// Adds the stats of a key record at `offset` to `stats`.
fn count_record(stats: &mut SegmentStats, view: &RecordView<'_>) {
    let length = KEY_RECORD_HEADER_BYTES + view.key.len() + view.value.map_or(0, <[u8]>::len);
    stats.key_bytes += align_record(length).unwrap_or(length) as u64;
    stats.last_revision = stats.last_revision.max(view.mod_revision);
}

/// A relocated segment, checked and scanned.
struct ScannedRelocated {
    key: u32,
    path: PathBuf,
    map: Mmap,
    data_end: usize,
    stats: SegmentStats,
}

/// Maps, checks and scans relocated segment (`slot`, `generation`), handing its records
/// to `on_record`.
fn scan_relocated(
    path: &Path,
    slot: u32,
    generation: u8,
    checkpoint_index: u64,
    on_record: &mut impl FnMut(PagePtr, RecordView<'_>),
) -> Result<ScannedRelocated, OpenError> {
    let bad = |detail: String| OpenError::BadSegment {
        path: path.to_path_buf(),
        index: checkpoint_index,
        detail,
    };
    let (_file, map) = match map_segment_for_scan(path)? {
        Ok(mapped) => mapped,
        Err(detail) => return Err(bad(detail)),
    };
    check_segment_header(&map, slot, None).map_err(bad)?;
    let header = decode_segment_header(&map).map_err(|e| bad(format!("header: {e}")))?;
    if header.previous_end != 0 {
        return Err(bad(
            "a relocated segment's header names a previous end".into()
        ));
    }
    let key = segment_key(slot, generation);
    let mut stats = SegmentStats::default();
    let mut records = Records::new(&map, SEGMENT_HEADER_BYTES);
    for item in &mut records {
        match item {
            Ok((offset, Record::Key(view))) => {
                count_record(&mut stats, &view);
                let offset = u32::try_from(offset).unwrap_or(u32::MAX);
                on_record(PagePtr::in_segment(key, offset), view);
            }
            Ok((offset, Record::Checkpoint(_))) => {
                return Err(OpenError::Corrupt {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    index: checkpoint_index,
                    error: DecodeError::UnknownKind(KIND_CHECKPOINT),
                })
            }
            Err(error) => {
                return Err(OpenError::Corrupt {
                    path: path.to_path_buf(),
                    offset: records.offset() as u64,
                    index: checkpoint_index,
                    error,
                })
            }
        }
    }
    let data_end = records.offset();
    Ok(ScannedRelocated {
        key,
        path: path.to_path_buf(),
        map,
        data_end,
        stats,
    })
}

/// How the scan of one segment ended.
enum SegmentScan {
    /// The records end here; the checkpoint must be in a later segment.
    End { data_end: usize },
    /// The checkpoint sought; the next record would start at `end`.
    Found { checkpoint: Checkpoint, end: usize },
    /// A later checkpoint came first: the one sought does not exist.
    Overshot { applied_index: u64, offset: usize },
    /// A record that does not decode.
    Damaged { offset: usize, error: DecodeError },
}

fn scan_segment(
    map: &[u8],
    id: u32,
    checkpoint_index: u64,
    stats: &mut SegmentStats,
    on_record: &mut impl FnMut(PagePtr, RecordView<'_>),
) -> SegmentScan {
    let mut records = Records::new(map, SEGMENT_HEADER_BYTES);
    for item in &mut records {
        match item {
            Ok((offset, Record::Key(view))) => {
                count_record(stats, &view);
                // The segment is at most u32::MAX bytes (checked before mapping).
                let offset = u32::try_from(offset).unwrap_or(u32::MAX);
                on_record(PagePtr::new(id, offset), view);
            }
            Ok((offset, Record::Checkpoint(checkpoint))) => {
                if checkpoint.applied_index == checkpoint_index {
                    return SegmentScan::Found {
                        checkpoint,
                        end: offset.saturating_add(CHECKPOINT_RECORD_BYTES),
                    };
                }
                if checkpoint.applied_index > checkpoint_index {
                    return SegmentScan::Overshot {
                        applied_index: checkpoint.applied_index,
                        offset,
                    };
                }
            }
            Err(error) => {
                return SegmentScan::Damaged {
                    offset: records.offset(),
                    error,
                }
            }
        }
    }
    SegmentScan::End {
        data_end: records.offset(),
    }
}

/// Looks for a valid checkpoint record with `applied_index` at every record boundary of
/// `bytes` from `start`, skipping over damage. Used only after a scan stopped early, to
/// tell damage before the checkpoint (the checkpoint is found further on) from a
/// checkpoint that was never written.
fn probe_checkpoint(bytes: &[u8], start: usize, applied_index: u64) -> Option<usize> {
    let first = align_record(start)?;
    (first..bytes.len())
        .step_by(RECORD_ALIGNMENT)
        .find(|offset| {
            let Some(head) = bytes.get(*offset..) else {
                return false;
            };
            let plausible = field_u32(head, RECORD_LENGTH_OFFSET) == Some(CHECKPOINT_RECORD_LENGTH)
                && field_u8(head, RECORD_KIND_OFFSET) == Some(KIND_CHECKPOINT)
                && field_u64(head, CHECKPOINT_APPLIED_INDEX_OFFSET) == Some(applied_index);
            plausible
                && matches!(
                    decode_record_at(bytes, *offset),
                    Ok(Some((Record::Checkpoint(found), _))) if found.applied_index == applied_index
                )
        })
}

/// A segment mapped read-only during `open`, before the checkpoint is found.
struct ScannedSegment {
    id: u32,
    path: PathBuf,
    file: File,
    map: Mmap,
    data_end: usize,
    stats: SegmentStats,
}

/// Where and why the scan stopped without finding the checkpoint.
struct ScanStop {
    /// Index into the listed segments where the probe for the checkpoint starts.
    position: usize,
    /// Offset within that segment where the probe starts.
    offset: usize,
    /// The segment and offset to blame if the checkpoint turns out to lie beyond.
    path: PathBuf,
    blame: Blame,
}

enum Blame {
    Record { offset: usize, error: DecodeError },
    Segment { detail: String },
    End,
    Overshot { applied_index: u64, offset: usize },
}

impl PageFile {
    /// Opens (creating if absent) the page file in `dir`, and loads it up to and including
    /// the checkpoint record whose `applied_index` is `checkpoint_index`; 0 loads nothing
    /// and starts empty.
    ///
    /// Calls `on_record(ptr, view)` for every key record before that checkpoint, in file
    /// order, segment by segment, borrowing the mapped bytes: nothing is copied, so the
    /// caller can rebuild its index in chunks. Everything after the checkpoint is
    /// discarded (later segments removed, the rest of the checkpoint's segment zeroed),
    /// because it was never synced and the WAL replays it.
    ///
    /// Errors: `CheckpointNotFound` (naming the directory and index) if there is no such
    /// checkpoint; `Corrupt` or `BadSegment` (naming the file and offset) if the bytes
    /// before it are damaged. On these errors no file is modified, but `on_record` may
    /// already have been called for the records before the damage: discard what was
    /// built from them.
    pub fn open(
        dir: &Path,
        options: PageOptions,
        checkpoint_index: u64,
        mut on_record: impl FnMut(PagePtr, RecordView<'_>),
    ) -> Result<(PageFile, Option<Checkpoint>), OpenError> {
        validate_options(&options)?;
        let dir_error = |source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        let listing = list_segments(dir)?;

        if checkpoint_index == 0 {
            let mut removed = 0;
            let all = listing
                .chain
                .iter()
                .map(|(_, path)| path.clone())
                .chain(listing.relocated.values().cloned())
                .chain(listing.manifest_temp.iter().cloned())
                .chain([dir.join(MANIFEST_FILE)].into_iter().filter(|p| p.exists()));
            for path in all.collect::<Vec<_>>().iter().rev() {
                fs::remove_file(path).map_err(|source| OpenError::Io {
                    path: path.clone(),
                    source,
                })?;
                removed += 1;
            }
            let active = create_segment(dir, 0, options.segment_bytes, 0)
                .map_err(|error| append_to_open_error(dir, error))?;
            sync_dir(dir).map_err(dir_error)?;
            if removed > 0 {
                tracing::info!(dir = %dir.display(), files = removed,
                    "page file opened at checkpoint 0: discarded all segments");
            }
            let page_file = PageFile {
                dir: dir.to_path_buf(),
                options,
                sealed: BTreeMap::new(),
                active,
                manifest: Manifest::default(),
                relocation: None,
                retiring: Vec::new(),
                last_checkpoint_index: 0,
                last_checkpoint_slot: 0,
                reserved_checkpoint: None,
                last_checkpoint: None,
                dir_unsynced: false,
                poisoned: false,
            };
            return Ok((page_file, None));
        }

        let manifest = read_manifest(dir).map_err(|(path, error)| OpenError::BadManifest {
            path,
            detail: error.to_string(),
        })?;
        // Files garbage collection left behind (a rewrite that did not commit, or an old
        // segment a committed one replaced): removed once the open succeeded.
        let mut leftovers: Vec<PathBuf> = listing.manifest_temp.iter().cloned().collect();
        let mut listed = Vec::new();
        for (slot, path) in &listing.chain {
            if manifest.replaces_chain(*slot) {
                leftovers.push(path.clone());
            } else {
                listed.push((*slot, path.clone()));
            }
        }
        let mut relocated_paths: Vec<(u32, u8, PathBuf)> = Vec::new();
        for ((slot, generation), path) in &listing.relocated {
            if manifest.state(*slot)
                == Some(SlotState::Relocated {
                    generation: *generation,
                })
            {
                relocated_paths.push((*slot, *generation, path.clone()));
            } else {
                leftovers.push(path.clone());
            }
        }
        for (slot, state) in &manifest.slots {
            if let SlotState::Relocated { generation } = state {
                if !listing.relocated.contains_key(&(*slot, *generation)) {
                    return Err(OpenError::BadSegment {
                        path: dir.join(relocated_file_name(*slot, *generation)),
                        index: checkpoint_index,
                        detail: "the manifest names this relocated segment, but it is missing"
                            .into(),
                    });
                }
            }
        }
        let mut relocated_pending = relocated_paths.into_iter().peekable();
        let mut relocated: Vec<ScannedRelocated> = Vec::new();

        let mut scanned: Vec<ScannedSegment> = Vec::new();
        let mut found = None;
        let mut stop = None;
        for (position, (id, path)) in listed.iter().enumerate() {
            // Relocated segments of earlier slots come first: records are handed over in
            // the order of the file (slot, generation, offset).
            while let Some((slot, generation, relocated_path)) =
                relocated_pending.next_if(|(slot, _, _)| slot < id)
            {
                relocated.push(scan_relocated(
                    &relocated_path,
                    slot,
                    generation,
                    checkpoint_index,
                    &mut on_record,
                )?);
            }
            let previous = scanned.last();
            // If this segment turns out unusable, look for the checkpoint from where the
            // valid records ended: the damage may lie anywhere after them.
            let probe_from = match previous {
                Some(segment) => (position.saturating_sub(1), segment.data_end),
                None => (position, 0),
            };
            // The next chain slot: slots garbage collection rewrote or emptied are skipped.
            let expected_id = match previous {
                None => Some(*id),
                Some(segment) => {
                    let mut next = segment.id.checked_add(1);
                    while let Some(slot) = next.filter(|slot| manifest.replaces_chain(*slot)) {
                        next = slot.checked_add(1);
                    }
                    next
                }
            };
            if expected_id != Some(*id) {
                stop = Some(ScanStop {
                    position: probe_from.0,
                    offset: probe_from.1,
                    path: path.clone(),
                    blame: Blame::Segment {
                        detail: format!(
                            "segment {} is missing",
                            expected_id
                                .map_or_else(|| "after u32::MAX".to_owned(), |id| id.to_string())
                        ),
                    },
                });
                break;
            }
            // The header's "previous end" is checkable only against the chain segment
            // right before (a rewritten one holds other bytes).
            let previous_end = previous
                .filter(|segment| segment.id.checked_add(1) == Some(*id))
                .map(|segment| segment.data_end);
            let (file, map) = match map_segment_for_scan(path)? {
                Ok(mapped) => mapped,
                Err(detail) => {
                    stop = Some(ScanStop {
                        position: probe_from.0,
                        offset: probe_from.1,
                        path: path.clone(),
                        blame: Blame::Segment { detail },
                    });
                    break;
                }
            };
            if let Err(detail) = check_segment_header(&map, *id, previous_end) {
                stop = Some(ScanStop {
                    position: probe_from.0,
                    offset: probe_from.1,
                    path: path.clone(),
                    blame: Blame::Segment { detail },
                });
                break;
            }
            if let Err(error) = map.advise(Advice::Sequential) {
                tracing::debug!(path = %path.display(), %error, "madvise(SEQUENTIAL) failed");
            }
            let mut stats = SegmentStats::default();
            let scan = scan_segment(&map, *id, checkpoint_index, &mut stats, &mut on_record);
            let mut segment = ScannedSegment {
                id: *id,
                path: path.clone(),
                file,
                map,
                data_end: 0,
                stats,
            };
            match scan {
                SegmentScan::End { data_end } => {
                    segment.data_end = data_end;
                    scanned.push(segment);
                }
                SegmentScan::Found { checkpoint, end } => {
                    segment.data_end = end;
                    found = Some((position, checkpoint, segment));
                    break;
                }
                SegmentScan::Overshot {
                    applied_index,
                    offset,
                } => {
                    stop = Some(ScanStop {
                        position,
                        offset,
                        path: path.clone(),
                        blame: Blame::Overshot {
                            applied_index,
                            offset,
                        },
                    });
                    break;
                }
                SegmentScan::Damaged { offset, error } => {
                    stop = Some(ScanStop {
                        position,
                        offset,
                        path: path.clone(),
                        blame: Blame::Record { offset, error },
                    });
                    break;
                }
            }
        }

        let Some((position, checkpoint, last)) = found else {
            let stop = stop.unwrap_or_else(|| match scanned.last() {
                Some(last) => ScanStop {
                    position: listed.len().saturating_sub(1),
                    offset: last.data_end,
                    path: last.path.clone(),
                    blame: Blame::End,
                },
                None => ScanStop {
                    position: 0,
                    offset: 0,
                    path: dir.to_path_buf(),
                    blame: Blame::End,
                },
            });
            return Err(scan_error(dir, &listed, checkpoint_index, stop));
        };
        if let Some((slot, generation, path)) = relocated_pending.next() {
            return Err(OpenError::BadSegment {
                path,
                index: checkpoint_index,
                detail: format!(
                    "relocated segment {slot}.r{generation} lies at or after the slot of the \
                     checkpoint ({}): garbage collection never rewrites those",
                    last.id
                ),
            });
        }

        // The checkpoint is found: from here on the page file is modified.
        let mut dir_changed = false;
        for (_, path) in listed.iter().skip(position + 1).rev() {
            fs::remove_file(path).map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?;
            dir_changed = true;
        }
        for path in &leftovers {
            fs::remove_file(path).map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?;
            dir_changed = true;
        }
        if !leftovers.is_empty() {
            tracing::info!(dir = %dir.display(), files = leftovers.len(),
                "page file: removed files an interrupted garbage collection left behind");
        }
        let io_error = |source| OpenError::Io {
            path: last.path.clone(),
            source,
        };
        let tail = last.map.get(last.data_end..).unwrap_or_default();
        let discarded = last_nonzero(tail);
        let file_bytes = last.map.len();
        drop(last.map);
        if let Some(last_nonzero) = discarded {
            zero_range(
                &last.file,
                last.data_end as u64,
                (file_bytes - last.data_end) as u64,
            )
            .map_err(io_error)?;
            last.file.sync_data().map_err(io_error)?;
            tracing::info!(path = %last.path.display(), offset = last.data_end,
                bytes = last_nonzero + 1,
                "page file: discarded bytes after checkpoint {checkpoint_index} (the WAL replays them)");
        }
        if dir_changed {
            tracing::info!(dir = %dir.display(), segments = listed.len() - position - 1,
                "page file: removed segments after checkpoint {checkpoint_index}");
            sync_dir(dir).map_err(dir_error)?;
        }
        // SAFETY: see `create_segment`.
        let map = unsafe { MmapMut::map_mut(&last.file) }.map_err(io_error)?;
        without_readahead(&map, &last.path);
        let checkpoint_slot = last.id;
        let active = ActiveSegment {
            id: last.id,
            path: last.path,
            file: last.file,
            map,
            write_offset: last.data_end,
            synced_offset: last.data_end,
            released_offset: 0,
            stats: last.stats,
        };
        let mut sealed = BTreeMap::new();
        for segment in scanned {
            let key = segment_key(segment.id, 0);
            sealed.insert(
                key,
                SealedSegment {
                    key,
                    path: segment.path,
                    map: Arc::new(segment.map),
                    data_end: segment.data_end,
                    unsynced_file: None,
                    stats: segment.stats,
                },
            );
        }
        for segment in relocated {
            sealed.insert(
                segment.key,
                SealedSegment {
                    key: segment.key,
                    path: segment.path,
                    map: Arc::new(segment.map),
                    data_end: segment.data_end,
                    unsynced_file: None,
                    stats: segment.stats,
                },
            );
        }
        let page_file = PageFile {
            dir: dir.to_path_buf(),
            options,
            sealed,
            active,
            manifest,
            relocation: None,
            retiring: Vec::new(),
            last_checkpoint_index: checkpoint_index,
            last_checkpoint_slot: checkpoint_slot,
            reserved_checkpoint: None,
            last_checkpoint: Some(checkpoint),
            dir_unsynced: false,
            poisoned: false,
        };
        Ok((page_file, Some(checkpoint)))
    }
}

fn validate_options(options: &PageOptions) -> Result<(), OpenError> {
    let bytes = options.segment_bytes;
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes)
        || bytes % SEGMENT_ALIGNMENT_BYTES != 0
    {
        return Err(OpenError::InvalidOptions(format!(
            "segment_bytes {bytes} must be a multiple of {SEGMENT_ALIGNMENT_BYTES} \
             between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
        )));
    }
    Ok(())
}

fn append_to_open_error(dir: &Path, error: AppendError) -> OpenError {
    match error {
        AppendError::CreateSegment { path, source } => OpenError::Io { path, source },
        other => OpenError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Opens and maps a segment for the scan. The outer error is I/O (fail at once); the
/// inner one describes a file that cannot be a segment (damage, or a torn creation).
fn map_segment_for_scan(path: &Path) -> Result<Result<(File, Mmap), String>, OpenError> {
    let io_error = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error)?;
    let length = file.metadata().map_err(io_error)?.len();
    if length < SEGMENT_HEADER_BYTES as u64 || length > u64::from(u32::MAX) {
        return Ok(Err(format!("its length {length} cannot be a segment's")));
    }
    // SAFETY: see `create_segment`.
    let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
    Ok(Ok((file, map)))
}

fn check_segment_header(map: &[u8], id: u32, previous_end: Option<usize>) -> Result<(), String> {
    let header = decode_segment_header(map).map_err(|error| format!("header: {error}"))?;
    if header.id != id {
        return Err(format!(
            "header names segment {}, the file name {id}",
            header.id
        ));
    }
    if header.file_bytes as usize != map.len() {
        return Err(format!(
            "header gives a size of {} bytes, the file has {}",
            header.file_bytes,
            map.len()
        ));
    }
    if let Some(previous_end) = previous_end {
        if header.previous_end as usize != previous_end {
            return Err(format!(
                "header says segment {} ended at offset {}, but its records end at {previous_end}",
                id.saturating_sub(1),
                header.previous_end
            ));
        }
    }
    Ok(())
}

/// The error for a scan that stopped without finding the checkpoint: damage if the
/// checkpoint is found further on, "not found" otherwise.
fn scan_error(
    dir: &Path,
    listed: &[(u32, PathBuf)],
    checkpoint_index: u64,
    stop: ScanStop,
) -> OpenError {
    let beyond = if matches!(stop.blame, Blame::Overshot { .. }) {
        None
    } else {
        find_checkpoint_beyond(listed, stop.position, stop.offset, checkpoint_index)
    };
    let where_ = |offset: usize| format!("{}:{offset}", stop.path.display());
    match (stop.blame, beyond) {
        (Blame::Record { offset, error }, Some(_)) => OpenError::Corrupt {
            path: stop.path,
            offset: offset as u64,
            index: checkpoint_index,
            error,
        },
        (Blame::Segment { detail }, Some(_)) => OpenError::BadSegment {
            path: stop.path,
            index: checkpoint_index,
            detail,
        },
        (Blame::End, Some(found)) => OpenError::BadSegment {
            path: stop.path.clone(),
            index: checkpoint_index,
            detail: format!(
                "its records end early at offset {}: the checkpoint lies beyond, at {found}",
                stop.offset
            ),
        },
        (Blame::Record { offset, error }, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!("valid records end at {} ({error})", where_(offset)),
        },
        (Blame::Segment { detail }, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!(
                "valid segments end before {} ({detail})",
                stop.path.display()
            ),
        },
        (Blame::End, None) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: if listed.is_empty() {
                "there are no segments".to_owned()
            } else {
                format!("records end at {}", where_(stop.offset))
            },
        },
        (
            Blame::Overshot {
                applied_index,
                offset,
            },
            _,
        ) => OpenError::CheckpointNotFound {
            dir: dir.to_path_buf(),
            index: checkpoint_index,
            detail: format!(
                "a later checkpoint ({applied_index}) comes first, at {}",
                where_(offset)
            ),
        },
    }
}

/// Probes segment `position` from `offset`, then every later segment, for the checkpoint.
fn find_checkpoint_beyond(
    listed: &[(u32, PathBuf)],
    position: usize,
    offset: usize,
    checkpoint_index: u64,
) -> Option<String> {
    listed
        .iter()
        .enumerate()
        .skip(position)
        .find_map(|(index, (_, path))| {
            let start = if index == position {
                offset.max(SEGMENT_HEADER_BYTES)
            } else {
                SEGMENT_HEADER_BYTES
            };
            let Ok(Ok((_file, map))) = map_segment_for_scan(path) else {
                return None;
            };
            probe_checkpoint(&map, start, checkpoint_index)
                .map(|found| format!("{}:{found}", path.display()))
        })
}

/// The position of the last non-zero byte of `bytes`. Compares 64 KiB chunks against
/// zeros with `memcmp` from the end, so a mostly empty 64 MiB segment tail is checked fast
/// (also in debug builds) and only the chunk that holds data is scanned byte by byte.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = bytes.get(start..end).unwrap_or_default();
        if chunk != ZEROS.get(..chunk.len()).unwrap_or_default() {
            return chunk.iter().rposition(|byte| *byte != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "tests index fixed-size buffers")]
mod last_nonzero_tests {
    use super::last_nonzero;

    #[test]
    fn finds_the_last_nonzero_byte() {
        let mut bytes = vec![0u8; 200_000];
        assert_eq!(last_nonzero(&bytes), None);
        bytes[5] = 1;
        assert_eq!(last_nonzero(&bytes), Some(5));
        bytes[131_072] = 7;
        assert_eq!(last_nonzero(&bytes), Some(131_072));
        bytes[199_999] = 1;
        assert_eq!(last_nonzero(&bytes), Some(199_999));
        assert_eq!(last_nonzero(&[]), None);
    }
}
