//! The leader's lease clock on the raft core (`crate::lessor`): keep-alives, remaining
//! TTLs, expiry turned into revoke entries, and the remaining TTLs checkpointed into the
//! log now and then. The lease table itself is replicated state (the applier's).

use futures::channel::oneshot;
use rivet_api::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use rivet_api::rivetpb::internal_request;

use super::RaftCore;
use crate::error::EtcdError;
use crate::limits;
use crate::messages::LeaseTtl;

impl RaftCore {
    /// A keep-alive on this member: the lease's TTL (0 for an unknown lease, as etcd
    /// answers), or `NotLeader` on a follower, which sends it through the log instead.
    pub(super) fn keep_alive(&mut self, id: i64) -> Result<i64, EtcdError> {
        if !self.applier.lessor().is_primary() {
            return Err(EtcdError::NotLeader);
        }
        let Some(ttl) = self.applier.sequencer().lease(id).map(|lease| lease.ttl) else {
            return Ok(0);
        };
        let now = self.clock.now();
        if self.applier.lessor_mut().renew(id, ttl, now) {
            Ok(ttl)
        } else {
            Ok(0)
        }
    }

    /// LeaseTimeToLive. A follower knows the TTL only as of the last checkpoint; like
    /// etcd, it asks the leader (and answers what it knows if it can't).
    pub(super) fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
        reply: oneshot::Sender<LeaseTtl>,
    ) {
        let local = self.time_to_live(id, keys);
        match self.leader_client_url() {
            Some(url) if !self.applier.lessor().is_primary() => {
                self.forward.lease_time_to_live(url, id, keys, local, reply)
            }
            _ => {
                let _ = reply.send(local);
            }
        }
    }

    /// etcd's LeaseTimeToLive: TTL -1 (and no error) for a lease that does not exist.
    fn time_to_live(&self, id: i64, with_keys: bool) -> LeaseTtl {
        let Some(lease) = self.applier.sequencer().lease(id) else {
            return LeaseTtl {
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            };
        };
        let ttl = match self.applier.lessor().remaining(id, self.clock.now()) {
            Some(remaining) => remaining.as_secs() as i64,
            None if lease.remaining_ttl > 0 => lease.remaining_ttl,
            None => lease.ttl,
        };
        LeaseTtl {
            id,
            ttl,
            granted_ttl: lease.ttl,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Leadership changed: a new leader restarts every lease's clock (spread out,
    /// ETCD_LESSONS 9); a former leader keeps none.
    pub(super) fn leadership_changed(&mut self, leading: bool) {
        let now = self.clock.now();
        let election = self.election_timeout();
        let state = self.applier.lessor().is_primary();
        if leading && !state {
            self.applier.promote_lessor(now, election);
            self.last_lease_checkpoint = now;
        } else if !leading && state {
            self.applier.lessor_mut().demote();
        }
    }

    /// On the leader: proposes a revoke for each expired lease (at most the revoke rate
    /// per second) and, now and then, a checkpoint of the remaining TTLs.
    pub(super) fn expire_leases(&mut self) {
        if !self.applier.lessor().is_primary() {
            return;
        }
        let now = self.clock.now();
        let per_tick = (limits::LEASE_REVOKES_PER_SECOND as u128
            * self.config.heartbeat_interval.as_millis()
            / 1000)
            .max(1) as usize;
        for id in self.applier.lessor_mut().expired(now, per_tick) {
            let revoke = internal_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
            if self.propose_internal(revoke).is_err() {
                self.applier.lessor_mut().retry(id);
            }
        }
        if now.duration_since(self.last_lease_checkpoint) >= limits::LEASE_CHECKPOINT_INTERVAL {
            self.last_lease_checkpoint = now;
            let checkpoints = self.applier.lessor().checkpoints(now);
            for batch in checkpoints.chunks(limits::LEASE_CHECKPOINT_BATCH) {
                let checkpoint =
                    internal_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                        checkpoints: batch.to_vec(),
                    });
                let _ = self.propose_internal(checkpoint);
            }
        }
    }
}
