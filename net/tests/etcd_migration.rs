//! The ways out of and into rivet (issue 14), differential against a real etcd 3.4:
//!
//! - out: rivet → `etcdctl snapshot save` (Maintenance.Snapshot) → `etcdctl snapshot
//!   restore` → etcd 3.4 serves every key, every retained version and every lease as
//!   rivet did; a `kill -9` in the middle of the stream loses nothing.
//! - in: etcd 3.4 → `etcdctl snapshot save` → `rivetctl snapshot restore` (its library
//!   function) → rivet serves every key, every retained version and every lease as etcd
//!   did, at etcd's revision, and goes on from there.

mod common;

use std::path::Path;

use common::history::{etcdctl_offline, make_history, require_etcd, served_versions, EtcdHistory};
use common::{etcdctl_ok, runtime, Etcd, Rivet};
use etcd_client::{Client, LeaseTimeToLiveOptions};
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
