//! The messages between cores. Every channel that carries them is bounded (sizes in
//! `limits.rs`): a slow receiver slows its senders instead of growing a queue.

use bytes::Bytes;
use futures::channel::oneshot;
use rivet_api::etcdserverpb::{RangeRequest, TxnRequest};
use rivet_api::mvccpb::KeyValue;
use rivet_api::rivetpb::internal_request;

use crate::error::EtcdError;
use crate::keyspace::{CompactedAt, Mutation, RangeEnd};
use crate::sequencer::{Applied, HistoricalRange};

/// Watch events of a shard, or the error of the first record that could not be read.
pub type WatchEvents = Result<Vec<rivet_api::mvccpb::Event>, EtcdError>;

/// The result of a write (or a read-only txn) handed back to the core that asked.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The raft index whose apply produced this answer: the asking core answers the
    /// client only once every shard applied it (read-your-writes on any shard).
    pub index: u64,
    pub applied: Applied,
    /// Ranges of a txn that read older revisions; the asking core fills them in.
    pub historical_ranges: Vec<HistoricalRange>,
}

/// A linearizable point to read at: once every shard applied `index`, reading at
/// `revision` sees every write acknowledged before the read started.
#[derive(Clone, Copy, Debug)]
pub struct ReadPoint {
    pub index: u64,
    pub revision: i64,
}

/// What the raft core reports for Maintenance.Status.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub last_index: u64,
    pub applied_index: u64,
    /// Live keys (the sequencer's count).
    pub keys: u64,
    /// Proposals of this member waiting for their entry to apply.
    pub pending_proposals: u64,
}

/// What one peer answered to a corruption check's HashKV request (etcd's
/// `peerHashKVResp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerHashOutcome {
    /// The peer's hash of every version up to the revision asked for, its current
    /// revision and its compaction revision.
    Answered {
        revision: i64,
        compact_revision: i64,
        hash: u32,
    },
    /// The revision is compacted on the peer (etcd's `ErrCompacted`).
    Compacted,
    /// The revision is newer than the peer's (etcd's `ErrFutureRev`).
    FutureRevision,
    /// No answer: unreachable, timed out, or the peer could not compute it.
    Failed(String),
}

/// One peer's answer to a HashKV request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHash {
    pub id: u64,
    pub peer_urls: Vec<String>,
    pub outcome: PeerHashOutcome,
}

/// Shard core → raft core.
pub enum RaftCommand {
    /// Ask every other member for its HashKV at `revision` (a corruption check).
    PeerHashKvs {
        revision: i64,
        reply: oneshot::Sender<Vec<PeerHash>>,
    },
    Propose {
        request: internal_request::Request,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    },
    /// A client write with the credentials it came with (auth on): the auth applier
    /// checks its permissions with `caller` when the entry applies.
    ProposeAs {
        request: internal_request::Request,
        caller: rivet_api::rivetpb::AuthCaller,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    },
    /// A linearizable read point (raft ReadIndex, batched with every read waiting now).
    ReadIndex {
        reply: oneshot::Sender<Result<ReadPoint, EtcdError>>,
    },
    /// A txn without writes: evaluated on the sequencer's view, after a ReadIndex when
    /// `linearizable`, without an entry in the log (as etcd does).
    ReadOnlyTxn {
        request: TxnRequest,
        linearizable: bool,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    },
    Status {
        reply: oneshot::Sender<RaftStatus>,
    },
    /// Maintenance.Snapshot: pin every shard at the applied index and answer the point.
    SnapshotBegin {
        reply: oneshot::Sender<Result<crate::etcd_snapshot::SnapshotPoint, EtcdError>>,
    },
    /// Maintenance.Defragment: a checkpoint that seals the shards' active segments, so
    /// that everything applied so far can be rewritten. Answers the index of the
    /// checkpoint to wait for once it is recorded (the last one when nothing was applied
    /// since).
    Defragment {
        reply: oneshot::Sender<u64>,
    },
    /// Shard `shard` deleted these segments (segment keys) from its page file: the
    /// sequencer copies the restored values it still reads from them and lets go of its
    /// mappings, so that their disk space is freed. Answers nobody.
    SegmentsDeleted {
        shard: usize,
        segments: Vec<u32>,
    },
    /// Renew a lease on the leader; answers its TTL (0 for an unknown lease).
    LeaseKeepAlive {
        id: i64,
        reply: oneshot::Sender<Result<i64, EtcdError>>,
    },
    LeaseTimeToLive {
        id: i64,
        keys: bool,
        reply: oneshot::Sender<LeaseTtl>,
    },
    /// Every lease's ID and, with `keys`, the keys attached to it (for the auth check of
    /// later etcd 3.4: read on all of them).
    LeaseLeases {
        keys: bool,
        reply: oneshot::Sender<Vec<(i64, Vec<Bytes>)>>,
    },
    AlarmList {
        reply: oneshot::Sender<Vec<rivet_api::etcdserverpb::AlarmMember>>,
    },
    /// Test-only fault switch (enabled by `RIVET_TEST_FAULTS=1`): cut this member off
    /// from every peer, or restore it.
    IsolateForTests {
        isolate: bool,
    },
    /// Test-only fault switch: drop, delay and duplicate this member's outgoing raft
    /// messages, ignore chosen peers (`crate::raft::faults`).
    FaultsForTests {
        faults: crate::raft::faults::TestFaults,
    },
    MemberList {
        reply: oneshot::Sender<Vec<rivet_api::etcdserverpb::Member>>,
    },
    MemberChange {
        change: MemberChange,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    },
    /// Transfer leadership to `target` (Maintenance.MoveLeader); only on the leader.
    MoveLeader {
        target: u64,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Graceful stop: fail what is pending, checkpoint every shard, answer `done`.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A lease's remaining time as LeaseTimeToLive reports it.
#[derive(Clone, Debug, Default)]
pub struct LeaseTtl {
    pub id: i64,
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Bytes>,
}

/// A change of the member table (etcd's Cluster service).
#[derive(Clone, Debug)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

#[derive(Clone, Debug, Default)]
pub struct MemberChangeResult {
    /// The added member (MemberAdd).
    pub member: Option<rivet_api::etcdserverpb::Member>,
    /// The members after the change.
    pub members: Vec<rivet_api::etcdserverpb::Member>,
}

/// Raft core → shard core: the ordered apply stream.
pub enum ApplyMessage {
    /// Everything committed in one raft Ready that touches this shard, plus the index and
    /// revision reached, so the shard can acknowledge progress even with no mutation.
    Batch(ApplyBatch),
    /// Make everything applied so far durable and record a checkpoint at this index.
    Checkpoint(CheckpointRequest),
    /// Swap in the page files staged for a raft snapshot at `index` (the WAL already
    /// names that checkpoint).
    Install {
        snap_dir: std::path::PathBuf,
        index: u64,
    },
    /// The checkpoint at `index` is recorded in the WAL: every later start opens at it or
    /// at a later one, so garbage collection may drop what it compacted away.
    CheckpointRecorded { index: u64 },
    /// A `Maintenance.Snapshot` stream starts here (after everything applied so far):
    /// keep the versions of `revision` readable until it ends.
    SnapshotPin { id: u64, revision: i64 },
}

#[derive(Debug, Default)]
pub struct ApplyBatch {
    pub index: u64,
    pub revision: i64,
    pub mutations: Vec<Mutation>,
    pub compaction: Option<i64>,
    /// The auth store after this batch, when an entry of it changed the store: the core
    /// checks the requests it serves against it once it applied the batch.
    pub auth: Option<std::sync::Arc<crate::auth::AuthState>>,
    /// Simple tokens assigned or dropped by this batch's entries, in order.
    pub tokens: Vec<crate::auth::TokenUpdate>,
}

#[derive(Clone, Copy, Debug)]
pub struct CheckpointRequest {
    pub index: u64,
    pub term: u64,
    pub revision: i64,
    pub compact_revision: i64,
    /// Seal the active page segment first, so that everything applied so far lies in
    /// segments garbage collection may rewrite (a defragmentation asked for it).
    pub seal: bool,
}

/// A shard's page file sizes (Maintenance.Status, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageSizes {
    /// Bytes of records written, dead ones included: `dbSize`.
    pub used_bytes: u64,
    /// Bytes of live records: `dbSizeInUse`.
    pub live_bytes: u64,
}

impl std::ops::Add for PageSizes {
    type Output = PageSizes;
    fn add(self, other: PageSizes) -> PageSizes {
        PageSizes {
            used_bytes: self.used_bytes + other.used_bytes,
            live_bytes: self.live_bytes + other.live_bytes,
        }
    }
}

/// Shard core → raft core: progress of the apply stream.
#[derive(Clone, Copy, Debug)]
pub struct ShardAck {
    pub shard: usize,
    pub index: u64,
    pub checkpoint: Option<u64>,
    /// The shard's page file size, read from the files when acknowledging.
    pub size_bytes: u64,
}

/// Shard → raft core at start-up: the heads of the shard's live keys, in chunks, so the
/// sequencer is rebuilt without holding everything twice. `None` ends the shard's stream.
/// Values are not streamed: they stay in the page records the heads point at, which the
/// sequencer reads through `segments` when it needs one.
pub struct RestoreChunk {
    pub shard: usize,
    /// The shard's segments as they are at the start, mapped read-only (sent with the
    /// shard's first chunk, empty in the others).
    pub segments: Vec<crate::page::SegmentView>,
    pub heads: Option<Vec<(Bytes, crate::sequencer::StoredHead)>>,
}

/// Core → another shard core: a part of a scattered read.
pub enum ShardRequest {
    Range {
        part: RangePart,
        reply: oneshot::Sender<Result<RangePartResult, EtcdError>>,
    },
    /// The shard's page file sizes: bytes written and bytes live.
    SizeBytes { reply: oneshot::Sender<PageSizes> },
    /// The next versions of snapshot stream `id` (see `crate::etcd_snapshot`); `restart`
    /// goes back to the first (the second pass), `sizes_only` gives zeros for keys and
    /// values.
    SnapshotChunk {
        id: u64,
        restart: bool,
        sizes_only: bool,
        reply: oneshot::Sender<Result<crate::etcd_snapshot::SnapshotChunk, EtcdError>>,
    },
    /// Snapshot stream `id` ended: unpin.
    SnapshotEnd { id: u64 },
    /// Rewrite every page segment with a dead byte once the checkpoint at `after` is
    /// recorded (Maintenance.Defragment); answers when done.
    Defragment {
        after: u64,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Watch: the changes in `[from, to]` from the recent log (`None`: it does not reach
    /// back that far).
    WatchRecent {
        from: i64,
        to: i64,
        prev_kv: bool,
        reply: oneshot::Sender<Option<WatchEvents>>,
    },
    /// Watch catch-up: one range's changes in `[from, to]`, read from the index.
    WatchHistory {
        key: Bytes,
        end: RangeEnd,
        from: i64,
        to: i64,
        prev_kv: bool,
        reply: oneshot::Sender<Result<WatchEvents, CompactedAt>>,
    },
    /// The shard's part of HashKV at `revision`.
    HashKv {
        revision: i64,
        reply: oneshot::Sender<Result<u32, EtcdError>>,
    },
    /// This shard's records up to `revision`, once it applied `index` (raft snapshot).
    /// A shard that cannot read a record drops `reply`: the snapshot is not sent.
    Export {
        index: u64,
        revision: i64,
        reply: oneshot::Sender<Vec<u8>>,
    },
}

/// One shard's share of a range.
#[derive(Clone, Debug)]
pub struct RangePart {
    pub key: Bytes,
    pub end: RangeEnd,
    pub revision: i64,
    /// Most key-values to return (0 = all); the count covers the whole range.
    pub limit: usize,
    pub count_only: bool,
    pub with_values: bool,
}

#[derive(Debug, Default)]
pub struct RangePartResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
}

impl RangePart {
    pub fn from_request(request: &RangeRequest, revision: i64) -> RangePart {
        RangePart {
            key: request.key.clone(),
            end: RangeEnd::from_request(&request.range_end),
            revision,
            limit: crate::range::fetch_limit(request),
            count_only: request.count_only,
            with_values: crate::range::needs_values(request),
        }
    }
}
