//! What one shard core does, independent of the executor it runs on: applies its part of
//! the apply stream, serves its part of scattered reads to the other cores, and answers
//! client requests by reading shards (its own directly, others by message) or by handing
//! writes to the raft core.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures::channel::oneshot;
use rivet_api::etcdserverpb::{
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use rivet_api::mvccpb::Event;
use rivet_api::rivetpb::internal_request;

use crate::check;
use crate::error::EtcdError;
use crate::messages::{
    ApplyMessage, MemberChange, MemberChangeResult, RaftCommand, RaftStatus, RangePart,
    RangePartResult, ReadPoint, Reply, RestoreChunk, ShardAck, ShardRequest,
};
use crate::range::{finish_range, merge_sorted, resolve_revision, RangeEnd};
use crate::sequencer::{Applied, HistoricalRange};
use crate::shard::{shard_of, CompactedAt, Shard};
use crate::shared::Shared;

pub struct ShardCore {
    pub id: usize,
    pub shard_count: usize,
    pub shard: RefCell<Shard>,
    pub raft: async_channel::Sender<RaftCommand>,
    /// The other shard cores' request channels, by shard id (this core's own unused).
    pub peers: Vec<async_channel::Sender<ShardRequest>>,
    pub shared: Arc<Shared>,
    pub max_txn_ops: usize,
    /// Requests on this core waiting for every shard to apply an index.
    pub waiters: RefCell<Vec<(u64, Waker)>>,
    lease_ids: std::cell::Cell<u64>,
}

impl ShardCore {
    pub fn new(
        id: usize,
        shard: Shard,
        raft: async_channel::Sender<RaftCommand>,
        peers: Vec<async_channel::Sender<ShardRequest>>,
        shared: Arc<Shared>,
        max_txn_ops: usize,
    ) -> ShardCore {
        let progress = &shared.shards[id];
        progress
            .applied_index
            .store(shard.applied_index(), Ordering::SeqCst);
        progress
            .applied_revision
            .store(shard.revision(), Ordering::SeqCst);
        ShardCore {
            id,
            shard_count: shared.shards.len(),
            shard: RefCell::new(shard),
            raft,
            peers,
            shared,
            max_txn_ops,
            waiters: RefCell::new(Vec::new()),
            lease_ids: std::cell::Cell::new(0),
        }
    }

    /// Returns once every shard has applied `index`: then any shard shows the effects of
    /// everything up to it. Fast path: one atomic load per shard.
    pub async fn wait_applied(&self, index: u64) {
        poll_fn(|cx| {
            if self.shared.applied_index() >= index {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push((index, cx.waker().clone()));
            self.publish_waiting_for();
            // Checked again after publishing: a shard that applied in between either saw
            // our `waiting_for` or is visible here (both sides use SeqCst).
            if self.shared.applied_index() >= index {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn publish_waiting_for(&self) {
        let smallest = self
            .waiters
            .borrow()
            .iter()
            .map(|(index, _)| *index)
            .min()
            .unwrap_or(u64::MAX);
        self.shared.shards[self.id]
            .waiting_for
            .store(smallest, Ordering::SeqCst);
    }

    /// Wakes this core's requests whose index every shard has applied.
    fn wake_satisfied(&self) {
        let applied = self.shared.applied_index();
        let ready: Vec<Waker> = {
            let mut waiters = self.waiters.borrow_mut();
            let mut ready = Vec::new();
            waiters.retain(|(index, waker)| {
                if *index <= applied {
                    ready.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            ready
        };
        self.publish_waiting_for();
        for waker in ready {
            waker.wake();
        }
    }

    /// Publishes this shard's progress and wakes every core waiting for it.
    fn publish_applied(&self, index: u64, revision: i64) {
        let progress = &self.shared.shards[self.id];
        progress.applied_revision.store(revision, Ordering::SeqCst);
        progress.applied_index.store(index, Ordering::SeqCst);
        for (id, other) in self.shared.shards.iter().enumerate() {
            if id == self.id {
                self.wake_satisfied();
            } else if other.waiting_for.load(Ordering::SeqCst) <= index {
                other.notified.store(true, Ordering::SeqCst);
                other.waker.wake();
            }
        }
    }

    /// Wakes this core's waiting requests when another shard's progress satisfies them.
    pub async fn run_watermark(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                let progress = &self.shared.shards[self.id];
                progress.waker.register(cx.waker());
                if progress.notified.swap(false, Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            self.wake_satisfied();
        }
    }

    /// Streams this shard's live keys to the raft core to rebuild the sequencer. A
    /// record that cannot be read fails the start (the caller stops the member).
    pub async fn send_restore(
        &self,
        restore: &async_channel::Sender<RestoreChunk>,
    ) -> Result<(), crate::shard::ShardOpenError> {
        let mut chunk = Vec::with_capacity(crate::limits::RESTORE_CHUNK_KEYS);
        let mut chunks = Vec::new();
        self.shard.borrow().heads(|key, head| {
            chunk.push((key, head));
            if chunk.len() == crate::limits::RESTORE_CHUNK_KEYS {
                chunks.push(std::mem::take(&mut chunk));
            }
        })?;
        chunks.push(chunk);
        for heads in chunks {
            let _ = restore
                .send(RestoreChunk {
                    shard: self.id,
                    heads: Some(heads),
                })
                .await;
        }
        let _ = restore
            .send(RestoreChunk {
                shard: self.id,
                heads: None,
            })
            .await;
        Ok(())
    }

    /// The apply loop: runs until the raft core closes the stream.
    pub async fn run_apply(
        self: Rc<Self>,
        stream: async_channel::Receiver<ApplyMessage>,
        acks: async_channel::Sender<ShardAck>,
    ) {
        while let Ok(message) = stream.recv().await {
            let ack = {
                let mut shard = self.shard.borrow_mut();
                match message {
                    ApplyMessage::Batch(batch) => {
                        shard.apply(&batch);
                        drop(shard);
                        self.publish_applied(batch.index, batch.revision);
                        let shard = self.shard.borrow();
                        ShardAck {
                            shard: self.id,
                            index: batch.index,
                            checkpoint: None,
                            size_bytes: shard.size_bytes(),
                        }
                    }
                    ApplyMessage::Install {
                        snap_dir,
                        index,
                        revision,
                    } => {
                        if let Err(e) = shard.install(&snap_dir, index) {
                            // The WAL already names this snapshot: a restart finishes the
                            // install, or refuses to start with the reason.
                            crate::crash::stop(format_args!(
                                "cannot install the snapshot at index {index}: {e}"
                            ));
                        }
                        drop(shard);
                        self.publish_applied(index, revision);
                        let shard = self.shard.borrow();
                        ShardAck {
                            shard: self.id,
                            index,
                            checkpoint: Some(index),
                            size_bytes: shard.size_bytes(),
                        }
                    }
                    ApplyMessage::Checkpoint(request) => {
                        shard.checkpoint(&request);
                        ShardAck {
                            shard: self.id,
                            index: shard.applied_index(),
                            checkpoint: Some(request.index),
                            size_bytes: shard.size_bytes(),
                        }
                    }
                }
            };
            if acks.send(ack).await.is_err() {
                break;
            }
        }
    }

    /// Serves the other cores' parts of scattered reads.
    pub async fn serve_peers(self: Rc<Self>, requests: async_channel::Receiver<ShardRequest>) {
        while let Ok(request) = requests.recv().await {
            match request {
                ShardRequest::Range { part, reply } => {
                    let _ = reply.send(self.shard.borrow().range(&part));
                }
                ShardRequest::SizeBytes { reply } => {
                    let _ = reply.send(self.shard.borrow().size_bytes());
                }
                ShardRequest::HashKv { revision, reply } => {
                    let _ = reply.send(self.shard.borrow().hash_kv(revision));
                }
                ShardRequest::WatchRecent {
                    from,
                    to,
                    prev_kv,
                    reply,
                } => {
                    let _ = reply.send(self.shard.borrow().recent_changes(from, to, prev_kv));
                }
                ShardRequest::WatchHistory {
                    key,
                    end,
                    from,
                    to,
                    prev_kv,
                    reply,
                } => {
                    let _ = reply.send(self.shard.borrow().history(&key, &end, from, to, prev_kv));
                }
                ShardRequest::Export {
                    index,
                    revision,
                    reply,
                } => {
                    // Rare (a raft snapshot); the shards reach `index` within moments.
                    self.wait_applied(index).await;
                    match self.shard.borrow().export(revision) {
                        Ok(records) => {
                            let _ = reply.send(records);
                        }
                        Err(e) => {
                            // Dropping `reply` fails this snapshot; raft asks again later.
                            tracing::error!("cannot export a snapshot: {e}");
                        }
                    }
                }
            }
        }
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            revision,
            raft_term: self.shared.term.load(Ordering::Acquire),
        }
    }

    async fn ask_raft<T>(
        &self,
        command: RaftCommand,
        reply: oneshot::Receiver<T>,
    ) -> Result<T, EtcdError> {
        self.raft
            .send(command)
            .await
            .map_err(|_| EtcdError::Stopped)?;
        reply.await.map_err(|_| EtcdError::Stopped)
    }

    /// Proposes a write and returns once every shard has applied it, so the answer is
    /// visible to any read on any core that follows it (read-your-writes).
    async fn propose(&self, request: internal_request::Request) -> Result<Reply, EtcdError> {
        let (reply, answer) = oneshot::channel();
        let reply = self
            .ask_raft(RaftCommand::Propose { request, reply }, answer)
            .await??;
        self.wait_applied(reply.index).await;
        Ok(reply)
    }

    /// A revision that reflects every write acknowledged before this call (ReadIndex),
    /// applied by every shard when this returns.
    pub async fn read_index(&self) -> Result<ReadPoint, EtcdError> {
        let (reply, answer) = oneshot::channel();
        let point = self
            .ask_raft(RaftCommand::ReadIndex { reply }, answer)
            .await??;
        self.wait_applied(point.index).await;
        Ok(point)
    }

    pub async fn raft_status(&self) -> Result<RaftStatus, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.ask_raft(RaftCommand::Status { reply }, answer).await
    }

    /// LeaseGrant; a lease ID of 0 is chosen here, before proposing, so that every
    /// replica applies the same one.
    pub async fn lease_grant(
        &self,
        mut request: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        if request.id == 0 {
            request.id = self.new_lease_id();
        }
        match self
            .propose(internal_request::Request::LeaseGrant(request))
            .await?
            .applied
        {
            Applied::LeaseGrant(mut response) => {
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        match self
            .propose(internal_request::Request::LeaseRevoke(request))
            .await?
            .applied
        {
            Applied::LeaseRevoke(mut response) => {
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, EtcdError> {
        let (reply, answer) = oneshot::channel();
        let ttl = match self
            .ask_raft(RaftCommand::LeaseKeepAlive { id, reply }, answer)
            .await?
        {
            Ok(ttl) => ttl,
            // Only the leader holds lease clocks: a follower sends the keep-alive through
            // the log, and the leader renews when it applies it.
            Err(EtcdError::NotLeader) => {
                let forwarded = rivet_api::etcdserverpb::LeaseKeepAliveRequest { id };
                match self
                    .propose(internal_request::Request::LeaseKeepAlive(forwarded))
                    .await?
                    .applied
                {
                    Applied::LeaseKeepAlive(ttl) => ttl,
                    other => return Err(unexpected(other)),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(LeaseKeepAliveResponse {
            header: Some(self.current_header()),
            id,
            ttl,
        })
    }

    pub async fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        let (reply, answer) = oneshot::channel();
        let ttl = self
            .ask_raft(
                RaftCommand::LeaseTimeToLive {
                    id: request.id,
                    keys: request.keys,
                    reply,
                },
                answer,
            )
            .await?;
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.current_header()),
            id: ttl.id,
            ttl: ttl.ttl,
            granted_ttl: ttl.granted_ttl,
            keys: ttl.keys,
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, EtcdError> {
        let (reply, answer) = oneshot::channel();
        let ids = self
            .ask_raft(RaftCommand::LeaseLeases { reply }, answer)
            .await?;
        Ok(LeaseLeasesResponse {
            header: Some(self.current_header()),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        })
    }

    /// A positive 63-bit lease ID, unique with overwhelming probability: member, core,
    /// time and a per-core counter hashed together.
    fn new_lease_id(&self) -> i64 {
        use std::hash::{Hash, Hasher};
        let count = self.lease_ids.get();
        self.lease_ids.set(count + 1);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            self.shared.member_id,
            self.id,
            count,
            std::time::SystemTime::now(),
        )
            .hash(&mut hasher);
        let id = (hasher.finish() & i64::MAX as u64) as i64;
        id.max(1)
    }

    /// Maintenance.Alarm: GET answers the active alarms; ACTIVATE and DEACTIVATE go
    /// through raft.
    pub async fn alarm(
        &self,
        request: rivet_api::etcdserverpb::AlarmRequest,
    ) -> Result<rivet_api::etcdserverpb::AlarmResponse, EtcdError> {
        use rivet_api::etcdserverpb::{alarm_request::AlarmAction, AlarmResponse};
        if request.action == AlarmAction::Get as i32 {
            let alarms = self.alarms().await?;
            return Ok(AlarmResponse {
                header: Some(self.current_header()),
                alarms,
            });
        }
        match self
            .propose(internal_request::Request::Alarm(request))
            .await?
            .applied
        {
            Applied::Alarm(mut response) => {
                response.header = Some(self.current_header());
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn alarms(&self) -> Result<Vec<rivet_api::etcdserverpb::AlarmMember>, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.ask_raft(RaftCommand::AlarmList { reply }, answer)
            .await
    }

    /// Maintenance.HashKV: the hash of every version up to `revision` (0: the newest),
    /// read on a linearizable view, and the compaction revision.
    pub async fn hash_kv(
        &self,
        revision: i64,
    ) -> Result<rivet_api::etcdserverpb::HashKvResponse, EtcdError> {
        let point = self.read_index().await?;
        let compact = self.shard.borrow().compact_revision();
        // etcd's HashByRev refuses the compaction revision itself too (`rev <=
        // compactRev`), unlike a range at it.
        if revision > 0 && revision <= compact {
            return Err(EtcdError::Compacted);
        }
        let at = resolve_revision(revision, point.revision, compact)?;
        let mut hash = self.shard.borrow().hash_kv(at);
        for (id, peer) in self.peers.iter().enumerate() {
            if id == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            peer.send(ShardRequest::HashKv {
                revision: at,
                reply,
            })
            .await
            .map_err(|_| EtcdError::Stopped)?;
            hash = hash.wrapping_add(answer.await.map_err(|_| EtcdError::Stopped)?);
        }
        Ok(rivet_api::etcdserverpb::HashKvResponse {
            header: Some(self.header(point.revision)),
            hash,
            compact_revision: compact,
        })
    }

    pub async fn isolate_for_tests(&self, isolate: bool) -> Result<(), EtcdError> {
        self.raft
            .send(RaftCommand::IsolateForTests { isolate })
            .await
            .map_err(|_| EtcdError::Stopped)
    }

    pub async fn member_list(&self) -> Result<Vec<rivet_api::etcdserverpb::Member>, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.ask_raft(RaftCommand::MemberList { reply }, answer)
            .await
    }

    pub async fn member_change(
        &self,
        change: MemberChange,
    ) -> Result<MemberChangeResult, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.ask_raft(RaftCommand::MemberChange { change, reply }, answer)
            .await?
    }

    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.ask_raft(RaftCommand::MoveLeader { target, reply }, answer)
            .await?
    }

    /// A header at the newest revision every shard applied.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.shared.applied_revision())
    }

    /// Sum of every shard's page file size, read from the files now.
    pub async fn db_size_bytes(&self) -> u64 {
        let mut total = self.shard.borrow().size_bytes();
        for (id, peer) in self.peers.iter().enumerate() {
            if id == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            if peer.send(ShardRequest::SizeBytes { reply }).await.is_ok() {
                total += answer.await.unwrap_or(0);
            }
        }
        total
    }

    /// Watch: every change in `[from, to]` on every shard from the recent logs, ordered
    /// by revision (within a revision, in apply order per shard), or `None` when some
    /// shard's log does not reach back to `from`.
    pub async fn watch_recent(
        &self,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Option<crate::shard::WatchEvents> {
        let mut parts = Vec::with_capacity(self.shard_count);
        let mut pending = Vec::new();
        for id in 0..self.shard_count {
            if id == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let request = ShardRequest::WatchRecent {
                from,
                to,
                prev_kv,
                reply,
            };
            if self.peers[id].send(request).await.is_err() {
                return None;
            }
            pending.push(answer);
        }
        let local = self.shard.borrow().recent_changes(from, to, prev_kv)?;
        match local {
            Ok(events) => parts.push(events),
            Err(e) => return Some(Err(e)),
        }
        for answer in pending {
            match answer.await.ok()? {
                Some(Ok(events)) => parts.push(events),
                Some(Err(e)) => return Some(Err(e)),
                None => return None,
            }
        }
        Some(Ok(merge_by_revision(parts)))
    }

    /// Watch catch-up: one range's changes in `[from, to]` from the shards' indexes.
    pub async fn watch_history(
        &self,
        key: &Bytes,
        end: &RangeEnd,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<crate::shard::WatchEvents, CompactedAt> {
        let shards = self.shards_of(key, end);
        let mut parts = Vec::with_capacity(shards.len());
        let mut pending = Vec::new();
        for &id in &shards {
            if id == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let request = ShardRequest::WatchHistory {
                key: key.clone(),
                end: end.clone(),
                from,
                to,
                prev_kv,
                reply,
            };
            if self.peers[id].send(request).await.is_err() {
                return Ok(Err(EtcdError::Stopped));
            }
            pending.push(answer);
        }
        if shards.contains(&self.id) {
            match self.shard.borrow().history(key, end, from, to, prev_kv)? {
                Ok(events) => parts.push(events),
                Err(e) => return Ok(Err(e)),
            }
        }
        for answer in pending {
            match answer.await {
                Ok(Ok(Ok(events))) => parts.push(events),
                Ok(Ok(Err(e))) => return Ok(Err(e)),
                Ok(Err(compacted)) => return Err(compacted),
                Err(_) => return Ok(Err(EtcdError::Stopped)),
            }
        }
        Ok(Ok(merge_by_revision(parts)))
    }

    /// The shards a range touches.
    fn shards_of(&self, key: &[u8], end: &RangeEnd) -> Vec<usize> {
        match end {
            RangeEnd::Single => vec![shard_of(key, self.shard_count)],
            _ => (0..self.shard_count).collect(),
        }
    }

    /// Reads `part` from every shard in `shards` and merges the results.
    async fn scatter(
        &self,
        shards: &[usize],
        part: RangePart,
    ) -> Result<RangePartResult, EtcdError> {
        if let [only] = shards {
            if *only == self.id {
                return self.shard.borrow().range(&part);
            }
        }
        let mut pending = Vec::with_capacity(shards.len());
        for &id in shards {
            if id == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            self.peers[id]
                .send(ShardRequest::Range {
                    part: part.clone(),
                    reply,
                })
                .await
                .map_err(|_| EtcdError::Stopped)?;
            pending.push(answer);
        }
        let mut parts = Vec::with_capacity(shards.len());
        let mut count = 0;
        if shards.contains(&self.id) {
            let local = self.shard.borrow().range(&part)?;
            count += local.count;
            parts.push(local.kvs);
        }
        for answer in pending {
            let remote = answer.await.map_err(|_| EtcdError::Stopped)??;
            count += remote.count;
            parts.push(remote.kvs);
        }
        Ok(RangePartResult {
            kvs: merge_sorted(parts, part.limit),
            count,
        })
    }

    /// A range read at `current` (the view's revision, reported in the header).
    async fn range_at(
        &self,
        request: &RangeRequest,
        current: i64,
    ) -> Result<RangeResponse, EtcdError> {
        let revision = resolve_revision(request.revision, current, -1)?;
        let part = RangePart::from_request(request, revision);
        let shards = self.shards_of(&request.key, &part.end);
        let result = self.scatter(&shards, part).await?;
        Ok(finish_range(request, result.kvs, result.count, current))
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        // A learner serves serializable reads only (the rest of its refusals are in the
        // client service, which sees every gRPC method before it runs).
        if !request.serializable && self.shared.is_learner.load(Ordering::Acquire) {
            return Err(EtcdError::NotSupportedForLearner);
        }
        check::check_range(&request)?;
        let end = RangeEnd::from_request(&request.range_end);
        let current = if request.serializable {
            let shards = self.shards_of(&request.key, &end);
            if shards == [self.id] {
                self.shard.borrow().revision()
            } else {
                self.shared.applied_revision()
            }
        } else {
            self.read_index().await?.revision
        };
        let mut response = self.range_at(&request, current).await?;
        response.header = Some(self.header(current));
        Ok(response)
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, EtcdError> {
        check::check_put(&request)?;
        match self
            .propose(internal_request::Request::Put(request))
            .await?
            .applied
        {
            Applied::Put(mut response) => {
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        check::check_delete(&request)?;
        match self
            .propose(internal_request::Request::DeleteRange(request))
            .await?
            .applied
        {
            Applied::DeleteRange(mut response) => {
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        check::check_txn(&request, self.max_txn_ops)?;
        let reply = if check::txn_is_read_only(&request) {
            let linearizable = !check::txn_is_serializable(&request);
            let (reply, answer) = oneshot::channel();
            let reply = self
                .ask_raft(
                    RaftCommand::ReadOnlyTxn {
                        request,
                        linearizable,
                        reply,
                    },
                    answer,
                )
                .await??;
            self.wait_applied(reply.index).await;
            reply
        } else {
            self.propose(internal_request::Request::Txn(request))
                .await?
        };
        match reply.applied {
            Applied::Txn(mut response) => {
                for historical in reply.historical_ranges {
                    self.fill_historical(&mut response, historical).await?;
                }
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn fill_historical(
        &self,
        response: &mut TxnResponse,
        historical: HistoricalRange,
    ) -> Result<(), EtcdError> {
        let range = self
            .range_at(&historical.request, historical.header_revision)
            .await?;
        let mut responses = &mut response.responses;
        let (last, walk) = historical
            .path
            .split_last()
            .ok_or_else(|| EtcdError::Internal("empty path".into()))?;
        for &i in walk {
            match responses.get_mut(i).and_then(|op| op.response.as_mut()) {
                Some(response_op::Response::ResponseTxn(nested)) => {
                    responses = &mut nested.responses
                }
                _ => return Err(EtcdError::Internal("bad historical range path".into())),
            }
        }
        if let Some(slot) = responses.get_mut(*last) {
            *slot = ResponseOp {
                response: Some(response_op::Response::ResponseRange(range)),
            };
        }
        Ok(())
    }

    pub async fn compact(
        &self,
        request: CompactionRequest,
    ) -> Result<CompactionResponse, EtcdError> {
        match self
            .propose(internal_request::Request::Compaction(request))
            .await?
            .applied
        {
            // The answer is released after every shard applied the compaction, so
            // `physical` needs no extra wait.
            Applied::Compaction(mut response) => {
                response.header = Some(self.header(revision_of(&response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }
}

fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Merges per-shard event lists (each ordered by revision) into one, by revision; a
/// stable merge, so each shard's order within a revision is kept.
fn merge_by_revision(parts: Vec<Vec<Event>>) -> Vec<Event> {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut all: Vec<Event> = parts.into_iter().flatten().collect();
    all.sort_by_key(event_revision);
    all
}

fn revision_of(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

fn unexpected(applied: Applied) -> EtcdError {
    EtcdError::Internal(format!("unexpected apply result {applied:?}"))
}
