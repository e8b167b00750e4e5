//! TLS as etcd deploys it, checked against a real etcd 3.4 started with the same flags
//! and the same certificates (made by the test, `common::tls`): etcdctl transcripts over
//! https with client certificates, the refusals (no certificate, another CA, revoked,
//! wrong hostname), auto TLS, the metrics listener over https; and a rivet cluster whose
//! peers authenticate each other, which refuses an impostor holding another CA's
//! certificate and takes back a member restarted with a renewed certificate.

mod common;

use std::time::Duration;

use common::cluster::{wait_until, Cluster, Member};
use common::tls::{https_get, Pair, Pki};
use common::{
    etcdctl, etcdctl_for, free_port, free_udp_port, mask_number_after, seen, Etcd, Rivet, Seen,
};

/// The client-side flags of a kubeadm-style member: certificate, CA, client certificate
/// auth with a CRL and an allowed hostname, and an https metrics listener.
fn as_str(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn server_flags(pki: &Pki, metrics_port: u16) -> Vec<String> {
    vec![
        "--cert-file".into(),
        pki.server.cert(),
        "--key-file".into(),
        pki.server.key(),
        "--trusted-ca-file".into(),
        pki.ca(),
        "--client-cert-auth".into(),
        "--client-crl-file".into(),
        pki.crl.display().to_string(),
        "--client-cert-allowed-hostname".into(),
        "localhost".into(),
        "--listen-metrics-urls".into(),
        format!("https://127.0.0.1:{metrics_port}"),
    ]
}

/// One etcd and one rivet with the same TLS flags.
struct Servers {
    pki: Pki,
    etcd: Etcd,
    etcd_metrics: u16,
    rivet: Rivet,
    rivet_metrics: u16,
}

impl Servers {
    fn start() -> Servers {
        let pki = Pki::new();
        let (etcd_metrics, rivet_metrics) = (free_port(), free_port());
        let etcd_flags = server_flags(&pki, etcd_metrics);
        let rivet_flags = server_flags(&pki, rivet_metrics);
        Servers {
            etcd: Etcd::start_secure(&as_str(&etcd_flags)),
            rivet: Rivet::start_secure(&as_str(&rivet_flags)),
            pki,
            etcd_metrics,
            rivet_metrics,
        }
    }

    /// Runs etcdctl with `pair`'s certificate on both https endpoints.
    fn both(&self, pair: Option<&Pair>, args: &[&str]) -> (Seen, Seen) {
        let flags = self.pki.etcdctl_flags(pair);
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(args);
        (
            seen(etcdctl(&self.etcd.tls_url(), &all, None)),
            seen(etcdctl(&self.rivet.tls_url(), &all, None)),
        )
    }

    /// Like [`Servers::both`]; rivet's output must equal etcd's.
    fn same(&self, pair: Option<&Pair>, args: &[&str]) -> Seen {
        let (etcd, rivet) = self.both(pair, args);
        assert_eq!(
            rivet, etcd,
            "etcdctl {args:?}: rivet (left) differs from etcd (right)"
        );
        etcd
    }
}

/// The lease ID in `lease grant` output (`lease 694d… granted with TTL(60s)`).
fn lease_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease ID in {stdout:?}"))
        .to_string()
}

#[test]
fn etcdctl_over_tls_matches_etcd() {
    let servers = Servers::start();
    let client = Some(&servers.pki.client);
    for args in [
        &["put", "a", "1"][..],
        &["put", "a", "2", "--prev-kv"],
        &["get", "a"],
        &["get", "a", "-w", "json"],
        &["put", "b", "x"],
        &["get", "", "--prefix", "--keys-only"],
        &["del", "b"],
        &["txn"],
    ] {
        let seen = servers.same(client, args);
        assert!(seen.success || args == ["txn"], "{args:?}: {seen:?}");
    }
    // Watch: the history from revision 1, then the client gives up.
    let flags = servers.pki.etcdctl_flags(client);
    let mut watch: Vec<&str> = flags.iter().map(String::as_str).collect();
    watch.extend(["watch", "--prefix", "", "--rev", "1"]);
    let etcd_watch = etcdctl_for(&servers.etcd.tls_url(), &watch, 3);
    let rivet_watch = etcdctl_for(&servers.rivet.tls_url(), &watch, 3);
    assert_eq!(
        String::from_utf8_lossy(&rivet_watch.stdout),
        String::from_utf8_lossy(&etcd_watch.stdout),
        "watch over TLS: rivet (left) differs from etcd (right)"
    );
    assert!(String::from_utf8_lossy(&rivet_watch.stdout).contains("PUT\na\n1\n"));
    // Leases: IDs differ between servers; the transcripts agree once they are masked.
    let (etcd_grant, rivet_grant) = servers.both(client, &["lease", "grant", "60"]);
    assert!(etcd_grant.success && rivet_grant.success);
    let (etcd_lease, rivet_lease) = (lease_id(&etcd_grant.stdout), lease_id(&rivet_grant.stdout));
    assert_eq!(
        rivet_grant.stdout.replace(&rivet_lease, "ID"),
        etcd_grant.stdout.replace(&etcd_lease, "ID")
    );
    let flags = servers.pki.etcdctl_flags(client);
    let with = |url: &str, lease: &str, args: &[&str]| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(args);
        all.extend(["--lease", lease]);
        seen(etcdctl(url, &all, None))
    };
    assert_eq!(
        with(&servers.rivet.tls_url(), &rivet_lease, &["put", "l", "v"]),
        with(&servers.etcd.tls_url(), &etcd_lease, &["put", "l", "v"])
    );
    let (etcd_ttl, rivet_ttl) = (
        servers
            .both(client, &["lease", "timetolive", &etcd_lease])
            .0,
        servers
            .both(client, &["lease", "timetolive", &rivet_lease])
            .1,
    );
    let ttl_shape = |text: &str, id: &str| mask_number_after(&text.replace(id, "ID"), "remaining(");
    assert_eq!(
        ttl_shape(&rivet_ttl.stdout, &rivet_lease),
        ttl_shape(&etcd_ttl.stdout, &etcd_lease)
    );
    // Members: one, started, named default, advertising its https client URL.
    let (etcd_members, rivet_members) = servers.both(client, &["member", "list"]);
    let shape = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(", ").collect();
                assert_eq!(fields.len(), 6, "{line}");
                assert!(fields[4].starts_with("https://127.0.0.1:"), "{line}");
                format!("{} {} {}", fields[1], fields[2], fields[5])
            })
            .collect()
    };
    assert_eq!(shape(&rivet_members.stdout), shape(&etcd_members.stdout));
    assert_eq!(shape(&rivet_members.stdout), ["started default false"]);
}

/// The JSON log line's error and the `Error:` lines of a failed etcdctl run: what the
/// user sees, without timestamps and connection IDs.
fn refusal(output: &std::process::Output) -> (bool, Vec<String>) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines = Vec::new();
    for line in stderr.lines() {
        if line.starts_with("{\"level\":") {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            lines.push(format!("log error: {}", value["error"]));
        } else {
            lines.push(line.to_string());
        }
    }
    (output.status.success(), lines)
}

#[test]
fn refusals_match_etcd() {
    let servers = Servers::start();
    let cases: [(&str, Option<&Pair>); 4] = [
        ("no client certificate", None),
        (
            "a certificate from another CA",
            Some(&servers.pki.other_client),
        ),
        ("a revoked certificate", Some(&servers.pki.revoked)),
        (
            "a certificate for another host",
            Some(&servers.pki.wrong_host),
        ),
    ];
    for (case, pair) in cases {
        let flags = servers.pki.etcdctl_flags(pair);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend([
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
            "put",
            "refused",
            "v",
        ]);
        let etcd = refusal(&etcdctl(&servers.etcd.tls_url(), &args, None));
        let rivet = refusal(&etcdctl(&servers.rivet.tls_url(), &args, None));
        assert!(!etcd.0, "{case}: etcd accepted it");
        assert_eq!(
            rivet, etcd,
            "{case}: rivet (left) differs from etcd (right)"
        );
    }
    // Nothing was written; the good certificate still works.
    let seen = servers.same(Some(&servers.pki.client), &["get", "refused"]);
    assert!(seen.success && seen.stdout.is_empty(), "{seen:?}");
    let log = servers.rivet.log_text();
    for reason in [
        "peer sent no certificates",
        "UnknownIssuer",
        "revoked",
        "allowed hostname",
    ] {
        assert!(
            log.contains("rejected connection from") && log.contains(reason),
            "rivet's log does not say why ({reason}):\n{log}"
        );
    }
}

#[test]
fn metrics_listener_over_https_matches_etcd() {
    let servers = Servers::start();
    let pki = &servers.pki;
    let client = Some(&pki.client);
    for (name, port) in [
        ("etcd", servers.etcd_metrics),
        ("rivet", servers.rivet_metrics),
    ] {
        let health = https_get(pki, port, "/health", client).expect(name);
        assert!(
            health.starts_with("HTTP/1.1 200") && health.contains("{\"health\":\"true\"}"),
            "{name}: {health}"
        );
        let metrics = https_get(pki, port, "/metrics", client).expect(name);
        assert!(
            metrics.contains("etcd_server_has_leader 1"),
            "{name}: {metrics}"
        );
        let version = https_get(pki, port, "/version", client).expect(name);
        assert!(version.starts_with("HTTP/1.1 404"), "{name}: {version}");
        assert!(
            https_get(pki, port, "/health", None).is_err(),
            "{name}: a client without a certificate was served"
        );
    }
    // The https client port serves HTTP beside gRPC: /version and /health there too.
    for (name, port) in [
        ("etcd", servers.etcd.tls_port),
        ("rivet", servers.rivet.tls_port),
    ] {
        let version = https_get(pki, port, "/version", client).expect(name);
        assert!(
            version.starts_with("HTTP/1.1 200") && version.contains("\"etcdserver\":\"3.4.23\""),
            "{name}: {version}"
        );
        let health = https_get(pki, port, "/health", client).expect(name);
        assert!(health.contains("{\"health\":\"true\"}"), "{name}: {health}");
    }
}

#[test]
fn auto_tls_serves_clients_that_skip_verification() {
    let etcd = Etcd::start_secure(&["--auto-tls"]);
    let rivet = Rivet::start_secure(&["--auto-tls"]);
    let both = |args: &[&str]| {
        (
            seen(etcdctl(&etcd.tls_url(), args, None)),
            seen(etcdctl(&rivet.tls_url(), args, None)),
        )
    };
    for args in [
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            "put",
            "k",
            "v",
        ][..],
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            "get",
            "k",
        ],
    ] {
        let (etcd, rivet) = both(args);
        assert!(etcd.success, "{args:?}: {etcd:?}");
        assert_eq!(rivet, etcd, "{args:?}");
    }
    // Without skipping verification, the self-signed certificate is refused by both.
    let refused = [
        "--insecure-transport=false",
        "--dial-timeout",
        "1s",
        "--command-timeout",
        "2s",
        "get",
        "k",
    ];
    let etcd_refusal = refusal(&etcdctl(&etcd.tls_url(), &refused, None));
    let rivet_refusal = refusal(&etcdctl(&rivet.tls_url(), &refused, None));
    assert!(!etcd_refusal.0);
    assert_eq!(rivet_refusal, etcd_refusal);
    // Written where etcd writes its own, and reused at the next start.
    let fixtures = rivet.data_dir.join("fixtures").join("client");
    assert!(fixtures.join("cert.pem").exists() && fixtures.join("key.pem").exists());
    assert!(etcd.data_dir.join("fixtures/client/cert.pem").exists());
}

/// Peer flags of a member holding `pair`, trusting `ca`, with client certificate auth.
fn peer_flags(pair: &Pair, ca: &std::path::Path) -> Vec<String> {
    vec![
        "--peer-cert-file".into(),
        pair.cert(),
        "--peer-key-file".into(),
        pair.key(),
        "--peer-trusted-ca-file".into(),
        ca.display().to_string(),
        "--peer-client-cert-auth".into(),
    ]
}

#[test]
fn peers_authenticate_each_other() {
    let pki = Pki::new();
    let flags = peer_flags(&pki.server, &pki.ca);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_https_peers(3, &flags);
    let first = cluster.members[0].endpoint();
    assert!(etcdctl(&first, &["put", "k", "1"], None).status.success());
    cluster.wait_converged();
    for member in &cluster.members {
        assert!(
            member
                .log_text()
                .contains("peers authenticated by their certificates"),
            "{}",
            member.log_text()
        );
    }

    // An impostor: it claims to be m1 (same name and advertised peer URL, so the same
    // member and cluster IDs), trusts the cluster's CA, but holds another CA's
    // certificate. Every member refuses it in the TLS handshake.
    let initial = Cluster::initial(&cluster.members);
    let mut impostor = Member {
        name: "m1".into(),
        client: free_port(),
        peer: free_udp_port(),
        dir: cluster.dir.path().join("impostor.rivet"),
        child: None,
        etcd: false,
        peer_scheme: "https",
    };
    let impostor_flags = peer_flags(&pki.other_server, &pki.ca);
    let real_m1 = cluster.members[1].peer_url();
    let mut impostor_args: Vec<&str> = impostor_flags.iter().map(String::as_str).collect();
    impostor_args.extend(["--initial-advertise-peer-urls", &real_m1]);
    impostor.start(&initial, "new", &impostor_args);
    wait_until(
        "a member refuses the impostor's certificate",
        Duration::from_secs(30),
        || {
            cluster.members.iter().any(|m| {
                m.log_text()
                    .contains("refusing the peer connection: its certificate was rejected")
            })
        },
    );
    // The cluster goes on, undisturbed: writes commit and every member converges.
    for i in 0..5 {
        assert!(etcdctl(&first, &["put", &format!("after/{i}"), "v"], None)
            .status
            .success());
    }
    cluster.wait_converged();
    let list = etcdctl(&first, &["member", "list"], None);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3);
    drop(impostor);

    // m1 restarts with a renewed certificate of the same CA and catches up.
    cluster.members[1].kill9();
    // m1 may have led: the write waits for the next leader.
    wait_until(
        "a write commits without m1",
        Duration::from_secs(30),
        || common::cluster::put_ok(&first, "while-down", "1"),
    );
    let renewed = peer_flags(&pki.server_renewed, &pki.ca);
    let renewed: Vec<&str> = renewed.iter().map(String::as_str).collect();
    cluster.members[1].start(&initial, "new", &renewed);
    let m1 = cluster.members[1].endpoint();
    wait_until(
        "m1 serves the write it missed",
        Duration::from_secs(30),
        || {
            let out = etcdctl(&m1, &["get", "while-down", "--print-value-only"], None);
            String::from_utf8_lossy(&out.stdout).trim() == "1"
        },
    );
    cluster.wait_converged();
}
