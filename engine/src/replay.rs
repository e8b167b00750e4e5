//! A checker of the apply sequencer's two promises, shared by its property test
//! (`engine/tests/sequencer_replay.rs`) and the `internal_request` fuzz target:
//!
//! 1. **Apply is total**: every committed entry gets a response or an etcd error, and
//!    nothing panics (the caller sees a panic as a failure).
//! 2. **Apply is deterministic**: the mutations an entry hands the shards are exactly its
//!    change to the sequencer's heads, and replaying the log from a checkpoint — the
//!    sequencer rebuilt from the shards' heads and the lease records, as recovery does —
//!    gives the same outcome for every replayed entry and the same final state.

use std::collections::BTreeMap;

use bytes::Bytes;
use rivet_api::rivetpb::internal_request::Request;

use crate::sequencer::{Head, LeaseEntry, Mutation, Outcome, Sequencer};

/// The raft core's dispatch of a committed entry to the sequencer (entries that do not
/// reach the sequencer — alarms, membership, keep-alives — answer nothing here).
pub fn apply(sequencer: &mut Sequencer, request: &Request, min_lease_ttl: i64) -> Outcome {
    match request {
        Request::Put(put) => sequencer.apply_put(put),
        Request::DeleteRange(delete) => sequencer.apply_delete(delete),
        Request::Txn(txn) => sequencer.apply_txn(txn),
        Request::Compaction(compaction) => sequencer.apply_compaction(compaction),
        Request::LeaseGrant(grant) => sequencer.apply_lease_grant(grant, min_lease_ttl),
        Request::LeaseRevoke(revoke) => sequencer.apply_lease_revoke(revoke),
        Request::LeaseCheckpoint(checkpoint) => sequencer.apply_lease_checkpoint(checkpoint),
        _ => Outcome::applied(crate::sequencer::Applied::Internal),
    }
}

/// The replicated state a checkpoint holds: the shards' heads and the raft core's lease
/// records, revision and compaction.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub heads: BTreeMap<Bytes, Head>,
    pub leases: BTreeMap<i64, LeaseEntry>,
    pub revision: i64,
    pub compact_revision: i64,
}

pub fn state(sequencer: &Sequencer) -> State {
    State {
        heads: sequencer
            .heads()
            .map(|(key, head)| (key.clone(), head))
            .collect(),
        leases: sequencer.leases().clone(),
        revision: sequencer.revision(),
        compact_revision: sequencer.compact_revision(),
    }
}

/// Rebuilds a sequencer the way recovery does: leases first, then every head the shards
/// hold (a lease's keys come from its keys' heads).
pub fn restore(checkpoint: &State, shard_heads: &BTreeMap<Bytes, Head>) -> Sequencer {
    let mut sequencer = Sequencer::restore(checkpoint.revision, checkpoint.compact_revision);
    for (id, lease) in &checkpoint.leases {
        sequencer.restore_lease(*id, lease.ttl, lease.remaining_ttl);
    }
    for (key, head) in shard_heads {
        sequencer.restore_key(key.clone(), head.clone());
    }
    sequencer
}

/// Applies an outcome's mutations to a model of the shards' newest versions.
pub fn apply_mutations(shard_heads: &mut BTreeMap<Bytes, Head>, outcome: &Outcome) {
    for mutation in &outcome.mutations {
        match mutation {
            Mutation::Put { key, head } => {
                shard_heads.insert(key.clone(), head.clone());
            }
            Mutation::Delete { key, .. } => {
                shard_heads.remove(key);
            }
        }
    }
}

/// Applies `log` to a new sequencer, checking after every entry that it was answered and
/// that the shards' model equals the heads; then replays the log from a checkpoint taken
/// before entry `checkpoint_at` (`log.len()` or more: after the last) and checks the
/// replayed outcomes and the final state. The error describes the first difference.
pub fn check_log(log: &[Request], checkpoint_at: usize, min_lease_ttl: i64) -> Result<(), String> {
    check_log_restoring(log, checkpoint_at, min_lease_ttl, &restore)
}

/// [`check_log`] with the sequencer rebuilt at the checkpoint by `restore_with` (the
/// checkpoint's state and the shards' heads then), e.g. through a real shard's page file.
pub fn check_log_restoring(
    log: &[Request],
    checkpoint_at: usize,
    min_lease_ttl: i64,
    restore_with: &dyn Fn(&State, &BTreeMap<Bytes, Head>) -> Sequencer,
) -> Result<(), String> {
    let mut sequencer = Sequencer::new();
    let mut shard_heads = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(log.len());
    let mut checkpoint = None;
    for (i, request) in log.iter().enumerate() {
        if i == checkpoint_at {
            checkpoint = Some((state(&sequencer), shard_heads.clone()));
        }
        let outcome = apply(&mut sequencer, request, min_lease_ttl);
        if outcome.result.is_none() {
            return Err(format!("entry {i} got no answer: {request:?}"));
        }
        apply_mutations(&mut shard_heads, &outcome);
        if shard_heads != state(&sequencer).heads {
            return Err(format!(
                "after entry {i} ({request:?}) the shards hold {shard_heads:?}, the \
                 sequencer {:?}",
                state(&sequencer).heads
            ));
        }
        outcomes.push(outcome);
    }
    let end = state(&sequencer);
    let (checkpoint, checkpoint_heads) =
        checkpoint.unwrap_or_else(|| (end.clone(), shard_heads.clone()));
    let mut replayed = restore_with(&checkpoint, &checkpoint_heads);
    if state(&replayed) != checkpoint {
        return Err(format!(
            "restored state {:?} differs from the checkpoint {checkpoint:?}",
            state(&replayed)
        ));
    }
    for (i, (request, original)) in log.iter().zip(&outcomes).enumerate().skip(checkpoint_at) {
        let outcome = apply(&mut replayed, request, min_lease_ttl);
        if &outcome != original {
            return Err(format!(
                "entry {i} ({request:?}) replayed gives {outcome:?}, first {original:?}"
            ));
        }
    }
    if state(&replayed) != end {
        return Err(format!(
            "replayed state {:?} differs from {end:?}",
            state(&replayed)
        ));
    }
    Ok(())
}

/// Rebuilds a sequencer the way a restart does, through real page files: `heads` are
/// written into a new shard in `dir` (one batch per mod revision, in revision order),
/// checkpointed, the shard reopened at the checkpoint as a restart opens it, and the
/// sequencer restored from the heads it streams, their values left in the page file.
/// The shard is closed again before this returns: the sequencer reads values through its
/// own mappings only, which outlive the files (the caller may delete them, as the shard's
/// garbage collection deletes rewritten segments).
pub fn restore_through_page_file(
    dir: &std::path::Path,
    checkpoint: &State,
    heads: &BTreeMap<Bytes, Head>,
    options: crate::page::PageOptions,
) -> Result<Sequencer, String> {
    use crate::messages::{ApplyBatch, ApplyMessage, CheckpointRequest};
    use crate::shard::Shard;
    let mut shard = Shard::open(dir, 0, 0, options).map_err(|e| e.to_string())?;
    let mut by_revision: BTreeMap<i64, Vec<Mutation>> = BTreeMap::new();
    for (key, head) in heads {
        by_revision
            .entry(head.mod_revision)
            .or_default()
            .push(Mutation::Put {
                key: key.clone(),
                head: head.clone(),
            });
    }
    let mut index = 0;
    for (revision, mutations) in by_revision {
        index += 1;
        shard.handle_apply(ApplyMessage::Batch(ApplyBatch {
            index,
            revision,
            mutations,
            ..Default::default()
        }));
    }
    index += 1;
    shard.handle_apply(ApplyMessage::Batch(ApplyBatch {
        index,
        revision: checkpoint.revision,
        ..Default::default()
    }));
    shard.handle_apply(ApplyMessage::Checkpoint(CheckpointRequest {
        index,
        term: 1,
        revision: checkpoint.revision,
        compact_revision: checkpoint.compact_revision,
        seal: false,
    }));
    shard.handle_apply(ApplyMessage::CheckpointRecorded { index });
    drop(shard);
    let shard = Shard::open(dir, 0, index, options).map_err(|e| e.to_string())?;
    let mut sequencer = Sequencer::restore(checkpoint.revision, checkpoint.compact_revision);
    for (id, lease) in &checkpoint.leases {
        sequencer.restore_lease(*id, lease.ttl, lease.remaining_ttl);
    }
    sequencer.restore_segments(0, shard.segment_views().map_err(|e| e.to_string())?);
    let mut after: Option<Bytes> = None;
    loop {
        let chunk = shard
            .heads_after(after.as_deref())
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        for (key, head) in chunk {
            sequencer.restore_stored_key(0, key, head);
        }
    }
    sequencer.release_unused_segments();
    Ok(sequencer)
}
