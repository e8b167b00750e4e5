//! Linearizability of a 3-member rivet cluster under faults (issue 3, ETCD_LESSONS 1).
//!
//! Concurrent clients (the `etcd-client` crate, each pinned to one member and moving to the
//! next when a request fails) run puts, linearizable gets and compare-and-set txns on a
//! few keys and record when each operation was invoked and when it completed. Meanwhile a
//! nemesis kills the leader with SIGKILL and restarts it, then cuts the new leader off
//! from its peers and heals it. The recorded history is then verified by the checker in
//! `rivet-tools` (Wing & Gong search with memoisation, a register per key; a failed or
//! timed-out write is indeterminate: it may have happened at any time after its
//! invocation, or never).

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

#[test]
fn a_history_with_a_killed_and_an_isolated_leader_is_linearizable() {
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
        wait_until(what, Duration::from_secs(60), || {
            completed_since(mark) >= 400
        });
    };

    progress("clients complete operations");
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
    http_get(&isolated_endpoint, "/rivet/test/heal").expect("heal");
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
