//! etcd's corrupt applier (`applierV3Corrupt`): while the CORRUPT alarm is raised,
//! nothing that reads or changes the keyspace or the leases applies — puts, deletes,
//! txns, compactions, lease grants and revokes answer `etcdserver: corrupt cluster`
//! (DataLoss). Alarms (disarming CORRUPT), membership and lease checkpoints still apply.

use rivet_api::rivetpb::internal_request::Request;
use rivet_api::rivetpb::InternalRequest;

use super::{Apply, ApplyContext, ApplyState};
use crate::error::EtcdError;
use crate::sequencer::Outcome;

pub struct Corrupt {
    pub inner: Box<dyn Apply>,
}

impl Apply for Corrupt {
    fn apply(
        &self,
        state: &mut ApplyState,
        request: &InternalRequest,
        context: &ApplyContext,
    ) -> Outcome {
        let refused = matches!(
            request.request,
            Some(
                Request::Put(_)
                    | Request::DeleteRange(_)
                    | Request::Txn(_)
                    | Request::Compaction(_)
                    | Request::LeaseGrant(_)
                    | Request::LeaseRevoke(_)
            )
        );
        if refused {
            return Outcome::failed(EtcdError::Corrupt);
        }
        self.inner.apply(state, request, context)
    }

    fn describe(&self) -> String {
        format!("corrupt → {}", self.inner.describe())
    }
}
