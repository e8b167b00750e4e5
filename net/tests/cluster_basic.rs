//! A 3-member rivet cluster on loopback: replication, reads on every member, the leader
//! killed, the leader isolated (ETCD_LESSONS 1), a member added after the log was
//! compacted (it catches up from a snapshot) and removed again.

mod common;

use std::time::Duration;

use common::cluster::{put_ok, wait_until, Cluster};
use common::{etcdctl, etcdctl_ok, grpc_channel, http_get, runtime};
use rivet_api::etcdserverpb::{kv_client::KvClient, request_op, PutRequest, RequestOp, TxnRequest};

#[test]
fn three_members_replicate_and_survive_the_leaders_death() {
    let mut cluster = Cluster::start(3, &[]);
    for (i, endpoint) in cluster.endpoints().iter().enumerate() {
        assert_eq!(
            etcdctl_ok(endpoint, &["put", &format!("k{i}"), &format!("v{i}")]),
            "OK\n"
        );
    }
    for endpoint in cluster.endpoints() {
        for i in 0..3 {
            let got = etcdctl_ok(&endpoint, &["get", &format!("k{i}"), "--print-value-only"]);
            assert_eq!(got, format!("v{i}\n"), "linearizable read on {endpoint}");
        }
    }
    let members = etcdctl_ok(&cluster.members[0].endpoint(), &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");

    // Issue 10: a txn nested as deep as the gRPC service decodes is proposed through a
    // follower or the leader, decoded from the raft entry by every replica and applied
    // (it used to exceed prost's nesting limit inside the entry: the replicas dropped
    // the leader's appends and the cluster stopped committing). Each level is two
    // messages (the op and the txn): the deepest the service takes has an empty txn at
    // the bottom; its answer is too deep for this client to decode (as etcd's is), but
    // the request is applied. Then a put two levels less deep must go through: the
    // cluster still commits.
    // The txn itself is one message.
    let levels = (rivet_engine::limits::TXN_NESTED_MESSAGES_MAX - 1) / 2 + 1;
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b"deep".to_vec().into(),
            value: b"deep".to_vec().into(),
            ..Default::default()
        })),
    };
    for (levels, bottom) in [(levels, None), (levels - 2, Some(put))] {
        let mut deep = TxnRequest {
            success: bottom.into_iter().collect(),
            ..Default::default()
        };
        for _ in 1..levels {
            deep = TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(deep)),
                }],
                ..Default::default()
            };
        }
        for endpoint in cluster.endpoints() {
            let answer = runtime().block_on(async {
                let mut kv = KvClient::new(grpc_channel(&endpoint).await);
                tokio::time::timeout(Duration::from_secs(30), kv.txn(deep.clone())).await
            });
            let applied = match &answer {
                Ok(Ok(a)) => a.get_ref().succeeded,
                // This client's own decoder gave up on the answer.
                Ok(Err(status)) => status
                    .message()
                    .contains("decode Protobuf message: TxnResponse"),
                Err(_) => false,
            };
            assert!(
                applied,
                "txn {levels} levels deep via {endpoint}: {answer:?}"
            );
        }
    }
    for endpoint in cluster.endpoints() {
        let got = etcdctl_ok(&endpoint, &["get", "deep", "--print-value-only"]);
        assert_eq!(got, "deep\n", "the deep txn's put on {endpoint}");
    }

    let leader = cluster.wait_for_leader(None);
    cluster.members[leader].kill9();
    let survivor = (leader + 1) % 3;
    let new_leader = cluster.wait_for_leader(Some(leader));
    assert_ne!(new_leader, leader);
    wait_until(
        "a write through a survivor succeeds",
        Duration::from_secs(20),
        || put_ok(&cluster.members[survivor].endpoint(), "after", "election"),
    );
    let initial = Cluster::initial(&cluster.members);
    cluster.members[leader].start(&initial, "new", &[]);
    wait_until("the old leader caught up", Duration::from_secs(30), || {
        etcdctl(
            &cluster.members[leader].endpoint(),
            &["get", "after", "--print-value-only", "--consistency", "s"],
            None,
        )
        .stdout
            == b"election\n"
    });
    cluster.wait_converged();
}

#[test]
fn an_isolated_leader_steps_down_and_rejoins() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(None);
    let isolated = cluster.members[leader].endpoint();
    assert!(http_get(&isolated, "/rivet/test/isolate")
        .expect("isolate")
        .ends_with("ok\n"));
    // The majority elects another leader and keeps writing.
    let majority: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.members[i].endpoint())
        .collect();
    wait_until(
        "the majority accepts writes",
        Duration::from_secs(30),
        || put_ok(&majority[0], "during", "isolation"),
    );
    // The isolated member steps down (check quorum) and reports itself unhealthy.
    wait_until(
        "the isolated member reports no leader",
        Duration::from_secs(30),
        || {
            http_get(&isolated, "/health")
                .is_ok_and(|r| r.trim_end().ends_with("{\"health\":\"false\"}"))
        },
    );
    // A client pinned to it fails instead of hanging.
    let out = etcdctl(
        &isolated,
        &["put", "x", "y", "--command-timeout", "2s"],
        None,
    );
    assert!(!out.status.success());
    assert!(http_get(&isolated, "/rivet/test/heal")
        .expect("heal")
        .ends_with("ok\n"));
    wait_until(
        "the healed member sees the write",
        Duration::from_secs(30),
        || {
            etcdctl(&isolated, &["get", "during", "--print-value-only"], None).stdout
                == b"isolation\n"
        },
    );
    cluster.wait_converged();
}

#[test]
fn a_member_added_after_compaction_catches_up_from_a_snapshot_and_can_be_removed() {
    let mut cluster = Cluster::start(3, &["--snapshot-count", "100"]);
    let first = cluster.members[0].endpoint();
    for i in 0..400 {
        assert!(put_ok(&first, &format!("key{i:04}"), &format!("value{i}")));
    }
    etcdctl_ok(&first, &["compaction", "300"]);
    let joiner = cluster.new_member("m3");
    let added = etcdctl_ok(
        &first,
        &["member", "add", "m3", "--peer-urls", &joiner.peer_url()],
    );
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let joined = joiner.endpoint();
    cluster.join(joiner, &["--snapshot-count", "100"]);
    wait_until(
        "the new member serves the data",
        Duration::from_secs(60),
        || {
            etcdctl(
                &joined,
                &["get", "key0399", "--print-value-only", "--consistency", "s"],
                None,
            )
            .stdout
                == b"value399\n"
        },
    );
    assert!(cluster.members[3]
        .log_text()
        .contains("installed a snapshot from the leader"));
    cluster.wait_converged();
    // History below the compaction is gone there too; above it, it is served.
    let compacted = etcdctl(
        &joined,
        &["get", "key0001", "--rev", "10", "--consistency", "s"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&compacted.stderr).contains("required revision has been compacted")
    );

    // Remove it again: it stops, and the member list shrinks.
    let list = etcdctl_ok(&first, &["member", "list"]);
    let id = list
        .lines()
        .find(|l| l.contains(", m3,"))
        .and_then(|l| l.split(',').next())
        .expect("m3 listed")
        .to_string();
    etcdctl_ok(&first, &["member", "remove", &id]);
    wait_until("the removed member stops", Duration::from_secs(30), || {
        cluster.members[3].exited()
    });
    assert_eq!(etcdctl_ok(&first, &["member", "list"]).lines().count(), 3);
}

/// Only the leader's lessor keeps lease clocks; a follower asks it for a lease's TTL (as
/// etcd does) instead of answering the TTL of the last checkpoint.
#[test]
fn a_follower_answers_a_lease_ttl_from_the_leaders_clock() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(None);
    let follower = cluster.members[(leader + 1) % 3].endpoint();
    let granted = etcdctl_ok(
        &cluster.members[leader].endpoint(),
        &["lease", "grant", "100"],
    );
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl_ok(&follower, &["put", "leased", "v", "--lease", &id]);
    // Let at least two seconds of the lease pass (a precondition, not a timing check).
    std::thread::sleep(Duration::from_millis(2500));
    let ttl = etcdctl_ok(&follower, &["lease", "timetolive", &id, "--keys"]);
    // "lease 694d... granted with TTL(100s), remaining(97s), attached keys([leased])"
    let remaining: i64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {ttl}"));
    assert!(remaining <= 98, "the follower answered {remaining}s: {ttl}");
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
}

/// The raft term a member reports (Maintenance.Status, answered locally).
fn term_of(endpoint: &str) -> u64 {
    let out = etcdctl_ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    status[0]["Status"]["raftTerm"]
        .as_u64()
        .unwrap_or_else(|| panic!("no raftTerm in {out}"))
}

/// ETCD_LESSONS 2: a member that fell behind in term (it was cut off while the others
/// held elections) must still be able to elect a leader with the one member left when
/// the leader goes: pre-votes are answered with the request's term.
#[test]
fn a_member_behind_in_term_still_completes_an_election() {
    // PreVote is off by default, as in etcd 3.4; the lesson is about pre-votes.
    let cluster = Cluster::start(3, &["--pre-vote"]);
    let leader = cluster.wait_for_leader(None);
    let behind = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let endpoint = |i: usize| cluster.members[i].endpoint();
    assert!(http_get(&endpoint(behind), "/rivet/test/isolate")
        .expect("isolate")
        .ends_with("ok\n"));
    // Leadership moves back and forth between the two others: every transfer is an
    // election at a higher term, which the isolated member does not see.
    let pair = format!("{},{}", endpoint(leader), endpoint(other));
    let mut target = other;
    for _ in 0..3 {
        let id = Cluster::member_id(&endpoint(leader), &cluster.members[target].name);
        wait_until("leadership moved", Duration::from_secs(30), || {
            etcdctl(&pair, &["move-leader", &id], None).status.success()
        });
        target = if target == other { leader } else { other };
    }
    let now_leading = if target == other { leader } else { other };
    let left = if now_leading == leader { other } else { leader };
    wait_until("the transfers settled", Duration::from_secs(30), || {
        term_of(&endpoint(left)) == term_of(&endpoint(now_leading))
    });
    let behind_term = term_of(&endpoint(behind));
    let ahead_term = term_of(&endpoint(left));
    assert!(
        behind_term < ahead_term,
        "the isolated member is behind: term {behind_term} against {ahead_term}"
    );
    // Cut off the leader, then bring the member that is behind back: the two must elect.
    assert!(http_get(&endpoint(now_leading), "/rivet/test/isolate")
        .expect("isolate")
        .ends_with("ok\n"));
    assert!(http_get(&endpoint(behind), "/rivet/test/heal")
        .expect("heal")
        .ends_with("ok\n"));
    wait_until(
        "the member that was behind and the other elect a leader and take writes",
        Duration::from_secs(30),
        || put_ok(&endpoint(behind), "after", "election"),
    );
    assert!(put_ok(&endpoint(left), "and", "again"));
    assert!(http_get(&endpoint(now_leading), "/rivet/test/heal")
        .expect("heal")
        .ends_with("ok\n"));
    // A linearizable read on the member that comes back, asked at once (while it may
    // still know no leader), is answered once it finds one: a ReadIndex raft dropped for
    // want of a leader is asked again.
    let read = etcdctl(
        &endpoint(now_leading),
        &["get", "after", "--print-value-only"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "election\n",
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    cluster.wait_converged();
}

/// Puts `count` keys `{prefix}{i:05}` through `endpoint`, 64 at a time.
fn put_many(endpoint: &str, prefix: &str, count: usize) {
    use futures::StreamExt;
    runtime().block_on(async {
        let kv = KvClient::new(grpc_channel(endpoint).await);
        let puts = futures::stream::iter(0..count).map(|i| {
            let mut kv = kv.clone();
            async move {
                kv.put(PutRequest {
                    key: format!("{prefix}{i:05}").into_bytes().into(),
                    value: vec![b'v'; 256].into(),
                    ..Default::default()
                })
                .await
            }
        });
        let answers: Vec<_> = puts.buffer_unordered(64).collect().await;
        for answer in answers {
            answer.expect("put");
        }
    });
}

/// The raft log in memory is let go behind what every follower has, but for a catch-up
/// tail (`RAFT_LOG_KEPT_AFTER_CHECKPOINT` entries), long before a checkpoint (none here:
/// `--snapshot-count` is the default 100,000). A follower that stops holds the release
/// back on the leader: when it returns it catches up from the entries the leader kept for
/// it, with no snapshot, even though the log had been released while every member was up.
///
/// Only while the leader stays the same: a follower releases behind its own applied
/// index (it does not know the others' progress), so a new leader may have let go of what
/// the stopped member lacks and sends it a snapshot instead (`docs/ARCHITECTURE.md`). The
/// election timeout is long so that a loaded machine does not start an election, and the
/// term tells whether one happened anyway; if it did, only convergence is checked.
#[test]
fn a_stopped_follower_catches_up_from_the_log_kept_for_it() {
    let slow_elections = ["--heartbeat-interval", "200", "--election-timeout", "5000"];
    let mut cluster = Cluster::start(3, &slow_elections);
    let leader = cluster.wait_for_leader(None);
    let endpoint = cluster.members[leader].endpoint();
    let term = term_of(&endpoint);
    let tail = rivet_engine::limits::RAFT_LOG_KEPT_AFTER_CHECKPOINT as usize;
    put_many(&endpoint, "up", 3 * tail);
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill9();
    put_many(&endpoint, "down", 3 * tail);
    let initial = Cluster::initial(&cluster.members);
    cluster.members[follower].start(&initial, "new", &slow_elections);
    let last = format!("down{:05}", 3 * tail - 1);
    let returned = cluster.members[follower].endpoint();
    wait_until("the follower caught up", Duration::from_secs(60), || {
        etcdctl(
            &returned,
            &["get", &last, "--print-value-only", "--consistency", "s"],
            None,
        )
        .stdout
            == [vec![b'v'; 256], b"\n".to_vec()].concat()
    });
    cluster.wait_converged();
    if term_of(&endpoint) != term {
        eprintln!("an election happened during the test: the snapshot check does not apply");
        return;
    }
    for member in &cluster.members {
        let snapshots: Vec<String> = member
            .log_text()
            .lines()
            .filter(|l| l.contains("sending a snapshot") || l.contains("installed a snapshot"))
            .map(str::to_string)
            .collect();
        assert!(
            snapshots.is_empty(),
            "{}: {snapshots:#?}",
            member.endpoint()
        );
    }
}
