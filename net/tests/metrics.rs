//! `/metrics` as etcd 3.4 exports it, so that dashboards and alert rules written for etcd
//! work unchanged. The same workload runs on a 3-member etcd 3.4 cluster and a 3-member
//! rivet cluster (both with `--metrics extensive`); then every metric family etcd's leader
//! exports must be exported by rivet's leader with the same type, the same label names and
//! the same histogram buckets — unless it is listed in [`NOT_IN_RIVET`] with the reason it
//! cannot apply — and every family rivet exports under an etcd or gRPC name must be one of
//! etcd's. Last, every series etcd's documented alert rules and Grafana dashboard
//! (etcd 3.4's `Documentation/op-guide/etcd3_alert.rules.yml` and `grafana.json`) select
//! exists on rivet.
//!
//! Without `etcd` on PATH the test fails (CI installs it); it never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{wait_until, Cluster};
use common::{etcdctl, etcdctl_for, etcdctl_ok};

/// etcd families that describe parts rivet does not have, and why.
const NOT_IN_RIVET: &[(&str, &str)] = &[
    ("go_", "Go runtime statistics (rivet is not a Go program)"),
    (
        "etcd_server_go_version",
        "the Go version etcd was built with",
    ),
    (
        "etcd_debugging_store_",
        "the v2 store (rivet serves the v3 API only)",
    ),
    (
        "etcd_grpc_proxy_",
        "the `etcd grpc-proxy` subcommand's cache and coalescing",
    ),
    (
        "etcd_debugging_disk_backend_commit_",
        "bbolt's rebalance/spill/write phases (rivet's page files have none)",
    ),
    (
        "etcd_mvcc_db_open_read_transactions",
        "bbolt read transactions (rivet's readers hold no transaction)",
    ),
    (
        "etcd_debugging_snap_save_",
        "etcd's raft snapshot files (member/snap/*.snap); rivet's checkpoint is a WAL marker",
    ),
    (
        "etcd_snap_fsync_duration_seconds",
        "fsync of etcd's raft snapshot files, which rivet does not write",
    ),
];

/// Families rivet exports from the start that etcd shows only after their first event
/// (a Go `CounterVec` has no series until a label value is used).
const AFTER_FIRST_EVENT_IN_ETCD: &[&str] = &[
    "etcd_network_peer_sent_failures_total",
    "etcd_network_peer_received_failures_total",
    "etcd_network_disconnected_peers_total",
    "etcd_network_snapshot_send_success",
    "etcd_network_snapshot_send_failures",
    "etcd_network_snapshot_send_total_duration_seconds",
    "etcd_network_snapshot_receive_success",
    "etcd_network_snapshot_receive_failures",
    "etcd_network_snapshot_receive_total_duration_seconds",
];

/// The series etcd 3.4's alert rules and sample Grafana dashboard select (metric name and
/// label matchers), besides `up`, which Prometheus itself makes. The v2 HTTP API's
/// `etcd_http_*` series those rules also name exist in neither etcd 3.4 without v2
/// traffic nor rivet (no v2 API).
const DASHBOARD_SERIES: &[(&str, &[(&str, &str)])] = &[
    ("etcd_network_peer_sent_failures_total", &[]),
    ("etcd_server_has_leader", &[]),
    ("etcd_server_leader_changes_seen_total", &[]),
    ("grpc_server_handled_total", &[("grpc_code", "OK")]),
    ("grpc_server_handled_total", &[("grpc_type", "unary")]),
    (
        "grpc_server_handling_seconds_bucket",
        &[("grpc_type", "unary")],
    ),
    ("etcd_network_peer_round_trip_time_seconds_bucket", &[]),
    ("etcd_server_proposals_failed_total", &[]),
    ("etcd_disk_wal_fsync_duration_seconds_bucket", &[]),
    ("etcd_disk_backend_commit_duration_seconds_bucket", &[]),
    ("grpc_server_started_total", &[("grpc_type", "unary")]),
    (
        "grpc_server_started_total",
        &[
            ("grpc_service", "etcdserverpb.Watch"),
            ("grpc_type", "bidi_stream"),
        ],
    ),
    (
        "grpc_server_handled_total",
        &[
            ("grpc_service", "etcdserverpb.Watch"),
            ("grpc_type", "bidi_stream"),
        ],
    ),
    (
        "grpc_server_started_total",
        &[
            ("grpc_service", "etcdserverpb.Lease"),
            ("grpc_type", "bidi_stream"),
        ],
    ),
    (
        "grpc_server_handled_total",
        &[
            ("grpc_service", "etcdserverpb.Lease"),
            ("grpc_type", "bidi_stream"),
        ],
    ),
    ("etcd_debugging_mvcc_db_total_size_in_bytes", &[]),
    ("process_resident_memory_bytes", &[]),
    ("etcd_network_client_grpc_received_bytes_total", &[]),
    ("etcd_network_client_grpc_sent_bytes_total", &[]),
    ("etcd_network_peer_received_bytes_total", &[]),
    ("etcd_network_peer_sent_bytes_total", &[]),
    ("etcd_server_proposals_pending", &[]),
    ("etcd_server_proposals_committed_total", &[]),
    ("etcd_server_proposals_applied_total", &[]),
    ("etcd_mvcc_db_total_size_in_bytes", &[]),
    ("etcd_server_quota_backend_bytes", &[]),
];

#[derive(Debug, Default, PartialEq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    buckets: Vec<f64>,
}

/// One sample line: its series name and labels.
fn sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let head = line.rsplit_once(' ')?.0;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (head, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once("=\""))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
        .collect();
    Some((name.to_string(), labels))
}

/// The families of a Prometheus text exposition.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                out.entry(name.to_string()).or_default().kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, labels)) = sample(line) else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| out.get(*base).is_some_and(|f| f.kind == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        let entry = out.entry(family).or_default();
        for (key, value) in labels {
            if key == "le" {
                if value != "+Inf" {
                    let bound: f64 = value.parse().expect("bucket bound");
                    if !entry.buckets.contains(&bound) {
                        entry.buckets.push(bound);
                    }
                }
            } else {
                entry.labels.insert(key);
            }
        }
    }
    out
}

/// The same workload for both: keys, a txn, a delete, a lease kept alive and revoked, a
/// watch, a compaction, hashes, health checks.
fn workload(endpoint: &str) {
    for i in 0..20 {
        etcdctl_ok(endpoint, &["put", &format!("k{i}"), "value"]);
    }
    etcdctl_ok(endpoint, &["get", "k", "--prefix"]);
    let txn = etcdctl(
        endpoint,
        &["txn"],
        Some("value(\"k1\") = \"value\"\n\nput k1 other\nget k2\n\n\n"),
    );
    assert!(txn.status.success(), "txn");
    etcdctl_ok(endpoint, &["del", "k3"]);
    let granted = etcdctl_ok(endpoint, &["lease", "grant", "60"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl_ok(endpoint, &["put", "leased", "v", "--lease", &lease]);
    etcdctl_ok(endpoint, &["lease", "keep-alive", "--once", &lease]);
    etcdctl_ok(endpoint, &["lease", "revoke", &lease]);
    let _ = etcdctl_for(endpoint, &["watch", "k", "--prefix", "--rev", "1"], 2);
    etcdctl_ok(endpoint, &["compaction", "5"]);
    etcdctl_ok(endpoint, &["endpoint", "hashkv"]);
    etcdctl_ok(endpoint, &["endpoint", "health"]);
    let _ = http_get(endpoint, "/health");
}

/// `GET path` as HTTP/1.0, so that the body comes whole (Go chunks HTTP/1.1 bodies).
fn http_get(endpoint: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_string()))
}

fn leader_metrics(cluster: &Cluster) -> String {
    let leader = cluster.wait_for_leader(None);
    let endpoint = cluster.members[leader].endpoint();
    workload(&endpoint);
    // The peers' round-trip histograms fill as the links run.
    let mut text = String::new();
    wait_until(
        "the leader has a round-trip sample of a peer",
        Duration::from_secs(30),
        || {
            text = http_get(&endpoint, "/metrics").unwrap_or_default();
            text.lines().any(|l| {
                l.starts_with("etcd_network_peer_round_trip_time_seconds_count")
                    && !l.ends_with(" 0")
            })
        },
    );
    text
}

fn not_in_rivet(name: &str) -> bool {
    NOT_IN_RIVET
        .iter()
        .any(|(prefix, _)| name.starts_with(prefix))
}

#[test]
fn metrics_match_etcds_families_and_feed_its_dashboards() {
    let flags = ["--metrics", "extensive"];
    let etcd = leader_metrics(&Cluster::start_etcd(3, &flags));
    let rivet_text = leader_metrics(&Cluster::start(3, &flags));
    let etcd = families(&etcd);
    let rivet = families(&rivet_text);

    let mut problems = Vec::new();
    for (name, theirs) in &etcd {
        if not_in_rivet(name) {
            continue;
        }
        match rivet.get(name) {
            None => problems.push(format!("missing: {name} ({})", theirs.kind)),
            Some(ours) if ours != theirs => {
                problems.push(format!("differs: {name}: etcd {theirs:?}, rivet {ours:?}"))
            }
            Some(_) => {}
        }
    }
    for name in rivet.keys() {
        let etcd_named = name.starts_with("etcd_") || name.starts_with("grpc_");
        if etcd_named
            && !etcd.contains_key(name)
            && !AFTER_FIRST_EVENT_IN_ETCD.contains(&name.as_str())
        {
            problems.push(format!("not an etcd 3.4 metric: {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    for (series, matchers) in DASHBOARD_SERIES {
        let found = rivet_text.lines().filter_map(sample).any(|(name, labels)| {
            name == *series
                && matchers
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        });
        assert!(
            found,
            "no series {series}{matchers:?} for etcd's alerts/dashboard:\n{rivet_text}"
        );
    }
    assert!(
        rivet_text.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\""),
        "a Put counted as handled:\n{rivet_text}"
    );
    // The counters moved with the workload.
    for (name, at_least) in [
        ("etcd_mvcc_put_total", 21.0),
        ("etcd_mvcc_range_total", 1.0),
        ("etcd_mvcc_txn_total", 1.0),
        ("etcd_debugging_lease_granted_total", 1.0),
        ("etcd_network_client_grpc_received_bytes_total", 100.0),
        ("etcd_server_health_success", 1.0),
    ] {
        let value: f64 = rivet_text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no value:\n{rivet_text}"));
        assert!(
            value >= at_least,
            "{name} is {value}, expected ≥ {at_least}"
        );
    }
}
