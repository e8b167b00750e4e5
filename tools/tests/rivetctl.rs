//! The `rivetctl` binary against `etcdctl` 3.4 on the same files: `snapshot status` in
//! every output format (on a snapshot rivet's writer made), and the errors etcdctl gives
//! for bad arguments and bad files (same message on stderr, same exit code). The server
//! side (snapshots etcd made, restores) is in `net/tests/etcd_snapshot.rs`.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use rivet_engine::etcd_backend::schema::{BackendMeta, BackendState, KeyVersion, Lease};
use rivet_engine::etcd_backend::snapshot_file::write_snapshot_file;

fn rivetctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rivetctl"))
        .args(args)
        .output()
        .expect("run rivetctl")
}

fn etcdctl(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("run etcdctl (apt-get install etcd-client)")
}

/// The same stdout, stderr and exit code.
fn same_as_etcdctl(args: &[&str]) -> Output {
    let ours = rivetctl(args);
    let theirs = etcdctl(args);
    assert_eq!(
        (
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&ours.stderr),
            ours.status.code()
        ),
        (
            String::from_utf8_lossy(&theirs.stdout),
            String::from_utf8_lossy(&theirs.stderr),
            theirs.status.code()
        ),
        "rivetctl {args:?} against etcdctl"
    );
    ours
}

fn write_sample(path: &Path, keys: u32) {
    let versions = (0..keys).map(|i| {
        Ok::<_, std::io::Error>(KeyVersion {
            key: Bytes::from(format!("key/{i:07}")),
            mod_revision: i64::from(i) + 2,
            sub_revision: 0,
            create_revision: i64::from(i) + 2,
            version: 1,
            lease: if i % 10 == 0 { 0x77 } else { 0 },
            value: Some(Bytes::from(vec![b'v'; 256])),
        })
    });
    let state = BackendState {
        meta: BackendMeta {
            consistent_index: u64::from(keys) + 10,
            cluster_version: Some("3.4.0".into()),
            ..BackendMeta::default()
        },
        leases: vec![Lease {
            id: 0x77,
            ttl: 60,
            remaining_ttl: 0,
        }],
        ..BackendState::default()
    };
    write_snapshot_file(path, &state, versions).expect("write snapshot");
}

#[test]
fn snapshot_status_prints_what_etcdctl_prints() {
    let dir = tempfile::tempdir().expect("dir");
    for keys in [0, 1, 5000] {
        let path = dir.path().join(format!("rivet-{keys}.db"));
        write_sample(&path, keys);
        let file = path.display().to_string();
        for format in ["simple", "table", "json", "fields"] {
            let output = same_as_etcdctl(&["snapshot", "status", "-w", format, &file]);
            assert!(output.status.success());
        }
        same_as_etcdctl(&["snapshot", "status", &file]);
        same_as_etcdctl(&["--write-out=json", "snapshot", "status", &file]);
    }
}

#[test]
fn snapshot_status_errors_are_etcdctls() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("rivet.db");
    write_sample(&path, 100);
    let file = path.display().to_string();
    same_as_etcdctl(&["snapshot", "status", "-w", "protobuf", &file]);
    same_as_etcdctl(&["snapshot", "status", "-w", "yaml", &file]);
    same_as_etcdctl(&["snapshot", "status"]);
    same_as_etcdctl(&["snapshot", "status", &file, &file]);
    let missing = dir.path().join("missing.db").display().to_string();
    same_as_etcdctl(&["snapshot", "status", &missing]);
    // Shorter than two pages.
    let bytes = std::fs::read(&path).expect("read");
    let short = dir.path().join("short.db");
    std::fs::write(&short, &bytes[..5000]).expect("write");
    same_as_etcdctl(&["snapshot", "status", &short.display().to_string()]);
    // A stored freelist (empty) and a page that nothing reaches and the freelist does not
    // free: bbolt's check, which etcdctl runs first, reports it.
    let grown = dir.path().join("grown.db");
    let mut longer = bytes[..bytes.len() - 32].to_vec();
    let pages = (longer.len() / 4096) as u64;
    let mut freelist = vec![0u8; 4096];
    freelist[..8].copy_from_slice(&pages.to_le_bytes());
    freelist[8..10].copy_from_slice(&0x10u16.to_le_bytes());
    longer.extend(freelist);
    longer.extend(vec![0u8; 4096]);
    for meta in [0usize, 4096] {
        let meta_start = meta + 16;
        longer[meta_start + 32..meta_start + 40].copy_from_slice(&pages.to_le_bytes());
        longer[meta_start + 40..meta_start + 48].copy_from_slice(&(pages + 2).to_le_bytes());
        let sum = rivet_engine::etcd_backend::bbolt::format::fnv1a_64(
            &longer[meta_start..meta_start + 56],
        );
        longer[meta_start + 56..meta_start + 64].copy_from_slice(&sum.to_le_bytes());
    }
    std::fs::write(&grown, &longer).expect("write");
    let output = same_as_etcdctl(&["snapshot", "status", &grown.display().to_string()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unreachable unfreed"));
}

#[test]
fn snapshot_restore_checks_like_etcdctl() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("rivet.db");
    write_sample(&path, 100);
    let file = path.display().to_string();
    // A copied database without its trailer.
    let bytes = std::fs::read(&path).expect("read");
    let bare = dir.path().join("bare.db");
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).expect("write");
    let bare = bare.display().to_string();
    let target = dir.path().join("target").display().to_string();
    for args in [
        vec!["snapshot", "restore", &bare, "--data-dir", &target],
        vec![
            "snapshot",
            "restore",
            &file,
            "--data-dir",
            &target,
            "--name",
            "other",
        ],
        vec!["snapshot", "restore"],
    ] {
        let ours = rivetctl(&args);
        let theirs = etcdctl(&args);
        let their_error = String::from_utf8_lossy(&theirs.stderr)
            .lines()
            .find(|l| l.starts_with("Error: "))
            .map(str::to_string);
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr)
                .lines()
                .next()
                .map(str::to_string),
            their_error,
            "{args:?}"
        );
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        // etcdctl creates the data dir before it fails; start each case afresh.
        let _ = std::fs::remove_dir_all(&target);
    }
    // A valid snapshot: a rivet data dir (the WAL and one page file per shard).
    let output = rivetctl(&[
        "snapshot",
        "restore",
        &file,
        "--data-dir",
        &target,
        "--shards",
        "2",
    ]);
    assert!(output.status.success(), "{output:?}");
    let member = Path::new(&target).join("member");
    assert!(member.join("wal").is_dir());
    assert!(member.join("snap").join("shard-0").is_dir());
    assert!(member.join("snap").join("shard-1").is_dir());
    // A second restore into it is refused as etcdctl refuses one into its own dir.
    let args = ["snapshot", "restore", file.as_str(), "--data-dir", &target];
    let ours = rivetctl(&args);
    let etcd_target = dir.path().join("etcd-target").display().to_string();
    let etcd_args = [
        "snapshot",
        "restore",
        file.as_str(),
        "--data-dir",
        &etcd_target,
    ];
    assert!(etcdctl(&etcd_args).status.success());
    let theirs = etcdctl(&etcd_args);
    assert_eq!(ours.status.code(), theirs.status.code());
    let first_error = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .find(|l| l.starts_with("Error: "))
            .map(|l| l.replace(&target, "DIR").replace(&etcd_target, "DIR"))
    };
    assert_eq!(first_error(&ours), first_error(&theirs));
}
