//! Raft snapshots between members (the format is in `crate::snapshot`).
//!
//! Sending: raft asks for one when a follower needs entries the leader compacted. The
//! shards export every version they retain up to the revision at the snapshot's index
//! (this member's applied index); when every part arrived, the transport streams it on a
//! stream of its own and reports whether it arrived.
//!
//! Receiving: the snapshot's page files are staged, its checkpoint marker recorded in the
//! log, the shards swap the staged files in, the replicated state is rebuilt from the
//! snapshot, and only then does raft take it.

use std::collections::BTreeMap;

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::Message as RaftMessage;
use rivet_api::rivetpb::{CheckpointMarker, SnapshotInfo};

use super::{log, RaftCore};
use crate::apply::alarms::Alarms;
use crate::auth::AuthState;
use crate::membership::MemberTable;
use crate::messages::{ApplyMessage, ShardRequest};
use crate::sequencer::Sequencer;

/// The snapshots this member is sending, by follower.
#[derive(Default)]
pub struct Exports {
    in_flight: BTreeMap<u64, Export>,
}

struct Export {
    message: bytes::Bytes,
    /// Each shard's part, once it answered.
    parts: Vec<Part>,
    /// Handed to the transport; waiting for its report.
    sent: bool,
}

enum Part {
    Waiting(oneshot::Receiver<Vec<u8>>),
    Done(Vec<u8>),
}

impl RaftCore {
    /// Starts exporting a snapshot for a follower: the shards export every version up to
    /// the revision at the snapshot's index (which is this member's applied index: raft
    /// takes it from the log storage, whose commit index only moves when we apply).
    pub(super) fn export_snapshot(&mut self, mut message: RaftMessage) {
        let to = message.to;
        let index = message.get_snapshot().get_metadata().index;
        if index != self.applied_index || self.exports.in_flight.contains_key(&to) {
            self.node.report_snapshot(to, raft::SnapshotStatus::Failure);
            return;
        }
        let sequencer = self.applier.sequencer();
        let info = SnapshotInfo {
            revision: sequencer.revision(),
            compact_revision: sequencer.compact_revision(),
            membership: Some(self.applier.members().to_proto()),
            leases: self.applier.lease_records(),
            alarms: self.applier.alarms().list().to_vec(),
            auth: Some(self.applier.auth().to_proto()),
        };
        message.mut_snapshot().data = info.encode_to_vec().into();
        let bytes = match message.write_to_bytes() {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err(e) => {
                tracing::error!("cannot encode a snapshot message: {e}");
                return;
            }
        };
        let mut parts = Vec::with_capacity(self.shards.requests.len());
        for shard in &self.shards.requests {
            let (reply, answer) = oneshot::channel();
            let export = ShardRequest::Export {
                index,
                revision: info.revision,
                reply,
            };
            if shard.try_send(export).is_err() {
                // The shard stopped, or its queue is full: raft asks again later.
                self.node.report_snapshot(to, raft::SnapshotStatus::Failure);
                return;
            }
            parts.push(Part::Waiting(answer));
        }
        self.exports.in_flight.insert(
            to,
            Export {
                message: bytes,
                parts,
                sent: false,
            },
        );
    }

    /// Hands the transport every snapshot whose parts all arrived.
    pub(super) fn poll_exports(&mut self) {
        let mut failed = Vec::new();
        for (to, export) in &mut self.exports.in_flight {
            if export.sent {
                continue;
            }
            for part in &mut export.parts {
                if let Part::Waiting(answer) = part {
                    match answer.try_recv() {
                        Ok(Some(data)) => *part = Part::Done(data),
                        Ok(None) => {}
                        Err(oneshot::Canceled) => failed.push(*to),
                    }
                }
            }
            let done = export.parts.iter().all(|p| matches!(p, Part::Done(_)));
            if done && !failed.contains(to) {
                let mut data = Vec::new();
                for part in &export.parts {
                    if let Part::Done(bytes) = part {
                        data.extend_from_slice(bytes);
                    }
                }
                tracing::info!(
                    to = format_args!("{to:x}"),
                    bytes = data.len(),
                    "sending a snapshot"
                );
                export.sent = true;
                self.peers
                    .send_snapshot(*to, export.message.clone(), data.into());
            }
        }
        for to in failed {
            self.snapshot_sent(to, false);
        }
    }

    /// The transport reports whether a snapshot arrived.
    pub(super) fn snapshot_sent(&mut self, to: u64, delivered: bool) {
        self.exports.in_flight.remove(&to);
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// Installs a snapshot from the leader: stage page files, record the checkpoint in the
    /// log, swap the shards' files, rebuild the replicated state, then let raft take the
    /// snapshot.
    pub(super) async fn install_snapshot(
        &mut self,
        message_bytes: bytes::Bytes,
        data: bytes::Bytes,
    ) {
        let mut message = RaftMessage::default();
        if let Err(e) = message.merge_from_bytes(&message_bytes) {
            tracing::warn!("dropping an undecodable snapshot message: {e}");
            return;
        }
        let metadata = message.get_snapshot().get_metadata().clone();
        let index = metadata.index;
        if index <= self.node.raft.raft_log.committed {
            // Stale: raft answers the leader with where this member is.
            let _ = self.node.step(message);
            return;
        }
        let info = match SnapshotInfo::decode(message.get_snapshot().data.as_ref()) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("dropping a snapshot with undecodable info: {e}");
                return;
            }
        };
        let auth = match info.auth.clone().map(AuthState::from_proto).transpose() {
            Ok(auth) => auth.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("dropping a snapshot with a damaged auth store: {e}");
                return;
            }
        };
        let heads = match crate::snapshot::heads(&data) {
            Ok(heads) => heads,
            Err(e) => {
                tracing::warn!("dropping a damaged snapshot at index {index}: {e}");
                return;
            }
        };
        let checkpoint = crate::page::Checkpoint {
            applied_index: index,
            revision: info.revision,
            compact_revision: info.compact_revision,
        };
        crate::metrics::SNAPSHOT_APPLY_IN_PROGRESS.set(1);
        let _in_progress = InProgress;
        let saving = std::time::Instant::now();
        if let Err(e) = crate::snapshot::stage(
            &self.config.snap_dir,
            &data,
            self.config.shard_count,
            &checkpoint,
            self.config.tuning.page_options,
        ) {
            tracing::error!("cannot stage the snapshot at index {index}: {e}");
            return;
        }
        crate::metrics::SNAP_DB_SAVE_TOTAL.observe(saving.elapsed());
        let marker = CheckpointMarker {
            applied_index: index,
            term: metadata.term,
            revision: info.revision,
            compact_revision: info.compact_revision,
            conf_state: metadata
                .get_conf_state()
                .write_to_bytes()
                .unwrap_or_default()
                .into(),
            membership: info.membership.clone(),
            leases: info.leases.clone(),
            alarms: info.alarms.clone(),
            auth: info.auth.clone(),
        };
        let recorded = self
            .log
            .submit(vec![log::marker_record(&marker)])
            .and_then(|sequence| self.log.wait_durable(sequence));
        if let Err(e) = recorded {
            // As for a checkpoint: a log that failed a write stops the member.
            self.stop_for(format!(
                "cannot record the snapshot at index {index} in the log: {e}"
            ));
            return;
        }
        let snap_dir = self.config.snap_dir.clone();
        self.shards
            .send_all(|_| ApplyMessage::Install {
                snap_dir: snap_dir.clone(),
                index,
            })
            .await;
        let mut sequencer = Sequencer::restore(info.revision, info.compact_revision);
        for lease in &info.leases {
            sequencer.restore_lease(lease.id, lease.ttl, lease.remaining_ttl);
        }
        for (key, head) in heads {
            sequencer.restore_key(key, head);
        }
        let members = info
            .membership
            .as_ref()
            .map(MemberTable::from_proto)
            .unwrap_or_default();
        self.applier.install(
            sequencer,
            Alarms::from_list(info.alarms.clone()),
            members,
            auth,
        );
        // The serving cores learn the installed auth store (and that every token died)
        // from a batch with no mutation at the installed index.
        let (auth, tokens) = self.auth_updates();
        self.shards
            .send_all(|_| {
                ApplyMessage::Batch(crate::messages::ApplyBatch {
                    index,
                    revision: info.revision,
                    auth: auth.clone(),
                    tokens: tokens.clone(),
                    ..Default::default()
                })
            })
            .await;
        self.update_peers();
        self.applied_index = index;
        self.checkpoints.installed(index);
        tracing::info!(
            index,
            revision = info.revision,
            "installed a snapshot from the leader"
        );
        if let Err(e) = self.node.step(message) {
            tracing::warn!("raft refused the snapshot at index {index}: {e}");
        }
    }
}

/// Clears `etcd_server_snapshot_apply_in_progress_total` however an install ends.
struct InProgress;

impl Drop for InProgress {
    fn drop(&mut self) {
        crate::metrics::SNAPSHOT_APPLY_IN_PROGRESS.set(0);
    }
}
