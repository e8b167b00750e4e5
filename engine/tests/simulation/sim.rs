//! The simulation: members, clients and a seeded world of faults, all in one thread,
//! driven by one queue of timed events. Nothing here waits for real time or a socket; a
//! run is a function of its seed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use rivet_api::rivetpb::Member;
use rivet_engine::messages::ShardRequest;
use rivet_engine::raft::PeerEvent;
use rivet_tools::linearizability::Event as HistoryEvent;

use crate::client::Client;
use crate::link::{Outgoing, Reachability, SimClock};
use crate::node::{AppliedLog, Node, NodeConfig};
use crate::rng::Rng;

/// What one seed runs: drawn from the seed, printed with a failure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub members: usize,
    pub node: NodeConfig,
    pub clients: usize,
    pub keys: usize,
    pub operations_per_client: usize,
    /// Network: messages lost, duplicated, held back (per mille).
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_per_mille: u64,
    /// Faults: a partition, crash or restart is considered this often.
    pub fault_interval_ms: u64,
    pub partitions: bool,
    pub crashes: bool,
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let members = if rng.chance(700) { 3 } else { 5 };
        let mut plan = Plan {
            seed,
            members,
            node: NodeConfig {
                shard_count: rng.between(1, 3) as usize,
                snapshot_count: rng.between(3, 40),
                log_kept: rng.between(0, 12),
                heartbeat: Duration::from_millis(10),
                election_ticks: 10,
                sync_failure_per_mille: if rng.chance(200) {
                    rng.between(1, 4)
                } else {
                    0
                },
                quota_bytes: if rng.chance(50) {
                    rng.between(2_000, 20_000)
                } else {
                    0
                },
                pre_vote: true,
                initial_election_tick_advance: true,
            },
            clients: rng.between(2, 5) as usize,
            keys: rng.between(1, 4) as usize,
            operations_per_client: rng.between(10, 40) as usize,
            drop_per_mille: if rng.chance(700) {
                rng.between(0, 80)
            } else {
                0
            },
            duplicate_per_mille: rng.between(0, 30),
            delay_per_mille: rng.between(0, 100),
            fault_interval_ms: rng.between(50, 400),
            partitions: rng.chance(700),
            crashes: rng.chance(700),
        };
        // Drawn last, so that they change nothing else of a seed's plan. etcd's defaults
        // are PreVote off and the tick advance on; rivet's tests run both ways.
        plan.node.pre_vote = rng.chance(500);
        plan.node.initial_election_tick_advance = rng.chance(500);
        plan
    }
}

#[derive(Debug)]
enum Event {
    Tick(usize),
    Deliver {
        to: usize,
        bytes: Bytes,
    },
    Snapshot {
        from: usize,
        to: usize,
        message: Bytes,
        data: Bytes,
    },
    SnapshotStatus {
        to: usize,
        target: u64,
        delivered: bool,
    },
    ShardWork(usize),
    Client(usize),
    Fault,
    Restart(usize),
}

pub struct Sim {
    pub plan: Plan,
    rng: Rng,
    clock: SimClock,
    queue: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    pub nodes: Vec<Node>,
    members: Vec<Member>,
    reachability: Rc<RefCell<Reachability>>,
    /// The partition each member is in (members in different ones cannot talk).
    partition: Vec<u32>,
    clients: Vec<Client>,
    pub history: Vec<HistoryEvent>,
    shard_work_scheduled: Vec<bool>,
    /// Faults stop at this time; the run then heals and settles.
    chaos_until_ns: u64,
    failure: Option<String>,
    /// What happened, printed with a failure.
    pub trace: Vec<String>,
    _dir: tempfile::TempDir,
}

const MS: u64 = 1_000_000;
/// How long a run may take in simulated time before it counts as stuck.
const RUN_LIMIT_NS: u64 = 120_000 * MS;

impl Sim {
    pub fn new(plan: Plan) -> Sim {
        // The page files' checkpoints fsync: on tmpfs that costs nothing, so thousands of
        // seeds fit in a CI run.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temporary directory");
        let clock = SimClock {
            base: Instant::now(),
            now_ns: Rc::new(Cell::new(0)),
        };
        let ids: Vec<u64> = (1..=plan.members as u64).collect();
        let members = ids
            .iter()
            .map(|id| Member {
                id: *id,
                name: format!("m{id}"),
                peer_urls: vec![format!("http://10.0.0.{id}:2380")],
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: *id,
                dir: dir.path().join(format!("m{id}")),
                disk: Arc::new(Mutex::new(Default::default())),
                applied: Rc::new(RefCell::new(AppliedLog::default())),
                running: None,
                starts: 0,
            })
            .collect();
        let mut rng = Rng::new(plan.seed);
        let clients = (0..plan.clients)
            .map(|i| Client {
                id: i as u64,
                node: i % plan.members,
                rng: rng.fork(),
                next_value: 0,
                pending: None,
                budget: plan.operations_per_client,
                notes: Vec::new(),
            })
            .collect();
        let chaos_until_ns = rng.between(800, 2500) * MS;
        Sim {
            rng,
            clock,
            queue: BTreeMap::new(),
            sequence: 0,
            nodes,
            members,
            reachability: Rc::new(RefCell::new(Reachability::default())),
            partition: vec![0; plan.members],
            clients,
            history: Vec::new(),
            shard_work_scheduled: vec![false; plan.members],
            chaos_until_ns,
            failure: None,
            trace: Vec::new(),
            plan,
            _dir: dir,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ns.get()
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>9.3} ms  {what}", self.now() as f64 / MS as f64);
        self.trace.push(line);
    }

    fn schedule(&mut self, after_ns: u64, event: Event) {
        self.sequence += 1;
        self.queue
            .insert((self.now() + after_ns, self.sequence), event);
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.note(format!("FAILURE: {why}"));
            self.failure = Some(why);
        }
    }

    /// Runs the whole scenario: chaos with clients, then healing, then final reads.
    pub fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        let heartbeat = self.plan.node.heartbeat.as_nanos() as u64;
        for i in 0..self.nodes.len() {
            let phase = self.rng.between(0, heartbeat);
            self.schedule(phase, Event::Tick(i));
        }
        for c in 0..self.clients.len() {
            let start = self.rng.between(0, 50 * MS);
            self.schedule(start, Event::Client(c));
        }
        if self.plan.partitions || self.plan.crashes {
            self.schedule(self.plan.fault_interval_ms * MS, Event::Fault);
        }
        // Chaos: until the faults end and every client used its budget.
        self.run_until(|sim| {
            sim.now() >= sim.chaos_until_ns
                && sim
                    .clients
                    .iter()
                    .all(|c| c.budget == 0 && c.pending.is_none())
        })?;
        self.heal();
        // Settle: every member up, one leader, everything applied everywhere.
        let mut settled_checks = 0;
        let mut next_check = self.now();
        self.run_until(|sim| {
            if sim.now() < next_check {
                return false;
            }
            next_check = sim.now() + 50 * MS;
            if sim.converged() {
                settled_checks += 1;
            } else {
                settled_checks = 0;
            }
            settled_checks >= 3
        })
        .map_err(|e| format!("{e} (the cluster did not converge after healing)"))?;
        self.final_reads()?;
        Ok(())
    }

    /// Processes events until `done` holds (checked between events).
    fn run_until(&mut self, mut done: impl FnMut(&mut Sim) -> bool) -> Result<(), String> {
        loop {
            if let Some(failure) = &self.failure {
                return Err(failure.clone());
            }
            if done(self) {
                return Ok(());
            }
            let Some(((at, _), event)) = self.queue.pop_first() else {
                return Err("nothing left to happen".into());
            };
            if at > RUN_LIMIT_NS {
                return Err(format!(
                    "still running after {} ms of simulated time",
                    at / MS
                ));
            }
            self.clock.now_ns.set(at);
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(i) => {
                let Some(running) = self.nodes[i].running.as_mut() else {
                    return;
                };
                running.core.tick();
                self.end_turn(i);
                // Each member's clock drifts a little: with fixed election timeouts, the
                // jitter is what breaks ties between candidates.
                let heartbeat = self.plan.node.heartbeat.as_nanos() as u64;
                let next = self.rng.between(heartbeat * 7 / 10, heartbeat * 13 / 10);
                self.schedule(next, Event::Tick(i));
            }
            Event::Deliver { to, bytes } => {
                let Some(running) = self.nodes[to].running.as_mut() else {
                    return;
                };
                running
                    .core
                    .handle_peer_event(PeerEvent::Message(bytes))
                    .now_or_never()
                    .expect("the simulation's I/O never waits");
                self.end_turn(to);
            }
            Event::Snapshot {
                from,
                to,
                message,
                data,
            } => {
                let reachable = self.partition[from] == self.partition[to];
                let delivered = reachable && self.nodes[to].running.is_some();
                if delivered {
                    self.note(format!(
                        "m{} receives a snapshot from m{}",
                        to + 1,
                        from + 1
                    ));
                    if let Some(running) = self.nodes[to].running.as_mut() {
                        running
                            .core
                            .handle_peer_event(PeerEvent::Snapshot { message, data })
                            .now_or_never()
                            .expect("the simulation's I/O never waits");
                    }
                    self.end_turn(to);
                }
                let latency = self.rng.between(MS / 10, 3 * MS);
                let target = self.nodes[to].id;
                self.schedule(
                    latency,
                    Event::SnapshotStatus {
                        to: from,
                        target,
                        delivered,
                    },
                );
            }
            Event::SnapshotStatus {
                to,
                target,
                delivered,
            } => {
                let Some(running) = self.nodes[to].running.as_mut() else {
                    return;
                };
                running
                    .core
                    .handle_peer_event(PeerEvent::SnapshotStatus {
                        to: target,
                        delivered,
                    })
                    .now_or_never()
                    .expect("the simulation's I/O never waits");
                self.end_turn(to);
            }
            Event::ShardWork(i) => self.shard_work(i),
            Event::Client(c) => self.client_step(c),
            Event::Fault => self.fault(),
            Event::Restart(i) => {
                if self.nodes[i].running.is_none() {
                    self.start_node(i);
                    let phase = self
                        .rng
                        .between(0, self.plan.node.heartbeat.as_nanos() as u64);
                    self.schedule(phase, Event::Tick(i));
                }
            }
        }
    }

    fn start_node(&mut self, i: usize) {
        let result = self.nodes[i].start(
            &self.plan.node,
            &self.members,
            &self.clock,
            &self.reachability,
            &mut self.rng,
        );
        match result {
            Ok(()) => {
                let starts = self.nodes[i].starts;
                self.note(format!("m{} starts (incarnation {starts})", i + 1));
                // Recovery may have handed the shards work already (nothing yet), and the
                // core has a Ready to handle.
                self.end_turn(i);
            }
            Err(e) => self.fail(format!("m{} cannot start: {e}", i + 1)),
        }
    }

    fn crash(&mut self, i: usize, why: &str) {
        if self.nodes[i].running.is_some() {
            self.note(format!("m{} crashes ({why})", i + 1));
            self.nodes[i].crash();
            self.shard_work_scheduled[i] = false;
        }
    }

    /// The end of a raft-core turn on member `i`, and what it sent.
    fn end_turn(&mut self, i: usize) {
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        let alive = running
            .core
            .end_turn()
            .now_or_never()
            .expect("the simulation's I/O never waits");
        let outgoing: Vec<Outgoing> = running.outbox.borrow_mut().drain(..).collect();
        let shard_work = running.apply.iter().any(|rx| !rx.is_empty())
            || running.requests.iter().any(|rx| !rx.is_empty())
            || !running.exports.is_empty();
        for item in outgoing {
            self.send(i, item);
        }
        if !alive {
            // The core stopped by itself: its log failed a sync (or it was removed).
            self.crash(i, "the raft core stopped");
            let after = self.rng.between(10 * MS, 300 * MS);
            self.schedule(after, Event::Restart(i));
            return;
        }
        if shard_work && !self.shard_work_scheduled[i] {
            self.shard_work_scheduled[i] = true;
            let after = self.rng.between(0, 2 * MS);
            self.schedule(after, Event::ShardWork(i));
        }
    }

    /// The network carries (or loses, duplicates, delays) what member `from` sent.
    fn send(&mut self, from: usize, item: Outgoing) {
        match item {
            Outgoing::Message { to, bytes } => {
                let to = (to - 1) as usize;
                if self.partition[from] != self.partition[to]
                    || self.rng.chance(self.plan.drop_per_mille)
                {
                    return;
                }
                let copies =
                    if self.rng.chance(self.plan.duplicate_per_mille) && !is_proposal(&bytes) {
                        2
                    } else {
                        1
                    };
                for _ in 0..copies {
                    let mut latency = self.rng.between(MS / 10, 2 * MS);
                    if self.rng.chance(self.plan.delay_per_mille) {
                        latency += self.rng.between(5 * MS, 80 * MS);
                    }
                    self.schedule(
                        latency,
                        Event::Deliver {
                            to,
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
            Outgoing::Snapshot { to, message, data } => {
                let to = (to - 1) as usize;
                let latency = self.rng.between(MS, 20 * MS);
                self.schedule(
                    latency,
                    Event::Snapshot {
                        from,
                        to,
                        message,
                        data,
                    },
                );
            }
        }
    }

    /// The shards of member `i` apply what the raft core streamed them, answer snapshot
    /// exports, and acknowledge.
    fn shard_work(&mut self, i: usize) {
        self.shard_work_scheduled[i] = false;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        let mut acks = Vec::new();
        for (shard, stream) in running.apply.iter().enumerate() {
            while let Ok(message) = stream.try_recv() {
                acks.push(running.shards[shard].handle_apply(message));
            }
        }
        for (shard, requests) in running.requests.iter().enumerate() {
            while let Ok(request) = requests.try_recv() {
                match request {
                    ShardRequest::Export {
                        index,
                        revision,
                        reply,
                    } => running.exports.push((shard, index, revision, reply)),
                    _ => panic!("the raft core asks its shards only for snapshot exports"),
                }
            }
        }
        let exports = std::mem::take(&mut running.exports);
        for (shard, index, revision, reply) in exports {
            if running.shards[shard].applied_index() >= index {
                // The simulation's disk never damages a record: an export error is a bug.
                match running.shards[shard].export(revision) {
                    Ok(records) => {
                        let _ = reply.send(records);
                    }
                    Err(e) => panic!("m{i}: shard {shard} cannot export: {e}"),
                }
            } else {
                running.exports.push((shard, index, revision, reply));
            }
        }
        for ack in acks {
            running.core.handle_ack(ack);
        }
        self.end_turn(i);
    }

    fn client_step(&mut self, c: usize) {
        let now = self.now();
        if let Some(event) = self.clients[c].poll(&self.nodes, now) {
            self.history.push(event);
        }
        let client = &mut self.clients[c];
        if client.pending.is_none() && client.budget > 0 {
            // Mostly the same member; sometimes another; never a member that is down.
            if self.nodes[client.node].running.is_none() || client.rng.chance(100) {
                client.node = client.rng.below(self.nodes.len());
            }
            let node = client.node;
            if let Some(running) = self.nodes[node].running.as_mut() {
                client.budget -= 1;
                client.start(node, running, self.plan.keys, now);
                self.end_turn(node);
            }
        }
        let notes = std::mem::take(&mut self.clients[c].notes);
        for note in notes {
            self.note(note);
        }
        let client = &mut self.clients[c];
        if client.pending.is_some() || client.budget > 0 {
            let after = client.rng.between(MS / 2, 4 * MS);
            self.schedule(after, Event::Client(c));
        }
    }

    fn fault(&mut self) {
        if self.now() >= self.chaos_until_ns {
            return;
        }
        let n = self.nodes.len();
        let down = self.nodes.iter().filter(|n| n.running.is_none()).count();
        match self.rng.below(10) {
            0..=2 if self.plan.partitions => {
                let groups = self.rng.between(2, 3) as u32;
                let partition: Vec<u32> = (0..n)
                    .map(|_| self.rng.between(0, groups as u64 - 1) as u32)
                    .collect();
                self.set_partition(partition);
            }
            3 if self.plan.partitions => {
                // Cut the leader off (ETCD_LESSONS 1): it must step down.
                if let Some(leader) = self.leader() {
                    let partition = (0..n).map(|i| u32::from(i == leader)).collect();
                    self.set_partition(partition);
                }
            }
            4..=5 => self.set_partition(vec![0; n]),
            6..=7 if self.plan.crashes && down < (n - 1) / 2 => {
                let victim = self.rng.below(n);
                if self.nodes[victim].running.is_some() {
                    self.crash(victim, "fault");
                    let after = self.rng.between(20 * MS, 800 * MS);
                    self.schedule(after, Event::Restart(victim));
                }
            }
            8 if self.plan.crashes && self.rng.chance(150) => {
                // Everyone at once: every member recovers from its disk.
                for victim in 0..n {
                    self.crash(victim, "all members crash");
                    let after = self.rng.between(10 * MS, 200 * MS);
                    self.schedule(after, Event::Restart(victim));
                }
            }
            _ => {}
        }
        let interval = self.plan.fault_interval_ms * MS;
        let next = self.rng.between(interval / 2, interval * 3 / 2);
        self.schedule(next, Event::Fault);
    }

    fn set_partition(&mut self, partition: Vec<u32>) {
        if partition == self.partition {
            return;
        }
        self.note(format!("partition {partition:?}"));
        let mut reachability = self.reachability.borrow_mut();
        reachability.cut.clear();
        for (a, pa) in partition.iter().enumerate() {
            for (b, pb) in partition.iter().enumerate() {
                if pa != pb {
                    reachability.cut.insert((a as u64 + 1, b as u64 + 1));
                }
            }
        }
        drop(reachability);
        self.partition = partition;
    }

    /// The member that leads, as the members that run see it.
    fn leader(&self) -> Option<usize> {
        self.nodes.iter().enumerate().find_map(|(i, node)| {
            let running = node.running.as_ref()?;
            (running.core.status().leader == node.id).then_some(i)
        })
    }

    /// The faults end: the network heals (no more losses, duplicates or delays) and every
    /// member that is down restarts. What follows checks liveness and the final state.
    fn heal(&mut self) {
        self.note("heal: faults end".into());
        self.plan.drop_per_mille = 0;
        self.plan.duplicate_per_mille = 0;
        self.plan.delay_per_mille = 0;
        self.set_partition(vec![0; self.nodes.len()]);
        for i in 0..self.nodes.len() {
            if self.nodes[i].running.is_none() {
                self.schedule(0, Event::Restart(i));
            }
        }
    }

    /// Every member runs, agrees on the leader and applied everything in the log, in the
    /// raft core and in every shard.
    fn converged(&self) -> bool {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            let Some(running) = node.running.as_ref() else {
                return false;
            };
            let status = running.core.status();
            if running.shards_applied() != status.applied_index {
                return false;
            }
            statuses.push(status);
        }
        let first = &statuses[0];
        first.leader != 0
            && statuses.iter().all(|s| {
                s.leader == first.leader
                    && s.applied_index == first.applied_index
                    && s.last_index == s.applied_index
            })
    }

    /// After the cluster settled, every member reads every key linearizably: a write that
    /// was acknowledged and then lost shows as a history that is not linearizable.
    fn final_reads(&mut self) -> Result<(), String> {
        let reader = self.clients.len();
        let mut client = Client {
            id: 1000,
            node: 0,
            rng: self.rng.fork(),
            next_value: 0,
            pending: None,
            budget: 0,
            notes: Vec::new(),
        };
        for node in 0..self.nodes.len() {
            for key in 0..self.plan.keys {
                let now = self.now();
                let Some(running) = self.nodes[node].running.as_mut() else {
                    return Err(format!("m{} is down for the final reads", node + 1));
                };
                client.start_read(node, running, key, now);
                self.end_turn(node);
                let deadline = self.now() + 2_000 * MS;
                let mut done = None;
                let mut next_poll = self.now();
                self.run_until(|sim| {
                    if sim.now() < next_poll {
                        return false;
                    }
                    next_poll = sim.now() + MS;
                    done = client.poll(&sim.nodes, sim.now());
                    done.is_some() || sim.now() > deadline
                })?;
                for note in std::mem::take(&mut client.notes) {
                    self.note(note);
                }
                match done {
                    Some(event) => self.history.push(event),
                    None => {
                        let pending = client.describe_pending();
                        self.trace.push(pending);
                        for (i, node) in self.nodes.iter().enumerate() {
                            if let Some(running) = &node.running {
                                let status = running.core.status();
                                let line = format!("m{} status {status:?}", i + 1);
                                self.trace.push(line);
                            }
                        }
                        return Err(format!(
                            "the final read of key {key} on m{} did not complete (reader {reader})",
                            node + 1
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether a raft message carries proposals a follower forwards to the leader. Those are
/// never duplicated: see `Plan::duplicate_per_mille`.
fn is_proposal(bytes: &[u8]) -> bool {
    use protobuf::Message as _;
    let mut message = raft::prelude::Message::default();
    message.merge_from_bytes(bytes).is_ok()
        && message.get_msg_type() == raft::prelude::MessageType::MsgPropose
}
