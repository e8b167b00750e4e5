//! The KV operations of the differential tests (`differential.rs`, `auth_random_diff.rs`):
//! a seeded generator of Range, Put, DeleteRange, Txn and Compact requests over a small key
//! space, their answers as one comparable type, and the report of a difference.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use rivet_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    range_request::{SortOrder, SortTarget},
    request_op, response_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::transport::Channel;

use super::rng::Rng;
use super::{bytes, prefix_end_bytes as prefix_end};

/// Both servers of a differential run use `--max-txn-ops 8`, so "too many operations" is
/// easy to reach.
pub const MAX_TXN_OPS: usize = 8;

/// The keys that may exist: shared prefixes so that ranges overlap and prefixes matter.
pub const KEYS: [&[u8]; 12] = [
    b"a", b"a/", b"a/b", b"a/b/c", b"a/c", b"ab", b"b", b"b/1", b"b/2", b"ba", b"c", b"c\xff",
];
/// Keys that are never written: range bounds between and around the keys above.
pub const OTHER_KEYS: [&[u8]; 9] = [
    b"\0",
    b"0",
    b"a0",
    b"a/b/",
    b"aa",
    b"b/",
    b"b0",
    b"c\xff\xff",
    b"d",
];
/// Few values, so that sorting by value and value compares see ties.
pub const VALUES: [&[u8]; 5] = [b"", b"v", b"v1", b"v2", b"w"];

#[derive(Clone, Debug)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

#[derive(Debug, PartialEq)]
pub enum Answer {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Error { code: tonic::Code, message: String },
}

impl Answer {
    pub fn header(&self) -> Option<&ResponseHeader> {
        match self {
            Answer::Range(r) => r.header.as_ref(),
            Answer::Put(r) => r.header.as_ref(),
            Answer::Delete(r) => r.header.as_ref(),
            Answer::Txn(r) => r.header.as_ref(),
            Answer::Compact(r) => r.header.as_ref(),
            Answer::Error { .. } => None,
        }
    }

    /// Clears the top-level member_id and cluster_id: random per cluster, not semantics.
    pub fn normalized(mut self) -> Answer {
        let header = match &mut self {
            Answer::Range(r) => r.header.as_mut(),
            Answer::Put(r) => r.header.as_mut(),
            Answer::Delete(r) => r.header.as_mut(),
            Answer::Txn(r) => r.header.as_mut(),
            Answer::Compact(r) => r.header.as_mut(),
            Answer::Error { .. } => None,
        };
        if let Some(h) = header {
            h.member_id = 0;
            h.cluster_id = 0;
        }
        self
    }

    /// Clears `raft_term` in the header and in the headers of nested responses.
    pub fn clear_term(&mut self) {
        fn clear(header: &mut Option<ResponseHeader>) {
            if let Some(h) = header {
                h.raft_term = 0;
            }
        }
        fn clear_txn(txn: &mut TxnResponse) {
            clear(&mut txn.header);
            for op in &mut txn.responses {
                match &mut op.response {
                    Some(response_op::Response::ResponseRange(r)) => clear(&mut r.header),
                    Some(response_op::Response::ResponsePut(r)) => clear(&mut r.header),
                    Some(response_op::Response::ResponseDeleteRange(r)) => clear(&mut r.header),
                    Some(response_op::Response::ResponseTxn(t)) => clear_txn(t),
                    None => {}
                }
            }
        }
        match self {
            Answer::Range(r) => clear(&mut r.header),
            Answer::Put(r) => clear(&mut r.header),
            Answer::Delete(r) => clear(&mut r.header),
            Answer::Txn(t) => clear_txn(t),
            Answer::Compact(r) => clear(&mut r.header),
            Answer::Error { .. } => {}
        }
    }

    /// A short label for the statistics printed at the end.
    pub fn label(&self, op: &Op) -> String {
        let kind = match op {
            Op::Range(_) => "range",
            Op::Put(_) => "put",
            Op::Delete(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
        };
        match self {
            Answer::Error { message, .. } => format!("{kind}: {message}"),
            Answer::Txn(t) if t.succeeded => "txn: ok, succeeded".to_string(),
            Answer::Txn(_) => "txn: ok, failed".to_string(),
            _ => format!("{kind}: ok"),
        }
    }
}

pub fn answer<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    wrap: fn(T) -> Answer,
) -> Answer {
    match result {
        Ok(response) => wrap(response.into_inner()).normalized(),
        Err(status) => Answer::Error {
            code: status.code(),
            message: status.message().to_string(),
        },
    }
}

/// How long an answer may take before the test calls it a hang.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn execute(client: &mut KvClient<Channel>, op: &Op) -> Answer {
    execute_as(client, op, None).await
}

/// `message` as a request that carries `token` in its metadata (etcd's `token` key), if any.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = token.parse().expect("a token is ASCII");
        request.metadata_mut().insert("token", value);
    }
    request
}

/// [`execute`] as the user whose token is `token`.
pub async fn execute_as(client: &mut KvClient<Channel>, op: &Op, token: Option<&str>) -> Answer {
    match tokio::time::timeout(ANSWER_TIMEOUT, execute_now(client, op, token)).await {
        Ok(answer) => answer,
        Err(_) => Answer::Error {
            code: tonic::Code::DeadlineExceeded,
            message: format!("the test got no answer within {ANSWER_TIMEOUT:?}"),
        },
    }
}

async fn execute_now(client: &mut KvClient<Channel>, op: &Op, token: Option<&str>) -> Answer {
    let t = token;
    match op {
        Op::Range(r) => answer(client.range(with_token(r.clone(), t)).await, Answer::Range),
        Op::Put(r) => answer(client.put(with_token(r.clone(), t)).await, Answer::Put),
        Op::Delete(r) => answer(
            client.delete_range(with_token(r.clone(), t)).await,
            Answer::Delete,
        ),
        Op::Txn(r) => answer(client.txn(with_token(r.clone(), t)).await, Answer::Txn),
        Op::Compact(r) => answer(client.compact(with_token(*r, t)).await, Answer::Compact),
    }
}

// ---- The generator ---------------------------------------------------------------------

/// Whether a txn (nested ones included) deletes from a key on (`range_end` "\0").
pub fn has_from_key_delete(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => d.range_end.as_ref() == b"\0",
            Some(request_op::Request::RequestTxn(t)) => has_from_key_delete(t),
            _ => false,
        })
}

/// Drops the valid `ignore_value` / `ignore_lease` flags of a txn's puts.
///
/// etcd 3.4 checks before the txn runs that such a put's key exists, but its duplicate-key
/// check takes a from-key delete as an empty interval: in `txn [delete "a".."\0", put "b"
/// ignore_lease]` the delete removes `b` first, the put then fails half-way through the
/// txn, and etcd panics ("unexpected error during txn") — and so does rivet. A crash is
/// no answer to compare, so the generator does not send such txns.
pub fn defuse_ignore_flags(txn: &mut TxnRequest) {
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.ignore_value && p.value.is_empty() {
                    p.ignore_value = false;
                }
                if p.ignore_lease && p.lease == 0 {
                    p.ignore_lease = false;
                }
            }
            Some(request_op::Request::RequestTxn(t)) => defuse_ignore_flags(t),
            _ => {}
        }
    }
}

/// The generator: a seeded [`Rng`] and what it knows of the store (learnt from etcd's
/// answers), so that it can aim at current, older, compacted and future revisions.
pub struct Gen {
    pub rng: Rng,
    pub revision: i64,
    /// The last compacted revision (0 before any).
    pub compacted: i64,
    /// Per mille of keys left empty ("key is not provided"): lower inside txns, which
    /// hold many keys, so that most txns get past the checks.
    pub empty_key_permille: u64,
    /// Leases that exist (granted by the test, with the same ID on both servers): puts
    /// attach keys to them. Empty in a run without leases, whose sequence then does not
    /// depend on this.
    pub leases: Vec<i64>,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            revision: 1,
            compacted: 0,
            empty_key_permille: 20,
            leases: Vec::new(),
        }
    }

    /// Learns the store's revision and compaction from etcd's answer to `op`.
    pub fn observe(&mut self, op: &Op, answer: &Answer) {
        if let Some(header) = answer.header() {
            self.revision = header.revision;
        }
        if let (Op::Compact(c), Answer::Compact(_)) = (op, answer) {
            self.compacted = self.compacted.max(c.revision);
        }
    }

    pub fn op(&mut self) -> Op {
        self.empty_key_permille = 20;
        match self.rng.below(100) {
            0..=29 => Op::Put(self.put()),
            30..=39 => Op::Delete(self.delete()),
            40..=67 => Op::Range(self.range()),
            68..=97 => {
                self.empty_key_permille = 4;
                let mut txn = self.txn(0);
                if has_from_key_delete(&txn) {
                    defuse_ignore_flags(&mut txn);
                }
                Op::Txn(txn)
            }
            _ => Op::Compact(self.compaction()),
        }
    }

    pub fn empty_key(&mut self) -> bool {
        self.rng.next() % 1000 < self.empty_key_permille
    }

    /// A key that may be written: one of [`KEYS`]; rarely the empty key.
    pub fn key(&mut self) -> Bytes {
        if self.empty_key() {
            return Bytes::new();
        }
        bytes(self.rng.pick(&KEYS))
    }

    /// A key to read, delete or compare: mostly one of [`KEYS`], sometimes one of
    /// [`OTHER_KEYS`]; rarely the empty key.
    pub fn any_key(&mut self) -> Bytes {
        if self.empty_key() {
            return Bytes::new();
        }
        if self.rng.percent(85) {
            bytes(self.rng.pick(&KEYS))
        } else {
            bytes(self.rng.pick(&OTHER_KEYS))
        }
    }

    /// Every form of range end: none (one key), "\0" (from the key on), the prefix end, an
    /// arbitrary bound (possibly at or before the key: an empty range), the key + "\0".
    pub fn range_end(&mut self, key: &[u8]) -> Bytes {
        match self.rng.below(100) {
            0..=29 => Bytes::new(),
            30..=41 => bytes(b"\0"),
            42..=61 => prefix_end(key),
            62..=86 => {
                if self.rng.percent(70) {
                    bytes(self.rng.pick(&KEYS))
                } else {
                    bytes(self.rng.pick(&OTHER_KEYS))
                }
            }
            87..=91 => bytes(key),
            _ => {
                let mut end = key.to_vec();
                end.push(0);
                Bytes::from(end)
            }
        }
    }

    /// A key and range end; sometimes "\0".."\0", every key.
    pub fn key_range(&mut self, all_percent: u64) -> (Bytes, Bytes) {
        if self.rng.percent(all_percent) {
            return (bytes(b"\0"), bytes(b"\0"));
        }
        let key = self.any_key();
        let end = self.range_end(&key);
        (key, end)
    }

    /// A revision to read at: current (0 or explicit), older, recent, compacted, the
    /// compaction itself, future, negative.
    pub fn read_revision(&mut self) -> i64 {
        let (revision, compacted) = (self.revision, self.compacted);
        let rng = &mut self.rng;
        match rng.below(12) {
            0 => 0,
            1 => revision,
            2 | 3 => rng.between(1, revision),
            4 | 5 => rng.between((revision - 5).max(1), revision),
            6 => compacted.max(1),
            7 if compacted >= 2 => rng.between(1, compacted - 1),
            7 => 1,
            8 => revision + 1,
            9 => revision + rng.between(2, 5),
            10 => -rng.between(1, 3),
            _ => rng.between(compacted.max(1), revision),
        }
    }

    /// A revision for the min/max mod and create revision filters.
    pub fn filter_revision(&mut self) -> i64 {
        match self.rng.below(8) {
            0 => -1,
            1 => self.revision + 1,
            2..=4 => self.rng.between((self.revision - 8).max(1), self.revision),
            _ => self.rng.between(1, self.revision),
        }
    }

    pub fn range(&mut self) -> RangeRequest {
        let (key, range_end) = self.key_range(10);
        let mut r = RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        let rng = &mut self.rng;
        if rng.percent(35) {
            r.limit = rng.pick(&[1, 1, 2, 2, 3, 5, 11, 12, 13, -1]);
        }
        r.sort_order = match rng.below(100) {
            0..=49 => SortOrder::None as i32,
            50..=74 => SortOrder::Ascend as i32,
            75..=98 => SortOrder::Descend as i32,
            // Not a SortOrder: etcd then fetches everything and sorts nothing.
            _ => 3,
        };
        r.sort_target = if rng.percent(40) {
            SortTarget::Key as i32
        } else {
            rng.pick(&[
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]) as i32
        };
        r.serializable = rng.percent(30);
        r.keys_only = rng.percent(15);
        r.count_only = rng.percent(10);
        if self.rng.percent(40) {
            r.revision = self.read_revision();
        }
        if self.rng.percent(10) {
            r.min_mod_revision = self.filter_revision();
        }
        if self.rng.percent(10) {
            r.max_mod_revision = self.filter_revision();
        }
        if self.rng.percent(10) {
            r.min_create_revision = self.filter_revision();
        }
        if self.rng.percent(10) {
            r.max_create_revision = self.filter_revision();
        }
        r
    }

    pub fn put(&mut self) -> PutRequest {
        let key = self.key();
        let rng = &mut self.rng;
        let mut p = PutRequest {
            key,
            value: bytes(rng.pick(&VALUES)),
            prev_kv: rng.percent(40),
            ..Default::default()
        };
        if rng.percent(6) {
            p.ignore_value = true;
            if rng.percent(80) {
                p.value = Bytes::new();
            }
        }
        if rng.percent(6) {
            p.ignore_lease = true;
        }
        if rng.percent(3) {
            // Not a granted lease: "requested lease not found" (or, with ignore_lease,
            // "lease is provided").
            p.lease = rng.pick(&[1, 7, i64::MAX, -1]);
        }
        if !self.leases.is_empty() && self.rng.percent(15) {
            p.lease = self.rng.pick(&self.leases);
        }
        p
    }

    pub fn delete(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = self.key_range(2);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.percent(50),
        }
    }

    /// A compared revision: mostly a recent one, so that equalities hold sometimes.
    pub fn compared_revision(&mut self) -> i64 {
        if self.rng.percent(60) {
            self.rng.between((self.revision - 8).max(0), self.revision)
        } else {
            self.rng.between(0, self.revision + 1)
        }
    }

    pub fn compare(&mut self) -> Compare {
        let key = self.any_key();
        let range_end = if self.rng.percent(70) {
            Bytes::new()
        } else {
            self.range_end(&key)
        };
        const TARGETS: [CompareTarget; 5] = [
            CompareTarget::Version,
            CompareTarget::Create,
            CompareTarget::Mod,
            CompareTarget::Value,
            CompareTarget::Lease,
        ];
        let target = self.rng.pick(&TARGETS);
        let result = self.rng.pick(&[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ]);
        // Mostly the union that goes with the target; sometimes another one or none,
        // which etcd compares as zero (or as the empty value).
        let union_target = match self.rng.below(100) {
            0..=89 => Some(target),
            90..=95 => Some(self.rng.pick(&TARGETS)),
            _ => None,
        };
        let target_union = union_target.map(|t| match t {
            CompareTarget::Version => TargetUnion::Version(self.rng.between(0, 4)),
            CompareTarget::Create => TargetUnion::CreateRevision(self.compared_revision()),
            CompareTarget::Mod => TargetUnion::ModRevision(self.compared_revision()),
            CompareTarget::Value => TargetUnion::Value(bytes(self.rng.pick(&VALUES))),
            CompareTarget::Lease => TargetUnion::Lease(i64::from(self.rng.percent(20))),
        });
        Compare {
            result: result as i32,
            target: target as i32,
            key,
            target_union,
            range_end,
        }
    }

    pub fn request_op(&mut self, depth: usize) -> RequestOp {
        let request = match self.rng.below(200) {
            0..=69 => Some(request_op::Request::RequestRange(self.range())),
            70..=139 => Some(request_op::Request::RequestPut(self.put())),
            140..=169 => Some(request_op::Request::RequestDeleteRange(self.delete())),
            170..=198 if depth < 2 => Some(request_op::Request::RequestTxn(self.txn(depth + 1))),
            170..=198 => Some(request_op::Request::RequestPut(self.put())),
            // An empty op: "key not found".
            _ => None,
        };
        RequestOp { request }
    }

    /// A txn: a few compares and ops per branch; at the top level sometimes one list at
    /// the limit or one over it; nested, sometimes more ops than the outer level leaves
    /// (etcd's budget for a nested txn is the limit minus the outer level's longest list).
    pub fn txn(&mut self, depth: usize) -> TxnRequest {
        // Nested txns get fewer: each level's budget shrinks by the outer level's ops.
        let most = if depth == 0 { 5 } else { 3 };
        let mut counts = [
            self.rng.below(4),
            self.rng.below(most),
            self.rng.below(most),
        ];
        let list = self.rng.below(3);
        match self.rng.below(100) {
            0..=2 if depth == 0 => counts[list] = MAX_TXN_OPS + 1,
            3 | 4 if depth == 0 => counts[list] = MAX_TXN_OPS,
            5..=7 if depth > 0 => counts[list] = self.rng.between(5, 7) as usize,
            _ => {}
        }
        let compare = (0..counts[0]).map(|_| self.compare()).collect();
        let success = (0..counts[1]).map(|_| self.request_op(depth)).collect();
        let failure = (0..counts[2]).map(|_| self.request_op(depth)).collect();
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    pub fn compaction(&mut self) -> CompactionRequest {
        let (revision, compacted) = (self.revision, self.compacted);
        let rng = &mut self.rng;
        let at = match rng.below(20) {
            // Valid, mostly keeping some history.
            0..=9 => (revision - rng.between(0, 60)).max(compacted + 1),
            10 => revision,
            11 | 12 => rng.between(compacted + 1, revision),
            // Already compacted.
            13 | 14 => rng.between(1, compacted.max(1)),
            15 => compacted,
            // Future.
            16 | 17 => revision + rng.between(1, 3),
            18 => 0,
            _ => -1,
        };
        CompactionRequest {
            revision: at,
            physical: rng.percent(50),
        }
    }
}

/// Panics with everything needed to understand and reproduce a difference.
pub fn report(
    context: &str,
    recent: &VecDeque<String>,
    op: &impl Debug,
    etcd: &impl Debug,
    rivet: &impl Debug,
    rivet_log: &str,
) {
    let log = rivet_log;
    let log_tail: Vec<&str> = log.lines().rev().take(30).collect();
    let log_tail: Vec<&str> = log_tail.into_iter().rev().collect();
    let etcd_text = format!("{etcd:#?}");
    let rivet_text = format!("{rivet:#?}");
    let mut history = String::new();
    for line in recent {
        history.push_str(&format!("  {line}\n"));
    }
    panic!(
        "rivet and etcd differ {context}\n\
         preceding steps:\n{history}\
         request:\n{op:#?}\n\
         etcd answered:\n{etcd_text}\n\
         rivet answered:\n{rivet_text}\n\
         first difference:\n{}\n\
         end of rivet's log:\n{}",
        super::first_line_difference(&etcd_text, &rivet_text),
        log_tail.join("\n")
    );
}
