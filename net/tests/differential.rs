//! Differential test against a real etcd 3.4: a seeded random sequence of KV operations is
//! replayed against an etcd and a rivet started by the test, and every answer is compared
//! field by field — headers included (revision and raft_term; only the top-level
//! member_id and cluster_id, random per cluster, are ignored) — and every error by gRPC
//! code and message. The raw generated gRPC clients are used so that every field is seen.
//!
//! `RIVET_DIFF_SEED` picks the sequence (default [`DEFAULT_SEED`]), `RIVET_DIFF_STEPS` its
//! length (default [`DEFAULT_STEPS`]). A mismatch prints the seed, the step, the request
//! and both answers. After the sequence every retained revision is read back from both.
//!
//! The key space has 12 keys: etcd sorts with Go's `sort.Sort`, an insertion sort (stable)
//! for up to 12 elements; above that its order among equal sort keys is not a stable
//! sort's. With at most 12 results per range, the orders compare exactly.
//!
//! The same sequence also runs against a 3-member rivet cluster, its connections spread
//! over the members (writes forwarded by followers, linearizable reads by ReadIndex on
//! followers); there `raft_term` is left out of the comparison, as it depends on how
//! many election rounds the cluster's start took.
//!
//! And against one member that is restarted every [`RESTART_EVERY`] steps (a graceful
//! stop, which checkpoints, then a kill -9 with `--snapshot-count` small enough that a
//! checkpoint is always near): after a restart the sequencer holds no restored value and
//! reads it from the page files, so every VALUE compare, prev_kv, ignore_value and txn
//! range on an old key checks that path against etcd.
//!
//! Without `etcd` on PATH the test fails (CI installs it); it never skips.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use common::cluster::Cluster;
use common::kv_diff::{execute, report, Answer, Gen, Op, MAX_TXN_OPS};
use common::rng::env_number;
use common::{bytes, require_etcd_34, runtime, Etcd, Rivet};
use rivet_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0x5eed_e7cd_0340_0001;
const DEFAULT_STEPS: usize = 1500;
/// Connections to rivet; each request picks one, so requests land on different cores.
const RIVET_CONNECTIONS: usize = 3;

async fn connect(url: &str) -> KvClient<Channel> {
    KvClient::new(common::grpc_channel(url).await)
}

/// The two servers under comparison and the context for reports.
struct Pair<'a> {
    etcd: KvClient<Channel>,
    rivets: Vec<KvClient<Channel>>,
    /// The end of rivet's log (of every member), for reports.
    rivet_log: &'a dyn Fn() -> String,
    /// rivet is a cluster: headers are compared without `raft_term` (a cluster's term
    /// depends on how many election rounds its start took), and every read is preceded
    /// by a linearizable range on the same connection. A serializable read
    /// on a follower may lag writes acknowledged by other members — allowed, and not
    /// what etcd's single member shows — but not writes a linearizable read on the
    /// same member has already waited for.
    cluster: bool,
    /// rivet is restarted now and then: its raft term moves on at each restart (a new
    /// election), etcd's does not, so headers are compared without `raft_term`.
    restarted: bool,
    /// The last steps, for the report.
    recent: VecDeque<String>,
}

impl Pair<'_> {
    /// Sends `op` to both (to rivet over connection `connection`) and compares the answers;
    /// returns etcd's.
    async fn run(&mut self, op: &Op, connection: usize, context: impl Fn() -> String) -> Answer {
        let rivet_client = &mut self.rivets[connection % RIVET_CONNECTIONS];
        // Serializable reads: ranges, and read-only txns whose ops are all serializable
        // ranges (an empty txn among them), so simply every range and txn.
        if self.cluster && matches!(op, Op::Range(_) | Op::Txn(_)) {
            {
                let barrier = Op::Range(RangeRequest {
                    key: bytes(b"\0"),
                    count_only: true,
                    ..Default::default()
                });
                execute(rivet_client, &barrier).await;
            }
        }
        let (mut etcd_answer, mut rivet_answer) =
            tokio::join!(execute(&mut self.etcd, op), execute(rivet_client, op));
        if self.cluster || self.restarted {
            etcd_answer.clear_term();
            rivet_answer.clear_term();
        }
        if etcd_answer != rivet_answer {
            report(
                &context(),
                &self.recent,
                op,
                &etcd_answer,
                &rivet_answer,
                &(self.rivet_log)(),
            );
        }
        etcd_answer
    }

    fn remember(&mut self, line: String) {
        self.recent.push_back(line);
        if self.recent.len() > 6 {
            self.recent.pop_front();
        }
    }

    /// Reads every key at each revision in `from..=to` from both: the whole history.
    async fn read_history(&mut self, from: i64, to: i64, why: &str) {
        for revision in from..=to {
            let op = Op::Range(RangeRequest {
                key: bytes(b"\0"),
                range_end: bytes(b"\0"),
                revision,
                ..Default::default()
            });
            self.run(&op, revision as usize, || {
                format!("reading back revision {revision} {why}")
            })
            .await;
        }
    }
}

/// Steps between two read-backs of the history written since the previous one.
const HISTORY_EVERY: usize = 200;

/// What rivet runs as in a differential run.
enum Target {
    /// One member with `--shards`.
    Member(&'static str),
    /// Three members (default shards); connections spread over them, so that writes
    /// are forwarded by followers and linearizable reads go through ReadIndex there.
    Cluster,
    /// One member with `--shards`, restarted every [`RESTART_EVERY`] steps.
    Restarted(&'static str),
}

/// Steps between two restarts of [`Target::Restarted`].
const RESTART_EVERY: usize = 250;

fn differential(target: Target) {
    require_etcd_34();
    let seed = env_number("RIVET_DIFF_SEED", DEFAULT_SEED);
    let steps = env_number("RIVET_DIFF_STEPS", DEFAULT_STEPS as u64) as usize;
    let max_txn_ops = MAX_TXN_OPS.to_string();
    let etcd = Etcd::start(&["--max-txn-ops", &max_txn_ops]);
    let restarts = matches!(target, Target::Restarted(_));
    let (rivet, cluster, shards) = match target {
        Target::Restarted(shards) => (
            Some(Rivet::start(&[
                "--shards",
                shards,
                "--max-txn-ops",
                &max_txn_ops,
                "--snapshot-count",
                "40",
            ])),
            None,
            shards,
        ),
        Target::Member(shards) => (
            Some(Rivet::start(&[
                "--shards",
                shards,
                "--max-txn-ops",
                &max_txn_ops,
            ])),
            None,
            shards,
        ),
        Target::Cluster => (
            None,
            Some(Cluster::start(3, &["--max-txn-ops", &max_txn_ops])),
            "default, 3 members",
        ),
    };
    let rivet = rivet.map(RefCell::new);
    let urls: Vec<String> = match (&rivet, &cluster) {
        (Some(rivet), _) => vec![rivet.borrow().url(); RIVET_CONNECTIONS],
        (_, Some(cluster)) => cluster
            .endpoints()
            .iter()
            .map(|e| format!("http://{e}"))
            .collect(),
        _ => unreachable!("a target"),
    };
    let rivet_log = || match (&rivet, &cluster) {
        (Some(rivet), _) => rivet.borrow().log_text(),
        (_, Some(cluster)) => cluster
            .members
            .iter()
            .map(|m| format!("--- {}:\n{}", m.name, m.log_text()))
            .collect(),
        _ => String::new(),
    };
    let started = Instant::now();
    runtime().block_on(async {
        let mut rivets = Vec::new();
        for url in urls.iter().cycle().take(RIVET_CONNECTIONS) {
            rivets.push(connect(url).await);
        }
        let mut pair = Pair {
            etcd: connect(&format!("http://{}", etcd.endpoint())).await,
            rivets,
            rivet_log: &rivet_log,
            cluster: cluster.is_some(),
            restarted: restarts,
            recent: VecDeque::new(),
        };
        let reproduce = |steps: usize| {
            format!(
                "seed {seed:#x}, --shards {shards} (reproduce: RIVET_DIFF_SEED={seed:#x} \
                 RIVET_DIFF_STEPS={steps})"
            )
        };
        let mut gen = Gen::new(seed);
        let mut stats: BTreeMap<String, usize> = BTreeMap::new();
        let mut history_read = 1;
        for step in 0..steps {
            let op = gen.op();
            let connection = gen.rng.below(RIVET_CONNECTIONS);
            let answer = pair
                .run(&op, connection, || {
                    format!("at step {step} of {}", reproduce(step + 1))
                })
                .await;
            gen.observe(&op, &answer);
            let label = answer.label(&op);
            let mut line = format!("step {step}: {op:?}");
            if line.len() > 600 {
                let mut cut = 600;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" …");
            }
            pair.remember(format!("{line} -> {label}"));
            *stats.entry(label).or_default() += 1;
            if restarts && (step + 1) % RESTART_EVERY == 0 {
                let member = rivet.as_ref().expect("one member");
                let graceful = (step + 1) / RESTART_EVERY % 2 == 1;
                {
                    let mut member = member.borrow_mut();
                    if graceful {
                        member.stop();
                    } else {
                        member.kill9();
                    }
                    member.restart();
                }
                pair.rivets.clear();
                for url in urls.iter().cycle().take(RIVET_CONNECTIONS) {
                    pair.rivets.push(connect(url).await);
                }
                let how = if graceful { "stopped" } else { "killed" };
                pair.remember(format!("step {step}: rivet {how} and restarted"));
            }
            if (step + 1) % HISTORY_EVERY == 0 || step + 1 == steps {
                // Everything written since the last read-back that is not compacted, and
                // the revision just below the compaction (an error).
                let from = history_read.max(gen.compacted - 1).max(1);
                let why = format!("after step {step} of {}", reproduce(step + 1));
                pair.read_history(from, gen.revision, &why).await;
                history_read = gen.revision + 1;
            }
        }
        println!(
            "seed {seed:#x}, --shards {shards}: {steps} steps equal in {:.1?}; revision {}, \
             compacted at {}",
            started.elapsed(),
            gen.revision,
            gen.compacted
        );
        for (label, count) in &stats {
            println!("  {count:6}  {label}");
        }
    });
}

#[test]
fn differential_against_etcd_one_shard() {
    differential(Target::Member("1"));
}

#[test]
fn differential_against_etcd_three_shards() {
    differential(Target::Member("3"));
}

#[test]
fn differential_against_etcd_restarted_member() {
    differential(Target::Restarted("2"));
}

#[test]
fn differential_against_etcd_three_members() {
    differential(Target::Cluster);
}
