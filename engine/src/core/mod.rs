//! What one shard core does, independent of the executor it runs on: applies its part of
//! the apply stream, serves its part of scattered reads to the other cores, and answers
//! client requests by reading shards (its own directly, others by message) or by handing
//! writes to the raft core.
//!
//! - this file: the [`ShardCore`] itself and the two ways it asks for something — the raft
//!   core ([`ShardCore::ask`]) and another shard core ([`ShardCore::ask_shard`]), each a
//!   bounded channel and a oneshot answer, written once;
//! - [`auth`]: who a request is from, the auth store this core applied, the Auth service;
//! - [`apply`]: the shard's end of the apply stream, the applied-index watermark that
//!   read-your-writes waits on, and the requests other cores send this shard;
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact;
//! - [`lease`]: the Lease service;
//! - [`maintenance`]: status, alarms, HashKV, sizes, membership and leadership;
//! - [`watch`]: what watch streams read from the shards.

pub mod apply;
pub mod auth;
pub mod corrupt_check;
pub mod gc;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod snapshot;
pub mod watch;

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;

use futures::channel::oneshot;
use rivet_api::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    ResponseHeader, TxnResponse,
};
use rivet_api::rivetpb::internal_request;

use crate::error::EtcdError;
use crate::keyspace::{shard_of, RangeEnd};
use crate::messages::{RaftCommand, ReadPoint, Reply, ShardRequest};
use crate::sequencer::Applied;
use crate::shard::Shard;
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
    /// Wakes the garbage collection task ([`ShardCore::run_gc`]).
    gc: async_channel::Sender<gc::GcRequest>,
    /// Its end, until the task takes it.
    gc_requests: RefCell<Option<async_channel::Receiver<gc::GcRequest>>>,
    /// The auth store and simple tokens this core applied, `--auth-token`, the bcrypt
    /// pool.
    pub auth: RefCell<auth::CoreAuth>,
    /// Reports of damaged page records the shard read while serving, until the task
    /// that raises CORRUPT for them ([`ShardCore::run_damage_alarm`]) takes it.
    damage: RefCell<Option<async_channel::Receiver<String>>>,
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
        let (gc, gc_requests) = async_channel::bounded(crate::limits::GC_REQUEST_QUEUE);
        let mut shard = shard;
        // One report pending at a time: the first raises the alarm, later ones would too.
        let (damage_tx, damage) = async_channel::bounded(1);
        shard.report_damage_to(damage_tx);
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
            gc,
            gc_requests: RefCell::new(Some(gc_requests)),
            auth: RefCell::new(auth::CoreAuth::default()),
            damage: RefCell::new(Some(damage)),
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

    /// A header at the newest revision every shard applied.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.shared.applied_revision())
    }

    /// Sends the raft core the command `command` builds around a reply channel, and waits
    /// for the answer. `Stopped` when the raft core is gone.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> RaftCommand,
    ) -> Result<T, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.raft
            .send(command(reply))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        answer.await.map_err(|_| EtcdError::Stopped)
    }

    /// Sends shard core `shard` the request `request` builds around a reply channel, and
    /// returns the channel the answer comes on: a caller asks every shard first, then
    /// waits, so the shards work in parallel.
    async fn ask_shard<T>(
        &self,
        shard: usize,
        request: impl FnOnce(oneshot::Sender<T>) -> ShardRequest,
    ) -> Result<oneshot::Receiver<T>, EtcdError> {
        let (reply, answer) = oneshot::channel();
        self.peers[shard]
            .send(request(reply))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        Ok(answer)
    }

    /// Proposes a write and returns once every shard has applied it, so the answer is
    /// visible to any read on any core that follows it (read-your-writes).
    async fn propose(&self, request: internal_request::Request) -> Result<Reply, EtcdError> {
        self.propose_as(request, None).await
    }

    /// [`ShardCore::propose`] of a client write with the credentials it came with: the
    /// auth applier checks its permissions with them when the entry applies.
    async fn propose_as(
        &self,
        request: internal_request::Request,
        caller: Option<&crate::auth::AuthInfo>,
    ) -> Result<Reply, EtcdError> {
        let reply = match caller {
            None => {
                self.ask(|reply| RaftCommand::Propose { request, reply })
                    .await??
            }
            Some(caller) => {
                let caller = caller.to_caller();
                self.ask(|reply| RaftCommand::ProposeAs {
                    request,
                    caller,
                    reply,
                })
                .await??
            }
        };
        self.wait_applied(reply.index).await;
        Ok(reply)
    }

    /// Proposes a write and answers its response, with this member's header at the
    /// revision the apply gave it.
    async fn write<R: WriteResponse>(
        &self,
        request: internal_request::Request,
    ) -> Result<R, EtcdError> {
        self.write_as(request, None).await
    }

    /// [`ShardCore::write`] with the client's credentials.
    async fn write_as<R: WriteResponse>(
        &self,
        request: internal_request::Request,
        caller: Option<&crate::auth::AuthInfo>,
    ) -> Result<R, EtcdError> {
        let applied = self.propose_as(request, caller).await?.applied;
        self.answer(applied)
    }

    /// The response of type `R` in an apply result, with this member's header.
    fn answer<R: WriteResponse>(&self, applied: Applied) -> Result<R, EtcdError> {
        let mut response = R::from_applied(applied)?;
        let header = response.header_mut();
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
        Ok(response)
    }

    /// A revision that reflects every write acknowledged before this call (ReadIndex),
    /// applied by every shard when this returns.
    pub async fn read_index(&self) -> Result<ReadPoint, EtcdError> {
        let point = self
            .ask(|reply| RaftCommand::ReadIndex { reply })
            .await
            .and_then(|answer| answer)
            .inspect_err(|_| crate::metrics::READ_INDEXES_FAILED.inc())?;
        self.wait_applied(point.index).await;
        Ok(point)
    }

    /// The shards a range touches.
    fn shards_of(&self, key: &[u8], end: &RangeEnd) -> Vec<usize> {
        match end {
            RangeEnd::Single => vec![shard_of(key, self.shard_count)],
            _ => (0..self.shard_count).collect(),
        }
    }
}

/// The response of a write, as the apply result carries it.
trait WriteResponse: Sized {
    /// The response, or `Internal` when the result holds another kind.
    fn from_applied(applied: Applied) -> Result<Self, EtcdError>;
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! write_responses {
    ($($response:ty => $variant:ident),* $(,)?) => {$(
        impl WriteResponse for $response {
            fn from_applied(applied: Applied) -> Result<Self, EtcdError> {
                match applied {
                    Applied::$variant(response) => Ok(response),
                    other => Err(unexpected(other)),
                }
            }
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

write_responses!(
    PutResponse => Put,
    DeleteRangeResponse => DeleteRange,
    TxnResponse => Txn,
    CompactionResponse => Compaction,
    LeaseGrantResponse => LeaseGrant,
    LeaseRevokeResponse => LeaseRevoke,
    rivet_api::etcdserverpb::AlarmResponse => Alarm,
);

fn unexpected(applied: Applied) -> EtcdError {
    EtcdError::Internal(format!("unexpected apply result {applied:?}"))
}
