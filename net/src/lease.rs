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
use rivet_engine::auth::request::{check_rpc, Rpc};

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
        let mut inbound = request.into_inner();
        let (mut out, responses) = mpsc::channel(limits::WATCH_STREAM_QUEUE);
        let core = self.0.core();
        glommio::spawn_local(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let response = core
                    .lease_keep_alive(request.id)
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
        let request = request.into_inner();
        self.0
            .run(|core| async move { core.lease_time_to_live(request).await })
            .await
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.0
            .run(|core| async move { core.lease_leases().await })
            .await
    }
}
