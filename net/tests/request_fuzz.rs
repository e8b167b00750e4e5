//! A request fuzzer against live servers (issue 10 item 6): a seeded sequence of every
//! client RPC with adversarial values (`common::request_fuzz`) goes to a 3-member rivet
//! cluster (each call to a member chosen by the seed) and, the same calls in the same
//! order, to a real etcd 3.4. Checked:
//! - no rivet member ever panics, exits or stops answering (every member answers Status
//!   every few calls, its process is alive, and at the end the members agree on HashKV);
//! - where etcd answers, rivet's gRPC code and message match, and the compared bodies
//!   (KV answers with header IDs cleared, watch and keep-alive control answers, …) too;
//! - the calls etcd itself panics on (`Call::etcd_panics`) go to rivet only, which must
//!   answer them.
//!
//! After the differential part a shorter rivet-only part sends what cannot stay
//! comparable: Lock and Campaign on held names, which block until the client gives up.
//!
//! CI runs a bounded run: `RIVET_FUZZ_CALLS` calls (default 1200) or 90 s, whichever
//! comes first. `RIVET_FUZZ_MINUTES=N` runs N minutes instead; `RIVET_FUZZ_SEED` replays
//! a seed (printed by every run):
//!
//!     RIVET_FUZZ_MINUTES=30 cargo test -p rivet-net --test request_fuzz -- --nocapture

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::request_fuzz::{describe, execute, txn_may_panic_etcd, Call, Generator, RawAnswer};
use common::rng::env_number;
use common::{grpc_channel, require_etcd_34, runtime, Etcd};
use rivet_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0xf022_0000_0000_0001;
/// Calls between two liveness checks of every member.
const LIVENESS_EVERY: u64 = 25;
/// How long a member may take to answer Status before it counts as stopped.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);

struct Run {
    gen: Generator,
    etcd: Option<Channel>,
    rivets: Vec<Channel>,
    /// The last calls, for reports.
    recent: VecDeque<String>,
    stats: BTreeMap<&'static str, (u64, u64)>,
    etcd_panics_sent: u64,
    calls: u64,
    seed: u64,
}

impl Run {
    /// Every rivet member answers Status in time and its process runs.
    async fn check_alive(&self, cluster: &mut Cluster, why: &str) {
        for (i, member) in cluster.members.iter_mut().enumerate() {
            assert!(
                !member.exited(),
                "seed {:#x}, after call {} ({why}): rivet member {i} exited; last calls:\n{}\nlog:\n{}",
                self.seed,
                self.calls,
                self.recent(),
                member.log_text()
            );
            let mut client = MaintenanceClient::new(self.rivets[i].clone());
            let answer =
                tokio::time::timeout(LIVENESS_TIMEOUT, client.status(StatusRequest {})).await;
            assert!(
                matches!(answer, Ok(Ok(_))),
                "seed {:#x}, after call {} ({why}): rivet member {i} does not answer Status: \
                 {answer:?}; last calls:\n{}",
                self.seed,
                self.calls,
                self.recent()
            );
        }
    }

    fn recent(&self) -> String {
        self.recent.iter().map(|c| format!("  {c}\n")).collect()
    }

    fn note(&mut self, call: &Call, member: usize) {
        self.recent.push_back(format!(
            "#{} to member {member}: {}",
            self.calls,
            describe(call)
        ));
        if self.recent.len() > 12 {
            self.recent.pop_front();
        }
    }

    /// Sends one call; compares when both answers are comparable.
    async fn step(&mut self, cluster: &mut Cluster, etcd_process: &mut Etcd, call: Call) {
        self.calls += 1;
        let member = self.gen.rng.below(self.rivets.len());
        self.note(&call, member);
        let entry = self.stats.entry(call.name()).or_default();
        entry.0 += 1;
        let etcd = self.etcd.clone().filter(|_| !call.etcd_panics());
        if call.etcd_panics() {
            self.etcd_panics_sent += 1;
        }
        let rivet_answer = execute(&self.rivets[member], &call).await;
        // Issue 10's txn shape: etcd gets it only if rivet applied it (see
        // `txn_may_panic_etcd`); what rivet refused changed nothing on either side.
        let etcd = etcd.filter(|_| !txn_may_panic_etcd(&call) || rivet_answer.error.is_none());
        let Some(etcd) = etcd else {
            // Only rivet got it: it must have answered (an error is fine).
            if rivet_answer
                .error
                .as_ref()
                .is_some_and(|(_, m)| m == "no answer in time")
            {
                self.check_alive(cluster, "a call rivet did not answer")
                    .await;
            }
            self.gen.learn(&call, &rivet_answer);
            return;
        };
        let etcd_answer = execute(&etcd, &call).await;
        if etcd_answer.error.is_some() && etcd_process.exited() {
            panic!(
                "seed {:#x}, call {}: etcd exited on it (its own panic: add the case to \
                 Call::etcd_panics); call: {}; rivet answered {:?}; etcd's log:\n{}",
                self.seed,
                self.calls,
                describe(&call),
                rivet_answer.error,
                etcd_process.log_tail(40)
            );
        }
        let (e, r) = (etcd_answer.reduce(), rivet_answer.reduce());
        if e.compared && r.compared {
            self.stats.entry(call.name()).or_default().1 += 1;
            if e != r {
                self.report(&call, member, &etcd_answer, &rivet_answer);
            }
        }
        if rivet_answer
            .error
            .as_ref()
            .is_some_and(|(_, m)| m == "no answer in time")
        {
            self.check_alive(cluster, "a call rivet did not answer")
                .await;
        }
        self.gen.learn(&call, &etcd_answer);
    }

    fn report(&self, call: &Call, member: usize, etcd: &RawAnswer, rivet: &RawAnswer) -> ! {
        panic!(
            "seed {:#x}, call {} to member {member}: rivet differs from etcd\n\
             call: {}\n etcd: {:?} {}\nrivet: {:?} {}\nlast calls:\n{}\
             replay with RIVET_FUZZ_SEED={:#x}",
            self.seed,
            self.calls,
            describe(call),
            etcd.error,
            etcd.body.as_deref().unwrap_or(""),
            rivet.error,
            rivet.body.as_deref().unwrap_or(""),
            self.recent(),
            self.seed
        );
    }
}

#[test]
fn every_request_is_answered_like_etcd_and_no_member_stops() {
    require_etcd_34();
    let seed = common::rng::seed("RIVET_FUZZ_SEED", DEFAULT_SEED);
    let minutes = env_number("RIVET_FUZZ_MINUTES", 0);
    let (time_limit, call_limit) = if minutes > 0 {
        (Duration::from_secs(minutes * 60), u64::MAX)
    } else {
        (
            Duration::from_secs(90),
            env_number("RIVET_FUZZ_CALLS", 1200),
        )
    };
    let mut etcd = Etcd::start(&[]);
    let mut cluster = Cluster::start(3, &[]);
    let started = Instant::now();
    runtime().block_on(async {
        let mut rivets = Vec::new();
        for endpoint in cluster.endpoints() {
            rivets.push(grpc_channel(&endpoint).await);
        }
        let mut run = Run {
            gen: Generator::new(seed),
            etcd: Some(grpc_channel(&etcd.endpoint()).await),
            rivets,
            recent: VecDeque::new(),
            stats: BTreeMap::new(),
            etcd_panics_sent: 0,
            calls: 0,
            seed,
        };
        for call in run.gen.prologue() {
            run.step(&mut cluster, &mut etcd, call).await;
        }
        // Differential part: nine tenths of the budget.
        let differential_calls = call_limit.saturating_sub(call_limit / 10);
        let differential_time = time_limit.mul_f64(0.9);
        while run.calls < differential_calls && started.elapsed() < differential_time {
            let mut calls = run.gen.housekeeping();
            calls.push(run.gen.next_call());
            for call in calls {
                run.step(&mut cluster, &mut etcd, call).await;
            }
            if run.calls.is_multiple_of(LIVENESS_EVERY) {
                run.check_alive(&mut cluster, "periodic check").await;
            }
        }
        let compared: u64 = run.stats.values().map(|s| s.1).sum();
        println!(
            "differential part: {} calls ({compared} compared), {} sent to rivet only \
             (etcd panics on them), in {:?}",
            run.calls,
            run.etcd_panics_sent,
            started.elapsed()
        );
        // Rivet-only part: blocking calls on held names, cancelled by the client.
        run.etcd = None;
        run.gen.differential = false;
        while run.calls < call_limit && started.elapsed() < time_limit {
            let call = run.gen.next_call();
            run.step(&mut cluster, &mut etcd, call).await;
            if run.calls.is_multiple_of(LIVENESS_EVERY) {
                run.check_alive(&mut cluster, "periodic check").await;
            }
        }
        run.check_alive(&mut cluster, "the end").await;
        println!(
            "{} calls in {:?}; per RPC (sent, compared): {:?}",
            run.calls,
            started.elapsed(),
            run.stats
        );
    });
    // The replicas applied the same entries: the same HashKV on every member.
    cluster.wait_converged();
}
