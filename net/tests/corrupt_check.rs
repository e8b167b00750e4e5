//! etcd's corruption checks and the policy for damaged page records (issue 10 items 3
//! and 4), on a 3-member rivet cluster of real processes:
//!
//! - `--experimental-initial-corrupt-check`: a member whose data differs from its peers'
//!   (one byte of a value changed on disk, its record's CRC made valid again: damage no
//!   checksum sees, the kind of divergence only a comparison of replicas finds) refuses
//!   to start with etcd's "<id> found data inconsistency with peers";
//! - `--experimental-corrupt-check-time`: the leader finds the same member and raises
//!   CORRUPT for it through raft; `etcdctl alarm list` shows it, and writes answer
//!   etcd's `etcdserver: corrupt cluster`;
//! - a byte flipped under a running member (its CRC no longer matches): reads of the
//!   record (Range, HashKV, Maintenance.Snapshot) answer `etcdserver: corrupt cluster`,
//!   and the member raises CORRUPT for itself through raft. etcd has no checksum on a
//!   value and would serve the damaged bytes; the error and the alarm are rivet's.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{wait_until, Cluster};
use common::{etcdctl, etcdctl_ok};
use rivet_engine::page::{decode_record_at, encode_key_record, KeyRecord, Record};

const KEY: &str = "corrupt/target";
const VALUE: &str = "value-that-gets-damaged-0123456789";

fn page_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            page_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "page") {
            out.push(path);
        }
    }
}

/// Changes the first byte of `VALUE` in every page record of `KEY` under `dir`; with
/// `fix_crc` the record is written again whole with a valid CRC (a divergence no
/// checksum catches), else only the byte changes (damage the CRC catches). Answers how
/// many records were changed.
fn damage_value(dir: &Path, fix_crc: bool) -> usize {
    let mut files = Vec::new();
    page_files(dir, &mut files);
    let mut changed = 0;
    for path in files {
        let mut bytes = std::fs::read(&path).expect("read page file");
        let mut edits: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut from = 0;
        while let Some(at) = bytes[from..]
            .windows(VALUE.len())
            .position(|w| w == VALUE.as_bytes())
        {
            let value_at = from + at;
            from = value_at + 1;
            let Some(start) = value_at.checked_sub(48 + KEY.len()) else {
                continue;
            };
            let Ok(Some((Record::Key(record), _))) = decode_record_at(&bytes, start) else {
                continue;
            };
            if record.key != KEY.as_bytes() {
                continue;
            }
            let mut value = VALUE.as_bytes().to_vec();
            value[0] ^= 0x01;
            if fix_crc {
                let mut encoded = Vec::new();
                encode_key_record(
                    &KeyRecord {
                        value: Some(&value),
                        ..record
                    },
                    &mut encoded,
                )
                .expect("encode");
                edits.push((start, encoded));
            } else {
                edits.push((value_at, value[..1].to_vec()));
            }
        }
        if edits.is_empty() {
            continue;
        }
        for (at, new) in &edits {
            bytes[*at..*at + new.len()].copy_from_slice(new);
        }
        // Written in place (not replaced): a running member maps this very file.
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open page file");
        for (at, new) in &edits {
            file.seek(SeekFrom::Start(*at as u64)).expect("seek");
            file.write_all(new).expect("write");
        }
        file.sync_all().expect("sync");
        changed += edits.len();
    }
    changed
}

/// Writes some keys and the one that gets damaged; answers the cluster's endpoints.
fn write_keys(cluster: &Cluster) -> String {
    let endpoints = cluster.endpoints().join(",");
    for i in 0..20 {
        etcdctl_ok(&endpoints, &["put", &format!("corrupt/{i:02}"), "v"]);
    }
    etcdctl_ok(&endpoints, &["put", KEY, VALUE]);
    cluster.wait_converged();
    endpoints
}

/// A member that does not lead (it restarts as a follower).
fn follower(cluster: &Cluster) -> usize {
    let leader = cluster.wait_for_leader(None);
    (leader + 1) % cluster.members.len()
}

/// The member's ID in decimal, as `etcdctl alarm list` prints it.
fn decimal_id(cluster: &Cluster, victim: usize) -> u64 {
    let other = &cluster.members[(victim + 1) % cluster.members.len()];
    let hex = Cluster::member_id(&other.endpoint(), &cluster.members[victim].name);
    u64::from_str_radix(&hex, 16).expect("hex member ID")
}

fn alarm_list(endpoint: &str) -> String {
    let out = etcdctl(endpoint, &["alarm", "list"], None);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn initial_check_refuses_a_member_whose_data_differs_from_its_peers() {
    let mut cluster = Cluster::start(3, &[]);
    write_keys(&cluster);
    let victim = follower(&cluster);
    let id = decimal_id(&cluster, victim);
    cluster.members[victim].stop();
    let changed = damage_value(&cluster.members[victim].dir, true);
    assert!(changed > 0, "the value is in the victim's page files");

    let initial = Cluster::initial(&cluster.members);
    cluster.members[victim].start(&initial, "new", &["--experimental-initial-corrupt-check"]);
    let Some(status) = cluster.members[victim].exit_status(Duration::from_secs(60)) else {
        panic!(
            "the damaged member refuses to start; log:\n{}",
            cluster.members[victim].log_text()
        );
    };
    assert!(!status.success(), "it exits non-zero");
    let log = cluster.members[victim].log_text();
    assert!(
        log.contains(&format!("{id:x} found data inconsistency with peers")),
        "etcd's message; log:\n{log}"
    );
    assert!(
        log.contains("found different hash values from remote peer"),
        "etcd's warning per peer; log:\n{log}"
    );

    // The healthy members pass the same check and serve.
    let healthy = (victim + 1) % 3;
    cluster.members[healthy].stop();
    cluster.members[healthy].start(&initial, "new", &["--experimental-initial-corrupt-check"]);
    let endpoint = cluster.members[healthy].endpoint();
    wait_until("the healthy member serves", Duration::from_secs(60), || {
        etcdctl(&endpoint, &["get", KEY], None).status.success()
    });
    assert!(cluster.members[healthy]
        .log_text()
        .contains("initial corruption checking passed; no corruption"));
}

#[test]
fn leader_check_raises_corrupt_for_the_member_whose_data_differs() {
    let flags = ["--experimental-corrupt-check-time", "1s"];
    let mut cluster = Cluster::start(3, &flags);
    let endpoints = write_keys(&cluster);
    let victim = follower(&cluster);
    let id = decimal_id(&cluster, victim);
    cluster.members[victim].stop();
    assert!(damage_value(&cluster.members[victim].dir, true) > 0);
    let initial = Cluster::initial(&cluster.members);
    cluster.members[victim].start(&initial, "new", &flags);

    let healthy = cluster.members[(victim + 1) % 3].endpoint();
    let expected = format!("memberID:{id} alarm:CORRUPT");
    wait_until("the leader raises CORRUPT", Duration::from_secs(60), || {
        alarm_list(&healthy).contains(&expected)
    });
    let leader = cluster.wait_for_leader(None);
    assert!(
        cluster.members[leader]
            .log_text()
            .contains("same compact revision then hashes must match"),
        "etcd's warning on the leader"
    );

    // etcd's corrupt applier: writes answer ErrCorrupt.
    let out = etcdctl(&endpoints, &["put", "after", "x"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("etcdserver: corrupt cluster"),
        "put answers ErrCorrupt: {stderr}"
    );
}

#[test]
fn a_damaged_record_read_while_serving_raises_corrupt() {
    let mut cluster = Cluster::start(3, &[]);
    write_keys(&cluster);
    let victim = follower(&cluster);
    let id = decimal_id(&cluster, victim);
    // Under the running member: the next read of the record fails its CRC.
    assert!(damage_value(&cluster.members[victim].dir, false) > 0);
    let endpoint = cluster.members[victim].endpoint();
    let out = etcdctl(&endpoint, &["get", KEY], None);
    assert!(!out.status.success(), "the damaged record is not served");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("etcdserver: corrupt cluster"),
        "the client gets ErrCorrupt: {stderr}"
    );
    let expected = format!("memberID:{id} alarm:CORRUPT");
    let healthy = cluster.members[(victim + 1) % 3].endpoint();
    wait_until("the member raises CORRUPT", Duration::from_secs(30), || {
        alarm_list(&healthy).contains(&expected)
    });
    // HashKV on the damaged member fails the same way, and the member goes on.
    let out = etcdctl(&endpoint, &["endpoint", "hashkv"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: corrupt cluster"));
    // So does a Maintenance.Snapshot that meets the record.
    let file = cluster.dir.path().join("damaged.db");
    let out = etcdctl(
        &endpoint,
        &["snapshot", "save", file.to_str().expect("utf-8 path")],
        None,
    );
    assert!(!out.status.success(), "no snapshot skips the record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etcdserver: corrupt cluster"), "{stderr}");
    assert!(!cluster.members[victim].exited(), "no panic, no exit");
    let out = etcdctl(&endpoint, &["put", "after", "x"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: corrupt cluster"));
}
