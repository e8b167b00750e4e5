//! How the raft core reaches the world: its peers ([`PeerLink`]), its log storage
//! ([`LogStorage`]), its clock ([`Clock`]) and the leader's client port
//! ([`LeaderForward`]). The raft core holds each as a trait object, so the production
//! parts (the QUIC transport and the gRPC forwarder in `net`, the WAL, the monotonic
//! clock) and the simulation's (`engine/tests/simulation/`: a seeded network, a disk
//! that crashes, a clock that jumps) drive the same core.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::channel::oneshot;
pub use rivet_wal::OwnedRecord as LogRecord;

use crate::error::EtcdError;
use crate::messages::{LeaseTtl, MemberChangeResult, PeerHash, PeerHashOutcome};

/// How the raft core reaches its peers. Sending never blocks: a message that cannot be
/// queued is dropped and raft is told the peer is unreachable, which raft recovers from by
/// retrying.
pub trait PeerLink {
    /// Queues a raft message for `to`; false when it was dropped.
    fn send(&self, to: u64, message: bytes::Bytes) -> bool;
    /// The peers and their peer URLs, after every membership change.
    fn set_peers(&self, peers: Vec<(u64, Vec<String>)>);
    /// Streams a raft snapshot (the `MsgSnapshot` and the shards' records) to `to` on its
    /// own stream; the link reports the outcome as [`PeerEvent::SnapshotStatus`].
    fn send_snapshot(&self, to: u64, message: bytes::Bytes, data: bytes::Bytes);
    /// Test-only fault switch: drop all traffic to and from these peers (empty: heal).
    fn set_blocked(&self, peers: &[u64]);
    /// Since when the link to `to` has been up (keep-alives close a dead peer's link);
    /// `None` while it is down.
    fn connected_since(&self, to: u64) -> Option<Instant>;
    /// Lets the transport put the messages queued so far on the wire before the raft
    /// core blocks in an fdatasync: the QUIC transport's tasks run on the raft core's
    /// thread, and followers should start their own fdatasync while the leader does its.
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// Asks each of `peers` (ID, peer URLs) for its HashKV at `revision`, for the
    /// corruption checks; answers one [`PeerHash`] per peer through `reply`, without
    /// making the raft core wait. A link that cannot ask (the simulation's) answers
    /// every peer as failed, which the checks skip as etcd skips unreachable peers.
    fn hash_kvs(
        &self,
        peers: Vec<(u64, Vec<String>)>,
        revision: i64,
        reply: oneshot::Sender<Vec<PeerHash>>,
    ) {
        let _ = revision;
        let _ = reply.send(
            peers
                .into_iter()
                .map(|(id, peer_urls)| PeerHash {
                    id,
                    peer_urls,
                    outcome: PeerHashOutcome::Failed("this link cannot ask peers".into()),
                })
                .collect(),
        );
    }
}

/// What the transport delivers to the raft core.
pub enum PeerEvent {
    /// A raft message from a peer of this cluster (the transport checked the cluster ID).
    Message(bytes::Bytes),
    /// A raft snapshot from the leader: the `MsgSnapshot` and the records.
    Snapshot {
        message: bytes::Bytes,
        data: bytes::Bytes,
    },
    /// A peer refused this member as removed from the cluster: stop.
    RemovedFromCluster,
    /// Whether a snapshot sent to `to` arrived.
    SnapshotStatus { to: u64, delivered: bool },
}

#[derive(Debug, thiserror::Error)]
#[error("log storage: {0}")]
pub struct LogError(pub String);

/// The raft core's durable log: records of raft entries, hard states and checkpoint
/// markers ([`LogRecord`], the WAL's record; `docs/format/wal.md`). Writes are *submitted* and later made *durable*, so that
/// an implementation may run the write and its fdatasync while the raft core goes on
/// (issue 17: raft-rs's `advance_append_async` and `on_persist_ready`); today's raft core
/// waits for each write right after submitting it, with one thing in between: it lets the
/// transport send the messages of the same Ready ([`PeerLink::flush`]).
///
/// A failed write or sync is never retried: the raft core stops (a retried fsync can
/// report success for lost data).
pub trait LogStorage {
    /// Queues `records` behind everything submitted before; answers the write's sequence
    /// number (increasing from 1).
    fn submit(&mut self, records: Vec<LogRecord>) -> Result<u64, LogError>;
    /// Returns once every write up to `sequence` is durable. One call makes everything
    /// submitted so far durable at once (the group commit: one write, one fdatasync).
    fn wait_durable(&mut self, sequence: u64) -> Result<(), LogError>;
    /// Lets the storage drop what lies before `index`, which a checkpoint covers.
    fn release_before(&mut self, index: u64) -> Result<(), LogError>;
}

/// The raft core's clock: monotonic (ETCD_LESSONS 22); lease deadlines, ReadIndex retries
/// and timeouts are measured on it.
pub trait Clock {
    fn now(&self) -> Instant;
}

/// The machine's monotonic clock.
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The requests a follower hands to the leader, as etcd does over its peer URL; rivet
/// sends them to the leader's client URL (`net` implements this with gRPC). Both answer
/// through `reply` later: the raft core does not wait.
pub trait LeaderForward {
    /// Asks the leader at `url` for lease `id`'s remaining TTL (only the leader's lease
    /// clock is exact); answers `local` when the leader cannot be reached.
    fn lease_time_to_live(
        &self,
        url: String,
        id: i64,
        keys: bool,
        local: LeaseTtl,
        reply: oneshot::Sender<LeaseTtl>,
    );
    /// Asks the leader at `url` to promote learner `id` (only the leader knows how far the
    /// learner's log has come) and answers what it did.
    fn promote(
        &self,
        url: String,
        id: u64,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    );
}
