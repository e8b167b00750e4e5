//! Disaster recovery with `--force-new-cluster`, as etcd's "Restoring a cluster" guide
//! describes it for a cluster that lost its quorum for good: the one surviving member is
//! restarted with its data and `--force-new-cluster`, becomes a one-member cluster with the
//! same keys and revisions, and takes writes; a lost member that comes back with its old
//! data is refused as removed. The same script runs against a 3-member etcd 3.4 and a
//! 3-member rivet, and the transcripts must be equal once member IDs are masked.
//!
//! Without `etcd` on PATH the test fails (CI installs it); it never skips.

mod common;

use std::time::Duration;

use common::cluster::{wait_until, Cluster};
use common::{etcdctl, seen, Seen};

/// What `member list` says, without the IDs and ports every cluster has its own of:
/// each member's status, name and learner flag.
fn members(endpoint: &str) -> Vec<String> {
    let out = etcdctl(
        endpoint,
        &["member", "list", "--command-timeout", "5s"],
        None,
    );
    assert!(
        out.status.success(),
        "member list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            format!("{:?}", [fields[1], fields[2], fields[5]])
        })
        .collect()
}

fn step(transcript: &mut Vec<(String, Seen)>, endpoint: &str, args: &[&str]) {
    let output = etcdctl(endpoint, args, None);
    transcript.push((args.join(" "), seen(output)));
}

/// Runs the script against a 3-member cluster of `etcd` or rivet; returns what each step
/// printed, and the survivor's log.
fn script(etcd: bool) -> (Vec<(String, Seen)>, String) {
    let mut cluster = if etcd {
        Cluster::start_etcd(3, &[])
    } else {
        Cluster::start(3, &[])
    };
    let leader = cluster.wait_for_leader(None);
    let endpoint = cluster.members[leader].endpoint();
    let mut transcript = Vec::new();
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("dir/x", "4")] {
        step(&mut transcript, &endpoint, &["put", key, value]);
    }
    step(&mut transcript, &endpoint, &["del", "b"]);
    // The survivor must hold every acknowledged write before the others are lost.
    cluster.wait_converged();
    // etcd 3.4 keeps the last writes only in its backend's open batch for up to
    // `--backend-batch-interval` (100 ms), and with `--force-new-cluster` it discards the
    // WAL entries after the commit index its WAL recorded, which lags: killed inside that
    // window, etcd loses the last acknowledged write (seen here: the final `del` gone).
    // rivet keeps it (`engine/src/raft/force_new.rs`). The script waits the window out so
    // that both sides have the same history to compare.
    std::thread::sleep(Duration::from_secs(1));

    // The quorum is lost for good: every member stops; only m0's data survives.
    for member in &mut cluster.members {
        member.kill9();
    }
    let initial = Cluster::initial(&cluster.members);
    cluster.members[0].start(&initial, "new", &["--force-new-cluster"]);
    let survivor = cluster.members[0].endpoint();
    cluster.wait_for_leader(None);
    transcript.push(("member list".into(), seen_lines(members(&survivor))));
    step(
        &mut transcript,
        &survivor,
        &["get", "", "--prefix", "-w", "json"],
    );
    step(&mut transcript, &survivor, &["put", "c", "5"]);
    step(
        &mut transcript,
        &survivor,
        &["get", "", "--prefix", "-w", "json"],
    );

    // A lost member that comes back with its old data was removed: it is refused and
    // stops, and the survivor stays a one-member cluster.
    let lost = &mut cluster.members[1];
    lost.start(&initial, "new", &[]);
    wait_until("the removed member stops", Duration::from_secs(60), || {
        lost.exited()
    });
    lost.kill9();
    transcript.push(("member list".into(), seen_lines(members(&survivor))));

    // Restarted without the flag, the survivor is still the whole cluster.
    cluster.members[0].kill9();
    cluster.members[0].start(&initial, "new", &[]);
    cluster.wait_for_leader(None);
    transcript.push(("member list".into(), seen_lines(members(&survivor))));
    step(&mut transcript, &survivor, &["put", "d", "6"]);
    step(
        &mut transcript,
        &survivor,
        &["get", "", "--prefix", "-w", "json"],
    );
    // `endpoint health` prints the port and how long it took: only its outcome compares.
    let health = etcdctl(&survivor, &["endpoint", "health"], None);
    transcript.push((
        "endpoint health".into(),
        seen_lines(vec![health.status.success().to_string()]),
    ));
    let log = cluster.members[0].log_text();
    (transcript, log)
}

fn seen_lines(lines: Vec<String>) -> Seen {
    Seen {
        success: true,
        stdout: lines.join("\n"),
        stderr: String::new(),
    }
}

#[test]
fn force_new_cluster_matches_etcd() {
    let (rivet, log) = script(false);
    let (etcd, _) = script(true);
    for ((step, r), (_, e)) in rivet.iter().zip(&etcd) {
        assert_eq!(r, e, "step `{step}` differs from etcd");
    }
    assert_eq!(rivet.len(), etcd.len());
    assert!(
        log.contains("forcing restart of member"),
        "the survivor's log does not say it forced a new cluster:\n{log}"
    );
}
