//! Prometheus metrics with etcd's names, so existing dashboards and alert rules work
//! (ETCD_LESSONS 42). Lock-free: counters and histogram buckets are relaxed atomics in one
//! static registry; gauges that describe storage are read on demand by the endpoint
//! (lesson 13), never stored by a writer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed upper bounds (etcd's exponential buckets; seconds unless the
/// name says otherwise).
pub struct Histogram {
    bounds: &'static [f64],
    counts: [AtomicU64; 32],
    /// The sum of observed values, as `f64` bits.
    sum: AtomicU64,
    count: AtomicU64,
}

/// etcd's buckets for disk latencies: 1 ms × 2^k, k = 0..13.
pub const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.len() < 32);
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; 32],
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Observes a duration, in seconds.
    pub fn observe(&self, took: Duration) {
        self.observe_value(took.as_secs_f64());
    }

    /// Observes a duration in milliseconds (etcd's `*_milliseconds` histograms).
    pub fn observe_millis(&self, took: Duration) {
        self.observe_value(took.as_secs_f64() * 1000.0);
    }

    pub fn observe_value(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    /// The series of one labeled histogram (`labels` like `a="x",b="y"`), without the
    /// HELP and TYPE lines.
    fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum());
        let _ = writeln!(
            out,
            "{name}_count{{{labels}}} {}",
            self.count.load(Ordering::Relaxed)
        );
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum());
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// A gauge that goes up and down (watchers, streams).
pub struct Gauge(std::sync::atomic::AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(std::sync::atomic::AtomicI64::new(0))
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Gauge::new()
    }
}

/// `prometheus.ExponentialBuckets(start, 2, N)`, as etcd declares each histogram.
const fn doubling<const N: usize>(start: f64) -> [f64; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    let mut value = start;
    while i < N {
        out[i] = value;
        value *= 2.0;
        i += 1;
    }
    out
}

/// etcd's lease TTL buckets: 1 s × 2^k, k = 0..23.
pub const LEASE_TTL_BUCKETS: [f64; 24] = doubling(1.0);
/// `etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds`.
pub const COMPACTION_PAUSE_BUCKETS: [f64; 13] = doubling(1.0);
/// `etcd_debugging_mvcc_db_compaction_total_duration_milliseconds`.
pub const COMPACTION_TOTAL_BUCKETS: [f64; 14] = doubling(100.0);
/// `etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds`.
pub const INDEX_COMPACTION_BUCKETS: [f64; 14] = doubling(0.5);
/// `etcd_disk_backend_defrag_duration_seconds`.
pub const DEFRAG_BUCKETS: [f64; 13] = doubling(0.1);
/// `etcd_disk_backend_snapshot_duration_seconds`.
pub const BACKEND_SNAPSHOT_BUCKETS: [f64; 17] = doubling(0.01);
/// `etcd_mvcc_hash_duration_seconds`, `etcd_mvcc_hash_rev_duration_seconds`.
pub const HASH_BUCKETS: [f64; 15] = doubling(0.01);
/// `etcd_snap_db_save_total_duration_seconds`.
pub const SNAP_DB_SAVE_BUCKETS: [f64; 10] = doubling(0.1);
/// `etcd_network_peer_round_trip_time_seconds`.
pub const PEER_RTT_BUCKETS: [f64; 16] = doubling(0.0001);
/// `etcd_network_snapshot_{send,receive}_total_duration_seconds`.
pub const PEER_SNAPSHOT_BUCKETS: [f64; 14] = doubling(0.1);

// The key-value store (etcd's mvcc package): counted where a request is applied or read.
pub static MVCC_PUT: Counter = Counter::new();
pub static MVCC_DELETE: Counter = Counter::new();
pub static MVCC_RANGE: Counter = Counter::new();
pub static MVCC_TXN: Counter = Counter::new();
pub static MVCC_PUT_SIZE: Counter = Counter::new();
pub static MVCC_HASH: Histogram = Histogram::new(&HASH_BUCKETS);
pub static MVCC_HASH_REV: Histogram = Histogram::new(&HASH_BUCKETS);
pub static DB_COMPACTION_KEYS: Counter = Counter::new();
pub static DB_COMPACTION_PAUSE: Histogram = Histogram::new(&COMPACTION_PAUSE_BUCKETS);
pub static DB_COMPACTION_TOTAL: Histogram = Histogram::new(&COMPACTION_TOTAL_BUCKETS);
pub static INDEX_COMPACTION_PAUSE: Histogram = Histogram::new(&INDEX_COMPACTION_BUCKETS);
// Watch: events sent, events waiting in streams, streams and watchers.
pub static WATCH_EVENTS: Counter = Counter::new();
pub static WATCH_PENDING_EVENTS: Gauge = Gauge::new();
pub static WATCH_SLOW_WATCHERS: Gauge = Gauge::new();
pub static WATCH_STREAMS: Gauge = Gauge::new();
pub static WATCHERS: Gauge = Gauge::new();
// Leases.
pub static LEASE_GRANTED: Counter = Counter::new();
pub static LEASE_REVOKED: Counter = Counter::new();
pub static LEASE_RENEWED: Counter = Counter::new();
pub static LEASE_EXPIRED: Counter = Counter::new();
pub static LEASE_TTL: Histogram = Histogram::new(&LEASE_TTL_BUCKETS);
// The server.
pub static QUOTA_BACKEND_BYTES: Counter = Counter::new();
pub static READ_INDEXES_FAILED: Counter = Counter::new();
pub static SLOW_READ_INDEXES: Counter = Counter::new();
pub static SLOW_APPLY: Counter = Counter::new();
pub static SNAPSHOT_APPLY_IN_PROGRESS: Gauge = Gauge::new();
pub static HEALTH_SUCCESS: Counter = Counter::new();
pub static HEALTH_FAILURES: Counter = Counter::new();
pub static LEARNER_PROMOTE_SUCCESSES: Counter = Counter::new();
pub static CLIENT_REQUESTS_UNARY: Counter = Counter::new();
pub static CLIENT_REQUESTS_STREAM: Counter = Counter::new();
pub static CLIENT_GRPC_RECEIVED_BYTES: Counter = Counter::new();
pub static CLIENT_GRPC_SENT_BYTES: Counter = Counter::new();
// Disk.
pub static WAL_WRITE_BYTES: Counter = Counter::new();
pub static DEFRAG: Histogram = Histogram::new(&DEFRAG_BUCKETS);
pub static DEFRAG_INFLIGHT: Gauge = Gauge::new();
pub static BACKEND_SNAPSHOT: Histogram = Histogram::new(&BACKEND_SNAPSHOT_BUCKETS);
pub static SNAP_DB_FSYNC: Histogram = Histogram::new(&DISK_BUCKETS);
pub static SNAP_DB_SAVE_TOTAL: Histogram = Histogram::new(&SNAP_DB_SAVE_BUCKETS);
// The metrics endpoint itself (the Prometheus Go client's `promhttp_*`).
pub static SCRAPES: Counter = Counter::new();
pub static SCRAPES_IN_FLIGHT: Gauge = Gauge::new();

/// One peer's link, as etcd's `etcd_network_*` metrics label it (`To`/`From`/`Remote`:
/// the peer's member ID in hex). The transport keeps an `Arc` per peer and counts into it
/// without locks; the registry's lock is taken when a peer appears and when rendering.
#[derive(Default)]
pub struct PeerMetrics {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    pub sent_failures: Counter,
    pub received_failures: Counter,
    pub active: Gauge,
    pub disconnects: Counter,
    pub round_trip: PeerHistogram,
    pub snapshot_send_success: Counter,
    pub snapshot_send_failures: Counter,
    pub snapshot_send_duration: PeerSnapshotHistogram,
    pub snapshot_receive_success: Counter,
    pub snapshot_receive_failures: Counter,
    pub snapshot_receive_duration: PeerSnapshotHistogram,
}

/// `etcd_network_peer_round_trip_time_seconds` of one peer.
pub struct PeerHistogram(pub Histogram);

impl Default for PeerHistogram {
    fn default() -> Self {
        PeerHistogram(Histogram::new(&PEER_RTT_BUCKETS))
    }
}

/// `etcd_network_snapshot_*_total_duration_seconds` of one peer.
pub struct PeerSnapshotHistogram(pub Histogram);

impl Default for PeerSnapshotHistogram {
    fn default() -> Self {
        PeerSnapshotHistogram(Histogram::new(&PEER_SNAPSHOT_BUCKETS))
    }
}

static PEERS: std::sync::Mutex<Vec<(u64, std::sync::Arc<PeerMetrics>)>> =
    std::sync::Mutex::new(Vec::new());

/// The metrics of the link to `peer`, created on first use.
pub fn peer(peer: u64) -> std::sync::Arc<PeerMetrics> {
    let mut peers = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, metrics)) = peers.iter().find(|(id, _)| *id == peer) {
        return std::sync::Arc::clone(metrics);
    }
    let metrics = std::sync::Arc::new(PeerMetrics::default());
    peers.push((peer, std::sync::Arc::clone(&metrics)));
    metrics
}

pub static WAL_FSYNC: Histogram = Histogram::new(&DISK_BUCKETS);
pub static BACKEND_COMMIT: Histogram = Histogram::new(&DISK_BUCKETS);
pub static LEADER_CHANGES: Counter = Counter::new();
pub static PROPOSALS_COMMITTED: Counter = Counter::new();
pub static PROPOSALS_APPLIED: Counter = Counter::new();
pub static PROPOSALS_PENDING: Counter = Counter::new();
pub static PROPOSALS_FAILED: Counter = Counter::new();
pub static HAS_LEADER: Counter = Counter::new();
pub static IS_LEADER: Counter = Counter::new();
/// The auth store's revision (etcd's `etcd_debugging_auth_revision`), set by the raft
/// core after each apply batch.
pub static AUTH_REVISION: Counter = Counter(AtomicU64::new(1));
pub static HEARTBEAT_SEND_FAILURES: Counter = Counter::new();

/// gRPC methods counted by `grpc_server_started_total` and `grpc_server_handled_total`.
pub const GRPC_METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
];

/// gRPC status code names, by code number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const METHODS: usize = 30;
const _: () = assert!(GRPC_METHODS.len() == METHODS);

static GRPC_STARTED: [Counter; METHODS] = [const { Counter::new() }; METHODS];
static GRPC_HANDLED: [[Counter; 17]; METHODS] = [const { [const { Counter::new() }; 17] }; METHODS];

/// The index of a gRPC path like `/etcdserverpb.KV/Range`.
pub fn grpc_method(path: &str) -> Option<usize> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    GRPC_METHODS
        .iter()
        .position(|(s, m, _)| *s == service && *m == method)
}

/// Prometheus' default buckets, which grpc_prometheus' handling-time histogram uses.
pub const GRPC_HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
static GRPC_HANDLING: [Histogram; METHODS] =
    [const { Histogram::new(&GRPC_HANDLING_BUCKETS) }; METHODS];
/// `--metrics extensive`: etcd then exports `grpc_server_handling_seconds`.
static EXTENSIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets `--metrics` (`extensive` adds the gRPC handling-time histogram).
pub fn set_extensive(extensive: bool) {
    EXTENSIVE.store(extensive, Ordering::Relaxed);
}

/// Whether `--metrics extensive` is on.
pub fn extensive() -> bool {
    EXTENSIVE.load(Ordering::Relaxed)
}

/// Records how long a unary RPC took (only with `--metrics extensive`).
pub fn grpc_handling(method: usize, took: Duration) {
    if extensive() {
        GRPC_HANDLING[method].observe(took);
    }
}

static GRPC_MSG_RECEIVED: [Counter; METHODS] = [const { Counter::new() }; METHODS];
static GRPC_MSG_SENT: [Counter; METHODS] = [const { Counter::new() }; METHODS];

/// `messages` gRPC messages of `bytes` payload bytes arrived for `method`.
pub fn grpc_received(method: usize, messages: u64, bytes: u64) {
    GRPC_MSG_RECEIVED[method].add(messages);
    CLIENT_GRPC_RECEIVED_BYTES.add(bytes);
}

/// `messages` gRPC messages of `bytes` payload bytes were sent for `method`.
pub fn grpc_sent(method: usize, messages: u64, bytes: u64) {
    GRPC_MSG_SENT[method].add(messages);
    CLIENT_GRPC_SENT_BYTES.add(bytes);
}

pub fn grpc_started(method: usize) {
    GRPC_STARTED[method].inc();
}

pub fn grpc_handled(method: usize, code: usize) {
    GRPC_HANDLED[method][code.min(16)].inc();
}

/// Values read on demand by the endpoint.
pub struct Gauges {
    pub db_size_bytes: u64,
    pub db_size_in_use_bytes: u64,
    pub keys: u64,
    pub member_id: u64,
    pub is_learner: bool,
    pub revision: i64,
    pub compact_revision: i64,
    /// `etcd_server_version`'s and `etcd_cluster_version`'s labels.
    pub server_version: &'static str,
    pub cluster_version: &'static str,
}

fn signed(out: &mut String, name: &str, kind: &str, help: &str, value: i64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

fn labeled(out: &mut String, name: &str, help: &str, label: &str, value: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} 1");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The Prometheus text exposition of every metric.
pub fn render(gauges: &Gauges) -> String {
    let mut out = String::new();
    WAL_FSYNC.render(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &mut out,
    );
    BACKEND_COMMIT.render(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &mut out,
    );
    simple(
        &mut out,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        HAS_LEADER.get(),
    );
    simple(
        &mut out,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        IS_LEADER.get(),
    );
    simple(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        LEADER_CHANGES.get(),
    );
    simple(
        &mut out,
        "etcd_server_heartbeat_send_failures_total",
        "counter",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        HEARTBEAT_SEND_FAILURES.get(),
    );
    simple(
        &mut out,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        PROPOSALS_COMMITTED.get(),
    );
    simple(
        &mut out,
        "etcd_debugging_auth_revision",
        "gauge",
        "The current revision of auth store.",
        AUTH_REVISION.get(),
    );
    simple(
        &mut out,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        PROPOSALS_APPLIED.get(),
    );
    simple(
        &mut out,
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        PROPOSALS_PENDING.get(),
    );
    simple(
        &mut out,
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        PROPOSALS_FAILED.get(),
    );
    simple(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        gauges.db_size_bytes,
    );
    simple(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        gauges.db_size_in_use_bytes,
    );
    simple(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        gauges.keys,
    );
    render_etcd(gauges, &mut out);
    render_peers(gauges.member_id, &mut out);
    let _ = writeln!(
        out,
        "# HELP grpc_server_started_total Total number of RPCs started on the server."
    );
    let _ = writeln!(out, "# TYPE grpc_server_started_total counter");
    for (i, (service, method, kind)) in GRPC_METHODS.iter().enumerate() {
        let _ = writeln!(
            out,
            "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {}",
            GRPC_STARTED[i].get()
        );
    }
    let _ = writeln!(out, "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.");
    let _ = writeln!(out, "# TYPE grpc_server_handled_total counter");
    for (i, (service, method, kind)) in GRPC_METHODS.iter().enumerate() {
        for (code, name) in GRPC_CODES.iter().enumerate() {
            let value = GRPC_HANDLED[i][code].get();
            if value > 0 || code == 0 {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{name}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {value}"
                );
            }
        }
    }
    for (counters, name, help) in [
        (
            &GRPC_MSG_RECEIVED,
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
        ),
        (
            &GRPC_MSG_SENT,
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (i, (service, method, kind)) in GRPC_METHODS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {}",
                counters[i].get()
            );
        }
    }
    if extensive() {
        let _ = writeln!(out, "# HELP grpc_server_handling_seconds Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.");
        let _ = writeln!(out, "# TYPE grpc_server_handling_seconds histogram");
        for (i, (service, method, kind)) in GRPC_METHODS.iter().enumerate() {
            GRPC_HANDLING[i].render_series(
                "grpc_server_handling_seconds",
                &format!(
                    "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\""
                ),
                &mut out,
            );
        }
    }
    process_metrics(&mut out);
    out
}

/// The etcd families beyond the first few: server identity and health, the key-value
/// store, watch, leases, auth, disk, the metrics endpoint itself.
fn render_etcd(g: &Gauges, out: &mut String) {
    labeled(
        out,
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        "server_id",
        &format!("{:x}", g.member_id),
    );
    labeled(
        out,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "server_version",
        g.server_version,
    );
    labeled(
        out,
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        "cluster_version",
        g.cluster_version,
    );
    let counters: [(&str, &str, &str, u64); 24] = [
        ("etcd_server_is_learner", "gauge", "Whether or not this member is a learner. 1 if is, 0 otherwise.", u64::from(g.is_learner)),
        ("etcd_server_quota_backend_bytes", "gauge", "Current backend storage quota size in bytes.", QUOTA_BACKEND_BYTES.get()),
        ("etcd_server_read_indexes_failed_total", "counter", "The total number of failed read indexes seen.", READ_INDEXES_FAILED.get()),
        ("etcd_server_slow_read_indexes_total", "counter", "The total number of pending read indexes not in sync with leader's or timed out read index requests.", SLOW_READ_INDEXES.get()),
        ("etcd_server_slow_apply_total", "counter", "The total number of slow apply requests (likely overloaded from slow disk).", SLOW_APPLY.get()),
        ("etcd_server_health_success", "counter", "The total number of successful health checks", HEALTH_SUCCESS.get()),
        ("etcd_server_health_failures", "counter", "The total number of failed health checks", HEALTH_FAILURES.get()),
        ("etcd_server_learner_promote_successes", "counter", "The total number of successful learner promotions while this member is leader.", LEARNER_PROMOTE_SUCCESSES.get()),
        ("etcd_network_client_grpc_received_bytes_total", "counter", "The total number of bytes received from grpc clients.", CLIENT_GRPC_RECEIVED_BYTES.get()),
        ("etcd_network_client_grpc_sent_bytes_total", "counter", "The total number of bytes sent to grpc clients.", CLIENT_GRPC_SENT_BYTES.get()),
        ("etcd_mvcc_put_total", "counter", "Total number of puts seen by this member.", MVCC_PUT.get()),
        ("etcd_mvcc_delete_total", "counter", "Total number of deletes seen by this member.", MVCC_DELETE.get()),
        ("etcd_mvcc_range_total", "counter", "Total number of ranges seen by this member.", MVCC_RANGE.get()),
        ("etcd_mvcc_txn_total", "counter", "Total number of txns seen by this member.", MVCC_TXN.get()),
        ("etcd_debugging_mvcc_put_total", "counter", "Total number of puts seen by this member.", MVCC_PUT.get()),
        ("etcd_debugging_mvcc_delete_total", "counter", "Total number of deletes seen by this member.", MVCC_DELETE.get()),
        ("etcd_debugging_mvcc_range_total", "counter", "Total number of ranges seen by this member.", MVCC_RANGE.get()),
        ("etcd_debugging_mvcc_txn_total", "counter", "Total number of txns seen by this member.", MVCC_TXN.get()),
        ("etcd_debugging_mvcc_total_put_size_in_bytes", "gauge", "The total size of put kv pairs seen by this member.", MVCC_PUT_SIZE.get()),
        ("etcd_debugging_mvcc_events_total", "counter", "Total number of events sent by this member.", WATCH_EVENTS.get()),
        ("etcd_debugging_mvcc_db_compaction_keys_total", "counter", "Total number of db keys compacted.", DB_COMPACTION_KEYS.get()),
        ("etcd_debugging_mvcc_db_total_size_in_bytes", "gauge", "Total size of the underlying database physically allocated in bytes.", g.db_size_bytes),
        ("etcd_debugging_auth_revision", "gauge", "The current revision of auth store.", AUTH_REVISION.get()),
        ("etcd_disk_wal_write_bytes_total", "gauge", "Total number of bytes written in WAL.", WAL_WRITE_BYTES.get()),
    ];
    for (name, kind, help, value) in counters {
        simple(out, name, kind, help, value);
    }
    let gauges: [(&str, &str, &str, i64); 12] = [
        (
            "etcd_server_snapshot_apply_in_progress_total",
            "gauge",
            "1 if the server is applying the incoming snapshot. 0 if none.",
            SNAPSHOT_APPLY_IN_PROGRESS.get(),
        ),
        (
            "etcd_debugging_mvcc_current_revision",
            "gauge",
            "The current revision of store.",
            g.revision,
        ),
        (
            "etcd_debugging_mvcc_compact_revision",
            "gauge",
            "The revision of the last compaction in store.",
            g.compact_revision,
        ),
        (
            "etcd_debugging_mvcc_pending_events_total",
            "gauge",
            "Total number of pending events to be sent.",
            WATCH_PENDING_EVENTS.get(),
        ),
        (
            "etcd_debugging_mvcc_slow_watcher_total",
            "gauge",
            "Total number of unsynced slow watchers.",
            WATCH_SLOW_WATCHERS.get(),
        ),
        (
            "etcd_debugging_mvcc_watch_stream_total",
            "gauge",
            "Total number of watch streams.",
            WATCH_STREAMS.get(),
        ),
        (
            "etcd_debugging_mvcc_watcher_total",
            "gauge",
            "Total number of watchers.",
            WATCHERS.get(),
        ),
        (
            "etcd_debugging_lease_granted_total",
            "counter",
            "The total number of granted leases.",
            LEASE_GRANTED.get() as i64,
        ),
        (
            "etcd_debugging_lease_revoked_total",
            "counter",
            "The total number of revoked leases.",
            LEASE_REVOKED.get() as i64,
        ),
        (
            "etcd_debugging_lease_renewed_total",
            "counter",
            "The number of renewed leases seen by the leader.",
            LEASE_RENEWED.get() as i64,
        ),
        (
            "etcd_debugging_server_lease_expired_total",
            "counter",
            "The total number of expired leases.",
            LEASE_EXPIRED.get() as i64,
        ),
        (
            "etcd_disk_defrag_inflight",
            "gauge",
            "Whether or not defrag is active on the member. 1 means active, 0 means not.",
            DEFRAG_INFLIGHT.get(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        signed(out, name, kind, help, value);
    }
    let _ = writeln!(
        out,
        "# HELP etcd_server_client_requests_total The total number of client requests per client version."
    );
    let _ = writeln!(out, "# TYPE etcd_server_client_requests_total counter");
    for (kind, counter) in [
        ("stream", &CLIENT_REQUESTS_STREAM),
        ("unary", &CLIENT_REQUESTS_UNARY),
    ] {
        let _ = writeln!(
            out,
            "etcd_server_client_requests_total{{client_api_version=\"{}\",type=\"{kind}\"}} {}",
            g.cluster_version,
            counter.get()
        );
    }
    let histograms: [(&Histogram, &str, &str); 10] = [
        (
            &LEASE_TTL,
            "etcd_debugging_lease_ttl_total",
            "Bucketed histogram of lease TTLs.",
        ),
        (
            &DB_COMPACTION_PAUSE,
            "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
            "Bucketed histogram of db compaction pause duration.",
        ),
        (
            &DB_COMPACTION_TOTAL,
            "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
            "Bucketed histogram of db compaction total duration.",
        ),
        (
            &INDEX_COMPACTION_PAUSE,
            "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
            "Bucketed histogram of index compaction pause duration.",
        ),
        (
            &MVCC_HASH,
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation.",
        ),
        (
            &MVCC_HASH_REV,
            "etcd_mvcc_hash_rev_duration_seconds",
            "The latency distribution of storage hash by revision operation.",
        ),
        (
            &DEFRAG,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
        ),
        (
            &BACKEND_SNAPSHOT,
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots.",
        ),
        (
            &SNAP_DB_FSYNC,
            "etcd_snap_db_fsync_duration_seconds",
            "The latency distributions of fsyncing .snap.db file",
        ),
        (
            &SNAP_DB_SAVE_TOTAL,
            "etcd_snap_db_save_total_duration_seconds",
            "The total latency distributions of v3 snapshot save",
        ),
    ];
    for (histogram, name, help) in histograms {
        histogram.render(name, help, out);
    }
    let _ = writeln!(
        out,
        "# HELP promhttp_metric_handler_requests_in_flight Current number of scrapes being served."
    );
    let _ = writeln!(
        out,
        "# TYPE promhttp_metric_handler_requests_in_flight gauge"
    );
    let _ = writeln!(
        out,
        "promhttp_metric_handler_requests_in_flight {}",
        SCRAPES_IN_FLIGHT.get()
    );
    let _ = writeln!(
        out,
        "# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code."
    );
    let _ = writeln!(out, "# TYPE promhttp_metric_handler_requests_total counter");
    for code in ["200", "500", "503"] {
        let value = if code == "200" { SCRAPES.get() } else { 0 };
        let _ = writeln!(
            out,
            "promhttp_metric_handler_requests_total{{code=\"{code}\"}} {value}"
        );
    }
}

/// The `etcd_network_*` families of the peer links.
fn render_peers(local: u64, out: &mut String) {
    let peers: Vec<(u64, std::sync::Arc<PeerMetrics>)> = PEERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, m)| (*id, std::sync::Arc::clone(m)))
        .collect();
    if peers.is_empty() {
        return;
    }
    type Pick = fn(&PeerMetrics) -> u64;
    let counters: [(&str, &str, &str, Pick); 9] = [
        (
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "To",
            |m| m.sent_bytes.get(),
        ),
        (
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "From",
            |m| m.received_bytes.get(),
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "To",
            |m| m.sent_failures.get(),
        ),
        (
            "etcd_network_peer_received_failures_total",
            "The total number of receive failures from peers.",
            "From",
            |m| m.received_failures.get(),
        ),
        (
            "etcd_network_disconnected_peers_total",
            "The total number of disconnected peers.",
            "",
            |m| m.disconnects.get(),
        ),
        (
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            "To",
            |m| m.snapshot_send_success.get(),
        ),
        (
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            "To",
            |m| m.snapshot_send_failures.get(),
        ),
        (
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            "From",
            |m| m.snapshot_receive_success.get(),
        ),
        (
            "etcd_network_snapshot_receive_failures",
            "Total number of snapshot receive failures",
            "From",
            |m| m.snapshot_receive_failures.get(),
        ),
    ];
    for (name, help, label, pick) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (id, metrics) in &peers {
            let value = pick(metrics);
            if label.is_empty() {
                let _ = writeln!(
                    out,
                    "{name}{{Local=\"{local:x}\",Remote=\"{id:x}\"}} {value}"
                );
            } else {
                let _ = writeln!(out, "{name}{{{label}=\"{id:x}\"}} {value}");
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP etcd_network_active_peers The current number of active peer connections."
    );
    let _ = writeln!(out, "# TYPE etcd_network_active_peers gauge");
    for (id, metrics) in &peers {
        let _ = writeln!(
            out,
            "etcd_network_active_peers{{Local=\"{local:x}\",Remote=\"{id:x}\"}} {}",
            metrics.active.get()
        );
    }
    type PickHistogram = fn(&PeerMetrics) -> &Histogram;
    let histograms: [(&str, &str, &str, PickHistogram); 3] = [
        (
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            "To",
            |m| &m.round_trip.0,
        ),
        (
            "etcd_network_snapshot_send_total_duration_seconds",
            "Total latency distributions of v3 snapshot sends",
            "To",
            |m| &m.snapshot_send_duration.0,
        ),
        (
            "etcd_network_snapshot_receive_total_duration_seconds",
            "Total latency distributions of v3 snapshot receives",
            "From",
            |m| &m.snapshot_receive_duration.0,
        ),
    ];
    for (name, help, label, pick) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (id, metrics) in &peers {
            pick(metrics).render_series(name, &format!("{label}=\"{id:x}\""), out);
        }
    }
}

/// The Prometheus client's `process_*` families and etcd's `os_fd_*`, from /proc.
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat (index 11, 12 after the name); rss 24.
    let ticks = 100.0; // sysconf(_SC_CLK_TCK) is 100 on Linux.
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let rss_pages = fields
        .get(21)
        .and_then(|r| r.parse::<u64>().ok())
        .unwrap_or(0);
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // starttime (field 22) is in clock ticks since boot; vsize (field 23) in bytes.
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let start_time = boot_time + field(19) / ticks;
    let virtual_bytes = field(20);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as u64;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    // `Max open files  <soft>  <hard>  files`; "unlimited" is the largest value.
    let limit = |name: &str| -> f64 {
        limits
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .map_or(0.0, |soft| soft.parse::<f64>().unwrap_or(u64::MAX as f64))
    };
    let max_fds = limit("Max open files");
    let max_virtual = limit("Max address space");
    for (name, help, value) in [
        ("os_fd_limit", "The file descriptor limit.", max_fds),
        (
            "os_fd_used",
            "The number of used file descriptors.",
            open_fds as f64,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            open_fds as f64,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start_time,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            virtual_bytes,
        ),
        (
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            max_virtual,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
    );
    let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
    let _ = writeln!(out, "process_cpu_seconds_total {}", cpu / ticks);
    simple(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss_pages * 4096,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static H: Histogram = Histogram::new(&DISK_BUCKETS);
        H.observe(Duration::from_micros(500));
        H.observe(Duration::from_millis(3));
        H.observe(Duration::from_secs(20));
        let mut out = String::new();
        H.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn grpc_paths_map_to_methods() {
        assert_eq!(grpc_method("/etcdserverpb.KV/Range"), Some(0));
        assert_eq!(grpc_method("/nope/Range"), None);
    }
}
