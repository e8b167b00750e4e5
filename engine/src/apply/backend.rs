//! The bottom of the applier chain (etcd's `applierV3backend`): every request applied to
//! the replicated state, with the response it gives.

use rivet_api::etcdserverpb::AlarmResponse;
use rivet_api::rivetpb::{internal_request::Request, InternalRequest};

use super::{Apply, ApplyContext, ApplyState};
use crate::sequencer::{Applied, Outcome};

pub struct Backend {
    /// etcd's minimum lease TTL: shorter grants are raised to it.
    pub min_lease_ttl: i64,
}

impl Apply for Backend {
    fn apply(
        &self,
        state: &mut ApplyState,
        request: &InternalRequest,
        context: &ApplyContext,
    ) -> Outcome {
        let sequencer = &mut state.sequencer;
        match &request.request {
            Some(Request::Put(put)) => sequencer.apply_put(put),
            Some(Request::DeleteRange(delete)) => sequencer.apply_delete(delete),
            Some(Request::Txn(txn)) => sequencer.apply_txn(txn),
            Some(Request::Compaction(compaction)) => sequencer.apply_compaction(compaction),
            Some(Request::LeaseGrant(grant)) => {
                let outcome = sequencer.apply_lease_grant(grant, self.min_lease_ttl);
                if let Some(Ok(Applied::LeaseGrant(granted))) = &outcome.result {
                    state.lessor.granted(granted.id, granted.ttl, context.now);
                }
                outcome
            }
            Some(Request::LeaseRevoke(revoke)) => {
                state.lessor.revoked(revoke.id);
                sequencer.apply_lease_revoke(revoke)
            }
            // A keep-alive that reached a follower: the leader renews the lease when it
            // applies it (only the leader keeps lease clocks).
            Some(Request::LeaseKeepAlive(keep_alive)) => {
                let ttl = sequencer.lease(keep_alive.id).map_or(0, |l| l.ttl);
                if ttl > 0 {
                    state.lessor.renew(keep_alive.id, ttl, context.now);
                }
                Outcome::applied(Applied::LeaseKeepAlive(ttl))
            }
            Some(Request::LeaseCheckpoint(checkpoint)) => {
                sequencer.apply_lease_checkpoint(checkpoint)
            }
            Some(Request::Alarm(alarm)) => Outcome::applied(Applied::Alarm(AlarmResponse {
                header: None,
                alarms: state.alarms.apply(alarm),
            })),
            Some(Request::MemberAttributes(attributes)) => {
                state.members.set_attributes(attributes);
                Outcome::default()
            }
            Some(Request::MemberUpdate(member)) => {
                state
                    .members
                    .update_peer_urls(member.id, member.peer_urls.clone());
                Outcome::default()
            }
            // Applied by the auth layer above; never reaches here.
            Some(Request::Auth(_)) | None => Outcome::default(),
        }
    }

    fn describe(&self) -> String {
        "backend".into()
    }
}
