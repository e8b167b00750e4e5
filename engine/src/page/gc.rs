//! Garbage collection of a page file: rewriting the live records of a segment into a new
//! segment of the same slot, then retiring the old one (the slot scheme and the manifest
//! are described in [`super::manifest`]).
//!
//! One segment at a time, in steps the caller interleaves with its other work:
//!
//! 1. [`PageFile::relocation_begin`]: the new segment file (`{slot}.r{g}.page`) is created,
//!    preallocated to the old segment's size (the most it can need), and mapped.
//! 2. [`PageFile::relocation_step`], repeatedly: the old segment's records are read in
//!    order and the caller decides for each whether it is copied (live, or a dead
//!    tombstone that must stay) or dropped. A step ends only between two revisions, so
//!    the records of one revision are copied together.
//! 3. [`PageFile::relocation_finish`]: the new segment gets its header, is synced and cut
//!    to its size (crash point `gc-copied`); the manifest names it, atomically (points
//!    `gc-manifest-written`, `gc-committed`); the old file is deleted (`gc-deleted`),
//!    its mapping kept. Returns every move (old pointer → new pointer) for the caller's
//!    index.
//! 4. [`PageFile::relocation_release`] once the index no longer points into the old
//!    segment: its mapping goes.
//!
//! A crash before the manifest names the new segment leaves the old one in force (the
//! new file is removed at the next open); a crash after it leaves the new one (the old
//! file, if still there, is removed). Nothing is lost either way: the new segment is
//! durable before the manifest names it. [`PageFile::relocation_abort`] undoes steps 1–2.
//!
//! The caller keeps the rules that make dropping a record safe (the shard's index: see
//! `crate::shard`); this file only moves bytes.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use super::file::*;
use super::format::*;
use super::manifest::{write_manifest, SlotState};
use crate::limits::SEGMENT_ALIGNMENT_BYTES;

/// What to do with a record of a segment being rewritten.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Keep {
    /// A version the index holds: copied, and the index moves to the copy.
    Live,
    /// A dead tombstone that must stay on disk: copied, not live.
    Pinned,
    /// Dropped.
    Drop,
}

/// Why a step of garbage collection failed. The page file itself is unchanged (an
/// unfinished rewrite is aborted by the caller).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("garbage collection: segment {0} does not exist or cannot be rewritten")]
    NoSuchSegment(u32),
    #[error("garbage collection: another segment is being rewritten")]
    Busy,
    #[error("garbage collection: no segment is being rewritten")]
    Idle,
    #[error("garbage collection: record at {ptr} does not decode: {error}")]
    Damaged { ptr: PagePtr, error: DecodeError },
    #[error("garbage collection: the page file is unusable after a failed sync")]
    Poisoned,
}

/// What one [`PageFile::relocation_step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepProgress {
    pub examined: usize,
    pub copied: usize,
    /// The source segment has no more records.
    pub done: bool,
}

/// What [`PageFile::relocation_finish`] did: the moves of the copied records, and the
/// new segment's key (`None` when nothing was copied: the slot is empty now).
#[derive(Debug, Default)]
pub struct Relocated {
    pub new_key: Option<u32>,
    pub moves: Vec<(PagePtr, PagePtr)>,
    pub freed_bytes: u64,
}

fn io_error(what: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> GcError {
    let path = path.to_path_buf();
    move |source| GcError::Io { what, path, source }
}

impl PageFile {
    /// The segments garbage collection may rewrite now, oldest first: sealed segments
    /// that lie wholly before a checkpoint durable in the WAL (chain segments of slots
    /// below `durable_slot`) or were rewritten before (relocated ones), whose dead share
    /// reaches `threshold_percent` of their record bytes — or, with `threshold_percent`
    /// 0 (defragmentation), every one with a dead byte.
    #[must_use]
    pub fn gc_candidates(&self, durable_slot: u32, threshold_percent: u64) -> Vec<u32> {
        self.sealed
            .iter()
            .filter(|(key, _)| key_generation(**key) > 0 || key_slot(**key) < durable_slot)
            .filter(|(_, segment)| {
                let data = segment.data_end.saturating_sub(SEGMENT_HEADER_BYTES) as u64;
                let stats = segment.stats;
                let dead = data
                    .saturating_sub(stats.live_bytes)
                    .saturating_sub(stats.pinned_bytes);
                if threshold_percent == 0 {
                    data > stats.live_bytes
                } else {
                    data > 0 && dead * 100 >= data * threshold_percent
                }
            })
            .map(|(key, _)| *key)
            .collect()
    }

    /// Whether a rewrite is under way.
    #[must_use]
    pub fn relocating(&self) -> bool {
        self.relocation.is_some()
    }

    /// Starts rewriting segment `source` (a key from [`PageFile::gc_candidates`]).
    pub fn relocation_begin(&mut self, source: u32) -> Result<(), GcError> {
        if self.poisoned {
            return Err(GcError::Poisoned);
        }
        if self.relocation.is_some() || !self.retiring.is_empty() {
            return Err(GcError::Busy);
        }
        let segment = self
            .sealed
            .get(&source)
            .ok_or(GcError::NoSuchSegment(source))?;
        let slot = key_slot(source);
        let generation = match key_generation(source) {
            1 => 2,
            _ => 1,
        };
        let key = segment_key(slot, generation);
        let path = self.dir.join(relocated_file_name(slot, generation));
        let alignment = SEGMENT_ALIGNMENT_BYTES as usize;
        let file_bytes = segment
            .data_end
            .max(SEGMENT_HEADER_BYTES)
            .div_ceil(alignment)
            * alignment;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("creating", &path))?;
        let created = preallocate(&file, file_bytes as u64).and_then(|()| {
            // SAFETY: the page file owns its directory; nothing else maps or changes this
            // new file.
            unsafe { MmapOptions::new().len(file_bytes).map_mut(&file) }
        });
        if let Ok(map) = &created {
            super::file::without_readahead(map, &path);
        }
        let map = match created {
            Ok(map) => map,
            Err(source) => {
                let _ = fs::remove_file(&path);
                return Err(GcError::Io {
                    what: "preallocating",
                    path,
                    source,
                });
            }
        };
        self.relocation = Some(Relocation {
            key,
            source,
            path,
            file,
            map,
            write_offset: SEGMENT_HEADER_BYTES,
            source_map: Arc::clone(&segment.map),
            source_end: segment.data_end,
            cursor: SEGMENT_HEADER_BYTES,
            moved: Vec::new(),
            stats: SegmentStats::default(),
        });
        Ok(())
    }

    /// Examines at least `budget` records of the segment being rewritten (more to finish
    /// the revision at hand), copying those `decide` keeps.
    pub fn relocation_step(
        &mut self,
        budget: usize,
        mut decide: impl FnMut(PagePtr, &RecordView<'_>) -> Keep,
    ) -> Result<StepProgress, GcError> {
        let relocation = self.relocation.as_mut().ok_or(GcError::Idle)?;
        let source = Arc::clone(&relocation.source_map);
        let bytes = source.get(..relocation.source_end).unwrap_or_default();
        let mut progress = StepProgress::default();
        let mut last_revision = None;
        loop {
            let offset = relocation.cursor;
            let ptr =
                PagePtr::in_segment(relocation.source, u32::try_from(offset).unwrap_or(u32::MAX));
            let (record, next) = match decode_record_at(bytes, offset) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => {
                    progress.done = true;
                    return Ok(progress);
                }
                Err(error) => return Err(GcError::Damaged { ptr, error }),
            };
            let Record::Key(view) = record else {
                // Checkpoint records are not copied: a relocated segment holds key
                // records only, and the checkpoint the WAL names is never in a slot
                // garbage collection rewrites.
                relocation.cursor = next;
                continue;
            };
            if progress.examined >= budget && last_revision != Some(view.mod_revision) {
                return Ok(progress);
            }
            last_revision = Some(view.mod_revision);
            progress.examined += 1;
            relocation.cursor = next;
            let keep = decide(ptr, &view);
            if keep == Keep::Drop {
                continue;
            }
            let length =
                KEY_RECORD_HEADER_BYTES + view.key.len() + view.value.map_or(0, <[u8]>::len);
            let record_bytes = bytes.get(offset..offset + length).ok_or(GcError::Damaged {
                ptr,
                error: DecodeError::Truncated {
                    available: bytes.len().saturating_sub(offset),
                    needed: length,
                },
            })?;
            let at = relocation.write_offset;
            let padded = align_record(length).unwrap_or(length);
            let destination = relocation
                .map
                .get_mut(at..at + length)
                .ok_or(GcError::NoSuchSegment(relocation.key))?;
            // The record's bytes are position-independent (its CRC covers its own bytes).
            destination.copy_from_slice(record_bytes);
            relocation.write_offset = at + padded;
            relocation.moved.push((
                u32::try_from(offset).unwrap_or(u32::MAX),
                u32::try_from(at).unwrap_or(u32::MAX),
            ));
            relocation.stats.key_bytes += padded as u64;
            relocation.stats.last_revision = relocation.stats.last_revision.max(view.mod_revision);
            if keep == Keep::Pinned {
                relocation.stats.pinned_bytes += padded as u64;
            }
            progress.copied += 1;
        }
    }

    /// Abandons the rewrite under way: its file is removed; the old segment stays.
    pub fn relocation_abort(&mut self) {
        if let Some(relocation) = self.relocation.take() {
            drop(relocation.map);
            if let Err(error) = fs::remove_file(&relocation.path) {
                tracing::warn!(path = %relocation.path.display(), %error,
                    "garbage collection: cannot remove an abandoned segment");
            }
        }
    }

    /// Makes the new segment durable, names it in the manifest (the commit point),
    /// deletes the old segment's file and returns the moves. On an error before the
    /// commit the rewrite is abandoned and nothing changed.
    pub fn relocation_finish(&mut self) -> Result<Relocated, GcError> {
        let relocation = self.relocation.take().ok_or(GcError::Idle)?;
        match self.commit_relocation(relocation) {
            Ok(relocated) => Ok(relocated),
            Err((error, Some(path))) => {
                let _ = fs::remove_file(&path);
                Err(error)
            }
            Err((error, None)) => Err(error),
        }
    }

    fn commit_relocation(
        &mut self,
        relocation: Relocation,
    ) -> Result<Relocated, (GcError, Option<PathBuf>)> {
        let Relocation {
            key,
            source,
            path,
            file,
            mut map,
            write_offset,
            moved,
            stats,
            ..
        } = relocation;
        let slot = key_slot(key);
        let copied = !moved.is_empty();
        let remove_new = || Some(path.clone());
        if copied {
            let alignment = SEGMENT_ALIGNMENT_BYTES as usize;
            let file_bytes = write_offset.div_ceil(alignment) * alignment;
            let header = encode_segment_header(&SegmentHeader {
                id: slot,
                file_bytes: u32::try_from(file_bytes).unwrap_or(u32::MAX),
                previous_end: 0,
            });
            put(&mut map, 0, &header);
            map.flush()
                .map_err(|e| (io_error("syncing", &path)(e), remove_new()))?;
            drop(map);
            file.set_len(file_bytes as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| (io_error("cutting", &path)(e), remove_new()))?;
            sync_dir(&self.dir).map_err(|e| (io_error("syncing", &self.dir)(e), remove_new()))?;
            crate::crash::point("gc-copied");
        } else {
            drop(map);
            drop(file);
            let _ = fs::remove_file(&path);
        }

        let mut manifest = self.manifest.clone();
        manifest.slots.insert(
            slot,
            if copied {
                SlotState::Relocated {
                    generation: key_generation(key),
                }
            } else {
                SlotState::Empty
            },
        );
        let lowest_present = self
            .sealed
            .keys()
            .map(|k| key_slot(*k))
            .filter(|s| *s != slot || copied)
            .min()
            .unwrap_or(self.active.id)
            .min(self.active.id);
        manifest.prune(lowest_present);
        if let Err(failed) = write_manifest(&self.dir, &manifest) {
            let error = GcError::Io {
                what: "writing the manifest",
                path: failed.path,
                source: failed.source,
            };
            if !failed.renamed {
                return Err((error, remove_new()));
            }
            // The new manifest is in place but its directory entry may not be durable:
            // go on as committed (the next checkpoint syncs the directory).
            tracing::warn!("{error}; going on with the new manifest");
            self.dir_unsynced = true;
        }
        self.manifest = manifest;
        crate::crash::point("gc-committed");

        let old = self.sealed.remove(&source);
        let freed_bytes = old.as_ref().map_or(0, |s| s.data_end as u64);
        let mut moves = Vec::with_capacity(moved.len());
        let new_key = if copied {
            // SAFETY: see `create_segment`: the file is complete and nothing writes it.
            let new_map = std::fs::File::open(&path)
                .and_then(|file| unsafe { Mmap::map(&file) })
                .map_err(|e| (io_error("mapping", &path)(e), None))?;
            moves.extend(moved.iter().map(|(old_offset, new_offset)| {
                (
                    PagePtr::in_segment(source, *old_offset),
                    PagePtr::in_segment(key, *new_offset),
                )
            }));
            self.sealed.insert(
                key,
                SealedSegment {
                    key,
                    path: path.clone(),
                    map: Arc::new(new_map),
                    data_end: write_offset,
                    unsynced_file: None,
                    stats: SegmentStats {
                        live_bytes: 0,
                        ..stats
                    },
                },
            );
            Some(key)
        } else {
            None
        };
        if let Some(old) = old {
            if let Err(error) = fs::remove_file(&old.path) {
                tracing::warn!(path = %old.path.display(), %error,
                    "garbage collection: cannot delete a rewritten segment (the next start will)");
            }
            self.dir_unsynced = true;
            crate::crash::point("gc-deleted");
            self.retiring.push(old);
        }
        Ok(Relocated {
            new_key,
            moves,
            freed_bytes,
        })
    }

    /// A moved record became live at its new place (the index switched to it).
    pub fn relocation_moved_live(&mut self, new: PagePtr) {
        let bytes = self.record_bytes(new);
        if let Some(segment) = self.sealed.get_mut(&new.segment_key()) {
            segment.stats.live_bytes += bytes;
        }
    }

    /// The index no longer points into the rewritten segments: their mappings go.
    pub fn relocation_release(&mut self) {
        self.retiring.clear();
    }
}
