//! The raft core: one raft group (tikv raft-rs `RawNode`) driven on its own pinned thread
//! by the Ready protocol, with the WAL, the apply sequencer and the bookkeeping of what
//! every shard has applied.
//!
//! One turn of the loop:
//! 1. wait for a command, a shard acknowledgement or the tick;
//! 2. drain every command that arrived meanwhile: proposals, read requests (all read
//!    requests of this turn share one ReadIndex), status;
//! 3. handle the Ready: the new entries and hard state go to the WAL as one write and one
//!    fdatasync (group commit: every proposal that arrived during the previous fdatasync
//!    is in this one); committed entries are applied by the sequencer and streamed to the
//!    shards;
//! 4. answers are released once every shard has acknowledged the index they depend on,
//!    so a client that got an answer reads its own write on any shard.
//!
//! Nothing is acknowledged before its fdatasync completed: entries are applied only when
//! raft reports them committed, which for this member requires them persisted.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Message as RaftMessage};
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use rivet_api::etcdserverpb::{alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
use rivet_api::rivetpb::{
    internal_request, CheckpointMarker, ConfChangeContext, InternalRequest, Member,
    MemberAttributes, SnapshotInfo, WalMetadata,
};
use rivet_wal::{Record, RecordKind, Wal, WalOptions};

use crate::error::EtcdError;
use crate::limits;
use crate::membership::MemberTable;
use crate::messages::{
    ApplyBatch, ApplyMessage, CheckpointRequest, MemberChange, MemberChangeResult, RaftCommand,
    RaftStatus, ReadPoint, Reply, RestoreChunk, ShardAck,
};
use crate::sequencer::{Applied, Outcome, Sequencer};
use crate::shard::shard_of;
use crate::shared::Shared;

/// What the raft core needs to start.
pub struct RaftCoreConfig {
    pub wal_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub shard_count: usize,
    /// Applied entries between checkpoints (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub quota_backend_bytes: u64,
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    /// This member's name and client URLs, published to the member table at start.
    pub name: String,
    pub client_urls: Vec<String>,
    /// The members of a new cluster (`--initial-cluster-state new`); empty when this
    /// member joins an existing cluster and learns everything from a snapshot.
    pub initial_members: Vec<Member>,
    /// Refuse membership changes that would lose quorum (`--strict-reconfig-check`).
    pub strict_reconfig_check: bool,
    /// `--initial-cluster-token`: part of every member ID.
    pub cluster_token: String,
    /// `member/snap`: where snapshots are staged next to the shards' page files.
    pub snap_dir: PathBuf,
}

/// How the raft core reaches its peers (the QUIC transport lives in `net`). Sending never
/// blocks: a message that cannot be queued is dropped and raft is told the peer is
/// unreachable, which raft recovers from by retrying.
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
}

/// How long a follower waits for the leader to answer a request handed to it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A gRPC channel to the leader's client URL, for the requests only the leader can
/// answer (etcd sends them over its peer URL).
async fn leader_channel(url: &str) -> Result<tonic::transport::Channel, EtcdError> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| EtcdError::Internal(format!("leader client URL {url}: {e}")))?
        .connect()
        .await
        .map_err(|_| EtcdError::NoLeader)
}

/// Asks the leader for a lease's remaining TTL: only its lessor's clock is exact.
async fn forward_time_to_live(
    url: String,
    id: i64,
    keys: bool,
) -> Result<crate::messages::LeaseTtl, EtcdError> {
    use rivet_api::etcdserverpb::{lease_client::LeaseClient, LeaseTimeToLiveRequest};
    let call = async {
        let response = LeaseClient::new(leader_channel(&url).await?)
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await
            .map_err(|status| EtcdError::Forwarded(status.code(), status.message().into()))?
            .into_inner();
        Ok(crate::messages::LeaseTtl {
            id: response.id,
            ttl: response.ttl,
            granted_ttl: response.granted_ttl,
            keys: response.keys,
        })
    };
    tokio::time::timeout(FORWARD_TIMEOUT, call)
        .await
        .unwrap_or(Err(EtcdError::Timeout))
}

/// Asks the leader, at its client URL, to promote learner `id`, and answers what it did.
async fn forward_promote(url: String, id: u64) -> Result<MemberChangeResult, EtcdError> {
    use rivet_api::etcdserverpb::{cluster_client::ClusterClient, MemberPromoteRequest};
    let call = async {
        let response = ClusterClient::new(leader_channel(&url).await?)
            .member_promote(MemberPromoteRequest { id })
            .await
            .map_err(|status| EtcdError::Forwarded(status.code(), status.message().into()))?;
        Ok(MemberChangeResult {
            member: None,
            members: response.into_inner().members,
        })
    };
    tokio::time::timeout(FORWARD_TIMEOUT, call)
        .await
        .unwrap_or(Err(EtcdError::Timeout))
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
    /// The shards finished exporting a snapshot for `to` (internal).
    SnapshotExported {
        to: u64,
        message: bytes::Bytes,
        data: bytes::Bytes,
    },
}

/// The durable state found in the WAL at start-up.
pub struct Recovered {
    pub wal: Wal,
    pub checkpoint: Option<CheckpointMarker>,
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("wal: {0}")]
    Wal(String),
    #[error("the WAL in {dir} was written by member {found:x} of cluster {found_cluster:x}, not member {expected:x} of cluster {expected_cluster:x}")]
    Identity {
        dir: String,
        found: u64,
        found_cluster: u64,
        expected: u64,
        expected_cluster: u64,
    },
    #[error("the data dir was created with --shards {found}; rivet was started with --shards {requested}: start it with --shards {found} (re-sharding a data dir is not supported yet)")]
    ShardCount { found: u32, requested: usize },
    #[error("damaged {what} in the WAL at index {index}: {reason}")]
    Decode {
        what: &'static str,
        index: u64,
        reason: String,
    },
    #[error("raft: {0}")]
    Raft(String),
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
            wal,
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
            return Err(StartError::ShardCount {
                found: metadata.shard_count,
                requested,
            });
        }
        _ => config.shard_count = (metadata.shard_count as usize).max(1),
    }
    let mut hard_state = HardState::default();
    let mut checkpoint: Option<CheckpointMarker> = None;
    let mut entries: Vec<Entry> = Vec::new();
    for record in recovery.records {
        match record.kind {
            RecordKind::Entry => {
                let mut entry = Entry::default();
                entry
                    .merge_from_bytes(&record.payload)
                    .map_err(|e| StartError::Decode {
                        what: "entry",
                        index: record.index,
                        reason: e.to_string(),
                    })?;
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
                    .map_err(|e| StartError::Decode {
                        what: "hard state",
                        index: record.index,
                        reason: e.to_string(),
                    })?;
                hard_state = state;
            }
            RecordKind::Snapshot => {
                let marker = CheckpointMarker::decode(record.payload.as_slice()).map_err(|e| {
                    StartError::Decode {
                        what: "checkpoint marker",
                        index: record.index,
                        reason: e.to_string(),
                    }
                })?;
                checkpoint = Some(marker);
            }
            _ => {}
        }
    }
    if let Some(c) = &checkpoint {
        entries.retain(|e| e.index > c.applied_index);
    }
    Ok(Recovered {
        wal,
        checkpoint,
        hard_state,
        entries,
    })
}

pub struct RaftCore {
    config: RaftCoreConfig,
    node: RawNode<MemStorage>,
    wal: Wal,
    sequencer: Sequencer,
    shared: Arc<Shared>,
    apply_senders: Vec<async_channel::Sender<ApplyMessage>>,
    /// Proposals of this member waiting for their entry to apply, by proposal id.
    proposals: HashMap<u64, oneshot::Sender<Result<Reply, EtcdError>>>,
    next_proposal_id: u64,
    /// Read requests of the current turn, not yet given a ReadIndex.
    reads_unsent: Vec<oneshot::Sender<Result<ReadPoint, EtcdError>>>,
    read_only_txns_unsent: Vec<(
        rivet_api::etcdserverpb::TxnRequest,
        oneshot::Sender<Result<Reply, EtcdError>>,
    )>,
    /// Read batches sent to raft, by ReadIndex context.
    /// Read batches raft was asked about, with when they were last asked.
    reads_in_raft: HashMap<u64, (ReadBatch, Instant)>,
    next_read_context: u64,
    /// Read batches with a known index, waiting for this member to apply it.
    reads_waiting: VecDeque<(u64, ReadBatch)>,
    acked: Vec<u64>,
    applied_index: u64,
    checkpoint_index: u64,
    checkpoint_in_flight: Option<(CheckpointRequest, Vec<bool>)>,
    /// Page file sizes the shards read from disk with their last acknowledgement.
    shard_sizes: Vec<u64>,
    db_size_bytes: u64,
    stopping: bool,
    shutdown_done: Option<oneshot::Sender<()>>,
    /// A leader stopping gracefully hands leadership over first (ETCD_LESSONS 8); it
    /// stops when another member leads, or at this deadline.
    stop_after_transfer: Option<Instant>,
    members: MemberTable,
    peers: Box<dyn PeerLink>,
    /// Membership changes proposed here, waiting for their entry to apply.
    member_waiters: HashMap<u64, oneshot::Sender<Result<MemberChangeResult, EtcdError>>>,
    /// A MoveLeader in progress: target, answer, and when to give up.
    move_leader: Option<PendingMoveLeader>,
    /// Whether this member's name and client URLs are in the member table yet.
    attributes_proposed: bool,
    /// For snapshots: the shards' request channels and a way to report back to the loop.
    shard_requests: Vec<async_channel::Sender<crate::messages::ShardRequest>>,
    events: tokio::sync::mpsc::Sender<PeerEvent>,
    snapshots_in_flight: std::collections::HashSet<u64>,
    lessor: crate::lessor::Lessor,
    /// Active alarms (replicated state): NOSPACE blocks writes that add data.
    alarms: Vec<AlarmMember>,
    /// Whether this member already proposed the NOSPACE alarm it is about to see.
    nospace_proposed: bool,
    last_lease_checkpoint: Instant,
    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
    min_lease_ttl: i64,
}

struct PendingMoveLeader {
    target: u64,
    reply: oneshot::Sender<Result<(), EtcdError>>,
    deadline: Instant,
}

/// The channels that connect the raft core to the shards and to the peer transport.
pub struct RaftCoreLinks {
    pub apply_senders: Vec<async_channel::Sender<ApplyMessage>>,
    pub restore: async_channel::Receiver<RestoreChunk>,
    pub peers: Box<dyn PeerLink>,
    pub shard_requests: Vec<async_channel::Sender<crate::messages::ShardRequest>>,
    /// A sender into the raft core's own peer-event channel (for snapshot progress).
    pub events: tokio::sync::mpsc::Sender<PeerEvent>,
}

#[derive(Default)]
struct ReadBatch {
    reads: Vec<oneshot::Sender<Result<ReadPoint, EtcdError>>>,
    txns: Vec<(
        rivet_api::etcdserverpb::TxnRequest,
        oneshot::Sender<Result<Reply, EtcdError>>,
    )>,
}

impl ReadBatch {
    /// Whether every reader of the batch stopped waiting.
    fn abandoned(&self) -> bool {
        self.reads.iter().all(oneshot::Sender::is_canceled)
            && self.txns.iter().all(|(_, reply)| reply.is_canceled())
    }
}

/// Forwards raft-rs's slog records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

impl RaftCore {
    /// Builds the raft node from the recovered WAL and the sequencer state the shards
    /// restored (received through `restore`).
    pub async fn start(
        config: RaftCoreConfig,
        recovered: Recovered,
        shared: Arc<Shared>,
        links: RaftCoreLinks,
    ) -> Result<RaftCore, StartError> {
        let RaftCoreLinks {
            apply_senders,
            restore,
            peers,
            shard_requests,
            events,
        } = links;
        let (revision, compact_revision, applied) = match &recovered.checkpoint {
            Some(c) => (c.revision, c.compact_revision, c.applied_index),
            None => (1, -1, 0),
        };
        let mut sequencer = Sequencer::restore(revision, compact_revision);
        if let Some(c) = &recovered.checkpoint {
            for lease in &c.leases {
                sequencer.restore_lease(lease.id, lease.ttl, lease.remaining_ttl);
            }
        }
        let election = config.heartbeat_interval * config.election_ticks as u32;
        let min_lease_ttl = (election.as_millis() as i64 * 3 / 2 + 999) / 1000;
        let mut done = 0;
        while done < config.shard_count {
            let Ok(chunk) = restore.recv().await else {
                return Err(StartError::Raft("a shard stopped while restoring".into()));
            };
            match chunk.heads {
                Some(heads) => {
                    for (key, head) in heads {
                        debug_assert_eq!(shard_of(&key, config.shard_count), chunk.shard);
                        sequencer.restore_key(key, head);
                    }
                }
                None => done += 1,
            }
        }
        // Where the raft log starts: at the last checkpoint; for a new cluster, at a
        // bootstrap snapshot (index 1, term 1) holding the initial voters, as etcd
        // bootstraps with membership entries at term 1; a member joining an existing
        // cluster starts empty and receives a snapshot from the leader.
        let mut applied = applied;
        let (base, members) = match &recovered.checkpoint {
            Some(c) => {
                let mut conf_state = ConfState::default();
                conf_state
                    .merge_from_bytes(&c.conf_state)
                    .map_err(|e| StartError::Decode {
                        what: "checkpoint conf state",
                        index: c.applied_index,
                        reason: e.to_string(),
                    })?;
                let members = c
                    .membership
                    .as_ref()
                    .map(MemberTable::from_proto)
                    .unwrap_or_default();
                (Some((c.applied_index, c.term, conf_state)), members)
            }
            None if !config.initial_members.is_empty() => {
                let voters: Vec<u64> = config.initial_members.iter().map(|m| m.id).collect();
                applied = applied.max(1);
                (
                    Some((1, 1, ConfState::from((voters, vec![])))),
                    MemberTable::from_members(config.initial_members.clone()),
                )
            }
            None => (None, MemberTable::default()),
        };
        let storage = MemStorage::new();
        if let Some((index, term, conf_state)) = base {
            let mut snapshot = Snapshot::default();
            let metadata = snapshot.mut_metadata();
            metadata.index = index;
            metadata.term = term;
            metadata.set_conf_state(conf_state);
            storage
                .wl()
                .apply_snapshot(snapshot)
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        crate::check::contiguous_entries(
            &recovered.entries,
            raft::Storage::last_index(&storage).unwrap_or(applied),
        )
        .map_err(|(index, reason)| StartError::Decode {
            what: "entry",
            index,
            reason,
        })?;
        let last_index = recovered.entries.last().map_or(applied, |e| e.index);
        storage
            .wl()
            .append(&recovered.entries)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let mut hard_state = recovered.hard_state.clone();
        hard_state.term = hard_state
            .term
            .max(raft::Storage::initial_state(&storage).map_or(0, |s| s.hard_state.term));
        // Entries up to the checkpoint were applied, hence committed, even if the hard
        // state written before the crash carried an older commit index.
        hard_state.commit = hard_state.commit.max(applied).min(last_index.max(applied));
        storage.wl().set_hardstate(hard_state);

        let raft_config = Config {
            id: config.member_id,
            election_tick: config.election_ticks,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: limits::RAFT_MESSAGE_BYTES_MAX,
            max_inflight_msgs: limits::RAFT_INFLIGHT_MESSAGES_MAX,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
        let mut node = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // A single voter elects itself at once instead of waiting an election timeout.
        let voters = node.raft.prs().conf().voters().ids();
        if voters.len() == 1 && voters.contains(config.member_id) {
            node.campaign()
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        let shard_count = config.shard_count;
        Ok(RaftCore {
            config,
            node,
            wal: recovered.wal,
            sequencer,
            shared,
            apply_senders,
            proposals: HashMap::new(),
            next_proposal_id: 1,
            reads_unsent: Vec::new(),
            read_only_txns_unsent: Vec::new(),
            reads_in_raft: HashMap::new(),
            next_read_context: 1,
            reads_waiting: VecDeque::new(),
            acked: vec![applied; shard_count],
            applied_index: applied,
            checkpoint_index: applied,
            checkpoint_in_flight: None,
            shard_sizes: vec![0; shard_count],
            db_size_bytes: 0,
            stopping: false,
            shutdown_done: None,
            stop_after_transfer: None,
            members,
            peers,
            member_waiters: HashMap::new(),
            move_leader: None,
            attributes_proposed: false,
            shard_requests,
            events,
            snapshots_in_flight: std::collections::HashSet::new(),
            lessor: crate::lessor::Lessor::default(),
            alarms: recovered
                .checkpoint
                .as_ref()
                .map(|c| c.alarms.clone())
                .unwrap_or_default(),
            nospace_proposed: false,
            last_lease_checkpoint: Instant::now(),
            min_lease_ttl,
        })
    }

    /// etcd's warning when a leader's heartbeats go out later than twice the heartbeat
    /// interval: followers may soon start an election.
    fn warn_late_heartbeat(&self, since_last_tick: Duration) {
        let expected = self.config.heartbeat_interval * 2;
        if self.node.raft.state == StateRole::Leader && since_last_tick > expected {
            tracing::warn!(
                expected_duration = ?expected,
                exceeded_duration = ?(since_last_tick - expected),
                "leader failed to send out heartbeat on time; took too long, leader is \
                 overloaded likely from slow disk"
            );
            crate::metrics::HEARTBEAT_SEND_FAILURES.inc();
        }
    }

    /// Runs until `commands` closes (every shard core stopped), then checkpoints so the
    /// next start replays nothing.
    pub async fn run(
        mut self,
        commands: async_channel::Receiver<RaftCommand>,
        acks: async_channel::Receiver<ShardAck>,
        mut peer_events: tokio::sync::mpsc::Receiver<PeerEvent>,
    ) {
        self.update_peers();
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Ok(command) => self.handle_command(command),
                    Err(_) => self.stopping = true,
                },
                ack = acks.recv() => match ack {
                    Ok(ack) => self.handle_ack(ack),
                    Err(_) => break,
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.warn_late_heartbeat(now - last_tick);
                    last_tick = now;
                    self.node.tick();
                    self.retry_reads();
                    self.check_move_leader();
                    self.expire_leases();
                }
                Some(event) = peer_events.recv() => self.handle_peer_event(event).await,
            }
            while let Ok(event) = peer_events.try_recv() {
                self.handle_peer_event(event).await;
            }
            for _ in 0..limits::RAFT_COMMANDS_PER_TURN_MAX {
                match commands.try_recv() {
                    Ok(command) => self.handle_command(command),
                    Err(_) => break,
                }
            }
            while let Ok(ack) = acks.try_recv() {
                self.handle_ack(ack);
            }
            self.send_read_index();
            if let Err(e) = self.handle_ready().await {
                tracing::error!("raft core stopping: {e}");
                break;
            }
            self.maybe_checkpoint().await;
            self.maybe_publish_attributes();
            if let Some(deadline) = self.stop_after_transfer {
                if self.node.raft.state != StateRole::Leader || Instant::now() >= deadline {
                    self.stopping = true;
                }
            }
            if self.stopping {
                break;
            }
        }
        self.shutdown(acks).await;
    }

    fn handle_command(&mut self, command: RaftCommand) {
        match command {
            RaftCommand::Propose { request, reply } => self.propose(request, reply),
            RaftCommand::ReadIndex { reply } => self.reads_unsent.push(reply),
            RaftCommand::ReadOnlyTxn {
                request,
                linearizable,
                reply,
            } => {
                if linearizable {
                    self.read_only_txns_unsent.push((request, reply));
                } else {
                    self.answer_read_only_txn(request, reply);
                }
            }
            RaftCommand::LeaseKeepAlive { id, reply } => {
                let result = if !self.lessor.is_primary() {
                    Err(EtcdError::NotLeader)
                } else {
                    match self.sequencer.lease(id) {
                        Some(lease) => {
                            let ttl = lease.ttl;
                            if self.lessor.renew(id, ttl, Instant::now()) {
                                Ok(ttl)
                            } else {
                                Ok(0)
                            }
                        }
                        // etcd answers a keep-alive of an unknown lease with TTL 0.
                        None => Ok(0),
                    }
                };
                let _ = reply.send(result);
            }
            RaftCommand::LeaseTimeToLive { id, keys, reply } => {
                let local = self.time_to_live(id, keys);
                match self.leader_client_url() {
                    // A follower knows the TTL only as of the last checkpoint; like
                    // etcd, it asks the leader (and answers what it knows if it can't).
                    Some(url) if !self.lessor.is_primary() => {
                        tokio::spawn(async move {
                            let ttl = forward_time_to_live(url, id, keys).await;
                            let _ = reply.send(ttl.unwrap_or(local));
                        });
                    }
                    _ => {
                        let _ = reply.send(local);
                    }
                }
            }
            RaftCommand::AlarmList { reply } => {
                let _ = reply.send(self.alarms.clone());
            }
            RaftCommand::LeaseLeases { reply } => {
                let _ = reply.send(self.sequencer.leases().keys().copied().collect());
            }
            RaftCommand::IsolateForTests { isolate } => {
                let peers: Vec<u64> = if isolate {
                    self.members
                        .members()
                        .map(|m| m.id)
                        .filter(|id| *id != self.config.member_id)
                        .collect()
                } else {
                    Vec::new()
                };
                tracing::warn!(
                    isolate,
                    "test fault switch: peer traffic {}",
                    if isolate { "cut" } else { "restored" }
                );
                self.peers.set_blocked(&peers);
            }
            RaftCommand::MemberList { reply } => {
                let _ = reply.send(self.members.to_api());
            }
            RaftCommand::MemberChange { change, reply } => {
                self.propose_member_change(change, reply)
            }
            RaftCommand::MoveLeader { target, reply } => self.start_move_leader(target, reply),
            RaftCommand::Shutdown { done } => {
                self.shutdown_done = Some(done);
                self.begin_stop();
            }
            RaftCommand::Status { reply } => {
                let status = self.node.status();
                let _ = reply.send(RaftStatus {
                    leader: self.node.raft.leader_id,
                    term: status.hs.term,
                    last_index: self.node.raft.raft_log.last_index(),
                    applied_index: self.applied_index,
                    keys: self.sequencer.key_count() as u64,
                });
            }
        }
    }

    async fn handle_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Snapshot { message, data } => self.install_snapshot(message, data).await,
            PeerEvent::RemovedFromCluster => {
                tracing::warn!("the cluster removed this member; stopping");
                self.stopping = true;
            }
            PeerEvent::SnapshotStatus { to, delivered } => {
                self.snapshots_in_flight.remove(&to);
                let status = if delivered {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
            PeerEvent::SnapshotExported { to, message, data } => {
                tracing::info!(
                    to = format_args!("{to:x}"),
                    bytes = data.len(),
                    "sending a snapshot"
                );
                self.peers.send_snapshot(to, message, data);
            }
            PeerEvent::Message(bytes) => {
                let mut message = RaftMessage::default();
                if let Err(e) = message.merge_from_bytes(&bytes) {
                    tracing::warn!("dropping an undecodable raft message from a peer: {e}");
                    return;
                }
                if let Err(e) = self.node.step(message) {
                    tracing::debug!("raft rejected a peer message: {e}");
                }
            }
        }
    }

    fn send_messages(&mut self, messages: Vec<RaftMessage>) {
        for message in messages {
            let to = message.to;
            if message.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                self.export_snapshot(message);
                continue;
            }
            let bytes = match message.write_to_bytes() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!("cannot encode a raft message: {e}");
                    continue;
                }
            };
            if !self.peers.send(to, bytes.into()) {
                self.node.report_unreachable(to);
            }
        }
    }

    /// Starts streaming a snapshot to a follower: the shards export every version up to
    /// the revision at the snapshot's index (which is this member's applied index: raft
    /// takes it from the log storage, whose commit index only moves when we apply).
    fn export_snapshot(&mut self, mut message: RaftMessage) {
        let to = message.to;
        let index = message.get_snapshot().get_metadata().index;
        if index != self.applied_index || self.snapshots_in_flight.contains(&to) {
            self.node.report_snapshot(to, raft::SnapshotStatus::Failure);
            return;
        }
        let info = SnapshotInfo {
            revision: self.sequencer.revision(),
            compact_revision: self.sequencer.compact_revision(),
            membership: Some(self.members.to_proto()),
            leases: self.lease_records(),
            alarms: self.alarms.clone(),
        };
        message.mut_snapshot().data = info.encode_to_vec().into();
        let bytes = match message.write_to_bytes() {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err(e) => {
                tracing::error!("cannot encode a snapshot message: {e}");
                return;
            }
        };
        self.snapshots_in_flight.insert(to);
        let requests = self.shard_requests.clone();
        let events = self.events.clone();
        let revision = info.revision;
        tokio::spawn(async move {
            let mut data = Vec::new();
            for shard in requests {
                let (reply, answer) = oneshot::channel();
                let export = crate::messages::ShardRequest::Export {
                    index,
                    revision,
                    reply,
                };
                if shard.send(export).await.is_err() {
                    let _ = events
                        .send(PeerEvent::SnapshotStatus {
                            to,
                            delivered: false,
                        })
                        .await;
                    return;
                }
                match answer.await {
                    Ok(part) => data.extend_from_slice(&part),
                    Err(_) => {
                        let _ = events
                            .send(PeerEvent::SnapshotStatus {
                                to,
                                delivered: false,
                            })
                            .await;
                        return;
                    }
                }
            }
            let _ = events
                .send(PeerEvent::SnapshotExported {
                    to,
                    message: bytes,
                    data: data.into(),
                })
                .await;
        });
    }

    /// Installs a snapshot from the leader: stage page files, record the checkpoint in the
    /// WAL, swap the shards' files, rebuild the sequencer and the member table, then let
    /// raft take the snapshot.
    async fn install_snapshot(&mut self, message_bytes: bytes::Bytes, data: bytes::Bytes) {
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
        if let Err(e) = crate::snapshot::stage(
            &self.config.snap_dir,
            &data,
            self.config.shard_count,
            &checkpoint,
        ) {
            tracing::error!("cannot stage the snapshot at index {index}: {e}");
            return;
        }
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
        };
        let payload = marker.encode_to_vec();
        if let Err(e) = self.wal.append(&[Record {
            kind: RecordKind::Snapshot,
            index,
            payload: &payload,
        }]) {
            tracing::error!("cannot record the snapshot at index {index} in the WAL: {e}");
            return;
        }
        for sender in &self.apply_senders {
            let install = ApplyMessage::Install {
                snap_dir: self.config.snap_dir.clone(),
                index,
                revision: info.revision,
            };
            let _ = sender.send(install).await;
        }
        let mut sequencer = Sequencer::restore(info.revision, info.compact_revision);
        for lease in &info.leases {
            sequencer.restore_lease(lease.id, lease.ttl, lease.remaining_ttl);
        }
        for (key, head) in heads {
            sequencer.restore_key(key, head);
        }
        self.sequencer = sequencer;
        self.members = info
            .membership
            .as_ref()
            .map(MemberTable::from_proto)
            .unwrap_or_default();
        self.alarms = info.alarms.clone();
        self.update_peers();
        self.applied_index = index;
        self.checkpoint_index = index;
        self.checkpoint_in_flight = None;
        tracing::info!(
            index,
            revision = info.revision,
            "installed a snapshot from the leader"
        );
        if let Err(e) = self.node.step(message) {
            tracing::warn!("raft refused the snapshot at index {index}: {e}");
        }
    }

    fn nospace(&self) -> bool {
        self.alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
    }

    /// Proposes etcd's NOSPACE alarm for this member (once).
    fn raise_nospace(&mut self) {
        if self.nospace() || self.nospace_proposed {
            return;
        }
        self.nospace_proposed = true;
        tracing::warn!(
            quota = self.config.quota_backend_bytes,
            size = self.db_size_bytes,
            "database space exceeded; raising the NOSPACE alarm"
        );
        let request = InternalRequest {
            member_id: self.config.member_id,
            id: 0,
            request: Some(internal_request::Request::Alarm(AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: self.config.member_id,
                alarm: AlarmType::Nospace as i32,
            })),
        };
        if self
            .node
            .propose(Vec::new(), request.encode_to_vec())
            .is_err()
        {
            self.nospace_proposed = false;
        }
    }

    fn apply_alarm(&mut self, request: &AlarmRequest) -> Outcome {
        let member = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        let changed = if request.action == alarm_request::AlarmAction::Activate as i32 {
            if self.alarms.contains(&member) {
                Vec::new()
            } else {
                self.alarms.push(member);
                vec![member]
            }
        } else if request.action == alarm_request::AlarmAction::Deactivate as i32 {
            let before = self.alarms.len();
            self.alarms.retain(|a| a != &member);
            if member.alarm == AlarmType::Nospace as i32 {
                self.nospace_proposed = false;
            }
            if self.alarms.len() < before {
                vec![member]
            } else {
                Vec::new()
            }
        } else {
            self.alarms.clone()
        };
        Outcome::applied(Applied::Alarm(AlarmResponse {
            header: None,
            alarms: changed,
        }))
    }

    fn lease_records(&self) -> Vec<rivet_api::rivetpb::LeaseRecord> {
        self.sequencer
            .leases()
            .iter()
            .map(|(id, lease)| rivet_api::rivetpb::LeaseRecord {
                id: *id,
                ttl: lease.ttl,
                remaining_ttl: lease.remaining_ttl,
            })
            .collect()
    }

    /// etcd's LeaseTimeToLive: TTL -1 (and no error) for a lease that does not exist.
    fn time_to_live(&self, id: i64, with_keys: bool) -> crate::messages::LeaseTtl {
        let Some(lease) = self.sequencer.lease(id) else {
            return crate::messages::LeaseTtl {
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            };
        };
        let ttl = match self.lessor.remaining(id, Instant::now()) {
            Some(remaining) => remaining.as_secs() as i64,
            None if lease.remaining_ttl > 0 => lease.remaining_ttl,
            None => lease.ttl,
        };
        crate::messages::LeaseTtl {
            id,
            ttl,
            granted_ttl: lease.ttl,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    /// On the leader: proposes a revoke for each expired lease (at most the revoke rate
    /// per second) and, now and then, a checkpoint of the remaining TTLs.
    fn expire_leases(&mut self) {
        if !self.lessor.is_primary() {
            return;
        }
        let now = Instant::now();
        let per_tick = (crate::limits::LEASE_REVOKES_PER_SECOND as u128
            * self.config.heartbeat_interval.as_millis()
            / 1000)
            .max(1) as usize;
        for id in self.lessor.expired(now, per_tick) {
            let request = InternalRequest {
                member_id: self.config.member_id,
                id: 0,
                request: Some(internal_request::Request::LeaseRevoke(
                    rivet_api::etcdserverpb::LeaseRevokeRequest { id },
                )),
            };
            if self
                .node
                .propose(Vec::new(), request.encode_to_vec())
                .is_err()
            {
                self.lessor.retry(id);
            }
        }
        if now.duration_since(self.last_lease_checkpoint)
            >= crate::limits::LEASE_CHECKPOINT_INTERVAL
        {
            self.last_lease_checkpoint = now;
            let checkpoints = self.lessor.checkpoints(now);
            for batch in checkpoints.chunks(crate::limits::LEASE_CHECKPOINT_BATCH) {
                let request = InternalRequest {
                    member_id: self.config.member_id,
                    id: 0,
                    request: Some(internal_request::Request::LeaseCheckpoint(
                        rivet_api::etcdserverpb::LeaseCheckpointRequest {
                            checkpoints: batch.to_vec(),
                        },
                    )),
                };
                let _ = self.node.propose(Vec::new(), request.encode_to_vec());
            }
        }
    }

    /// Tells the transport who the peers are now.
    fn update_peers(&self) {
        let peers = self
            .members
            .members()
            .filter(|m| m.id != self.config.member_id)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        self.peers.set_peers(peers);
        let learner = self
            .members
            .get(self.config.member_id)
            .is_some_and(|m| m.is_learner);
        self.shared
            .is_learner
            .store(learner, std::sync::atomic::Ordering::Release);
    }

    /// Once there is a leader, publishes this member's name and client URLs (etcd's
    /// "publish" step), so `member list` shows them.
    fn maybe_publish_attributes(&mut self) {
        if self.attributes_proposed || self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let Some(member) = self.members.get(self.config.member_id) else {
            return;
        };
        self.attributes_proposed = true;
        if member.name == self.config.name && member.client_urls == self.config.client_urls {
            return;
        }
        let request = InternalRequest {
            member_id: self.config.member_id,
            id: 0,
            request: Some(internal_request::Request::MemberAttributes(
                MemberAttributes {
                    id: self.config.member_id,
                    name: self.config.name.clone(),
                    client_urls: self.config.client_urls.clone(),
                },
            )),
        };
        if let Err(e) = self.node.propose(Vec::new(), request.encode_to_vec()) {
            tracing::debug!("could not publish member attributes yet: {e}");
            self.attributes_proposed = false;
        }
    }

    /// The leader's first client URL, when another member leads.
    fn leader_client_url(&self) -> Option<String> {
        let leader = self.node.raft.leader_id;
        if leader == raft::INVALID_ID || leader == self.config.member_id {
            return None;
        }
        self.members
            .get(leader)
            .and_then(|m| m.client_urls.first().cloned())
    }

    fn propose_member_change(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        let leader = self.node.raft.leader_id;
        if leader == raft::INVALID_ID {
            let _ = reply.send(Err(EtcdError::NoLeader));
            return;
        }
        if let MemberChange::Promote { id } = change {
            if self.node.raft.state != StateRole::Leader {
                // Only the leader knows whether the learner is in sync: like etcd, a
                // follower hands the promotion to the leader's client port.
                match self.leader_client_url() {
                    Some(url) => {
                        tokio::spawn(async move {
                            let _ = reply.send(forward_promote(url, id).await);
                        });
                    }
                    None => {
                        let _ = reply.send(Err(EtcdError::NoLeader));
                    }
                }
                return;
            }
        }
        if let Err(e) = self.check_member_change(&change) {
            let _ = reply.send(Err(e));
            return;
        }
        let id = self.next_proposal_id;
        self.next_proposal_id += 1;
        let proposer = self.config.member_id;
        let (change_type, node_id, member) = match change {
            MemberChange::Update {
                id: member,
                peer_urls,
            } => {
                let request = InternalRequest {
                    member_id: proposer,
                    id,
                    request: Some(internal_request::Request::MemberUpdate(Member {
                        id: member,
                        peer_urls,
                        ..Default::default()
                    })),
                };
                let result = self.node.propose(Vec::new(), request.encode_to_vec());
                self.after_member_proposal(id, result, reply);
                return;
            }
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => {
                // The ID a member computes for itself from its peer URLs and the token, as
                // for initial members, so that it can join with `existing` (rivet learns
                // nothing else from its peers before raft runs).
                let id = crate::identity::member_id(&peer_urls, &self.config.cluster_token);
                if self.members.contains(id) || self.members.is_removed(id) {
                    let _ = reply.send(Err(EtcdError::MemberExist));
                    return;
                }
                let member = Member {
                    id,
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                    is_learner,
                };
                let change_type = if is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                (change_type, member.id, Some(member))
            }
            MemberChange::Remove { id } => (ConfChangeType::RemoveNode, id, None),
            MemberChange::Promote { id } => {
                let mut member = self.members.get(id).cloned().unwrap_or_default();
                member.is_learner = false;
                (ConfChangeType::AddNode, id, Some(member))
            }
        };
        let context = ConfChangeContext {
            proposer,
            id,
            member,
        };
        let mut conf_change = ConfChange::default();
        conf_change.set_change_type(change_type);
        conf_change.node_id = node_id;
        conf_change.context = context.encode_to_vec().into();
        let result = self.node.propose_conf_change(Vec::new(), conf_change);
        self.after_member_proposal(id, result, reply);
    }

    fn after_member_proposal(
        &mut self,
        id: u64,
        result: raft::Result<()>,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        match result {
            Ok(()) => {
                self.member_waiters.insert(id, reply);
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(EtcdError::NoLeader));
            }
            Err(e) => {
                let _ = reply.send(Err(EtcdError::Internal(e.to_string())));
            }
        }
    }

    /// Whether this member can count on `id` for a membership change: its peer link has
    /// been up for [`limits::RECONFIG_CONNECTED_FOR`] (etcd asks its transport the same)
    /// and, on the leader, raft heard from it within the last election timeout.
    fn peer_active(&self, id: u64) -> bool {
        if id == self.config.member_id {
            return true;
        }
        let heard = self.node.raft.state != StateRole::Leader
            || self
                .node
                .raft
                .prs()
                .get(id)
                .is_some_and(|p| p.recent_active);
        let settled = self
            .peers
            .connected_since(id)
            .is_some_and(|since| since.elapsed() >= limits::RECONFIG_CONNECTED_FOR);
        heard && settled
    }

    /// etcd 3.4's checks before a membership change (`mayAddMember`, `mayRemoveMember`,
    /// `mayPromoteMember`), made by the member that received the request. With
    /// `--strict-reconfig-check` a change may not leave fewer started voters than a
    /// quorum, nor be made while this member is cut off from voters it would need.
    /// "Started" is etcd's: the member has published its name.
    fn check_member_change(&self, change: &MemberChange) -> Result<(), EtcdError> {
        let strict = self.config.strict_reconfig_check;
        let voters: Vec<u64> = self
            .members
            .members()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let started = |id: &u64| self.members.get(*id).is_some_and(|m| !m.name.is_empty());
        match change {
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => {
                let bad = peer_urls.is_empty()
                    || peer_urls
                        .iter()
                        .any(|u| !u.starts_with("http://") && !u.starts_with("https://"));
                if bad {
                    return Err(EtcdError::MemberBadUrls);
                }
                if strict {
                    if !*is_learner {
                        // The cluster with the new member, which has not started yet.
                        let members = voters.len() + 1;
                        let started = voters.iter().filter(|id| started(id)).count();
                        // etcd lets a single started member take a second one (restoring
                        // a cluster from one member's data).
                        let restoring = started == 1 && members == 2;
                        if !restoring && started < members / 2 + 1 {
                            return Err(EtcdError::MemberNotEnoughStarted);
                        }
                    }
                    if !voters.iter().all(|id| self.peer_active(*id)) {
                        return Err(EtcdError::Unhealthy);
                    }
                }
                if self.members.peer_url_in_use(peer_urls, None) {
                    return Err(EtcdError::PeerUrlExist);
                }
                if *is_learner && self.members.learner_count() >= limits::LEARNERS_MAX {
                    return Err(EtcdError::TooManyLearners);
                }
            }
            MemberChange::Remove { id } => {
                let learner = self.members.get(*id).is_some_and(|m| m.is_learner);
                if strict && !learner {
                    let remaining: Vec<u64> = voters.iter().copied().filter(|v| v != id).collect();
                    let started = remaining.iter().filter(|v| started(v)).count();
                    if started < remaining.len() / 2 + 1 {
                        return Err(EtcdError::MemberNotEnoughStarted);
                    }
                    // A member that is down is not part of the active quorum: removing
                    // it is safe. Otherwise the active voters but it must be a quorum
                    // of the voters that remain.
                    let down = *id != self.config.member_id && !self.peer_active(*id);
                    if !down {
                        let active = voters.iter().filter(|v| self.peer_active(**v)).count();
                        let quorum_left = 1 + voters.len().saturating_sub(1) / 2;
                        if active.saturating_sub(1) < quorum_left {
                            return Err(EtcdError::Unhealthy);
                        }
                    }
                }
                if !self.members.contains(*id) {
                    return Err(EtcdError::MemberNotFound);
                }
            }
            MemberChange::Update { id, peer_urls } => {
                if !self.members.contains(*id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if self.members.peer_url_in_use(peer_urls, Some(*id)) {
                    return Err(EtcdError::PeerUrlExist);
                }
            }
            MemberChange::Promote { id } => {
                let Some(member) = self.members.get(*id) else {
                    return Err(EtcdError::MemberNotFound);
                };
                if self.node.raft.state != StateRole::Leader {
                    // etcd decides promotions on the leader, which alone knows how far
                    // the learner's log has come.
                    return Err(EtcdError::NotLeader);
                }
                // A learner is promoted only once its log holds 90% of the leader's.
                let progress = self.node.raft.prs();
                let leader_match = progress.get(self.config.member_id).map_or(0, |p| p.matched);
                if let Some(p) = progress.get(*id) {
                    if p.matched * 100 < leader_match * limits::LEARNER_READY_PERCENT {
                        return Err(EtcdError::LearnerNotReady);
                    }
                }
                if strict {
                    // The learner counts as a started voter of the cluster to be.
                    let members = voters.len() + 1;
                    let started = voters.iter().filter(|v| started(v)).count() + 1;
                    if started < members / 2 + 1 {
                        return Err(EtcdError::MemberNotEnoughStarted);
                    }
                }
                if !member.is_learner {
                    return Err(EtcdError::MemberNotLearner);
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) {
        let mut conf_change = ConfChange::default();
        if let Err(e) = conf_change.merge_from_bytes(&entry.data) {
            // As for an undecodable normal entry: skipped alike on every replica.
            tracing::error!(
                "skipping an undecodable conf change at index {}: {e}",
                entry.index
            );
            return;
        }
        let context = ConfChangeContext::decode(conf_change.context.as_ref()).unwrap_or_default();
        match self.node.apply_conf_change(&conf_change) {
            Ok(conf_state) => {
                self.node.mut_store().wl().set_conf_state(conf_state);
            }
            Err(e) => {
                tracing::warn!("raft refused conf change at index {}: {e}", entry.index);
            }
        }
        let node_id = conf_change.node_id;
        match conf_change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if self.members.contains(node_id) {
                    self.members.promote(node_id);
                } else if let Some(member) = context.member.clone() {
                    self.members.add(member);
                }
            }
            ConfChangeType::RemoveNode => self.members.remove(node_id),
        }
        self.update_peers();
        tracing::info!(
            index = entry.index,
            change = ?conf_change.get_change_type(),
            member = format_args!("{node_id:x}"),
            "applied membership change"
        );
        if context.proposer == self.config.member_id {
            if let Some(reply) = self.member_waiters.remove(&context.id) {
                let member = self
                    .members
                    .get(node_id)
                    .map(crate::membership::to_api_member);
                let _ = reply.send(Ok(MemberChangeResult {
                    member,
                    members: self.members.to_api(),
                }));
            }
        }
        if conf_change.get_change_type() == ConfChangeType::RemoveNode
            && node_id == self.config.member_id
        {
            tracing::warn!("this member was removed from the cluster; stopping");
            self.stopping = true;
        }
    }

    /// A graceful stop: a leader with peers first transfers leadership to the most
    /// up-to-date voter, so the cluster does not wait an election timeout for a new one.
    fn begin_stop(&mut self) {
        let me = self.config.member_id;
        if self.node.raft.state != StateRole::Leader {
            self.stopping = true;
            return;
        }
        let progress = self.node.raft.prs();
        let transferee = progress
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != me)
            .max_by_key(|id| progress.get(*id).map_or(0, |p| p.matched));
        match transferee {
            Some(target) => {
                tracing::info!(
                    target = format_args!("{target:x}"),
                    "stopping: transferring leadership first"
                );
                self.node.transfer_leader(target);
                let election = self.config.heartbeat_interval * self.config.election_ticks as u32;
                self.stop_after_transfer = Some(Instant::now() + election);
            }
            None => self.stopping = true,
        }
    }

    fn start_move_leader(&mut self, target: u64, reply: oneshot::Sender<Result<(), EtcdError>>) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        if target == self.config.member_id {
            let _ = reply.send(Ok(()));
            return;
        }
        if !self.node.raft.prs().conf().voters().ids().contains(target) {
            let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
            return;
        }
        self.node.transfer_leader(target);
        let election = self.config.heartbeat_interval * self.config.election_ticks as u32;
        self.move_leader = Some(PendingMoveLeader {
            target,
            reply,
            deadline: Instant::now() + election * 2,
        });
    }

    fn check_move_leader(&mut self) {
        let Some(pending) = &self.move_leader else {
            return;
        };
        let done = self.node.raft.leader_id == pending.target;
        if done || Instant::now() > pending.deadline {
            if let Some(pending) = self.move_leader.take() {
                let _ = pending.reply.send(if done {
                    Ok(())
                } else {
                    Err(EtcdError::Timeout)
                });
            }
        }
    }

    fn propose(
        &mut self,
        request: internal_request::Request,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    ) {
        if self.node.raft.state != StateRole::Leader && self.node.raft.leader_id == raft::INVALID_ID
        {
            let _ = reply.send(Err(EtcdError::NoLeader));
            return;
        }
        let id = self.next_proposal_id;
        self.next_proposal_id += 1;
        let is_put_like = request_adds_data(&request);
        let internal = InternalRequest {
            member_id: self.config.member_id,
            id,
            request: Some(request),
        };
        let data = internal.encode_to_vec();
        if data.len() > self.config.max_request_bytes {
            let _ = reply.send(Err(EtcdError::RequestTooLarge));
            return;
        }
        if is_put_like
            && self.config.quota_backend_bytes > 0
            && self.db_size_bytes + data.len() as u64 > self.config.quota_backend_bytes
        {
            self.raise_nospace();
            let _ = reply.send(Err(EtcdError::NoSpace));
            return;
        }
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                self.proposals.insert(id, reply);
            }
            Err(raft::Error::ProposalDropped) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                let _ = reply.send(Err(EtcdError::NoLeader));
            }
            Err(e) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                let _ = reply.send(Err(EtcdError::Internal(e.to_string())));
            }
        }
    }

    /// Gives every read of this turn one ReadIndex: one heartbeat round for all of them.
    fn send_read_index(&mut self) {
        if self.reads_unsent.is_empty() && self.read_only_txns_unsent.is_empty() {
            return;
        }
        let batch = ReadBatch {
            reads: std::mem::take(&mut self.reads_unsent),
            txns: std::mem::take(&mut self.read_only_txns_unsent),
        };
        let context = self.next_read_context;
        self.next_read_context += 1;
        self.node.read_index(self.read_context(context));
        self.reads_in_raft.insert(context, (batch, Instant::now()));
    }

    /// The member ID makes contexts unique across members: raft ignores a ReadIndex
    /// whose context is already pending, and followers forward theirs to the leader.
    fn read_context(&self, sequence: u64) -> Vec<u8> {
        let mut ctx = self.config.member_id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&sequence.to_be_bytes());
        ctx
    }

    /// Asks again about reads raft has not answered for a while: raft drops a ReadIndex
    /// that finds no leader (a follower that just rejoined) or that a leader change
    /// loses, and nothing else would ever answer its readers. A duplicate is harmless: a
    /// leader ignores a context already pending, and a second answer finds no batch.
    fn retry_reads(&mut self) {
        // Readers that gave up (their request timed out) need no answer any more.
        self.reads_in_raft
            .retain(|_, (batch, _)| !batch.abandoned());
        if self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let now = Instant::now();
        let stale: Vec<u64> = self
            .reads_in_raft
            .iter()
            .filter(|(_, (_, asked))| now.duration_since(*asked) >= limits::READ_INDEX_RETRY)
            .map(|(sequence, _)| *sequence)
            .collect();
        for sequence in stale {
            let ctx = self.read_context(sequence);
            self.node.read_index(ctx);
            if let Some((_, asked)) = self.reads_in_raft.get_mut(&sequence) {
                *asked = now;
            }
        }
    }

    fn handle_ack(&mut self, ack: ShardAck) {
        self.acked[ack.shard] = self.acked[ack.shard].max(ack.index);
        self.shard_sizes[ack.shard] = ack.size_bytes;
        self.db_size_bytes = self.shard_sizes.iter().sum();
        if let (Some(index), Some((request, done))) =
            (ack.checkpoint, &mut self.checkpoint_in_flight)
        {
            if index == request.index {
                done[ack.shard] = true;
            }
        }
    }

    /// Answers the reads whose index this member has applied. The asking core then waits
    /// for every shard to apply it too, before it reads.
    fn release_reads(&mut self) {
        while self
            .reads_waiting
            .front()
            .is_some_and(|(index, _)| *index <= self.applied_index)
        {
            if let Some((_, batch)) = self.reads_waiting.pop_front() {
                let point = ReadPoint {
                    index: self.applied_index,
                    revision: self.sequencer.revision(),
                };
                for reply in batch.reads {
                    let _ = reply.send(Ok(point));
                }
                for (request, reply) in batch.txns {
                    self.answer_read_only_txn(request, reply);
                }
            }
        }
    }

    fn answer_read_only_txn(
        &mut self,
        request: rivet_api::etcdserverpb::TxnRequest,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    ) {
        let outcome = self.sequencer.apply_txn(&request);
        debug_assert!(outcome.mutations.is_empty());
        let _ = reply.send(reply_of(self.applied_index, outcome));
    }

    async fn handle_ready(&mut self) -> Result<(), String> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(soft) = ready.ss() {
            let previous = self.shared.leader.swap(soft.leader_id, Ordering::AcqRel);
            if soft.leader_id != previous && soft.leader_id != raft::INVALID_ID {
                crate::metrics::LEADER_CHANGES.inc();
            }
            crate::metrics::HAS_LEADER.set(u64::from(soft.leader_id != raft::INVALID_ID));
            crate::metrics::IS_LEADER.set(u64::from(soft.raft_state == StateRole::Leader));
            let leading = soft.raft_state == StateRole::Leader;
            if leading && !self.lessor.is_primary() {
                let election = self.config.heartbeat_interval * self.config.election_ticks as u32;
                self.lessor
                    .promote(self.sequencer.leases(), Instant::now(), election);
                self.last_lease_checkpoint = Instant::now();
            } else if !leading && self.lessor.is_primary() {
                self.lessor.demote();
            }
            if soft.leader_id != raft::INVALID_ID {
                self.check_move_leader();
            }
            if soft.raft_state == StateRole::Leader {
                tracing::info!(
                    member = format_args!("{:x}", self.config.member_id),
                    "became leader"
                );
            }
        }
        // The leader's messages go out before its own fdatasync (raft allows it), so the
        // followers' fdatasyncs overlap the leader's. The transport's tasks run on this
        // thread's runtime and the WAL append below blocks it: yield once so that they put
        // the messages on the wire first (otherwise the followers would start only after
        // the leader's fdatasync, and a commit would take two in a row) — after handing
        // committed entries to the shards, which the yield must not delay.
        let messages = ready.take_messages();
        let sent = !messages.is_empty();
        self.send_messages(messages);
        if !ready.snapshot().is_empty() {
            // The state was installed when the snapshot arrived (`install_snapshot`); here
            // raft's log storage moves to it.
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            self.node
                .mut_store()
                .wl()
                .apply_snapshot(snapshot)
                .map_err(|e| format!("applying snapshot {index} to the raft log: {e}"))?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed).await;
        if sent && !ready.entries().is_empty() {
            tokio::task::yield_now().await;
        }
        self.persist(&ready)?;
        let messages = ready.take_persisted_messages();
        self.send_messages(messages);
        for state in ready.take_read_states() {
            self.read_state(state.request_ctx.as_slice(), state.index);
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .wl()
                .mut_hard_state()
                .set_commit(commit);
        }
        let messages = light.take_messages();
        self.send_messages(messages);
        let committed = light.take_committed_entries();
        self.apply_entries(committed).await;
        self.node.advance_apply();
        self.shared
            .term
            .store(self.node.raft.term, Ordering::Release);
        self.release_reads();
        crate::metrics::PROPOSALS_COMMITTED.set(self.node.raft.raft_log.committed);
        crate::metrics::PROPOSALS_APPLIED.set(self.applied_index);
        crate::metrics::PROPOSALS_PENDING.set(self.proposals.len() as u64);
        Ok(())
    }

    /// Entries and hard state of one Ready: one WAL append, one fdatasync.
    ///
    /// As etcd (`raft.MustSync`), a hard state whose term and vote did not change is not
    /// written on its own: only its commit index moved, which need not be durable (a
    /// restarted member starts from its checkpoint's applied index and learns the rest of
    /// the commit index again from the leader, or as a single member by committing its
    /// log). Writing it cost a second fdatasync per write on a leader of several members,
    /// after the followers acknowledged. So the WAL's hard state may lag in commit index
    /// only; recovery raises it to the checkpoint's applied index.
    fn persist(&mut self, ready: &raft::Ready) -> Result<(), String> {
        let entries = ready.entries();
        let hard_state = ready.hs();
        if entries.is_empty() {
            if let Some(hs) = hard_state {
                let store = self.node.mut_store();
                let previous = store.rl().hard_state().clone();
                if hs.term == previous.term && hs.vote == previous.vote {
                    store.wl().set_hardstate(hs.clone());
                    return Ok(());
                }
            }
        }
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut encoded: Vec<(u64, Vec<u8>)> = Vec::with_capacity(entries.len() + 1);
        for entry in entries {
            encoded.push((
                entry.index,
                entry.write_to_bytes().map_err(|e| e.to_string())?,
            ));
        }
        let hard_state_bytes = match hard_state {
            Some(hs) => Some(hs.write_to_bytes().map_err(|e| e.to_string())?),
            None => None,
        };
        let mut records: Vec<Record<'_>> = encoded
            .iter()
            .map(|(index, payload)| Record {
                kind: RecordKind::Entry,
                index: *index,
                payload,
            })
            .collect();
        if let Some(bytes) = &hard_state_bytes {
            records.push(Record {
                kind: RecordKind::HardState,
                index: 0,
                payload: bytes,
            });
        }
        let started = Instant::now();
        self.wal
            .append(&records)
            .map_err(|e| format!("WAL append failed: {e}"))?;
        let took = started.elapsed();
        crate::metrics::WAL_FSYNC.observe(took);
        if took > limits::WAL_FSYNC_WARN {
            tracing::warn!(?took, "slow fdatasync of the WAL");
        }
        let store = self.node.mut_store();
        store.wl().append(entries).map_err(|e| e.to_string())?;
        if let Some(hs) = hard_state {
            store.wl().set_hardstate(hs.clone());
        }
        Ok(())
    }

    fn read_state(&mut self, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 16]>::try_from(context) else {
            return;
        };
        let (member, sequence) = bytes.split_at(8);
        if member != self.config.member_id.to_be_bytes() {
            return;
        }
        let mut sequence_bytes = [0u8; 8];
        sequence_bytes.copy_from_slice(sequence);
        if let Some((batch, _)) = self
            .reads_in_raft
            .remove(&u64::from_be_bytes(sequence_bytes))
        {
            self.reads_waiting.push_back((index, batch));
        }
    }

    /// Applies committed entries in order and streams the changes to the shards.
    async fn apply_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut batches: Vec<ApplyBatch> = (0..self.config.shard_count)
            .map(|_| ApplyBatch::default())
            .collect();
        let mut compaction = None;
        let mut replies = Vec::new();
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            self.applied_index = entry.index;
            if entry.get_entry_type() == EntryType::EntryConfChange {
                self.apply_conf_change(&entry);
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // The leader's empty entry of a new term.
                continue;
            }
            let request = match InternalRequest::decode(entry.data.as_ref()) {
                Ok(request) => request,
                Err(e) => {
                    // Every replica holds the same bytes and fails the same way, so
                    // skipping the entry keeps them identical; its proposer (unknown: the
                    // bytes name it) times out.
                    tracing::error!(
                        "skipping an undecodable raft entry at index {}: {e}",
                        entry.index
                    );
                    continue;
                }
            };
            let capped = self.nospace() && adds_data(&request.request);
            let mut outcome = match &request.request {
                // etcd's capped applier: while NOSPACE is raised, nothing that adds data
                // applies (reads, deletes and compactions still do).
                _ if capped => Outcome::failed(EtcdError::NoSpace),
                Some(internal_request::Request::Alarm(alarm)) => self.apply_alarm(alarm),
                Some(internal_request::Request::Put(put)) => self.sequencer.apply_put(put),
                Some(internal_request::Request::DeleteRange(delete)) => {
                    self.sequencer.apply_delete(delete)
                }
                Some(internal_request::Request::Txn(txn)) => self.sequencer.apply_txn(txn),
                Some(internal_request::Request::LeaseGrant(grant)) => {
                    let outcome = self.sequencer.apply_lease_grant(grant, self.min_lease_ttl);
                    if let Some(Ok(Applied::LeaseGrant(granted))) = &outcome.result {
                        self.lessor.granted(granted.id, granted.ttl, Instant::now());
                    }
                    outcome
                }
                Some(internal_request::Request::LeaseRevoke(revoke)) => {
                    self.lessor.revoked(revoke.id);
                    self.sequencer.apply_lease_revoke(revoke)
                }
                Some(internal_request::Request::LeaseKeepAlive(keep_alive)) => {
                    let ttl = self.sequencer.lease(keep_alive.id).map_or(0, |l| l.ttl);
                    if ttl > 0 {
                        self.lessor.renew(keep_alive.id, ttl, Instant::now());
                    }
                    Outcome::applied(Applied::LeaseKeepAlive(ttl))
                }
                Some(internal_request::Request::LeaseCheckpoint(checkpoint)) => {
                    self.sequencer.apply_lease_checkpoint(checkpoint)
                }
                Some(internal_request::Request::MemberAttributes(attributes)) => {
                    self.members.set_attributes(attributes);
                    Outcome::default()
                }
                Some(internal_request::Request::MemberUpdate(member)) => {
                    self.members
                        .update_peer_urls(member.id, member.peer_urls.clone());
                    self.update_peers();
                    if request.member_id == self.config.member_id {
                        if let Some(reply) = self.member_waiters.remove(&request.id) {
                            let _ = reply.send(Ok(MemberChangeResult {
                                member: None,
                                members: self.members.to_api(),
                            }));
                        }
                    }
                    Outcome::default()
                }
                Some(internal_request::Request::Compaction(c)) => {
                    self.sequencer.apply_compaction(c)
                }
                None => Outcome::default(),
            };
            if let Some(revision) = outcome.compaction {
                compaction = Some(revision);
            }
            for mutation in std::mem::take(&mut outcome.mutations) {
                let shard = shard_of(mutation.key(), self.config.shard_count);
                batches[shard].mutations.push(mutation);
            }
            if request.member_id == self.config.member_id {
                if let Some(reply) = self.proposals.remove(&request.id) {
                    replies.push((reply, reply_of(entry.index, outcome)));
                }
            }
        }
        let revision = self.sequencer.revision();
        for (shard, mut batch) in batches.into_iter().enumerate() {
            batch.index = self.applied_index;
            batch.revision = revision;
            batch.compaction = compaction;
            if self.apply_senders[shard]
                .send(ApplyMessage::Batch(batch))
                .await
                .is_err()
            {
                tracing::warn!(shard, "shard stopped; its apply stream is closed");
            }
        }
        // After the batches are queued: the asking core answers once the shards applied.
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        let took = started.elapsed();
        if took > limits::APPLY_WARN {
            tracing::warn!(?took, "apply took too long (etcd warns above 100ms)");
        }
    }

    /// Every `snapshot_count` applied entries, asks the shards for a checkpoint; when all
    /// have made it durable, records it in the WAL and releases the log before it.
    async fn maybe_checkpoint(&mut self) {
        if let Some((request, done)) = &self.checkpoint_in_flight {
            if done.iter().all(|d| *d) {
                let request = *request;
                self.checkpoint_in_flight = None;
                if let Err(e) = self.record_checkpoint(request) {
                    tracing::error!("could not record checkpoint {}: {e}", request.index);
                }
            }
            return;
        }
        if self.applied_index >= self.checkpoint_index + self.config.snapshot_count {
            self.start_checkpoint().await;
        }
    }

    async fn start_checkpoint(&mut self) {
        let term = self
            .node
            .raft
            .raft_log
            .term(self.applied_index)
            .unwrap_or(self.node.raft.term);
        let request = CheckpointRequest {
            index: self.applied_index,
            term,
            revision: self.sequencer.revision(),
            compact_revision: self.sequencer.compact_revision(),
        };
        for sender in &self.apply_senders {
            let _ = sender.send(ApplyMessage::Checkpoint(request)).await;
        }
        self.checkpoint_in_flight = Some((request, vec![false; self.config.shard_count]));
    }

    fn record_checkpoint(&mut self, request: CheckpointRequest) -> Result<(), String> {
        let conf_state = self.node.raft.prs().conf().to_conf_state();
        let marker = CheckpointMarker {
            applied_index: request.index,
            term: request.term,
            revision: request.revision,
            compact_revision: request.compact_revision,
            conf_state: conf_state
                .write_to_bytes()
                .map_err(|e| e.to_string())?
                .into(),
            membership: Some(self.members.to_proto()),
            leases: self.lease_records(),
            alarms: self.alarms.clone(),
        };
        let payload = marker.encode_to_vec();
        self.wal
            .append(&[Record {
                kind: RecordKind::Snapshot,
                index: request.index,
                payload: &payload,
            }])
            .map_err(|e| e.to_string())?;
        self.checkpoint_index = request.index;
        // Keep a tail of entries for followers that lag a little (etcd keeps 5000).
        let keep_from = request
            .index
            .saturating_sub(limits::RAFT_LOG_KEPT_AFTER_CHECKPOINT);
        if keep_from > raft::Storage::first_index(self.node.store()).unwrap_or(1) {
            let _ = self.node.mut_store().wl().compact(keep_from);
        }
        self.wal
            .release_before(keep_from)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            index = request.index,
            revision = request.revision,
            "checkpoint recorded"
        );
        Ok(())
    }

    /// The last turn: answer everyone still waiting, then a final checkpoint so that
    /// the next start has nothing to replay.
    async fn shutdown(mut self, acks: async_channel::Receiver<ShardAck>) {
        for (_, reply) in self.proposals.drain() {
            let _ = reply.send(Err(EtcdError::Stopped));
        }
        if self.checkpoint_in_flight.is_none() && self.applied_index > self.checkpoint_index {
            self.start_checkpoint().await;
        }
        while self.checkpoint_in_flight.is_some() {
            let Ok(ack) = acks.recv().await else { break };
            self.handle_ack(ack);
            self.maybe_checkpoint().await;
        }
        self.apply_senders.clear();
        if let Some(done) = self.shutdown_done.take() {
            let _ = done.send(());
        }
    }
}

fn reply_of(index: u64, outcome: Outcome) -> Result<Reply, EtcdError> {
    match outcome.result {
        Some(Ok(applied)) => Ok(Reply {
            index,
            applied,
            historical_ranges: outcome.historical_ranges,
        }),
        Some(Err(e)) => Err(e),
        None => Err(EtcdError::Internal("empty request".into())),
    }
}

/// Whether a request can grow the store (etcd's quota applies to puts and txns).
fn request_adds_data(request: &internal_request::Request) -> bool {
    matches!(
        request,
        internal_request::Request::Put(_)
            | internal_request::Request::Txn(_)
            | internal_request::Request::LeaseGrant(_)
    )
}

/// etcd's quota cost: puts, txns with a put anywhere, lease grants.
fn adds_data(request: &Option<internal_request::Request>) -> bool {
    match request {
        Some(internal_request::Request::Put(_))
        | Some(internal_request::Request::LeaseGrant(_)) => true,
        Some(internal_request::Request::Txn(txn)) => txn_has_put(txn),
        _ => false,
    }
}

/// etcd 3.4's `costTxn` counts the puts directly in either branch, not those of nested
/// txns: a txn whose puts are all nested costs nothing and applies under NOSPACE.
fn txn_has_put(txn: &rivet_api::etcdserverpb::TxnRequest) -> bool {
    use rivet_api::etcdserverpb::request_op::Request;
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .any(|op| matches!(&op.request, Some(Request::RequestPut(_))))
}
