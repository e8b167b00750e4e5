//! One shard: the keys whose hash maps to it, their versioned index and their page file.
//! A shard lives on exactly one core and is only touched there.

use std::path::Path;

use bytes::Bytes;
use rivet_api::mvccpb::KeyValue;

use std::collections::VecDeque;

use rivet_api::mvccpb::{event::EventType, Event};

use crate::error::EtcdError;
use crate::keyspace::{CompactedAt, Mutation, RangeEnd};
use crate::messages::{
    ApplyBatch, ApplyMessage, CheckpointRequest, PageSizes, RangePart, RangePartResult, ShardAck,
};
use crate::mvcc::KeyIndex;
use crate::page::{
    Checkpoint, CheckpointError, GcError, Keep, KeyRecord, PageFile, PageOptions, PagePtr,
    RecordView, StepProgress, SyncJob, Synced,
};

#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: {reason}")]
pub struct ShardOpenError {
    pub shard: usize,
    pub reason: String,
}

pub struct Shard {
    pub id: usize,
    page: PageFile,
    /// The page file layout, kept for the files a snapshot install swaps in.
    options: PageOptions,
    index: KeyIndex,
    applied_index: u64,
    revision: i64,
    compact_revision: i64,
    /// The newest changes, for watchers that keep up: every change with a revision at or
    /// after `recent_from` is here, in apply order. Bounded; older ones are read from the
    /// index (the catch-up path).
    recent: VecDeque<RecentChange>,
    recent_from: i64,
    /// The last checkpoint this shard wrote: index, slot of its record, compact revision.
    written: Option<DurablePoint>,
    /// The newest checkpoint recorded in the WAL (every later start opens at it or at a
    /// later one): what garbage collection may rely on.
    durable: Option<DurablePoint>,
    /// Set when a checkpoint became durable: the core's garbage collection task looks.
    gc_wanted: bool,
    /// Moves of a rewritten segment not yet applied to the index.
    switch: Option<Switch>,
    /// Snapshot streams reading this shard's segments: garbage collection waits, and
    /// compactions keep the index's old versions until they end.
    pins: usize,
    /// A compaction that came while pinned, applied to the index when the pins end.
    deferred_compaction: Option<i64>,
    /// `Maintenance.Snapshot` streams reading this shard, by id (each holds a pin).
    snapshots: std::collections::HashMap<u64, crate::etcd_snapshot::SnapshotCursor>,
    /// Where a damaged record read while serving is reported (the core raises CORRUPT,
    /// [`crate::core::ShardCore::raise_corrupt`]); kept across snapshot installs.
    damage: Option<async_channel::Sender<String>>,
}

/// A checkpoint and where its record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurablePoint {
    pub index: u64,
    pub slot: u32,
    pub compact_revision: i64,
}

/// The moves of a rewritten segment, applied to the index in steps.
struct Switch {
    moves: Vec<(PagePtr, PagePtr)>,
    next: usize,
}

/// How a garbage collection pass picks and treats segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// After a compaction: segments whose dead share reaches
    /// [`crate::limits::GC_DEAD_PERCENT_MIN`]; dead tombstones that may still hide older
    /// records of their key elsewhere are kept.
    Background,
    /// Maintenance.Defragment: every segment with a dead byte, every dead record dropped
    /// (safe because every segment holding one is rewritten, oldest first).
    Defragment,
}

impl GcMode {
    fn threshold_percent(self) -> u64 {
        match self {
            GcMode::Background => crate::limits::GC_DEAD_PERCENT_MIN,
            GcMode::Defragment => 0,
        }
    }
}

/// One change in the recent log.
#[derive(Clone, Debug)]
struct RecentChange {
    revision: i64,
    key: Bytes,
    ptr: PagePtr,
    tombstone: bool,
}

pub use crate::messages::WatchEvents;

fn key_value(key: &[u8], view: &RecordView<'_>, with_value: bool) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: view.create_revision,
        mod_revision: view.mod_revision,
        version: view.version,
        value: match (with_value, view.value) {
            (true, Some(value)) => Bytes::copy_from_slice(value),
            _ => Bytes::new(),
        },
        lease: view.lease,
    }
}

impl Shard {
    /// Opens the shard's page file and rebuilds its index from the records before the
    /// checkpoint at `checkpoint_index` (streamed segment by segment).
    pub fn open(
        dir: &Path,
        id: usize,
        checkpoint_index: u64,
        options: PageOptions,
    ) -> Result<Shard, ShardOpenError> {
        let mut index = KeyIndex::default();
        // A record that passed its CRC can still be one the index cannot take (an empty
        // key, a revision out of order): the first such one fails the open.
        let mut bad_record = None;
        let (page, checkpoint) = PageFile::open(dir, options, checkpoint_index, |ptr, view| {
            if bad_record.is_some() {
                return;
            }
            let taken = if view.value.is_some() {
                index.try_put(view.key, view.mod_revision, ptr)
            } else {
                index
                    .try_tombstone(view.key, view.mod_revision, ptr)
                    .map(|_| ())
            };
            if let Err(e) = taken {
                bad_record = Some(format!("page record at {ptr:?}: {e}"));
            }
        })
        .map_err(|e| ShardOpenError {
            shard: id,
            reason: e.to_string(),
        })?;
        if let Some(reason) = bad_record {
            return Err(ShardOpenError { shard: id, reason });
        }
        let (applied_index, revision, compact_revision) = match checkpoint {
            Some(c) => (c.applied_index, c.revision, c.compact_revision),
            None => (0, 1, -1),
        };
        if compact_revision > 0 {
            index.compact(compact_revision);
        }
        let mut live = Vec::with_capacity(index.version_count());
        index.for_each_ptr(|ptr| live.push(ptr));
        let mut page = page;
        page.recount_live(live);
        let durable = checkpoint.map(|c| DurablePoint {
            index: c.applied_index,
            slot: page.last_checkpoint_slot(),
            compact_revision: c.compact_revision,
        });
        Ok(Shard {
            id,
            page,
            options,
            index,
            applied_index,
            revision,
            compact_revision,
            recent: VecDeque::new(),
            recent_from: revision + 1,
            written: durable,
            durable,
            gc_wanted: durable.is_some(),
            switch: None,
            pins: 0,
            deferred_compaction: None,
            snapshots: std::collections::HashMap::new(),
            damage: None,
        })
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Bytes the shard's records take in its page file (not the preallocated space).
    pub fn size_bytes(&self) -> u64 {
        self.page.used_bytes()
    }

    /// Bytes written and bytes live in the shard's page file.
    pub fn sizes(&self) -> PageSizes {
        PageSizes {
            used_bytes: self.page.used_bytes(),
            live_bytes: self.page.live_bytes(),
        }
    }

    /// The page file (tests and tools look at its segments).
    pub fn page(&self) -> &PageFile {
        &self.page
    }

    /// The newest version of the next [`crate::limits::RESTORE_CHUNK_KEYS`] live keys
    /// after `after` (from the first key when `None`), in key order, for rebuilding the
    /// sequencer; empty when no key is left. The value is not copied: the head points at
    /// its record, which the sequencer reads through [`PageFile::segment_views`] when it
    /// needs the value. A record that cannot be read (its CRC fails) fails it: the
    /// sequencer cannot be rebuilt without it.
    pub fn heads_after(
        &self,
        after: Option<&[u8]>,
    ) -> Result<Vec<(Bytes, crate::sequencer::StoredHead)>, ShardOpenError> {
        // The smallest key greater than `after` is `after` followed by a zero byte; keys
        // are never empty, so "\0" is the smallest of all.
        let start = match after {
            Some(key) => [key, b"\0"].concat(),
            None => b"\0".to_vec(),
        };
        let mut chunk = Vec::with_capacity(crate::limits::RESTORE_CHUNK_KEYS);
        let keys = self.index.range(&start, &RangeEnd::FromKey, self.revision);
        for (key, _, ptr) in keys.take(crate::limits::RESTORE_CHUNK_KEYS) {
            let view = self.page.read(ptr).map_err(|e| ShardOpenError {
                shard: self.id,
                reason: format!("damaged page record at {ptr:?}: {e}"),
            })?;
            chunk.push((
                Bytes::copy_from_slice(key),
                crate::sequencer::StoredHead {
                    create_revision: view.create_revision,
                    mod_revision: view.mod_revision,
                    version: view.version,
                    lease: view.lease,
                    ptr,
                },
            ));
        }
        Ok(chunk)
    }

    /// The segments of the page file mapped read-only as they are now (see
    /// [`PageFile::segment_views`]): what the sequencer reads restored values from.
    pub fn segment_views(&self) -> Result<Vec<crate::page::SegmentView>, ShardOpenError> {
        self.page.segment_views().map_err(|e| ShardOpenError {
            shard: self.id,
            reason: format!("cannot map the page file's segments: {e}"),
        })
    }

    /// Reads the record the index points at. A damaged one (its CRC fails, or the
    /// pointer leads nowhere) is reported once here for every reader — range, watch
    /// events and their prev_kv, HashKV, snapshot export: logged, handed to the core,
    /// which raises the CORRUPT alarm through raft, and answered as etcd's
    /// `etcdserver: corrupt cluster` (DataLoss).
    fn read(&self, ptr: PagePtr) -> Result<RecordView<'_>, EtcdError> {
        self.page.read(ptr).map_err(|e| self.damaged(ptr, &e))
    }

    /// The one policy for a damaged page record read while serving (see [`Shard::read`]).
    fn damaged(&self, ptr: PagePtr, error: &dyn std::fmt::Display) -> EtcdError {
        report_damage(self.id, self.damage.as_ref(), ptr, error)
    }

    /// Sends reports of damaged records read while serving to `damage`.
    pub fn report_damage_to(&mut self, damage: async_channel::Sender<String>) {
        self.damage = Some(damage);
    }

    /// Handles one message of the apply stream and returns what to acknowledge to the
    /// raft core.
    pub fn handle_apply(&mut self, message: ApplyMessage) -> ShardAck {
        let checkpoint = match message {
            ApplyMessage::Batch(batch) => {
                self.apply(&batch);
                None
            }
            ApplyMessage::Install { snap_dir, index } => {
                if let Err(e) = self.install(&snap_dir, index) {
                    // The WAL already names this snapshot: a restart finishes the
                    // install, or refuses to start with the reason.
                    crate::crash::stop(format_args!(
                        "cannot install the snapshot at index {index}: {e}"
                    ));
                }
                Some(index)
            }
            ApplyMessage::Checkpoint(request) => {
                self.checkpoint(&request);
                Some(request.index)
            }
            ApplyMessage::CheckpointRecorded { index } => {
                self.checkpoint_recorded(index);
                None
            }
            ApplyMessage::SnapshotPin { id, revision } => {
                self.snapshot_pin(id, revision);
                None
            }
        };
        self.ack(checkpoint)
    }

    /// Applies one batch of the apply stream. A failure to write the page file (disk
    /// full, I/O error) stops the member (`crash::stop`): the shard cannot skip a change
    /// and stay correct, and the WAL still has everything for the restart.
    pub fn apply(&mut self, batch: &ApplyBatch) {
        for mutation in &batch.mutations {
            match mutation {
                Mutation::Put { key, head } => {
                    let record = KeyRecord {
                        key,
                        create_revision: head.create_revision,
                        mod_revision: head.mod_revision,
                        version: head.version,
                        lease: head.lease,
                        value: Some(&head.value),
                    };
                    let ptr = self.page.append(&record).unwrap_or_else(|e| {
                        crate::crash::stop(format_args!(
                            "shard {}: cannot append to the page file: {e}",
                            self.id
                        ))
                    });
                    self.index.put(key, head.mod_revision, ptr);
                    self.remember(head.mod_revision, key, ptr, false);
                }
                Mutation::Delete { key, revision } => {
                    let record = KeyRecord {
                        key,
                        create_revision: 0,
                        mod_revision: *revision,
                        version: 0,
                        lease: 0,
                        value: None,
                    };
                    let ptr = self.page.append(&record).unwrap_or_else(|e| {
                        crate::crash::stop(format_args!(
                            "shard {}: cannot append to the page file: {e}",
                            self.id
                        ))
                    });
                    if !self.index.tombstone(key, *revision, ptr) {
                        // The key was not live: the record is dead from the start.
                        self.page.release(ptr);
                    }
                    self.remember(*revision, key, ptr, true);
                }
            }
        }
        if let Some(revision) = batch.compaction {
            if revision > self.compact_revision {
                self.compact_revision = revision;
                if self.pins > 0 {
                    // A snapshot stream reads the versions this drops: the index keeps
                    // them until it ends (reads below the compaction are refused anyway).
                    self.deferred_compaction = Some(revision);
                } else {
                    self.compact_index(revision);
                }
            }
        }
        debug_assert!(batch.index >= self.applied_index);
        self.applied_index = batch.index;
        self.revision = batch.revision;
    }

    /// etcd's index compaction pause and compacted keys; the page files give the space
    /// back later, in the background.
    fn compact_index(&mut self, revision: i64) {
        let started = std::time::Instant::now();
        let versions = self.index.version_count();
        let page = &mut self.page;
        self.index.compact_with(revision, |ptr| page.release(ptr));
        crate::metrics::INDEX_COMPACTION_PAUSE.observe_millis(started.elapsed());
        crate::metrics::DB_COMPACTION_KEYS
            .add(versions.saturating_sub(self.index.version_count()) as u64);
    }

    /// Every version this shard retains up to `revision`, as a snapshot stream (page
    /// records), oldest first. Built in one pass so that a compaction cannot interleave.
    pub fn export(&self, revision: i64) -> Result<Vec<u8>, EtcdError> {
        let mut out = Vec::new();
        for change in self.index.changes(b"\0", &RangeEnd::FromKey, 0, revision) {
            let view = self.read(change.ptr)?;
            // A page view is a `KeyRecord`: it encodes as it is.
            crate::page::encode_key_record(&view, &mut out).map_err(|e| {
                EtcdError::Internal(format!("shard {}: cannot encode a record: {e}", self.id))
            })?;
        }
        Ok(out)
    }

    /// The consistency hash of every version this shard retains up to `revision`: the
    /// wrapping sum of the crc32c of each version's page record. A sum, so that members
    /// with different shard counts (different partitions of the same versions) agree.
    /// A damaged record fails it (never skipped: the hash would hide the damage).
    pub fn hash_kv(&self, revision: i64) -> Result<u32, EtcdError> {
        let mut sum = 0u32;
        let mut buffer = Vec::new();
        for change in self.index.changes(b"\0", &RangeEnd::FromKey, 0, revision) {
            let view = self.read(change.ptr)?;
            buffer.clear();
            crate::page::encode_key_record(&view, &mut buffer)
                .map_err(|e| self.damaged(change.ptr, &e))?;
            sum = sum.wrapping_add(crc32c::crc32c(&buffer));
        }
        Ok(sum)
    }

    /// Replaces this shard's files with the ones staged for a snapshot at `index`.
    pub fn install(&mut self, snap_dir: &Path, index: u64) -> Result<(), ShardOpenError> {
        self.finish_switch();
        self.page.relocation_abort();
        let pins = self.pins;
        let staged = crate::layout::staged_shard_dir(snap_dir, index, self.id);
        let own = self.page.dir().to_path_buf();
        crate::snapshot::swap_in(&staged, &own).map_err(|e| ShardOpenError {
            shard: self.id,
            reason: format!("swapping in the snapshot: {e}"),
        })?;
        let streams = self.snapshots.len();
        let damage = self.damage.take();
        *self = Shard::open(&own, self.id, index, self.options)?;
        self.damage = damage;
        // The index the streams checked versions against is gone: they fail at their
        // next chunk. Pins taken otherwise stay counted until they are released.
        self.pins = pins.saturating_sub(streams);
        Ok(())
    }

    /// A snapshot stream starts reading this shard: garbage collection waits and the
    /// index keeps the versions of compactions until [`Shard::unpin`].
    pub fn pin(&mut self) {
        self.finish_switch();
        self.page.relocation_abort();
        self.pins += 1;
    }

    pub fn unpin(&mut self) {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 {
            if let Some(revision) = self.deferred_compaction.take() {
                self.compact_index(revision);
            }
        }
    }

    /// A snapshot stream starts reading this shard at `revision` (everything applied so
    /// far): the segments as they are now and the index's versions stay readable for it.
    fn snapshot_pin(&mut self, id: u64, revision: i64) {
        self.pin();
        match self.page.segment_views() {
            Ok(views) => {
                let cursor = crate::etcd_snapshot::SnapshotCursor::new(revision, views);
                self.snapshots.insert(id, cursor);
            }
            Err(e) => {
                tracing::error!(
                    shard = self.id,
                    "snapshot {id}: cannot map the segments: {e}"
                );
                self.unpin();
            }
        }
    }

    /// Whether snapshot stream `id` is pinned here.
    pub fn has_snapshot(&self, id: u64) -> bool {
        self.snapshots.contains_key(&id)
    }

    /// The next versions of snapshot stream `id`.
    pub fn snapshot_chunk(
        &mut self,
        id: u64,
        restart: bool,
        sizes_only: bool,
    ) -> Result<crate::etcd_snapshot::SnapshotChunk, EtcdError> {
        let cursor = self.snapshots.get_mut(&id).ok_or_else(|| {
            EtcdError::Internal(format!("snapshot {id} is not open on shard {}", self.id))
        })?;
        if restart {
            cursor.restart();
        }
        let chunk = cursor.next_chunk(
            &self.index,
            crate::limits::SNAPSHOT_CHUNK_VERSIONS,
            crate::limits::SNAPSHOT_CHUNK_BYTES,
            sizes_only,
        );
        chunk.map_err(|damaged| self.damaged(damaged.ptr, &damaged.error))
    }

    /// Snapshot stream `id` ended.
    pub fn snapshot_end(&mut self, id: u64) {
        if self.snapshots.remove(&id).is_some() {
            self.unpin();
        }
    }

    /// Drops snapshot pins nobody read for [`crate::limits::SNAPSHOT_PIN_IDLE`].
    fn expire_idle_snapshots(&mut self) {
        if self.snapshots.is_empty() {
            return;
        }
        let idle: Vec<u64> = self
            .snapshots
            .iter()
            .filter(|(_, cursor)| cursor.last_used.elapsed() > crate::limits::SNAPSHOT_PIN_IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            tracing::warn!(
                shard = self.id,
                "snapshot {id}: nobody read it for a while; unpinned"
            );
            self.snapshot_end(id);
        }
    }

    fn remember(&mut self, revision: i64, key: &Bytes, ptr: PagePtr, tombstone: bool) {
        self.recent.push_back(RecentChange {
            revision,
            key: key.clone(),
            ptr,
            tombstone,
        });
        while self.recent.len() > crate::limits::watch_recent_changes_max() {
            if let Some(old) = self.recent.pop_front() {
                // A revision is complete in the log only if none of its changes left.
                self.recent_from = self.recent_from.max(old.revision + 1);
            }
        }
    }

    /// Builds the watch event of one change (a DELETE carries the key and the delete's
    /// revision, as etcd's do).
    fn event(
        &self,
        key: &[u8],
        revision: i64,
        ptr: PagePtr,
        tombstone: bool,
        prev_kv: bool,
    ) -> Result<Event, EtcdError> {
        let kv = if tombstone {
            KeyValue {
                key: Bytes::copy_from_slice(key),
                mod_revision: revision,
                ..Default::default()
            }
        } else {
            key_value(key, &self.read(ptr)?, true)
        };
        let prev = match prev_kv.then(|| self.index.get(key, revision - 1)).flatten() {
            Some((_, p)) => Some(key_value(key, &self.read(p)?, true)),
            None => None,
        };
        Ok(Event {
            r#type: if tombstone {
                EventType::Delete as i32
            } else {
                EventType::Put as i32
            },
            kv: Some(kv),
            prev_kv: prev,
        })
    }

    /// Every change with `from <= revision <= to` from the recent log, in apply order, or
    /// `None` when the log no longer reaches back to `from` (the caller then reads the
    /// index for each watcher).
    pub fn recent_changes(&self, from: i64, to: i64, prev_kv: bool) -> Option<WatchEvents> {
        if from < self.recent_from {
            return None;
        }
        let start = self.recent.partition_point(|c| c.revision < from);
        Some(
            self.recent
                .iter()
                .skip(start)
                .take_while(|c| c.revision <= to)
                .map(|c| self.event(&c.key, c.revision, c.ptr, c.tombstone, prev_kv))
                .collect(),
        )
    }

    /// The changes of one key range with `from <= revision <= to`, read from the index
    /// (the catch-up path), ordered by revision, within a revision in apply order.
    pub fn history(
        &self,
        key: &[u8],
        end: &RangeEnd,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<WatchEvents, CompactedAt> {
        if from < self.compact_revision {
            return Err(CompactedAt(self.compact_revision));
        }
        Ok(self
            .index
            .changes(key, end, from, to)
            .into_iter()
            .map(|c| self.event(c.key, c.revision, c.ptr, c.tombstone, prev_kv))
            .collect())
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Checkpoints the page file at `request`, blocking the calling thread on its syncs
    /// (tools, tests, the simulation). A shard core uses [`Shard::checkpoint_begin`],
    /// [`Shard::checkpoint_write`] and [`Shard::checkpoint_end`] with asynchronous syncs.
    pub fn checkpoint(&mut self, request: &CheckpointRequest) {
        let started = std::time::Instant::now();
        let records = self.checkpoint_begin(request).run_blocking();
        let record = self.checkpoint_write(request, records).run_blocking();
        self.checkpoint_end(request, record, started);
    }

    fn page_checkpoint(request: &CheckpointRequest) -> Checkpoint {
        Checkpoint {
            applied_index: request.index,
            revision: request.revision,
            compact_revision: request.compact_revision,
        }
    }

    /// A checkpoint's first step: seals the active segment if asked, and returns the job
    /// that makes every record durable. Batches applied before [`Shard::checkpoint_end`]
    /// lie after the checkpoint record's reserved place: the checkpoint does not cover them.
    /// Failures stop the member (`crash::stop`), as every step's.
    pub fn checkpoint_begin(&mut self, request: &CheckpointRequest) -> SyncJob {
        debug_assert_eq!(request.index, self.applied_index);
        if request.seal {
            self.page.seal_active().unwrap_or_else(|e| {
                crate::crash::stop(format_args!(
                    "shard {}: sealing a segment failed: {e}",
                    self.id
                ))
            });
        }
        self.page
            .checkpoint_begin(&Self::page_checkpoint(request))
            .unwrap_or_else(|e| self.checkpoint_failed(&e))
    }

    /// The second step, once the records' sync ended: writes the checkpoint record and
    /// returns the job that syncs it.
    pub fn checkpoint_write(
        &mut self,
        request: &CheckpointRequest,
        records: Result<Synced, CheckpointError>,
    ) -> SyncJob {
        self.page
            .checkpoint_write(&Self::page_checkpoint(request), records)
            .unwrap_or_else(|e| self.checkpoint_failed(&e))
    }

    /// The last step, once the record's sync ended: the checkpoint is written (the raft
    /// core records it in the WAL once every shard acknowledged it).
    pub fn checkpoint_end(
        &mut self,
        request: &CheckpointRequest,
        record: Result<Synced, CheckpointError>,
        started: std::time::Instant,
    ) {
        self.page
            .checkpoint_end(&Self::page_checkpoint(request), record)
            .unwrap_or_else(|e| self.checkpoint_failed(&e));
        crate::metrics::BACKEND_COMMIT.observe(started.elapsed());
        self.written = Some(DurablePoint {
            index: request.index,
            slot: self.page.last_checkpoint_slot(),
            compact_revision: request.compact_revision,
        });
    }

    fn checkpoint_failed(&self, error: &CheckpointError) -> ! {
        crate::crash::stop(format_args!(
            "shard {}: checkpoint failed: {error}",
            self.id
        ))
    }

    /// What to acknowledge to the raft core after a message of the apply stream
    /// (`checkpoint`: the index of a checkpoint this shard has written).
    pub fn ack(&mut self, checkpoint: Option<u64>) -> ShardAck {
        self.expire_idle_snapshots();
        ShardAck {
            shard: self.id,
            index: self.applied_index,
            checkpoint,
            size_bytes: self.size_bytes(),
        }
    }

    /// The checkpoint at `index` is recorded in the WAL.
    fn checkpoint_recorded(&mut self, index: u64) {
        if let Some(written) = self.written.filter(|w| w.index == index) {
            self.durable = Some(written);
            self.gc_wanted = true;
        }
    }

    /// Whether a checkpoint became durable since the last call (garbage collection may
    /// have work).
    pub fn take_gc_wanted(&mut self) -> bool {
        std::mem::take(&mut self.gc_wanted)
    }

    /// The newest checkpoint recorded in the WAL that this shard knows of.
    pub fn durable(&self) -> Option<DurablePoint> {
        self.durable
    }

    // ---- Garbage collection of the page file ------------------------------------------
    //
    // Which records may go (the page file only moves bytes, `crate::page::gc`):
    // - only what the compaction of a checkpoint already recorded in the WAL removed
    //   (every later start opens at that checkpoint or a later one, whose compaction
    //   removes at least as much), and only segments that lie wholly before it;
    // - a dead tombstone that is the newest version of its key at or below the compact
    //   revision hides the key's older records: dropped while an older record of its key
    //   may remain in another segment, the next start would bring the key back. So the
    //   background pass keeps it (pinned) unless a live version at or below the compact
    //   revision hides those records itself; a defragmentation drops it, because it
    //   rewrites every segment that holds a dead record, oldest first (a key's older
    //   records lie in the same or earlier slots).

    /// The segments a pass in `mode` would rewrite now, oldest first; empty when it may
    /// not run (no durable checkpoint covers the compaction in force, a snapshot stream
    /// reads the segments, a rewrite is being switched).
    pub fn gc_candidates(&self, mode: GcMode) -> Vec<u32> {
        match self.gc_point() {
            Some(durable) => self
                .page
                .gc_candidates(durable.slot, mode.threshold_percent()),
            None => Vec::new(),
        }
    }

    /// The durable checkpoint garbage collection works under, if it may work now.
    fn gc_point(&self) -> Option<DurablePoint> {
        let durable = self.durable?;
        let ready = durable.compact_revision == self.compact_revision
            && self.deferred_compaction.is_none()
            && self.pins == 0
            && self.switch.is_none();
        ready.then_some(durable)
    }

    /// Whether the active segment holds dead records that a defragmentation could reach
    /// by resealing (nothing applied since the last checkpoint, which is durable).
    pub fn gc_reseal(&mut self) -> Result<bool, GcError> {
        let Some(durable) = self.gc_point() else {
            return Ok(false);
        };
        let active = self.page.active_slot();
        let stats = self.page.segment_stats();
        let active_dead = stats
            .last()
            .is_some_and(|(_, stats)| stats.dead_bytes() > 0);
        if durable.index != self.applied_index
            || durable.slot != active
            || self.page.last_checkpoint_index() != durable.index
            || !active_dead
        {
            return Ok(false);
        }
        self.page.reseal().map_err(|e| GcError::Io {
            what: "resealing",
            path: self.page.dir().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let slot = self.page.last_checkpoint_slot();
        self.durable = Some(DurablePoint { slot, ..durable });
        self.written = self.durable;
        Ok(true)
    }

    /// Starts rewriting segment `key`; false when garbage collection may not run now.
    pub fn gc_begin(&mut self, key: u32) -> Result<bool, GcError> {
        if self.gc_point().is_none() || self.page.relocating() {
            return Ok(false);
        }
        self.page.relocation_begin(key)?;
        Ok(true)
    }

    /// One step of the rewrite under way. `None` when it had to stop (a compaction came
    /// that no durable checkpoint covers yet, a snapshot stream started): the rewrite is
    /// abandoned and the old segment stays.
    pub fn gc_step(
        &mut self,
        budget: usize,
        mode: GcMode,
    ) -> Result<Option<StepProgress>, GcError> {
        let Some(durable) = self.gc_point() else {
            self.page.relocation_abort();
            return Ok(None);
        };
        let compact = durable.compact_revision;
        let index = &self.index;
        let progress = self.page.relocation_step(budget, |ptr, view| {
            match index.version_at(view.key, view.mod_revision) {
                Some((held, _)) if held == ptr => Keep::Live,
                _ if view.value.is_none() && mode == GcMode::Background => {
                    match index.first_version(view.key) {
                        Some((revision, false)) if revision <= compact => Keep::Drop,
                        _ => Keep::Pinned,
                    }
                }
                _ => Keep::Drop,
            }
        });
        match progress {
            Ok(progress) => Ok(Some(progress)),
            Err(error) => {
                self.page.relocation_abort();
                Err(error)
            }
        }
    }

    /// Commits the rewrite under way (the new segment replaces the old one on disk) and
    /// starts switching the index to it. Answers the bytes freed.
    pub fn gc_finish(&mut self) -> Result<u64, GcError> {
        let relocated = self.page.relocation_finish()?;
        self.switch = Some(Switch {
            moves: relocated.moves,
            next: 0,
        });
        Ok(relocated.freed_bytes)
    }

    /// Points the index at up to `budget` moved records (more to finish a revision, so
    /// that the records of one revision never sit in two segments at once); true when
    /// every move is done and the old segment's mapping released.
    pub fn gc_switch_step(&mut self, budget: usize) -> bool {
        let Some(switch) = &mut self.switch else {
            return true;
        };
        let mut done = 0;
        let mut last_revision = None;
        while let Some(&(from, to)) = switch.moves.get(switch.next) {
            let view = match self.page.read(to) {
                Ok(view) => view,
                Err(e) => {
                    // The copy just written does not read back: the disk damaged it. The
                    // index keeps the old place (gone once the rewrite is released), so
                    // reads of it will fail too; the member raises CORRUPT now.
                    report_damage(self.id, self.damage.as_ref(), to, &e);
                    switch.next += 1;
                    continue;
                }
            };
            if done >= budget && last_revision != Some(view.mod_revision) {
                return false;
            }
            last_revision = Some(view.mod_revision);
            let revision = view.mod_revision;
            let key = Bytes::copy_from_slice(view.key);
            if self.index.relocate(&key, revision, from, to) {
                self.page.relocation_moved_live(to);
                relocate_recent(&mut self.recent, revision, from, to);
            }
            switch.next += 1;
            done += 1;
        }
        self.switch = None;
        self.page.relocation_release();
        true
    }

    /// Finishes a pending index switch at once (a snapshot stream is about to read the
    /// segments, or the shard's files are replaced).
    fn finish_switch(&mut self) {
        while !self.gc_switch_step(usize::MAX) {}
    }

    /// Abandons a rewrite that was not committed.
    pub fn gc_abort(&mut self) {
        self.page.relocation_abort();
    }

    /// This shard's part of a range, at a revision it has applied.
    pub fn range(&self, part: &RangePart) -> Result<RangePartResult, EtcdError> {
        if part.revision < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        debug_assert!(part.revision <= self.revision);
        let mut result = RangePartResult::default();
        for (key, _, ptr) in self.index.range(&part.key, &part.end, part.revision) {
            result.count += 1;
            if part.count_only || (part.limit != 0 && result.kvs.len() >= part.limit) {
                continue;
            }
            let view = self.read(ptr)?;
            result.kvs.push(key_value(key, &view, part.with_values));
        }
        Ok(result)
    }
}

/// The one policy for a page record that fails its checks while the member serves
/// (issue 10 item 3): log it, report it so the raft core raises CORRUPT for this member,
/// and answer the client etcd's `corrupt cluster`.
fn report_damage(
    shard: usize,
    damage: Option<&async_channel::Sender<String>>,
    ptr: PagePtr,
    error: &dyn std::fmt::Display,
) -> EtcdError {
    let what = format!("shard {shard}: damaged page record at {ptr:?}: {error}");
    tracing::error!("{what}");
    if let Some(damage) = damage {
        // Full: a report is already pending, the alarm is on its way.
        let _ = damage.try_send(what);
    }
    EtcdError::Corrupt
}

/// Points the recent log's entry for the record moved from `from` to `to`, if it has one.
fn relocate_recent(recent: &mut VecDeque<RecentChange>, revision: i64, from: PagePtr, to: PagePtr) {
    let start = recent.partition_point(|change| change.revision < revision);
    for change in recent.iter_mut().skip(start) {
        if change.revision != revision {
            break;
        }
        if change.ptr == from {
            change.ptr = to;
        }
    }
}
