//! etcd's auth applier (`authApplierV3`): applies Auth service requests to the auth store
//! and, while auth is on, checks every client write against the store *at this entry*
//! with the caller the proposing member put in the entry (etcd's request header):
//!
//! - Put, DeleteRange, a Txn with writes: the permissions of [`crate::auth::request`];
//!   a caller whose token carried an older auth revision gets `revision of auth store is
//!   old`, none at all `user name is empty`;
//! - LeaseRevoke from a client: write on every key attached to the lease (unless root);
//!   a revoke the leader proposes at expiry carries no caller and is not checked.
//!
//! A refused request changes nothing. Everything else passes to the layer below.

use bytes::Bytes;
use rivet_api::rivetpb::{internal_request::Request, InternalRequest};

use super::{Apply, ApplyContext, ApplyState};
use crate::auth::request::{self, LeaseKeys};
use crate::auth::{AuthApplyError, AuthInfo};
use crate::sequencer::{Applied, Outcome, Sequencer};

pub struct AuthLayer {
    pub inner: Box<dyn Apply>,
}

/// The keys attached to a lease, as the sequencer holds them at this entry.
struct SequencerLeases<'s>(&'s Sequencer);

impl LeaseKeys for SequencerLeases<'_> {
    fn keys_of(&self, lease: i64) -> Vec<Bytes> {
        self.0
            .lease(lease)
            .map(|entry| entry.keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Apply for AuthLayer {
    fn apply(
        &self,
        state: &mut ApplyState,
        request: &InternalRequest,
        context: &ApplyContext,
    ) -> Outcome {
        if let Some(Request::Auth(auth)) = &request.request {
            let applied = state.auth.apply(auth, context.index);
            // The serving cores get the new state with this entry's apply batch (a
            // refused request changed nothing, but sending the same state is harmless).
            state.auth_changes.changed |= applied.result.is_ok();
            state
                .auth_changes
                .token_events
                .extend(applied.token_events.iter().cloned());
            return match applied.result {
                Ok(response) => Outcome::applied(Applied::Auth(Box::new(response))),
                Err(AuthApplyError::Etcd(error)) => Outcome::failed(error),
                Err(AuthApplyError::StalePasswordCheck) => {
                    Outcome::applied(Applied::AuthStalePasswordCheck)
                }
            };
        }
        let auth = state.auth.state();
        if auth.is_enabled() {
            let caller = AuthInfo::from_caller(request.caller.as_ref());
            let leases = SequencerLeases(&state.sequencer);
            let checked = match &request.request {
                Some(Request::Put(put)) => request::check_put(auth, &caller, put, &leases),
                Some(Request::DeleteRange(delete)) => {
                    request::check_delete_range(auth, &caller, delete)
                }
                Some(Request::Txn(txn)) => request::check_txn(auth, &caller, txn, &leases),
                Some(Request::LeaseRevoke(revoke)) if request.caller.is_some() => {
                    request::check_lease_keys_writable(auth, &caller, &leases.keys_of(revoke.id))
                }
                _ => Ok(()),
            };
            if let Err(error) = checked {
                return Outcome::failed(error);
            }
        }
        self.inner.apply(state, request, context)
    }

    fn describe(&self) -> String {
        format!("auth → {}", self.inner.describe())
    }
}
