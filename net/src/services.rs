//! The etcd v3 gRPC services, served on every shard core. Each handler hands the request
//! to its core's `ShardCore`; the work runs on this core (the future never leaves it, so
//! wrapping it in `SendWrapper` to satisfy tonic's `Send` bound is sound — `DESIGN.md` §3).

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::future::Either;
use rivet_api::etcdserverpb::{
    cluster_server::Cluster, kv_server::Kv, maintenance_server::Maintenance, AlarmRequest,
    AlarmResponse, CompactionRequest, CompactionResponse, DefragmentRequest, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse,
};
use rivet_engine::auth::request::{check_rpc, Rpc};
use rivet_engine::auth::AuthInfo;
use rivet_engine::core::ShardCore;
use rivet_engine::error::EtcdError;
use rivet_engine::messages::MemberChange;
use send_wrapper::SendWrapper;
use tonic::{Request, Response, Status};

/// The etcd version whose API rivet implements; reported where etcd reports its own.
pub const ETCD_VERSION: &str = "3.4.23";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// Waits at most `limit` for `work`, then answers etcd's "request timed out".
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, EtcdError>>,
) -> Result<T, EtcdError> {
    let work = std::pin::pin!(work);
    let timer = std::pin::pin!(glommio::timer::sleep(limit));
    match futures::future::select(work, timer).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(EtcdError::Timeout),
    }
}

#[derive(Clone)]
pub struct CoreHandle {
    core: SendWrapper<Rc<ShardCore>>,
    request_timeout: Duration,
    /// `--client-cert-auth`: a verified client certificate's Common Name is the user of
    /// a request without a token (etcd's `AuthInfoFromTLS`).
    client_cert_auth: bool,
}

/// The credentials a request came with: its `token` metadata (or `authorization`, as
/// etcd's gateway sends it), and the Common Name of its client certificate.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<String>,
}

impl CoreHandle {
    pub fn new(core: Rc<ShardCore>, request_timeout: Duration) -> CoreHandle {
        CoreHandle {
            core: SendWrapper::new(core),
            request_timeout,
            client_cert_auth: false,
        }
    }

    pub fn with_client_cert_auth(self, client_cert_auth: bool) -> CoreHandle {
        CoreHandle {
            client_cert_auth,
            ..self
        }
    }

    /// etcd's `AuthInfoFromCtx` inputs: the token from the metadata, else (with
    /// `--client-cert-auth`) the certificate's Common Name.
    pub fn credentials<T>(&self, request: &Request<T>) -> Credentials {
        let metadata = request.metadata();
        let token = metadata
            .get("token")
            .or_else(|| metadata.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let common_name = if self.client_cert_auth {
            request
                .extensions()
                .get::<crate::tls::ClientIdentity>()
                .and_then(|identity| identity.common_name.as_deref().map(str::to_string))
        } else {
            None
        };
        Credentials { token, common_name }
    }

    /// [`CoreHandle::run`] for a request that carries credentials: `f` gets who it is
    /// from (`None` with auth off or without credentials), or the request fails with
    /// `invalid auth token`.
    pub async fn run_as<T, F, Fut>(
        &self,
        credentials: Credentials,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Rc<ShardCore>, Option<AuthInfo>) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        self.run(|core| async move {
            let caller = core
                .caller(
                    credentials.token.as_deref(),
                    credentials.common_name.as_deref(),
                )
                .await?;
            f(core, caller).await
        })
        .await
    }

    /// [`CoreHandle::run_unbounded`] for a request that carries credentials.
    pub async fn run_unbounded_as<T, F, Fut>(
        &self,
        credentials: Credentials,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Rc<ShardCore>, Option<AuthInfo>) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        self.run_unbounded(|core| async move {
            let caller = core
                .caller(
                    credentials.token.as_deref(),
                    credentials.common_name.as_deref(),
                )
                .await?;
            f(core, caller).await
        })
        .await
    }

    /// [`CoreHandle::run_as`] of an RPC whose check does not depend on keys (root only,
    /// or any credentials).
    pub async fn run_checked<T, F, Fut>(
        &self,
        credentials: Credentials,
        rpc: Rpc,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Rc<ShardCore>) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        self.run_as(credentials, |core, caller| async move {
            check_rpc(&core.auth_state(), caller.as_ref(), rpc)?;
            f(core).await
        })
        .await
    }

    pub fn core(&self) -> Rc<ShardCore> {
        Rc::clone(&self.core)
    }

    /// Runs `f` on this core without the request timeout (Lock and Campaign wait as long
    /// as the client does), as a `Send` future.
    pub async fn run_unbounded<T, F, Fut>(&self, f: F) -> Result<Response<T>, Status>
    where
        F: FnOnce(Rc<ShardCore>) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        let work = SendWrapper::new(f(self.core()));
        work.await.map(Response::new).map_err(Status::from)
    }

    /// Runs `f` on this core with the request timeout, as a `Send` future.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<Response<T>, Status>
    where
        F: FnOnce(Rc<ShardCore>) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        let core = self.core();
        let limit = self.request_timeout;
        let work = SendWrapper::new(within(limit, f(core)));
        work.await.map(Response::new).map_err(Status::from)
    }
}

pub struct KvService(pub CoreHandle);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                core.range_as(request, caller).await
            })
            .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                core.put_as(request, caller).await
            })
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                core.delete_range_as(request, caller).await
            })
            .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                core.txn_as(request, caller).await
            })
            .await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_checked(credentials, Rpc::Compact, |core| async move {
                core.compact(request).await
            })
            .await
    }
}

pub struct MaintenanceService(pub CoreHandle);

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        use rivet_api::etcdserverpb::alarm_request::AlarmAction;
        let rpc = match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Activate) => Rpc::AlarmActivate,
            Ok(AlarmAction::Deactivate) => Rpc::AlarmDeactivate,
            _ => Rpc::AlarmGet,
        };
        self.0
            .run_checked(credentials, rpc, |core| async move {
                // etcd's alarm applier answers without a header (`etcdctl -w json alarm
                // list` prints `{}`).
                let mut response = core.alarm(request).await?;
                response.header = None;
                Ok(response)
            })
            .await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let credentials = self.0.credentials(&request);
        self.0
            .run_checked(credentials, Rpc::Status, |core| async move {
                let raft = core.raft_status().await?;
                let sizes = core.db_sizes().await;
                let db_size = sizes.used_bytes as i64;
                let revision = core.shared.applied_revision();
                Ok(StatusResponse {
                    header: Some(core.header(revision)),
                    version: ETCD_VERSION.to_string(),
                    db_size,
                    leader: raft.leader,
                    raft_index: raft.last_index,
                    raft_term: raft.term,
                    raft_applied_index: raft.applied_index,
                    errors: core
                        .alarms()
                        .await?
                        .iter()
                        .map(|a| {
                            let kind = rivet_api::etcdserverpb::AlarmType::try_from(a.alarm)
                                .map_or("UNKNOWN", |t| t.as_str_name());
                            format!("memberID:{} alarm:{kind} ", a.member_id)
                        })
                        .collect(),
                    db_size_in_use: sizes.live_bytes as i64,
                    is_learner: core
                        .shared
                        .is_learner
                        .load(std::sync::atomic::Ordering::Acquire),
                })
            })
            .await
    }

    /// Defragment rewrites the page segments that hold dead records on every shard of
    /// this member, each on its own core beside serving, and answers when done. Like
    /// etcd's, it is not replicated and has no deadline of its own (the client's).
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.0
            .run_unbounded(|core| async move {
                let started = std::time::Instant::now();
                core.defragment().await?;
                let sizes = core.db_sizes().await;
                tracing::info!(
                    took = ?started.elapsed(),
                    db_size = sizes.used_bytes,
                    db_size_in_use = sizes.live_bytes,
                    "defragmented"
                );
                Ok(DefragmentResponse {
                    header: Some(core.current_header()),
                })
            })
            .await
    }

    /// Hash: rivet keeps no separate backend file, so this hashes the same versions as
    /// HashKV at the newest revision.
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let credentials = self.0.credentials(&request);
        self.0
            .run_checked(credentials, Rpc::Hash, |core| async move {
                let started = std::time::Instant::now();
                let response = core.hash_kv(0).await?;
                rivet_engine::metrics::MVCC_HASH.observe(started.elapsed());
                Ok(HashResponse {
                    header: response.header,
                    hash: response.hash,
                })
            })
            .await
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let revision = request.into_inner().revision;
        self.0
            .run_checked(credentials, Rpc::HashKv, |core| async move {
                core.hash_kv(revision).await
            })
            .await
    }

    type SnapshotStream = futures::stream::BoxStream<'static, Result<SnapshotResponse, Status>>;

    /// Snapshot streams etcd's backend file at one raft index, read from the page files
    /// while writes go on (`engine/src/etcd_snapshot.rs`): 32 KiB blobs counting down
    /// `remaining_bytes`, then the SHA-256, as etcd 3.4 sends it.
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (tx, rx) = async_channel::bounded(rivet_engine::limits::SNAPSHOT_QUEUE);
        let core = self.0.core();
        glommio::spawn_local(async move {
            core.stream_snapshot(tx).await;
        })
        .detach();
        let stream = futures::StreamExt::map(rx, |item| match item {
            Ok(blob) => Ok(SnapshotResponse {
                header: None,
                remaining_bytes: blob.remaining_bytes,
                blob: blob.blob,
            }),
            Err(error) => Err(Status::from(error)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let target = request.into_inner().target_id;
        self.0
            .run_checked(credentials, Rpc::MoveLeader, |core| async move {
                core.move_leader(target).await?;
                Ok(MoveLeaderResponse {
                    header: Some(core.current_header()),
                })
            })
            .await
    }
}

pub struct ClusterService(pub CoreHandle);

/// etcd's Cluster service header: cluster, member and raft term, no revision.
fn cluster_header(core: &ShardCore) -> rivet_api::etcdserverpb::ResponseHeader {
    core.header(0)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        if !peer_urls_valid(&request.peer_ur_ls) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        self.0
            .run_checked(credentials, Rpc::MemberAdd, |core| async move {
                let result = core
                    .member_change(MemberChange::Add {
                        peer_urls: request.peer_ur_ls,
                        is_learner: request.is_learner,
                    })
                    .await?;
                Ok(MemberAddResponse {
                    header: Some(cluster_header(&core)),
                    member: result.member,
                    members: result.members,
                })
            })
            .await
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let id = request.into_inner().id;
        self.0
            .run_checked(credentials, Rpc::MemberRemove, |core| async move {
                let result = core.member_change(MemberChange::Remove { id }).await?;
                Ok(MemberRemoveResponse {
                    header: Some(cluster_header(&core)),
                    members: result.members,
                })
            })
            .await
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        if !peer_urls_valid(&request.peer_ur_ls) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        self.0
            .run_checked(credentials, Rpc::MemberUpdate, |core| async move {
                let result = core
                    .member_change(MemberChange::Update {
                        id: request.id,
                        peer_urls: request.peer_ur_ls,
                    })
                    .await?;
                Ok(MemberUpdateResponse {
                    header: Some(cluster_header(&core)),
                    members: result.members,
                })
            })
            .await
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let credentials = self.0.credentials(&request);
        self.0
            .run_checked(credentials, Rpc::MemberList, |core| async move {
                let members = core.member_list().await?;
                Ok(MemberListResponse {
                    header: Some(cluster_header(&core)),
                    members,
                })
            })
            .await
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let id = request.into_inner().id;
        self.0
            .run_checked(credentials, Rpc::MemberPromote, |core| async move {
                let result = core.member_change(MemberChange::Promote { id }).await?;
                Ok(MemberPromoteResponse {
                    header: Some(cluster_header(&core)),
                    members: result.members,
                })
            })
            .await
    }
}

/// etcd's `types.NewURLs`, which MemberAdd checks first ("given member URLs are
/// invalid"): at least one URL; each with scheme http, https, unix or unixs, an address
/// of the form host:port, and no path. etcd 3.4 does not check MemberUpdate's URLs and
/// panics applying bad ones; rivet refuses them as MemberAdd does.
fn peer_urls_valid(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|url| peer_url_valid(url.trim()))
}

fn peer_url_valid(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
        return false;
    }
    // The authority ends at the path, query or fragment; userinfo is not part of it.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if after.starts_with('/') {
        let path = after.split(['?', '#']).next().unwrap_or("");
        if !path.is_empty() {
            return false;
        }
    }
    let host_port = authority.rsplit('@').next().unwrap_or("");
    // Go's net.SplitHostPort: a colon is required; an IPv6 host is bracketed.
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed
            .split_once(']')
            .is_some_and(|(_, port)| port.starts_with(':') && !port[1..].contains(':'));
    }
    host_port
        .split_once(':')
        .is_some_and(|(_, port)| !port.contains(':') && !port.contains('['))
}

#[cfg(test)]
mod tests {
    use super::peer_urls_valid;

    #[test]
    fn peer_urls_are_checked_like_etcds_new_urls() {
        let ok = |u: &str| peer_urls_valid(&[u.to_string()]);
        assert!(ok("http://127.0.0.1:2380"));
        assert!(ok("https://host:2380"));
        assert!(ok("http://[::1]:2380"));
        assert!(ok(" http://127.0.0.1:2380 "));
        assert!(!ok("http://127.0.0.1"));
        assert!(!ok("http://127.0.0.1:2380/path"));
        assert!(!ok("not a url"));
        assert!(!ok(""));
        assert!(!ok("ftp://127.0.0.1:2380"));
        assert!(!peer_urls_valid(&[]));
    }
}
