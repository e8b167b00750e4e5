//! The raft core's part of `Maintenance.Snapshot` (`crate::etcd_snapshot`): it takes the
//! point — the applied index, the revision there and the state that is not in the shards
//! — and pins every shard right after that index through the apply stream.

use futures::channel::oneshot;

use super::RaftCore;
use crate::error::EtcdError;
use crate::etcd_snapshot::{backend_state, SnapshotPoint};
use crate::messages::ApplyMessage;

/// The cluster version rivet reports (etcd's `clusterVersion` key).
const CLUSTER_VERSION: &str = "3.4.0";

/// Snapshot streams waiting for their point.
#[derive(Default)]
pub struct SnapshotStreams {
    waiting: Vec<oneshot::Sender<Result<SnapshotPoint, EtcdError>>>,
    next_id: u64,
}

impl RaftCore {
    /// A stream wants its point; it gets it at the end of this turn.
    pub(super) fn begin_snapshot_stream(
        &mut self,
        reply: oneshot::Sender<Result<SnapshotPoint, EtcdError>>,
    ) {
        self.snapshot_streams.waiting.push(reply);
    }

    /// Takes the point of every waiting stream: everything applied so far, and the pin
    /// goes to each shard behind it in the apply stream.
    pub(super) async fn start_snapshot_streams(&mut self) {
        if self.snapshot_streams.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.snapshot_streams.waiting);
        for reply in waiting {
            self.snapshot_streams.next_id += 1;
            let id = self.snapshot_streams.next_id;
            let sequencer = self.applier.sequencer();
            let revision = sequencer.revision();
            let state = backend_state(
                self.applied_index,
                sequencer.compact_revision(),
                &self.applier.lease_records(),
                &self.applier.members().to_proto(),
                self.applier.alarms().list(),
                CLUSTER_VERSION,
            );
            self.shards
                .send_all(|_| ApplyMessage::SnapshotPin { id, revision })
                .await;
            let point = SnapshotPoint {
                id,
                index: self.applied_index,
                revision,
                state,
            };
            let _ = reply.send(Ok(point));
        }
    }
}
