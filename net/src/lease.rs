//! The Lease service. Grants and revokes go through raft; keep-alives renew the lease on
//! the leader's clock and answer its TTL.

use std::pin::Pin;

use futures::channel::mpsc;
use futures::{SinkExt, Stream};
use rivet_api::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use rivet_engine::limits;
use tonic::{Request, Response, Status, Streaming};

use crate::services::CoreHandle;
use rivet_engine::auth::request::{check_lease_keys_readable, check_lease_renew, check_rpc, Rpc};
use rivet_engine::core::ShardCore;
use rivet_engine::error::EtcdError;

use crate::services::Credentials;

/// A keep-alive with auth on: write on every key attached to the lease (whoever could
/// not revoke it may not keep it alive), as later etcd 3.4 checks it (`checkLeaseRenew`).
async fn check_keep_alive(
    core: &ShardCore,
    credentials: &Credentials,
    id: i64,
) -> Result<(), EtcdError> {
    if !core.auth_enabled() && credentials.token.is_none() {
        return Ok(());
    }
    let caller = core
        .caller(
            credentials.token.as_deref(),
            credentials.common_name.as_deref(),
        )
        .await?;
    let state = core.auth_state();
    if !state.is_enabled() {
        return Ok(());
    }
    let keys = core
        .lease_time_to_live(rivet_api::etcdserverpb::LeaseTimeToLiveRequest { id, keys: true })
        .await?
        .keys;
    check_lease_renew(&state, caller.as_ref(), &keys)
}

pub struct LeaseService(pub CoreHandle);

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_checked(credentials, Rpc::LeaseGrant, |core| async move {
                core.lease_grant(request).await
            })
            .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                check_rpc(&core.auth_state(), caller.as_ref(), Rpc::LeaseRevoke)?;
                core.lease_revoke_as(request, caller).await
            })
            .await
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let credentials = self.0.credentials(&request);
        let mut inbound = request.into_inner();
        let (mut out, responses) = mpsc::channel(limits::WATCH_STREAM_QUEUE);
        let core = self.0.core();
        glommio::spawn_local(async move {
            loop {
                let request = match inbound.message().await {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        // Ends the stream with what could not be read, as etcd does.
                        let _ = out.send(Err(crate::http::go_stream_status(status))).await;
                        break;
                    }
                };
                let response = async {
                    check_keep_alive(&core, &credentials, request.id).await?;
                    core.lease_keep_alive(request.id).await
                }
                .await
                .map_err(Status::from);
                let failed = response.is_err();
                if out.send(response).await.is_err() || failed {
                    break;
                }
            }
        })
        .detach();
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let credentials = self.0.credentials(&request);
        let request = request.into_inner();
        self.0
            .run_as(credentials, |core, caller| async move {
                // Later etcd 3.4 (`requireAuthInfo`): credentials even without keys.
                core.auth_state().require_credentials(caller.as_ref())?;
                let keys = request.keys;
                let response = core.lease_time_to_live(request).await?;
                // The keys of a lease are answered only to who may read them all.
                if keys {
                    let state = core.auth_state();
                    check_lease_keys_readable(&state, caller.as_ref(), &response.keys)?;
                }
                Ok(response)
            })
            .await
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let credentials = self.0.credentials(&request);
        self.0
            .run_as(credentials, |core, caller| async move {
                core.lease_leases(caller.as_ref()).await
            })
            .await
    }
}
