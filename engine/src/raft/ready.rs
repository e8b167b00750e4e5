//! The Ready protocol, proposals, and committed entries through the applier.
//!
//! A Ready is handled in raft-rs's order: messages that may go out at once are sent;
//! committed entries are applied and streamed to the shards; new entries and the hard
//! state are made durable (one write, one fdatasync); then the messages that had to wait
//! for that fdatasync go out, raft advances, and what the advance committed is applied
//! too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message as RaftMessage, MessageType};
use raft::StateRole;
use rivet_api::etcdserverpb::{alarm_request, AlarmRequest, AlarmType, TxnRequest};
use rivet_api::rivetpb::{internal_request, InternalRequest};

use super::{log, AppliedEntry, RaftCore};
use crate::apply::{quota, ApplyContext};
use crate::error::EtcdError;
use crate::keyspace::shard_of;
use crate::limits;
use crate::messages::{
    ApplyBatch, ApplyMessage, MemberChangeResult, ReadPoint, Reply, ShardAck, ShardRequest,
};
use crate::sequencer::Outcome;

/// The raft core's side of the shards: their apply streams, their request channels (for
/// snapshot exports) and the page file sizes they last reported.
pub struct Shards {
    pub apply: Vec<async_channel::Sender<ApplyMessage>>,
    pub requests: Vec<async_channel::Sender<ShardRequest>>,
    /// Page file sizes the shards read from disk with their last acknowledgement.
    sizes: Vec<u64>,
    /// Their sum: the store's size, checked against the quota.
    pub db_size_bytes: u64,
}

impl Shards {
    pub fn new(
        apply: Vec<async_channel::Sender<ApplyMessage>>,
        requests: Vec<async_channel::Sender<ShardRequest>>,
    ) -> Shards {
        let count = apply.len();
        Shards {
            apply,
            requests,
            sizes: vec![0; count],
            db_size_bytes: 0,
        }
    }

    pub fn acknowledged(&mut self, ack: &ShardAck) {
        if let Some(size) = self.sizes.get_mut(ack.shard) {
            *size = ack.size_bytes;
        }
        self.db_size_bytes = self.sizes.iter().sum();
    }

    /// Sends every shard its message, in shard order; a shard that stopped is logged.
    pub async fn send_all(&self, mut message: impl FnMut(usize) -> ApplyMessage) {
        for (shard, sender) in self.apply.iter().enumerate() {
            if sender.send(message(shard)).await.is_err() {
                tracing::warn!(shard, "shard stopped; its apply stream is closed");
            }
        }
    }

    /// Closes the apply streams: the shards' apply loops end.
    pub fn close(&mut self) {
        self.apply.clear();
    }
}

/// A request proposed here, waiting for its entry to apply.
enum Waiter {
    Write(oneshot::Sender<Result<Reply, EtcdError>>),
    Member(oneshot::Sender<Result<MemberChangeResult, EtcdError>>),
}

/// The requests proposed by this member, by proposal id (the `id` of the entry's
/// `InternalRequest` or membership context). IDs start at the start's incarnation number,
/// so that an entry proposed before a restart that commits after it finds no waiter.
pub struct Waiters {
    next_id: u64,
    waiting: HashMap<u64, Waiter>,
}

impl Waiters {
    pub fn new(incarnation: u64) -> Waiters {
        Waiters {
            next_id: incarnation,
            waiting: HashMap::new(),
        }
    }

    /// The id for the next proposal; never 0 (internal requests that answer nobody).
    pub fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub fn wait_write(&mut self, id: u64, reply: oneshot::Sender<Result<Reply, EtcdError>>) {
        self.waiting.insert(id, Waiter::Write(reply));
    }

    pub fn wait_member(
        &mut self,
        id: u64,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        self.waiting.insert(id, Waiter::Member(reply));
    }

    /// The write waiting for proposal `id`, if any.
    pub fn take_write(&mut self, id: u64) -> Option<oneshot::Sender<Result<Reply, EtcdError>>> {
        match self.waiting.remove(&id)? {
            Waiter::Write(reply) => Some(reply),
            other => {
                self.waiting.insert(id, other);
                None
            }
        }
    }

    /// The membership change waiting for proposal `id`, if any.
    pub fn take_member(
        &mut self,
        id: u64,
    ) -> Option<oneshot::Sender<Result<MemberChangeResult, EtcdError>>> {
        match self.waiting.remove(&id)? {
            Waiter::Member(reply) => Some(reply),
            other => {
                self.waiting.insert(id, other);
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Forgets the proposals nobody waits for any more (the asking core gave up: the
    /// client's request timed out). Their entries may still apply, or never: raft drops a
    /// proposal a leader change loses, and a forwarded proposal the network lost, without
    /// a word; without this their waiters would stay for as long as the member runs.
    pub fn drop_abandoned(&mut self) {
        self.waiting.retain(|_, waiter| match waiter {
            Waiter::Write(reply) => !reply.is_canceled(),
            Waiter::Member(reply) => !reply.is_canceled(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn fail_all(&mut self, error: EtcdError) {
        for (_, waiter) in self.waiting.drain() {
            match waiter {
                Waiter::Write(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Waiter::Member(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The answer to a proposal whose entry at `index` applied with `outcome`.
pub fn reply_of(index: u64, outcome: Outcome) -> Result<Reply, EtcdError> {
    match outcome.result {
        Some(Ok(applied)) => Ok(Reply {
            index,
            applied,
            historical_ranges: outcome.historical_ranges,
        }),
        Some(Err(e)) => Err(e),
        None => Err(EtcdError::Internal("empty request".into())),
    }
}

/// Merges the proposals a follower forwards to its leader into one message per run.
/// raft-rs makes one `MsgPropose` per proposal (one entry each), so a follower under load
/// sent one peer message per client write, each encoded, framed and stepped on its own
/// by the leader. Consecutive proposals to the same leader become one message with their
/// entries in order, up to [`limits::RAFT_MESSAGE_BYTES_MAX`] of entry bytes; the leader
/// appends a proposal's entries in order either way. Other messages keep their place.
pub(super) fn coalesce_proposals(messages: Vec<RaftMessage>) -> Vec<RaftMessage> {
    let proposal_bytes = |message: &RaftMessage| -> u64 {
        message
            .get_entries()
            .iter()
            .map(|entry| (entry.get_data().len() + entry.get_context().len()) as u64)
            .sum()
    };
    let is_proposal = |message: &RaftMessage| message.get_msg_type() == MessageType::MsgPropose;
    if messages
        .iter()
        .filter(|message| is_proposal(message))
        .nth(1)
        .is_none()
    {
        // Nothing to merge (a leader's Ready, an idle follower's): no copy.
        return messages;
    }
    let mut merged: Vec<RaftMessage> = Vec::with_capacity(messages.len());
    let mut last_bytes = 0;
    for mut message in messages {
        if !is_proposal(&message) {
            merged.push(message);
            continue;
        }
        let bytes = proposal_bytes(&message);
        if let Some(last) = merged.last_mut().filter(|last| {
            is_proposal(last)
                && last.to == message.to
                && last.from == message.from
                && last.term == message.term
                && last_bytes + bytes <= limits::RAFT_MESSAGE_BYTES_MAX
        }) {
            for entry in message.take_entries() {
                last.mut_entries().push(entry);
            }
            last_bytes += bytes;
            continue;
        }
        last_bytes = bytes;
        merged.push(message);
    }
    merged
}

impl RaftCore {
    /// Proposes a client write: checks its size and etcd's quota first.
    pub(super) fn propose(
        &mut self,
        request: internal_request::Request,
        caller: Option<rivet_api::rivetpb::AuthCaller>,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    ) {
        if self.node.raft.state != StateRole::Leader && self.node.raft.leader_id == raft::INVALID_ID
        {
            let _ = reply.send(Err(EtcdError::NoLeader));
            return;
        }
        let id = self.waiters.next_id();
        let cost = quota::cost(&request);
        let internal = InternalRequest {
            member_id: self.config.member_id,
            id,
            request: Some(request),
            caller,
        };
        let data = internal.encode_to_vec();
        if data.len() > self.config.max_request_bytes {
            let _ = reply.send(Err(EtcdError::RequestTooLarge));
            return;
        }
        let quota = self.config.quota_backend_bytes;
        if !quota::admits(cost, data.len(), self.shards.db_size_bytes, quota) {
            self.raise_nospace();
            let _ = reply.send(Err(EtcdError::NoSpace));
            return;
        }
        match self.node.propose(Vec::new(), data) {
            Ok(()) => self.waiters.wait_write(id, reply),
            Err(raft::Error::ProposalDropped) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                let _ = reply.send(Err(EtcdError::NoLeader));
            }
            Err(e) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                let _ = reply.send(Err(EtcdError::Internal(e.to_string())));
            }
        }
    }

    /// Proposes an internal request that answers nobody (alarms, lease revokes and
    /// checkpoints, member attributes).
    pub(super) fn propose_internal(
        &mut self,
        request: internal_request::Request,
    ) -> raft::Result<()> {
        let internal = InternalRequest {
            member_id: self.config.member_id,
            id: 0,
            request: Some(request),
            caller: None,
        };
        self.node.propose(Vec::new(), internal.encode_to_vec())
    }

    /// Proposes etcd's NOSPACE alarm for this member (once).
    fn raise_nospace(&mut self) {
        if self.applier.alarms().is_raised(AlarmType::Nospace) || self.nospace_proposed {
            return;
        }
        self.nospace_proposed = true;
        tracing::warn!(
            quota = self.config.quota_backend_bytes,
            size = self.shards.db_size_bytes,
            "database space exceeded; raising the NOSPACE alarm"
        );
        let alarm = internal_request::Request::Alarm(AlarmRequest {
            action: alarm_request::AlarmAction::Activate as i32,
            member_id: self.config.member_id,
            alarm: AlarmType::Nospace as i32,
        });
        if self.propose_internal(alarm).is_err() {
            self.nospace_proposed = false;
        }
    }

    pub(super) fn answer_read_only_txn(
        &mut self,
        request: TxnRequest,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    ) {
        let outcome = self.applier.read_only_txn(&request);
        let _ = reply.send(reply_of(self.applied_index, outcome));
    }

    /// Answers the reads whose index this member has applied. The asking core then waits
    /// for every shard to apply it too, before it reads.
    fn release_reads(&mut self) {
        for batch in self.reads.ready(self.applied_index) {
            let point = ReadPoint {
                index: self.applied_index,
                revision: self.applier.sequencer().revision(),
            };
            for reply in batch.reads {
                let _ = reply.send(Ok(point));
            }
            for (request, reply) in batch.txns {
                self.answer_read_only_txn(request, reply);
            }
        }
    }

    pub(super) async fn handle_ready(&mut self) -> Result<(), String> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(soft) = ready.ss() {
            let previous = self.shared.leader.swap(soft.leader_id, Ordering::AcqRel);
            let me = self.config.member_id;
            let term = self.node.raft.term;
            if soft.leader_id != previous && soft.leader_id != raft::INVALID_ID {
                crate::metrics::LEADER_CHANGES.inc();
                // etcd's raft.node lines, which operators grep for.
                tracing::info!(target: "raft", "raft.node: {me:x} elected leader {:x} at term {term}", soft.leader_id);
            } else if soft.leader_id != previous {
                tracing::info!(target: "raft", "raft.node: {me:x} lost leader {previous:x} at term {term}");
            }
            if soft.raft_state == StateRole::Follower && soft.leader_id != previous {
                tracing::info!(target: "raft", "{me:x} became follower at term {term}");
            }
            crate::metrics::HAS_LEADER.set(u64::from(soft.leader_id != raft::INVALID_ID));
            crate::metrics::IS_LEADER.set(u64::from(soft.raft_state == StateRole::Leader));
            self.leadership_changed(soft.raft_state == StateRole::Leader);
            if soft.leader_id != raft::INVALID_ID {
                self.check_move_leader();
            }
            if soft.raft_state == StateRole::Leader {
                tracing::info!(
                    member = format_args!("{:x}", self.config.member_id),
                    "became leader"
                );
            }
        }
        // The leader's messages go out before its own fdatasync (raft allows it), so the
        // followers' fdatasyncs overlap the leader's. The transport's tasks run on this
        // thread's runtime and the log append below blocks it: let the transport put the
        // messages on the wire first (otherwise the followers would start only after the
        // leader's fdatasync, and a commit would take two in a row) — after handing
        // committed entries to the shards, which the flush must not delay.
        let messages = ready.take_messages();
        let sent = !messages.is_empty();
        self.send_messages(messages);
        if !ready.snapshot().is_empty() {
            // The state was installed when the snapshot arrived (`install_snapshot`); here
            // raft's log storage moves to it.
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            self.node
                .mut_store()
                .wl()
                .apply_snapshot(snapshot)
                .map_err(|e| format!("applying snapshot {index} to the raft log: {e}"))?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed).await?;
        if let Some(sequence) = self.submit_ready(&ready)? {
            if sent && !ready.entries().is_empty() {
                self.peers.flush().await;
            }
            self.log.wait_durable(sequence).map_err(|e| e.to_string())?;
            let store = self.node.mut_store();
            store
                .wl()
                .append(ready.entries())
                .map_err(|e| e.to_string())?;
            if let Some(hs) = ready.hs() {
                store.wl().set_hardstate(hs.clone());
            }
        }
        let messages = ready.take_persisted_messages();
        self.send_messages(messages);
        for state in ready.take_read_states() {
            self.reads
                .answered(state.request_ctx.as_slice(), state.index);
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .wl()
                .mut_hard_state()
                .set_commit(commit);
        }
        let messages = light.take_messages();
        self.send_messages(messages);
        let committed = light.take_committed_entries();
        self.apply_entries(committed).await?;
        self.node.advance_apply();
        self.release_replicated_log();
        self.shared
            .term
            .store(self.node.raft.term, Ordering::Release);
        self.release_reads();
        crate::metrics::PROPOSALS_COMMITTED.set(self.node.raft.raft_log.committed);
        crate::metrics::PROPOSALS_APPLIED.set(self.applied_index);
        crate::metrics::PROPOSALS_PENDING.set(self.waiters.len() as u64);
        Ok(())
    }

    /// Hands the entries and hard state of one Ready to the log storage: one write (and
    /// one fdatasync) for all of them. `None` when nothing needs to be durable.
    ///
    /// As etcd (`raft.MustSync`), a hard state whose term and vote did not change is not
    /// written on its own: only its commit index moved, which need not be durable (a
    /// restarted member starts from its checkpoint's applied index and learns the rest of
    /// the commit index again from the leader, or as a single member by committing its
    /// log). Writing it cost a second fdatasync per write on a leader of several members,
    /// after the followers acknowledged. So the log's hard state may lag in commit index
    /// only; recovery raises it to the checkpoint's applied index.
    fn submit_ready(&mut self, ready: &raft::Ready) -> Result<Option<u64>, String> {
        let entries = ready.entries();
        let hard_state = ready.hs();
        if entries.is_empty() {
            if let Some(hs) = hard_state {
                let store = self.node.mut_store();
                let previous = store.rl().hard_state().clone();
                if hs.term == previous.term && hs.vote == previous.vote {
                    store.wl().set_hardstate(hs.clone());
                    return Ok(None);
                }
            }
        }
        if entries.is_empty() && hard_state.is_none() {
            return Ok(None);
        }
        let records = log::ready_records(entries, hard_state)?;
        let sequence = self.log.submit(records).map_err(|e| e.to_string())?;
        Ok(Some(sequence))
    }

    pub(super) fn send_messages(&mut self, messages: Vec<RaftMessage>) {
        for message in coalesce_proposals(messages) {
            let to = message.to;
            if message.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                self.export_snapshot(message);
                continue;
            }
            let copies = match self.faults.fate(&message, self.clock.now()) {
                super::faults::Fate::Send => 1,
                super::faults::Fate::Drop => continue,
                super::faults::Fate::Duplicate => 2,
                super::faults::Fate::Delay(until) => {
                    self.faults.delayed.push((until, to, message));
                    continue;
                }
            };
            let bytes = match message.write_to_bytes() {
                Ok(bytes) => bytes::Bytes::from(bytes),
                Err(e) => {
                    tracing::error!("cannot encode a raft message: {e}");
                    continue;
                }
            };
            for _ in 0..copies {
                if !self.peers.send(to, bytes.clone()) {
                    self.node.report_unreachable(to);
                }
            }
        }
    }

    /// Applies committed entries in order and streams the changes to the shards: one
    /// batch per shard (every shard gets one, so that each acknowledges the index).
    ///
    /// An entry rivet could not have proposed ([`super::validate`]) stops the member:
    /// peers' entries are checked before raft sees them, so it came from a damaged local
    /// log, and applying around it would fork this replica from the others. What came
    /// before it is applied and streamed; the applied index stays below it.
    async fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let applying = (
            entries.len(),
            entries.first().map_or(0, |e| e.index),
            entries.last().map_or(0, |e| e.index),
        );
        let shard_count = self.config.shard_count;
        let mut batches: Vec<ApplyBatch> =
            (0..shard_count).map(|_| ApplyBatch::default()).collect();
        let mut compaction = None;
        let mut replies = Vec::new();
        let mut damaged = None;
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            // Normal entries and conf changes are checked as they are decoded below;
            // the one other kind is checked here.
            let problem = (entry.get_entry_type() == EntryType::EntryConfChangeV2)
                .then(|| super::validate::entry_problem(&entry))
                .flatten();
            if let Some(problem) = problem {
                damaged = Some(format!(
                    "the raft log holds an entry rivet could not have proposed at index {}: \
                     {problem} (damaged log)",
                    entry.index
                ));
                break;
            }
            if entry.get_entry_type() == EntryType::EntryConfChange {
                if let Err(e) = self.apply_conf_change(&entry) {
                    damaged = Some(e);
                    break;
                }
                self.applied_index = entry.index;
                self.observe(&entry, None);
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // The leader's empty entry of a new term.
                self.applied_index = entry.index;
                self.observe(&entry, None);
                continue;
            }
            let request = match rivet_api::rivetpb::decode_internal_request(entry.data.as_ref()) {
                Ok(request) => request,
                Err(e) => {
                    damaged = Some(format!(
                        "the raft log holds an undecodable entry at index {}: {e}",
                        entry.index
                    ));
                    break;
                }
            };
            self.applied_index = entry.index;
            let mut outcome = self.apply_request(&entry, &request);
            if let Some(revision) = outcome.compaction {
                compaction = Some(revision);
            }
            for mutation in std::mem::take(&mut outcome.mutations) {
                let shard = shard_of(mutation.key(), shard_count);
                batches[shard].mutations.push(mutation);
            }
            if request.member_id == self.config.member_id {
                if let Some(reply) = self.waiters.take_write(request.id) {
                    replies.push((reply, reply_of(entry.index, outcome)));
                }
            }
        }
        let index = self.applied_index;
        let revision = self.applier.sequencer().revision();
        let (auth, tokens) = self.auth_updates();
        let mut batches = batches.into_iter();
        self.shards
            .send_all(|_| {
                let mut batch = batches.next().unwrap_or_default();
                batch.index = index;
                batch.revision = revision;
                batch.compaction = compaction;
                batch.auth = auth.clone();
                batch.tokens = tokens.clone();
                ApplyMessage::Batch(batch)
            })
            .await;
        // After the batches are queued: the asking core answers once the shards applied.
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        let took = started.elapsed();
        if took > self.config.warning_apply_duration {
            crate::metrics::SLOW_APPLY.inc();
            let (count, first, last) = applying;
            tracing::warn!(
                took = ?took,
                expected_duration = ?self.config.warning_apply_duration,
                request = %format!("{count} committed entries, index {first} to {last}"),
                "apply request took too long"
            );
        }
        match damaged {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// What the serving cores must learn of auth from the entries just applied: the new
    /// store (if it changed) and the token updates, each token entry made once here and
    /// shared by every core (so a use on one core renews it on all).
    pub(super) fn auth_updates(
        &mut self,
    ) -> (
        Option<std::sync::Arc<crate::auth::AuthState>>,
        Vec<crate::auth::TokenUpdate>,
    ) {
        let (auth, events) = self.applier.take_auth_changes();
        crate::metrics::AUTH_REVISION.set(self.applier.auth().revision());
        let now = std::time::Instant::now();
        let ttl = self.config.simple_token_ttl;
        let tokens = events
            .into_iter()
            .map(|event| crate::auth::TokenUpdate::from_event(event, ttl, now))
            .collect();
        (auth, tokens)
    }

    /// One committed request through the applier chain, and what the raft core does
    /// besides: the peer table follows member updates, whose proposer is answered here.
    fn apply_request(&mut self, entry: &Entry, request: &InternalRequest) -> Outcome {
        if let Some(internal_request::Request::Alarm(alarm)) = &request.request {
            let disarms_nospace = alarm.action == alarm_request::AlarmAction::Deactivate as i32
                && alarm.alarm == AlarmType::Nospace as i32;
            if disarms_nospace {
                self.nospace_proposed = false;
            }
        }
        let context = ApplyContext {
            index: entry.index,
            now: self.clock.now(),
        };
        let outcome = self.applier.apply(request, &context);
        self.observe(entry, outcome.result.as_ref());
        if let Some(internal_request::Request::MemberUpdate(_)) = &request.request {
            self.update_peers();
            if request.member_id == self.config.member_id {
                if let Some(reply) = self.waiters.take_member(request.id) {
                    let _ = reply.send(Ok(MemberChangeResult {
                        member: None,
                        members: self.applier.members().to_api(),
                    }));
                }
            }
        }
        outcome
    }

    fn observe(
        &mut self,
        entry: &Entry,
        result: Option<&Result<crate::sequencer::Applied, EtcdError>>,
    ) {
        if let Some(observer) = &mut self.observer {
            observer(AppliedEntry {
                index: entry.index,
                term: entry.term,
                data: &entry.data,
                result,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, to: u64, data: &[&[u8]]) -> RaftMessage {
        let mut message = RaftMessage::default();
        message.set_msg_type(kind);
        message.from = 1;
        message.to = to;
        for bytes in data {
            let mut entry = Entry::default();
            entry.set_data(bytes.to_vec().into());
            message.mut_entries().push(entry);
        }
        message
    }

    fn shape(messages: &[RaftMessage]) -> Vec<(MessageType, u64, Vec<Vec<u8>>)> {
        messages
            .iter()
            .map(|m| {
                let data = m
                    .get_entries()
                    .iter()
                    .map(|e| e.get_data().to_vec())
                    .collect();
                (m.get_msg_type(), m.to, data)
            })
            .collect()
    }

    #[test]
    fn consecutive_proposals_to_one_leader_become_one_message_in_order() {
        use MessageType::{MsgHeartbeatResponse, MsgPropose};
        let big = vec![7u8; limits::RAFT_MESSAGE_BYTES_MAX as usize / 2];
        let messages = vec![
            message(MsgPropose, 2, &[b"a"]),
            message(MsgPropose, 2, &[b"b", b"c"]),
            message(MsgHeartbeatResponse, 2, &[]),
            message(MsgPropose, 2, &[b"d"]),
            message(MsgPropose, 3, &[b"e"]),
            message(MsgPropose, 3, &[&big]),
            message(MsgPropose, 3, &[&big]),
        ];
        let merged = coalesce_proposals(messages);
        let expected = vec![
            (
                MsgPropose,
                2,
                vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            ),
            (MsgHeartbeatResponse, 2, vec![]),
            (MsgPropose, 2, vec![b"d".to_vec()]),
            // A new leader: a new message. The second half-limit entry does not fit.
            (MsgPropose, 3, vec![b"e".to_vec(), big.clone()]),
            (MsgPropose, 3, vec![big.clone()]),
        ];
        assert_eq!(shape(&merged), expected);
    }

    #[test]
    fn proposal_ids_start_at_the_incarnation_and_abandoned_waiters_go() {
        let mut waiters = Waiters::new(u64::MAX);
        // Wrapping skips 0, the id of requests that answer nobody.
        assert_eq!(waiters.next_id(), 1);
        let mut waiters = Waiters::new(1 << 40);
        let kept = waiters.next_id();
        let gone = waiters.next_id();
        assert_eq!((kept, gone), ((1 << 40) + 1, (1 << 40) + 2));
        let (reply, _answer) = oneshot::channel();
        waiters.wait_write(kept, reply);
        let (reply, answer) = oneshot::channel();
        waiters.wait_member(gone, reply);
        drop(answer);
        waiters.drop_abandoned();
        assert_eq!(waiters.len(), 1);
        assert!(
            waiters.take_member(kept).is_none(),
            "a write is not a member change"
        );
        assert!(waiters.take_write(kept).is_some());
        assert!(waiters.is_empty());
    }
}
