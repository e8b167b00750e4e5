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

/// `member list` on `endpoint` shows m0, m1 and m2 started (each published its name),
/// and no one else.
fn expect_three_started_members(endpoint: &str) {
    let mut list = String::new();
    wait_until(
        "every member published its name",
        Duration::from_secs(30),
        || {
            list = etcdctl_ok(endpoint, &["member", "list"]);
            ["m0", "m1", "m2"]
                .iter()
                .all(|name| list.contains(&format!(", started, {name}, ")))
        },
    );
    assert_eq!(list.lines().count(), 3, "{list}");
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
        expect_three_started_members(&endpoint);
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

/// A discovery service on loopback: the subset of etcd's v2 keys API that etcd's
/// discovery protocol uses (discovery.etcd.io serves the same), for one cluster
/// directory: create-only PUT of a member, GET of the size key and of the directory, and
/// a waiting GET for the next change.
mod service {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    struct State {
        index: u64,
        /// (key, value, created index)
        nodes: Vec<(String, String, u64)>,
    }

    pub struct Service {
        pub url: String,
        state: Arc<(Mutex<State>, Condvar)>,
    }

    impl Service {
        /// A directory `/<token>` whose `_config/size` is `size`.
        pub fn start(token: &str, size: usize) -> Service {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}/{token}", listener.local_addr().expect("addr"));
            let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
            {
                let mut s = state.0.lock().unwrap();
                s.index = 1;
                s.nodes
                    .push((format!("/{token}/_config/size"), size.to_string(), 1));
            }
            let shared = Arc::clone(&state);
            let dir = format!("/{token}");
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let shared = Arc::clone(&shared);
                    let dir = dir.clone();
                    std::thread::spawn(move || serve(stream, &dir, &shared));
                }
            });
            Service { url, state }
        }

        /// The members registered so far.
        pub fn registered(&self) -> usize {
            let s = self.state.0.lock().unwrap();
            s.nodes
                .iter()
                .filter(|(k, _, _)| !k.contains("/_config/"))
                .count()
        }
    }

    fn node_json(key: &str, value: &str, index: u64) -> String {
        format!(
            "{{\"key\":{},\"value\":{},\"modifiedIndex\":{index},\"createdIndex\":{index}}}",
            serde_json::to_string(key).unwrap(),
            serde_json::to_string(value).unwrap()
        )
    }

    fn serve(stream: TcpStream, dir: &str, state: &(Mutex<State>, Condvar)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).is_err() || header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        let _ = reader.read_exact(&mut body);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        let (status, index, json) = {
            let (lock, changed) = state;
            let mut s = lock.lock().unwrap();
            if method == "PUT" && path.starts_with(&format!("{dir}/")) {
                let form = String::from_utf8_lossy(&body).to_string();
                let value = form
                    .strip_prefix("value=")
                    .map(unescape)
                    .unwrap_or_default();
                if s.nodes.iter().any(|(k, _, _)| k == path) {
                    (
                        412,
                        s.index,
                        "{\"errorCode\":105,\"message\":\"Key already exists\"}".to_string(),
                    )
                } else {
                    s.index += 1;
                    let index = s.index;
                    s.nodes.push((path.to_string(), value.clone(), index));
                    changed.notify_all();
                    (
                        201,
                        index,
                        format!(
                            "{{\"action\":\"create\",\"node\":{}}}",
                            node_json(path, &value, index)
                        ),
                    )
                }
            } else if method == "GET" && param("wait").as_deref() == Some("true") {
                let from: u64 = param("waitIndex").and_then(|v| v.parse().ok()).unwrap_or(0);
                loop {
                    if let Some((k, v, i)) = s.nodes.iter().find(|(_, _, i)| *i >= from) {
                        break (
                            200,
                            s.index,
                            format!("{{\"action\":\"create\",\"node\":{}}}", node_json(k, v, *i)),
                        );
                    }
                    s = changed.wait(s).unwrap();
                }
            } else if method == "GET" && path == dir {
                let nodes: Vec<String> = s
                    .nodes
                    .iter()
                    .filter(|(k, _, _)| !k.contains("/_config/"))
                    .map(|(k, v, i)| node_json(k, v, *i))
                    .chain([format!("{{\"key\":\"{dir}/_config\",\"dir\":true,\"modifiedIndex\":1,\"createdIndex\":1}}")])
                    .collect();
                (200, s.index, format!("{{\"action\":\"get\",\"node\":{{\"key\":\"{dir}\",\"dir\":true,\"nodes\":[{}]}}}}", nodes.join(",")))
            } else if method == "GET" {
                match s.nodes.iter().find(|(k, _, _)| k == path) {
                    Some((k, v, i)) => (
                        200,
                        s.index,
                        format!("{{\"action\":\"get\",\"node\":{}}}", node_json(k, v, *i)),
                    ),
                    None => (
                        404,
                        s.index,
                        "{\"errorCode\":100,\"message\":\"Key not found\"}".to_string(),
                    ),
                }
            } else {
                (405, s.index, "{}".to_string())
            }
        };
        let reason = match status {
            200 => "OK",
            201 => "Created",
            404 => "Not Found",
            412 => "Precondition Failed",
            _ => "Method Not Allowed",
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nX-Etcd-Index: {index}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
    }

    fn unescape(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                other => out.push(other),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Three members of etcd 3.4, and then three of rivet, started with `--discovery <url>` of
/// a discovery service on loopback and no `--initial-cluster`, register, wait for each
/// other and form one cluster; a fourth member finds the cluster full and stops (with
/// `--discovery-fallback exit`); a restarted member comes back from its WAL without asking
/// the service again.
#[test]
fn members_bootstrap_through_a_discovery_url() {
    for etcd in [true, false] {
        let service = service::Service::start(if etcd { "etcd-token" } else { "rivet-token" }, 3);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut members = members(dir.path(), 4);
        for member in &mut members {
            member.etcd = etcd;
            if etcd {
                member.peer = free_port();
            }
        }
        let extra = [
            "--discovery",
            service.url.as_str(),
            "--discovery-fallback",
            "exit",
        ];
        for member in members.iter_mut().take(3) {
            member.start("", "new", &extra);
        }
        let mut fourth = members.pop().expect("fourth");
        let mut cluster = Cluster { members, dir };
        let leader = cluster.wait_for_leader(None);
        let endpoint = cluster.members[leader].endpoint();
        etcdctl_ok(&endpoint, &["put", "found", "by-discovery"]);
        expect_three_started_members(&endpoint);
        assert_eq!(service.registered(), 3);

        fourth.start("", "new", &extra);
        wait_until("the fourth member stops", Duration::from_secs(60), || {
            fourth.exited()
        });
        let log = fourth.log_text();
        assert!(log.contains("discovery: cluster is full"), "{log}");

        // A member that finds the cluster full does not register.
        let registered = service.registered();
        assert_eq!(registered, 3, "etcd: {etcd}");
        cluster.members[1].kill9();
        cluster.members[1].start("", "new", &extra);
        cluster.wait_converged();
        assert_eq!(
            service.registered(),
            registered,
            "a restarted member registered again"
        );
        let survivor = cluster.members[1].endpoint();
        assert_eq!(
            etcdctl_ok(&survivor, &["get", "found", "--print-value-only"]),
            "by-discovery\n"
        );
    }
}
