//! The ways out of and into rivet (issue 14), differential against a real etcd 3.4:
//!
//! - out: rivet → `etcdctl snapshot save` (Maintenance.Snapshot) → `etcdctl snapshot
//!   restore` → etcd 3.4 serves every key, every retained version and every lease as
//!   rivet did; a `kill -9` in the middle of the stream loses nothing.
//! - in: etcd 3.4 → `etcdctl snapshot save` → `rivetctl snapshot restore` (its library
//!   function) → rivet serves every key, every retained version and every lease as etcd
//!   did, at etcd's revision, and goes on from there; etcd's users and roles come along.
//! - in, without a snapshot: rivet started on a stopped (killed) etcd 3.4 member's data
//!   dir imports etcd's backend and the WAL entries after its consistent index into its
//!   own files beside etcd's (which stay byte for byte as they were), serves what etcd
//!   served, at every retained revision; a kill -9 in the middle of the import is
//!   redone at the next start, and later starts do not import again.

mod common;

use std::path::Path;

use common::history::{etcdctl_offline, make_history, require_etcd, served_versions, EtcdHistory};
use common::{etcdctl_ok, runtime, Etcd, Rivet};
use etcd_client::{Client, Compare, CompareOp, LeaseTimeToLiveOptions, Txn, TxnOp};
use rivet_engine::etcd_backend::schema::KeyVersion;

async fn leases(client: &mut Client) -> Vec<(i64, i64)> {
    let mut leases = Vec::new();
    for lease in client.leases().await.expect("leases").leases() {
        let ttl = client
            .lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new()))
            .await
            .expect("ttl");
        leases.push((lease.id(), ttl.granted_ttl()));
    }
    leases.sort();
    leases
}

fn snapshot_status_json(path: &Path) -> serde_json::Value {
    let output = etcdctl_offline(&[
        "snapshot",
        "status",
        "-w",
        "json",
        &path.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "etcdctl snapshot status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

#[test]
fn etcd_serves_what_rivet_served_after_a_snapshot_round_trip() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    // Several shards: the snapshot merges their versions by revision.
    let rivet = Rivet::start(&["--shards", "3"]);
    let endpoint = rivet.endpoint();
    let history = runtime().block_on(make_history(&format!("http://{endpoint}")));
    let rivet_leases = runtime().block_on(async {
        let mut client = Client::connect([format!("http://{endpoint}")], None)
            .await
            .expect("connect");
        leases(&mut client).await
    });
    assert_eq!(rivet_leases, history.leases);

    let snapshot = dir.path().join("rivet.snapshot");
    etcdctl_ok(
        &endpoint,
        &["snapshot", "save", &snapshot.display().to_string()],
    );
    let status = snapshot_status_json(&snapshot);
    assert_eq!(
        status["revision"].as_i64(),
        Some(history.current),
        "{status}"
    );

    let restored = dir.path().join("restored.etcd");
    let output = etcdctl_offline(&[
        "snapshot",
        "restore",
        &snapshot.display().to_string(),
        "--data-dir",
        &restored.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "etcdctl snapshot restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let etcd = Etcd::start_in(&restored, &[]);
    let etcd_endpoint = etcd.endpoint();
    runtime().block_on(async {
        let mut client = Client::connect([format!("http://{etcd_endpoint}")], None)
            .await
            .expect("connect to etcd");
        assert_serves_history(&mut client, &history, "etcd serves after the restore").await;
    });
}

#[test]
fn kill_9_during_a_snapshot_stream_loses_nothing() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().join("data.rivet");
    let mut rivet = Rivet::start_in_with_env(
        &data_dir,
        &["--shards", "2"],
        &[("RIVET_TEST_CRASH_AT", "snapshot-streaming")],
    );
    let endpoint = rivet.endpoint();
    let history = runtime().block_on(make_history(&format!("http://{endpoint}")));
    let files_before = files(&data_dir);
    let snapshot = dir.path().join("interrupted.snapshot");
    // etcdctl's client retries a broken stream against the endpoint for as long as its
    // context lasts (as it would against a dead etcd), so it is stopped once the member
    // is gone.
    let mut save = KillOnDrop(
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint, "snapshot", "save"])
            .arg(&snapshot)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run etcdctl"),
    );
    rivet.wait_exit(std::time::Duration::from_secs(60));
    let _ = save.0.kill();
    let status = save.0.wait().expect("etcdctl status");
    assert!(!status.success(), "the member should have died mid-stream");
    assert!(rivet.log_text().contains("snapshot-streaming"));
    rivet.set_env(&[]);
    rivet.restart();
    let endpoint = rivet.endpoint();
    runtime().block_on(async {
        let mut client = Client::connect([format!("http://{endpoint}")], None)
            .await
            .expect("connect");
        let served = served_versions(&mut client, history.compacted, history.current).await;
        // The events of one revision that spans shards come in shard order, which is
        // not kept across a restart (see the storage report).
        assert_same_changes(&served, &history.served, "served after the restart");
    });
    // A stream writes nothing into the data dir.
    let stray: Vec<String> = files(&data_dir)
        .into_iter()
        .filter(|f| !files_before.contains(f) && !f.ends_with(".page") && !f.ends_with(".wal"))
        .collect();
    assert!(stray.is_empty(), "files the stream left: {stray:?}");
    // And a snapshot works after the restart.
    etcdctl_ok(
        &endpoint,
        &[
            "snapshot",
            "save",
            &dir.path().join("after.snapshot").display().to_string(),
        ],
    );
}

#[test]
fn rivet_serves_what_etcd_served_after_rivetctl_snapshot_restore() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    let mut etcd = Etcd::start_in(&dir.path().join("data.etcd"), &[]);
    let endpoint = etcd.endpoint();
    let history = runtime().block_on(make_history(&format!("http://{endpoint}")));
    // Users and roles, auth off (so that the history reads need no token), at an auth
    // revision past etcd's first.
    for args in [
        &["user", "add", "alice:alicepw"][..],
        &["user", "add", "bob:bobpw"],
        &["user", "add", "root:rootpw"],
        &["role", "add", "root"],
        &["role", "add", "reader"],
        &["role", "add", "writer"],
        &["role", "grant-permission", "reader", "read", "a", "z"],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "wal/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "bob", "writer"],
        &["user", "grant-role", "root", "root"],
    ] {
        etcdctl_ok(&endpoint, args);
    }
    let etcd_auth = auth_transcript(&endpoint);
    let snapshot = dir.path().join("etcd.snapshot");
    etcdctl_ok(
        &endpoint,
        &["snapshot", "save", &snapshot.display().to_string()],
    );
    etcd.stop();

    // The new cluster: one member on its own peer URL, restored with etcdctl's flags.
    let peer = format!("http://127.0.0.1:{}", common::free_udp_port());
    let data_dir = dir.path().join("restored.rivet");
    let options = rivet_tools::snapshot::RestoreOptions {
        snapshot: snapshot.clone(),
        data_dir: Some(data_dir.clone()),
        name: "default".into(),
        initial_cluster: format!("default={peer}"),
        initial_advertise_peer_urls: peer.clone(),
        initial_cluster_token: "restored-token".into(),
        ..Default::default()
    };
    let summary =
        rivet_tools::snapshot::restore_data_dir(&options, 3).expect("rivetctl snapshot restore");
    assert_eq!(summary.revision, history.current);
    // A second restore into the same dir is refused, as etcdctl refuses it.
    let again = rivet_tools::snapshot::restore_data_dir(&options, 3).expect_err("exists");
    assert!(again.to_string().contains("exists"), "{again}");

    let cluster = format!("default={peer}");
    let rivet = Rivet::start_in(
        &data_dir,
        &[
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            "restored-token",
        ],
    );
    let rivet_endpoint = rivet.endpoint();
    runtime().block_on(async {
        let mut client = Client::connect([format!("http://{rivet_endpoint}")], None)
            .await
            .expect("connect to rivet");
        assert_serves_history(&mut client, &history, "served after the restore").await;
        // The store goes on from etcd's revision.
        let next = client
            .put("after-restore", "1", None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision();
        assert_eq!(next, history.current + 1);
        // The member is the new cluster's, with etcd's IDs for it.
        let members = client.member_list().await.expect("members");
        assert_eq!(members.members().len(), 1);
        assert_eq!(
            members.members()[0].peer_urls(),
            std::slice::from_ref(&peer)
        );
    });
    // etcd's users and roles came along, passwords included.
    assert_eq!(
        auth_transcript(&rivet_endpoint),
        etcd_auth,
        "users and roles"
    );
    etcdctl_ok(&rivet_endpoint, &["auth", "enable"]);
    assert_eq!(
        etcdctl_ok(
            &rivet_endpoint,
            &["--user", "alice:alicepw", "get", "a", "--print-value-only"]
        ),
        "1111\n"
    );
}

/// What a server serves at `revision`: every key with its revisions, version, lease and
/// value, and the header revision.
async fn range_at(
    client: &mut Client,
    revision: i64,
) -> (i64, Vec<(String, String, i64, i64, i64, i64)>) {
    let response = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_from_key()
                    .with_revision(revision),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("range at {revision}: {e}"));
    let header = response.header().expect("header").revision();
    let kvs = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (header, kvs)
}

/// etcdctl's answers about users and roles.
fn auth_transcript(endpoint: &str) -> Vec<String> {
    [
        vec!["user", "list"],
        vec!["role", "list"],
        vec!["user", "get", "alice"],
        vec!["user", "get", "root"],
        vec!["user", "get", "bob"],
        vec!["role", "get", "reader"],
        vec!["role", "get", "writer"],
    ]
    .iter()
    .map(|args| etcdctl_ok(endpoint, args))
    .collect()
}

/// Length and CRC-32C of every file under `dir`, by relative path.
fn hashes(dir: &Path) -> Vec<(String, usize, u32)> {
    files(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).expect("read");
            let crc = crc32c::crc32c(&bytes);
            (f, bytes.len(), crc)
        })
        .collect()
}

#[test]
fn rivet_started_on_an_etcd_data_dir_imports_it() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().join("data.etcd");

    // Phase 1, in etcd's backend: the history (revisions, deletes, a compaction, leases)
    // and users and roles; a graceful stop commits the backend.
    let mut etcd = Etcd::start_in(&data_dir, &[]);
    let endpoint = etcd.endpoint();
    let _history = runtime().block_on(make_history(&format!("http://{endpoint}")));
    etcdctl_ok(&endpoint, &["user", "add", "alice:alicepw"]);
    etcdctl_ok(&endpoint, &["role", "add", "reader"]);
    etcdctl_ok(
        &endpoint,
        &["role", "grant-permission", "reader", "read", "a", "z"],
    );
    etcdctl_ok(&endpoint, &["user", "grant-role", "alice", "reader"]);
    etcd.stop();

    // Phase 2, only in etcd's WAL: a backend that commits once an hour, then kill -9.
    // (A compaction force-commits etcd's backend: it comes first.)
    let mut etcd = Etcd::start_in(&data_dir, &["--backend-batch-interval", "1h"]);
    let endpoint = etcd.endpoint();
    let url = format!("http://{endpoint}");
    let compacted = runtime().block_on(async {
        let mut client = Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        let compacted = client
            .put("wal/first", "1", None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision();
        client
            .compact(
                compacted,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("compact");
        compacted
    });
    // Users, roles and auth through the WAL too (etcd's AuthEnable commits the backend:
    // it comes before the rest): auth on, changes and writes as root and alice, auth off.
    etcdctl_ok(&endpoint, &["user", "add", "root:rootpw"]);
    etcdctl_ok(&endpoint, &["role", "add", "root"]);
    etcdctl_ok(&endpoint, &["user", "grant-role", "root", "root"]);
    etcdctl_ok(&endpoint, &["auth", "enable"]);
    let root = ["--user", "root:rootpw"];
    for args in [
        &["role", "add", "writer"][..],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "wal/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "writer"],
        &["user", "add", "bob:bobpw"],
        &["user", "grant-role", "bob", "writer"],
        &["put", "wal/as-root", "r"],
    ] {
        etcdctl_ok(&endpoint, &[&root[..], args].concat());
    }
    etcdctl_ok(
        &endpoint,
        &["--user", "alice:alicepw", "put", "wal/as-alice", "al"],
    );
    etcdctl_ok(&endpoint, &["--user", "root:rootpw", "auth", "disable"]);
    // The rest, only in the WAL.
    runtime().block_on(async {
        let mut client = Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        for i in 0..5 {
            client
                .put("a", format!("wal {i}"), None)
                .await
                .expect("put");
            client
                .put(format!("wal/{i}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        let lease = client.lease_grant(900, None).await.expect("grant").id();
        client
            .put(
                "wal/leased",
                "l",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put with lease");
        client.delete("wal/2", None).await.expect("delete");
        client
            .delete(
                "many/",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete a prefix");
        client
            .txn(
                Txn::new()
                    .when([Compare::value("a", CompareOp::Equal, "wal 4")])
                    .and_then([
                        TxnOp::put("wal/txn", "t", None),
                        TxnOp::delete("wal/0", None),
                    ]),
            )
            .await
            .expect("txn");
    });
    let last = runtime().block_on(async {
        let mut client = Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        client
            .put("wal/last", "the last write", None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision()
    });

    // What etcd serves, then kill -9.
    let (etcd_served, etcd_leases, etcd_ranges, etcd_ids) = runtime().block_on(async {
        let mut client = Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        let served = served_versions(&mut client, compacted, last).await;
        let leases = leases(&mut client).await;
        let mut ranges = Vec::new();
        for revision in [
            compacted,
            compacted + 3,
            compacted + 8,
            last - 5,
            last - 1,
            last,
        ] {
            ranges.push(range_at(&mut client, revision).await);
        }
        let status = client.status().await.expect("status");
        let header = status.header().expect("header");
        (
            served,
            leases,
            ranges,
            (header.member_id(), header.cluster_id()),
        )
    });
    let etcd_auth = auth_transcript(&endpoint);
    etcd.kill9();

    // The tail really is only in etcd's WAL.
    let member_dir = data_dir.join("member");
    let backend = rivet_engine::etcd_backend::schema::Backend::open(
        rivet_engine::etcd_backend::bbolt::FileSource::open(&member_dir.join("snap/db"))
            .expect("db"),
    )
    .expect("backend");
    let consistent_index = backend.meta().expect("meta").consistent_index;
    let log = rivet_engine::etcd_wal::read_dir(&member_dir.join("wal"), consistent_index)
        .expect("etcd's WAL");
    let tail = log.entries.iter().filter(|e| !e.data.is_empty()).count();
    assert!(
        tail >= 15 && log.hard_state.commit > consistent_index,
        "the backend (consistent index {consistent_index}) should lag the WAL (commit {}, \
         {tail} entries after it)",
        log.hard_state.commit
    );
    let etcd_files = hashes(&member_dir);

    // A kill -9 in the middle of the import: the next start imports again.
    let peer = format!("http://127.0.0.1:{}", common::free_udp_port());
    let client_url = format!("http://127.0.0.1:{}", common::free_port());
    let data_dir_arg = data_dir.display().to_string();
    let crashed = common::run_to_exit(
        Rivet::binary(),
        &[
            "--data-dir",
            &data_dir_arg,
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ],
        &[("RIVET_TEST_CRASH_AT", "etcd-import-before-finish")],
        dir.path(),
    );
    assert_eq!(crashed.code, None, "killed by its crash point: {crashed:?}");
    assert!(
        crashed.stderr.contains("etcd-import-before-finish"),
        "{}",
        crashed.stderr
    );
    assert!(
        !data_dir.join("rivet").exists(),
        "an unfinished import is not used"
    );
    assert_eq!(
        hashes(&member_dir),
        etcd_files,
        "etcd's files after the crash"
    );

    let mut rivet = Rivet::start_in(&data_dir, &["--shards", "2"]);
    let log_text = rivet.log_text();
    assert!(
        log_text.contains("imported etcd's data dir into") && log_text.contains("etcd's files in"),
        "{log_text}"
    );
    let rivet_url = rivet.url();
    let check = |url: &str, what: &str| {
        runtime().block_on(async {
            let mut client = Client::connect([url], None)
                .await
                .expect("connect to rivet");
            let served = served_versions(&mut client, compacted, last).await;
            assert_same_changes(&served, &etcd_served, what);
            assert_eq!(leases(&mut client).await, etcd_leases, "{what}: leases");
            let revisions = [
                compacted,
                compacted + 3,
                compacted + 8,
                last - 5,
                last - 1,
                last,
            ];
            for (revision, expected) in revisions.iter().zip(&etcd_ranges) {
                assert_eq!(
                    &range_at(&mut client, *revision).await,
                    expected,
                    "{what}: range at revision {revision}"
                );
            }
            let below = client
                .get(
                    "a",
                    Some(etcd_client::GetOptions::new().with_revision(compacted - 1)),
                )
                .await
                .expect_err("compacted");
            assert!(below
                .to_string()
                .contains("required revision has been compacted"));
            let ttl = client
                .lease_time_to_live(etcd_leases[0].0, None)
                .await
                .expect("ttl");
            assert!(ttl.ttl() > 0, "{what}: lease {} alive", etcd_leases[0].0);
            // The member keeps etcd's member and cluster IDs.
            let status = client.status().await.expect("status");
            let header = status.header().expect("header");
            assert_eq!(
                (header.member_id(), header.cluster_id()),
                etcd_ids,
                "{what}: IDs"
            );
        });
    };
    check(&rivet_url, "rivet after the import");
    assert_eq!(
        auth_transcript(&rivet.endpoint()),
        etcd_auth,
        "users and roles"
    );
    // alice's password came through the WAL's UserAdd (hashed at import): it works.
    etcdctl_ok(
        &rivet.endpoint(),
        &["--user", "alice:alicepw", "user", "get", "alice"],
    );

    // A restart uses rivet's files and imports nothing.
    rivet.stop();
    rivet.restart();
    let log_text = rivet.log_text();
    assert!(!log_text.contains("importing"), "{log_text}");
    assert!(
        log_text.contains("using rivet's files imported from etcd"),
        "{log_text}"
    );
    check(&rivet.url(), "rivet restarted");
    let next = runtime().block_on(async {
        let mut client = Client::connect([rivet.url()], None).await.expect("connect");
        client
            .put("after-import", "1", None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision()
    });
    assert_eq!(next, last + 1);
    // Passwords work: alice's from etcd's backend, bob's from a UserAdd in the WAL
    // (hashed at import, as etcd hashes when it applies).
    let endpoint = rivet.endpoint();
    etcdctl_ok(&endpoint, &["auth", "enable"]);
    assert_eq!(
        etcdctl_ok(
            &endpoint,
            &["--user", "alice:alicepw", "get", "a", "--print-value-only"]
        ),
        "wal 4\n"
    );
    etcdctl_ok(&endpoint, &["--user", "bob:bobpw", "put", "wal/bob", "b"]);
    rivet.stop();

    // etcd's files are as etcd left them.
    assert_eq!(
        hashes(&member_dir),
        etcd_files,
        "etcd's files after the import"
    );
}

/// `client`'s server serves the versions, leases and compaction point of `history`.
/// rivet's watch gives a revision that spans shards in the order the shards answer,
/// etcd in the txn's op order: each revision's changes are compared as a set.
async fn assert_serves_history(client: &mut Client, history: &EtcdHistory, what: &str) {
    let served = served_versions(client, history.compacted, history.current).await;
    assert_same_changes(&served, &history.served, what);
    assert_eq!(leases(client).await, history.leases);
    // Below the compaction: compacted on both.
    let below = client
        .get(
            "a",
            Some(etcd_client::GetOptions::new().with_revision(history.compacted - 1)),
        )
        .await
        .expect_err("compacted");
    assert!(below
        .to_string()
        .contains("required revision has been compacted"));
}

/// The same versions, each revision's changes taken as a set (sub-revisions ignored).
fn assert_same_changes(got: &[KeyVersion], expected: &[KeyVersion], what: &str) {
    let by_revision = |versions: &[KeyVersion]| {
        let mut versions: Vec<KeyVersion> = versions
            .iter()
            .cloned()
            .map(|mut v| {
                v.sub_revision = 0;
                v
            })
            .collect();
        versions.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
        versions
    };
    let (got, expected) = (by_revision(got), by_revision(expected));
    assert_eq!(got.len(), expected.len(), "{what}: versions");
    for (got, expected) in got.iter().zip(&expected) {
        assert_eq!(got, expected, "{what}");
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}
