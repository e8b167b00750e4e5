//! etcd 3.4's backend file, both ways, against a real etcd 3.4:
//!
//! - a snapshot `etcdctl snapshot save` took (puts, second and third revisions of keys,
//!   a txn of several changes, deletes, a compaction, leases, auth records) and a stopped
//!   member's `member/snap/db` decode to exactly what etcd serves (every retained
//!   version, lease, member, auth record), and `snapshot status` says what etcdctl says;
//! - a snapshot rivet's writer made is accepted by `etcdctl snapshot status` and
//!   `etcdctl snapshot restore`, and an etcd 3.4 started on the restored dir serves every
//!   key with the same create/mod revisions, versions and leases, every retained older
//!   version, the leases with their keys, the alarm and the auth records.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use common::history::{comparable, etcdctl_offline, make_history, require_etcd, EtcdHistory};
use common::{etcdctl_ok, runtime, Etcd};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};
use prost::Message;
use rivet_api::etcdserverpb::AlarmMember;
use rivet_api::rivetpb::Member;
use rivet_engine::etcd_backend::bbolt::FileSource;
use rivet_engine::etcd_backend::schema::{
    AuthData, AuthRecord, Backend, BackendMeta, BackendState, KeyVersion, Lease, Status,
};
use rivet_engine::etcd_backend::snapshot_file::{
    file_status, open_snapshot, write_snapshot_file, SnapshotOpenError,
};
use rivet_tools::snapshot::{restore, status_output, RestoreOptions, WriteOut};

fn status_of_etcdctl(path: &Path, format: &str) -> String {
    let output = etcdctl_offline(&[
        "snapshot",
        "status",
        "-w",
        format,
        &path.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "etcdctl snapshot status {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// rivetctl's status output equals etcdctl's in every format.
fn same_status_as_etcdctl(path: &Path) -> Status {
    let status = file_status(path).expect("rivet status");
    for (name, format) in [
        ("simple", WriteOut::Simple),
        ("table", WriteOut::Table),
        ("json", WriteOut::Json),
        ("fields", WriteOut::Fields),
    ] {
        assert_eq!(
            status_output(&status, format),
            status_of_etcdctl(path, name),
            "snapshot status -w {name} of {}",
            path.display()
        );
    }
    status
}

fn check_decoded(backend: &Backend<FileSource>, history: &EtcdHistory) -> BackendState {
    let decoded: Vec<KeyVersion> = backend
        .key_versions()
        .expect("key bucket")
        .collect::<Result<_, _>>()
        .expect("decode every version");
    assert_eq!(
        comparable(decoded.clone(), history.compacted),
        history.served,
        "the key bucket holds what etcd serves"
    );
    // Sub-revisions count from 0 within each revision.
    let mut expected_sub = BTreeMap::new();
    for version in &decoded {
        let sub = expected_sub.entry(version.mod_revision).or_insert(0);
        assert_eq!(version.sub_revision, *sub, "{version:?}");
        *sub += 1;
    }
    assert_eq!(
        decoded.last().map(|v| v.mod_revision),
        Some(history.current)
    );
    let state = backend.state().expect("state");
    let leases: Vec<(i64, i64)> = state.leases.iter().map(|l| (l.id, l.ttl)).collect();
    assert_eq!(leases, history.leases);
    assert!(state.leases.iter().all(|l| l.remaining_ttl == 0));
    assert_eq!(state.members, history.members);
    assert!(state.removed_members.is_empty());
    assert!(state.alarms.is_empty());
    assert_eq!(
        state.meta.scheduled_compact_revision,
        Some(history.compacted)
    );
    assert_eq!(
        state.meta.finished_compact_revision,
        Some(history.compacted)
    );
    assert_eq!(state.meta.cluster_version.as_deref(), Some("3.4.0"));
    assert!(state.meta.consistent_index > 0);
    let users: Vec<rivet_api::authpb::User> = state
        .auth
        .users
        .iter()
        .map(|r| rivet_api::authpb::User::decode(r.value.clone()).expect("user"))
        .collect();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name.as_ref(), b"alice");
    assert_eq!(users[0].roles, vec!["reader".to_string()]);
    let roles: Vec<rivet_api::authpb::Role> = state
        .auth
        .roles
        .iter()
        .map(|r| rivet_api::authpb::Role::decode(r.value.clone()).expect("role"))
        .collect();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].name.as_ref(), b"reader");
    assert_eq!(roles[0].key_permission[0].key.as_ref(), b"many/");
    assert_eq!(state.auth.enabled, None);
    assert!(state.auth.revision.unwrap_or(0) > 1);
    state
}

#[test]
fn etcd_snapshots_and_member_dbs_decode_to_what_etcd_serves() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    let mut etcd = Etcd::start_in(&dir.path().join("data.etcd"), &[]);
    let endpoint = etcd.endpoint();
    let history = runtime().block_on(make_history(&format!("http://{endpoint}")));
    // Auth records (auth stays disabled).
    etcdctl_ok(&endpoint, &["role", "add", "reader"]);
    etcdctl_ok(
        &endpoint,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "many/",
            "--prefix",
        ],
    );
    etcdctl_ok(&endpoint, &["user", "add", "alice:secret"]);
    etcdctl_ok(&endpoint, &["user", "grant-role", "alice", "reader"]);
    let snapshot = dir.path().join("etcd.snapshot");
    etcdctl_ok(
        &endpoint,
        &["snapshot", "save", &snapshot.display().to_string()],
    );

    // The snapshot.
    let opened = open_snapshot(&snapshot, false).expect("open the snapshot");
    assert!(opened.hash_checked);
    let from_snapshot = check_decoded(&opened.backend, &history);
    let status = same_status_as_etcdctl(&snapshot);
    assert_eq!(status.revision, history.current);
    let restored_dir = dir.path().join("restored.rivet");
    let summary = restore(
        &RestoreOptions {
            snapshot: snapshot.clone(),
            data_dir: Some(restored_dir.clone()),
            ..RestoreOptions::default()
        },
        |_| Ok(()),
    )
    .expect("rivetctl snapshot restore validates the snapshot");
    assert_eq!(summary.revision, history.current);
    assert_eq!(
        summary.puts + summary.tombstones,
        history.served.len() as u64
    );
    assert!(summary.hash_checked);

    // A damaged snapshot: the trailer check refuses it, as etcdctl's does.
    let damaged = dir.path().join("damaged.snapshot");
    let mut bytes = std::fs::read(&snapshot).expect("read");
    bytes[5000] ^= 1;
    std::fs::write(&damaged, &bytes).expect("write");
    let refused = open_snapshot(&damaged, false).err().expect("refused");
    assert!(matches!(refused, SnapshotOpenError::HashMismatch { .. }));
    let etcdctl_refusal = etcdctl_offline(&[
        "snapshot",
        "restore",
        &damaged.display().to_string(),
        "--data-dir",
        &dir.path().join("never").display().to_string(),
    ]);
    assert!(!etcdctl_refusal.status.success());
    assert!(String::from_utf8_lossy(&etcdctl_refusal.stderr).contains(&format!("Error: {refused}")));

    // The stopped member's own database file.
    etcd.stop();
    let member_db = dir.path().join("data.etcd/member/snap/db");
    let backend = Backend::open(FileSource::open(&member_db).expect("db")).expect("open member db");
    let from_member = check_decoded(&backend, &history);
    assert_eq!(
        BackendState {
            meta: BackendMeta {
                consistent_index: 0,
                ..from_member.meta.clone()
            },
            ..from_member.clone()
        },
        BackendState {
            meta: BackendMeta {
                consistent_index: 0,
                ..from_snapshot.meta.clone()
            },
            ..from_snapshot
        }
    );
    same_status_as_etcdctl(&member_db);
    // A copied member db has no trailer: refused unless --skip-hash-check, as etcdctl.
    assert!(matches!(
        open_snapshot(&member_db, false),
        Err(SnapshotOpenError::MissingHash)
    ));
    assert!(open_snapshot(&member_db, true).is_ok());
}

/// A history as rivet would export it, compacted at `compacted`: what the writer gets.
struct RivetData {
    state: BackendState,
    versions: Vec<KeyVersion>,
    compacted: i64,
    /// Live keys at the end: key → (create, mod, version, lease, value).
    live: BTreeMap<Bytes, KeyVersion>,
}

fn rivet_data() -> RivetData {
    let leases = [0i64, 0x694d_7a1b_0000_0001, 0x694d_7a1b_0000_0002];
    let mut live: BTreeMap<Bytes, KeyVersion> = BTreeMap::new();
    let mut history = Vec::new();
    let mut revision = 1;
    // Deterministic pseudo-random history: 400 revisions, some with several changes.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    for step in 0..400 {
        revision += 1;
        let changes = if step % 17 == 0 { 3 } else { 1 };
        let mut touched = Vec::new();
        for sub in 0..changes {
            let mut key_number = next(250);
            while touched.contains(&key_number) {
                key_number = (key_number + 1) % 250;
            }
            touched.push(key_number);
            let key = Bytes::from(format!("rivet/{key_number:03}"));
            let delete = next(5) == 0 && live.contains_key(&key);
            if delete {
                live.remove(&key);
                history.push(KeyVersion {
                    key,
                    mod_revision: revision,
                    sub_revision: sub,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    value: None,
                });
            } else {
                let (create, version) = live
                    .get(&key)
                    .map_or((revision, 1), |v| (v.create_revision, v.version + 1));
                let size = if next(50) == 0 { 9000 } else { 256 };
                let value = Bytes::from(vec![b'a' + (next(26) as u8); size]);
                let version = KeyVersion {
                    key: key.clone(),
                    mod_revision: revision,
                    sub_revision: sub,
                    create_revision: create,
                    version,
                    lease: leases[next(3) as usize],
                    value: Some(value),
                };
                live.insert(key, version.clone());
                history.push(version);
            }
        }
    }
    // Compact at a revision in the middle, as etcd's compaction leaves the bucket: the
    // versions live at it, and everything after it.
    let compacted = 200;
    let mut live_at_compaction: BTreeMap<Bytes, &KeyVersion> = BTreeMap::new();
    for version in history.iter().filter(|v| v.mod_revision <= compacted) {
        if version.value.is_some() {
            live_at_compaction.insert(version.key.clone(), version);
        } else {
            live_at_compaction.remove(&version.key);
        }
    }
    let kept: Vec<(i64, i64)> = live_at_compaction
        .values()
        .map(|v| (v.mod_revision, v.sub_revision))
        .collect();
    let versions: Vec<KeyVersion> = history
        .iter()
        .filter(|v| v.mod_revision > compacted || kept.contains(&(v.mod_revision, v.sub_revision)))
        .cloned()
        .collect();
    let user = rivet_api::authpb::User {
        name: Bytes::from_static(b"bob"),
        password: Bytes::from_static(
            b"$2a$10$8/6YoVyvBrXFHhkcCiUF6.qHBK4OZX2T2UTZ4PFG7pwwwm0lQ5JsC",
        ),
        roles: vec!["writer".into()],
        options: None,
    };
    let role = rivet_api::authpb::Role {
        name: Bytes::from_static(b"writer"),
        key_permission: vec![rivet_api::authpb::Permission {
            perm_type: 1,
            key: Bytes::from_static(b"rivet/"),
            range_end: Bytes::from_static(b"rivet0"),
        }],
    };
    let state = BackendState {
        meta: BackendMeta {
            consistent_index: 12_345,
            scheduled_compact_revision: Some(compacted),
            finished_compact_revision: Some(compacted),
            cluster_version: Some("3.4.0".into()),
        },
        leases: vec![
            Lease {
                id: leases[1],
                ttl: 3600,
                remaining_ttl: 0,
            },
            Lease {
                id: leases[2],
                ttl: 7200,
                remaining_ttl: 0,
            },
        ],
        members: vec![Member {
            id: 0x8e9e_05c5_2164_694d,
            name: "old".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
            client_urls: vec!["http://127.0.0.1:2".into()],
            is_learner: false,
        }],
        removed_members: vec![0x1234],
        alarms: vec![AlarmMember {
            member_id: 0x8e9e_05c5_2164_694d,
            alarm: 1,
        }],
        auth: AuthData {
            enabled: Some(false),
            revision: Some(7),
            users: vec![AuthRecord {
                name: Bytes::from_static(b"bob"),
                value: Bytes::from(user.encode_to_vec()),
            }],
            roles: vec![AuthRecord {
                name: Bytes::from_static(b"writer"),
                value: Bytes::from(role.encode_to_vec()),
            }],
        },
    };
    RivetData {
        state,
        versions,
        compacted,
        live,
    }
}

#[test]
fn etcd_restores_and_serves_a_snapshot_rivet_wrote() {
    require_etcd();
    let dir = tempfile::tempdir().expect("dir");
    let data = rivet_data();
    let snapshot = dir.path().join("rivet.snapshot");
    let summary = write_snapshot_file(
        &snapshot,
        &data.state,
        data.versions.iter().cloned().map(Ok::<_, std::io::Error>),
    )
    .expect("write the snapshot");
    // etcdctl's status of the file equals what the writer computed and what rivetctl prints.
    assert_eq!(same_status_as_etcdctl(&snapshot), summary.backend.status);
    assert_eq!(
        summary.backend.status.revision,
        data.versions.last().expect("versions").mod_revision
    );
    // Our own reader gives back what we wrote.
    let opened = open_snapshot(&snapshot, false).expect("open");
    assert_eq!(opened.backend.state().expect("state"), data.state);
    let read: Vec<KeyVersion> = opened
        .backend
        .key_versions()
        .expect("versions")
        .collect::<Result<_, _>>()
        .expect("decode");
    assert_eq!(read, data.versions);

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
    // The NOSPACE alarm makes etcd report itself unhealthy while it serves.
    let etcd = Etcd::start_in_with_alarm(&restored, &[]);
    let endpoint = etcd.endpoint();
    runtime().block_on(async {
        let mut client = Client::connect([format!("http://{endpoint}")], None)
            .await
            .expect("connect");
        // Every live key as it was.
        let all = client
            .get("", Some(GetOptions::new().with_from_key()))
            .await
            .expect("range");
        assert_eq!(
            all.header().expect("header").revision(),
            summary.backend.status.revision,
            "etcd's revision after the restore"
        );
        let served: Vec<KeyVersion> = all
            .kvs()
            .iter()
            .map(|kv| KeyVersion {
                key: Bytes::copy_from_slice(kv.key()),
                mod_revision: kv.mod_revision(),
                sub_revision: 0,
                create_revision: kv.create_revision(),
                version: kv.version(),
                lease: kv.lease(),
                value: Some(Bytes::copy_from_slice(kv.value())),
            })
            .collect();
        let expected: Vec<KeyVersion> = data
            .live
            .values()
            .map(|v| KeyVersion {
                sub_revision: 0,
                ..v.clone()
            })
            .collect();
        assert_eq!(served, expected);
        // Every retained version after the compaction, at its own revision.
        let mut checked = 0;
        for version in data
            .versions
            .iter()
            .filter(|v| v.mod_revision > data.compacted)
        {
            checked += 1;
            let at = client
                .get(
                    version.key.to_vec(),
                    Some(GetOptions::new().with_revision(version.mod_revision)),
                )
                .await
                .expect("historical get");
            match &version.value {
                Some(value) => {
                    let kv = &at.kvs()[0];
                    assert_eq!(
                        (
                            kv.create_revision(),
                            kv.mod_revision(),
                            kv.version(),
                            kv.lease(),
                            kv.value()
                        ),
                        (
                            version.create_revision,
                            version.mod_revision,
                            version.version,
                            version.lease,
                            value.as_ref()
                        ),
                        "{:?} at {}",
                        version.key,
                        version.mod_revision
                    );
                }
                None => assert!(at.kvs().is_empty(), "deleted at {}", version.mod_revision),
            }
        }
        assert!(
            checked > 200 && data.live.len() > 100,
            "{checked} versions, {} live keys",
            data.live.len()
        );
        // Below the compaction: compacted, as etcd says it.
        let compacted = client
            .get(
                "rivet/",
                Some(GetOptions::new().with_revision(data.compacted - 1)),
            )
            .await
            .expect_err("compacted");
        assert!(
            compacted
                .to_string()
                .contains("mvcc: required revision has been compacted"),
            "{compacted}"
        );
        // Leases with their keys.
        for lease in &data.state.leases {
            let ttl = client
                .lease_time_to_live(lease.id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                .await
                .expect("ttl");
            assert_eq!(ttl.granted_ttl(), lease.ttl);
            let mut keys: Vec<Vec<u8>> = ttl.keys().to_vec();
            keys.sort();
            let expected: Vec<Vec<u8>> = data
                .live
                .values()
                .filter(|v| v.lease == lease.id)
                .map(|v| v.key.to_vec())
                .collect();
            assert_eq!(keys, expected, "keys of lease {:x}", lease.id);
        }
    });
    // The alarm, the auth records.
    let alarms = etcdctl_ok(&endpoint, &["alarm", "list"]);
    assert_eq!(alarms, "memberID:10276657743932975437 alarm:NOSPACE \n");
    assert_eq!(etcdctl_ok(&endpoint, &["user", "list"]), "bob\n");
    let role = etcdctl_ok(&endpoint, &["role", "get", "writer"]);
    assert!(role.contains("[rivet/, rivet0)"), "{role}");
}
