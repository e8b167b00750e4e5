//! The requests a follower hands to the leader (the engine's `LeaderForward`): etcd sends
//! them over its peer URL; rivet calls the leader's client URL with gRPC, from the raft
//! core's runtime, without making the raft core wait.

use std::time::Duration;

use futures::channel::oneshot;
use rivet_api::etcdserverpb::{cluster_client::ClusterClient, MemberPromoteRequest};
use rivet_api::etcdserverpb::{lease_client::LeaseClient, LeaseTimeToLiveRequest};
use rivet_engine::error::EtcdError;
use rivet_engine::messages::{LeaseTtl, MemberChangeResult};
use rivet_engine::raft::LeaderForward;

/// How long a follower waits for the leader to answer a request handed to it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards over gRPC; must be used on a tokio runtime (the raft core's).
pub struct GrpcForward;

impl LeaderForward for GrpcForward {
    fn lease_time_to_live(
        &self,
        url: String,
        id: i64,
        keys: bool,
        local: LeaseTtl,
        reply: oneshot::Sender<LeaseTtl>,
    ) {
        tokio::spawn(async move {
            let ttl = within_timeout(time_to_live(url, id, keys)).await;
            let _ = reply.send(ttl.unwrap_or(local));
        });
    }

    fn promote(
        &self,
        url: String,
        id: u64,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        tokio::spawn(async move {
            let _ = reply.send(within_timeout(promote(url, id)).await);
        });
    }
}

async fn within_timeout<T>(
    call: impl std::future::Future<Output = Result<T, EtcdError>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(FORWARD_TIMEOUT, call)
        .await
        .unwrap_or(Err(EtcdError::Timeout))
}

/// A gRPC channel to the leader's client URL.
async fn leader_channel(url: &str) -> Result<tonic::transport::Channel, EtcdError> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| EtcdError::Internal(format!("leader client URL {url}: {e}")))?
        .connect()
        .await
        .map_err(|_| EtcdError::NoLeader)
}

fn forwarded(status: tonic::Status) -> EtcdError {
    EtcdError::Forwarded(status.code(), status.message().into())
}

/// Asks the leader for a lease's remaining TTL: only its lessor's clock is exact.
async fn time_to_live(url: String, id: i64, keys: bool) -> Result<LeaseTtl, EtcdError> {
    let response = LeaseClient::new(leader_channel(&url).await?)
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
        .await
        .map_err(forwarded)?
        .into_inner();
    Ok(LeaseTtl {
        id: response.id,
        ttl: response.ttl,
        granted_ttl: response.granted_ttl,
        keys: response.keys,
    })
}

/// Asks the leader to promote learner `id`, and answers what it did.
async fn promote(url: String, id: u64) -> Result<MemberChangeResult, EtcdError> {
    let response = ClusterClient::new(leader_channel(&url).await?)
        .member_promote(MemberPromoteRequest { id })
        .await
        .map_err(forwarded)?;
    Ok(MemberChangeResult {
        member: None,
        members: response.into_inner().members,
    })
}
