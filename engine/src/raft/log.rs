//! The raft log's storage: the WAL, and what its records mean to the raft core — entries,
//! hard states and checkpoint markers written as raft's Ready asks, read back at start.
//!
//! Recovery ([`recover`]) is shared by the WAL and the simulation's disk: the last
//! checkpoint marker, the last hard state, and the entries after the checkpoint, a later
//! entry at an index replacing that index and everything after it.

use std::time::Instant;

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Entry, HardState};
use rivet_api::rivetpb::{CheckpointMarker, WalMetadata};
use rivet_wal::{Record, RecordKind, Wal, WalOptions};

use super::config::{RaftCoreConfig, StartError};
use super::io::{LogError, LogRecord, LogStorage};
use crate::limits;

/// The durable state found in the log at start-up.
pub struct Recovered {
    /// `Send`: the log is opened before the raft core's thread starts.
    pub log: Box<dyn LogStorage + Send>,
    pub checkpoint: Option<CheckpointMarker>,
    pub hard_state: HardState,
    /// The entries after the checkpoint.
    pub entries: Vec<Entry>,
}

impl Recovered {
    /// The index up to which this member's log is known committed at start: the hard
    /// state's commit, at least the checkpoint (applied, hence committed), at most the
    /// last entry. Everything up to it is applied again from the log without any peer
    /// (the raft core's boot clamps the hard state the same way). The hard state's commit
    /// index may lag (it is not written on its own), so entries after it may be
    /// committed too: see [`Recovered::last_index`].
    pub fn committed_at_start(&self) -> u64 {
        let applied = self.checkpoint.as_ref().map_or(0, |c| c.applied_index);
        self.hard_state.commit.max(applied).min(self.last_index())
    }

    /// The last entry of the log at start (the checkpoint's index without entries).
    pub fn last_index(&self) -> u64 {
        let applied = self.checkpoint.as_ref().map_or(0, |c| c.applied_index);
        self.entries
            .last()
            .map_or(applied, |e| e.index)
            .max(applied)
    }
}

/// What a log's records say.
pub struct RecoveredState {
    pub checkpoint: Option<CheckpointMarker>,
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
}

/// Opens the WAL in `config.wal_dir`, or creates it with this member's metadata, and
/// returns what it holds. Done before the cores start, so the shards know which
/// checkpoint to load. `requested_shards` is `--shards` if given: a data dir keeps the
/// shard count it was created with, and refuses a different one; without the flag the
/// data dir's count is used, and a new data dir gets `config.shard_count`.
pub fn open_wal(
    config: &mut RaftCoreConfig,
    requested_shards: Option<usize>,
) -> Result<Recovered, StartError> {
    let options = WalOptions::default();
    if !Wal::exists(&config.wal_dir) {
        let metadata = WalMetadata {
            member_id: config.member_id,
            cluster_id: config.cluster_id,
            shard_count: config.shard_count as u32,
        };
        let wal = Wal::create(&config.wal_dir, &metadata.encode_to_vec(), options)
            .map_err(|e| StartError::Wal(e.to_string()))?;
        return Ok(Recovered {
            log: Box::new(WalLog::new(wal)),
            checkpoint: None,
            hard_state: HardState::default(),
            entries: Vec::new(),
        });
    }
    let (wal, recovery) =
        Wal::open(&config.wal_dir, options).map_err(|e| StartError::Wal(e.to_string()))?;
    if let Some(torn) = &recovery.torn_tail {
        tracing::warn!(
            ?torn,
            "WAL had a torn tail; it was cut (those writes were never acknowledged)"
        );
    }
    let metadata =
        WalMetadata::decode(recovery.metadata.as_slice()).map_err(|e| StartError::Decode {
            what: "metadata",
            index: 0,
            reason: e.to_string(),
        })?;
    check_metadata(config, &metadata, requested_shards)?;
    let state = recover(recovery.records)?;
    Ok(Recovered {
        log: Box::new(WalLog::new(wal)),
        checkpoint: state.checkpoint,
        hard_state: state.hard_state,
        entries: state.entries,
    })
}

/// Checks that the WAL belongs to this member and takes what it says about the data dir
/// (the cluster ID a joining member learned, the shard count).
fn check_metadata(
    config: &mut RaftCoreConfig,
    metadata: &WalMetadata,
    requested_shards: Option<usize>,
) -> Result<(), StartError> {
    // A joining member restarting takes the cluster ID its WAL learned.
    if config.cluster_id == 0 {
        config.cluster_id = metadata.cluster_id;
    }
    if metadata.member_id != config.member_id || metadata.cluster_id != config.cluster_id {
        return Err(StartError::Identity {
            dir: config.wal_dir.display().to_string(),
            found: metadata.member_id,
            found_cluster: metadata.cluster_id,
            expected: config.member_id,
            expected_cluster: config.cluster_id,
        });
    }
    match requested_shards {
        Some(requested) if requested != metadata.shard_count as usize => {
            Err(StartError::ShardCount {
                found: metadata.shard_count,
                requested,
            })
        }
        _ => {
            config.shard_count = (metadata.shard_count as usize).max(1);
            Ok(())
        }
    }
}

/// Reads a log's records: the last checkpoint marker, the last hard state, and the
/// entries after the checkpoint.
pub fn recover(records: impl IntoIterator<Item = LogRecord>) -> Result<RecoveredState, StartError> {
    let mut hard_state = HardState::default();
    let mut checkpoint: Option<CheckpointMarker> = None;
    let mut entries: Vec<Entry> = Vec::new();
    for record in records {
        let damaged = |what: &'static str, reason: String| StartError::Decode {
            what,
            index: record.index,
            reason,
        };
        match record.kind {
            RecordKind::Entry => {
                let mut entry = Entry::default();
                entry
                    .merge_from_bytes(&record.payload)
                    .map_err(|e| damaged("entry", e.to_string()))?;
                // A later entry at an index replaces that index and everything after it
                // (a new leader overwrote an uncommitted tail).
                while entries.last().is_some_and(|last| last.index >= entry.index) {
                    entries.pop();
                }
                entries.push(entry);
            }
            RecordKind::HardState => {
                let mut state = HardState::default();
                state
                    .merge_from_bytes(&record.payload)
                    .map_err(|e| damaged("hard state", e.to_string()))?;
                hard_state = state;
            }
            RecordKind::Snapshot => {
                let marker = CheckpointMarker::decode(record.payload.as_slice())
                    .map_err(|e| damaged("checkpoint marker", e.to_string()))?;
                checkpoint = Some(marker);
            }
            RecordKind::Metadata => {}
        }
    }
    if let Some(c) = &checkpoint {
        entries.retain(|e| e.index > c.applied_index);
    }
    Ok(RecoveredState {
        checkpoint,
        hard_state,
        entries,
    })
}

/// The records of one Ready: its new entries, then its hard state.
pub fn ready_records(
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<Vec<LogRecord>, String> {
    let mut records = Vec::with_capacity(entries.len() + 1);
    for entry in entries {
        records.push(LogRecord {
            kind: RecordKind::Entry,
            index: entry.index,
            payload: entry.write_to_bytes().map_err(|e| e.to_string())?,
        });
    }
    if let Some(hs) = hard_state {
        records.push(LogRecord {
            kind: RecordKind::HardState,
            index: 0,
            payload: hs.write_to_bytes().map_err(|e| e.to_string())?,
        });
    }
    Ok(records)
}

/// The record of a checkpoint marker: the WAL names the checkpoint every shard has.
pub fn marker_record(marker: &CheckpointMarker) -> LogRecord {
    LogRecord {
        kind: RecordKind::Snapshot,
        index: marker.applied_index,
        payload: marker.encode_to_vec(),
    }
}

/// The WAL as the raft core's log storage. Writes wait in memory until
/// [`LogStorage::wait_durable`], which appends all of them with one `pwrite` and one
/// `fdatasync` (see `docs/ARCHITECTURE.md` on why not io_uring yet).
pub struct WalLog {
    wal: Wal,
    pending: Vec<LogRecord>,
    submitted: u64,
    durable: u64,
}

impl WalLog {
    pub fn new(wal: Wal) -> WalLog {
        WalLog {
            wal,
            pending: Vec::new(),
            submitted: 0,
            durable: 0,
        }
    }
}

impl LogStorage for WalLog {
    fn submit(&mut self, records: Vec<LogRecord>) -> Result<u64, LogError> {
        self.pending.extend(records);
        self.submitted += 1;
        Ok(self.submitted)
    }

    fn wait_durable(&mut self, sequence: u64) -> Result<(), LogError> {
        if sequence <= self.durable {
            return Ok(());
        }
        let records: Vec<Record<'_>> = self.pending.iter().map(LogRecord::as_record).collect();
        let bytes: usize = self.pending.iter().map(|r| r.payload.len()).sum();
        crate::metrics::WAL_WRITE_BYTES.add(bytes as u64);
        let started = Instant::now();
        self.wal
            .append(&records)
            .map_err(|e| LogError(format!("WAL append failed: {e}")))?;
        let took = started.elapsed();
        crate::metrics::WAL_FSYNC.observe(took);
        if took > limits::WAL_FSYNC_WARN {
            tracing::warn!(
                took = ?took,
                expected_duration = ?limits::WAL_FSYNC_WARN,
                "slow fdatasync"
            );
        }
        self.pending.clear();
        self.durable = self.submitted;
        Ok(())
    }

    fn release_before(&mut self, index: u64) -> Result<(), LogError> {
        self.wal
            .release_before(index)
            .map_err(|e| LogError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn recovery_keeps_the_entries_after_the_checkpoint_and_the_newest_of_each_index() {
        let mut records =
            ready_records(&[entry(1, 1), entry(2, 1), entry(3, 1)], None).expect("records");
        let hs = HardState {
            term: 2,
            ..Default::default()
        };
        // A new leader overwrote index 3 and appended 4.
        records.extend(ready_records(&[entry(3, 2), entry(4, 2)], Some(&hs)).expect("records"));
        records.push(marker_record(&CheckpointMarker {
            applied_index: 1,
            ..Default::default()
        }));
        let state = recover(records).expect("recover");
        assert_eq!(state.hard_state.term, 2);
        assert_eq!(state.checkpoint.map(|c| c.applied_index), Some(1));
        let kept: Vec<(u64, u64)> = state.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(kept, vec![(2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn a_damaged_entry_is_refused_with_its_index() {
        let records = vec![LogRecord {
            kind: RecordKind::Entry,
            index: 7,
            payload: vec![0xff; 3],
        }];
        let error = recover(records).err().expect("refused");
        assert!(
            matches!(error, StartError::Decode { index: 7, .. }),
            "{error}"
        );
    }
}
