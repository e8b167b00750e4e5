//! Building the raft core at start: the replicated state from the last checkpoint (the
//! sequencer rebuilt from the heads the shards stream, the lease table, alarms and members
//! from the checkpoint marker), and the raft node from the log after it.

use std::sync::Arc;

use raft::prelude::{ConfState, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode};

use super::config::{RaftCoreConfig, StartError};
use super::log::Recovered;
use super::{ready, RaftCore, RaftCoreLinks, Stop};
use crate::apply::alarms::Alarms;
use crate::apply::{Applier, ApplyState};
use crate::auth::{AuthState, AuthStore};
use crate::keyspace::shard_of;
use crate::lessor::Lessor;
use crate::limits;
use crate::membership::MemberTable;
use crate::sequencer::Sequencer;
use crate::shared::Shared;

/// Forwards raft-rs's slog records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
fn min_lease_ttl(config: &RaftCoreConfig) -> i64 {
    let election = config.heartbeat_interval * config.election_ticks as u32;
    (election.as_millis() as i64 * 3 / 2 + 999) / 1000
}

impl RaftCore {
    /// Builds the raft node from the recovered log and the sequencer state the shards
    /// restored (received through `links.restore`).
    pub async fn start(
        config: RaftCoreConfig,
        recovered: Recovered,
        shared: Arc<Shared>,
        links: RaftCoreLinks,
    ) -> Result<RaftCore, StartError> {
        let RaftCoreLinks {
            apply_senders,
            restore,
            peers,
            shard_requests,
            forward,
            clock,
        } = links;
        let (revision, compact_revision, applied) = match &recovered.checkpoint {
            Some(c) => (c.revision, c.compact_revision, c.applied_index),
            None => (1, -1, 0),
        };
        let mut sequencer = Sequencer::restore(revision, compact_revision);
        if let Some(c) = &recovered.checkpoint {
            for lease in &c.leases {
                sequencer.restore_lease(lease.id, lease.ttl, lease.remaining_ttl);
            }
        }
        let mut done = 0;
        while done < config.shard_count {
            let Ok(chunk) = restore.recv().await else {
                return Err(StartError::Raft("a shard stopped while restoring".into()));
            };
            sequencer.restore_segments(chunk.shard, chunk.segments);
            match chunk.heads {
                Some(heads) => {
                    for (key, head) in heads {
                        debug_assert_eq!(shard_of(&key, config.shard_count), chunk.shard);
                        sequencer.restore_stored_key(chunk.shard, key, head);
                    }
                }
                None => done += 1,
            }
        }
        sequencer.release_unused_segments();
        // Where the raft log starts: at the last checkpoint; for a new cluster, at a
        // bootstrap snapshot (index 1, term 1) holding the initial voters, as etcd
        // bootstraps with membership entries at term 1; a member joining an existing
        // cluster starts empty and receives a snapshot from the leader.
        let mut applied = applied;
        let (base, members) = match &recovered.checkpoint {
            Some(c) => {
                let conf_state = super::force_new::checkpoint_conf_state(c)?;
                let members = c
                    .membership
                    .as_ref()
                    .map(MemberTable::from_proto)
                    .unwrap_or_default();
                (Some((c.applied_index, c.term, conf_state)), members)
            }
            None if !config.initial_members.is_empty() => {
                let voters: Vec<u64> = config.initial_members.iter().map(|m| m.id).collect();
                applied = applied.max(1);
                (
                    Some((1, 1, ConfState::from((voters, vec![])))),
                    MemberTable::from_members(config.initial_members.clone()),
                )
            }
            None => (None, MemberTable::default()),
        };
        let storage = MemStorage::new();
        if let Some((index, term, conf_state)) = base {
            let mut snapshot = Snapshot::default();
            let metadata = snapshot.mut_metadata();
            metadata.index = index;
            metadata.term = term;
            metadata.set_conf_state(conf_state);
            storage
                .wl()
                .apply_snapshot(snapshot)
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        // raft-rs's log storage panics on entries that do not continue it, and every
        // entry in this member's log was proposed by rivet or checked when a peer sent
        // it: anything else is a damaged WAL, and the member refuses to start naming it.
        crate::check::contiguous_entries(
            &recovered.entries,
            raft::Storage::last_index(&storage).unwrap_or(applied),
        )
        .map_err(|(index, reason)| StartError::Decode {
            what: "entry",
            index,
            reason,
        })?;
        if let Some((index, reason)) = recovered.entries.iter().find_map(|entry| {
            super::validate::entry_problem(entry).map(|problem| (entry.index, problem))
        }) {
            return Err(StartError::Decode {
                what: "entry",
                index,
                reason,
            });
        }
        let last_index = recovered.entries.last().map_or(applied, |e| e.index);
        storage
            .wl()
            .append(&recovered.entries)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let mut hard_state = recovered.hard_state.clone();
        hard_state.term = hard_state
            .term
            .max(raft::Storage::initial_state(&storage).map_or(0, |s| s.hard_state.term));
        // Entries up to the checkpoint were applied, hence committed, even if the hard
        // state written before the crash carried an older commit index.
        hard_state.commit = hard_state.commit.max(applied).min(last_index.max(applied));
        storage.wl().set_hardstate(hard_state);

        let mut raft_config = Config {
            id: config.member_id,
            election_tick: config.election_ticks,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: limits::RAFT_MESSAGE_BYTES_MAX,
            max_inflight_msgs: limits::RAFT_INFLIGHT_MESSAGES_MAX,
            pre_vote: config.pre_vote,
            check_quorum: true,
            ..Default::default()
        };
        if !config.tuning.randomized_election_timeout {
            raft_config.min_election_tick = config.election_ticks;
            raft_config.max_election_tick = config.election_ticks + 1;
        }
        raft_config
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
        let mut node = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // A single voter elects itself at once instead of waiting an election timeout.
        let voters = node.raft.prs().conf().voters().ids();
        if voters.len() == 1 && voters.contains(config.member_id) {
            node.campaign()
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        let alarms = recovered
            .checkpoint
            .as_ref()
            .map(|c| Alarms::from_list(c.alarms.clone()))
            .unwrap_or_default();
        let auth = match recovered.checkpoint.as_ref().and_then(|c| c.auth.clone()) {
            Some(auth) => AuthState::from_proto(auth).map_err(|e| StartError::Decode {
                what: "checkpoint auth store",
                index: applied,
                reason: e.to_string(),
            })?,
            None => AuthState::default(),
        };
        let state = ApplyState {
            sequencer,
            alarms,
            members,
            lessor: Lessor::default(),
            auth: AuthStore::from_state(auth),
            auth_changes: Default::default(),
        };
        let applier = Applier::new(state, min_lease_ttl(&config));
        crate::metrics::AUTH_REVISION.set(applier.auth().revision());
        let now = clock.now();
        let member_id = config.member_id;
        let config_advance_from = config.initial_election_tick_advance.then_some(now);
        let incarnation = config.tuning.incarnation;
        let core = RaftCore {
            checkpoints: super::checkpoint::Checkpoints::new(config.snapshot_count, applied)
                .with_compact_revision(compact_revision),
            shards: ready::Shards::new(apply_senders, shard_requests),
            config,
            node,
            log: recovered.log,
            peers,
            clock,
            forward,
            shared,
            applier,
            applied_index: applied,
            waiters: ready::Waiters::new(incarnation),
            reads: super::read_index::ReadIndexQueue::new(member_id, incarnation),
            exports: super::snapshot::Exports::default(),
            last_lease_checkpoint: now,
            nospace_proposed: false,
            attributes_proposed: false,
            move_leader: None,
            stop: Stop::default(),
            initial_ticks_from: config_advance_from,
            observer: None,
            released_segments: Vec::new(),
            faults: super::faults::Faults::new(incarnation),
            compactor: None,
            snapshot_streams: Default::default(),
        };
        core.update_peers();
        Ok(core)
    }
}
