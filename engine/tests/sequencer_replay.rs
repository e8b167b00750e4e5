//! The sequencer against random logs: apply is total and deterministic.
//!
//! Random requests — puts with ignore_value/ignore_lease and leases, single, from-key and
//! prefix deletes, txns nested three deep with compares of every target (and unknown
//! ones) and ranges at every kind of revision, lease grants, revokes and checkpoints,
//! compactions — are applied in order as committed entries, checked or not (a peer may
//! propose what a rivet core would have refused). After every entry:
//! - nothing panicked, and every entry got a response or an etcd error;
//! - a model shard that applies only the entry's mutations holds exactly the sequencer's
//!   heads (the shards see what the sequencer decided, nothing more, nothing less).
//!
//! Then the log is replayed from a checkpoint taken at a random entry, the way a member
//! recovers (sequencer restored from the shards' heads and the lease records, the rest of
//! the log re-applied): every replayed entry gives the same outcome and the final state
//! is the same.

use bytes::Bytes;
use proptest::prelude::*;
use rivet_api::etcdserverpb::{
    compare, range_request, request_op, CompactionRequest, Compare, DeleteRangeRequest,
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use rivet_api::rivetpb::internal_request::Request;
use rivet_engine::check;
use rivet_engine::replay::{self, state};
use rivet_engine::sequencer::Sequencer;

/// Keys next to each other in byte order, with "\0" and 0xff, so ranges overlap often.
const KEYS: &[&[u8]] = &[
    b"\0",
    b"a",
    b"a\0",
    b"ab",
    b"b",
    b"ba",
    b"c",
    b"\xff",
    b"\xff\xff",
];
const VALUES: &[&[u8]] = &[b"", b"v", b"w", b"\xff"];
const LEASES: &[i64] = &[0, 1, 2, 3];
const MIN_TTL: i64 = 2;

fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        20 => prop::sample::select(KEYS).prop_map(bytes),
        1 => Just(Bytes::new()),
    ]
}

/// A range end for `key`: none, from-key, the prefix end, another key, or a byte string
/// below the key (an empty range).
fn range_end() -> impl Strategy<Value = RangeEndSpec> {
    prop_oneof![
        4 => Just(RangeEndSpec::Single),
        3 => Just(RangeEndSpec::FromKey),
        2 => Just(RangeEndSpec::Prefix),
        2 => prop::sample::select(KEYS).prop_map(|k| RangeEndSpec::Key(bytes(k))),
    ]
}

#[derive(Clone, Debug)]
enum RangeEndSpec {
    Single,
    FromKey,
    Prefix,
    Key(Bytes),
}

fn prefix_end(key: &[u8]) -> Bytes {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    // Every byte 0xff (or no key): etcd's "no end" is from-key.
    Bytes::from_static(b"\0")
}

fn end_for(key: &[u8], spec: &RangeEndSpec) -> Bytes {
    match spec {
        RangeEndSpec::Single => Bytes::new(),
        RangeEndSpec::FromKey => Bytes::from_static(b"\0"),
        RangeEndSpec::Prefix => prefix_end(key),
        RangeEndSpec::Key(k) => k.clone(),
    }
}

fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::sample::select(VALUES),
        prop::sample::select(LEASES),
        any::<bool>(),
        prop::option::weighted(0.4, any::<bool>()),
    )
        .prop_map(|(key, value, lease, prev_kv, ignore)| {
            let (ignore_value, ignore_lease) = match ignore {
                Some(true) => (true, false),
                Some(false) => (false, true),
                None => (false, false),
            };
            PutRequest {
                key,
                value: if ignore_value {
                    Bytes::new()
                } else {
                    bytes(value)
                },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        })
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, end, prev_kv)| DeleteRangeRequest {
        range_end: end_for(&key, &end),
        key,
        prev_kv,
    })
}

fn range() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        -2i64..14,
        prop::sample::select(&[0i64, 1, 2, -1][..]),
        0i32..4,
        0i32..6,
        any::<(bool, bool, bool)>(),
        prop::sample::select(&[0i64, 3, 6][..]),
    )
        .prop_map(
            |(key, end, revision, limit, sort_order, sort_target, flags, min_mod)| {
                let (serializable, keys_only, count_only) = flags;
                RangeRequest {
                    range_end: end_for(&key, &end),
                    key,
                    limit,
                    revision,
                    sort_order,
                    sort_target: if sort_target == 5 {
                        range_request::SortTarget::Key as i32
                    } else {
                        sort_target
                    },
                    serializable,
                    keys_only,
                    count_only,
                    min_mod_revision: min_mod,
                    ..Default::default()
                }
            },
        )
}

fn compare_strategy() -> impl Strategy<Value = Compare> {
    use compare::TargetUnion;
    (key(), range_end(), 0i32..6, 0i32..5, -1i64..8).prop_map(
        |(key, end, target, result, number)| {
            let target_union = match target {
                0 => TargetUnion::Version(number),
                1 => TargetUnion::CreateRevision(number),
                2 => TargetUnion::ModRevision(number),
                3 => TargetUnion::Value(if number % 2 == 0 {
                    Bytes::from_static(b"v")
                } else {
                    Bytes::new()
                }),
                _ => TargetUnion::Lease(number),
            };
            Compare {
                result,
                target,
                range_end: end_for(&key, &end),
                key,
                target_union: Some(target_union),
            }
        },
    )
}

fn op_leaf() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        3 => put().prop_map(request_op::Request::RequestPut),
        2 => delete().prop_map(request_op::Request::RequestDeleteRange),
        2 => range().prop_map(request_op::Request::RequestRange),
    ]
    .prop_map(|r| RequestOp { request: Some(r) })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = (
        prop::collection::vec(compare_strategy(), 0..3),
        prop::collection::vec(op_leaf(), 0..4),
        prop::collection::vec(op_leaf(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    leaf.prop_recursive(3, 24, 4, |inner| {
        (
            prop::collection::vec(compare_strategy(), 0..3),
            prop::collection::vec(
                prop_oneof![
                    3 => op_leaf(),
                    1 => inner.clone().prop_map(|t| RequestOp {
                        request: Some(request_op::Request::RequestTxn(t)),
                    }),
                ],
                0..4,
            ),
            prop::collection::vec(
                prop_oneof![
                    3 => op_leaf(),
                    1 => inner.prop_map(|t| RequestOp {
                        request: Some(request_op::Request::RequestTxn(t)),
                    }),
                ],
                0..3,
            ),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        6 => put().prop_map(Request::Put),
        3 => delete().prop_map(Request::DeleteRange),
        8 => txn().prop_map(Request::Txn),
        1 => (-1i64..16, any::<bool>()).prop_map(|(revision, physical)| {
            Request::Compaction(CompactionRequest { revision, physical })
        }),
        2 => (prop::sample::select(LEASES), -1i64..12)
            .prop_map(|(id, ttl)| Request::LeaseGrant(LeaseGrantRequest { ttl, id })),
        1 => prop::sample::select(LEASES)
            .prop_map(|id| Request::LeaseRevoke(LeaseRevokeRequest { id })),
        1 => (prop::sample::select(LEASES), 0i64..9).prop_map(|(id, remaining_ttl)| {
            Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint { id, remaining_ttl }],
            })
        }),
    ]
}

/// One committed entry: most are checked as a rivet core checks before proposing, some
/// are not (a request from a peer, or from an older version, is applied as it comes).
fn entry() -> impl Strategy<Value = (Request, bool)> {
    (request(), prop::bool::weighted(0.8))
}

fn passes_checks(request: &Request) -> bool {
    match request {
        Request::Put(put) => check::check_put(put).is_ok(),
        Request::DeleteRange(delete) => check::check_delete(delete).is_ok(),
        Request::Txn(txn) => check::check_txn(txn, 128).is_ok(),
        _ => true,
    }
}

/// The log a leader would propose: entries marked as checked are dropped when they fail
/// the leader's checks (those never reach the log).
fn checked_log(entries: Vec<(Request, bool)>) -> Vec<Request> {
    entries
        .into_iter()
        .filter(|(request, checked)| !checked || passes_checks(request))
        .map(|(request, _)| request)
        .collect()
}

proptest! {
    // 256 cases by default; `PROPTEST_CASES=100000` for a long run.
    #[test]
    fn apply_is_total_and_replays_identically(
        entries in prop::collection::vec(entry(), 1..60),
        checkpoint_at in any::<prop::sample::Index>(),
    ) {
        let log = checked_log(entries);
        let checkpoint_at = checkpoint_at.index(log.len() + 1);
        if let Err(failure) = replay::check_log(&log, checkpoint_at, MIN_TTL) {
            return Err(TestCaseError::fail(failure));
        }
    }
}

proptest! {
    // Fewer cases: each one writes, checkpoints and reopens a real shard.
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The same, with the sequencer restored as a restart restores it: heads streamed from
    /// a real shard's page file with their values left there, and the files deleted before
    /// the replay (as garbage collection deletes a rewritten segment), so that every
    /// compare, prev_kv, ignore_value and txn range of a restored key reads its value
    /// through the sequencer's own mapping — and answers exactly as the first time.
    #[test]
    fn replay_from_values_left_in_the_page_file_is_identical(
        entries in prop::collection::vec(entry(), 1..60),
        checkpoint_at in any::<prop::sample::Index>(),
    ) {
        let log = checked_log(entries);
        let checkpoint_at = checkpoint_at.index(log.len() + 1);
        let restore = |checkpoint: &replay::State, heads: &_| {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = rivet_engine::page::PageOptions { segment_bytes: 1 << 20 };
            let sequencer = replay::restore_through_page_file(dir.path(), checkpoint, heads, options)
                .expect("restore through a page file");
            drop(dir);
            sequencer
        };
        if let Err(failure) = replay::check_log_restoring(&log, checkpoint_at, MIN_TTL, &restore) {
            return Err(TestCaseError::fail(failure));
        }
    }
}

/// The request of issue 10 among others: a from-key delete, then a put with
/// ignore_value of a key it deleted. Checked, committed, and answered with an error on
/// every replay.
#[test]
fn the_issue_10_request_is_an_error_on_replay_too() {
    let put_b = Request::Put(PutRequest {
        key: bytes(b"b"),
        value: bytes(b"1"),
        ..Default::default()
    });
    let txn = Request::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: bytes(b"a"),
                        range_end: bytes(b"\0"),
                        prev_kv: false,
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: bytes(b"b"),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    });
    assert!(passes_checks(&txn));
    let mut sequencer = Sequencer::new();
    replay::apply(&mut sequencer, &put_b, MIN_TTL);
    let before = state(&sequencer);
    for _ in 0..2 {
        let outcome = replay::apply(&mut sequencer, &txn, MIN_TTL);
        assert_eq!(
            outcome.result,
            Some(Err(rivet_engine::error::EtcdError::KeyNotFound))
        );
        assert_eq!(state(&sequencer), before);
    }
}
