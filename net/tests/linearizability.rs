//! Linearizability of a 3-member rivet cluster under faults (issue 3, ETCD_LESSONS 1).
//!
//! Concurrent clients (the `etcd-client` crate, each pinned to one member and moving to the
//! next when a request fails) run puts, linearizable gets and compare-and-set txns on a
//! few keys and record when each operation was invoked and when it completed. Meanwhile a
//! nemesis does its faults: kills the leader with SIGKILL and restarts it, cuts the new
//! leader off from its peers; drops, delays (reorders) and duplicates raft messages on
//! every member; makes the leader deaf to one follower (an asymmetric partition); pauses
//! the leader with SIGSTOP for two election timeouts (issue 10 item 8). The recorded
//! history is then verified by the checker in `rivet-tools` (Wing & Gong search with
//! memoisation, a register per key; a failed or timed-out write is indeterminate: it may
//! have happened at any time after its invocation, or never).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{wait_until, Cluster};
use common::http_get;
use common::rng::Rng;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use rivet_tools::linearizability::{check, to_text, Event, Op, Outcome, Verdict};

const CLIENTS: u64 = 8;
const KEYS: &[&str] = &["lin-a", "lin-b", "lin-c"];
/// How long one operation may take before it counts as indeterminate.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// One client's loop: random operations until `stop`, each recorded with its times.
async fn run_client(
    mut id: u64,
    endpoints: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
) {
    let mut rng = Rng::new(0x11ea_0000 + id);
    let mut member = id as usize % endpoints.len();
    let mut client: Option<Client> = None;
    let mut sequence = 0u64;
    // The last value this client saw per key: what its CAS operations expect.
    let mut seen: Vec<Option<String>> = vec![None; KEYS.len()];
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(OPERATION_TIMEOUT);
            let url = format!("http://{}", endpoints[member]);
            match tokio::time::timeout(OPERATION_TIMEOUT, Client::connect([url], Some(options)))
                .await
            {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    member = (member + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        let k = rng.below(KEYS.len());
        let key = KEYS[k].to_string();
        sequence += 1;
        let value = format!("c{id}-{sequence}");
        let choice = rng.below(10);
        let op = match choice {
            0..=3 => Op::Get { key: key.clone() },
            4..=6 => Op::Put {
                key: key.clone(),
                value: value.clone(),
            },
            _ => Op::Cas {
                key: key.clone(),
                expected: seen[k].clone(),
                new: value.clone(),
            },
        };
        let invoke_ns = start.elapsed().as_nanos() as u64;
        let outcome = match &op {
            Op::Get { key } => tokio::time::timeout(OPERATION_TIMEOUT, c.get(key.as_str(), None))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| {
                    let value = r
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    seen[k] = value.clone();
                    Outcome::Get(value)
                }),
            Op::Put { key, value } => {
                tokio::time::timeout(OPERATION_TIMEOUT, c.put(key.as_str(), value.as_str(), None))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|_| {
                        seen[k] = Some(value.clone());
                        Outcome::Put
                    })
            }
            Op::Cas { key, expected, new } => {
                let compare = match expected {
                    Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                    None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.as_str(), new.as_str(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                tokio::time::timeout(OPERATION_TIMEOUT, c.txn(txn))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| {
                        if r.succeeded() {
                            seen[k] = Some(new.clone());
                        } else {
                            seen[k] = r.op_responses().into_iter().find_map(|op| match op {
                                etcd_client::TxnOpResponse::Get(g) => g
                                    .kvs()
                                    .first()
                                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                                _ => None,
                            });
                        }
                        Outcome::Cas(r.succeeded())
                    })
            }
        };
        let complete_ns = start.elapsed().as_nanos() as u64;
        let failed = outcome.is_none();
        history.lock().expect("history").push(Event {
            client: id,
            op,
            outcome: outcome.unwrap_or(Outcome::Unknown),
            invoke_ns,
            complete_ns,
        });
        if failed {
            // Move to the next member with a fresh connection; the next operation is a
            // new client process as far as the checker is concerned (an indeterminate
            // operation stays open forever, so this client must not issue another).
            client = None;
            member = (member + 1) % endpoints.len();
            id += CLIENTS;
        }
    }
}

/// Runs the clients against a fresh 3-member cluster while `nemesis` does its faults
/// (it calls `progress` to let the clients complete operations between steps), then
/// heals, waits for the members to converge and checks the history.
fn run_history(nemesis: impl FnOnce(&mut Cluster, &dyn Fn(&str))) {
    let mut cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let clients = {
        let (stop, history) = (stop.clone(), history.clone());
        std::thread::spawn(move || {
            common::runtime().block_on(async move {
                let tasks: Vec<_> = (0..CLIENTS)
                    .map(|id| {
                        tokio::spawn(run_client(
                            id,
                            endpoints.clone(),
                            start,
                            stop.clone(),
                            history.clone(),
                        ))
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("client task");
                }
            })
        })
    };
    let completed_since = |from: usize| {
        history.lock().expect("history")[from..]
            .iter()
            .filter(|e| e.outcome != Outcome::Unknown)
            .count()
    };
    let progress = |what: &str| {
        let mark = history.lock().expect("history").len();
        wait_until(what, Duration::from_secs(90), || {
            completed_since(mark) >= 200
        });
    };

    progress("clients complete operations");
    nemesis(&mut cluster, &progress);
    for member in &cluster.members {
        member.heal();
    }
    progress("operations complete after healing");

    stop.store(true, Ordering::Relaxed);
    clients.join().expect("clients");
    cluster.wait_converged();

    let history = std::mem::take(&mut *history.lock().expect("history"));
    let completed = history
        .iter()
        .filter(|e| e.outcome != Outcome::Unknown)
        .count();
    let writes = history
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Put | Outcome::Cas(true)))
        .count();
    eprintln!(
        "history: {} operations, {completed} completed, {writes} successful writes",
        history.len()
    );
    assert!(writes > 0);
    match check(&history, Duration::from_secs(120)) {
        Verdict::Linearizable => {}
        verdict => {
            let file = std::env::temp_dir().join("rivet-linearizability-history.txt");
            std::fs::write(&file, to_text(&history)).expect("save history");
            panic!(
                "{verdict:?}\nthe whole history is in {} (replay with rivet_tools::linearizability::from_text)",
                file.display()
            );
        }
    }
}

#[test]
fn a_history_with_a_killed_and_an_isolated_leader_is_linearizable() {
    run_history(|cluster, progress| {
        // Kill the leader; the others elect a new one and the clients move on.
        let leader = cluster.wait_for_leader(None);
        cluster.members[leader].kill9();
        cluster.wait_for_leader(Some(leader));
        progress("operations complete after the leader was killed");
        // Restart it; it catches up as a follower.
        let initial = Cluster::initial(&cluster.members);
        cluster.members[leader].start(&initial, "new", &[]);
        progress("operations complete after the old leader restarted");
        // Cut the current leader off from its peers; the majority elects another one.
        let isolated = cluster.wait_for_leader(None);
        let isolated_endpoint = cluster.members[isolated].endpoint();
        http_get(&isolated_endpoint, "/rivet/test/isolate").expect("isolate");
        cluster.wait_for_leader(Some(isolated));
        progress("operations complete while the old leader is isolated");
    });
}

/// Every member drops a share of its raft messages, then delays (and so reorders) them,
/// then duplicates them (issue 10 item 8).
#[test]
fn a_history_with_dropped_delayed_and_duplicated_messages_is_linearizable() {
    run_history(|cluster, progress| {
        for (query, what) in [
            (
                "drop=0.2",
                "operations complete while a fifth of messages are lost",
            ),
            (
                "delay_ms=120",
                "operations complete while messages are delayed",
            ),
            (
                "duplicate=0.3",
                "operations complete while messages are duplicated",
            ),
            (
                "drop=0.1&delay_ms=60&duplicate=0.2",
                "operations complete under all three",
            ),
        ] {
            for member in &cluster.members {
                member.set_faults(query);
            }
            progress(what);
        }
    });
}

/// An asymmetric partition (the leader does not hear one follower, which still hears the
/// leader), then the leader paused with SIGSTOP for two election timeouts and resumed.
#[test]
fn a_history_with_an_asymmetric_partition_and_a_paused_leader_is_linearizable() {
    run_history(|cluster, progress| {
        let leader = cluster.wait_for_leader(None);
        let follower = (leader + 1) % cluster.members.len();
        let follower_id = Cluster::member_id(
            &cluster.members[leader].endpoint(),
            &cluster.members[follower].name,
        );
        cluster.members[leader].set_faults(&format!("deaf_to={follower_id}"));
        progress("operations complete while the leader does not hear a follower");
        cluster.members[leader].heal();

        let leader = cluster.wait_for_leader(None);
        let pid = cluster.members[leader]
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .expect("running leader");
        let signal = |which: &str| {
            let status = std::process::Command::new("kill")
                .args([which, &pid])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {which} {pid}");
        };
        signal("-STOP");
        // Two election timeouts (the harness runs with --election-timeout 500).
        std::thread::sleep(Duration::from_millis(1000));
        cluster.wait_for_leader(Some(leader));
        progress("operations complete while the old leader is paused");
        signal("-CONT");
        progress("operations complete after the old leader resumed");
    });
}
