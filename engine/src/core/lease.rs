//! The Lease service on a shard core. The lease table is replicated state on the raft
//! core; only the leader keeps lease clocks (see `crate::lessor`).

use rivet_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use rivet_api::rivetpb::internal_request;

use bytes::Bytes;

use super::ShardCore;
use crate::auth::request::check_lease_keys_readable;
use crate::auth::AuthInfo;
use crate::error::EtcdError;
use crate::messages::RaftCommand;
use crate::sequencer::Applied;

impl ShardCore {
    /// LeaseGrant; a lease ID of 0 is chosen here, before proposing, so that every
    /// replica applies the same one.
    pub async fn lease_grant(
        &self,
        mut request: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        if request.id == 0 {
            request.id = self.new_lease_id();
        }
        self.write(internal_request::Request::LeaseGrant(request))
            .await
    }

    pub async fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        self.lease_revoke_as(request, None).await
    }

    /// LeaseRevoke as `caller`: the auth applier checks write on the lease's keys.
    pub async fn lease_revoke_as(
        &self,
        request: LeaseRevokeRequest,
        caller: Option<crate::auth::AuthInfo>,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        self.write_as(
            internal_request::Request::LeaseRevoke(request),
            caller.as_ref(),
        )
        .await
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, EtcdError> {
        let ttl = match self
            .ask(|reply| RaftCommand::LeaseKeepAlive { id, reply })
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
                    other => return Err(super::unexpected(other)),
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
        let ttl = self
            .ask(|reply| RaftCommand::LeaseTimeToLive {
                id: request.id,
                keys: request.keys,
                reply,
            })
            .await?;
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.current_header()),
            id: ttl.id,
            ttl: ttl.ttl,
            granted_ttl: ttl.granted_ttl,
            keys: ttl.keys,
        })
    }

    /// LeaseLeases; with auth on, as `caller`: later etcd 3.4 (`checkLeaseLeases`)
    /// answers only a caller who may read every key attached to any lease (root always).
    pub async fn lease_leases(
        &self,
        caller: Option<&AuthInfo>,
    ) -> Result<LeaseLeasesResponse, EtcdError> {
        let state = self.auth_state();
        let check = state.is_enabled() && caller.is_none_or(|c| state.check_admin(c).is_err());
        let leases = self
            .ask(|reply| RaftCommand::LeaseLeases { keys: check, reply })
            .await?;
        if check {
            let keys: Vec<Bytes> = leases.iter().flat_map(|(_, keys)| keys.clone()).collect();
            check_lease_keys_readable(&state, caller, &keys)?;
        }
        Ok(LeaseLeasesResponse {
            header: Some(self.current_header()),
            leases: leases
                .into_iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
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
}
