//! A seeded generator of every client RPC with adversarial values, and an executor that
//! sends each call to a server and reduces the answer to what two servers must agree on.
//! Used by `net/tests/request_fuzz.rs` (a bounded run in CI, a long run with
//! `RIVET_FUZZ_MINUTES`).
//!
//! The values are the ones that break servers: empty, huge and 0xff keys, `"\0"` range
//! ends, negative and huge revisions, limits, TTLs and IDs, unknown enum values, deep txn
//! nesting, sizes at and past `--max-request-bytes` and the gRPC receive limit, and
//! streams that are cancelled, dropped or half-closed.
//!
//! What makes two servers comparable: both see the same calls in the same order, so
//! revisions and explicit lease IDs agree. Leases the generator attaches keys to have
//! explicit IDs and long TTLs (an expiry would revoke them at different instants);
//! leases with short or odd TTLs ("ephemeral") are only granted, and every later call
//! about them is sent but not compared. Serializable reads are not compared (a follower
//! may lag), nor what a blocked Lock or Campaign does after the client gave up on it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use rivet_api::etcdserverpb::{
    alarm_request, cluster_client::ClusterClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, range_request, request_op,
    watch_client::WatchClient, watch_request, AlarmRequest, CompactionRequest, Compare,
    DefragmentRequest, DeleteRangeRequest, HashKvRequest, HashRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, SnapshotRequest,
    StatusRequest, TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest,
};
use rivet_api::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest,
    ResignRequest,
};
use rivet_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use tonic::transport::Channel;

use super::rng::Rng;

/// etcd's default `--max-request-bytes` (1.5 MiB), which both servers run with.
pub const MAX_REQUEST_BYTES: usize = 1_572_864;
/// etcd's gRPC receive limit: the request limit plus 512 KiB of framing.
pub const GRPC_RECEIVE_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// How long one call may take before the client gives up (etcd answers "request timed
/// out" after 7 s with default timings).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a Lock or Campaign may block before the client cancels it.
pub const BLOCKING_CALL_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a watch or keep-alive stream is read before it ends.
pub const STREAM_WINDOW: Duration = Duration::from_millis(250);

/// Lease IDs the generator grants with a long TTL and attaches keys to.
pub const DURABLE_LEASES: [i64; 3] = [0x7a00_0001, 0x7a00_0002, 0x7a00_0003];
const DURABLE_TTL: i64 = 100_000;
/// Lease IDs granted with odd TTLs (they may expire at any time): never compared.
pub const EPHEMERAL_LEASES: [i64; 3] = [0x7b00_0001, 0x7b00_0002, 0x7b00_0003];

/// How a client ends a stream.
#[derive(Clone, Copy, Debug)]
pub enum StreamEnd {
    /// Stops sending (end of stream), reads on for a while, then drops it.
    HalfClose,
    /// Drops both halves at once after sending.
    Drop,
    /// Reads for a while with its side open, then drops it.
    Read,
}

/// One client call.
#[derive(Clone, Debug)]
pub enum Call {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases,
    KeepAlive(Vec<i64>, StreamEnd),
    Watch(Vec<WatchRequest>, StreamEnd),
    MemberList,
    MemberAdd(MemberAddRequest),
    MemberRemove(u64),
    MemberUpdate(MemberUpdateRequest),
    MemberPromote(u64),
    Status,
    Alarm(AlarmRequest),
    Hash,
    HashKv(i64),
    Defragment,
    Snapshot,
    MoveLeader(u64),
    Lock(LockRequest),
    Unlock(UnlockRequest),
    Campaign(CampaignRequest),
    Proclaim(ProclaimRequest),
    Leader(LeaderRequest),
    Resign(ResignRequest),
    Observe(LeaderRequest),
}

impl Call {
    /// A short name for statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Range(_) => "Range",
            Call::Put(_) => "Put",
            Call::Delete(_) => "DeleteRange",
            Call::Txn(_) => "Txn",
            Call::Compact(_) => "Compact",
            Call::LeaseGrant(_) => "LeaseGrant",
            Call::LeaseRevoke(_) => "LeaseRevoke",
            Call::LeaseTimeToLive(_) => "LeaseTimeToLive",
            Call::LeaseLeases => "LeaseLeases",
            Call::KeepAlive(..) => "LeaseKeepAlive",
            Call::Watch(..) => "Watch",
            Call::MemberList => "MemberList",
            Call::MemberAdd(_) => "MemberAdd",
            Call::MemberRemove(_) => "MemberRemove",
            Call::MemberUpdate(_) => "MemberUpdate",
            Call::MemberPromote(_) => "MemberPromote",
            Call::Status => "Status",
            Call::Alarm(_) => "Alarm",
            Call::Hash => "Hash",
            Call::HashKv(_) => "HashKV",
            Call::Defragment => "Defragment",
            Call::Snapshot => "Snapshot",
            Call::MoveLeader(_) => "MoveLeader",
            Call::Lock(_) => "Lock",
            Call::Unlock(_) => "Unlock",
            Call::Campaign(_) => "Campaign",
            Call::Proclaim(_) => "Proclaim",
            Call::Leader(_) => "Leader",
            Call::Resign(_) => "Resign",
            Call::Observe(_) => "Observe",
        }
    }

    /// Calls etcd 3.4.23 itself panics on (the process exits): only rivet gets them, and
    /// must answer. A Range (also inside a txn) with an unknown sort target (`sort.Sort`
    /// of a nil sorter; rivet answers etcd 3.5's "invalid sort option"), an
    /// Alarm with an unknown action, activating alarm NONE for member 0, a watch with an
    /// unknown filter, and a MemberUpdate with bad peer URLs.
    pub fn etcd_panics(&self) -> bool {
        match self {
            Call::Range(r) => unknown_sort_target(r),
            Call::Txn(t) => txn_panics_etcd(t),
            // Its applier answers nil for an unknown action, and the server's type
            // assertion on that nil panics; activating alarm NONE for member 0 stores an
            // empty key in bbolt, whose refusal is fatal.
            Call::Alarm(a) => {
                alarm_request::AlarmAction::try_from(a.action).is_err()
                    || (a.action == alarm_request::AlarmAction::Activate as i32
                        && a.member_id == 0
                        && a.alarm == 0)
            }
            // It does not check the URLs of a MemberUpdate, and panics applying bad ones
            // to a member that exists ("newURLs ... should never fail"); rivet refuses
            // them ("given member URLs are invalid").
            Call::MemberUpdate(u) => !u
                .peer_ur_ls
                .iter()
                .all(|url| url.starts_with("http://127.0.0.1:")),
            // Its watch server panics on an unknown filter ("unknown event filter type").
            Call::Watch(requests, _) => requests.iter().any(|r| match &r.request_union {
                Some(watch_request::RequestUnion::CreateRequest(c)) => {
                    c.filters.iter().any(|f| !(0..=1).contains(f))
                }
                _ => false,
            }),
            _ => false,
        }
    }
}

fn unknown_sort_target(r: &RangeRequest) -> bool {
    range_request::SortTarget::try_from(r.sort_target).is_err()
}

fn txn_panics_etcd(t: &TxnRequest) -> bool {
    fn ops(t: &TxnRequest) -> impl Iterator<Item = &RequestOp> {
        t.success.iter().chain(&t.failure)
    }
    fn any_range(t: &TxnRequest) -> bool {
        ops(t).any(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => unknown_sort_target(r),
            Some(request_op::Request::RequestTxn(n)) => any_range(n),
            _ => false,
        })
    }
    any_range(t)
}

/// A txn with a from-key delete and a put with ignore_value/ignore_lease: etcd 3.4
/// panics on it when the put's key existed and the delete removed it (issue 10), which
/// the generator cannot tell beforehand. rivet answers "key not found" exactly then and
/// whenever the key did not exist (as etcd does), so the harness sends such a txn to
/// rivet first and to etcd only if rivet applied it.
pub fn txn_may_panic_etcd(call: &Call) -> bool {
    fn ops(t: &TxnRequest) -> impl Iterator<Item = &RequestOp> {
        t.success.iter().chain(&t.failure)
    }
    fn from_key_delete(t: &TxnRequest) -> bool {
        ops(t).any(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => d.range_end.as_ref() == [0],
            Some(request_op::Request::RequestTxn(n)) => from_key_delete(n),
            _ => false,
        })
    }
    fn ignoring_put(t: &TxnRequest) -> bool {
        ops(t).any(|op| match &op.request {
            Some(request_op::Request::RequestPut(p)) => p.ignore_value || p.ignore_lease,
            Some(request_op::Request::RequestTxn(n)) => ignoring_put(n),
            _ => false,
        })
    }
    matches!(call, Call::Txn(t) if from_key_delete(t) && ignoring_put(t))
}

/// What a server answered, reduced to what two servers must agree on. `body` is `None`
/// when the answer is not compared (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// `None`: OK; else the gRPC code and message.
    pub error: Option<(tonic::Code, String)>,
    pub body: Option<String>,
    /// Whether the answer is compared at all.
    pub compared: bool,
}

impl Answer {
    fn uncompared() -> Answer {
        Answer {
            error: None,
            body: None,
            compared: false,
        }
    }

    /// Whether the server failed to answer in time or the connection broke (a call the
    /// liveness check then looks at).
    pub fn transport_failure(&self) -> bool {
        matches!(&self.error, Some((code, message))
            if *code == tonic::Code::Unavailable && message.starts_with("transport")
                || message == "no answer in time")
    }
}

/// The generator's view of the store: enough to aim at keys, revisions and leases that
/// exist, and to keep both servers comparable.
pub struct Generator {
    pub rng: Rng,
    /// The newest revision etcd (or rivet, without etcd) answered with.
    pub revision: i64,
    pub compacted: i64,
    /// Member IDs of learners this run added (removed again by later calls).
    pub added: Vec<u64>,
    /// Whether an alarm was raised by a call and not yet disarmed.
    pub alarm_raised: bool,
    /// Whether calls must stay comparable between two servers: Lock and Campaign then
    /// only go to names nobody holds (a blocked call the client gives up on deletes its
    /// key at a moment of each server's choosing, and revisions would part).
    pub differential: bool,
    /// Lock keys and election leader keys held, by name (learnt from answers).
    pub locks: Vec<(Vec<u8>, Vec<u8>)>,
    pub leaders: Vec<(Vec<u8>, LeaderKey)>,
    next_name: u64,
}

/// Keys with shared prefixes, 0xff and "\0", so ranges overlap.
const KEYS: &[&[u8]] = &[
    b"a",
    b"a/1",
    b"a/2",
    b"ab",
    b"b",
    b"b/1",
    b"\0",
    b"\0\0",
    b"\xff",
    b"\xff\xff",
    b"z",
    b"lock",
    b"elect",
];

fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: Rng::new(seed),
            revision: 1,
            compacted: 0,
            added: Vec::new(),
            alarm_raised: false,
            differential: true,
            locks: Vec::new(),
            leaders: Vec::new(),
            next_name: 0,
        }
    }

    /// A lock or election name: adversarial ones from a small pool, or a fresh one. In
    /// differential mode never one that is held.
    fn free_name(&mut self) -> Vec<u8> {
        for _ in 0..4 {
            let name = self.name();
            let held = self.locks.iter().any(|(n, _)| *n == name)
                || self.leaders.iter().any(|(n, _)| *n == name);
            if !self.differential || !held {
                return name;
            }
        }
        self.next_name += 1;
        format!("fresh{}", self.next_name).into_bytes()
    }

    /// A lease for a lock or a campaign: its key lives as long as the lease, so never an
    /// ephemeral one (it would expire at different moments on two servers).
    ///
    /// Nor 0 in differential mode: etcd then grants a lease of its own choosing that
    /// expires after 60 s (rivet does the same), so keys and expiries would differ.
    fn key_lease(&mut self) -> i64 {
        match self.rng.below(10) {
            0..=6 => self.rng.pick(&DURABLE_LEASES),
            7 if !self.differential => 0,
            8 => -1,
            _ => 0x7c00_0000 + self.rng.below(5) as i64,
        }
    }

    /// The calls every run starts with: the durable leases.
    pub fn prologue(&self) -> Vec<Call> {
        DURABLE_LEASES
            .iter()
            .map(|&id| {
                Call::LeaseGrant(LeaseGrantRequest {
                    ttl: DURABLE_TTL,
                    id,
                })
            })
            .collect()
    }

    fn key(&mut self) -> Bytes {
        match self.rng.below(100) {
            0..=84 => bytes(self.rng.pick(KEYS)),
            85..=89 => Bytes::new(),
            90..=94 => {
                let len = self.rng.below(40) + 1;
                Bytes::from(
                    (0..len)
                        .map(|_| self.rng.below(256) as u8)
                        .collect::<Vec<u8>>(),
                )
            }
            95..=97 => Bytes::from(vec![b'k'; self.size_near_limit()]),
            _ => Bytes::from(vec![0xff; self.rng.below(300) + 1]),
        }
    }

    /// A size around a limit: just below, at and past the request limit and the gRPC
    /// receive limit.
    fn size_near_limit(&mut self) -> usize {
        let limits = [MAX_REQUEST_BYTES, GRPC_RECEIVE_BYTES];
        let limit = self.rng.pick(&limits);
        let offset = self.rng.between(-300, 300);
        (limit as i64 + offset).max(1) as usize
    }

    fn range_end(&mut self, key: &[u8]) -> Bytes {
        match self.rng.below(100) {
            0..=44 => Bytes::new(),
            45..=59 => bytes(b"\0"),
            60..=74 => Bytes::from(super::prefix_end(key)),
            75..=89 => self.key(),
            90..=94 => bytes(b"\0\0"),
            _ => bytes(b"\xff"),
        }
    }

    fn value(&mut self) -> Bytes {
        match self.rng.below(100) {
            0..=69 => Bytes::from(format!("v{}", self.rng.below(1000))),
            70..=79 => Bytes::new(),
            80..=89 => Bytes::from(vec![0xff; self.rng.below(64)]),
            _ => Bytes::from(vec![b'v'; self.size_near_limit()]),
        }
    }

    fn revision_value(&mut self) -> i64 {
        match self.rng.below(100) {
            0..=29 => 0,
            30..=64 => self
                .rng
                .between(1.max(self.compacted - 2), self.revision + 2),
            65..=74 => -self.rng.between(1, 5),
            75..=84 => i64::MAX - self.rng.between(0, 2),
            85..=89 => i64::MIN,
            _ => self.rng.between(1, self.revision.max(1)),
        }
    }

    fn number(&mut self) -> i64 {
        match self.rng.below(10) {
            0 => 0,
            1 => -1,
            2 => i64::MAX,
            3 => i64::MIN,
            _ => self.rng.between(-3, self.revision + 3),
        }
    }

    fn lease_for_put(&mut self) -> i64 {
        match self.rng.below(100) {
            0..=69 => 0,
            70..=89 => self.rng.pick(&DURABLE_LEASES),
            90..=94 => 0x7c00_0000 + self.rng.below(5) as i64,
            _ => -self.rng.between(1, 3),
        }
    }

    fn enum_value(&mut self, known: i32) -> i32 {
        if self.rng.percent(90) {
            self.rng.below(known as usize) as i32
        } else {
            self.rng.pick(&[-1, known, known + 1, 9, i32::MAX])
        }
    }

    pub fn range(&mut self) -> RangeRequest {
        let key = self.key();
        RangeRequest {
            range_end: self.range_end(&key),
            key,
            limit: if self.rng.percent(60) {
                0
            } else {
                self.number()
            },
            revision: if self.rng.percent(50) {
                0
            } else {
                self.revision_value()
            },
            sort_order: self.enum_value(3),
            sort_target: if self.rng.percent(97) {
                self.rng.below(5) as i32
            } else {
                self.enum_value(5)
            },
            serializable: self.rng.percent(15),
            keys_only: self.rng.percent(20),
            count_only: self.rng.percent(15),
            min_mod_revision: if self.rng.percent(80) {
                0
            } else {
                self.number()
            },
            max_mod_revision: if self.rng.percent(80) {
                0
            } else {
                self.number()
            },
            min_create_revision: if self.rng.percent(85) {
                0
            } else {
                self.number()
            },
            max_create_revision: if self.rng.percent(85) {
                0
            } else {
                self.number()
            },
        }
    }

    pub fn put(&mut self) -> PutRequest {
        let ignore_value = self.rng.percent(12);
        let ignore_lease = self.rng.percent(12);
        PutRequest {
            key: self.key(),
            // Mostly what etcd's checks want (no value with ignore_value), sometimes not.
            value: if ignore_value && self.rng.percent(80) {
                Bytes::new()
            } else {
                self.value()
            },
            lease: if ignore_lease && self.rng.percent(80) {
                0
            } else {
                self.lease_for_put()
            },
            prev_kv: self.rng.percent(40),
            ignore_value,
            ignore_lease,
        }
    }

    pub fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        DeleteRangeRequest {
            range_end: self.range_end(&key),
            key,
            prev_kv: self.rng.percent(40),
        }
    }

    fn compare(&mut self) -> Compare {
        use compare::TargetUnion;
        let key = self.key();
        let target = self.enum_value(5);
        let number = self.number();
        let target_union = match self.rng.below(6) {
            0 => Some(TargetUnion::Version(number)),
            1 => Some(TargetUnion::CreateRevision(number)),
            2 => Some(TargetUnion::ModRevision(number)),
            3 => Some(TargetUnion::Value(self.value())),
            4 => Some(TargetUnion::Lease(number)),
            _ => None,
        };
        Compare {
            result: self.enum_value(4),
            target,
            range_end: self.range_end(&key),
            key,
            target_union,
        }
    }

    fn op(&mut self, depth: usize) -> RequestOp {
        let request = match self.rng.below(100) {
            0..=29 => Some(request_op::Request::RequestRange(self.range())),
            30..=59 => Some(request_op::Request::RequestPut(self.put())),
            60..=79 => Some(request_op::Request::RequestDeleteRange(self.delete())),
            80..=96 if depth > 0 => Some(request_op::Request::RequestTxn(self.txn_of(depth - 1))),
            80..=96 => Some(request_op::Request::RequestRange(self.range())),
            _ => None,
        };
        RequestOp { request }
    }

    fn txn_of(&mut self, depth: usize) -> TxnRequest {
        let count = |g: &mut Generator| {
            if g.rng.percent(3) {
                129
            } else {
                g.rng.below(4)
            }
        };
        let (compares, success, failure) = (count(self), count(self), count(self));
        TxnRequest {
            compare: (0..compares.min(130)).map(|_| self.compare()).collect(),
            success: (0..success).map(|_| self.op(depth)).collect(),
            failure: (0..failure).map(|_| self.op(depth)).collect(),
        }
    }

    pub fn txn(&mut self) -> TxnRequest {
        if self.rng.percent(3) {
            // Deep nesting: one op per level.
            let depth = self.rng.pick(&[30usize, 49, 50, 51, 64, 100, 130, 200]);
            let mut txn = TxnRequest::default();
            for _ in 0..depth {
                txn = TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestTxn(txn)),
                    }],
                    failure: vec![],
                };
            }
            return txn;
        }
        // Sometimes issue 10's shape: a from-key delete, then a put ignoring the value.
        if self.rng.percent(4) {
            let mut put = self.put();
            put.ignore_value = true;
            put.value = Bytes::new();
            return TxnRequest {
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
                        request: Some(request_op::Request::RequestPut(put)),
                    },
                ],
                failure: vec![],
            };
        }
        let depth = self.rng.below(4);
        self.txn_of(depth)
    }

    fn watch_requests(&mut self) -> Vec<WatchRequest> {
        let count = self.rng.below(5) + 1;
        (0..count)
            .map(|_| {
                let request_union = match self.rng.below(100) {
                    0..=69 => {
                        let key = self.key();
                        watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                            range_end: self.range_end(&key),
                            key,
                            start_revision: if self.rng.percent(50) {
                                0
                            } else {
                                self.revision_value()
                            },
                            progress_notify: self.rng.percent(20),
                            filters: (0..self.rng.below(3)).map(|_| self.enum_value(2)).collect(),
                            prev_kv: self.rng.percent(30),
                            watch_id: match self.rng.below(10) {
                                0..=5 => 0,
                                6 => -self.rng.between(1, 3),
                                7 => i64::MAX,
                                _ => self.rng.between(1, 4),
                            },
                            fragment: self.rng.percent(20),
                        })
                    }
                    70..=84 => watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
                        watch_id: self.rng.between(-2, 5),
                    }),
                    _ => watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {}),
                };
                WatchRequest {
                    request_union: if self.rng.percent(3) {
                        None
                    } else {
                        Some(request_union)
                    },
                }
            })
            .collect()
    }

    fn stream_end(&mut self) -> StreamEnd {
        match self.rng.below(3) {
            0 => StreamEnd::HalfClose,
            1 => StreamEnd::Drop,
            _ => StreamEnd::Read,
        }
    }

    fn lease_id(&mut self) -> i64 {
        match self.rng.below(10) {
            0..=3 => self.rng.pick(&DURABLE_LEASES),
            4..=5 => self.rng.pick(&EPHEMERAL_LEASES),
            6 => 0,
            7 => -1,
            8 => i64::MAX,
            _ => 0x7c00_0000 + self.rng.below(5) as i64,
        }
    }

    fn member_id(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => 0,
            1 => u64::MAX,
            2 if !self.added.is_empty() => self.rng.pick(&self.added),
            _ => self.rng.next(),
        }
    }

    fn peer_urls(&mut self) -> Vec<String> {
        match self.rng.below(6) {
            0 => vec![],
            1 => vec!["not a url".into()],
            2 => vec!["http://127.0.0.1".into()],
            3 => vec![String::new()],
            _ => vec![format!("http://127.0.0.1:{}", super::free_port())],
        }
    }

    fn name(&mut self) -> Vec<u8> {
        match self.rng.below(6) {
            0 => Vec::new(),
            1 => vec![0xff; 3],
            2 => vec![b'n'; self.rng.below(200) + 1],
            _ => format!("name{}", self.rng.below(3)).into_bytes(),
        }
    }

    /// The next call.
    pub fn next_call(&mut self) -> Call {
        match self.rng.below(1000) {
            0..=139 => Call::Range(self.range()),
            140..=269 => Call::Put(self.put()),
            270..=329 => Call::Delete(self.delete()),
            330..=469 => Call::Txn(self.txn()),
            470..=489 => Call::Compact(CompactionRequest {
                revision: if self.rng.percent(70) {
                    self.rng.between(self.compacted - 1, self.revision + 1)
                } else {
                    self.revision_value()
                },
                physical: self.rng.percent(50),
            }),
            490..=519 => {
                // Leases that may expire get ephemeral IDs only; every other grant lives
                // long or is refused (a lease expiring at different instants on two
                // servers would revoke its keys at different revisions).
                let (id, ttl) = match self.rng.below(10) {
                    0..=4 => (
                        self.rng.pick(&EPHEMERAL_LEASES),
                        self.rng
                            .pick(&[-5, -1, 0, 1, 2, 3, 9_000_000_000, 9_000_000_001]),
                    ),
                    5..=7 => (self.rng.pick(&DURABLE_LEASES), DURABLE_TTL),
                    _ => (
                        self.rng.pick(&[0, -1, -7, i64::MAX, i64::MIN, 0x7c00_0009]),
                        self.rng.pick(&[DURABLE_TTL, 9_000_000_001, i64::MAX]),
                    ),
                };
                Call::LeaseGrant(LeaseGrantRequest { ttl, id })
            }
            520..=534 => Call::LeaseRevoke(LeaseRevokeRequest {
                // Never a durable lease: keys attached to it stay comparable.
                id: if self.rng.percent(80) {
                    self.rng.pick(&EPHEMERAL_LEASES)
                } else {
                    self.rng.pick(&[0, -1, i64::MAX, 0x7c00_0001])
                },
            }),
            535..=554 => Call::LeaseTimeToLive(LeaseTimeToLiveRequest {
                id: self.lease_id(),
                keys: self.rng.percent(50),
            }),
            555..=564 => Call::LeaseLeases,
            565..=589 => {
                let ids = (0..self.rng.below(4) + 1)
                    .map(|_| self.lease_id())
                    .collect();
                Call::KeepAlive(ids, self.stream_end())
            }
            590..=679 => Call::Watch(self.watch_requests(), self.stream_end()),
            680..=689 => Call::MemberList,
            690..=699 => Call::MemberAdd(MemberAddRequest {
                peer_ur_ls: self.peer_urls(),
                // Voters would change the quorum of the servers under test.
                is_learner: true,
            }),
            700..=709 => Call::MemberRemove(self.member_id()),
            710..=714 => Call::MemberUpdate(MemberUpdateRequest {
                id: self.member_id(),
                peer_ur_ls: self.peer_urls(),
            }),
            715..=719 => Call::MemberPromote(self.member_id()),
            720..=739 => Call::Status,
            740..=759 => {
                let action = self.enum_value(3);
                // Not CORRUPT (2): etcd 3.4 swaps in the applier of the alarm activated
                // last (CORRUPT then NOSPACE answers "database space exceeded"; any
                // disarm drops both), while rivet stacks the appliers of every raised
                // alarm as etcd does at a restart (corrupt over capped), so runs that
                // raise both are not comparable.
                let alarm = match self.enum_value(3) {
                    2 => 1,
                    other => other,
                };
                Call::Alarm(AlarmRequest {
                    action,
                    member_id: if self.rng.percent(50) {
                        0
                    } else {
                        self.rng.next()
                    },
                    alarm,
                })
            }
            760..=769 => Call::Hash,
            770..=784 => Call::HashKv(self.revision_value()),
            785..=789 => Call::Defragment,
            790..=794 => Call::Snapshot,
            795..=804 => Call::MoveLeader(self.member_id()),
            805..=849 => Call::Lock(LockRequest {
                name: self.free_name().into(),
                lease: self.key_lease(),
            }),
            850..=869 => Call::Unlock(UnlockRequest {
                key: if !self.locks.is_empty() && self.rng.percent(50) {
                    let at = self.rng.below(self.locks.len());
                    self.locks[at].1.clone().into()
                } else if self.rng.percent(50) {
                    let mut key = self.name();
                    key.extend_from_slice(format!("/{:x}", self.key_lease()).as_bytes());
                    key.into()
                } else {
                    self.key()
                },
            }),
            870..=904 => Call::Campaign(CampaignRequest {
                name: self.free_name().into(),
                lease: self.key_lease(),
                value: self.value(),
            }),
            905..=924 => Call::Proclaim(ProclaimRequest {
                leader: self.leader_key(),
                value: self.value(),
            }),
            925..=944 => Call::Leader(LeaderRequest {
                name: self.name().into(),
            }),
            945..=969 => Call::Resign(ResignRequest {
                leader: self.leader_key(),
            }),
            _ => Call::Observe(LeaderRequest {
                name: self.name().into(),
            }),
        }
    }

    fn leader_key(&mut self) -> Option<LeaderKey> {
        if self.rng.percent(10) {
            return None;
        }
        if !self.leaders.is_empty() && self.rng.percent(40) {
            let at = self.rng.below(self.leaders.len());
            return Some(self.leaders[at].1.clone());
        }
        let name = self.name();
        let lease = self.key_lease();
        let mut key = name.clone();
        key.extend_from_slice(format!("/{lease:x}").as_bytes());
        Some(LeaderKey {
            name: name.into(),
            key: if self.rng.percent(70) {
                key.into()
            } else {
                self.key()
            },
            rev: self.number(),
            lease,
        })
    }

    /// Learns from an answer the comparison trusted (etcd's, in differential mode).
    pub fn learn(&mut self, call: &Call, answer: &RawAnswer) {
        if let Some(revision) = answer.revision {
            self.revision = self.revision.max(revision);
        }
        match (call, &answer.error) {
            (Call::Compact(c), None) => self.compacted = self.compacted.max(c.revision),
            (Call::MemberAdd(_), None) => {
                if let Some(id) = answer.member_id {
                    self.added.push(id);
                }
            }
            (Call::MemberRemove(id), None) => self.added.retain(|a| a != id),
            (Call::Lock(r), None) => {
                if let Some(key) = &answer.key {
                    self.locks.push((r.name.to_vec(), key.clone()));
                }
            }
            (Call::Unlock(r), None) => self.locks.retain(|(_, key)| *key != r.key.as_ref()),
            (Call::Campaign(r), None) => {
                if let Some(leader) = &answer.leader {
                    self.leaders.push((r.name.to_vec(), leader.clone()));
                }
            }
            (Call::Resign(r), None) => {
                if let Some(leader) = &r.leader {
                    self.leaders.retain(|(_, held)| held.key != leader.key);
                }
            }
            (Call::Alarm(a), None) => {
                if a.action == alarm_request::AlarmAction::Activate as i32 {
                    self.alarm_raised = true;
                } else if a.action == alarm_request::AlarmAction::Deactivate as i32 {
                    self.alarm_raised = false;
                }
            }
            _ => {}
        }
    }

    /// Calls that keep the run meaningful: a raised alarm is disarmed, learners added
    /// are removed again (one learner at most in etcd).
    pub fn housekeeping(&mut self) -> Vec<Call> {
        let mut calls = Vec::new();
        if self.alarm_raised && self.rng.percent(30) {
            for alarm in [1, 2] {
                calls.push(Call::Alarm(AlarmRequest {
                    action: alarm_request::AlarmAction::Deactivate as i32,
                    member_id: 0,
                    alarm,
                }));
            }
        }
        if !self.added.is_empty() && self.rng.percent(30) {
            let id = self.added[0];
            calls.push(Call::MemberRemove(id));
        }
        calls
    }
}

/// An answer before the comparison reduces it, with what the generator learns from it.
#[derive(Clone, Debug)]
pub struct RawAnswer {
    pub error: Option<(tonic::Code, String)>,
    /// The comparable body, when the call's answer is compared.
    pub body: Option<String>,
    pub compared: bool,
    pub revision: Option<i64>,
    pub member_id: Option<u64>,
    /// A Lock's key, a Campaign's leader key.
    pub key: Option<Vec<u8>>,
    pub leader: Option<LeaderKey>,
}

impl RawAnswer {
    fn new(
        error: Option<(tonic::Code, String)>,
        body: Option<String>,
        compared: bool,
    ) -> RawAnswer {
        RawAnswer {
            error,
            body,
            compared,
            revision: None,
            member_id: None,
            key: None,
            leader: None,
        }
    }

    pub fn reduce(&self) -> Answer {
        if !self.compared {
            return Answer::uncompared();
        }
        Answer {
            error: self.error.clone(),
            body: self.body.clone(),
            compared: true,
        }
    }
}

fn status_of(status: &tonic::Status) -> Option<(tonic::Code, String)> {
    Some((status.code(), status.message().to_string()))
}

/// Clears what differs between servers in a header.
fn clear(header: &mut Option<rivet_api::etcdserverpb::ResponseHeader>) -> Option<i64> {
    let revision = header.as_ref().map(|h| h.revision);
    if let Some(h) = header {
        h.member_id = 0;
        h.cluster_id = 0;
        h.raft_term = 0;
    }
    revision
}

fn unary<T: std::fmt::Debug>(
    result: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    compared: bool,
    body_compared: bool,
    header: impl FnOnce(&mut T) -> Option<i64>,
) -> RawAnswer {
    match result {
        Err(_) => RawAnswer::new(
            Some((tonic::Code::DeadlineExceeded, "no answer in time".into())),
            None,
            false,
        ),
        Ok(Err(status)) => RawAnswer::new(status_of(&status), None, compared),
        Ok(Ok(response)) => {
            let mut inner = response.into_inner();
            let revision = header(&mut inner);
            let mut answer =
                RawAnswer::new(None, body_compared.then(|| format!("{inner:?}")), compared);
            answer.revision = revision;
            answer
        }
    }
}

/// Go's `sort.Sort` (etcd) orders equal sort keys of more than 12 results differently
/// from rivet's stable sort (a documented gap): such results are compared in key order.
fn sort_ties(range: &mut rivet_api::etcdserverpb::RangeResponse) {
    if range.kvs.len() > 12 {
        range.kvs.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

fn sort_txn_ties(txn: &mut rivet_api::etcdserverpb::TxnResponse) {
    use rivet_api::etcdserverpb::response_op::Response;
    for op in &mut txn.responses {
        match &mut op.response {
            Some(Response::ResponseRange(range)) => sort_ties(range),
            Some(Response::ResponseTxn(nested)) => sort_txn_ties(nested),
            _ => {}
        }
    }
}

/// Whether a txn's answer may come from a lagging member (every op a serializable range,
/// as etcd decides it for a txn: one nesting a txn is linearizable).
fn txn_serializable(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(
        |op| matches!(&op.request, Some(request_op::Request::RequestRange(r)) if r.serializable),
    )
}

/// Sends `call` over `channel` and reduces the answer to what is compared (membership
/// answers compare codes and messages only: a 3-member cluster's differ from a single
/// etcd's).
pub async fn execute(channel: &Channel, call: &Call) -> RawAnswer {
    use tokio::time::timeout;
    let t = CALL_TIMEOUT;
    let max = usize::MAX;
    match call {
        Call::Range(r) => {
            let mut c = KvClient::new(channel.clone()).max_decoding_message_size(max);
            let compared = !r.serializable;
            unary(
                timeout(t, c.range(r.clone())).await,
                compared,
                compared,
                |x| {
                    sort_ties(x);
                    clear(&mut x.header)
                },
            )
        }
        Call::Put(r) => {
            let mut c = KvClient::new(channel.clone()).max_decoding_message_size(max);
            unary(timeout(t, c.put(r.clone())).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::Delete(r) => {
            let mut c = KvClient::new(channel.clone()).max_decoding_message_size(max);
            unary(
                timeout(t, c.delete_range(r.clone())).await,
                true,
                true,
                |x| clear(&mut x.header),
            )
        }
        Call::Txn(r) => {
            let mut c = KvClient::new(channel.clone()).max_decoding_message_size(max);
            // prost decodes at most 100 nested messages below the top, two per txn level:
            // rivet refuses a deeper txn ("failed to decode Protobuf message"), which etcd
            // runs (and whose answer this client could not decode either). A known
            // difference, not compared; rivet must still answer. What decodes is
            // compared: it also decodes from a raft entry on every replica.
            let compared =
                !txn_serializable(r) && TxnRequest::decode(r.encode_to_vec().as_slice()).is_ok();
            unary(
                timeout(t, c.txn(r.clone())).await,
                compared,
                compared,
                |x| {
                    sort_txn_ties(x);
                    clear(&mut x.header)
                },
            )
        }
        Call::Compact(r) => {
            let mut c = KvClient::new(channel.clone());
            unary(timeout(t, c.compact(*r)).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::LeaseGrant(r) => {
            let mut c = LeaseClient::new(channel.clone());
            let durable = DURABLE_LEASES.contains(&r.id) && r.ttl == DURABLE_TTL;
            let ephemeral = EPHEMERAL_LEASES.contains(&r.id);
            // A grant of an ephemeral ID may meet the lease still alive on one server
            // and expired on the other; an ID 0 is chosen by the server.
            let compared = !ephemeral && r.id != 0;
            unary(
                timeout(t, c.lease_grant(*r)).await,
                compared,
                durable,
                |x| clear(&mut x.header),
            )
        }
        Call::LeaseRevoke(r) => {
            let mut c = LeaseClient::new(channel.clone());
            let compared = !EPHEMERAL_LEASES.contains(&r.id);
            unary(
                timeout(t, c.lease_revoke(*r)).await,
                compared,
                compared,
                |x| clear(&mut x.header),
            )
        }
        Call::LeaseTimeToLive(r) => {
            let mut c = LeaseClient::new(channel.clone());
            let compared = !EPHEMERAL_LEASES.contains(&r.id);
            // Remaining TTLs run on each server's clock: code and message only.
            unary(
                timeout(t, c.lease_time_to_live(*r)).await,
                compared,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::LeaseLeases => {
            let mut c = LeaseClient::new(channel.clone());
            unary(
                timeout(t, c.lease_leases(LeaseLeasesRequest {})).await,
                true,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::KeepAlive(ids, end) => keep_alive(channel, ids, *end).await,
        Call::Watch(requests, end) => watch(channel, requests, *end).await,
        Call::MemberList => {
            let mut c = ClusterClient::new(channel.clone());
            unary(
                timeout(t, c.member_list(MemberListRequest {})).await,
                true,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::MemberAdd(r) => {
            let mut c = ClusterClient::new(channel.clone());
            let result = timeout(t, c.member_add(r.clone())).await;
            let member_id = match &result {
                Ok(Ok(response)) => response.get_ref().member.as_ref().map(|m| m.id),
                _ => None,
            };
            // The cluster under test has three members, etcd one: "not enough started
            // members" and the like legitimately differ; code and message of refusals
            // for bad URLs are compared.
            let bad_urls = r
                .peer_ur_ls
                .iter()
                .all(|u| !u.starts_with("http://127.0.0.1:"))
                || r.peer_ur_ls.is_empty();
            let mut answer = unary(result, bad_urls, false, |x| clear(&mut x.header));
            answer.member_id = member_id;
            answer
        }
        Call::MemberRemove(id) => {
            let mut c = ClusterClient::new(channel.clone());
            unary(
                timeout(t, c.member_remove(MemberRemoveRequest { id: *id })).await,
                false,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::MemberUpdate(r) => {
            let mut c = ClusterClient::new(channel.clone());
            unary(
                timeout(t, c.member_update(r.clone())).await,
                false,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::MemberPromote(id) => {
            let mut c = ClusterClient::new(channel.clone());
            unary(
                timeout(t, c.member_promote(MemberPromoteRequest { id: *id })).await,
                false,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::Status => {
            let mut c = MaintenanceClient::new(channel.clone());
            unary(
                timeout(t, c.status(StatusRequest {})).await,
                true,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::Alarm(r) => {
            let mut c = MaintenanceClient::new(channel.clone());
            // Member IDs differ between the servers.
            unary(timeout(t, c.alarm(*r)).await, true, false, |x| {
                clear(&mut x.header)
            })
        }
        Call::Hash => {
            let mut c = MaintenanceClient::new(channel.clone());
            // rivet's Hash hashes versions, etcd's its bbolt file: code only.
            unary(timeout(t, c.hash(HashRequest {})).await, true, false, |x| {
                clear(&mut x.header)
            })
        }
        Call::HashKv(revision) => {
            let mut c = MaintenanceClient::new(channel.clone());
            unary(
                timeout(
                    t,
                    c.hash_kv(HashKvRequest {
                        revision: *revision,
                    }),
                )
                .await,
                true,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::Defragment => {
            let mut c = MaintenanceClient::new(channel.clone());
            // Not implemented by rivet yet (docs/ARCHITECTURE.md, known gaps).
            unary(
                timeout(t, c.defragment(DefragmentRequest {})).await,
                false,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::Snapshot => {
            let mut c = MaintenanceClient::new(channel.clone()).max_decoding_message_size(max);
            // Not implemented by rivet yet; the stream is dropped after its first answer.
            let answer = timeout(t, async {
                let mut stream = c.snapshot(SnapshotRequest {}).await?.into_inner();
                let _ = stream.next().await;
                Ok::<_, tonic::Status>(())
            })
            .await;
            let error = match answer {
                Err(_) => Some((tonic::Code::DeadlineExceeded, "no answer in time".into())),
                Ok(Err(status)) => status_of(&status),
                Ok(Ok(())) => None,
            };
            RawAnswer::new(error, None, false)
        }
        Call::MoveLeader(id) => {
            let mut c = MaintenanceClient::new(channel.clone());
            unary(
                timeout(t, c.move_leader(MoveLeaderRequest { target_id: *id })).await,
                false,
                false,
                |x| clear(&mut x.header),
            )
        }
        Call::Lock(r) => {
            let mut c = LockClient::new(channel.clone());
            let result = timeout(BLOCKING_CALL_TIMEOUT, c.lock(r.clone())).await;
            let key = match &result {
                Ok(Ok(response)) => Some(response.get_ref().key.to_vec()),
                _ => None,
            };
            let mut answer = blocking(result, |x| clear(&mut x.header));
            answer.key = key;
            answer
        }
        Call::Unlock(r) => {
            let mut c = LockClient::new(channel.clone());
            unary(timeout(t, c.unlock(r.clone())).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::Campaign(r) => {
            let mut c = ElectionClient::new(channel.clone());
            let result = timeout(BLOCKING_CALL_TIMEOUT, c.campaign(r.clone())).await;
            let leader = match &result {
                Ok(Ok(response)) => response.get_ref().leader.clone(),
                _ => None,
            };
            let mut answer = blocking(result, |x| clear(&mut x.header));
            answer.leader = leader;
            answer
        }
        Call::Proclaim(r) => {
            let mut c = ElectionClient::new(channel.clone());
            unary(timeout(t, c.proclaim(r.clone())).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::Leader(r) => {
            let mut c = ElectionClient::new(channel.clone());
            unary(timeout(t, c.leader(r.clone())).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::Resign(r) => {
            let mut c = ElectionClient::new(channel.clone());
            unary(timeout(t, c.resign(r.clone())).await, true, true, |x| {
                clear(&mut x.header)
            })
        }
        Call::Observe(r) => {
            let mut c = ElectionClient::new(channel.clone());
            let answer = timeout(BLOCKING_CALL_TIMEOUT, async {
                let mut stream = c.observe(r.clone()).await?.into_inner();
                match stream.next().await {
                    Some(Err(status)) => Err(status),
                    _ => Ok(()),
                }
            })
            .await;
            let (error, compared) = match answer {
                Err(_) => (None, false),
                Ok(Err(status)) => (status_of(&status), true),
                Ok(Ok(())) => (None, false),
            };
            RawAnswer::new(error, None, compared)
        }
    }
}

/// A call that may block (Lock, Campaign): compared when it answered before the client
/// gave up; else cancelled and not compared.
fn blocking<T: std::fmt::Debug>(
    result: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    header: impl FnOnce(&mut T) -> Option<i64>,
) -> RawAnswer {
    match result {
        Err(_) => RawAnswer::new(None, None, false),
        other => unary(other, true, true, header),
    }
}

async fn keep_alive(channel: &Channel, ids: &[i64], end: StreamEnd) -> RawAnswer {
    let mut client = LeaseClient::new(channel.clone());
    let (sender, requests) = futures::channel::mpsc::unbounded();
    for &id in ids {
        let _ = sender.unbounded_send(LeaseKeepAliveRequest { id });
    }
    let mut sender = Some(sender);
    if matches!(end, StreamEnd::HalfClose) {
        sender = None;
    }
    let compared_ids = ids.iter().all(|id| !EPHEMERAL_LEASES.contains(id));
    let answer = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut stream = client.lease_keep_alive(requests).await?.into_inner();
        if matches!(end, StreamEnd::Drop) {
            return Ok(Vec::new());
        }
        let mut seen = Vec::new();
        let window = tokio::time::sleep(STREAM_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(r)) => seen.push((r.id, r.ttl)),
                    Some(Err(status)) => return Err(status),
                    None => break,
                },
                _ = &mut window, if seen.len() >= ids.len() => break,
            }
        }
        Ok(seen)
    })
    .await;
    drop(sender);
    let (error, body) = match answer {
        Err(_) => (
            Some((tonic::Code::DeadlineExceeded, "no answer in time".into())),
            None,
        ),
        Ok(Err(status)) => (status_of(&status), None),
        Ok(Ok(seen)) => (None, Some(format!("{seen:?}"))),
    };
    let compared = compared_ids && !matches!(end, StreamEnd::Drop);
    RawAnswer::new(error, body, compared)
}

async fn watch(channel: &Channel, requests: &[WatchRequest], end: StreamEnd) -> RawAnswer {
    let mut client = WatchClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let (sender, inbound) = futures::channel::mpsc::unbounded();
    for request in requests {
        let _ = sender.unbounded_send(request.clone());
    }
    let mut sender = Some(sender);
    if matches!(end, StreamEnd::HalfClose) {
        sender = None;
    }
    // Creates and cancels answer in order: compared are the answers to them (created, or
    // cancelled without a compaction), not events, whose batching is timing.
    let answers_owed = requests
        .iter()
        .filter(|r| {
            matches!(
                r.request_union,
                Some(watch_request::RequestUnion::CreateRequest(_))
            )
        })
        .count();
    let answer = tokio::time::timeout(CALL_TIMEOUT, async {
        // grpc-go sends a stream's headers with its first message: a stream that is owed
        // no answer may never be answered at all.
        let opened = if answers_owed == 0 {
            match tokio::time::timeout(STREAM_WINDOW, client.watch(inbound)).await {
                Ok(opened) => opened,
                Err(_) => return Ok(Vec::new()),
            }
        } else {
            client.watch(inbound).await
        };
        let mut stream = opened?.into_inner();
        if matches!(end, StreamEnd::Drop) {
            return Ok(Vec::new());
        }
        let mut answers = Vec::new();
        let window = tokio::time::sleep(STREAM_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(r)) => {
                        if r.created || (r.canceled && r.compact_revision == 0) {
                            answers.push((r.watch_id, r.created, r.canceled, r.cancel_reason));
                        }
                    }
                    Some(Err(status)) => return Err(status),
                    None => break,
                },
                _ = &mut window, if answers.len() >= answers_owed => break,
            }
        }
        Ok(answers)
    })
    .await;
    drop(sender);
    let (error, body) = match answer {
        Err(_) => (
            Some((tonic::Code::DeadlineExceeded, "no answer in time".into())),
            None,
        ),
        Ok(Err(status)) => (status_of(&status), None),
        Ok(Ok(answers)) => (None, Some(format!("{answers:?}"))),
    };
    RawAnswer::new(error, body, !matches!(end, StreamEnd::Drop))
}

/// A short description of a call for reports (huge fields cut).
pub fn describe(call: &Call) -> String {
    let text = format!("{call:?}");
    let cut: String = text.chars().take(2000).collect();
    if cut.len() == text.len() {
        return text;
    }
    format!("{cut}… ({} bytes in all)", text.len())
}
