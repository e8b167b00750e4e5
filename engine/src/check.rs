//! Request checks done before a request is proposed, exactly as etcd 3.4's
//! `etcdserver/api/v3rpc/key.go` does them: a request that fails here changes nothing and
//! never reaches raft.

use rivet_api::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::HashSet;

use crate::error::EtcdError;

pub fn check_range(request: &RangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    // etcd 3.4 panics on an unknown sort target (also inside a txn); an unknown sort
    // order it answers unsorted, as rivet does.
    if rivet_api::etcdserverpb::range_request::SortTarget::try_from(request.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    check_put_storable(request)
}

/// What the store itself needs of a put, checked again when it applies (a peer's entry
/// need not have passed [`check_put`]): a key, and a key and value that fit in one page
/// record. etcd has no such limit below `--max-request-bytes`; only a member started with
/// a request limit above 1 GiB can meet it.
pub fn check_put_storable(request: &PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    let record_bytes = crate::page::KEY_RECORD_HEADER_BYTES
        .saturating_add(request.key.len())
        .saturating_add(request.value.len());
    if record_bytes > crate::limits::RECORD_BYTES_MAX as usize {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(request: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(request, max_txn_ops as i64, 1)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

/// `depth`: how many protobuf messages deep `request` sits (1: the outer txn).
fn check_txn_ops(request: &TxnRequest, max_txn_ops: i64, depth: usize) -> Result<(), EtcdError> {
    // A compare is one level below its txn, an op one level and the op's request two.
    let deepest = if request.success.is_empty() && request.failure.is_empty() {
        depth + usize::from(!request.compare.is_empty())
    } else {
        depth + 2
    };
    if deepest > crate::limits::TXN_NESTED_MESSAGES_MAX {
        return Err(EtcdError::TxnTooDeep);
    }
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len()) as i64;
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if request.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    // Nested txns share the budget the way etcd does: what the outer level left over.
    for op in request.success.iter().chain(request.failure.iter()) {
        check_request_op(op, max_txn_ops - ops, depth)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: i64, depth: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, max_txn_ops, depth + 2),
        // An empty op is rejected with "key not found", as in etcd.
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A half-open interval of keys, compared as etcd's `adt.StringAffineInterval` compares
/// them: byte-wise, with a delete's `range_end` taken literally (so the from-key form
/// `"\0"` makes an empty interval, a quirk of etcd 3.4 that we keep for equal answers).
#[derive(Clone, Debug)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains_point(&self, key: &[u8]) -> bool {
        // Point k is the interval [k, k + "\0"); overlap with [begin, end) means
        // begin < k+"\0" (begin <= k) and k < end.
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }
}

#[derive(Default)]
struct Deletes(Vec<Interval>);

impl Deletes {
    fn intersects(&self, key: &[u8]) -> bool {
        self.0.iter().any(|i| i.contains_point(key))
    }
}

/// etcd's `checkIntervals`: within one branch (recursively through nested txns) a key may
/// not be put twice, nor put and deleted. The order of the checks follows etcd's, because
/// it decides which conflicts are found.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), EtcdError> {
    let mut deletes = Deletes::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            let end = if d.range_end.is_empty() {
                let mut successor = d.key.to_vec();
                successor.push(0);
                successor
            } else {
                d.range_end.to_vec()
            };
            deletes.0.push(Interval {
                begin: d.key.to_vec(),
                end,
            });
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(txn)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&txn.success)?;
        let (puts_else, deletes_else) = check_intervals(&txn.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deletes.intersects(key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            // The same key in then and else is fine: only one branch runs.
            if puts.contains(key) && !puts_then.contains(key) {
                return Err(EtcdError::DuplicateKey);
            }
            if deletes.intersects(key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deletes.0.extend(deletes_then.0);
        deletes.0.extend(deletes_else.0);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            continue;
        };
        let key = put.key.to_vec();
        if puts.contains(&key) || deletes.intersects(&key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(key);
    }
    Ok((puts, deletes))
}

/// Raft entries read back from the WAL must follow the log storage's last index one by
/// one: raft-rs's `MemStorage::append` panics on a gap or on an entry below its first
/// index. The WAL's CRCs make this a check against bugs, not bit rot; it answers the
/// offending index and why instead of a panic at start-up.
pub fn contiguous_entries(
    entries: &[raft::prelude::Entry],
    last_index: u64,
) -> Result<(), (u64, String)> {
    let mut expected = last_index.saturating_add(1);
    for entry in entries {
        if entry.index != expected {
            return Err((
                entry.index,
                format!(
                    "the log continues at index {expected}, but this entry is at {}",
                    entry.index
                ),
            ));
        }
        expected = expected.saturating_add(1);
    }
    Ok(())
}

/// etcd's `isTxnReadonly`: every op of both branches is a Range. etcd serves such a txn
/// without going through raft; a txn that nests another goes through raft even when
/// the nested one only reads (so it meets the request size check and reads at apply).
pub fn txn_is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(request.failure.iter())
        .all(|op| matches!(&op.request, Some(request_op::Request::RequestRange(_))))
}

/// True when every op of both branches is a serializable range (etcd's rule: an empty
/// txn is served locally, one that nests a txn is not).
pub fn txn_is_serializable(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(request.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            // etcd 3.4 reads a txn that nests another linearizably.
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    range_end: Bytes::copy_from_slice(end.as_bytes()),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_are_rejected() {
        let t = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn put_inside_deleted_range_is_rejected() {
        let t = txn(vec![delete("a", "c"), put("b")], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::DuplicateKey));
        let t = txn(vec![delete("a", "c"), put("c")], vec![]);
        assert_eq!(check_txn(&t, 128), Ok(()));
    }

    #[test]
    fn same_key_in_then_and_else_of_a_nested_txn_is_fine() {
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(
                vec![put("k")],
                vec![put("k")],
            ))),
        };
        assert_eq!(check_txn(&txn(vec![nested], vec![]), 128), Ok(()));
    }

    #[test]
    fn from_key_delete_is_an_empty_interval_as_in_etcd() {
        let t = txn(vec![delete("a", "\0"), put("b")], vec![]);
        assert_eq!(check_txn(&t, 128), Ok(()));
    }

    /// A txn `depth` levels deep (1: not nested) whose innermost level holds `leaf`.
    fn nested(depth: usize, leaf: Option<RequestOp>, compare: bool) -> TxnRequest {
        let mut t = txn(leaf.into_iter().collect(), vec![]);
        if compare {
            t.compare.push(rivet_api::etcdserverpb::Compare {
                key: b"k".to_vec().into(),
                ..Default::default()
            });
        }
        for _ in 1..depth {
            t = txn(
                vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(t)),
                }],
                vec![],
            );
        }
        t
    }

    /// Issue 10: a txn the gRPC service decodes must decode from a raft entry on every
    /// replica, and one that would not decode is refused before it is proposed (the JSON
    /// gateway reads deeper ones).
    #[test]
    fn a_txn_passes_the_checks_exactly_when_it_decodes_also_from_an_entry() {
        use prost::Message as _;
        use rivet_api::rivetpb::{decode_internal_request, internal_request, InternalRequest};
        let leaves = [
            None,
            Some(put("k")),
            Some(delete("a", "b")),
            Some(RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec().into(),
                    ..Default::default()
                })),
            }),
        ];
        let mut boundary_seen = 0;
        for depth in 45..56 {
            for leaf in &leaves {
                for compare in [false, true] {
                    let t = nested(depth, leaf.clone(), compare);
                    let decodes = TxnRequest::decode(t.encode_to_vec().as_slice()).is_ok();
                    let checked = check_txn(&t, 128);
                    assert_eq!(
                        checked.is_ok(),
                        decodes,
                        "depth {depth}, leaf {leaf:?}, compare {compare}: {checked:?}"
                    );
                    if !decodes {
                        assert_eq!(checked, Err(EtcdError::TxnTooDeep));
                        boundary_seen += 1;
                        continue;
                    }
                    let entry = InternalRequest {
                        id: 9,
                        request: Some(internal_request::Request::Txn(t)),
                        ..Default::default()
                    };
                    let decoded = decode_internal_request(&entry.encode_to_vec());
                    assert_eq!(decoded.ok(), Some(entry), "depth {depth}");
                }
            }
        }
        assert!(boundary_seen > 0);
    }

    #[test]
    fn too_many_ops() {
        let t = txn((0..3).map(|i| put(&i.to_string())).collect(), vec![]);
        assert_eq!(check_txn(&t, 2), Err(EtcdError::TooManyOps));
        assert_eq!(check_txn(&t, 3), Ok(()));
    }

    #[test]
    fn recovered_entries_must_continue_the_log() {
        let entries = |indexes: &[u64]| -> Vec<raft::prelude::Entry> {
            indexes
                .iter()
                .map(|&index| raft::prelude::Entry {
                    index,
                    ..Default::default()
                })
                .collect()
        };
        assert_eq!(contiguous_entries(&entries(&[]), 7), Ok(()));
        assert_eq!(contiguous_entries(&entries(&[8, 9, 10]), 7), Ok(()));
        assert_eq!(
            contiguous_entries(&entries(&[9]), 7).map_err(|e| e.0),
            Err(9)
        );
        assert_eq!(
            contiguous_entries(&entries(&[7, 8]), 7).map_err(|e| e.0),
            Err(7)
        );
        assert_eq!(
            contiguous_entries(&entries(&[8, 10]), 7).map_err(|e| e.0),
            Err(10)
        );
    }

    #[test]
    fn a_put_must_fit_a_page_record() {
        let huge = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0; crate::limits::RECORD_BYTES_MAX as usize]),
            ..Default::default()
        };
        assert_eq!(check_put(&huge), Err(EtcdError::RequestTooLarge));
    }

    #[test]
    fn an_unknown_sort_target_is_refused_also_inside_a_txn() {
        let range = RangeRequest {
            key: Bytes::from_static(b"k"),
            sort_target: 9,
            ..Default::default()
        };
        assert_eq!(check_range(&range), Err(EtcdError::InvalidSortOption));
        let t = txn(
            vec![RequestOp {
                request: Some(request_op::Request::RequestRange(range)),
            }],
            vec![],
        );
        assert_eq!(check_txn(&t, 128), Err(EtcdError::InvalidSortOption));
        let unknown_order = RangeRequest {
            key: Bytes::from_static(b"k"),
            sort_order: 7,
            ..Default::default()
        };
        assert_eq!(check_range(&unknown_order), Ok(()));
    }

    #[test]
    fn empty_op_is_key_not_found() {
        let t = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::KeyNotFound));
    }
}
