//! etcd's capped applier (`applierV3Capped`): while the NOSPACE alarm is raised, nothing
//! that adds data applies — puts, lease grants, txns with a put — and answers
//! `etcdserver: mvcc: database space exceeded`. Reads, deletes and compactions still
//! apply: they are how an operator makes room before disarming the alarm.

use rivet_api::rivetpb::InternalRequest;

use super::quota;
use super::{Apply, ApplyContext, ApplyState};
use crate::error::EtcdError;
use crate::sequencer::Outcome;

pub struct Capped {
    pub inner: Box<dyn Apply>,
}

impl Apply for Capped {
    fn apply(
        &self,
        state: &mut ApplyState,
        request: &InternalRequest,
        context: &ApplyContext,
    ) -> Outcome {
        let adds_data = request
            .request
            .as_ref()
            .is_some_and(|r| quota::cost(r).adds_data());
        if adds_data {
            return Outcome::failed(EtcdError::NoSpace);
        }
        self.inner.apply(state, request, context)
    }

    fn describe(&self) -> String {
        format!("capped → {}", self.inner.describe())
    }
}
