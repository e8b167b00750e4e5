//! The Lock (`v3lockpb`) and Election (`v3electionpb`) services, server side, with the
//! protocol of etcd's `clientv3/concurrency` that etcd's own servers use: a waiter puts
//! `<name>/<lease hex>` under its lease; the key with the lowest create revision holds the
//! lock (or leads); everyone else waits until every key created before theirs is gone.

use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, Stream};
use rivet_api::etcdserverpb::{
    compare,
    range_request::{SortOrder, SortTarget},
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use rivet_api::mvccpb::KeyValue;
use rivet_api::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use rivet_api::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use rivet_engine::core::ShardCore;
use rivet_engine::error::EtcdError;
use rivet_engine::limits;
use tonic::{Request, Response, Status};

use crate::services::{CoreHandle, Credentials};
use rivet_engine::auth::AuthInfo;

/// etcd's `concurrency` errors, as its election server returns them.
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
/// etcd's election server's answer to a Proclaim or Resign without a leader key.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// etcd's lock and election servers call the KV API through an in-process client and
/// return its errors as they come, which gRPC answers with code Unknown and the error's
/// text (`etcdserver: key is not provided` is InvalidArgument from KV, Unknown from Unlock).
fn as_client_error(status: Status) -> Status {
    Status::new(tonic::Code::Unknown, status.message())
}

/// The end of the prefix range of `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

fn op_put(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn op_get(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

/// The oldest key of a prefix (`WithFirstCreate`).
fn first_create(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

fn create_revision_is(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        range_end: Bytes::new(),
    }
}

fn range_of(response: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match response.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => Some(range),
        _ => None,
    }
}

/// Waits until no key under `prefix` with a create revision at or below `max_create`
/// is left (etcd's `waitDeletes`), and returns the header of the last check.
async fn wait_deletes(
    core: &AsCaller<'_>,
    prefix: &Bytes,
    max_create: i64,
) -> Result<ResponseHeader, EtcdError> {
    loop {
        let newest_before = core
            .range(RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(prefix),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision: max_create,
                limit: 1,
                ..Default::default()
            })
            .await?;
        let Some(blocker) = newest_before.kvs.first() else {
            return Ok(newest_before.header.unwrap_or_default());
        };
        wait_gone(core, blocker).await?;
    }
}

/// Waits until `kv`'s key is deleted (or re-created: a different create revision).
async fn wait_gone(core: &AsCaller<'_>, kv: &KeyValue) -> Result<(), EtcdError> {
    loop {
        let index = core.shared.applied_index();
        let now = core
            .range(RangeRequest {
                key: kv.key.clone(),
                serializable: true,
                ..Default::default()
            })
            .await?;
        if now
            .kvs
            .first()
            .is_none_or(|k| k.create_revision != kv.create_revision)
        {
            return Ok(());
        }
        core.wait_applied(index + 1).await;
    }
}

/// Puts `<name>/<lease>` unless this lease already has it; returns the key, its create
/// revision, the current value and the txn response.
async fn enqueue(
    core: &AsCaller<'_>,
    name: &Bytes,
    lease: i64,
    value: Bytes,
) -> Result<(Bytes, i64, TxnResponse), EtcdError> {
    let prefix = Bytes::from([name.as_ref(), b"/"].concat());
    // The name's bytes as they are: a name need not be UTF-8 (clientv3 builds the key
    // the same way, as bytes).
    let key = Bytes::from([prefix.as_ref(), format!("{lease:x}").as_bytes()].concat());
    let response = core
        .txn(TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                op_put(&key, value, lease),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(first_create(&prefix))),
                },
            ],
            failure: vec![
                op_get(&key),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(first_create(&prefix))),
                },
            ],
        })
        .await?;
    let revision = if response.succeeded {
        response.header.as_ref().map_or(0, |h| h.revision)
    } else {
        range_of(&response, 0)
            .and_then(|r| r.kvs.first())
            .map_or(0, |kv| kv.create_revision)
    };
    Ok((key, revision, response))
}

/// The TTL of the lease etcd's lock and election servers grant for a request whose
/// lease is 0 (clientv3 concurrency's default session TTL, 60 s).
const SESSION_TTL: i64 = 60;

/// The lease a Lock, Campaign, Proclaim or Resign works under, as etcd's servers take it
/// from a `concurrency.Session`: the request's lease, or, when it is 0, a new lease of
/// [`SESSION_TTL`] granted now (and never kept alive: a lock taken without a lease is
/// released by its expiry). The grant is refused like any other, e.g. under NOSPACE.
async fn session_lease(core: &ShardCore, lease: i64) -> Result<i64, EtcdError> {
    if lease != 0 {
        return Ok(lease);
    }
    let granted = core
        .lease_grant(rivet_api::etcdserverpb::LeaseGrantRequest {
            ttl: SESSION_TTL,
            id: 0,
        })
        .await?;
    Ok(granted.id)
}

/// The serving core acting for the client that called: the reads and writes of a lock or
/// an election are checked with the client's credentials, as etcd's in-process client
/// (which carries the caller's token) makes them.
struct AsCaller<'c> {
    core: &'c ShardCore,
    caller: Option<AuthInfo>,
}

impl<'c> AsCaller<'c> {
    fn new(core: &'c ShardCore, caller: Option<AuthInfo>) -> AsCaller<'c> {
        AsCaller { core, caller }
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.core.range_as(request, self.caller.clone()).await
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.core.txn_as(request, self.caller.clone()).await
    }

    async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<rivet_api::etcdserverpb::DeleteRangeResponse, EtcdError> {
        self.core
            .delete_range_as(request, self.caller.clone())
            .await
    }
}

impl std::ops::Deref for AsCaller<'_> {
    type Target = ShardCore;

    fn deref(&self) -> &ShardCore {
        self.core
    }
}

pub struct LockService(pub CoreHandle);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_unbounded_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                let prefix = Bytes::from([request.name.as_ref(), b"/"].concat());
                let lease = session_lease(&core, request.lease).await?;
                let (key, revision, response) =
                    enqueue(&core, &request.name, lease, Bytes::new()).await?;
                let owner = range_of(&response, 1).and_then(|r| r.kvs.first());
                let header = if owner.is_none_or(|o| o.create_revision == revision) {
                    response.header.unwrap_or_default()
                } else {
                    match wait_deletes(&core, &prefix, revision - 1).await {
                        Ok(header) => header,
                        Err(e) => {
                            let _ = delete_key(&core, &key).await;
                            return Err(e);
                        }
                    }
                };
                Ok(LockResponse {
                    header: Some(header),
                    key,
                })
            })
            .await
            .map_err(as_client_error)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let key = request.into_inner().key;
        self.0
            .run_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                let response = delete_key(&core, &key).await?;
                Ok(UnlockResponse {
                    header: response.header,
                })
            })
            .await
            .map_err(as_client_error)
    }
}

async fn delete_key(
    core: &AsCaller<'_>,
    key: &Bytes,
) -> Result<rivet_api::etcdserverpb::DeleteRangeResponse, EtcdError> {
    core.delete_range(DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    })
    .await
}

pub struct ElectionService(pub CoreHandle);

fn election_error(message: &'static str) -> EtcdError {
    EtcdError::Plain(message)
}

/// The current leader of an election: the oldest key under `<name>/`.
async fn leader_of(
    core: &AsCaller<'_>,
    name: &Bytes,
) -> Result<(ResponseHeader, Option<KeyValue>), EtcdError> {
    let prefix = Bytes::from([name.as_ref(), b"/"].concat());
    let response = core.range(first_create(&prefix)).await?;
    Ok((
        response.header.unwrap_or_default(),
        response.kvs.into_iter().next(),
    ))
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_unbounded_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                let prefix = Bytes::from([request.name.as_ref(), b"/"].concat());
                let lease = session_lease(&core, request.lease).await?;
                let (key, revision, response) =
                    enqueue(&core, &request.name, lease, request.value.clone()).await?;
                if !response.succeeded {
                    let current = range_of(&response, 0)
                        .and_then(|r| r.kvs.first())
                        .map(|kv| kv.value.clone());
                    if current.as_ref() != Some(&request.value) {
                        proclaim(&core, &key, revision, lease, request.value.clone()).await?;
                    }
                }
                if let Err(e) = wait_deletes(&core, &prefix, revision - 1).await {
                    let _ = delete_key(&core, &key).await;
                    return Err(e);
                }
                Ok(CampaignResponse {
                    header: response.header,
                    leader: Some(LeaderKey {
                        name: request.name,
                        key,
                        rev: revision,
                        lease,
                    }),
                })
            })
            .await
            .map_err(as_client_error)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        let Some(leader) = request.leader else {
            return Err(Status::new(tonic::Code::Unknown, MISSING_LEADER_KEY));
        };
        self.0
            .run_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                let lease = session_lease(&core, leader.lease).await?;
                let header = proclaim(&core, &leader.key, leader.rev, lease, request.value).await?;
                Ok(ProclaimResponse {
                    header: Some(header),
                })
            })
            .await
            .map_err(as_client_error)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let name = request.into_inner().name;
        self.0
            .run_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                let (header, kv) = leader_of(&core, &name).await?;
                let kv = kv.ok_or_else(|| election_error(NO_LEADER))?;
                Ok(LeaderResponse {
                    header: Some(header),
                    kv: Some(kv),
                })
            })
            .await
            .map_err(as_client_error)
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let credentials = self.0.credentials(&request);
        let name = request.into_inner().name;
        let (out, responses) = mpsc::channel(limits::WATCH_STREAM_QUEUE);
        let core = self.0.core();
        glommio::spawn_local(observe(core, credentials, name, out)).detach();
        Ok(Response::new(Box::pin(responses)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let Some(leader) = request.into_inner().leader else {
            return Err(Status::new(tonic::Code::Unknown, MISSING_LEADER_KEY));
        };
        self.0
            .run_as(credentials, |core, caller| async move {
                let core = AsCaller::new(&core, caller);
                session_lease(&core, leader.lease).await?;
                let response = core
                    .txn(TxnRequest {
                        compare: vec![create_revision_is(&leader.key, leader.rev)],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestDeleteRange(
                                DeleteRangeRequest {
                                    key: leader.key.clone(),
                                    ..Default::default()
                                },
                            )),
                        }],
                        failure: vec![],
                    })
                    .await?;
                Ok(ResignResponse {
                    header: response.header,
                })
            })
            .await
            .map_err(as_client_error)
    }
}

/// Sets the leader's value if `key` still leads with the same create revision.
/// The value goes with `lease`, as etcd's puts it with the session's lease.
async fn proclaim(
    core: &AsCaller<'_>,
    key: &Bytes,
    revision: i64,
    lease: i64,
    value: Bytes,
) -> Result<ResponseHeader, EtcdError> {
    let response = core
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, revision)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .await?;
    if !response.succeeded {
        return Err(election_error(NOT_LEADER));
    }
    Ok(response.header.unwrap_or_default())
}

/// Streams the leader's key-value every time it changes (a new leader, or a proclaim).
async fn observe(
    core: Rc<ShardCore>,
    credentials: Credentials,
    name: Bytes,
    mut out: mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    let caller = match core
        .caller(
            credentials.token.as_deref(),
            credentials.common_name.as_deref(),
        )
        .await
    {
        Ok(caller) => caller,
        Err(e) => {
            let _ = out.send(Err(as_client_error(Status::from(e)))).await;
            return;
        }
    };
    let core = AsCaller::new(&core, caller);
    let mut last: Option<KeyValue> = None;
    loop {
        let index = core.shared.applied_index();
        match leader_of(&core, &name).await {
            Ok((header, Some(kv))) => {
                let changed = last
                    .as_ref()
                    .is_none_or(|l| l.key != kv.key || l.mod_revision != kv.mod_revision);
                if changed {
                    last = Some(kv.clone());
                    let response = LeaderResponse {
                        header: Some(header),
                        kv: Some(kv),
                    };
                    if out.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
            Ok((_, None)) => {}
            Err(e) => {
                let _ = out.send(Err(as_client_error(Status::from(e)))).await;
                return;
            }
        }
        if out.is_closed() {
            return;
        }
        core.wait_applied(index + 1).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
