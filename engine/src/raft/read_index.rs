//! Linearizable reads: ReadIndex batching and retry.
//!
//! Every read that arrives in one raft-core turn joins one batch, and the batch asks raft
//! for one ReadIndex: one heartbeat round for all of them. Raft answers with the commit
//! index at the time of asking; the batch waits until this member applied that index, then
//! every read in it is answered with the read point (index and revision), and every
//! read-only txn is evaluated there.
//!
//! A batch is named by a context of the member ID, this start's incarnation number and a
//! sequence number: raft ignores a ReadIndex whose context is already pending, and
//! followers forward theirs to the leader, so contexts must be unique across members and
//! across restarts of one member — a leader's answer to a read of an earlier start may
//! still be on its way, with an index too old for a read of this one, and the leader
//! ignores a context it still holds as pending. Raft drops a ReadIndex that finds
//! no leader (a follower that just rejoined) or that a leader change loses, and nothing
//! else would ever answer its readers: a batch not answered within
//! [`READ_INDEX_RETRY`] is asked about again. A duplicate is harmless: a leader ignores a
//! context already pending, and a second answer finds no batch. Batches whose readers all
//! gave up are dropped.
//!
//! The queue is a plain state machine (the raft core calls raft with the contexts it
//! hands out), so it is tested here without raft.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use futures::channel::oneshot;
use rivet_api::etcdserverpb::TxnRequest;

use crate::error::EtcdError;
use crate::limits::READ_INDEX_RETRY;
use crate::messages::{ReadPoint, Reply};

/// The readers of one ReadIndex.
#[derive(Default)]
pub struct ReadBatch {
    pub reads: Vec<oneshot::Sender<Result<ReadPoint, EtcdError>>>,
    pub txns: Vec<(TxnRequest, oneshot::Sender<Result<Reply, EtcdError>>)>,
}

impl ReadBatch {
    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.txns.is_empty()
    }

    /// Whether every reader of the batch stopped waiting.
    fn abandoned(&self) -> bool {
        self.reads.iter().all(oneshot::Sender::is_canceled)
            && self.txns.iter().all(|(_, reply)| reply.is_canceled())
    }
}

pub struct ReadIndexQueue {
    member_id: u64,
    incarnation: u64,
    /// Readers of the current turn, not yet given a ReadIndex.
    unsent: ReadBatch,
    /// Batches raft was asked about, by sequence, with when they were last asked.
    in_raft: BTreeMap<u64, (ReadBatch, Instant)>,
    next_sequence: u64,
    /// Batches with a known index, waiting for this member to apply it (in index order:
    /// raft answers in the order it was asked, and indexes never go back).
    waiting: VecDeque<(u64, ReadBatch)>,
}

impl ReadIndexQueue {
    pub fn new(member_id: u64, incarnation: u64) -> ReadIndexQueue {
        ReadIndexQueue {
            member_id,
            incarnation,
            unsent: ReadBatch::default(),
            in_raft: BTreeMap::new(),
            next_sequence: 1,
            waiting: VecDeque::new(),
        }
    }

    pub fn push_read(&mut self, reply: oneshot::Sender<Result<ReadPoint, EtcdError>>) {
        self.unsent.reads.push(reply);
    }

    pub fn push_txn(
        &mut self,
        request: TxnRequest,
        reply: oneshot::Sender<Result<Reply, EtcdError>>,
    ) {
        self.unsent.txns.push((request, reply));
    }

    /// Closes the batch of this turn: the context to ask raft a ReadIndex for, or `None`
    /// when nobody is waiting.
    pub fn send(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.unsent.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.unsent);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.in_raft.insert(sequence, (batch, now));
        Some(self.context(sequence))
    }

    /// Drops batches whose readers gave up and, when there is a leader to ask, answers
    /// the contexts to ask raft about again.
    pub fn retry(&mut self, now: Instant, has_leader: bool) -> Vec<Vec<u8>> {
        self.in_raft.retain(|_, (batch, _)| !batch.abandoned());
        if !has_leader {
            return Vec::new();
        }
        let mut contexts = Vec::new();
        for (sequence, (_, asked)) in &mut self.in_raft {
            if now.duration_since(*asked) >= READ_INDEX_RETRY {
                *asked = now;
                contexts.push(Self::context_of(
                    self.member_id,
                    self.incarnation,
                    *sequence,
                ));
            }
        }
        contexts
    }

    /// Raft answered a ReadIndex: the batch of `context` reads once `index` is applied.
    pub fn answered(&mut self, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 24]>::try_from(context) else {
            return;
        };
        let (ours, sequence) = bytes.split_at(16);
        if *ours != Self::context_of(self.member_id, self.incarnation, 0)[..16] {
            return;
        }
        let mut sequence_bytes = [0u8; 8];
        sequence_bytes.copy_from_slice(sequence);
        if let Some((batch, _)) = self.in_raft.remove(&u64::from_be_bytes(sequence_bytes)) {
            self.waiting.push_back((index, batch));
        }
    }

    /// The batches whose index this member has applied, in order.
    pub fn ready(&mut self, applied_index: u64) -> Vec<ReadBatch> {
        let mut ready = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(index, _)| *index <= applied_index)
        {
            if let Some((_, batch)) = self.waiting.pop_front() {
                ready.push(batch);
            }
        }
        ready
    }

    fn context(&self, sequence: u64) -> Vec<u8> {
        Self::context_of(self.member_id, self.incarnation, sequence)
    }

    /// Member ID, incarnation, sequence: unique across members and restarts.
    fn context_of(member_id: u64, incarnation: u64, sequence: u64) -> Vec<u8> {
        let mut context = Vec::with_capacity(24);
        context.extend_from_slice(&member_id.to_be_bytes());
        context.extend_from_slice(&incarnation.to_be_bytes());
        context.extend_from_slice(&sequence.to_be_bytes());
        context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(queue: &mut ReadIndexQueue) -> oneshot::Receiver<Result<ReadPoint, EtcdError>> {
        let (reply, answer) = oneshot::channel();
        queue.push_read(reply);
        answer
    }

    #[test]
    fn reads_of_one_turn_share_one_read_index_and_wait_for_apply() {
        let now = Instant::now();
        let mut queue = ReadIndexQueue::new(7, 99);
        assert_eq!(queue.send(now), None, "nobody waits: no ReadIndex");
        let _a = read(&mut queue);
        let _b = read(&mut queue);
        let context = queue.send(now).expect("one context for the turn");
        assert_eq!(&context[..8], &7u64.to_be_bytes());
        assert_eq!(queue.send(now), None);
        // Another member's context is not ours, nor one of an earlier start of this member.
        let mut foreign = context.clone();
        foreign[0] ^= 1;
        queue.answered(&foreign, 10);
        let mut earlier = context.clone();
        earlier[8] ^= 1;
        queue.answered(&earlier, 10);
        queue.answered(&context, 10);
        assert!(queue.ready(9).is_empty());
        let ready = queue.ready(10);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].reads.len(), 2);
        // A second answer to the same context finds nothing.
        queue.answered(&context, 11);
        assert!(queue.ready(100).is_empty());
    }

    #[test]
    fn unanswered_reads_are_asked_again_only_with_a_leader() {
        let now = Instant::now();
        let mut queue = ReadIndexQueue::new(1, 99);
        let _waiting = read(&mut queue);
        let context = queue.send(now).expect("context");
        assert!(queue.retry(now, true).is_empty(), "not yet due");
        let later = now + READ_INDEX_RETRY;
        assert!(queue.retry(later, false).is_empty(), "no leader to ask");
        assert_eq!(queue.retry(later, true), vec![context.clone()]);
        assert!(queue.retry(later, true).is_empty(), "asked just now");
        queue.answered(&context, 3);
        assert!(queue.retry(later + READ_INDEX_RETRY, true).is_empty());
    }

    #[test]
    fn batches_whose_readers_gave_up_are_dropped() {
        let now = Instant::now();
        let mut queue = ReadIndexQueue::new(1, 99);
        let gone = read(&mut queue);
        let context = queue.send(now).expect("context");
        drop(gone);
        assert!(queue.retry(now + READ_INDEX_RETRY, true).is_empty());
        queue.answered(&context, 1);
        assert!(queue.ready(1).is_empty(), "the batch was dropped");
    }
}
