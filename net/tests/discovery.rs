//! Bootstrapping a cluster through discovery instead of `--initial-cluster`: DNS SRV
//! records (`--discovery-srv`, answered by a DNS server the test runs on loopback; no
//! query leaves the machine).
//!
//! etcd 3.4 cannot be pointed at a DNS server of the test's (it uses the system's
//! resolver), so these tests check rivet alone against etcd's documented behaviour.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{wait_until, Cluster, Member};
use common::dns::{DnsServer, Record};
use common::{etcdctl_ok, free_port, free_udp_port, run_to_exit, Rivet};

fn members(dir: &std::path::Path, count: usize) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            name: format!("m{i}"),
            client: free_port(),
            peer: free_udp_port(),
            dir: dir.join(format!("m{i}.rivet")),
            child: None,
            etcd: false,
            peer_scheme: "http",
        })
        .collect()
}

/// Three members started with `--discovery-srv example.test` and no `--initial-cluster`
/// find each other through `_etcd-server._tcp.example.test` and form one cluster; the
/// `_etcd-server-ssl` lookup finds nothing, which is not an error while the other has
/// records. With `--discovery-srv-name`, the suffixed records are used.
#[test]
fn members_bootstrap_from_dns_srv_records() {
    for service_name in ["", "blue"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut members = members(dir.path(), 3);
        let suffix = if service_name.is_empty() {
            String::new()
        } else {
            format!("-{service_name}")
        };
        let mut records: Vec<(String, Record)> = members
            .iter()
            .map(|m| {
                (
                    format!("_etcd-server{suffix}._tcp.example.test"),
                    Record::Srv {
                        priority: 0,
                        weight: 10,
                        port: m.peer,
                        target: "127.0.0.1".into(),
                    },
                )
            })
            .collect();
        // A decoy for the other service name: never used.
        records.push((
            "_etcd-server-other._tcp.example.test".into(),
            Record::A(Ipv4Addr::LOCALHOST),
        ));
        let dns = DnsServer::start(records);
        std::env::set_var("RIVET_TEST_DNS_SERVER", dns.address.to_string());
        let mut extra = vec!["--discovery-srv", "example.test"];
        if !service_name.is_empty() {
            extra.extend(["--discovery-srv-name", service_name]);
        }
        for member in &mut members {
            member.start("", "new", &extra);
        }
        let cluster = Cluster { members, dir };
        let leader = cluster.wait_for_leader(None);
        let endpoint = cluster.members[leader].endpoint();
        etcdctl_ok(&endpoint, &["put", "found", "by-dns"]);
        let mut list = String::new();
        wait_until(
            "every member published its name",
            Duration::from_secs(30),
            || {
                list = etcdctl_ok(&endpoint, &["member", "list"]);
                ["m0", "m1", "m2"]
                    .iter()
                    .all(|name| list.contains(&format!(", started, {name}, ")))
            },
        );
        assert_eq!(list.lines().count(), 3, "{list}");
        cluster.wait_converged();
        let log = cluster.members[0].log_text();
        assert!(
            log.contains("resolved the initial cluster from DNS SRV records"),
            "{log}"
        );
    }
}

/// No SRV record under either service: the member stops with etcd's error.
#[test]
fn a_domain_without_records_stops_the_member() {
    let dns = DnsServer::start(Vec::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let peer = format!("http://127.0.0.1:{}", free_udp_port());
    let client = format!("http://127.0.0.1:{}", free_port());
    let exited = run_to_exit(
        Rivet::binary(),
        &[
            "--discovery-srv",
            "nowhere.test",
            "--initial-advertise-peer-urls",
            &peer,
            "--listen-peer-urls",
            &peer,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--pin-cores=false",
        ],
        &[("RIVET_TEST_DNS_SERVER", &dns.address.to_string())],
        dir.path(),
    );
    assert_eq!(exited.code, Some(1), "{exited:?}");
    assert!(
        exited
            .stderr
            .contains("srv: too many errors querying DNS SRV records"),
        "{exited:?}"
    );
}
