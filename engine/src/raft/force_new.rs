//! `--force-new-cluster`: etcd's disaster recovery. A member whose peers are lost for good
//! restarts from its own data as the only member of its cluster, keeping its data, its
//! member ID and its cluster ID.
//!
//! Done as etcd 3.4 does it (`restartAsStandaloneNode`), before the raft node starts: one
//! configuration change per other member (voter or learner) that removes it is appended
//! to the log and marked committed.
//!
//! One departure: etcd first discards the log's tail after the commit index its WAL
//! recorded. Neither etcd nor rivet makes the commit index durable on its own (a hard
//! state that changed only in commit is not synced), so that index lags; etcd loses
//! nothing by it because its backend already holds what it applied. rivet's page files
//! hold the applied state only up to the last checkpoint, and the state after it lives in
//! the log's entries: discarding them would lose acknowledged writes. So rivet keeps every
//! durable entry of its log and commits it, which is what raft does when a member with
//! that log is elected (entries of earlier terms are committed by the new leader's
//! first entry). A write in that tail that no quorum had acknowledged may appear, as it
//! may after any change of leader. The raft core then applies those entries
//! like any other membership change — raft's configuration, the member table (the removed
//! IDs can never rejoin) and the peer table follow — and the member elects itself. The
//! entries are written to the log before the node starts, so a later restart without the
//! flag finds the same one-member cluster.

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState};
use rivet_api::rivetpb::ConfChangeContext;

use prost::Message as _;

use super::config::StartError;
use super::log::{ready_records, Recovered};

/// What forcing a new cluster did, for the start-up log.
#[derive(Debug, Default, PartialEq)]
pub struct ForcedRestart {
    /// The commit index the member restarts at (before the removals).
    pub commit: u64,
    /// The members removed, in ID order.
    pub removed: Vec<u64>,
}

/// Whether the log holds anything: etcd applies `--force-new-cluster` only to a member
/// that has a WAL; a new data dir starts as the flags say.
pub fn has_state(recovered: &Recovered) -> bool {
    recovered.checkpoint.is_some()
        || !recovered.entries.is_empty()
        || recovered.hard_state != HardState::default()
}

/// Rewrites `recovered` (and the log behind it) so that `member_id` restarts as a
/// one-member cluster. `initial_voters` are the members of `--initial-cluster`: a member
/// that has not taken a checkpoint yet starts from the bootstrap configuration they make
/// (index 1), which is not in the log. The caller checked [`has_state`].
pub fn force_new_cluster(
    recovered: &mut Recovered,
    member_id: u64,
    initial_voters: &[u64],
) -> Result<ForcedRestart, StartError> {
    let applied = match &recovered.checkpoint {
        Some(c) => c.applied_index,
        None if !initial_voters.is_empty() => 1,
        None => 0,
    };
    let commit = recovered.entries.last().map_or(applied, |e| e.index);
    // The members as of the commit index: the checkpoint's configuration, then every
    // committed configuration change after it.
    let mut ids = std::collections::BTreeSet::new();
    if recovered.checkpoint.is_none() {
        ids.extend(initial_voters.iter().copied());
    }
    if let Some(c) = &recovered.checkpoint {
        let conf_state = checkpoint_conf_state(c)?;
        ids.extend(conf_state.voters.iter().copied());
        ids.extend(conf_state.learners.iter().copied());
        ids.extend(conf_state.voters_outgoing.iter().copied());
        ids.extend(conf_state.learners_next.iter().copied());
    }
    for entry in &recovered.entries {
        if entry.get_entry_type() != EntryType::EntryConfChange {
            continue;
        }
        let mut change = ConfChange::default();
        change
            .merge_from_bytes(&entry.data)
            .map_err(|e| StartError::Decode {
                what: "conf change",
                index: entry.index,
                reason: e.to_string(),
            })?;
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                ids.insert(change.node_id);
            }
            ConfChangeType::RemoveNode => {
                ids.remove(&change.node_id);
            }
        }
    }
    if !ids.contains(&member_id) {
        return Err(StartError::Raft(format!(
            "--force-new-cluster: member {member_id:x} is not a member of its cluster's \
             configuration at commit index {commit} (it was removed); start it with a new \
             data dir instead"
        )));
    }
    let last_term = recovered.entries.last().map_or(0, |e| e.term);
    let checkpoint_term = recovered.checkpoint.as_ref().map_or(0, |c| c.term);
    let term = recovered
        .hard_state
        .term
        .max(last_term)
        .max(checkpoint_term)
        .max(1);
    let removed: Vec<u64> = ids.into_iter().filter(|id| *id != member_id).collect();
    let mut index = commit;
    let mut forced = Vec::with_capacity(removed.len());
    for id in &removed {
        index += 1;
        let mut change = ConfChange::default();
        change.set_change_type(ConfChangeType::RemoveNode);
        change.node_id = *id;
        // Proposed by no one: no client waits for the answer.
        change.context = ConfChangeContext::default().encode_to_vec().into();
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryConfChange);
        entry.term = term;
        entry.index = index;
        entry.data = change
            .write_to_bytes()
            .map_err(|e| StartError::Raft(e.to_string()))?
            .into();
        forced.push(entry);
    }
    let mut hard_state = recovered.hard_state.clone();
    hard_state.term = term;
    hard_state.commit = index;
    let records = ready_records(&forced, Some(&hard_state)).map_err(StartError::Raft)?;
    let log = &mut recovered.log;
    let written = log
        .submit(records)
        .and_then(|sequence| log.wait_durable(sequence))
        .map_err(|e| StartError::Wal(e.to_string()));
    written?;
    recovered.entries.extend(forced);
    recovered.hard_state = hard_state;
    Ok(ForcedRestart { commit, removed })
}

/// The raft configuration a checkpoint marker recorded.
pub(super) fn checkpoint_conf_state(
    checkpoint: &rivet_api::rivetpb::CheckpointMarker,
) -> Result<ConfState, StartError> {
    let mut conf_state = ConfState::default();
    conf_state
        .merge_from_bytes(&checkpoint.conf_state)
        .map_err(|e| StartError::Decode {
            what: "checkpoint conf state",
            index: checkpoint.applied_index,
            reason: e.to_string(),
        })?;
    Ok(conf_state)
}
