//! The raft core: one raft group (tikv raft-rs `RawNode`) driven on its own pinned thread
//! by the Ready protocol, applying committed entries through the applier chain
//! (`crate::apply`) and streaming their changes to the shards.
//!
//! One turn of the loop ([`RaftCore::run`]):
//! 1. wait for a command, a shard acknowledgement, a peer's message or the tick;
//! 2. drain every command that arrived meanwhile: proposals, read requests (all read
//!    requests of this turn share one ReadIndex), status;
//! 3. handle the Ready ([`ready`]): the new entries and hard state go to the log storage
//!    as one write and one fdatasync (group commit: every proposal that arrived during the
//!    previous fdatasync is in this one); committed entries are applied and streamed to
//!    the shards;
//! 4. answers are released once every shard has acknowledged the index they depend on,
//!    so a client that got an answer reads its own write on any shard.
//!
//! Nothing is acknowledged before its fdatasync completed: entries are applied only when
//! raft reports them committed, which for this member requires them persisted.
//!
//! The pieces, each in its own file:
//! - [`io`]: the traits the core reaches the world through (peers, log storage, clock,
//!   the leader's client port) — the simulation test plugs in its own;
//! - [`config`]: what the core is started with;
//! - [`boot`]: building the raft node from the recovered log and the shards' state;
//! - [`log`]: the WAL as log storage, and recovery from its records;
//! - [`force_new`]: `--force-new-cluster`, rewriting the recovered log into a one-member
//!   cluster before the node starts;
//! - [`ready`]: the Ready handling, proposals, and committed entries through the applier;
//! - [`read_index`]: ReadIndex batching and retry;
//! - [`checkpoint`]: checkpoints of the shards and the log compaction behind them;
//! - [`snapshot`]: raft snapshots sent to and received from other members;
//! - [`members`]: membership changes, the peer table, leadership transfer;
//! - [`faults`]: the test-only network fault switch (drop, delay, duplicate, deaf);
//! - [`leases`]: the leader's lease clock: keep-alives, TTLs, expiry.

pub mod boot;
pub mod checkpoint;
pub mod compactor;
pub mod config;
pub mod etcd_snapshot;
pub mod faults;
pub mod force_new;
pub mod io;
pub mod leases;
pub mod log;
pub mod members;
pub mod read_index;
pub mod ready;
pub mod snapshot;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use protobuf::Message as _;
use raft::prelude::Message as RaftMessage;
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};

use crate::apply::Applier;
use crate::error::EtcdError;
use crate::limits;
use crate::messages::{ApplyMessage, RaftCommand, RaftStatus, ShardAck, ShardRequest};
use crate::sequencer::Applied;
use crate::shared::Shared;

pub use config::{RaftCoreConfig, RaftCoreTuning, StartError};
pub use io::PeerLink;
pub use io::{Clock, LeaderForward, LogError, LogRecord, LogStorage, MonotonicClock, PeerEvent};
pub use log::{open_wal, recover, Recovered, RecoveredState, WalLog};

/// The channels and links that connect the raft core to the shards and to the world.
pub struct RaftCoreLinks {
    pub apply_senders: Vec<async_channel::Sender<ApplyMessage>>,
    pub restore: async_channel::Receiver<crate::messages::RestoreChunk>,
    pub peers: Box<dyn PeerLink>,
    pub shard_requests: Vec<async_channel::Sender<ShardRequest>>,
    pub forward: Box<dyn LeaderForward>,
    pub clock: Box<dyn Clock>,
}

/// What an observer of the apply stream sees of each applied entry
/// ([`RaftCore::observe_applies`]).
pub struct AppliedEntry<'a> {
    pub index: u64,
    pub term: u64,
    /// The entry's bytes (an `InternalRequest`, a `ConfChange`, or empty).
    pub data: &'a [u8],
    /// The response, for an entry that carried a request.
    pub result: Option<&'a Result<Applied, EtcdError>>,
}

/// See [`RaftCore::observe_applies`].
pub type ApplyObserver = Box<dyn FnMut(AppliedEntry<'_>)>;

pub struct RaftCore {
    config: RaftCoreConfig,
    node: RawNode<MemStorage>,
    log: Box<dyn LogStorage>,
    peers: Box<dyn PeerLink>,
    clock: Box<dyn Clock>,
    forward: Box<dyn LeaderForward>,
    shared: Arc<Shared>,
    applier: Applier,
    applied_index: u64,
    shards: ready::Shards,
    waiters: ready::Waiters,
    reads: read_index::ReadIndexQueue,
    checkpoints: checkpoint::Checkpoints,
    exports: snapshot::Exports,
    /// When the leader last checkpointed its leases' remaining TTLs into the log.
    last_lease_checkpoint: Instant,
    /// Whether this member already proposed the NOSPACE alarm it is about to see.
    nospace_proposed: bool,
    /// Whether this member's name and client URLs are in the member table yet.
    attributes_proposed: bool,
    move_leader: Option<members::PendingMoveLeader>,
    stop: Stop,
    /// `--initial-election-tick-advance`: when this start began, until the election ticks
    /// were advanced (see [`RaftCore::advance_initial_ticks`]).
    initial_ticks_from: Option<Instant>,
    observer: Option<ApplyObserver>,
    /// The test-only network fault switch.
    faults: faults::Faults,
    /// Auto-compaction, when `--auto-compaction-retention` asks for it.
    compactor: Option<compactor::Compactor>,
    /// `Maintenance.Snapshot` streams waiting for their point.
    snapshot_streams: etcd_snapshot::SnapshotStreams,
    /// Segments the shards deleted from their page files this turn, (shard, segment key):
    /// the sequencer lets go of its mappings of them at the end of the turn.
    released_segments: Vec<(usize, u32)>,
}

#[derive(Default)]
struct Stop {
    stopping: bool,
    /// Why the core stopped by itself (not asked to by a stop signal), for the log and
    /// the member's exit.
    reason: Option<String>,
    /// Answered when a graceful stop is done.
    done: Option<oneshot::Sender<()>>,
    /// A leader stopping gracefully hands leadership over first (ETCD_LESSONS 8); it
    /// stops when another member leads, or at this deadline.
    after_transfer: Option<Instant>,
}

impl RaftCore {
    /// Runs until `commands` closes (every shard core stopped), then checkpoints so the
    /// next start replays nothing. Returns why the core stopped when it stopped by itself
    /// (a failed log write, a damaged entry, this member removed), `None` after a
    /// requested stop.
    pub async fn run(
        mut self,
        commands: async_channel::Receiver<RaftCommand>,
        acks: async_channel::Receiver<ShardAck>,
        mut peer_events: tokio::sync::mpsc::Receiver<PeerEvent>,
    ) -> Option<String> {
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = self.clock.now();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Ok(command) => self.handle_command(command),
                    Err(_) => self.stop.stopping = true,
                },
                ack = acks.recv() => match ack {
                    Ok(ack) => self.handle_ack(ack),
                    Err(_) => break,
                },
                _ = ticker.tick() => {
                    let now = self.clock.now();
                    self.warn_late_heartbeat(now - last_tick);
                    last_tick = now;
                    self.tick();
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
            if !self.end_turn().await {
                break;
            }
        }
        let reason = self.stop.reason.take();
        self.shutdown(acks).await;
        reason
    }

    /// Stops the core by itself at the end of this turn, for `reason`.
    fn stop_for(&mut self, reason: String) {
        tracing::error!("raft core stopping: {reason}");
        self.stop.stopping = true;
        self.stop.reason.get_or_insert(reason);
    }

    /// Hands every applied entry to `observer` from now on (the simulation test checks
    /// that all members apply the same entries with the same results).
    pub fn observe_applies(&mut self, observer: ApplyObserver) {
        self.observer = Some(observer);
    }

    /// The sequencer copies the values it still reads from the segments the shards
    /// deleted this turn and lets go of their mappings, so their disk space is freed.
    fn release_segments(&mut self) {
        if self.released_segments.is_empty() {
            return;
        }
        let released = std::mem::take(&mut self.released_segments);
        let started = std::time::Instant::now();
        let copied = self.applier.release_segments(&released);
        tracing::debug!(
            segments = released.len(),
            copied_values = copied,
            elapsed = ?started.elapsed(),
            "sequencer let go of deleted page segments"
        );
    }

    /// One heartbeat interval passed.
    pub fn tick(&mut self) {
        self.release_delayed();
        if let Some(started) = self.initial_ticks_from {
            if self.advance_initial_ticks(started) {
                self.initial_ticks_from = None;
            }
        }
        self.node.tick();
        let now = self.clock.now();
        let has_leader = self.node.raft.leader_id != raft::INVALID_ID;
        for context in self.reads.retry(now, has_leader) {
            self.node.read_index(context);
        }
        self.check_move_leader();
        self.expire_leases();
        self.auto_compact();
        self.waiters.drop_abandoned();
    }

    /// The end of a turn: the reads of the turn ask raft for their ReadIndex, the Ready is
    /// handled, checkpoints and snapshots move on. False when the core must stop.
    pub async fn end_turn(&mut self) -> bool {
        if let Some(context) = self.reads.send(self.clock.now()) {
            self.node.read_index(context);
        }
        self.poll_exports();
        self.release_segments();
        if let Err(e) = self.handle_ready().await {
            self.stop_for(e);
            return false;
        }
        self.maybe_checkpoint().await;
        self.start_snapshot_streams().await;
        self.maybe_publish_attributes();
        if let Some(deadline) = self.stop.after_transfer {
            if self.node.raft.state != StateRole::Leader || self.clock.now() >= deadline {
                self.stop.stopping = true;
            }
        }
        !self.stop.stopping
    }

    /// etcd's `adjustTicks` for a multi-member cluster (`--initial-election-tick-advance`):
    /// within 5 s of the start (rafthttp's ConnReadTimeout), once more than one peer is
    /// reachable, advance the election ticks by `election ticks - 2` so that a restarted
    /// member does not wait a whole election timeout before it can campaign. A single
    /// voter campaigns at once at start instead. Returns whether it is done.
    fn advance_initial_ticks(&mut self, started: Instant) -> bool {
        if self.clock.now().saturating_duration_since(started) > Duration::from_secs(5) {
            return true;
        }
        let voters: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        if voters.len() <= 1 {
            return true;
        }
        let active = voters
            .iter()
            .filter(|id| **id != self.config.member_id)
            .filter(|id| self.peers.connected_since(**id).is_some())
            .count();
        if active <= 1 {
            return false;
        }
        let ticks = self.config.election_ticks.saturating_sub(2);
        tracing::info!(
            local_member_id = format_args!("{:x}", self.config.member_id),
            forward_ticks = ticks,
            forward_duration = ?(self.config.heartbeat_interval * ticks as u32),
            election_ticks = self.config.election_ticks,
            active_remote_members = active,
            "initialized peer connections; fast-forwarding election ticks"
        );
        for _ in 0..ticks {
            self.node.tick();
        }
        true
    }

    /// etcd's warning when a leader's heartbeats go out later than twice the heartbeat
    /// interval: followers may soon start an election.
    fn warn_late_heartbeat(&self, since_last_tick: Duration) {
        let expected = self.config.heartbeat_interval * 2;
        if self.node.raft.state == StateRole::Leader && since_last_tick > expected {
            tracing::warn!(
                to = "every follower",
                heartbeat_interval = ?self.config.heartbeat_interval,
                expected_duration = ?expected,
                exceeded_duration = ?(since_last_tick - expected),
                "leader failed to send out heartbeat on time; took too long, leader is \
                 overloaded likely from slow disk"
            );
            crate::metrics::HEARTBEAT_SEND_FAILURES.inc();
        }
    }

    pub fn handle_command(&mut self, command: RaftCommand) {
        match command {
            RaftCommand::Propose { request, reply } => self.propose(request, None, reply),
            RaftCommand::ProposeAs {
                request,
                caller,
                reply,
            } => self.propose(request, Some(caller), reply),
            RaftCommand::ReadIndex { reply } => self.reads.push_read(reply),
            RaftCommand::ReadOnlyTxn {
                request,
                linearizable,
                reply,
            } => {
                if linearizable {
                    self.reads.push_txn(request, reply);
                } else {
                    self.answer_read_only_txn(request, reply);
                }
            }
            RaftCommand::LeaseKeepAlive { id, reply } => {
                let _ = reply.send(self.keep_alive(id));
            }
            RaftCommand::LeaseTimeToLive { id, keys, reply } => {
                self.lease_time_to_live(id, keys, reply)
            }
            RaftCommand::LeaseLeases { keys, reply } => {
                let leases = self.applier.sequencer().leases().iter();
                let leases = leases
                    .map(|(id, lease)| {
                        let attached = if keys {
                            lease.keys.iter().cloned().collect()
                        } else {
                            Vec::new()
                        };
                        (*id, attached)
                    })
                    .collect();
                let _ = reply.send(leases);
            }
            RaftCommand::AlarmList { reply } => {
                let _ = reply.send(self.applier.alarms().list().to_vec());
            }
            RaftCommand::IsolateForTests { isolate } => self.isolate_for_tests(isolate),
            RaftCommand::FaultsForTests { faults } => self.set_faults_for_tests(faults),
            RaftCommand::PeerHashKvs { revision, reply } => {
                let peers = self
                    .applier
                    .members()
                    .members()
                    .filter(|m| m.id != self.config.member_id)
                    .map(|m| (m.id, m.peer_urls.clone()))
                    .collect();
                self.peers.hash_kvs(peers, revision, reply);
            }
            RaftCommand::MemberList { reply } => {
                let _ = reply.send(self.applier.members().to_api());
            }
            RaftCommand::MemberChange { change, reply } => {
                self.propose_member_change(change, reply)
            }
            RaftCommand::MoveLeader { target, reply } => self.start_move_leader(target, reply),
            RaftCommand::Shutdown { done } => {
                self.stop.done = Some(done);
                self.begin_stop();
            }
            RaftCommand::Status { reply } => {
                let _ = reply.send(self.status());
            }
            RaftCommand::Defragment { reply } => self.defragment(reply),
            RaftCommand::SegmentsDeleted { shard, segments } => self
                .released_segments
                .extend(segments.into_iter().map(|key| (shard, key))),
            RaftCommand::SnapshotBegin { reply } => self.begin_snapshot_stream(reply),
        }
    }

    pub fn status(&self) -> RaftStatus {
        RaftStatus {
            leader: self.node.raft.leader_id,
            term: self.node.raft.term,
            last_index: self.node.raft.raft_log.last_index(),
            applied_index: self.applied_index,
            keys: self.applier.sequencer().key_count() as u64,
            pending_proposals: self.waiters.len() as u64,
        }
    }

    pub async fn handle_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Snapshot { message, data } => self.install_snapshot(message, data).await,
            PeerEvent::RemovedFromCluster => {
                tracing::warn!("the cluster removed this member; stopping");
                self.stop.stopping = true;
                self.stop
                    .reason
                    .get_or_insert_with(|| "this member was removed from the cluster".into());
            }
            PeerEvent::SnapshotStatus { to, delivered } => self.snapshot_sent(to, delivered),
            PeerEvent::Message(bytes) => {
                let mut message = RaftMessage::default();
                if let Err(e) = message.merge_from_bytes(&bytes) {
                    tracing::warn!("dropping an undecodable raft message from a peer: {e}");
                    return;
                }
                if !self.faults.hears(message.from) {
                    return;
                }
                if let Some(problem) = validate::message_problem(&message) {
                    tracing::warn!(
                        from = format_args!("{:x}", message.from),
                        "dropping a raft message from a peer: {problem}"
                    );
                    return;
                }
                if let Err(e) = self.node.step(message) {
                    tracing::debug!("raft rejected a peer message: {e}");
                }
            }
        }
    }

    pub fn handle_ack(&mut self, ack: ShardAck) {
        self.shards.acknowledged(&ack);
        if let Some(index) = ack.checkpoint {
            self.checkpoints.acknowledged(ack.shard, index);
        }
    }

    /// The last turn: answer everyone still waiting, then a final checkpoint so that
    /// the next start has nothing to replay.
    async fn shutdown(mut self, acks: async_channel::Receiver<ShardAck>) {
        self.waiters.fail_all(EtcdError::Stopped);
        if !self.checkpoints.in_flight() && self.applied_index > self.checkpoints.last_index() {
            self.start_checkpoint().await;
        }
        while self.checkpoints.in_flight() {
            let Ok(ack) = acks.recv().await else { break };
            self.handle_ack(ack);
            self.maybe_checkpoint().await;
        }
        self.shards.close();
        if let Some(done) = self.stop.done.take() {
            let _ = done.send(());
        }
    }

    /// Test-only fault switch: cut this member off from every peer, or restore it.
    /// Sets the test-only fault switch; `isolate_for_tests(false)` (heal) clears it too.
    fn set_faults_for_tests(&mut self, faults: faults::TestFaults) {
        tracing::warn!(?faults, "test fault switch: peer traffic faults set");
        self.faults.set = faults;
        if self.faults.set.delay.is_zero() {
            let held = self.faults.due(Instant::now() + Duration::from_secs(3600));
            self.send_held(held);
        }
    }

    /// Sends held messages whose delay is over (each turn of the loop).
    fn release_delayed(&mut self) {
        if self.faults.delayed.is_empty() {
            return;
        }
        let due = self.faults.due(self.clock.now());
        self.send_held(due);
    }

    fn send_held(&mut self, held: Vec<(u64, RaftMessage)>) {
        for (to, message) in held {
            if let Ok(bytes) = message.write_to_bytes() {
                if !self.peers.send(to, bytes.into()) {
                    self.node.report_unreachable(to);
                }
            }
        }
    }

    fn isolate_for_tests(&mut self, isolate: bool) {
        if !isolate {
            self.set_faults_for_tests(faults::TestFaults::default());
        }
        let peers: Vec<u64> = if isolate {
            self.applier
                .members()
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
}
