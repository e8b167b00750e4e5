//! Differential tests of the Watch and Lease services (and of etcdctl's `watch`, `lease`,
//! `lock` and `elect` commands) against a real etcd 3.4 started by the test.
//!
//! Both servers start empty and see the same requests in the same order, so revisions,
//! lease TTLs and watch IDs match. Compared field by field with the raw generated gRPC
//! clients; only the top-level `member_id` and `cluster_id` (random per cluster) are
//! ignored. `raft_term` is compared: rivet elects itself at term 2 like etcd's bootstrap.
//!
//! What is compared loosely, and why: responses of different watchers are compared per
//! watcher (etcd sends one revision's responses in Go map order); with three shards the
//! events of one revision are compared sorted by key (a documented deviation, see
//! docs/ARCHITECTURE.md, Watch); lease key lists and lease lists are sorted (Go map order
//! in etcd); remaining TTLs may differ by a second (granted TTLs compare exactly);
//! etcdctl output has lease IDs (random) masked. The seeded watch scenario takes its
//! seed from `RIVET_DIFF_SEED` and its length from `RIVET_DIFF_STEPS`.
//!
//! The etcdctl scenarios (watch, interactive watch, lease, lock, elect) run twice: against
//! one member of each, and against a 3-member cluster of each with etcdctl given all
//! three endpoints.
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::Cluster;
use common::{runtime, Etcd, Rivet};
use futures::channel::mpsc;
use futures::StreamExt;
use rivet_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op,
    watch_client::WatchClient,
    watch_create_request::FilterType,
    watch_request::RequestUnion,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader,
    TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0x5eed_3a7c_4000_0001;
/// How long without a new watch response counts as "the server has sent everything".
/// etcd syncs unsynced (catching-up) watchers every 100 ms; this is well above that.
const QUIET: Duration = Duration::from_millis(350);
/// The bound on waiting for quiescence (a server that never stops sending fails).
const QUIET_BOUND: Duration = Duration::from_secs(15);
/// How long one unary request may take before the test calls it a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// SplitMix64: the replayed sequence depends on the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % ((hi - lo + 1) as u64)) as i64
    }
}

fn env_seed() -> u64 {
    match std::env::var("RIVET_DIFF_SEED") {
        Ok(text) => {
            let text = text.trim();
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .unwrap_or_else(|e| panic!("RIVET_DIFF_SEED={text:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

fn require_etcd_34() {
    assert!(
        Etcd::available(),
        "these tests need etcd 3.4 on PATH (apt-get install etcd-server); they fail rather \
         than skip"
    );
    let version = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .expect("etcd --version");
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains("etcd Version: 3.4."), "need etcd 3.4: {text}");
}

async fn channel(endpoint: &str) -> Channel {
    let url = format!("http://{endpoint}");
    Channel::from_shared(url.clone())
        .expect("endpoint url")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn b(text: &[u8]) -> Bytes {
    Bytes::copy_from_slice(text)
}

fn clear_ids(header: &mut Option<ResponseHeader>) {
    if let Some(h) = header {
        h.member_id = 0;
        h.cluster_id = 0;
    }
}

/// A unary answer or the error, comparable across servers.
fn outcome<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(r) => format!("{:?}", r.into_inner()),
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
    }
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(ANSWER_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_TIMEOUT:?}"))
}

// ---- Watch -----------------------------------------------------------------------------

/// The keys written: shared prefixes, so prefixes and ranges overlap.
const KEYS: [&[u8]; 10] = [
    b"a", b"a/1", b"a/2", b"ab", b"b", b"b/1", b"c", b"foo", b"foo/x", b"fop",
];

/// One open watch stream: the request sender and every response received, in order.
struct Stream {
    requests: mpsc::UnboundedSender<WatchRequest>,
    received: Arc<Mutex<Vec<WatchResponse>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One server's side of the watch test.
struct Side {
    name: &'static str,
    channel: Channel,
    kv: KvClient<Channel>,
    streams: Vec<Stream>,
}

impl Side {
    async fn new(name: &'static str, endpoint: &str) -> Side {
        let channel = channel(endpoint).await;
        Side {
            name,
            kv: KvClient::new(channel.clone()),
            channel,
            streams: Vec::new(),
        }
    }

    async fn open_stream(&mut self) {
        let (requests, inbound) = mpsc::unbounded();
        let mut client = WatchClient::new(self.channel.clone());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let name = self.name;
        // etcd (grpc-go) sends the stream's headers with its first response, so the call
        // is awaited by the reader, not here.
        let reader = tokio::spawn(async move {
            let mut responses = client
                .watch(inbound)
                .await
                .unwrap_or_else(|e| panic!("{name}: watch: {e}"))
                .into_inner();
            while let Some(Ok(mut response)) = responses.next().await {
                clear_ids(&mut response.header);
                sink.lock().expect("lock").push(response);
            }
        });
        self.streams.push(Stream {
            requests,
            received,
            reader,
        });
    }

    fn send(&self, stream: usize, request: RequestUnion) {
        self.streams[stream]
            .requests
            .unbounded_send(WatchRequest {
                request_union: Some(request),
            })
            .expect("watch stream open");
    }

    fn received_count(&self) -> usize {
        self.streams
            .iter()
            .map(|s| s.received.lock().expect("lock").len())
            .sum()
    }

    /// Waits until no stream received anything for [`QUIET`].
    async fn quiesce(&self) {
        let deadline = Instant::now() + QUIET_BOUND;
        let mut seen = self.received_count();
        loop {
            tokio::time::sleep(QUIET).await;
            let now = self.received_count();
            if now == seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: watch responses still arriving after {QUIET_BOUND:?}",
                self.name
            );
            seen = now;
        }
    }

    /// Every stream's responses grouped by watch ID, each group in arrival order. etcd
    /// sends the responses of different watchers of one revision in map order (random),
    /// so only the order within a watcher is compared.
    fn by_watcher(&self) -> BTreeMap<(usize, i64), Vec<WatchResponse>> {
        let mut groups: BTreeMap<(usize, i64), Vec<WatchResponse>> = BTreeMap::new();
        for (i, stream) in self.streams.iter().enumerate() {
            for response in stream.received.lock().expect("lock").iter() {
                groups
                    .entry((i, response.watch_id))
                    .or_default()
                    .push(response.clone());
            }
        }
        groups
    }
}

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

fn prefix_end(key: &[u8]) -> Bytes {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    b(b"\0")
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
fn live_ids(responses: &[WatchResponse]) -> Vec<i64> {
    let mut live = Vec::new();
    for r in responses {
        if r.created && !r.canceled {
            live.push(r.watch_id);
        } else if r.canceled {
            live.retain(|id| *id != r.watch_id);
        }
    }
    live
}

fn first_difference(etcd: &[WatchResponse], rivet: &[WatchResponse]) -> String {
    for (i, (e, r)) in etcd.iter().zip(rivet).enumerate() {
        if e != r {
            return format!("response {i}:\n  etcd:  {e:?}\n  rivet: {r:?}");
        }
    }
    format!(
        "etcd sent {} responses, rivet {}; the extra ones:\n  etcd:  {:?}\n  rivet: {:?}",
        etcd.len(),
        rivet.len(),
        etcd.get(rivet.len()..),
        rivet.get(etcd.len()..)
    )
}

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

fn create(key: &[u8], range_end: &[u8], start_revision: i64, watch_id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key),
        range_end: b(range_end),
        start_revision,
        watch_id,
        prev_kv: true,
        ..Default::default()
    }
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
    let seed = env_seed();
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
            rng: Rng(seed),
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
                // Watch requests answer asynchronously; catching-up watchers must be
                // synced before the next write, or its events may join their catch-up.
                tokio::join!(etcd_side.quiesce(), rivet_side.quiesce());
            }
        }
        tokio::join!(etcd_side.quiesce(), rivet_side.quiesce());
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

// ---- Lease -----------------------------------------------------------------------------

use rivet_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, RangeRequest,
};

/// One server's lease and KV clients, and the ID it chose for the server-chosen lease.
struct LeaseSide {
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
    chosen: i64,
}

impl LeaseSide {
    async fn new(endpoint: &str) -> LeaseSide {
        let channel = channel(endpoint).await;
        LeaseSide {
            lease: LeaseClient::new(channel.clone()),
            kv: KvClient::new(channel),
            chosen: 0,
        }
    }

    /// `text` with this side's server-chosen lease ID replaced by a placeholder, in
    /// decimal (Debug of the messages) and in hex (error messages).
    fn normalize(&self, text: String) -> String {
        if self.chosen == 0 {
            return text;
        }
        text.replace(&self.chosen.to_string(), "<chosen>")
            .replace(&format!("{:x}", self.chosen), "<chosen>")
    }

    /// A lease ID in a request: `CHOSEN` stands for this side's server-chosen one.
    fn id(&self, id: i64) -> i64 {
        if id == CHOSEN {
            self.chosen
        } else {
            id
        }
    }

    async fn grant(&mut self, ttl: i64, id: i64) -> String {
        let result = self.lease.lease_grant(LeaseGrantRequest { ttl, id }).await;
        let result = result.map(|r| {
            r.map(|mut g| {
                clear_ids(&mut g.header);
                if id == 0 && self.chosen == 0 {
                    self.chosen = g.id;
                }
                g
            })
        });
        self.normalize(outcome(result))
    }

    async fn revoke(&mut self, id: i64) -> String {
        let id = self.id(id);
        let result = self.lease.lease_revoke(LeaseRevokeRequest { id }).await;
        let result = result.map(|r| {
            r.map(|mut g| {
                clear_ids(&mut g.header);
                g
            })
        });
        self.normalize(outcome(result))
    }

    async fn time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, String> {
        let id = self.id(id);
        match self
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await
        {
            Ok(r) => {
                let mut r = r.into_inner();
                clear_ids(&mut r.header);
                if r.id == self.chosen && self.chosen != 0 {
                    r.id = CHOSEN;
                }
                // etcd lists a lease's keys in Go map order (random): compared as sets.
                r.keys.sort();
                Ok(r)
            }
            Err(s) => Err(self.normalize(format!("error {:?}: {}", s.code(), s.message()))),
        }
    }

    async fn leases(&mut self) -> String {
        let mut r = self
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await
            .expect("Leases")
            .into_inner();
        clear_ids(&mut r.header);
        for lease in &mut r.leases {
            if lease.id == self.chosen {
                lease.id = CHOSEN;
            }
        }
        // etcd lists its lease map in Go map order.
        r.leases.sort_by_key(|l| l.id);
        format!("{r:?}")
    }

    /// One keep-alive on a stream of its own: the first answer (or the error).
    async fn keep_alive_once(&mut self, id: i64) -> String {
        let id = self.id(id);
        let (requests, inbound) = mpsc::unbounded();
        requests
            .unbounded_send(LeaseKeepAliveRequest { id })
            .expect("send");
        let text = match self.lease.lease_keep_alive(inbound).await {
            Ok(stream) => match stream.into_inner().next().await {
                Some(Ok(mut r)) => {
                    clear_ids(&mut r.header);
                    format!("{r:?}")
                }
                Some(Err(s)) => format!("error {:?}: {}", s.code(), s.message()),
                None => "stream ended".to_string(),
            },
            Err(s) => format!("error {:?}: {}", s.code(), s.message()),
        };
        drop(requests);
        self.normalize(text)
    }

    async fn put(&mut self, key: &str, lease: i64) -> String {
        let lease = self.id(lease);
        let result = self
            .kv
            .put(PutRequest {
                key: Bytes::from(key.to_string()),
                value: b(b"v"),
                lease,
                ..Default::default()
            })
            .await;
        let result = result.map(|r| {
            r.map(|mut p| {
                clear_ids(&mut p.header);
                p
            })
        });
        self.normalize(outcome(result))
    }

    async fn everything(&mut self) -> String {
        let result = self
            .kv
            .range(RangeRequest {
                key: b(b"\0"),
                range_end: b(b"\0"),
                ..Default::default()
            })
            .await;
        let result = result.map(|r| {
            r.map(|mut p| {
                clear_ids(&mut p.header);
                p
            })
        });
        self.normalize(outcome(result))
    }
}

/// Stands for a side's server-chosen lease ID in requests and answers.
const CHOSEN: i64 = -4242;

/// TimeToLive answers compare exactly except the remaining TTL: the two servers' clocks
/// started at different instants, so it may differ by a second.
fn same_time_to_live(
    what: &str,
    etcd: Result<LeaseTimeToLiveResponse, String>,
    rivet: Result<LeaseTimeToLiveResponse, String>,
) -> Result<LeaseTimeToLiveResponse, String> {
    match (&etcd, rivet) {
        (Ok(e), Ok(mut r)) => {
            assert!(
                (e.ttl - r.ttl).abs() <= 1,
                "{what}: remaining TTL: etcd {e:?}, rivet {r:?}"
            );
            r.ttl = e.ttl;
            assert_eq!(&r, e, "{what}: rivet (left) differs from etcd");
        }
        (_, rivet) => assert_eq!(rivet, etcd, "{what}: rivet (left) differs from etcd"),
    }
    etcd
}

#[test]
fn lease_operations_match_etcd() {
    require_etcd_34();
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut e = LeaseSide::new(&etcd.endpoint()).await;
        let mut r = LeaseSide::new(&rivet.endpoint()).await;
        // A watch on every key, with prev_kv: revokes and the expiry delete in one
        // revision each.
        let mut etcd_watch = Side::new("etcd", &etcd.endpoint()).await;
        let mut rivet_watch = Side::new("rivet", &rivet.endpoint()).await;
        for side in [&mut etcd_watch, &mut rivet_watch] {
            side.open_stream().await;
            side.send(0, RequestUnion::CreateRequest(create(b"\0", b"\0", 0, 0)));
        }
        macro_rules! same {
            ($what:expr, $call:ident ( $($arg:expr),* )) => {{
                let etcd_answer = bounded("etcd", e.$call($($arg),*)).await;
                let rivet_answer = bounded("rivet", r.$call($($arg),*)).await;
                assert_eq!(rivet_answer, etcd_answer, "{}: rivet (left) differs from etcd", $what);
                println!("{}: {etcd_answer}", $what);
                etcd_answer
            }};
        }
        macro_rules! ttl {
            ($what:expr, $id:expr, $keys:expr) => {{
                let etcd_answer = bounded("etcd", e.time_to_live($id, $keys)).await;
                let rivet_answer = bounded("rivet", r.time_to_live($id, $keys)).await;
                same_time_to_live($what, etcd_answer, rivet_answer)
            }};
        }
        // Grants: server-chosen ID, client-chosen IDs, TTLs below etcd's minimum (1.5
        // election timeouts, 2 s with the defaults), zero, too large, a duplicate ID.
        let chosen = same!("grant, server-chosen ID", grant(60, 0));
        assert!(chosen.contains("<chosen>"), "{chosen}");
        assert!(e.chosen != 0 && r.chosen != 0);
        same!("grant ID 1000", grant(30, 1000));
        same!("grant TTL 1", grant(1, 1001));
        same!("grant TTL 0", grant(0, 1002));
        same!("grant negative TTL", grant(-5, 1003));
        same!("grant too large TTL", grant(9_000_000_001, 1004));
        let duplicate = same!("grant a duplicate ID", grant(30, 1000));
        assert!(duplicate.starts_with("error"), "{duplicate}");
        same!("leases", leases());

        // Keys attached to leases; a missing lease is refused.
        same!("put with lease 1000", put("k1", 1000));
        same!("put with lease 1000", put("k2", 1000));
        same!("put with the chosen lease", put("k3", CHOSEN));
        same!("put without lease", put("k4", 0));
        same!("put with lease 1000", put("k6", 1000));
        same!("put with lease 1002 (TTL 2)", put("k8", 1002));
        same!("put with lease 1002 (TTL 2)", put("k9", 1002));
        same!("move a key to another lease", put("k2", 1001));
        let missing = same!("put with a missing lease", put("k5", 999));
        assert!(missing.starts_with("error"), "{missing}");

        // TimeToLive with and without keys; a missing lease answers TTL -1.
        let with_keys = ttl!("ttl 1000 with keys", 1000, true).expect("TTL");
        assert_eq!(with_keys.granted_ttl, 30);
        assert_eq!(with_keys.keys.len(), 2, "{with_keys:?}");
        ttl!("ttl 1000", 1000, false).expect("TTL");
        ttl!("ttl 1001 with keys", 1001, true).expect("TTL");
        ttl!("ttl chosen with keys", CHOSEN, true).expect("TTL");
        let gone = ttl!("ttl missing", 999, true).expect("an answer");
        assert_eq!(gone.ttl, -1);

        // KeepAlive once: the lease's TTL; for a missing lease TTL 0.
        same!("keep-alive 1000", keep_alive_once(1000));
        same!("keep-alive chosen", keep_alive_once(CHOSEN));
        same!("keep-alive missing", keep_alive_once(999));

        // Revoke: the attached keys go in one revision; a missing lease is an error.
        same!("everything before revokes", everything());
        same!("revoke 1000", revoke(1000));
        same!("everything after revoking 1000", everything());
        same!("revoke chosen", revoke(CHOSEN));
        same!("everything after revoking the chosen", everything());
        let again = same!("revoke 1000 again", revoke(1000));
        assert!(again.starts_with("error"), "{again}");
        same!("revoke never granted", revoke(424_242));
        let revoked = ttl!("ttl revoked", 1000, false).expect("an answer");
        assert_eq!(revoked.ttl, -1);
        same!("leases after revokes", leases());
        same!("revoke 1001 (one key, moved to it)", revoke(1001));
        same!("everything after the revokes", everything());

        // Lease 1002 (TTL 2 s) expires: both delete its two keys in one revision.
        let deadline = Instant::now() + Duration::from_secs(20);
        for side in [&mut e, &mut r] {
            for id in [1002, 1003] {
                loop {
                    let answer = bounded("ttl", side.time_to_live(id, false)).await;
                    if answer.expect("TTL").ttl == -1 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "lease {id} never expired");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        same!("everything after the expiry", everything());
        same!("leases at the end", leases());

        tokio::join!(etcd_watch.quiesce(), rivet_watch.quiesce());
        let etcd_events = e.normalize(format!("{:?}", etcd_watch.by_watcher()));
        let rivet_events = r.normalize(format!("{:?}", rivet_watch.by_watcher()));
        assert_eq!(
            rivet_events, etcd_events,
            "watch: rivet (left) differs from etcd"
        );
        assert!(
            etcd_events.contains("key: b\"k9\", create_revision: 0"),
            "{etcd_events}"
        );
    });
}

// ---- etcdctl ---------------------------------------------------------------------------

use std::io::{Read, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A long-running etcdctl (watch, lock, elect, ...) whose output is collected while it
/// runs; killed and reaped on drop, also when the test panics.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock().expect("lock").extend_from_slice(&buffer[..n]);
        }
    })
}

impl Running {
    fn spawn(endpoint: &str, args: &[&str], with_stdin: bool) -> Running {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .args(args)
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), out.clone()),
            collect(child.stderr.take().expect("stderr"), err.clone()),
        ];
        Running {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("lock")).into_owned()
    }

    fn input(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with stdin");
        stdin.write_all(line.as_bytes()).expect("write to etcdctl");
        stdin.flush().expect("flush");
    }

    /// Waits (bounded) until stdout contains `needle`; false if it never does.
    fn wait_for(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM (etcdctl's lock and elect release what they hold), then the exit status
    /// and everything it wrote (stderr without the client's JSON log lines).
    fn finish(mut self) -> (bool, String, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let err = String::from_utf8_lossy(&self.err.lock().expect("lock"))
            .lines()
            .filter(|l| !l.starts_with("{\"level\":"))
            .map(|l| format!("{l}\n"))
            .collect();
        (status.success(), self.stdout(), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until none of `running` wrote anything for 500 ms (bounded).
fn settle(running: &[&Running]) {
    let total = || running.iter().map(|r| r.stdout().len()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = total();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = total();
        if now == seen || Instant::now() > deadline {
            return;
        }
        seen = now;
    }
}

/// Replaces every lowercase hex run after `prefix` with `<lease>`.
fn mask_hex_after(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = at + prefix.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let hex = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .count();
        if hex > 0 {
            out.push_str("<lease>");
            rest = &rest[hex..];
        }
    }
    out.push_str(rest);
    out
}

/// Masks what legitimately differs in etcdctl output: member and cluster IDs (JSON).
fn mask_ids(text: &str) -> String {
    let mut out = text.to_string();
    for pattern in ["\"cluster_id\":", "\"member_id\":"] {
        let mut masked = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(pattern) {
            let after = at + pattern.len();
            masked.push_str(&rest[..after]);
            rest = &rest[after..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            masked.push('N');
            rest = &rest[digits..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}

/// Runs one etcdctl command to completion on `endpoint`: (success, stdout, stderr).
/// The servers an etcdctl scenario compares: one etcd and one rivet member, or a
/// 3-member cluster of each (etcdctl then gets all three endpoints and spreads its
/// requests over them).
enum Servers {
    Members(Etcd, Rivet),
    Clusters(Cluster, Cluster),
}

impl Servers {
    fn members() -> Servers {
        require_etcd_34();
        Servers::Members(Etcd::start(&[]), Rivet::start(&[]))
    }

    fn clusters() -> Servers {
        require_etcd_34();
        Servers::Clusters(Cluster::start_etcd(3, &[]), Cluster::start(3, &[]))
    }

    /// etcd's endpoints, then rivet's.
    fn endpoints(&self) -> (String, String) {
        match self {
            Servers::Members(etcd, rivet) => (etcd.endpoint(), rivet.endpoint()),
            Servers::Clusters(etcd, rivet) => {
                (etcd.endpoints().join(","), rivet.endpoints().join(","))
            }
        }
    }
}

fn run(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let output = common::etcdctl(endpoint, args, None);
    let err = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        err,
    )
}

/// Runs `args` on both; panics unless the outputs are equal. Returns etcd's.
fn both_same(etcd: &str, rivet: &str, args: &[&str]) -> (bool, String, String) {
    let e = run(etcd, args);
    let r = run(rivet, args);
    assert_eq!(
        (r.0, mask_ids(&r.1), &r.2),
        (e.0, mask_ids(&e.1), &e.2),
        "etcdctl {args:?}: rivet (left) differs from etcd"
    );
    e
}

/// Output of a watcher that saw `ready` puts before the compared part: what follows
/// the last `ready` value (the number of readiness rounds each watcher saw differs).
fn after_ready(text: &str) -> String {
    match text.rfind("ready\n") {
        Some(at) => text[at + "ready\n".len()..].to_string(),
        None => text.to_string(),
    }
}

#[test]
fn etcdctl_watch_matches_etcd() {
    etcdctl_watch_scenario(&Servers::members());
}

#[test]
fn etcdctl_watch_matches_etcd_on_clusters() {
    etcdctl_watch_scenario(&Servers::clusters());
}

fn etcdctl_watch_scenario(servers: &Servers) {
    let (e, r) = servers.endpoints();
    // History: replayed by the watchers with --rev.
    for args in [
        &["put", "foo", "1"][..],
        &["put", "foo/a", "1"],
        &["put", "bar", "1"],
        &["put", "foo", "2"],
        &["del", "foo/a"],
    ] {
        both_same(&e, &r, args);
    }
    let specs: Vec<Vec<&str>> = vec![
        vec!["watch", "foo"],
        vec!["watch", "--prefix", "foo", "--prev-kv"],
        vec!["watch", "foo", "--rev", "2"],
        vec!["watch", "--prefix", "", "--rev", "1", "-w", "json"],
        vec!["watch", "--prefix", "foo", "--rev", "3", "--prev-kv"],
        vec!["watch", "bar", "foo/z"],
    ];
    let start = |endpoint: &str| -> Vec<Running> {
        specs
            .iter()
            .map(|args| Running::spawn(endpoint, args, false))
            .collect()
    };
    let (etcd_watchers, rivet_watchers) = (start(&e), start(&r));
    // The --rev watchers print the history first; the next write must not join that
    // catch-up (etcd batches what an unsynced watcher has not seen yet).
    for (spec, (etcd_w, rivet_w)) in specs.iter().zip(etcd_watchers.iter().zip(&rivet_watchers)) {
        if spec.contains(&"--rev") {
            assert!(etcd_w.wait_for("1"), "etcd: {spec:?} printed no history");
            assert!(rivet_w.wait_for("1"), "rivet: {spec:?} printed no history");
        }
    }
    settle(
        &etcd_watchers
            .iter()
            .chain(&rivet_watchers)
            .collect::<Vec<_>>(),
    );
    // Readiness: puts of foo=ready on both in lockstep (so revisions stay equal) until
    // the plain watchers of both have seen one.
    let mut rounds = 0;
    loop {
        both_same(&e, &r, &["put", "foo", "ready"]);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(300));
        let ready =
            |w: &[Running]| w[0].stdout().contains("ready") && w[1].stdout().contains("ready");
        if ready(&etcd_watchers) && ready(&rivet_watchers) {
            break;
        }
        assert!(rounds < 50, "the watchers never saw a put");
    }
    for args in [
        &["put", "foo", "3"][..],
        &["put", "foo/b", "x"],
        &["put", "bar", "2"],
        &["put", "bar/1", "2"],
        &["del", "--prefix", "foo/"],
        &["del", "foo", "--prev-kv"],
        &["put", "foo", "4"],
    ] {
        both_same(&e, &r, args);
    }
    let txn = "\n\nput foo/c c\nput bar b\ndel foo\nput foo/a a\n\n";
    let e_txn = common::etcdctl(&e, &["txn"], Some(txn));
    let r_txn = common::etcdctl(&r, &["txn"], Some(txn));
    assert_eq!(r_txn.stdout, e_txn.stdout, "txn");
    let all: Vec<&Running> = etcd_watchers.iter().chain(&rivet_watchers).collect();
    settle(&all);
    drop(all);
    let mut events = 0;
    for ((spec, etcd_w), rivet_w) in specs.iter().zip(etcd_watchers).zip(rivet_watchers) {
        let (_, etcd_out, etcd_err) = etcd_w.finish();
        let (_, rivet_out, rivet_err) = rivet_w.finish();
        let plain = spec.iter().all(|a| *a != "--rev");
        let norm = |t: &str| mask_ids(&if plain { after_ready(t) } else { t.to_string() });
        assert_eq!(
            (norm(&rivet_out), rivet_err),
            (norm(&etcd_out), etcd_err),
            "etcdctl {spec:?}: rivet (left) differs from etcd"
        );
        events += etcd_out.matches("PUT").count() + etcd_out.matches("DELETE").count();
    }
    assert!(events > 20, "the watchers saw events: {events}");

    // A watch from a compacted revision: etcdctl reports the cancel and exits.
    both_same(&e, &r, &["compaction", "4"]);
    let compacted = both_same(&e, &r, &["watch", "foo", "--rev", "2"]);
    assert!(compacted.2.contains("compacted"), "{compacted:?}");
}

#[test]
fn etcdctl_interactive_watch_matches_etcd() {
    etcdctl_interactive_watch_scenario(&Servers::members());
}

#[test]
fn etcdctl_interactive_watch_matches_etcd_on_clusters() {
    etcdctl_interactive_watch_scenario(&Servers::clusters());
}

fn etcdctl_interactive_watch_scenario(servers: &Servers) {
    let (e, r) = servers.endpoints();
    let mut etcd_w = Running::spawn(&e, &["watch", "-i"], true);
    let mut rivet_w = Running::spawn(&r, &["watch", "-i"], true);
    for w in [&mut etcd_w, &mut rivet_w] {
        w.input("watch foo\n");
        w.input("watch --prefix bar --prev-kv\n");
    }
    // Readiness, in lockstep as above, for both watchers; then every write is awaited on
    // both before the next, since the two watchers print from goroutines of their own.
    let mut rounds = 0;
    loop {
        both_same(&e, &r, &["put", "foo", "ready"]);
        both_same(&e, &r, &["put", "bar", "ready"]);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(300));
        let ready = |w: &Running| w.stdout().matches("ready").count() >= 3;
        if ready(&etcd_w) && ready(&rivet_w) {
            break;
        }
        assert!(rounds < 50, "the watchers never saw a put");
    }
    settle(&[&etcd_w, &rivet_w]);
    let before = (etcd_w.stdout().len(), rivet_w.stdout().len());
    for args in [
        &["put", "foo", "1"][..],
        &["put", "bar/x", "1"],
        &["put", "bar", "2"],
        &["put", "other", "1"],
        &["del", "--prefix", "bar"],
        &["del", "foo"],
        &["put", "foo", "3"],
    ] {
        both_same(&e, &r, args);
        settle(&[&etcd_w, &rivet_w]);
    }
    let (_, etcd_out, etcd_err) = etcd_w.finish();
    let (_, rivet_out, rivet_err) = rivet_w.finish();
    assert_eq!(
        (&rivet_out[before.1..], rivet_err),
        (&etcd_out[before.0..], etcd_err),
        "watch -i: rivet (left) differs from etcd"
    );
    assert!(
        etcd_out[before.0..].matches("DELETE").count() >= 3,
        "{etcd_out}"
    );
}

/// One side of the etcdctl lease test: its endpoint and the lease IDs it granted (hex).
struct CtlSide {
    endpoint: String,
    leases: Vec<String>,
}

impl CtlSide {
    /// Runs `args` with `{L1}`, `{L2}`, … replaced by this side's lease IDs; the output
    /// with the IDs replaced back, remaining TTLs masked, and listed IDs and attached
    /// keys sorted (etcd lists both in Go map order).
    fn run(&mut self, args: &[&str]) -> (bool, String, String) {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                let mut a = a.to_string();
                for (i, id) in self.leases.iter().enumerate() {
                    a = a.replace(&format!("{{L{}}}", i + 1), id);
                }
                a
            })
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, mut out, mut err) = run(&self.endpoint, &refs);
        if let Some(rest) = out.strip_prefix("lease ") {
            if let Some((id, tail)) = rest.split_once(' ') {
                if refs.get(1) == Some(&"grant") && tail.starts_with("granted") {
                    self.leases.push(id.to_string());
                }
            }
        }
        for (i, id) in self.leases.iter().enumerate() {
            out = out.replace(id.as_str(), &format!("{{L{}}}", i + 1));
            err = err.replace(id.as_str(), &format!("{{L{}}}", i + 1));
        }
        out = mask_ids(&mask_remaining(&out));
        if out.starts_with("found ") {
            let mut lines: Vec<&str> = out.lines().collect();
            lines[1..].sort_unstable();
            out = lines.iter().map(|l| format!("{l}\n")).collect();
        }
        if let Some(at) = out.find("attached keys([") {
            let start = at + "attached keys([".len();
            if let Some(len) = out[start..].find(']') {
                let mut keys: Vec<&str> = out[start..start + len].split(' ').collect();
                keys.sort_unstable();
                out = format!("{}{}{}", &out[..start], keys.join(" "), &out[start + len..]);
            }
        }
        (ok, out, err)
    }
}

/// `remaining(59s)` → `remaining(Ns)`: the servers' lease clocks started apart.
fn mask_remaining(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("remaining(") {
        let after = at + "remaining(".len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        out.push('N');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn etcdctl_lease_matches_etcd() {
    etcdctl_lease_scenario(&Servers::members());
}

#[test]
fn etcdctl_lease_matches_etcd_on_clusters() {
    etcdctl_lease_scenario(&Servers::clusters());
}

fn etcdctl_lease_scenario(servers: &Servers) {
    let (etcd, rivet) = servers.endpoints();
    let mut e = CtlSide {
        endpoint: etcd,
        leases: Vec::new(),
    };
    let mut r = CtlSide {
        endpoint: rivet,
        leases: Vec::new(),
    };
    let mut same = |args: &[&str]| {
        let etcd_answer = e.run(args);
        let rivet_answer = r.run(args);
        assert_eq!(
            rivet_answer, etcd_answer,
            "etcdctl {args:?}: rivet (left) differs from etcd"
        );
        println!("{args:?}: {etcd_answer:?}");
        etcd_answer
    };
    assert!(same(&["lease", "grant", "60"])
        .1
        .contains("{L1} granted with TTL(60s)"));
    same(&["lease", "grant", "30"]);
    same(&["lease", "list"]);
    same(&["put", "k1", "v", "--lease={L1}"]);
    same(&["put", "k2", "v", "--lease", "{L1}"]);
    same(&["put", "k3", "v", "--lease={L2}"]);
    assert!(!same(&["put", "k4", "v", "--lease=1234abcd"]).0);
    same(&["get", "--prefix", "k"]);
    same(&["lease", "timetolive", "{L1}"]);
    same(&["lease", "timetolive", "{L1}", "--keys"]);
    same(&["lease", "timetolive", "{L2}", "--keys"]);
    same(&["lease", "timetolive", "1234abcd"]);
    same(&["lease", "keep-alive", "--once", "{L1}"]);
    same(&["lease", "keep-alive", "--once", "1234abcd"]);
    same(&["lease", "revoke", "{L1}"]);
    same(&["get", "--prefix", "k"]);
    assert!(!same(&["lease", "revoke", "{L1}"]).0);
    same(&["lease", "timetolive", "{L1}"]);
    same(&["lease", "list"]);
    same(&["lease", "revoke", "{L2}"]);
    same(&["get", "--prefix", "k", "-w", "json"]);
    // Below etcd's minimum TTL (1.5 election timeouts, rounded up: 2 s with the default
    // timings, 1 s with the test clusters' 500 ms): raised to it, as etcd does.
    // Revoked at once, so that no comparison races its expiry.
    let minimum = if matches!(servers, Servers::Members(..)) {
        "2s"
    } else {
        "1s"
    };
    assert!(same(&["lease", "grant", "1"])
        .1
        .contains(&format!("{{L3}} granted with TTL({minimum})")));
    same(&["lease", "revoke", "{L3}"]);
}

/// `etcdctl lock`: the holder prints its key (the lease in hex, masked); a second
/// `lock` waits while the first holds it and gets it when the first is stopped (SIGTERM:
/// etcdctl unlocks and revokes its session); `lock NAME command` runs the command.
fn lock_scenario(endpoint: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let first = Running::spawn(endpoint, &["lock", "mylock"], false);
    assert!(
        first.wait_for("\n"),
        "{endpoint}: the first lock never printed its key"
    );
    let second = Running::spawn(endpoint, &["lock", "mylock"], false);
    // Not a timing assertion: whatever it printed while the first held the lock is
    // compared (it must be nothing, on both).
    std::thread::sleep(Duration::from_secs(1));
    seen.push(format!("second while held: {:?}", second.stdout()));
    let (ok, out, err) = first.finish();
    seen.push(format!(
        "first: {ok} {:?} {err:?}",
        mask_hex_after(&out, "mylock/")
    ));
    assert!(
        second.wait_for("\n"),
        "{endpoint}: the second lock never got it"
    );
    let (ok, out, err) = second.finish();
    seen.push(format!(
        "second: {ok} {:?} {err:?}",
        mask_hex_after(&out, "mylock/")
    ));
    let (ok, out, err) = run(endpoint, &["lock", "other", "echo", "acquired"]);
    seen.push(format!("with a command: {ok} {out:?} {err:?}"));
    seen
}

#[test]
fn etcdctl_lock_matches_etcd() {
    etcdctl_lock(&Servers::members());
}

#[test]
fn etcdctl_lock_matches_etcd_on_clusters() {
    etcdctl_lock(&Servers::clusters());
}

/// Runs `scenario` against etcd, then rivet; panics unless they saw the same. Returns
/// what etcd's side saw.
fn same_on_both(servers: &Servers, what: &str, scenario: fn(&str) -> Vec<String>) -> Vec<String> {
    let (etcd, rivet) = servers.endpoints();
    let etcd_seen = scenario(&etcd);
    let rivet_seen = scenario(&rivet);
    println!("{etcd_seen:#?}");
    assert_eq!(
        rivet_seen, etcd_seen,
        "etcdctl {what}: rivet (left) differs from etcd"
    );
    etcd_seen
}

fn etcdctl_lock(servers: &Servers) {
    let etcd_seen = same_on_both(servers, "lock", lock_scenario);
    assert!(etcd_seen[1].contains("mylock/<lease>\\n"), "{etcd_seen:?}");
    assert!(etcd_seen[2].contains("mylock/<lease>\\n"), "{etcd_seen:?}");
}

/// `etcdctl elect`: an observer (`elect -l`), a leader, a second candidate that waits
/// until the leader resigns (SIGTERM), then leads.
fn elect_scenario(endpoint: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let observer = Running::spawn(endpoint, &["elect", "-l", "myelection"], false);
    let first = Running::spawn(endpoint, &["elect", "myelection", "p1"], false);
    assert!(
        first.wait_for("p1\n"),
        "{endpoint}: the first candidate never led"
    );
    assert!(
        observer.wait_for("p1\n"),
        "{endpoint}: the observer never saw p1"
    );
    let second = Running::spawn(endpoint, &["elect", "myelection", "p2"], false);
    std::thread::sleep(Duration::from_secs(1));
    seen.push(format!("second while first leads: {:?}", second.stdout()));
    let (ok, out, err) = first.finish();
    seen.push(format!(
        "first: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    assert!(second.wait_for("p2\n"), "{endpoint}: the second never led");
    assert!(
        observer.wait_for("p2\n"),
        "{endpoint}: the observer never saw p2"
    );
    let (ok, out, err) = second.finish();
    seen.push(format!(
        "second: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    settle(&[&observer]);
    let (ok, out, err) = observer.finish();
    seen.push(format!(
        "observer: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    seen
}

#[test]
fn etcdctl_elect_matches_etcd() {
    etcdctl_elect(&Servers::members());
}

#[test]
fn etcdctl_elect_matches_etcd_on_clusters() {
    etcdctl_elect(&Servers::clusters());
}

fn etcdctl_elect(servers: &Servers) {
    let etcd_seen = same_on_both(servers, "elect", elect_scenario);
    assert!(
        etcd_seen[3].contains("p1") && etcd_seen[3].contains("p2"),
        "{etcd_seen:?}"
    );
}
