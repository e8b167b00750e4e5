//! etcd's backend quota (`etcdserver/quota.go`), as one classification of requests that
//! both places that enforce it use:
//!
//! - when a member proposes a request: a put, a txn or a lease grant is refused with
//!   `NoSpace` (and the NOSPACE alarm raised) when the store plus the request would
//!   exceed `--quota-backend-bytes` — etcd's `quotaKVServer`, which checks every txn,
//!   even one without a put;
//! - when an entry is applied while NOSPACE is raised: the capped applier refuses what
//!   adds data — a put, a lease grant, a txn with a put directly in a branch (etcd 3.4's
//!   `costTxn` does not look into nested txns) — while deletes, compactions and txns
//!   without a direct put still apply.

use rivet_api::etcdserverpb::{request_op, TxnRequest};
use rivet_api::rivetpb::internal_request::Request;

/// What the quota makes of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaCost {
    /// Not subject to the quota (deletes, compactions, alarms, lease revokes, ...).
    Exempt,
    /// Checked against the quota when proposed, but adds no data (a txn without a put).
    Checked,
    /// Adds data: checked when proposed, refused while NOSPACE is raised.
    AddsData,
}

/// The quota class of `request`.
pub fn cost(request: &Request) -> QuotaCost {
    match request {
        Request::Put(_) | Request::LeaseGrant(_) => QuotaCost::AddsData,
        Request::Txn(txn) if txn_has_put(txn) => QuotaCost::AddsData,
        Request::Txn(_) => QuotaCost::Checked,
        _ => QuotaCost::Exempt,
    }
}

/// Whether a proposal of `request_bytes` and quota class `cost` fits the quota, given the
/// store's size now. A quota of 0 means none.
pub fn admits(cost: QuotaCost, request_bytes: usize, db_size_bytes: u64, quota_bytes: u64) -> bool {
    quota_bytes == 0
        || cost == QuotaCost::Exempt
        || db_size_bytes + request_bytes as u64 <= quota_bytes
}

/// etcd 3.4's `costTxn` counts the puts directly in either branch, not those of nested
/// txns: a txn whose puts are all nested costs nothing and applies under NOSPACE.
fn txn_has_put(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .any(|op| matches!(&op.request, Some(request_op::Request::RequestPut(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_api::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RequestOp};

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn direct_puts_in_a_txn_add_data_nested_ones_do_not() {
        let delete = op(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest::default(),
        ));
        let put = op(request_op::Request::RequestPut(PutRequest::default()));
        let deletes_only = TxnRequest {
            success: vec![delete.clone()],
            ..Default::default()
        };
        let direct_put = TxnRequest {
            failure: vec![put.clone()],
            ..Default::default()
        };
        let nested_put = TxnRequest {
            failure: vec![op(request_op::Request::RequestTxn(TxnRequest {
                success: vec![put],
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert_eq!(
            cost(&Request::Txn(deletes_only.clone())),
            QuotaCost::Checked
        );
        assert_eq!(cost(&Request::Txn(direct_put)), QuotaCost::AddsData);
        // As etcd 3.4's costTxn: only the puts directly in a branch count.
        assert_eq!(cost(&Request::Txn(nested_put)), QuotaCost::Checked);
        assert_eq!(
            cost(&Request::LeaseGrant(LeaseGrantRequest::default())),
            QuotaCost::AddsData
        );
        assert_eq!(
            cost(&Request::DeleteRange(DeleteRangeRequest::default())),
            QuotaCost::Exempt
        );
        // etcd's quota server checks every txn, even one without a put.
        let txn = cost(&Request::Txn(deletes_only));
        assert!(!admits(txn, 10, 95, 100));
        let delete = cost(&Request::DeleteRange(DeleteRangeRequest::default()));
        assert!(admits(delete, 10, 95, 100));
        let put = cost(&Request::Put(PutRequest::default()));
        assert!(admits(put, 10, 90, 100));
        assert!(!admits(put, 11, 90, 100));
        assert!(admits(put, 11, 90, 0), "a quota of 0 is none");
    }
}
