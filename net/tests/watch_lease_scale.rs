//! Watch, lease, lock and election under scale and faults (issue 4), against real rivet
//! processes with the raw generated gRPC clients:
//!
//! - 10,000 watchers on one member each receive exactly the events of their keys, in
//!   revision order, none missing or duplicated;
//! - a client that stops reading its watch stream delays no other watcher, and when it
//!   reads again it gets every event in order (the catch-up path, forced with a tiny
//!   recent-changes log through the test-only `RIVET_TEST_WATCH_RECENT_CHANGES`);
//! - watches cancelled while events are flowing get no event after their cancel response
//!   (ETCD_LESSONS 18);
//! - a lease whose leader is killed right after the grant expires once, after its TTL,
//!   with all of its keys deleted in one revision;
//! - the lock service excludes contending clients on different members of a cluster;
//! - an election hands over to the next candidate on resign and on lease revocation, as
//!   the observer and the `leader` RPC see it.
//!
//! Every wait is bounded; the assertions are about what happened and in which order,
//! never about how fast (the lease test checks the legal lower bound of an expiry).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::Cluster;
use common::{bounded, etcdctl, eventually, grpc_channel as channel, http_get, runtime, Rivet};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use rivet_api::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request::RequestUnion, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use rivet_api::mvccpb::event::EventType;
use rivet_api::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest,
    ResignRequest,
};
use rivet_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// The bound on any one wait of these tests (a server that never answers fails).
const BOUND: Duration = Duration::from_secs(60);

// ---- Helpers -----------------------------------------------------------------------------

/// etcd's prefix end of an ASCII prefix, as text (these tests' keys are ASCII).
fn prefix_end(prefix: &str) -> String {
    String::from_utf8(common::prefix_end(prefix.as_bytes())).expect("an ASCII prefix ends in ASCII")
}

/// One event as a watcher saw it (or as the writer logged it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    revision: i64,
    key: String,
    put: bool,
}

/// One watch response, reduced to what the tests check.
#[derive(Clone, Debug)]
struct Got {
    watch_id: i64,
    created: bool,
    canceled: bool,
    cancel_reason: String,
    compact_revision: i64,
    header_revision: i64,
    events: Vec<Ev>,
}

impl Got {
    fn of(response: WatchResponse) -> Got {
        Got {
            watch_id: response.watch_id,
            created: response.created,
            canceled: response.canceled,
            cancel_reason: response.cancel_reason,
            compact_revision: response.compact_revision,
            header_revision: response.header.map_or(0, |h| h.revision),
            events: response
                .events
                .into_iter()
                .map(|e| {
                    let kv = e.kv.unwrap_or_default();
                    Ev {
                        revision: kv.mod_revision,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        put: e.r#type == EventType::Put as i32,
                    }
                })
                .collect(),
        }
    }

    /// A response to a progress request (not tied to a watcher).
    fn is_progress(&self) -> bool {
        self.watch_id == -1 && !self.created && !self.canceled && self.events.is_empty()
    }
}

/// One open watch stream: its request sender and every response received, in order.
struct Watch {
    requests: mpsc::UnboundedSender<WatchRequest>,
    received: Arc<Mutex<Vec<Got>>>,
    ended: Arc<Mutex<Option<String>>>,
    gate: Option<oneshot::Sender<()>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Watch {
    fn open(channel: &Channel) -> Watch {
        Watch::open_gated(channel, None)
    }

    /// A stream whose client reads `before_gate` responses (if given) and then reads
    /// nothing until [`Watch::release`]: a slow client.
    fn open_gated(channel: &Channel, before_gate: Option<usize>) -> Watch {
        let (requests, inbound) = mpsc::unbounded();
        let (gate, gate_open) = oneshot::channel::<()>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (sink, end) = (received.clone(), ended.clone());
        let mut client = WatchClient::new(channel.clone());
        let reader = tokio::spawn(async move {
            let mut responses = match client.watch(inbound).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    *end.lock().expect("lock") = Some(format!("watch: {e}"));
                    return;
                }
            };
            let mut before = before_gate;
            let mut gate_open = Some(gate_open);
            loop {
                if before == Some(0) {
                    if let Some(open) = gate_open.take() {
                        let _ = open.await;
                    }
                    before = None;
                }
                match responses.next().await {
                    Some(Ok(response)) => {
                        sink.lock().expect("lock").push(Got::of(response));
                        if let Some(n) = before.as_mut() {
                            *n -= 1;
                        }
                    }
                    Some(Err(e)) => {
                        *end.lock().expect("lock") = Some(format!("stream error: {e}"));
                        return;
                    }
                    None => {
                        *end.lock().expect("lock") = Some("stream closed".into());
                        return;
                    }
                }
            }
        });
        Watch {
            requests,
            received,
            ended,
            gate: Some(gate),
            reader,
        }
    }

    fn send(&self, request: RequestUnion) {
        self.requests
            .unbounded_send(WatchRequest {
                request_union: Some(request),
            })
            .expect("watch stream open");
    }

    fn create(&self, key: &str, range_end: &str, watch_id: i64, start_revision: i64) {
        self.send(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            watch_id,
            start_revision,
            ..Default::default()
        }));
    }

    fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }));
    }

    fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}));
    }

    /// Lets a gated client read again.
    fn release(&mut self) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.send(());
        }
    }

    /// `f` of the responses received so far (panics if the stream ended).
    fn with<T>(&self, f: impl FnOnce(&[Got]) -> T) -> T {
        if let Some(reason) = self.ended.lock().expect("lock").as_ref() {
            panic!("watch stream ended: {reason}");
        }
        f(&self.received.lock().expect("lock"))
    }

    fn count(&self, f: impl Fn(&Got) -> bool) -> usize {
        self.with(|all| all.iter().filter(|g| f(g)).count())
    }

    fn events(&self) -> usize {
        self.with(|all| all.iter().map(|g| g.events.len()).sum())
    }

    /// Sends a progress request and waits for its answer: every response the stream sent
    /// before it has arrived.
    async fn flush(&self) {
        let before = self.count(Got::is_progress);
        self.progress();
        eventually("the progress response arrives", BOUND, || {
            self.count(Got::is_progress) > before
        })
        .await;
    }
}

/// Checks that the responses of one watcher carry exactly `expected` (ordered by
/// revision): revisions never go back, a revision is never split between responses,
/// nothing is missing or repeated. A live response holds one revision; a catch-up response
/// may hold many (etcd's batches of up to 1000 revisions). Within one revision events are
/// compared sorted by key (with several shards their order inside a revision is the
/// shards' merge order).
fn check_watcher(what: &str, responses: &[&Got], expected: &[Ev]) {
    let mut seen: Vec<Ev> = Vec::new();
    let mut last = 0;
    for response in responses {
        assert!(
            !response.events.is_empty(),
            "{what}: an empty event response {response:?}"
        );
        let first = response.events[0].revision;
        assert!(
            first > last,
            "{what}: a response starts at revision {first} after revision {last} \
             (out of order, repeated or split)"
        );
        for event in &response.events {
            assert!(
                event.revision >= last,
                "{what}: revision {} after {last} in one response",
                event.revision
            );
            last = event.revision;
        }
        seen.extend(response.events.iter().cloned());
    }
    seen.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    if seen != expected {
        let missing: Vec<&Ev> = expected.iter().filter(|e| !seen.contains(e)).collect();
        let extra: Vec<&Ev> = seen.iter().filter(|e| !expected.contains(e)).collect();
        panic!(
            "{what}: {} events, expected {}; missing (first 5) {:?}; unexpected (first 5) {:?}",
            seen.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            &extra[..extra.len().min(5)]
        );
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: Vec<u8>, lease: i64) -> i64 {
    let response = bounded(
        "put",
        kv.put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(value),
            lease,
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"))
    .into_inner();
    response.header.expect("header").revision
}

async fn get(kv: &mut KvClient<Channel>, key: &str, range_end: &str) -> Vec<(String, String)> {
    let response = bounded(
        "range",
        kv.range(RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("range {key}: {e}"))
    .into_inner();
    response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

async fn grant(lease: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    bounded(
        "lease grant",
        lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }),
    )
    .await
    .unwrap_or_else(|e| panic!("lease grant: {e}"))
    .into_inner()
    .id
}

fn healthy(endpoint: &str) -> bool {
    http_get(endpoint, "/health").is_ok_and(|b| b.contains("\"health\":\"true\""))
}

// ---- 1. Many watchers ------------------------------------------------------------------

const SCALE_STREAMS: usize = 20;
const SCALE_WATCHES_PER_STREAM: usize = 500;
const SCALE_CHANNELS: usize = 4;
const SCALE_KEYS: usize = 100;
const SCALE_REVISIONS: usize = 2000;

#[derive(Clone, Debug)]
struct Spec {
    key: String,
    prefix: bool,
}

impl Spec {
    fn matches(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        }
    }
}

fn scale_key(i: usize) -> String {
    format!("w/k{:02}", i % SCALE_KEYS)
}

/// Watch `g` of all: most on one key, every fiftieth on a prefix of ten keys, a few on
/// all keys.
fn scale_spec(g: usize) -> Spec {
    if g % 2500 == 5 {
        Spec {
            key: "w/".into(),
            prefix: true,
        }
    } else if g.is_multiple_of(50) {
        Spec {
            key: format!("w/k{}", (g / 50) % 10),
            prefix: true,
        }
    } else {
        Spec {
            key: scale_key(g),
            prefix: false,
        }
    }
}

/// Concurrent writers of the scale test; writer `w` owns the keys `k` with `k % 4 == w`.
const SCALE_WRITERS: usize = 4;

/// One writer's share of the revisions over its own keys: mostly puts, every tenth a
/// delete of the key it put just before, every fiftieth a txn putting three of its keys
/// in one revision. Returns the events written.
async fn scale_writer(mut kv: KvClient<Channel>, writer: usize, revisions: usize) -> Vec<Ev> {
    let own =
        |step: usize| scale_key((step % (SCALE_KEYS / SCALE_WRITERS)) * SCALE_WRITERS + writer);
    let mut log = Vec::new();
    for step in 0..revisions {
        if step % 50 == 25 {
            let keys = [own(step), own(step + 8), own(step + 16)];
            let success = keys
                .iter()
                .map(|k| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: Bytes::copy_from_slice(k.as_bytes()),
                        value: Bytes::from(format!("txn-{step}")),
                        ..Default::default()
                    })),
                })
                .collect();
            let response = bounded(
                "txn",
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                }),
            )
            .await
            .expect("txn")
            .into_inner();
            let revision = response.header.expect("header").revision;
            for key in keys {
                log.push(Ev {
                    revision,
                    key,
                    put: true,
                });
            }
        } else if step % 10 == 9 {
            let key = own(step - 1);
            let response = bounded(
                "delete",
                kv.delete_range(DeleteRangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    ..Default::default()
                }),
            )
            .await
            .expect("delete")
            .into_inner();
            assert_eq!(response.deleted, 1, "{key} was just put");
            log.push(Ev {
                revision: response.header.expect("header").revision,
                key,
                put: false,
            });
        } else {
            let key = own(step);
            let revision = put(&mut kv, &key, format!("v{step}").into_bytes(), 0).await;
            log.push(Ev {
                revision,
                key,
                put: true,
            });
        }
    }
    log
}

/// `revisions` revisions by [`SCALE_WRITERS`] concurrent writers; the events in revision
/// order.
async fn scale_writes(kv: &KvClient<Channel>, revisions: usize) -> Vec<Ev> {
    let writers = (0..SCALE_WRITERS)
        .map(|w| tokio::spawn(scale_writer(kv.clone(), w, revisions / SCALE_WRITERS)));
    let mut log = Vec::new();
    for writer in writers {
        log.extend(bounded("a writer", writer).await.expect("writer task"));
    }
    log.sort();
    let mut revisions: Vec<i64> = log.iter().map(|e| e.revision).collect();
    revisions.dedup();
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "the only writers: consecutive revisions"
    );
    log
}

#[test]
fn ten_thousand_watchers_on_one_member_see_exactly_their_events() {
    let rivet = Rivet::start(&["--shards", "2"]);
    let t0 = Instant::now();
    runtime().block_on(async {
        let endpoint = rivet.endpoint();
        let mut channels = Vec::new();
        for _ in 0..SCALE_CHANNELS {
            channels.push(channel(&endpoint).await);
        }
        let streams: Vec<Watch> = (0..SCALE_STREAMS)
            .map(|s| Watch::open(&channels[s % SCALE_CHANNELS]))
            .collect();
        let specs: Vec<Vec<Spec>> = (0..SCALE_STREAMS)
            .map(|s| {
                (0..SCALE_WATCHES_PER_STREAM)
                    .map(|j| scale_spec(s * SCALE_WATCHES_PER_STREAM + j))
                    .collect()
            })
            .collect();
        for (stream, specs) in streams.iter().zip(&specs) {
            for spec in specs {
                let end = if spec.prefix {
                    prefix_end(&spec.key)
                } else {
                    String::new()
                };
                // Server-chosen IDs: the stream answers its creates in order.
                stream.create(&spec.key, &end, 0, 0);
            }
        }
        eventually("all 10,000 watches are created", BOUND, || {
            streams
                .iter()
                .all(|w| w.count(|g| g.created) == SCALE_WATCHES_PER_STREAM)
        })
        .await;
        let ids: Vec<Vec<i64>> = streams
            .iter()
            .map(|w| {
                w.with(|all| {
                    assert!(
                        all.iter().all(|g| g.created && !g.canceled),
                        "a create was refused"
                    );
                    all.iter().map(|g| g.watch_id).collect()
                })
            })
            .collect();
        for ids in &ids {
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), ids.len(), "watch IDs repeat on one stream");
        }

        println!("created at {:?}", t0.elapsed());
        let kv = KvClient::new(channel(&endpoint).await);
        let log = scale_writes(&kv, SCALE_REVISIONS).await;
        println!("written at {:?}", t0.elapsed());
        let expected: Vec<Vec<Vec<Ev>>> = specs
            .iter()
            .map(|specs| {
                specs
                    .iter()
                    .map(|spec| {
                        log.iter()
                            .filter(|e| spec.matches(&e.key))
                            .cloned()
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let totals: Vec<usize> = expected
            .iter()
            .map(|per| per.iter().map(Vec::len).sum())
            .collect();
        println!("{} events expected in all", totals.iter().sum::<usize>());
        eventually("every stream has received its events", BOUND, || {
            streams
                .iter()
                .zip(&totals)
                .all(|(w, total)| w.events() >= *total)
        })
        .await;
        println!("received at {:?}", t0.elapsed());
        for stream in &streams {
            stream.flush().await;
        }
        println!("flushed at {:?}", t0.elapsed());
        for (s, stream) in streams.iter().enumerate() {
            stream.with(|all| {
                let mut by_id: HashMap<i64, Vec<&Got>> = HashMap::new();
                for got in all.iter().filter(|g| !g.created && !g.is_progress()) {
                    by_id.entry(got.watch_id).or_default().push(got);
                }
                for (j, id) in ids[s].iter().enumerate() {
                    let responses = by_id.remove(id).unwrap_or_default();
                    check_watcher(
                        &format!("stream {s} watch {id} ({:?})", specs[s][j]),
                        &responses,
                        &expected[s][j],
                    );
                }
                assert!(
                    by_id.is_empty(),
                    "stream {s}: responses for unknown watch IDs {:?}",
                    by_id.keys().collect::<Vec<_>>()
                );
            });
        }
    });
}

// ---- 2. A slow watcher -----------------------------------------------------------------

/// The recent-changes log of each shard in the slow-watcher test: tiny, so that a client
/// that stops reading falls off it and must catch up from the index.
const TINY_RECENT_CHANGES: &str = "64";
const SLOW_WRITES: usize = 3000;
/// 1 KiB values: the slow client's unread responses (3 MB) are far more than its stream
/// window (64 KiB), the server's send buffer and the stream's response queue together.
const SLOW_VALUE_BYTES: usize = 1024;

fn slow_key(i: usize) -> String {
    format!("s/{}", i % 10)
}

#[test]
fn a_slow_watcher_delays_no_other_watcher_and_catches_up() {
    let rivet = Rivet::start_with_env(
        &["--shards", "2"],
        &[("RIVET_TEST_WATCH_RECENT_CHANGES", TINY_RECENT_CHANGES)],
    );
    runtime().block_on(async {
        let endpoint = rivet.endpoint();
        // The slow client's connection has a small stream window; one fast stream shares
        // that connection, three more have another.
        let slow_channel = common::grpc_channel_with_window(&endpoint, Some(65_535)).await;
        let other = channel(&endpoint).await;
        let mut slow = Watch::open_gated(&slow_channel, Some(2));
        let fast: Vec<Watch> = [&slow_channel, &other, &other, &other]
            .into_iter()
            .map(Watch::open)
            .collect();
        for watch in fast.iter().chain([&slow]) {
            watch.create("s/", &prefix_end("s/"), 1, 0);
            watch.create("s/3", "", 2, 0);
        }
        eventually("the watches are created", BOUND, || {
            fast.iter()
                .chain([&slow])
                .all(|w| w.count(|g| g.created) == 2)
        })
        .await;

        // The writes, eight at a time; their log in revision order.
        let kv = KvClient::new(channel(&endpoint).await);
        let mut log: Vec<Ev> = futures::stream::iter(0..SLOW_WRITES)
            .map(|i| {
                let mut kv = kv.clone();
                async move {
                    let key = slow_key(i);
                    let mut value = vec![b'x'; SLOW_VALUE_BYTES];
                    value[..8].copy_from_slice(format!("{i:08}").as_bytes());
                    let revision = put(&mut kv, &key, value, 0).await;
                    Ev {
                        revision,
                        key,
                        put: true,
                    }
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        log.sort();
        let of_key3: Vec<Ev> = log.iter().filter(|e| e.key == "s/3").cloned().collect();
        let total = log.len() + of_key3.len();

        // Every fast watcher gets everything while the slow client still reads nothing.
        eventually("the fast watchers have every event", BOUND, || {
            fast.iter().all(|w| w.events() >= total)
        })
        .await;
        assert_eq!(
            slow.events(),
            0,
            "the slow client has not read a response since its creates"
        );
        for (i, watch) in fast.iter().enumerate() {
            watch.flush().await;
            watch.with(|all| {
                let mine = |id: i64| -> Vec<&Got> {
                    all.iter()
                        .filter(|g| g.watch_id == id && !g.created && !g.is_progress())
                        .collect()
                };
                check_watcher(&format!("fast stream {i}, prefix"), &mine(1), &log);
                check_watcher(&format!("fast stream {i}, s/3"), &mine(2), &of_key3);
            });
        }

        // Now the slow client reads: it must get every event, in order.
        slow.release();
        let caught_up = tokio::time::timeout(BOUND, async {
            while slow.events() < total {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            caught_up.is_ok(),
            "the slow watcher has {} of {total} events after {BOUND:?}",
            slow.events()
        );
        slow.flush().await;
        slow.with(|all| {
            let mine = |id: i64| -> Vec<&Got> {
                all.iter()
                    .filter(|g| g.watch_id == id && !g.created && !g.is_progress())
                    .collect()
            };
            for got in all {
                assert!(
                    !got.canceled && got.compact_revision == 0,
                    "slow watcher cancelled: {got:?}"
                );
            }
            check_watcher("slow stream, prefix", &mine(1), &log);
            check_watcher("slow stream, s/3", &mine(2), &of_key3);
            // The test did exercise the catch-up path: live responses hold one revision,
            // catch-up responses (read from the index) hold many.
            assert!(
                mine(1)
                    .iter()
                    .any(|g| g.events.first().map(|e| e.revision)
                        != g.events.last().map(|e| e.revision)),
                "the slow watcher never caught up from the index"
            );
        });
        assert!(healthy(&endpoint), "log:\n{}", {
            std::fs::read_to_string(&rivet.log).unwrap_or_default()
        });
    });
}

// ---- 3. Cancel race ----------------------------------------------------------------------

const CANCEL_CYCLES: usize = 1500;
/// Watch IDs reused round-robin: a later create reuses an ID right after its cancel.
const CANCEL_IDS: i64 = 7;

#[test]
fn cancelled_watches_get_no_events_after_their_cancel_response() {
    let rivet = Rivet::start(&["--shards", "2"]);
    runtime().block_on(async {
        let endpoint = rivet.endpoint();
        let ch = channel(&endpoint).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut kv = KvClient::new(channel(&endpoint).await);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    put(
                        &mut kv,
                        &format!("c/{}", n % 5),
                        format!("{n}").into_bytes(),
                        0,
                    )
                    .await;
                    n += 1;
                }
                n
            })
        };
        let watch = Watch::open(&ch);
        let mut dropped_streams = 0;
        for cycle in 0..CANCEL_CYCLES {
            let id = (cycle as i64 % CANCEL_IDS) + 1;
            // Now and then from the past: the watcher is cancelled while catching up.
            let start_revision = if cycle % 4 == 0 {
                let seen = watch.with(|all| all.last().map_or(1, |g| g.header_revision));
                (seen - 30).max(1)
            } else {
                0
            };
            watch.create("c/", &prefix_end("c/"), id, start_revision);
            if cycle % 3 == 0 {
                // Cancel once the watcher is live and, every other time, has had an event.
                let wanted = usize::from(cycle % 6 == 0);
                eventually("the create is answered", BOUND, || {
                    watch.with(|all| {
                        let creates = all.iter().filter(|g| g.created).count();
                        let Some(last) = all.iter().rposition(|g| g.created) else {
                            return false;
                        };
                        let events = all[last..]
                            .iter()
                            .filter(|g| g.watch_id == id && !g.events.is_empty())
                            .count();
                        creates == cycle + 1 && events >= wanted
                    })
                })
                .await;
            }
            watch.cancel(id);
            if cycle % 100 == 50 {
                // The client goes away with live watchers on its stream.
                let gone = Watch::open(&ch);
                for i in 0..3 {
                    gone.create("c/", &prefix_end("c/"), i + 1, 0);
                }
                eventually("the doomed stream's watches are created", BOUND, || {
                    gone.count(|g| g.created) == 3
                })
                .await;
                drop(gone);
                dropped_streams += 1;
            }
            if cycle % 50 == 49 {
                eventually("the stream has answered every cancel so far", BOUND, || {
                    watch.count(|g| g.canceled) == cycle + 1
                })
                .await;
            }
        }
        eventually("every cancel is answered", BOUND, || {
            watch.count(|g| g.canceled) == CANCEL_CYCLES
        })
        .await;
        // More writes after the last cancel, then a progress round trip: anything the
        // stream would still send for a cancelled watcher has arrived by then.
        let before = watch.events();
        let writes_then = bounded("writer", async {
            let mut kv = KvClient::new(channel(&endpoint).await);
            let from = put(&mut kv, "c/after", b"1".to_vec(), 0).await;
            put(&mut kv, "c/after", b"2".to_vec(), 0).await;
            from
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let writes = bounded("writer stops", writer).await.expect("writer task");
        watch.flush().await;

        let (creates, cancels) = watch.with(|all| {
            let mut live: HashMap<i64, bool> = HashMap::new();
            let (mut creates, mut cancels) = (0, 0);
            for (i, got) in all.iter().enumerate() {
                let is_live = live.entry(got.watch_id).or_default();
                if got.created {
                    assert!(!got.canceled, "create refused at response {i}: {got:?}");
                    assert!(!*is_live, "watch {} created twice", got.watch_id);
                    *is_live = true;
                    creates += 1;
                } else if got.canceled {
                    assert!(*is_live, "cancel of a watch that is not live: {got:?}");
                    assert!(
                        got.cancel_reason.is_empty() && got.compact_revision == 0,
                        "{got:?}"
                    );
                    *is_live = false;
                    cancels += 1;
                } else if !got.is_progress() {
                    assert!(
                        *is_live,
                        "response {i}: events for watch {} after its cancel response: {got:?}",
                        got.watch_id
                    );
                }
            }
            (creates, cancels)
        });
        assert_eq!((creates, cancels), (CANCEL_CYCLES, CANCEL_CYCLES));
        assert_eq!(
            watch.events(),
            before,
            "events arrived after every watch was cancelled"
        );
        println!(
            "{CANCEL_CYCLES} create/cancel cycles, {dropped_streams} streams dropped with \
             live watches, {writes} concurrent writes"
        );

        // Still healthy: a new watcher on a new stream gets the history it asks for.
        assert!(healthy(&endpoint));
        let fresh = Watch::open(&ch);
        fresh.create("c/after", "", 0, writes_then);
        eventually("a new watcher gets its events", BOUND, || {
            fresh.events() == 2
        })
        .await;
    });
}

// ---- 4. Lease expiry across a leader change ----------------------------------------------

const LEASE_TTL_SECONDS: i64 = 5;

#[test]
fn a_lease_expires_once_after_its_ttl_across_a_leader_change() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(None);
    let survivor = (leader + 1) % 3;
    let endpoint = cluster.members[survivor].endpoint();
    let rt = runtime();
    let (id, before_grant, watch) = rt.block_on(async {
        let ch = channel(&endpoint).await;
        let watch = Watch::open(&ch);
        watch.create("lease/", &prefix_end("lease/"), 0, 0);
        eventually("the watch is created", BOUND, || {
            watch.count(|g| g.created) == 1
        })
        .await;
        let mut lease = LeaseClient::new(ch.clone());
        let mut kv = KvClient::new(ch);
        let before_grant = Instant::now();
        let id = grant(&mut lease, LEASE_TTL_SECONDS).await;
        for k in 0..3 {
            put(&mut kv, &format!("lease/{k}"), b"v".to_vec(), id).await;
        }
        (id, before_grant, watch)
    });
    cluster.members[leader].kill9();
    let new_leader = cluster.wait_for_leader(Some(leader));
    println!("leader m{leader} killed, m{new_leader} leads");
    rt.block_on(async {
        let deletes = |all: &[Got]| -> Vec<Got> {
            all.iter()
                .filter(|g| g.events.iter().any(|e| !e.put))
                .cloned()
                .collect()
        };
        eventually("the lease's keys are deleted", BOUND, || {
            !watch.with(deletes).is_empty()
        })
        .await;
        let observed = before_grant.elapsed();
        println!("deletion observed {observed:?} after the grant was sent");
        assert!(
            observed >= Duration::from_secs(LEASE_TTL_SECONDS as u64),
            "keys deleted {observed:?} after the grant was sent, before the {LEASE_TTL_SECONDS} s TTL"
        );
        // Later writes, then a progress round trip: no second deletion arrives.
        let ch = channel(&endpoint).await;
        let mut kv = KvClient::new(ch.clone());
        put(&mut kv, "lease/after", b"1".to_vec(), 0).await;
        eventually("the later put is seen", BOUND, || {
            watch.with(|all| all.iter().any(|g| g.events.iter().any(|e| e.key == "lease/after")))
        })
        .await;
        watch.flush().await;
        let deletes = watch.with(deletes);
        assert_eq!(deletes.len(), 1, "one deleting response: {deletes:?}");
        let events = &deletes[0].events;
        let revision = events[0].revision;
        let mut keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["lease/0", "lease/1", "lease/2"], "{events:?}");
        assert!(
            events.iter().all(|e| !e.put && e.revision == revision),
            "all three deletions in one revision: {events:?}"
        );
        assert_eq!(
            get(&mut kv, "lease/", &prefix_end("lease/")).await,
            [("lease/after".to_string(), "1".to_string())]
        );
        let ttl = bounded(
            "time to live",
            LeaseClient::new(ch).lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }),
        )
        .await
        .expect("time to live")
        .into_inner();
        assert_eq!(ttl.ttl, -1, "{ttl:?}");
        assert!(ttl.keys.is_empty(), "{ttl:?}");
    });
    let out = etcdctl(
        &endpoint,
        &["lease", "timetolive", &format!("{id:x}")],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("already expired"),
        "etcdctl lease timetolive: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- 5. Lock -------------------------------------------------------------------------------

const LOCK_CLIENTS: usize = 5;
const LOCK_ROUNDS: usize = 8;
const LOCK_NAME: &str = "mutex";
const COUNTER: &str = "counter";

/// One contending client: `LOCK_ROUNDS` times lock, read the counter, write it plus one
/// (no compare: only the lock keeps this correct), unlock. Records its enter and exit
/// markers and checks nobody else is inside.
async fn lock_client(
    client: usize,
    endpoint: String,
    inside: Arc<AtomicUsize>,
    markers: Arc<Mutex<Vec<(usize, usize, bool)>>>,
) {
    let ch = channel(&endpoint).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut lock = LockClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let id = grant(&mut lease, 120).await;
    for round in 0..LOCK_ROUNDS {
        let key = bounded(
            "lock",
            lock.lock(LockRequest {
                name: Bytes::from_static(LOCK_NAME.as_bytes()),
                lease: id,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("client {client}: lock: {e}"))
        .into_inner()
        .key;
        markers.lock().expect("lock").push((client, round, true));
        let others = inside.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            others, 0,
            "client {client} entered while {others} held the lock"
        );
        let value: u64 = get(&mut kv, COUNTER, "")
            .await
            .first()
            .map_or(0, |(_, v)| v.parse().expect("counter"));
        // Give the others every chance to barge in.
        tokio::time::sleep(Duration::from_millis((client as u64 + round as u64) % 4)).await;
        put(&mut kv, COUNTER, (value + 1).to_string().into_bytes(), 0).await;
        inside.fetch_sub(1, Ordering::SeqCst);
        markers.lock().expect("lock").push((client, round, false));
        bounded("unlock", lock.unlock(UnlockRequest { key }))
            .await
            .unwrap_or_else(|e| panic!("client {client}: unlock: {e}"));
    }
    bounded("revoke", lease.lease_revoke(LeaseRevokeRequest { id }))
        .await
        .expect("revoke");
}

#[test]
fn the_lock_excludes_contending_clients_across_members() {
    let cluster = Cluster::start(3, &[]);
    let endpoints = cluster.endpoints();
    runtime().block_on(async {
        let inside = Arc::new(AtomicUsize::new(0));
        let markers = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..LOCK_CLIENTS)
            .map(|c| {
                tokio::spawn(lock_client(
                    c,
                    endpoints[c % endpoints.len()].clone(),
                    inside.clone(),
                    markers.clone(),
                ))
            })
            .collect();
        for task in tasks {
            if let Err(e) = bounded("a lock client", task).await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let total = LOCK_CLIENTS * LOCK_ROUNDS;
        let markers = markers.lock().expect("lock").clone();
        assert_eq!(markers.len(), 2 * total);
        for pair in markers.chunks(2) {
            assert!(
                pair[0].2 && !pair[1].2 && pair[0].0 == pair[1].0 && pair[0].1 == pair[1].1,
                "critical sections overlap: {pair:?}"
            );
        }
        for endpoint in &endpoints {
            let mut kv = KvClient::new(channel(endpoint).await);
            assert_eq!(
                get(&mut kv, COUNTER, "").await,
                [(COUNTER.to_string(), total.to_string())],
                "the counter on {endpoint}"
            );
            assert!(
                get(
                    &mut kv,
                    &format!("{LOCK_NAME}/"),
                    &prefix_end(&format!("{LOCK_NAME}/"))
                )
                .await
                .is_empty(),
                "lock keys left behind"
            );
        }
        let holders: Vec<usize> = markers.iter().step_by(2).map(|m| m.0).collect();
        println!("lock holders in order: {holders:?}");
    });
}

// ---- 6. Election -------------------------------------------------------------------------

const ELECTION: &str = "election";

#[test]
fn an_election_hands_over_on_resign_and_on_lease_revocation() {
    let cluster = Cluster::start(3, &[]);
    let endpoints = cluster.endpoints();
    runtime().block_on(async {
        let a = channel(&endpoints[0]).await;
        let b = channel(&endpoints[1]).await;
        let o = channel(&endpoints[2]).await;
        let name = Bytes::from_static(ELECTION.as_bytes());
        let prefix = format!("{ELECTION}/");
        let lease_a = grant(&mut LeaseClient::new(a.clone()), 120).await;
        let lease_b = grant(&mut LeaseClient::new(b.clone()), 120).await;
        let lease_c = grant(&mut LeaseClient::new(o.clone()), 120).await;

        let campaign = |channel: Channel, value: &'static str, lease: i64| {
            let name = name.clone();
            let done: Arc<Mutex<Option<LeaderKey>>> = Arc::new(Mutex::new(None));
            let sink = done.clone();
            let task = tokio::spawn(async move {
                let leader = ElectionClient::new(channel)
                    .campaign(CampaignRequest {
                        name,
                        lease,
                        value: Bytes::from_static(value.as_bytes()),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("campaign {value}: {e}"))
                    .into_inner()
                    .leader
                    .expect("leader key");
                *sink.lock().expect("lock") = Some(leader);
            });
            (done, task)
        };
        let leader_now = |channel: Channel| {
            let name = name.clone();
            async move {
                let kv = bounded(
                    "leader",
                    ElectionClient::new(channel).leader(LeaderRequest { name }),
                )
                .await
                .expect("leader")
                .into_inner()
                .kv
                .expect("leader kv");
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            }
        };
        let candidates = |channel: Channel| {
            let (prefix, end) = (prefix.clone(), prefix_end(&prefix));
            async move { get(&mut KvClient::new(channel), &prefix, &end).await.len() }
        };

        // A leads at once.
        let (a_done, a_task) = campaign(a.clone(), "a", lease_a);
        bounded("campaign a", a_task).await.expect("campaign a");
        let a_key = a_done.lock().expect("lock").clone().expect("a leads");

        // The observer, on the third member, sees A.
        let observed: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let observer = {
            let sink = observed.clone();
            let name = name.clone();
            let o = o.clone();
            tokio::spawn(async move {
                let mut stream = ElectionClient::new(o)
                    .observe(LeaderRequest { name })
                    .await
                    .expect("observe")
                    .into_inner();
                while let Some(Ok(response)) = stream.next().await {
                    let kv = response.kv.expect("kv");
                    sink.lock().expect("lock").push((
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    ));
                }
            })
        };
        let values = || -> Vec<String> {
            observed
                .lock()
                .expect("lock")
                .iter()
                .map(|(_, v)| v.clone())
                .collect()
        };
        eventually("the observer sees a", BOUND, || values() == ["a"]).await;

        // B campaigns and waits behind A.
        let (b_done, b_task) = campaign(b.clone(), "b", lease_b);
        let mut n = 0;
        for _ in 0..500 {
            n = candidates(o.clone()).await;
            if n == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n, 2, "b's campaign key appears");
        assert!(
            b_done.lock().expect("lock").is_none(),
            "b leads while a has not resigned"
        );
        let a_key_text = String::from_utf8_lossy(&a_key.key).into_owned();
        assert_eq!(
            leader_now(b.clone()).await,
            (a_key_text.clone(), "a".to_string())
        );

        // A resigns: B leads.
        bounded(
            "resign",
            ElectionClient::new(a.clone()).resign(ResignRequest {
                leader: Some(a_key),
            }),
        )
        .await
        .expect("resign");
        bounded("campaign b", b_task).await.expect("campaign b");
        let b_key = b_done.lock().expect("lock").clone().expect("b leads");
        let b_key_text = String::from_utf8_lossy(&b_key.key).into_owned();
        eventually("the observer sees b", BOUND, || values() == ["a", "b"]).await;
        for channel in [&a, &b, &o] {
            assert_eq!(
                leader_now(channel.clone()).await,
                (b_key_text.clone(), "b".to_string())
            );
        }

        // C campaigns behind B; B's lease is revoked: C leads.
        let (c_done, c_task) = campaign(o.clone(), "c", lease_c);
        let mut n = 0;
        for _ in 0..500 {
            n = candidates(a.clone()).await;
            if n == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n, 2, "c's campaign key appears");
        assert!(
            c_done.lock().expect("lock").is_none(),
            "c leads while b holds its lease"
        );
        bounded(
            "revoke",
            LeaseClient::new(a.clone()).lease_revoke(LeaseRevokeRequest { id: lease_b }),
        )
        .await
        .expect("revoke b's lease");
        bounded("campaign c", c_task).await.expect("campaign c");
        let c_key = c_done.lock().expect("lock").clone().expect("c leads");
        let c_key_text = String::from_utf8_lossy(&c_key.key).into_owned();
        eventually("the observer sees c", BOUND, || values() == ["a", "b", "c"]).await;

        // C proclaims a new value: the observer sees it, the leader key stays C's.
        bounded(
            "proclaim",
            ElectionClient::new(o.clone()).proclaim(ProclaimRequest {
                leader: Some(c_key),
                value: Bytes::from_static(b"c2"),
            }),
        )
        .await
        .expect("proclaim");
        eventually("the observer sees c2", BOUND, || {
            values() == ["a", "b", "c", "c2"]
        })
        .await;
        for channel in [&a, &b, &o] {
            assert_eq!(
                leader_now(channel.clone()).await,
                (c_key_text.clone(), "c2".to_string())
            );
        }
        let keys: Vec<String> = observed
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            keys,
            [a_key_text, b_key_text, c_key_text.clone(), c_key_text]
        );
        observer.abort();
    });
}
