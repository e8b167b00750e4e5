//! One simulated member: the real raft core, applier and shards, on a simulated disk (the
//! WAL's records) and a real temporary directory (the shards' page files, staged
//! snapshots). A crash drops everything but the disk's synced records and the files; a
//! restart recovers from them exactly as `net/src/server.rs` does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use futures::FutureExt;
use rivet_api::rivetpb::Member;
use rivet_engine::layout;
use rivet_engine::messages::{ApplyMessage, RestoreChunk, ShardRequest};
use rivet_engine::page::PageOptions;
use rivet_engine::raft::{
    recover, AppliedEntry, RaftCore, RaftCoreConfig, RaftCoreLinks, RaftCoreTuning, Recovered,
};
use rivet_engine::shard::Shard;
use rivet_engine::shared::Shared;

use crate::disk::{Disk, SimLog};
use crate::link::{NoForwarding, Outgoing, Reachability, SimClock, SimPeerLink};
use crate::rng::Rng;

/// How every member of a run is configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub shard_count: usize,
    pub snapshot_count: u64,
    pub log_kept: u64,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub sync_failure_per_mille: u64,
    pub quota_bytes: u64,
    /// `--pre-vote` and `--initial-election-tick-advance`.
    pub pre_vote: bool,
    pub initial_election_tick_advance: bool,
}

/// What a member applied, by raft index: the entry's term and a digest of its bytes and
/// result. Kept across crashes, so a re-applied entry is checked against the first time.
#[derive(Default)]
pub struct AppliedLog {
    pub entries: BTreeMap<u64, (u64, u64)>,
    /// Entries applied again after a restart with another result: replay is not
    /// deterministic.
    pub divergences: Vec<String>,
}

pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub disk: Arc<Mutex<Disk>>,
    pub applied: Rc<RefCell<AppliedLog>>,
    pub running: Option<Running>,
    /// Incarnations started, for the log.
    pub starts: u64,
}

/// A started member.
pub struct Running {
    pub core: RaftCore,
    pub shards: Vec<Shard>,
    pub apply: Vec<async_channel::Receiver<ApplyMessage>>,
    pub requests: Vec<async_channel::Receiver<ShardRequest>>,
    /// Snapshot exports waiting for their shard to apply their index.
    pub exports: Vec<(usize, u64, i64, oneshot::Sender<Vec<u8>>)>,
    pub outbox: Rc<RefCell<Vec<Outgoing>>>,
}

impl Running {
    /// The index every shard applied.
    pub fn shards_applied(&self) -> u64 {
        self.shards
            .iter()
            .map(Shard::applied_index)
            .min()
            .unwrap_or(0)
    }
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Node {
    /// Starts (or restarts) the member from its disk and files.
    pub fn start(
        &mut self,
        config: &NodeConfig,
        members: &[Member],
        clock: &SimClock,
        reachability: &Rc<RefCell<Reachability>>,
        rng: &mut Rng,
    ) -> Result<(), String> {
        self.starts += 1;
        let records = self.disk.lock().expect("disk lock").records.clone();
        let state = recover(records).map_err(|e| format!("recovering the log: {e}"))?;
        let checkpoint_index = state.checkpoint.as_ref().map_or(0, |c| c.applied_index);
        let snap_dir = layout::snap_dir(&self.dir);
        std::fs::create_dir_all(&snap_dir).map_err(|e| e.to_string())?;
        rivet_engine::snapshot::finish_install(&snap_dir, checkpoint_index, config.shard_count)
            .map_err(|e| format!("finishing a staged snapshot: {e}"))?;
        let options = page_options();
        let mut shards = Vec::with_capacity(config.shard_count);
        for id in 0..config.shard_count {
            let dir = layout::shard_dir(&snap_dir, id);
            shards.push(
                Shard::open(&dir, id, checkpoint_index, options)
                    .map_err(|e| format!("opening shard {id}: {e}"))?,
            );
        }
        let (restore_tx, restore_rx) = async_channel::unbounded();
        for shard in &shards {
            let mut after: Option<bytes::Bytes> = None;
            let mut segments = shard
                .segment_views()
                .map_err(|e| format!("restoring from a shard: {e}"))?;
            loop {
                let heads = shard
                    .heads_after(after.as_deref())
                    .map_err(|e| format!("restoring from a shard: {e}"))?;
                let last = heads.last().map(|(key, _)| key.clone());
                let chunk = RestoreChunk {
                    shard: shard.id,
                    segments: std::mem::take(&mut segments),
                    heads: last.is_some().then_some(heads),
                };
                restore_tx.try_send(chunk).map_err(|e| e.to_string())?;
                if last.is_none() {
                    break;
                }
                after = last;
            }
        }
        let (apply_tx, apply): (Vec<_>, Vec<_>) = (0..config.shard_count)
            .map(|_| async_channel::unbounded())
            .unzip();
        let (request_tx, requests): (Vec<_>, Vec<_>) = (0..config.shard_count)
            .map(|_| async_channel::unbounded())
            .unzip();
        let outbox = Rc::new(RefCell::new(Vec::new()));
        let links = RaftCoreLinks {
            apply_senders: apply_tx,
            restore: restore_rx,
            peers: Box::new(SimPeerLink {
                me: self.id,
                outbox: Rc::clone(&outbox),
                reachability: Rc::clone(reachability),
                clock: clock.clone(),
            }),
            shard_requests: request_tx,
            forward: Box::new(NoForwarding),
            clock: Box::new(clock.clone()),
        };
        let raft_config = RaftCoreConfig {
            wal_dir: self.dir.join("wal-is-simulated"),
            member_id: self.id,
            cluster_id: 1,
            shard_count: config.shard_count,
            snapshot_count: config.snapshot_count,
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: config.quota_bytes,
            heartbeat_interval: config.heartbeat,
            election_ticks: config.election_ticks,
            name: format!("m{}", self.id),
            client_urls: Vec::new(),
            initial_members: members.to_vec(),
            strict_reconfig_check: true,
            cluster_token: "simulation".into(),
            snap_dir,
            pre_vote: config.pre_vote,
            initial_election_tick_advance: config.initial_election_tick_advance,
            warning_apply_duration: Duration::from_millis(100),
            simple_token_ttl: Duration::from_secs(300),
            tuning: RaftCoreTuning {
                log_entries_kept_after_checkpoint: config.log_kept,
                randomized_election_timeout: false,
                page_options: options,
                incarnation: rng.next_u64(),
            },
        };
        let recovered = Recovered {
            log: Box::new(SimLog::new(
                Arc::clone(&self.disk),
                rng.fork(),
                config.sync_failure_per_mille,
            )),
            checkpoint: state.checkpoint,
            hard_state: state.hard_state,
            entries: state.entries,
        };
        let shared = Arc::new(Shared::new(self.id, 1, config.shard_count));
        let mut core = RaftCore::start(raft_config, recovered, shared, links)
            .now_or_never()
            .expect("starting waits for nothing in the simulation")
            .map_err(|e| format!("starting the raft core: {e}"))?;
        let applied = Rc::clone(&self.applied);
        core.observe_applies(Box::new(move |entry: AppliedEntry<'_>| {
            let mut digest = fnv(0xcbf2_9ce4_8422_2325, entry.data);
            if let Some(result) = entry.result {
                digest = fnv(digest, format!("{result:?}").as_bytes());
            }
            let mut log = applied.borrow_mut();
            match log.entries.get(&entry.index) {
                Some(&(term, before)) if (term, before) != (entry.term, digest) => {
                    let divergence = format!(
                        "index {} applied again as term {} digest {digest:x}, first as term \
                         {term} digest {before:x}",
                        entry.index, entry.term
                    );
                    log.divergences.push(divergence);
                }
                Some(_) => {}
                None => {
                    log.entries.insert(entry.index, (entry.term, digest));
                }
            }
        }));
        self.running = Some(Running {
            core,
            shards,
            apply,
            requests,
            exports: Vec::new(),
            outbox,
        });
        Ok(())
    }

    /// The process dies: everything in memory is gone.
    pub fn crash(&mut self) {
        self.running = None;
    }
}

/// Small segments, so that page-file rollover runs all the time.
pub fn page_options() -> PageOptions {
    PageOptions {
        segment_bytes: 16 * 1024,
    }
}
