//! Checkpoints: every `--snapshot-count` applied entries (and at a graceful stop) every
//! shard makes what it applied durable and records a checkpoint at the same index; once
//! all have, the log records a checkpoint marker — the state at that index that is not in
//! the shards (raft configuration, members, leases, alarms, the auth store) — and the raft log before it
//! can go, but for a tail kept for followers that lag a little.
//!
//! A crash between the shards' checkpoints and the marker is harmless: the last marker
//! names a checkpoint every shard has.

use futures::channel::oneshot;
use protobuf::Message as _;
use rivet_api::rivetpb::CheckpointMarker;

use super::{log, RaftCore};
use crate::messages::{ApplyMessage, CheckpointRequest};

/// Where the checkpoints are: the last one recorded, and the one the shards are making.
pub struct Checkpoints {
    /// Applied entries between checkpoints.
    every: u64,
    last_index: u64,
    /// The compact revision of the last checkpoint recorded: a compaction after it makes
    /// a checkpoint due, so that the shards' garbage collection may drop what it removed.
    last_compact_revision: i64,
    /// The checkpoint in the making, and which shards confirmed it.
    in_flight: Option<(CheckpointRequest, Vec<bool>)>,
    /// Defragmentations waiting for a checkpoint that seals the active segments.
    seal_waiting: Vec<oneshot::Sender<u64>>,
    /// Defragmentations the checkpoint in the making answers.
    seal_in_flight: Vec<oneshot::Sender<u64>>,
    /// The auth store at the index of the checkpoint in the making: the raft core goes
    /// on applying while the shards checkpoint, and a marker holding a later store would
    /// have the entries after its index applied to the store twice at the next start
    /// (each auth change bumps the auth revision: it would drift from the other members').
    pub auth_at_start: Option<std::sync::Arc<crate::auth::AuthState>>,
}

impl Checkpoints {
    pub fn new(every: u64, last_index: u64) -> Checkpoints {
        Checkpoints {
            every,
            last_index,
            last_compact_revision: -1,
            in_flight: None,
            seal_waiting: Vec::new(),
            seal_in_flight: Vec::new(),
            auth_at_start: None,
        }
    }

    /// The compact revision of the checkpoint the member started from.
    #[must_use]
    pub fn with_compact_revision(mut self, compact_revision: i64) -> Checkpoints {
        self.last_compact_revision = compact_revision;
        self
    }

    /// The applied index of the last checkpoint recorded.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether a checkpoint should start, with `applied` entries applied and the store
    /// compacted at `compact_revision`: every `--snapshot-count` entries, after a
    /// compaction, and when a defragmentation waits.
    pub fn due(&self, applied: u64, compact_revision: i64) -> bool {
        self.in_flight.is_none()
            && (applied >= self.last_index + self.every
                || (applied > self.last_index
                    && (compact_revision > self.last_compact_revision
                        || !self.seal_waiting.is_empty())))
    }

    /// Whether the next checkpoint should seal the shards' active segments.
    pub fn seal_wanted(&self) -> bool {
        !self.seal_waiting.is_empty()
    }

    pub fn started(&mut self, request: CheckpointRequest, shard_count: usize) {
        if request.seal {
            self.seal_in_flight.append(&mut self.seal_waiting);
        }
        self.in_flight = Some((request, vec![false; shard_count]));
    }

    /// A defragmentation wants a sealing checkpoint. With nothing applied since the last
    /// one and none in the making, it is answered at once with the last one (the shards
    /// reseal by themselves).
    pub fn defragment(&mut self, applied: u64, reply: oneshot::Sender<u64>) {
        if self.in_flight.is_none() && applied <= self.last_index {
            let _ = reply.send(self.last_index);
        } else {
            self.seal_waiting.push(reply);
        }
    }

    /// After a checkpoint was recorded: defragmentations still waiting with nothing
    /// applied since are answered with it.
    fn answer_idle_seals(&mut self, applied: u64) {
        if self.in_flight.is_none() && applied <= self.last_index {
            for reply in self.seal_waiting.drain(..) {
                let _ = reply.send(self.last_index);
            }
        }
    }

    /// Shard `shard` made a checkpoint at `index`.
    pub fn acknowledged(&mut self, shard: usize, index: u64) {
        if let Some((request, done)) = &mut self.in_flight {
            if index == request.index {
                if let Some(done) = done.get_mut(shard) {
                    *done = true;
                }
            }
        }
    }

    /// The checkpoint every shard confirmed, to record now.
    pub fn take_complete(&mut self) -> Option<CheckpointRequest> {
        match &self.in_flight {
            Some((request, done)) if done.iter().all(|d| *d) => {
                let request = *request;
                self.in_flight = None;
                Some(request)
            }
            _ => None,
        }
    }

    /// The marker of the checkpoint at `index`, compacted at `compact_revision`, is in
    /// the log; the defragmentations it sealed for are answered.
    pub fn recorded(&mut self, index: u64, compact_revision: i64) {
        self.last_index = index;
        self.last_compact_revision = compact_revision;
        for reply in self.seal_in_flight.drain(..) {
            let _ = reply.send(index);
        }
    }

    /// A snapshot installed at `index` is the checkpoint now; one in the making is moot.
    pub fn installed(&mut self, index: u64) {
        self.last_index = index;
        self.in_flight = None;
        self.seal_waiting.append(&mut self.seal_in_flight);
        self.auth_at_start = None;
    }
}

/// The first index the raft log keeps after a checkpoint at `index`.
pub fn log_kept_from(index: u64, kept_after_checkpoint: u64) -> u64 {
    index.saturating_sub(kept_after_checkpoint)
}

impl RaftCore {
    /// Lets the raft log in memory go before what every member has, but for the catch-up
    /// tail. The log is durable in the WAL until the next checkpoint; the copy in memory
    /// serves only the appends to followers, and a follower that has an entry never needs
    /// it again (one that falls further behind than the tail gets a snapshot, exported at
    /// the applied index). Without this the memory held every entry since the last
    /// checkpoint: ~35 MB at 100,000 puts of 256 bytes (2026-12-07), on each member.
    ///
    /// On a leader the bound is the lowest index a follower matched (a member that is down
    /// or new holds the log back until the next checkpoint, as before); on a follower it is
    /// the applied index. Released in steps of the tail, so that the drain of raft-rs's
    /// entry vector moves a tail's worth of entries per tail's worth appended.
    pub(super) fn release_replicated_log(&mut self) {
        let kept = self.config.tuning.log_entries_kept_after_checkpoint.max(1);
        let raft = &self.node.raft;
        // raft-rs's `MemStorage::snapshot` reads the term at the stored commit index.
        let stored_commit = self.node.store().rl().hard_state().commit;
        let mut bound = self
            .applied_index
            .min(raft.raft_log.applied)
            .min(stored_commit);
        if raft.state == raft::StateRole::Leader {
            for (id, progress) in raft.prs().iter() {
                if *id != raft.id {
                    bound = bound.min(progress.matched);
                }
            }
        }
        let keep_from = bound.saturating_sub(kept);
        let first = raft::Storage::first_index(self.node.store()).unwrap_or(1);
        if keep_from >= first.saturating_add(kept) {
            let _ = self.node.mut_store().wl().compact(keep_from);
        }
    }

    /// Starts a checkpoint when one is due; records one every shard confirmed.
    pub(super) async fn maybe_checkpoint(&mut self) {
        self.checkpoints.answer_idle_seals(self.applied_index);
        if let Some(request) = self.checkpoints.take_complete() {
            match self.record_checkpoint(request) {
                Ok(()) => {
                    // The shards' garbage collection may now drop what this checkpoint's
                    // compaction removed.
                    let index = request.index;
                    self.shards
                        .send_all(|_| ApplyMessage::CheckpointRecorded { index })
                        .await;
                    self.checkpoints
                        .recorded(request.index, request.compact_revision);
                }
                Err(e) => {
                    // The log refused a write: its state is unknown and a retry could
                    // report success for lost data, so the member stops (the restart
                    // recovers from what is durable). Going on would also start this
                    // checkpoint again at an index the shards already checkpointed.
                    self.stop_for(format!(
                        "could not record checkpoint {}: {e}",
                        request.index
                    ));
                }
            }
            return;
        }
        let compact_revision = self.applier.sequencer().compact_revision();
        if self.checkpoints.due(self.applied_index, compact_revision) {
            self.start_checkpoint().await;
        }
    }

    /// Maintenance.Defragment: a checkpoint that seals the shards' active segments.
    pub(super) fn defragment(&mut self, reply: oneshot::Sender<u64>) {
        self.checkpoints.defragment(self.applied_index, reply);
    }

    /// Asks every shard for a checkpoint at the applied index.
    pub(super) async fn start_checkpoint(&mut self) {
        let term = self
            .node
            .raft
            .raft_log
            .term(self.applied_index)
            .unwrap_or(self.node.raft.term);
        let sequencer = self.applier.sequencer();
        let request = CheckpointRequest {
            index: self.applied_index,
            term,
            revision: sequencer.revision(),
            compact_revision: sequencer.compact_revision(),
            seal: self.checkpoints.seal_wanted(),
        };
        self.shards
            .send_all(|_| ApplyMessage::Checkpoint(request))
            .await;
        self.checkpoints.started(request, self.config.shard_count);
        self.checkpoints.auth_at_start = Some(self.applier.auth_snapshot());
    }

    /// Writes the marker of a checkpoint every shard has, then lets the raft log and the
    /// WAL go before it, but for the kept tail.
    fn record_checkpoint(&mut self, request: CheckpointRequest) -> Result<(), String> {
        let conf_state = self.node.raft.prs().conf().to_conf_state();
        let auth = match self.checkpoints.auth_at_start.take() {
            Some(auth) => auth.to_proto(),
            None => self.applier.auth().to_proto(),
        };
        let marker = CheckpointMarker {
            applied_index: request.index,
            term: request.term,
            revision: request.revision,
            compact_revision: request.compact_revision,
            conf_state: conf_state
                .write_to_bytes()
                .map_err(|e| e.to_string())?
                .into(),
            membership: Some(self.applier.members().to_proto()),
            leases: self.applier.lease_records(),
            alarms: self.applier.alarms().list().to_vec(),
            auth: Some(auth),
        };
        let sequence = self
            .log
            .submit(vec![log::marker_record(&marker)])
            .map_err(|e| e.to_string())?;
        self.log.wait_durable(sequence).map_err(|e| e.to_string())?;
        let keep_from = log_kept_from(
            request.index,
            self.config.tuning.log_entries_kept_after_checkpoint,
        );
        if keep_from > raft::Storage::first_index(self.node.store()).unwrap_or(1) {
            let _ = self.node.mut_store().wl().compact(keep_from);
        }
        self.log
            .release_before(keep_from)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            index = request.index,
            revision = request.revision,
            "checkpoint recorded"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(index: u64) -> CheckpointRequest {
        CheckpointRequest {
            index,
            term: 1,
            revision: 1,
            compact_revision: -1,
            seal: false,
        }
    }

    #[test]
    fn a_checkpoint_is_recorded_once_every_shard_confirmed_it() {
        let mut checkpoints = Checkpoints::new(10, 0);
        assert!(!checkpoints.due(9, -1));
        assert!(checkpoints.due(10, -1));
        checkpoints.started(request(10), 2);
        assert!(!checkpoints.due(50, -1), "one at a time");
        checkpoints.acknowledged(0, 10);
        checkpoints.acknowledged(1, 9);
        assert!(
            checkpoints.take_complete().is_none(),
            "shard 1 confirmed another index"
        );
        checkpoints.acknowledged(1, 10);
        assert_eq!(checkpoints.take_complete().map(|r| r.index), Some(10));
        assert!(checkpoints.take_complete().is_none());
        checkpoints.recorded(10, -1);
        assert!(!checkpoints.due(19, -1));
        assert!(checkpoints.due(20, -1));
        assert!(checkpoints.due(11, 5), "a compaction makes one due");
        assert!(!checkpoints.due(10, 5), "but only with something applied");
    }

    #[test]
    fn a_defragmentation_gets_a_sealing_checkpoint_or_the_last_one() {
        let mut checkpoints = Checkpoints::new(100, 10);
        let (idle, idle_answer) = oneshot::channel();
        checkpoints.defragment(10, idle);
        assert_eq!(idle_answer.try_recv_now(), Some(10));
        let (busy, mut busy_answer) = oneshot::channel();
        checkpoints.defragment(12, busy);
        assert!(checkpoints.due(12, -1) && checkpoints.seal_wanted());
        checkpoints.started(
            CheckpointRequest {
                seal: true,
                ..request(12)
            },
            1,
        );
        checkpoints.acknowledged(0, 12);
        assert!(checkpoints.take_complete().is_some());
        assert_eq!(busy_answer.try_recv().ok().flatten(), None);
        checkpoints.recorded(12, -1);
        assert_eq!(busy_answer.try_recv().ok().flatten(), Some(12));
    }

    trait TryRecvNow {
        fn try_recv_now(self) -> Option<u64>;
    }

    impl TryRecvNow for oneshot::Receiver<u64> {
        fn try_recv_now(mut self) -> Option<u64> {
            self.try_recv().ok().flatten()
        }
    }

    #[test]
    fn an_installed_snapshot_replaces_a_checkpoint_in_the_making() {
        let mut checkpoints = Checkpoints::new(10, 0);
        checkpoints.started(request(10), 1);
        checkpoints.installed(500);
        assert!(!checkpoints.in_flight());
        assert_eq!(checkpoints.last_index(), 500);
        assert_eq!(log_kept_from(500, 5000), 0);
        assert_eq!(log_kept_from(9000, 5000), 4000);
    }
}
