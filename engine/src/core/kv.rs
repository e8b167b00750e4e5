//! The KV service on a shard core: ranges scattered over the shards and merged, writes
//! and txns handed to the raft core.

use std::sync::atomic::Ordering;

use rivet_api::etcdserverpb::{
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseOp, TxnRequest, TxnResponse,
};
use rivet_api::rivetpb::internal_request;

use super::ShardCore;
use crate::auth::{self, AuthInfo};
use crate::check;
use crate::error::EtcdError;
use crate::keyspace::RangeEnd;
use crate::messages::{RaftCommand, RangePart, RangePartResult, ShardRequest};
use crate::range::{finish_range, merge_sorted, resolve_revision};
use crate::sequencer::HistoricalRange;

impl ShardCore {
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
            let part = part.clone();
            pending.push(
                self.ask_shard(id, |reply| ShardRequest::Range { part, reply })
                    .await?,
            );
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
        self.range_as(request, None).await
    }

    /// Range as `caller` (auth on): as etcd's `doSerialize`, the permission is checked
    /// against this core's auth store once the read point is reached, and the answer is
    /// dropped for `revision of auth store is old` if the store moved during the read.
    pub async fn range_as(
        &self,
        request: RangeRequest,
        caller: Option<AuthInfo>,
    ) -> Result<RangeResponse, EtcdError> {
        // A learner serves serializable reads only (the rest of its refusals are in the
        // client service, which sees every gRPC method before it runs).
        if !request.serializable && self.shared.is_learner.load(Ordering::Acquire) {
            return Err(EtcdError::NotSupportedForLearner);
        }
        check::check_range(&request)?;
        crate::metrics::MVCC_RANGE.inc();
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
        let caller = self.check_read(caller, |state, caller| {
            auth::request::check_range(state, caller, &request)
        })?;
        let mut response = self.range_at(&request, current).await?;
        self.check_read_unchanged(caller.as_ref())?;
        response.header = Some(self.header(current));
        Ok(response)
    }

    /// The permission check of a read (auth on): `check` against this core's store, with
    /// no credentials as etcd's empty `AuthInfo`. Answers the caller to check again after
    /// the read.
    fn check_read(
        &self,
        caller: Option<AuthInfo>,
        check: impl FnOnce(&auth::AuthState, &AuthInfo) -> Result<(), EtcdError>,
    ) -> Result<Option<AuthInfo>, EtcdError> {
        let state = self.auth.borrow().state.clone();
        if !state.is_enabled() {
            return Ok(None);
        }
        let caller = caller.unwrap_or_default();
        check(&state, &caller)?;
        Ok(Some(caller))
    }

    fn check_read_unchanged(&self, caller: Option<&AuthInfo>) -> Result<(), EtcdError> {
        match caller {
            Some(caller) => {
                auth::request::check_unchanged_after_read(&self.auth.borrow().state, caller)
            }
            None => Ok(()),
        }
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, EtcdError> {
        self.put_as(request, None).await
    }

    /// Put as `caller`; the auth applier checks its permissions at apply.
    pub async fn put_as(
        &self,
        request: PutRequest,
        caller: Option<AuthInfo>,
    ) -> Result<PutResponse, EtcdError> {
        check::check_put(&request)?;
        self.write_as(internal_request::Request::Put(request), caller.as_ref())
            .await
    }

    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        self.delete_range_as(request, None).await
    }

    pub async fn delete_range_as(
        &self,
        request: DeleteRangeRequest,
        caller: Option<AuthInfo>,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        check::check_delete(&request)?;
        self.write_as(
            internal_request::Request::DeleteRange(request),
            caller.as_ref(),
        )
        .await
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.txn_as(request, None).await
    }

    /// Txn as `caller`: a read-only txn is checked here (etcd's `doSerialize` with
    /// `checkTxnAuth`), one with writes by the auth applier at apply.
    pub async fn txn_as(
        &self,
        request: TxnRequest,
        caller: Option<AuthInfo>,
    ) -> Result<TxnResponse, EtcdError> {
        check::check_txn(&request, self.max_txn_ops)?;
        let mut read_caller = None;
        let reply = if check::txn_is_read_only(&request) {
            read_caller = self.check_read(caller, |state, caller| {
                auth::request::check_txn(state, caller, &request, &auth::request::NoLeases)
            })?;
            let linearizable = !check::txn_is_serializable(&request);
            let reply = self
                .ask(|reply| RaftCommand::ReadOnlyTxn {
                    request,
                    linearizable,
                    reply,
                })
                .await??;
            self.wait_applied(reply.index).await;
            reply
        } else {
            self.propose_as(internal_request::Request::Txn(request), caller.as_ref())
                .await?
        };
        let mut response: TxnResponse = self.answer(reply.applied)?;
        for historical in reply.historical_ranges {
            self.fill_historical(&mut response, historical).await?;
        }
        self.check_read_unchanged(read_caller.as_ref())?;
        Ok(response)
    }

    /// Reads a range of a txn that asked for an older revision than the sequencer holds,
    /// and puts it where it belongs in the txn's (nested) responses.
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

    /// The answer is released after every shard applied the compaction, so `physical`
    /// needs no extra wait.
    pub async fn compact(
        &self,
        request: CompactionRequest,
    ) -> Result<CompactionResponse, EtcdError> {
        self.write(internal_request::Request::Compaction(request))
            .await
    }
}
