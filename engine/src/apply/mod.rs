//! Turning a committed entry into a response: etcd's applier chain.
//!
//! The replicated state that entries change is one [`ApplyState`]: the sequencer (keys,
//! revisions, the lease table), the alarms and the member table, plus the leader's lease
//! clock, which apply keeps in step with the table. A committed request goes down a chain
//! of [`Apply`] layers, each a decorator of the layer below, as etcd's `applierV3`s are:
//!
//! ```text
//!   corrupt (CORRUPT raised) → capped (NOSPACE raised) → auth → backend
//! ```
//!
//! - [`backend::Backend`] applies every request to the state (etcd's
//!   `applierV3backend`);
//! - [`capped::Capped`] refuses what adds data while NOSPACE is raised (etcd's
//!   `applierV3Capped`), by the one quota rule in [`quota`];
//! - [`corrupt::Corrupt`] refuses keyspace and lease requests while CORRUPT is raised
//!   (etcd's `applierV3Corrupt`);
//! - [`auth::AuthLayer`] applies Auth requests to the auth store and checks client
//!   writes against it with the caller carried in the entry (etcd's `authApplierV3`);
//!   [`chain`] is the one place that stacks them.
//!
//! As in etcd, raising or disarming an alarm swaps the chain ([`Applier::apply`] rebuilds
//! it after every Alarm request), so the layers themselves keep no state.
//!
//! Everything here is deterministic: the same entries give the same responses and the
//! same state on every member and on every replay. The one clock reading (`now`, for the
//! leader's lease deadlines) changes no replicated state.

pub mod alarms;
pub mod auth;
pub mod backend;
pub mod capped;
pub mod corrupt;
pub mod quota;

use std::time::Instant;

use rivet_api::etcdserverpb::{AlarmType, TxnRequest};
use rivet_api::rivetpb::{internal_request, InternalRequest, Member};

use crate::auth::{AuthState, AuthStore, TokenEvent};
use crate::lessor::Lessor;
use crate::membership::MemberTable;
use crate::sequencer::{Outcome, Sequencer};
use alarms::Alarms;

/// The state committed entries change.
pub struct ApplyState {
    /// Keys, revisions, compaction and the lease table.
    pub sequencer: Sequencer,
    pub alarms: Alarms,
    pub members: MemberTable,
    /// The leader's lease deadlines (not replicated; empty on followers): grants,
    /// revokes and forwarded keep-alives move them as they apply.
    pub lessor: Lessor,
    /// Users, roles, the enabled flag and the auth revision.
    pub auth: AuthStore,
    /// What the serving cores must learn about auth since the raft core last looked.
    pub auth_changes: AuthChanges,
}

/// Auth changes the raft core forwards to the serving cores with the apply batches.
#[derive(Debug, Default)]
pub struct AuthChanges {
    /// The auth store changed: send every core the new snapshot.
    pub changed: bool,
    /// Simple tokens assigned or dropped, in apply order.
    pub token_events: Vec<TokenEvent>,
}

/// What a layer knows about the entry besides its request.
pub struct ApplyContext {
    /// The raft index of the entry.
    pub index: u64,
    /// The raft core's clock, for the leader's lease deadlines.
    pub now: Instant,
}

/// One layer of the applier chain.
pub trait Apply {
    /// Applies `request` to `state`, or refuses it, and answers what it produced.
    fn apply(
        &self,
        state: &mut ApplyState,
        request: &InternalRequest,
        context: &ApplyContext,
    ) -> Outcome;

    /// The chain from this layer down, as `capped → backend`.
    fn describe(&self) -> String;
}

/// The chain for the alarms in force (etcd's `newApplierV3` and the alarm checks after
/// it).
pub fn chain(alarms: &Alarms, min_lease_ttl: i64) -> Box<dyn Apply> {
    let mut chain: Box<dyn Apply> = Box::new(backend::Backend { min_lease_ttl });
    // etcd's order: the auth applier sits under the alarm layers, so a write refused
    // for NOSPACE is refused before its permissions are looked at.
    chain = Box::new(auth::AuthLayer { inner: chain });
    if alarms.is_raised(AlarmType::Nospace) {
        chain = Box::new(capped::Capped { inner: chain });
    }
    // The corrupt applier goes on top: while CORRUPT is raised, no keyspace or lease
    // request applies.
    if alarms.is_raised(AlarmType::Corrupt) {
        chain = Box::new(corrupt::Corrupt { inner: chain });
    }
    chain
}

/// Owns the replicated state and the chain in force, and applies committed entries.
pub struct Applier {
    state: ApplyState,
    chain: Box<dyn Apply>,
    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
    min_lease_ttl: i64,
}

impl Applier {
    pub fn new(state: ApplyState, min_lease_ttl: i64) -> Applier {
        let chain = chain(&state.alarms, min_lease_ttl);
        Applier {
            state,
            chain,
            min_lease_ttl,
        }
    }

    /// Applies one committed request.
    pub fn apply(&mut self, request: &InternalRequest, context: &ApplyContext) -> Outcome {
        let outcome = self.chain.apply(&mut self.state, request, context);
        if matches!(request.request, Some(internal_request::Request::Alarm(_))) {
            // etcd swaps its applier when the alarms change.
            self.chain = chain(&self.state.alarms, self.min_lease_ttl);
        }
        outcome
    }

    /// Applies a committed membership change to the member table: an added member (its
    /// record travels in the change's context), a promoted learner, a removed member.
    pub fn apply_member_change(&mut self, change: MemberTableChange) {
        let members = &mut self.state.members;
        match change {
            MemberTableChange::Add { id, member } => {
                if members.contains(id) {
                    members.promote(id);
                } else if let Some(member) = member {
                    members.add(member);
                }
            }
            MemberTableChange::Remove { id } => members.remove(id),
        }
    }

    /// A txn without writes, evaluated on the current state without a log entry (as
    /// etcd does); it changes nothing.
    pub fn read_only_txn(&mut self, request: &TxnRequest) -> Outcome {
        let outcome = self.state.sequencer.apply_txn(request);
        debug_assert!(outcome.mutations.is_empty());
        outcome
    }

    pub fn state(&self) -> &ApplyState {
        &self.state
    }

    pub fn sequencer(&self) -> &Sequencer {
        &self.state.sequencer
    }

    /// See [`Sequencer::release_segments`]; called between entries.
    pub fn release_segments(&mut self, released: &[(usize, u32)]) -> usize {
        self.state.sequencer.release_segments(released)
    }

    pub fn members(&self) -> &MemberTable {
        &self.state.members
    }

    pub fn alarms(&self) -> &Alarms {
        &self.state.alarms
    }

    pub fn lessor(&self) -> &Lessor {
        &self.state.lessor
    }

    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.state.lessor
    }

    /// This member became leader: every lease's clock restarts from the lease table,
    /// extended by `extend` (see [`Lessor::promote`]).
    pub fn promote_lessor(&mut self, now: Instant, extend: std::time::Duration) {
        let state = &mut self.state;
        state.lessor.promote(state.sequencer.leases(), now, extend);
    }

    /// The lease table as checkpoint markers and snapshots record it.
    pub fn lease_records(&self) -> Vec<rivet_api::rivetpb::LeaseRecord> {
        self.state
            .sequencer
            .leases()
            .iter()
            .map(|(id, lease)| rivet_api::rivetpb::LeaseRecord {
                id: *id,
                ttl: lease.ttl,
                remaining_ttl: lease.remaining_ttl,
            })
            .collect()
    }

    /// The auth store (checkpoints and snapshots record it).
    pub fn auth(&self) -> &AuthState {
        self.state.auth.state()
    }

    /// The auth store as it is now, to keep (it never changes afterwards).
    pub fn auth_snapshot(&self) -> std::sync::Arc<AuthState> {
        self.state.auth.snapshot()
    }

    /// The auth changes since the last call: a new snapshot for the serving cores when
    /// the store changed, and the token events in apply order.
    pub fn take_auth_changes(&mut self) -> (Option<std::sync::Arc<AuthState>>, Vec<TokenEvent>) {
        let changes = std::mem::take(&mut self.state.auth_changes);
        let snapshot = changes.changed.then(|| self.state.auth.snapshot());
        (snapshot, changes.token_events)
    }

    /// Replaces the replicated state (a snapshot from the leader was installed); the
    /// leader's lease clock stays.
    pub fn install(
        &mut self,
        sequencer: Sequencer,
        alarms: Alarms,
        members: MemberTable,
        auth: AuthState,
    ) {
        self.state.sequencer = sequencer;
        self.state.alarms = alarms;
        self.state.members = members;
        self.state.auth = AuthStore::from_state(auth);
        // Every token dies with a replaced store; the cores get the new one.
        self.state.auth_changes.changed = true;
        self.state.auth_changes.token_events = vec![TokenEvent::InvalidateAll];
        self.chain = chain(&self.state.alarms, self.min_lease_ttl);
    }

    /// The chain in force, as `capped → backend`.
    pub fn describe_chain(&self) -> String {
        self.chain.describe()
    }
}

/// A committed raft configuration change, as the member table sees it.
pub enum MemberTableChange {
    /// A voter or learner added, or a learner promoted (`AddNode` of a known member).
    Add {
        id: u64,
        member: Option<Member>,
    },
    Remove {
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EtcdError;
    use crate::sequencer::Applied;
    use rivet_api::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, PutRequest};
    use rivet_api::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest};

    fn applier() -> Applier {
        let state = ApplyState {
            sequencer: Sequencer::new(),
            alarms: Alarms::default(),
            members: MemberTable::default(),
            lessor: Lessor::default(),
            auth: AuthStore::new(),
            auth_changes: AuthChanges::default(),
        };
        Applier::new(state, 2)
    }

    fn apply(applier: &mut Applier, request: internal_request::Request) -> Outcome {
        let request = InternalRequest {
            member_id: 1,
            id: 0,
            request: Some(request),
            caller: None,
        };
        let context = ApplyContext {
            index: 1,
            now: Instant::now(),
        };
        applier.apply(&request, &context)
    }

    fn alarm(action: AlarmAction) -> internal_request::Request {
        internal_request::Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 1,
            alarm: AlarmType::Nospace as i32,
        })
    }

    fn put(key: &'static str) -> internal_request::Request {
        internal_request::Request::Put(PutRequest {
            key: key.into(),
            value: "v".into(),
            ..Default::default()
        })
    }

    #[test]
    fn nospace_swaps_in_the_capped_applier_until_disarmed() {
        let mut applier = applier();
        assert_eq!(applier.describe_chain(), "auth → backend");
        assert!(matches!(
            apply(&mut applier, put("a")).result,
            Some(Ok(Applied::Put(_)))
        ));
        apply(&mut applier, alarm(AlarmAction::Activate));
        assert_eq!(applier.describe_chain(), "capped → auth → backend");
        let refused = apply(&mut applier, put("b"));
        assert_eq!(refused.result, Some(Err(EtcdError::NoSpace)));
        assert!(refused.mutations.is_empty());
        let grant = internal_request::Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 });
        assert_eq!(
            apply(&mut applier, grant).result,
            Some(Err(EtcdError::NoSpace))
        );
        // Deletes still apply: they are how an operator makes room.
        let delete = internal_request::Request::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        });
        assert_eq!(apply(&mut applier, delete).mutations.len(), 1);
        apply(&mut applier, alarm(AlarmAction::Deactivate));
        assert_eq!(applier.describe_chain(), "auth → backend");
        assert!(matches!(
            apply(&mut applier, put("b")).result,
            Some(Ok(Applied::Put(_)))
        ));
    }

    #[test]
    fn corrupt_refuses_keyspace_and_lease_requests_until_disarmed() {
        let mut applier = applier();
        let corrupt = |action: AlarmAction| {
            internal_request::Request::Alarm(AlarmRequest {
                action: action as i32,
                member_id: 1,
                alarm: AlarmType::Corrupt as i32,
            })
        };
        apply(&mut applier, corrupt(AlarmAction::Activate));
        assert_eq!(applier.describe_chain(), "corrupt → auth → backend");
        apply(&mut applier, alarm(AlarmAction::Activate));
        assert_eq!(
            applier.describe_chain(),
            "corrupt → capped → auth → backend"
        );
        let refused = apply(&mut applier, put("a"));
        assert_eq!(refused.result, Some(Err(EtcdError::Corrupt)));
        assert!(refused.mutations.is_empty());
        let delete = internal_request::Request::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        });
        assert_eq!(
            apply(&mut applier, delete).result,
            Some(Err(EtcdError::Corrupt))
        );
        apply(&mut applier, corrupt(AlarmAction::Deactivate));
        apply(&mut applier, alarm(AlarmAction::Deactivate));
        assert_eq!(applier.describe_chain(), "auth → backend");
        assert!(matches!(
            apply(&mut applier, put("a")).result,
            Some(Ok(Applied::Put(_)))
        ));
    }

    #[test]
    fn member_changes_update_the_table() {
        let mut applier = applier();
        let member = Member {
            id: 5,
            is_learner: true,
            ..Default::default()
        };
        applier.apply_member_change(MemberTableChange::Add {
            id: 5,
            member: Some(member),
        });
        assert!(applier.members().get(5).is_some_and(|m| m.is_learner));
        applier.apply_member_change(MemberTableChange::Add {
            id: 5,
            member: None,
        });
        assert!(applier.members().get(5).is_some_and(|m| !m.is_learner));
        applier.apply_member_change(MemberTableChange::Remove { id: 5 });
        assert!(applier.members().is_removed(5));
    }
}
