//! A deterministic simulation of a rivet cluster (issue 11): 3 or 5 members, each the real
//! raft core, applier chain, sequencer and shards (page files in a temporary directory),
//! in one thread, over a seeded network that loses, delays, reorders and duplicates
//! messages and partitions the members, with seeded crashes and restarts from the
//! simulated disk, and clients that put, compare-and-set and read linearizably.
//!
//! After each run it checks that
//! - every member applied the same entries with the same results, and a member that
//!   restarted applied the entries it replayed exactly as the first time;
//! - the members converged to the same keys, versions and history (HashKV);
//! - the clients' history, final reads of every key on every member included, is
//!   linearizable (`rivet_tools::linearizability`), so no acknowledged write was lost.
//!
//! Why the shards are the real ones on a temporary directory rather than the raft core's
//! output checked directly: a restart recovers from the shards' checkpoints (the page
//! files loaded up to the checkpoint the log names, the sequencer rebuilt from their
//! heads), snapshots are exported from and installed into page files, and linearizable
//! reads wait for the shards and read them; checking the raft core alone would leave out
//! exactly the paths where a crash or a snapshot can lose or resurrect a write.
//!
//! `cargo test -p rivet-engine --test simulation` runs `RIVET_SIM_SEEDS` seeds (default
//! [`DEFAULT_SEEDS`]) from `RIVET_SIM_SEED_START` (default 0), split over a few tests that run in
//! parallel. A failing seed prints itself; `RIVET_SIM_SEED=<seed> cargo test -p
//! rivet-engine --test simulation replay -- --nocapture` replays exactly that run and
//! prints its trace.

mod client;
mod disk;
mod link;
mod node;
mod rng;
mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rivet_engine::keyspace::RangeEnd;
use rivet_engine::messages::RangePart;
use rivet_tools::linearizability::{check, Op, Outcome, Verdict};

use sim::{Plan, Sim};

/// Seeds that found bugs, with what they found: each runs in every CI run. A change to
/// what a seed draws changes its run: check that each still fails with its bug put back,
/// and pick another seed from a run with the bug back in if not.
const REGRESSIONS: &[(u64, &str)] = &[(
    200,
    "a log write that failed while recording a checkpoint marker left the raft core \
     running; it started the same checkpoint again and the shard panicked (the member now \
     stops, as after any failed log write)",
)];

/// Runs one seed and checks it; the error says what went wrong. A panic inside the
/// engine is caught and reported the same way, with the trace so far.
fn run_seed(sim: &mut Sim) -> Result<(), String> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match run {
        Ok(Ok(())) => check_run(sim),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

fn check_run(sim: &Sim) -> Result<(), String> {
    // Replays applied what they applied the first time.
    for node in &sim.nodes {
        if let Some(divergence) = node.applied.borrow().divergences.first() {
            return Err(format!("m{} replayed differently: {divergence}", node.id));
        }
    }
    // Every member applied the same entries with the same results.
    let mut by_index: BTreeMap<u64, (u64, (u64, u64))> = BTreeMap::new();
    for node in &sim.nodes {
        for (index, applied) in &node.applied.borrow().entries {
            match by_index.get(index) {
                Some((first, theirs)) if theirs != applied => {
                    return Err(format!(
                        "index {index}: m{first} applied (term, digest) {theirs:x?}, m{} \
                         applied {applied:x?}",
                        node.id
                    ));
                }
                Some(_) => {}
                None => {
                    by_index.insert(*index, (node.id, *applied));
                }
            }
        }
    }
    // No proposal is left waiting: the ones whose clients gave up were forgotten.
    for node in &sim.nodes {
        if let Some(running) = &node.running {
            let pending = running.core.status().pending_proposals;
            if pending != 0 {
                return Err(format!(
                    "m{}: {pending} proposals still wait at the end",
                    node.id
                ));
            }
        }
    }
    // The same state everywhere: every key's version and the whole history.
    let mut states = Vec::new();
    for node in &sim.nodes {
        let running = node.running.as_ref().ok_or("a member is down at the end")?;
        let revision = running.shards[0].revision();
        let mut kvs = Vec::new();
        let mut hash = 0u32;
        for shard in &running.shards {
            if shard.revision() != revision {
                return Err(format!("m{}: shards at different revisions", node.id));
            }
            let part = RangePart {
                key: bytes::Bytes::from_static(b"\0"),
                end: RangeEnd::FromKey,
                revision,
                limit: 0,
                count_only: false,
                with_values: true,
            };
            let result = shard.range(&part).map_err(|e| e.to_string())?;
            kvs.extend(result.kvs);
            hash = hash.wrapping_add(shard.hash_kv(revision).map_err(|e| e.to_string())?);
        }
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        states.push((node.id, revision, kvs, hash));
    }
    let (first, revision, kvs, hash) = &states[0];
    for (id, other_revision, other_kvs, other_hash) in &states[1..] {
        if (other_revision, other_kvs, other_hash) != (revision, kvs, hash) {
            return Err(format!(
                "m{id} ends at revision {other_revision} with {} keys (hash {other_hash:x}); \
                 m{first} at revision {revision} with {} keys (hash {hash:x})",
                other_kvs.len(),
                kvs.len()
            ));
        }
    }
    // Every acknowledged write is in every member's history of its key (a write lost and
    // then overwritten would still let the history linearize).
    for node in &sim.nodes {
        let running = node.running.as_ref().ok_or("a member is down at the end")?;
        let mut written: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for shard in &running.shards {
            let events = shard
                .history(b"\0", &RangeEnd::FromKey, 1, shard.revision(), false)
                .map_err(|e| format!("m{}: history compacted at {}", node.id, e.0))?
                .map_err(|e| format!("m{}: history unreadable: {e}", node.id))?;
            for event in events {
                if let Some(kv) = event.kv {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    let value = String::from_utf8_lossy(&kv.value).into_owned();
                    written.entry(key).or_default().push(value);
                }
            }
        }
        for event in &sim.history {
            let acknowledged = match (&event.op, &event.outcome) {
                (Op::Put { key, value }, Outcome::Put) => Some((key, value)),
                (Op::Cas { key, new, .. }, Outcome::Cas(true)) => Some((key, new)),
                _ => None,
            };
            if let Some((key, value)) = acknowledged {
                let found = written
                    .get(key)
                    .is_some_and(|values| values.contains(value));
                if !found {
                    return Err(format!(
                        "m{}: the acknowledged write {key}={value} is not in its history",
                        node.id
                    ));
                }
            }
        }
    }
    match check(&sim.history, Duration::from_secs(20)) {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable { key, explanation } => Err(format!(
            "the history of key {key} is not linearizable:\n{explanation}"
        )),
        Verdict::Timeout { key } => Err(format!("the checker ran out of time on key {key}")),
    }
}

fn report(seed: u64, sim: &Sim, error: &str) -> String {
    let trace_tail: Vec<&String> = sim.trace.iter().rev().take(60).collect();
    let trace: Vec<&str> = trace_tail.iter().rev().map(|s| s.as_str()).collect();
    format!(
        "simulation seed {seed} failed: {error}\n{:?}\nlast events:\n{}\nreplay: \
         RIVET_SIM_SEED={seed} cargo test -p rivet-engine --test simulation replay -- \
         --nocapture",
        Plan::from_seed(seed),
        trace.join("\n")
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Seeds a plain `cargo test` runs: about a minute of CI on two cores (debug build).
const DEFAULT_SEEDS: u64 = 2000;

/// Tests run these parts of the seed range in parallel.
const PARTS: u64 = 4;

fn run_part(part: u64) {
    let count = env_u64("RIVET_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("RIVET_SIM_SEED_START").unwrap_or(0);
    let started = Instant::now();
    let mut ran = 0;
    for seed in (start..start + count).filter(|seed| seed % PARTS == part) {
        check_seed(seed, "");
        ran += 1;
    }
    println!("{ran} seeds in {:?}", started.elapsed());
}

/// Runs a seed and panics with its report if it fails.
fn check_seed(seed: u64, context: &str) {
    let mut sim = Sim::new(Plan::from_seed(seed));
    if let Err(error) = run_seed(&mut sim) {
        panic!("{context}{}", report(seed, &sim, &error));
    }
}

#[test]
fn seeds_part_0() {
    run_part(0);
}

#[test]
fn seeds_part_1() {
    run_part(1);
}

#[test]
fn seeds_part_2() {
    run_part(2);
}

#[test]
fn seeds_part_3() {
    run_part(3);
}

#[test]
fn regressions() {
    for (seed, found) in REGRESSIONS {
        check_seed(*seed, &format!("regression ({found}):\n"));
    }
}

/// `RIVET_SIM_SEED=<seed>`: one run, with its whole trace.
#[test]
fn replay() {
    let Some(seed) = env_u64("RIVET_SIM_SEED") else {
        return;
    };
    let mut sim = Sim::new(Plan::from_seed(seed));
    let result = run_seed(&mut sim);
    println!("{:?}", sim.plan);
    for line in &sim.trace {
        println!("{line}");
    }
    match result {
        Ok(()) => println!("seed {seed} passed: {} operations", sim.history.len()),
        Err(error) => panic!("{}", report(seed, &sim, &error)),
    }
}
