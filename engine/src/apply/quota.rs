//! etcd's backend quota (`etcdserver/quota.go`), as one classification of requests that
//! both places that enforce it use:
//!
//! - when a member proposes a request: a put, a txn or a lease grant is refused with
//!   `NoSpace` (and the NOSPACE alarm raised) unless the store's size plus the request's
//!   cost stays below `--quota-backend-bytes` — etcd's `quotaKVServer`, which checks
//!   every txn, even one without a put. The size is `dbSize` (etcd: its backend file's
//!   size, free pages included; rivet: the page files' written bytes, dead records
//!   included until garbage collection drops them), the cost etcd's estimate: 256 bytes
//!   of metadata plus key and value per put, the larger branch of a txn, 64 bytes per
//!   lease;
//! - when an entry is applied while NOSPACE is raised: the capped applier refuses what
//!   adds data — a put, a lease grant, a txn with a put directly in a branch (etcd 3.4's
//!   `costTxn` does not look into nested txns) — while deletes, compactions and txns
//!   without a direct put still apply.

use rivet_api::etcdserverpb::{request_op, PutRequest, TxnRequest};
use rivet_api::rivetpb::internal_request::Request;

/// etcd's estimate of what a key's metadata costs the backend (`kvOverhead`).
const KV_OVERHEAD_BYTES: u64 = 256;
/// etcd's estimate of what a lease costs the backend (`leaseOverhead`).
const LEASE_OVERHEAD_BYTES: u64 = 64;

/// What the quota makes of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaCost {
    /// Not subject to the quota (deletes, compactions, alarms, lease revokes, ...).
    Exempt,
    /// Checked against the quota when proposed with etcd's cost, but adds no data (a
    /// txn without a put: cost 0).
    Checked(u64),
    /// Adds data: checked when proposed with etcd's cost, refused while NOSPACE is raised.
    AddsData(u64),
}

impl QuotaCost {
    /// Whether the request adds data (refused while NOSPACE is raised).
    pub fn adds_data(self) -> bool {
        matches!(self, QuotaCost::AddsData(_))
    }
}

/// The quota class and etcd's cost of `request`.
pub fn cost(request: &Request) -> QuotaCost {
    match request {
        Request::Put(put) => QuotaCost::AddsData(put_cost(put)),
        Request::LeaseGrant(_) => QuotaCost::AddsData(LEASE_OVERHEAD_BYTES),
        Request::Txn(txn) if txn_has_put(txn) => QuotaCost::AddsData(txn_cost(txn)),
        Request::Txn(txn) => QuotaCost::Checked(txn_cost(txn)),
        _ => QuotaCost::Exempt,
    }
}

/// Whether a proposal of quota class `cost` fits the quota, given the store's size now:
/// etcd's `backendQuota.Available`, `size + cost < quota`. A quota of 0 means none. The
/// encoded size of the request is not etcd's measure (its `--max-request-bytes` check is
/// separate) and is not used.
pub fn admits(
    cost: QuotaCost,
    _request_bytes: usize,
    db_size_bytes: u64,
    quota_bytes: u64,
) -> bool {
    let charge = match cost {
        QuotaCost::Exempt => return true,
        QuotaCost::Checked(charge) | QuotaCost::AddsData(charge) => charge,
    };
    quota_bytes == 0 || db_size_bytes.saturating_add(charge) < quota_bytes
}

/// etcd's `costPut`.
fn put_cost(put: &PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + put.key.len() as u64 + put.value.len() as u64
}

/// etcd's `costTxn`: the puts of the larger branch (only the txn's own ops: etcd does
/// not look into nested txns).
fn txn_cost(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[rivet_api::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
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
            QuotaCost::Checked(0)
        );
        assert!(cost(&Request::Txn(direct_put)).adds_data());
        // As etcd 3.4's costTxn: only the puts directly in a branch count.
        assert_eq!(cost(&Request::Txn(nested_put)), QuotaCost::Checked(0));
        assert_eq!(
            cost(&Request::LeaseGrant(LeaseGrantRequest::default())),
            QuotaCost::AddsData(64)
        );
        assert_eq!(
            cost(&Request::DeleteRange(DeleteRangeRequest::default())),
            QuotaCost::Exempt
        );
        // etcd's quota server checks every txn, even one without a put: size + 0 < quota.
        let txn = cost(&Request::Txn(deletes_only));
        assert!(!admits(txn, 10, 100, 100));
        assert!(admits(txn, 10, 99, 100));
        let delete = cost(&Request::DeleteRange(DeleteRangeRequest::default()));
        assert!(admits(delete, 10, 95, 100));
        let put = cost(&Request::Put(PutRequest {
            key: "k".into(),
            value: "vv".into(),
            ..Default::default()
        }));
        assert_eq!(put, QuotaCost::AddsData(259));
        assert!(admits(put, 0, 740, 1000));
        assert!(
            !admits(put, 0, 741, 1000),
            "size + cost must stay below the quota"
        );
        assert!(admits(put, 11, 90, 0), "a quota of 0 is none");
    }
}
