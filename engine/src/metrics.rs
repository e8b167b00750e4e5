//! Prometheus metrics with etcd's names, so existing dashboards and alert rules work
//! (ETCD_LESSONS 42). Lock-free: counters and histogram buckets are relaxed atomics in one
//! static registry; gauges that describe storage are read on demand by the endpoint
//! (lesson 13), never stored by a writer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed upper bounds in seconds (etcd's exponential buckets).
pub struct Histogram {
    bounds: &'static [f64],
    counts: [AtomicU64; 16],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// etcd's buckets for disk latencies: 1 ms × 2^k, k = 0..13.
pub const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; 16],
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
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
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
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
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
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

/// `process_resident_memory_bytes` and `process_cpu_seconds_total`, from /proc.
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
