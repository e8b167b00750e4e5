//! One shard: the keys whose hash maps to it, their versioned index and their page file.
//! A shard lives on exactly one core and is only touched there.

use std::path::Path;

use bytes::Bytes;
use rivet_api::mvccpb::KeyValue;

use std::collections::VecDeque;

use rivet_api::mvccpb::{event::EventType, Event};

use crate::error::EtcdError;
use crate::keyspace::{CompactedAt, Head, Mutation, RangeEnd};
use crate::messages::{
    ApplyBatch, ApplyMessage, CheckpointRequest, RangePart, RangePartResult, RestoreChunk, ShardAck,
};
use crate::mvcc::KeyIndex;
use crate::page::{Checkpoint, KeyRecord, PageFile, PageOptions, PagePtr, RecordView};

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
}

/// One change in the recent log.
#[derive(Clone, Debug)]
struct RecentChange {
    revision: i64,
    key: Bytes,
    ptr: PagePtr,
    tombstone: bool,
}

/// Watch events of a shard, or the error of the first record that could not be read.
pub type WatchEvents = Result<Vec<Event>, EtcdError>;

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

    /// The newest version of every live key, for rebuilding the sequencer. A record
    /// that cannot be read fails it: the sequencer cannot be rebuilt without it.
    pub fn heads(&self, mut each: impl FnMut(Bytes, Head)) -> Result<(), ShardOpenError> {
        for (key, _, ptr) in self.index.range(b"\0", &RangeEnd::FromKey, self.revision) {
            let view = self.read(ptr).map_err(|e| ShardOpenError {
                shard: self.id,
                reason: e.to_string(),
            })?;
            each(
                Bytes::copy_from_slice(key),
                Head {
                    create_revision: view.create_revision,
                    mod_revision: view.mod_revision,
                    version: view.version,
                    lease: view.lease,
                    value: Bytes::copy_from_slice(view.value.unwrap_or_default()),
                },
            );
        }
        Ok(())
    }

    /// Reads the record the index points at; a damaged one is an error naming it.
    fn read(&self, ptr: PagePtr) -> Result<RecordView<'_>, EtcdError> {
        self.page.read(ptr).map_err(|e| {
            EtcdError::Internal(format!(
                "shard {}: damaged page record at {ptr:?}: {e}",
                self.id
            ))
        })
    }

    /// The heads of the live keys in chunks, ending with the chunk that says this shard is
    /// done: what the raft core rebuilds the sequencer from at start (in chunks, never
    /// every key twice at once: ETCD_LESSONS 11). A record that cannot be read fails
    /// it: the sequencer cannot be rebuilt without it, so the member refuses to start.
    pub fn restore_chunks(&self) -> Result<Vec<RestoreChunk>, ShardOpenError> {
        let mut chunk = Vec::with_capacity(crate::limits::RESTORE_CHUNK_KEYS);
        let mut chunks = Vec::new();
        self.heads(|key, head| {
            chunk.push((key, head));
            if chunk.len() == crate::limits::RESTORE_CHUNK_KEYS {
                chunks.push(RestoreChunk {
                    shard: self.id,
                    heads: Some(std::mem::take(&mut chunk)),
                });
            }
        })?;
        chunks.push(RestoreChunk {
            shard: self.id,
            heads: Some(chunk),
        });
        chunks.push(RestoreChunk {
            shard: self.id,
            heads: None,
        });
        Ok(chunks)
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
        };
        ShardAck {
            shard: self.id,
            index: self.applied_index,
            checkpoint,
            size_bytes: self.size_bytes(),
        }
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
                    self.index.tombstone(key, *revision, ptr);
                    self.remember(*revision, key, ptr, true);
                }
            }
        }
        if let Some(revision) = batch.compaction {
            if revision > self.compact_revision {
                // etcd's index compaction pause and compacted keys; the page files give
                // the space back later, in the background.
                let started = std::time::Instant::now();
                let versions = self.index.version_count();
                self.index.compact(revision);
                crate::metrics::INDEX_COMPACTION_PAUSE.observe_millis(started.elapsed());
                crate::metrics::DB_COMPACTION_KEYS
                    .add(versions.saturating_sub(self.index.version_count()) as u64);
                self.compact_revision = revision;
            }
        }
        debug_assert!(batch.index >= self.applied_index);
        self.applied_index = batch.index;
        self.revision = batch.revision;
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
    pub fn hash_kv(&self, revision: i64) -> u32 {
        let mut sum = 0u32;
        let mut buffer = Vec::new();
        for change in self.index.changes(b"\0", &RangeEnd::FromKey, 0, revision) {
            let Ok(view) = self.page.read(change.ptr) else {
                continue;
            };
            buffer.clear();
            if crate::page::encode_key_record(&view, &mut buffer).is_ok() {
                sum = sum.wrapping_add(crc32c::crc32c(&buffer));
            }
        }
        sum
    }

    /// Replaces this shard's files with the ones staged for a snapshot at `index`.
    pub fn install(&mut self, snap_dir: &Path, index: u64) -> Result<(), ShardOpenError> {
        let staged = crate::layout::staged_shard_dir(snap_dir, index, self.id);
        let own = self.page.dir().to_path_buf();
        crate::snapshot::swap_in(&staged, &own).map_err(|e| ShardOpenError {
            shard: self.id,
            reason: format!("swapping in the snapshot: {e}"),
        })?;
        *self = Shard::open(&own, self.id, index, self.options)?;
        Ok(())
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
        let prev = if prev_kv {
            self.index
                .get(key, revision - 1)
                .and_then(|(_, p)| self.page.read(p).ok().map(|v| key_value(key, &v, true)))
        } else {
            None
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

    pub fn checkpoint(&mut self, request: &CheckpointRequest) {
        debug_assert_eq!(request.index, self.applied_index);
        let checkpoint = Checkpoint {
            applied_index: request.index,
            revision: request.revision,
            compact_revision: request.compact_revision,
        };
        let started = std::time::Instant::now();
        self.page.checkpoint(&checkpoint).unwrap_or_else(|e| {
            crate::crash::stop(format_args!("shard {}: checkpoint failed: {e}", self.id))
        });
        crate::metrics::BACKEND_COMMIT.observe(started.elapsed());
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
