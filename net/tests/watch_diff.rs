//! Differential tests of the Watch service against a real etcd 3.4 started by the test.
//!
//! Both servers start empty and see the same requests in the same order, so revisions
//! and watch IDs match. Compared field by field with the raw generated gRPC clients; only
//! the top-level `member_id` and `cluster_id` (random per cluster) are ignored.
//! `raft_term` is compared: rivet elects itself at term 2 like etcd's bootstrap.
//!
//! What is compared loosely, and why: responses of different watchers are compared per
//! watcher (etcd sends one revision's responses in Go map order); with three shards the
//! events of one revision are compared sorted by key (a documented deviation, see
//! docs/ARCHITECTURE.md, Watch). The seeded scenario takes its seed from
//! `RIVET_DIFF_SEED` and its length from `RIVET_DIFF_STEPS`.
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::rng::Rng;
use common::watch::{create, first_difference, live_ids, settle, Side};
use common::{
    bounded, bytes as b, clear_ids, grpc_channel as channel, grpc_outcome as outcome,
    prefix_end_bytes as prefix_end, require_etcd_34, runtime, Etcd, Rivet,
};
use futures::channel::mpsc;
use futures::StreamExt;
use rivet_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op,
    watch_client::WatchClient,
    watch_create_request::FilterType,
    watch_request::RequestUnion,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0x5eed_3a7c_4000_0001;

/// The keys written: shared prefixes, so prefixes and ranges overlap.
const KEYS: [&[u8]; 10] = [
    b"a", b"a/1", b"a/2", b"ab", b"b", b"b/1", b"c", b"foo", b"foo/x", b"fop",
];

#[derive(Clone, Debug)]
enum Write {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

async fn write(kv: &mut KvClient<Channel>, op: &Write) -> (String, i64) {
    let (text, revision) = match op {
        Write::Put(r) => match kv.put(r.clone()).await {
            Ok(a) => {
                let mut a = a.into_inner();
                clear_ids(&mut a.header);
                (format!("{a:?}"), a.header.map_or(0, |h| h.revision))
            }
            Err(e) => (outcome::<()>(Err(e)), 0),
        },
        Write::Delete(r) => match kv.delete_range(r.clone()).await {
            Ok(a) => {
                let mut a = a.into_inner();
                clear_ids(&mut a.header);
                (format!("{a:?}"), a.header.map_or(0, |h| h.revision))
            }
            Err(e) => (outcome::<()>(Err(e)), 0),
        },
        Write::Txn(r) => match kv.txn(r.clone()).await {
            Ok(a) => {
                let mut a = a.into_inner();
                clear_ids(&mut a.header);
                for response in &mut a.responses {
                    use rivet_api::etcdserverpb::response_op::Response;
                    match &mut response.response {
                        Some(Response::ResponsePut(p)) => clear_ids(&mut p.header),
                        Some(Response::ResponseDeleteRange(d)) => clear_ids(&mut d.header),
                        Some(Response::ResponseRange(r)) => clear_ids(&mut r.header),
                        Some(Response::ResponseTxn(t)) => clear_ids(&mut t.header),
                        None => {}
                    }
                }
                (format!("{a:?}"), a.header.map_or(0, |h| h.revision))
            }
            Err(e) => (outcome::<()>(Err(e)), 0),
        },
        Write::Compact(r) => match kv.compact(*r).await {
            Ok(a) => {
                let mut a = a.into_inner();
                clear_ids(&mut a.header);
                (format!("{a:?}"), a.header.map_or(0, |h| h.revision))
            }
            Err(e) => (outcome::<()>(Err(e)), 0),
        },
    };
    (text, revision)
}

/// The generator: knows the revision and the compaction from etcd's answers.
struct WatchGen {
    rng: Rng,
    revision: i64,
    compacted: i64,
    streams: usize,
}

impl WatchGen {
    fn distinct_keys(&mut self, n: usize) -> Vec<&'static [u8]> {
        let mut keys: Vec<&'static [u8]> = KEYS.to_vec();
        // Fisher-Yates: the txn's op order is not the key order.
        for i in (1..keys.len()).rev() {
            let j = self.rng.below(i + 1);
            keys.swap(i, j);
        }
        keys.truncate(n);
        keys
    }

    fn value(&mut self) -> Bytes {
        Bytes::from(format!("v{}", self.rng.below(1000)))
    }

    fn delete_range(&mut self, key: &[u8]) -> DeleteRangeRequest {
        let range_end = match self.rng.below(4) {
            0 => Bytes::new(),
            1 => prefix_end(key),
            2 => b(b"\0"),
            _ => {
                let other = self.rng.pick(&KEYS);
                if other > key {
                    b(other)
                } else {
                    prefix_end(key)
                }
            }
        };
        DeleteRangeRequest {
            key: b(key),
            range_end,
            prev_kv: self.rng.percent(50),
        }
    }

    fn request_op(&mut self, key: &[u8]) -> RequestOp {
        let request = if self.rng.percent(70) {
            request_op::Request::RequestPut(PutRequest {
                key: b(key),
                value: self.value(),
                prev_kv: self.rng.percent(30),
                ..Default::default()
            })
        } else {
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: b(key),
                prev_kv: self.rng.percent(30),
                ..Default::default()
            })
        };
        RequestOp {
            request: Some(request),
        }
    }

    fn write(&mut self) -> Write {
        match self.rng.below(100) {
            0..=39 => {
                let key = self.rng.pick(&KEYS);
                Write::Put(PutRequest {
                    key: b(key),
                    value: self.value(),
                    prev_kv: self.rng.percent(30),
                    ..Default::default()
                })
            }
            40..=54 => {
                let key = self.rng.pick(&KEYS);
                Write::Delete(DeleteRangeRequest {
                    key: b(key),
                    prev_kv: self.rng.percent(30),
                    ..Default::default()
                })
            }
            55..=64 => {
                let key = self.rng.pick(&[&b"a"[..], b"a/", b"b", b"f", b"foo"]);
                let request = self.delete_range(key);
                Write::Delete(request)
            }
            65..=92 => {
                let n = 2 + self.rng.below(4);
                let keys = self.distinct_keys(n);
                let (then, otherwise) = keys.split_at(keys.len() / 2 + 1);
                let success = then.iter().map(|k| self.request_op(k)).collect();
                let failure = otherwise.iter().map(|k| self.request_op(k)).collect();
                let compared = self.rng.pick(&KEYS);
                Write::Txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Greater as i32,
                        target: CompareTarget::Version as i32,
                        key: b(compared),
                        range_end: Bytes::new(),
                        target_union: Some(TargetUnion::Version(0)),
                    }],
                    success,
                    failure,
                })
            }
            _ => {
                let revision = self.rng.between(self.compacted + 1, self.revision);
                Write::Compact(CompactionRequest {
                    revision,
                    physical: true,
                })
            }
        }
    }

    fn create(&mut self) -> WatchCreateRequest {
        let key = self.rng.pick(&KEYS);
        let (key, range_end) = match self.rng.below(6) {
            0 | 1 => (b(key), Bytes::new()),
            2 => {
                let prefix = self.rng.pick(&[&b"a"[..], b"a/", b"b", b"f", b"foo"]);
                (b(prefix), prefix_end(prefix))
            }
            3 => (b(b"\0"), b(b"\0")),
            4 => (b(key), b(b"\0")),
            _ => {
                let other = self.rng.pick(&KEYS);
                if other > key {
                    (b(key), b(other))
                } else {
                    (b(key), prefix_end(key))
                }
            }
        };
        let start_revision = match self.rng.below(10) {
            0..=3 => 0,
            4..=6 => self.rng.between(self.compacted.max(1), self.revision),
            7 if self.compacted > 1 => self.rng.between(1, self.compacted - 1),
            7 => self.compacted,
            8 => self.revision + 1 + self.rng.between(0, 2),
            _ => self.compacted.max(1),
        };
        let mut filters = Vec::new();
        if self.rng.percent(15) {
            filters.push(FilterType::Noput as i32);
        }
        if self.rng.percent(15) {
            filters.push(FilterType::Nodelete as i32);
        }
        let watch_id = if self.rng.percent(25) {
            self.rng.pick(&[1, 2, 3, 7, 100, 101])
        } else {
            0
        };
        WatchCreateRequest {
            key,
            range_end,
            start_revision,
            progress_notify: false,
            filters,
            prev_kv: self.rng.percent(40),
            watch_id,
            fragment: false,
        }
    }
}

#[derive(Debug)]
enum Step {
    Write(Write),
    OpenStream,
    Create(usize, WatchCreateRequest),
    Cancel(usize, i64),
    Progress(usize),
}

/// The watch IDs of a stream that were created and not (yet) cancelled, from responses.
fn put(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: b(key),
                prev_kv: true,
                ..Default::default()
            },
        )),
    }
}

/// A txn that succeeds (nothing has the key "never") with `ops`.
fn txn(ops: Vec<RequestOp>) -> Write {
    Write::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b(b"never"),
            range_end: Bytes::new(),
            target_union: Some(TargetUnion::Version(0)),
        }],
        success: ops,
        failure: vec![],
    })
}

/// The cases the seeded part may miss, spelled out (`revision`: the current one): txns
/// whose op order is not the key order, replayed from history after a compaction at
/// their revision; a start below the compaction; a duplicate client-chosen ID (on one
/// stream, and the same ID on another stream); a start in the future; cancels; progress.
fn fixed_epilogue(revision: i64) -> Vec<Step> {
    let first_txn = revision + 1;
    vec![
        Step::Write(txn(vec![
            put(b"fop", b"1"),
            put(b"c", b"1"),
            put(b"b/1", b"1"),
            put(b"a/2", b"1"),
            put(b"a", b"1"),
        ])),
        Step::Write(txn(vec![delete(b"c"), put(b"b", b"2"), delete(b"fop")])),
        Step::Write(Write::Compact(CompactionRequest {
            revision: first_txn,
            physical: true,
        })),
        Step::Create(1, create(b"\0", b"\0", first_txn, 0)),
        Step::Create(1, create(b"a", b"b", first_txn - 1, 0)),
        Step::Create(0, create(b"a", b"", 0, 500)),
        Step::Create(0, create(b"b", b"", 0, 500)),
        Step::Create(1, create(b"a", b"", 0, 500)),
        Step::Create(1, create(b"a", b"b", first_txn + 3, 0)),
        // A watcher cancelled for a compacted start keeps its ID until the client cancels
        // it (etcd's watchStream keeps it): a create with that ID is a duplicate, and the
        // client's cancel is answered.
        Step::Create(1, create(b"a", b"b", first_txn - 1, 600)),
        Step::Create(1, create(b"x", b"", 0, 600)),
        Step::Cancel(1, 600),
        Step::Create(1, create(b"x", b"", 0, 600)),
        Step::Cancel(1, 600),
        Step::Write(Write::Put(PutRequest {
            key: b(b"a"),
            value: b(b"2"),
            ..Default::default()
        })),
        Step::Write(txn(vec![
            put(b"a/1", b"3"),
            delete(b"a"),
            put(b"a/2", b"3"),
        ])),
        Step::Write(txn(vec![put(b"a", b"4"), put(b"ab", b"4")])),
        Step::Cancel(0, 500),
        Step::Cancel(1, 500),
        Step::Progress(1),
        Step::Write(Write::Put(PutRequest {
            key: b(b"a"),
            value: b(b"5"),
            ..Default::default()
        })),
    ]
}

fn watch_differential(shards: &str) {
    require_etcd_34();
    let seed = common::rng::seed("RIVET_DIFF_SEED", DEFAULT_SEED);
    let steps = std::env::var("RIVET_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(70usize);
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&["--shards", shards]);
    runtime().block_on(async {
        let mut etcd_side = Side::new("etcd", &etcd.endpoint()).await;
        let mut rivet_side = Side::new("rivet", &rivet.endpoint()).await;
        let mut gen = WatchGen {
            rng: Rng::new(seed),
            revision: 1,
            compacted: 0,
            streams: 0,
        };
        // A fixed start: watchers of every kind on one stream before any write, so the
        // live path sees every write.
        let mut script = vec![Step::OpenStream];
        let all = WatchCreateRequest {
            key: b(b"\0"),
            range_end: b(b"\0"),
            prev_kv: true,
            ..Default::default()
        };
        script.push(Step::Create(0, all.clone()));
        script.push(Step::Create(
            0,
            WatchCreateRequest {
                key: b(b"a"),
                ..Default::default()
            },
        ));
        script.push(Step::Create(
            0,
            WatchCreateRequest {
                key: b(b"a/"),
                range_end: prefix_end(b"a/"),
                filters: vec![FilterType::Nodelete as i32],
                ..Default::default()
            },
        ));
        script.push(Step::Create(
            0,
            WatchCreateRequest {
                key: b(b"b"),
                range_end: b(b"c"),
                filters: vec![FilterType::Noput as i32],
                prev_kv: true,
                ..Default::default()
            },
        ));
        script.push(Step::Create(
            0,
            WatchCreateRequest {
                key: b(b"foo"),
                range_end: prefix_end(b"foo"),
                watch_id: 100,
                ..Default::default()
            },
        ));
        script.push(Step::OpenStream);
        let mut log: Vec<String> = Vec::new();
        let mut step = 0;
        let mut scripted = script.into_iter();
        let mut stats: BTreeMap<&str, usize> = BTreeMap::new();
        let mut epilogue = None;
        loop {
            let next = match scripted.next() {
                Some(s) => s,
                None if step >= steps && epilogue.is_none() => {
                    let mut steps = fixed_epilogue(gen.revision).into_iter();
                    let first = steps.next().expect("an epilogue");
                    epilogue = Some(());
                    scripted = steps.collect::<Vec<_>>().into_iter();
                    first
                }
                None if step >= steps => break,
                None => {
                    step += 1;
                    match gen.rng.below(100) {
                        0..=64 => Step::Write(gen.write()),
                        65..=82 => {
                            let stream = gen.rng.below(gen.streams);
                            Step::Create(stream, gen.create())
                        }
                        83..=90 => {
                            let stream = gen.rng.below(gen.streams);
                            let live =
                                live_ids(&etcd_side.streams[stream].received.lock().expect("lock"));
                            let id = if live.is_empty() || gen.rng.percent(10) {
                                55
                            } else {
                                gen.rng.pick(&live)
                            };
                            Step::Cancel(stream, id)
                        }
                        91..=95 if gen.streams < 4 => Step::OpenStream,
                        _ => Step::Progress(gen.rng.below(gen.streams)),
                    }
                }
            };
            log.push(format!("{next:?}"));
            // The answer a watch request is owed (a create is always answered, a cancel
            // only when its watcher is live, a progress request always).
            let answer_on = match &next {
                Step::Create(stream, _) | Step::Progress(stream) => Some(*stream),
                Step::Cancel(stream, id) => {
                    let live = live_ids(&etcd_side.streams[*stream].received.lock().expect("lock"));
                    live.contains(id).then_some(*stream)
                }
                _ => None,
            }
            .map(|stream| {
                (
                    stream,
                    etcd_side.stream_count(stream),
                    rivet_side.stream_count(stream),
                )
            });
            match &next {
                Step::Write(op) => {
                    *stats.entry("write").or_default() += 1;
                    let (etcd_answer, revision) =
                        bounded("etcd write", write(&mut etcd_side.kv, op)).await;
                    let (rivet_answer, _) =
                        bounded("rivet write", write(&mut rivet_side.kv, op)).await;
                    assert_eq!(
                        rivet_answer, etcd_answer,
                        "seed {seed:#x}: write {op:?}: rivet (left) differs from etcd"
                    );
                    if revision > 0 {
                        gen.revision = revision;
                    }
                    if let Write::Compact(c) = op {
                        if !etcd_answer.starts_with("error") {
                            gen.compacted = c.revision;
                        }
                    }
                }
                Step::OpenStream => {
                    etcd_side.open_stream().await;
                    rivet_side.open_stream().await;
                    gen.streams += 1;
                }
                Step::Create(stream, create) => {
                    *stats.entry("create").or_default() += 1;
                    let request = RequestUnion::CreateRequest(create.clone());
                    etcd_side.send(*stream, request.clone());
                    rivet_side.send(*stream, request);
                }
                Step::Cancel(stream, id) => {
                    *stats.entry("cancel").or_default() += 1;
                    let request = RequestUnion::CancelRequest(WatchCancelRequest { watch_id: *id });
                    etcd_side.send(*stream, request.clone());
                    rivet_side.send(*stream, request);
                }
                Step::Progress(stream) => {
                    *stats.entry("progress").or_default() += 1;
                    let request = RequestUnion::ProgressRequest(WatchProgressRequest {});
                    etcd_side.send(*stream, request.clone());
                    rivet_side.send(*stream, request);
                }
            }
            if !matches!(next, Step::Write(_)) {
                // Watch requests answer asynchronously: see `settle`.
                settle(&etcd_side, &rivet_side, &etcd.endpoint(), answer_on).await;
            }
        }
        settle(&etcd_side, &rivet_side, &etcd.endpoint(), None).await;
        let mut etcd_groups = etcd_side.by_watcher();
        let mut rivet_groups = rivet_side.by_watcher();
        if shards != "1" {
            // Known deviation (docs/ARCHITECTURE.md, Watch): with several shards, the
            // events of one revision come in shard order (apply order within a shard), not
            // in the txn's op order, because shards share no sub-revision. Compared here
            // by (revision, key) on both sides; the one-shard test compares the order.
            for group in etcd_groups.values_mut().chain(rivet_groups.values_mut()) {
                for response in group {
                    response.events.sort_by(|x, y| {
                        let key = |e: &rivet_api::mvccpb::Event| {
                            e.kv.as_ref().map(|kv| (kv.mod_revision, kv.key.clone()))
                        };
                        key(x).cmp(&key(y))
                    });
                }
            }
        }
        let mut events = 0;
        let mut compacted_cancels = 0;
        for ((stream, id), etcd_responses) in &etcd_groups {
            let rivet_responses = rivet_groups
                .get(&(*stream, *id))
                .map_or(&[][..], Vec::as_slice);
            assert!(
                rivet_responses == etcd_responses.as_slice(),
                "seed {seed:#x} --shards {shards}: stream {stream}, watch {id}: {}\n\
                 steps:\n{}",
                first_difference(etcd_responses, rivet_responses),
                log.join("\n")
            );
            events += etcd_responses.iter().map(|r| r.events.len()).sum::<usize>();
            compacted_cancels += etcd_responses
                .iter()
                .filter(|r| r.compact_revision != 0)
                .count();
        }
        let extra: Vec<_> = rivet_groups
            .keys()
            .filter(|k| !etcd_groups.contains_key(k))
            .collect();
        assert!(
            extra.is_empty(),
            "seed {seed:#x}: rivet answered for watchers etcd did not: {extra:?}: {:?}",
            extra.iter().map(|k| &rivet_groups[k]).collect::<Vec<_>>()
        );
        println!(
            "seed {seed:#x} --shards {shards}: {} watchers equal, {events} events, \
             {compacted_cancels} compacted cancels, revision {}, compacted at {}, {stats:?}",
            etcd_groups.len(),
            gen.revision,
            gen.compacted
        );
        assert!(events > 50, "the scenario must exercise the watchers");
    });
}

/// Issue 10 item 9: a client that half-closes its side of a Watch stream right after
/// the create request (grpc-gateway does) keeps receiving events, from etcd and from
/// rivet alike, until it drops the stream.
#[test]
fn a_half_closed_watch_stream_still_delivers_events() {
    require_etcd_34();
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    let rt = runtime();
    let mut seen = Vec::new();
    for endpoint in [etcd.endpoint(), rivet.endpoint()] {
        seen.push(rt.block_on(async {
            let channel = channel(&endpoint).await;
            let mut kv = KvClient::new(channel.clone());
            let (requests, inbound) = mpsc::unbounded();
            requests
                .unbounded_send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create(b"hc", b"", 0, 0))),
                })
                .expect("queue the create request");
            // End of the client's stream: only the create request was sent.
            drop(requests);
            let mut responses = bounded("watch", WatchClient::new(channel).watch(inbound))
                .await
                .expect("watch")
                .into_inner();
            let mut events = Vec::new();
            let created = bounded("the created response", responses.next()).await;
            assert!(
                matches!(&created, Some(Ok(r)) if r.created),
                "{endpoint}: {created:?}"
            );
            // Two puts, each after the previous event arrived: the second certainly comes
            // after the server saw the end of the client's stream.
            for value in [&b"1"[..], b"2"] {
                bounded(
                    "put",
                    kv.put(PutRequest {
                        key: b(b"hc"),
                        value: b(value),
                        ..Default::default()
                    }),
                )
                .await
                .expect("put");
                let response = bounded("an event after the half-close", responses.next())
                    .await
                    .unwrap_or_else(|| panic!("{endpoint}: the stream ended after the half-close"))
                    .unwrap_or_else(|e| panic!("{endpoint}: the stream failed: {e}"));
                events.extend(
                    response
                        .events
                        .iter()
                        .map(|e| e.kv.as_ref().map(|kv| kv.value.clone())),
                );
            }
            events
        }));
    }
    assert_eq!(
        seen[1], seen[0],
        "rivet's events (right) differ from etcd's"
    );
    assert_eq!(seen[0].len(), 2);
}

#[test]
fn watch_streams_match_etcd_one_shard() {
    watch_differential("1");
}

#[test]
fn watch_streams_match_etcd_three_shards() {
    watch_differential("3");
}
