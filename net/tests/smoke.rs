//! The first things a newcomer does: start a member, put and get with etcdctl and with
//! the `etcd-client` crate, check /health, /version and /metrics.

mod common;

use common::{etcdctl_ok, http_get, runtime, Rivet};

#[test]
fn etcdctl_put_get_and_http_endpoints() {
    let rivet = Rivet::start(&[]);
    let endpoint = rivet.endpoint();
    assert_eq!(etcdctl_ok(&endpoint, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(etcdctl_ok(&endpoint, &["get", "foo"]), "foo\nbar\n");
    let health = http_get(&endpoint, "/health").expect("GET /health");
    assert!(health.ends_with("{\"health\":\"true\"}"), "{health}");
    let version = http_get(&endpoint, "/version").expect("GET /version");
    assert!(
        version.ends_with("{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}"),
        "{version}"
    );
}

#[test]
fn etcd_client_crate_round_trip() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut client = etcd_client::Client::connect([rivet.url()], None)
            .await
            .expect("connect");
        let put = client.put("k", "v", None).await.expect("put");
        assert_eq!(put.header().expect("header").revision(), 2);
        let get = client.get("k", None).await.expect("get");
        assert_eq!(get.kvs()[0].value(), b"v");
        assert_eq!(get.kvs()[0].create_revision(), 2);
        let counted = client
            .get(
                "",
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
            .expect("count");
        assert_eq!(counted.count(), 1);
        assert!(counted.kvs().is_empty());
    });
}

/// `GET path` as HTTP/1.0, so that the body comes whole (Go chunks HTTP/1.1 bodies).
fn http_get_whole(endpoint: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// `# TYPE name kind` lines of a Prometheus text exposition.
fn metric_types(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Dashboards and alerts written for etcd keep working: every metric rivet exports under
/// an etcd or gRPC name exists in etcd 3.4's `/metrics` with the same type, and the ones
/// operators watch most are there.
#[test]
fn metrics_carry_etcds_names_and_types() {
    let etcd = common::Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    for endpoint in [etcd.endpoint(), rivet.endpoint()] {
        etcdctl_ok(&endpoint, &["put", "k", "v"]);
        etcdctl_ok(&endpoint, &["get", "k"]);
    }
    let etcd_types = metric_types(&http_get_whole(&etcd.endpoint(), "/metrics"));
    let rivet_text = http_get_whole(&rivet.endpoint(), "/metrics");
    let rivet_types = metric_types(&rivet_text);
    for (name, kind) in &rivet_types {
        if name.starts_with("etcd_") || name.starts_with("grpc_") {
            assert_eq!(
                etcd_types.get(name),
                Some(kind),
                "rivet exports {name} as {kind}; etcd 3.4 does not"
            );
        }
    }
    for name in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_failed_total",
        "etcd_server_heartbeat_send_failures_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "grpc_server_handled_total",
    ] {
        assert!(rivet_types.contains_key(name), "rivet lacks {name}");
    }
    assert!(
        rivet_text.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\""),
        "a Put counted as handled:\n{rivet_text}"
    );
}
