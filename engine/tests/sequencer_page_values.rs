//! A restarted sequencer holds no restored value: each head points at its key's record in
//! the owning shard's page file, and the sequencer reads the value through its own
//! mapping when a VALUE compare, `prev_kv`, `ignore_value` or a txn range needs it. Every
//! request here is applied both to a sequencer restored that way (from a real shard's
//! page file, whose files are then deleted) and to one restored with the values in hand,
//! and both must answer the same, byte for byte, with the same mutations for the shards.

use std::collections::BTreeMap;

use bytes::Bytes;
use rivet_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use rivet_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use rivet_api::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use rivet_engine::keyspace::Head;
use rivet_engine::page::PageOptions;
use rivet_engine::replay::{self, State};
use rivet_engine::sequencer::{Applied, Outcome, Sequencer};

const OPTIONS: PageOptions = PageOptions {
    segment_bytes: 1 << 20,
};
/// Enough keys of 600 B values to fill more than two 1 MiB segments.
const KEYS: usize = 4000;

fn key(n: usize) -> Bytes {
    Bytes::from(format!("k{n:05}"))
}

/// Values that differ in length and in their first, middle and last bytes.
fn value(n: usize) -> Bytes {
    let mut v = vec![b'a' + (n % 26) as u8; 400 + n % 400];
    let middle = v.len() / 2;
    v[middle] = (n % 251) as u8;
    *v.last_mut().expect("not empty") = (n % 7) as u8;
    Bytes::from(v)
}

/// The two sequencers at revision `KEYS + 1`: key `n` put at revision `n + 2`.
fn restored() -> (Sequencer, Sequencer) {
    let mut heads = BTreeMap::new();
    for n in 0..KEYS {
        let revision = n as i64 + 2;
        heads.insert(
            key(n),
            Head {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                value: value(n),
            },
        );
    }
    let state = State {
        heads: heads.clone(),
        leases: BTreeMap::new(),
        revision: KEYS as i64 + 1,
        compact_revision: -1,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let from_page = replay::restore_through_page_file(dir.path(), &state, &heads, OPTIONS)
        .expect("restore through the page file");
    assert!(
        from_page.mapped_segments() > 2,
        "{}",
        from_page.mapped_segments()
    );
    // The files go, as garbage collection removes a rewritten segment: the sequencer's
    // mappings keep the records it points at.
    drop(dir);
    (from_page, replay::restore(&state, &heads))
}

fn same(a: Outcome, b: Outcome) -> Outcome {
    assert_eq!(a, b);
    a
}

fn compare(key: Bytes, range_end: &[u8], result: CompareResult, value: Bytes) -> Compare {
    Compare {
        result: result as i32,
        target: CompareTarget::Value as i32,
        key,
        range_end: Bytes::copy_from_slice(range_end),
        target_union: Some(TargetUnion::Value(value)),
    }
}

fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

fn txn(compares: Vec<Compare>, success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: compares,
        success,
        failure: vec![range_op(RangeRequest {
            key: key(0),
            ..Default::default()
        })],
    }
}

fn succeeded(outcome: &Outcome) -> bool {
    match &outcome.result {
        Some(Ok(Applied::Txn(r))) => r.succeeded,
        other => panic!("{other:?}"),
    }
}

#[test]
fn value_compares_of_every_kind_read_the_page_record() {
    let (mut page, mut held) = restored();
    let n = 1234;
    let mut lower = value(n).to_vec();
    *lower.last_mut().unwrap() = 0;
    let lower = Bytes::from(lower);
    let mut higher = value(n).to_vec();
    higher.push(0);
    let higher = Bytes::from(higher);
    let mut middle_differs = value(n).to_vec();
    let m = middle_differs.len() / 2;
    middle_differs[m] = middle_differs[m].wrapping_add(1);
    let middle_differs = Bytes::from(middle_differs);
    let cases = [
        (CompareResult::Equal, value(n), true),
        (CompareResult::Equal, middle_differs.clone(), false),
        (CompareResult::NotEqual, value(n), false),
        (CompareResult::NotEqual, middle_differs, true),
        (CompareResult::Less, higher.clone(), true),
        (CompareResult::Less, lower.clone(), n % 7 == 0),
        (CompareResult::Greater, lower, n % 7 != 0),
        (CompareResult::Greater, higher, false),
    ];
    for (result, against, want) in cases {
        let request = txn(vec![compare(key(n), b"", result, against)], vec![]);
        let outcome = same(page.apply_txn(&request), held.apply_txn(&request));
        assert_eq!(succeeded(&outcome), want, "{result:?}");
    }
    // Over a range of keys: every key must satisfy it.
    let any_a = Bytes::from_static(b"a");
    for result in [
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ] {
        let request = txn(vec![compare(key(0), b"k9", result, any_a.clone())], vec![]);
        same(page.apply_txn(&request), held.apply_txn(&request));
    }
}

#[test]
fn prev_kv_and_ignore_value_after_a_restart() {
    let (mut page, mut held) = restored();
    let put = PutRequest {
        key: key(7),
        value: Bytes::from_static(b"new"),
        prev_kv: true,
        ..Default::default()
    };
    let outcome = same(page.apply_put(&put), held.apply_put(&put));
    let Some(Ok(Applied::Put(response))) = &outcome.result else {
        panic!("{:?}", outcome.result)
    };
    assert_eq!(response.prev_kv.as_ref().unwrap().value, value(7));
    // ignore_value keeps the restored value: the shard gets its bytes.
    let put = PutRequest {
        key: key(8),
        ignore_value: true,
        prev_kv: true,
        ..Default::default()
    };
    let outcome = same(page.apply_put(&put), held.apply_put(&put));
    assert_eq!(page.get(&key(8)).unwrap().value, value(8));
    assert_eq!(page.get(&key(8)).unwrap().version, 2);
    let Some(rivet_engine::keyspace::Mutation::Put { head, .. }) = outcome.mutations.first() else {
        panic!("{:?}", outcome.mutations)
    };
    assert_eq!(head.value, value(8));
    // And a later prev_kv of that key still reads it.
    let put = PutRequest {
        key: key(8),
        value: Bytes::from_static(b"x"),
        prev_kv: true,
        ..Default::default()
    };
    same(page.apply_put(&put), held.apply_put(&put));
    // A delete of a range with prev_kv, across segments.
    let delete = DeleteRangeRequest {
        key: key(100),
        range_end: key(3900),
        prev_kv: true,
    };
    let outcome = same(page.apply_delete(&delete), held.apply_delete(&delete));
    let Some(Ok(Applied::DeleteRange(response))) = &outcome.result else {
        panic!()
    };
    assert_eq!(response.prev_kvs.len(), 3800);
    assert_eq!(response.prev_kvs[0].value, value(100));
}

#[test]
fn ranges_inside_txns_and_read_only_txns() {
    let (mut page, mut held) = restored();
    let ranges = [
        RangeRequest {
            key: key(10),
            range_end: key(90),
            ..Default::default()
        },
        RangeRequest {
            key: key(10),
            range_end: key(3000),
            limit: 17,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            ..Default::default()
        },
        RangeRequest {
            key: key(0),
            range_end: Bytes::from_static(b"\0"),
            keys_only: true,
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 5,
            ..Default::default()
        },
        RangeRequest {
            key: key(0),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            ..Default::default()
        },
    ];
    // Read-only.
    let request = txn(vec![], ranges.iter().cloned().map(range_op).collect());
    let outcome = same(page.apply_txn(&request), held.apply_txn(&request));
    let Some(Ok(Applied::Txn(response))) = &outcome.result else {
        panic!()
    };
    let Some(response_op::Response::ResponseRange(first)) = &response.responses[0].response else {
        panic!()
    };
    assert_eq!(first.kvs.len(), 80);
    assert_eq!(first.kvs[5].value, value(15));
    // With a write before and after the ranges: a range sees the txn's own put.
    let mut ops = vec![RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key(20),
            value: Bytes::from_static(b"zzz"),
            ..Default::default()
        })),
    }];
    ops.extend(ranges.iter().cloned().map(range_op));
    ops.push(RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key(30),
                range_end: key(40),
                prev_kv: true,
            },
        )),
    });
    let request = txn(
        vec![compare(key(3), b"", CompareResult::Equal, value(3))],
        ops,
    );
    let outcome = same(page.apply_txn(&request), held.apply_txn(&request));
    assert!(succeeded(&outcome));
}

/// A compaction that drops the version a prev_kv needs: the sequencer never asks the shard
/// for it (whose files are gone here, as after garbage collection), it reads the record
/// through its own mapping at decision time, so no compaction applied on the shard before
/// or after can take the value away.
#[test]
fn a_compaction_does_not_take_a_value_the_sequencer_needs() {
    let (mut page, mut held) = restored();
    let compaction = CompactionRequest {
        revision: KEYS as i64 + 1,
        physical: true,
    };
    same(
        page.apply_compaction(&compaction),
        held.apply_compaction(&compaction),
    );
    for n in [0, 1, 2, KEYS - 1] {
        let put = PutRequest {
            key: key(n),
            value: Bytes::from_static(b"after"),
            prev_kv: true,
            ..Default::default()
        };
        let outcome = same(page.apply_put(&put), held.apply_put(&put));
        let Some(Ok(Applied::Put(response))) = &outcome.result else {
            panic!()
        };
        assert_eq!(response.prev_kv.as_ref().unwrap().value, value(n));
    }
    // Compacted at the revision of those puts: the superseded versions are gone from the
    // shards, not from the answers.
    let compaction = CompactionRequest {
        revision: page.revision(),
        physical: true,
    };
    same(
        page.apply_compaction(&compaction),
        held.apply_compaction(&compaction),
    );
    let request = txn(
        vec![compare(key(3), b"", CompareResult::Equal, value(3))],
        vec![range_op(RangeRequest {
            key: key(0),
            range_end: key(5),
            ..Default::default()
        })],
    );
    assert!(succeeded(&same(
        page.apply_txn(&request),
        held.apply_txn(&request)
    )));
}

/// Once no head's value is in a segment, the sequencer lets go of its mapping (so the
/// disk space of a segment garbage collection removed is freed); a txn that fails
/// half-way keeps them.
#[test]
fn segments_are_let_go_when_no_value_is_left_in_them() {
    let (mut page, _) = restored();
    let before = page.mapped_segments();
    let failing = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: Bytes::from_static(b"\0"),
                        range_end: Bytes::from_static(b"\0"),
                        prev_kv: false,
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key(5),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert!(matches!(
        page.apply_txn(&failing).result,
        Some(Err(rivet_engine::error::EtcdError::KeyNotFound))
    ));
    assert_eq!(page.mapped_segments(), before);
    assert_eq!(page.get(&key(5)).unwrap().value, value(5));
    for n in 0..KEYS {
        page.apply_put(&PutRequest {
            key: key(n),
            value: Bytes::from_static(b"held"),
            ..Default::default()
        });
    }
    assert_eq!(page.mapped_segments(), 0);
}

/// When the shards delete segments (garbage collection or a defragmentation rewrote
/// them), the sequencer copies the values its heads still read from them and lets go of
/// the mappings at once; every answer stays the same bytes.
#[test]
fn deleted_segments_are_let_go_and_their_values_copied() {
    let (mut page, mut held) = restored();
    // A key written since the start holds its value and is not copied again.
    let put = PutRequest {
        key: key(7),
        value: Bytes::from_static(b"held"),
        ..Default::default()
    };
    same(page.apply_put(&put), held.apply_put(&put));
    let segments = page.mapped_segment_keys();
    let (first, rest) = segments.split_at(1);
    // A release of a segment no one maps (another shard, an older file) changes nothing.
    assert_eq!(page.release_segments(&[(3, 12345)]), 0);
    assert_eq!(page.mapped_segments(), segments.len());

    let copied = page.release_segments(first);
    assert!(copied > 0, "the first segment holds restored values");
    assert_eq!(page.mapped_segments(), segments.len() - 1);
    let copied_rest = page.release_segments(rest);
    assert_eq!(copied + copied_rest, KEYS - 1);
    assert_eq!(page.mapped_segments(), 0);
    assert_eq!(page.mapped_segment_keys(), vec![]);

    // VALUE compares, prev_kv, ignore_value and txn ranges answer the same bytes.
    for n in [0, 1, 7, 1234, KEYS - 1] {
        let request = txn(
            vec![compare(key(n), b"", CompareResult::Equal, value(n))],
            vec![range_op(RangeRequest {
                key: key(0),
                range_end: Bytes::from_static(b"\xff"),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Value as i32,
                limit: 10,
                ..Default::default()
            })],
        );
        same(page.apply_txn(&request), held.apply_txn(&request));
        let put = PutRequest {
            key: key(n),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        };
        same(page.apply_put(&put), held.apply_put(&put));
        assert_eq!(
            page.get(&key(n)).unwrap().value,
            held.get(&key(n)).unwrap().value
        );
    }
}

/// What letting go of deleted segments costs with 1 M restored keys (178 B values, the
/// restart figures' workload): `cargo test --release --test sequencer_page_values --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check (1 M keys)"]
fn release_cost_for_a_million_keys() {
    const MANY: usize = 1_000_000;
    let mut heads = BTreeMap::new();
    for n in 0..MANY {
        let revision = n as i64 + 2;
        heads.insert(
            Bytes::from(format!("key/{n:08}")),
            Head {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                value: Bytes::from(vec![b'v'; 178]),
            },
        );
    }
    let state = State {
        heads: heads.clone(),
        leases: BTreeMap::new(),
        revision: MANY as i64 + 1,
        compact_revision: -1,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut page =
        replay::restore_through_page_file(dir.path(), &state, &heads, PageOptions::default())
            .expect("restore through the page file");
    drop(heads);
    let segments = page.mapped_segment_keys();
    // The newest segment alone: its heads are the last keys, so the whole map is walked.
    let started = std::time::Instant::now();
    let copied = page.release_segments(&segments[segments.len() - 1..]);
    println!(
        "{} segments; the last one: {copied} values copied in {:?}",
        segments.len(),
        started.elapsed()
    );
    // A segment no head points into any more: no walk.
    let started = std::time::Instant::now();
    let copied = page.release_segments(&segments[segments.len() - 1..]);
    println!("again: {copied} values in {:?}", started.elapsed());
    // All the others in one batch (one walk, every value copied).
    let started = std::time::Instant::now();
    let copied = page.release_segments(&segments[..segments.len() - 1]);
    println!(
        "the {} others at once: {copied} values copied in {:?}",
        segments.len() - 1,
        started.elapsed()
    );
    assert_eq!(page.mapped_segments(), 0);
}
