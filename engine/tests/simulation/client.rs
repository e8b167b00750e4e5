//! The simulated clients: each runs one operation at a time against a member — a put, a
//! compare-and-set (a txn), or a linearizable get (a ReadIndex then a shard read, or a
//! read-only txn) — and records it in the history the linearizability checker reads.
//!
//! A client talks to a member as that member's shard core would: it hands the raft core a
//! command and, once answered, waits until every shard applied the index of the answer
//! (read-your-writes), then reads or completes. An operation whose member crashes, or that
//! takes too long, completes as unknown: a write may or may not have happened.

use bytes::Bytes;
use futures::channel::oneshot;
use rivet_api::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rivet_api::rivetpb::internal_request;
use rivet_engine::error::EtcdError;
use rivet_engine::keyspace::shard_of;
use rivet_engine::messages::{RaftCommand, RangePart, ReadPoint, Reply};
use rivet_engine::sequencer::Applied;
use rivet_tools::linearizability::{Event, Op, Outcome};

use crate::node::{Node, Running};
use crate::rng::Rng;

/// How long a client waits for an operation before it gives up (unknown outcome).
pub const OPERATION_TIMEOUT_NS: u64 = 3_000_000_000;

pub struct Client {
    pub id: u64,
    /// The member it talks to.
    pub node: usize,
    pub rng: Rng,
    pub next_value: u64,
    pub pending: Option<Pending>,
    /// Operations left to start (0: done, or only final reads).
    pub budget: usize,
    /// What happened to its operations, for the run's trace.
    pub notes: Vec<String>,
}

pub struct Pending {
    op: Op,
    node: usize,
    invoke_ns: u64,
    stage: Stage,
}

enum Stage {
    Write(oneshot::Receiver<Result<Reply, EtcdError>>),
    ReadPoint(oneshot::Receiver<Result<ReadPoint, EtcdError>>),
    ReadTxn(oneshot::Receiver<Result<Reply, EtcdError>>),
    /// Answered; waiting for every shard of the member to apply `index`.
    Applied {
        index: u64,
        then: Then,
    },
}

enum Then {
    Complete(Outcome),
    Read { revision: i64 },
}

pub fn key_name(key: usize) -> String {
    format!("k{key}")
}

impl Client {
    /// Where the pending operation is, for a failure's report.
    pub fn describe_pending(&self) -> String {
        match &self.pending {
            None => "nothing pending".into(),
            Some(pending) => {
                let stage = match &pending.stage {
                    Stage::Write(_) => "waiting for the raft core to apply it".to_string(),
                    Stage::ReadPoint(_) => "waiting for a read point".to_string(),
                    Stage::ReadTxn(_) => "waiting for a read-only txn".to_string(),
                    Stage::Applied { index, .. } => {
                        format!("waiting for the shards to apply index {index}")
                    }
                };
                format!("{:?} on m{}: {stage}", pending.op, pending.node + 1)
            }
        }
    }

    /// Starts an operation on member `node` (which runs).
    pub fn start(&mut self, node: usize, running: &mut Running, keys: usize, now_ns: u64) {
        let key = key_name(self.rng.below(keys));
        self.next_value += 1;
        let value = format!("c{}-{}", self.id, self.next_value);
        let (op, stage) = match self.rng.below(10) {
            0..=3 => {
                let (reply, answer) = oneshot::channel();
                running.core.handle_command(RaftCommand::Propose {
                    request: internal_request::Request::Put(put(&key, &value)),
                    reply,
                });
                (Op::Put { key, value }, Stage::Write(answer))
            }
            4..=5 => {
                // Compare against a value some client wrote (or absence).
                let expected = if self.rng.chance(300) {
                    None
                } else {
                    let client = self.rng.between(0, 5);
                    let n = self.rng.between(1, self.next_value.max(2));
                    Some(format!("c{client}-{n}"))
                };
                let (reply, answer) = oneshot::channel();
                let request = cas(&key, expected.as_deref(), &value);
                running.core.handle_command(RaftCommand::Propose {
                    request: internal_request::Request::Txn(request),
                    reply,
                });
                (
                    Op::Cas {
                        key,
                        expected,
                        new: value,
                    },
                    Stage::Write(answer),
                )
            }
            6..=7 => {
                let (reply, answer) = oneshot::channel();
                running
                    .core
                    .handle_command(RaftCommand::ReadIndex { reply });
                (Op::Get { key }, Stage::ReadPoint(answer))
            }
            _ => {
                let (reply, answer) = oneshot::channel();
                running.core.handle_command(RaftCommand::ReadOnlyTxn {
                    request: read_txn(&key),
                    linearizable: true,
                    reply,
                });
                (Op::Get { key }, Stage::ReadTxn(answer))
            }
        };
        self.notes
            .push(format!("c{} starts {op:?} on m{}", self.id, node + 1));
        self.pending = Some(Pending {
            op,
            node,
            invoke_ns: now_ns,
            stage,
        });
    }

    /// A final linearizable read of `key` on member `node`.
    pub fn start_read(&mut self, node: usize, running: &mut Running, key: usize, now_ns: u64) {
        let (reply, answer) = oneshot::channel();
        running
            .core
            .handle_command(RaftCommand::ReadIndex { reply });
        self.pending = Some(Pending {
            op: Op::Get { key: key_name(key) },
            node,
            invoke_ns: now_ns,
            stage: Stage::ReadPoint(answer),
        });
    }

    /// Moves the pending operation on; returns it when it completed.
    pub fn poll(&mut self, nodes: &[Node], now_ns: u64) -> Option<Event> {
        let pending = self.pending.as_mut()?;
        let running = nodes[pending.node].running.as_ref();
        let timed_out = now_ns >= pending.invoke_ns + OPERATION_TIMEOUT_NS;
        let next = match (&mut pending.stage, running) {
            // The member crashed: the answer can no longer come.
            (_, None) => Some(Step::Done(Outcome::Unknown)),
            (_, Some(_)) if timed_out => Some(Step::Done(Outcome::Unknown)),
            (Stage::Write(answer), Some(_)) => match answer.try_recv() {
                Ok(None) => None,
                Ok(Some(Ok(reply))) => {
                    let outcome = match (&pending.op, reply.applied) {
                        (Op::Put { .. }, Applied::Put(_)) => Outcome::Put,
                        (Op::Cas { .. }, Applied::Txn(txn)) => Outcome::Cas(txn.succeeded),
                        (op, applied) => panic!("{op:?} answered {applied:?}"),
                    };
                    Some(Step::Wait(reply.index, Then::Complete(outcome)))
                }
                Ok(Some(Err(_))) | Err(oneshot::Canceled) => Some(Step::Done(Outcome::Unknown)),
            },
            (Stage::ReadPoint(answer), Some(_)) => match answer.try_recv() {
                Ok(None) => None,
                Ok(Some(Ok(point))) => Some(Step::Wait(
                    point.index,
                    Then::Read {
                        revision: point.revision,
                    },
                )),
                Ok(Some(Err(_))) | Err(oneshot::Canceled) => Some(Step::Done(Outcome::Unknown)),
            },
            (Stage::ReadTxn(answer), Some(_)) => match answer.try_recv() {
                Ok(None) => None,
                Ok(Some(Ok(reply))) => {
                    let Applied::Txn(txn) = reply.applied else {
                        panic!("a read-only txn answered {:?}", reply.applied);
                    };
                    let value = match txn.responses.first().and_then(|r| r.response.as_ref()) {
                        Some(response_op::Response::ResponseRange(range)) => {
                            range.kvs.first().map(|kv| string(&kv.value))
                        }
                        other => panic!("a read-only txn answered {other:?}"),
                    };
                    Some(Step::Wait(reply.index, Then::Complete(Outcome::Get(value))))
                }
                Ok(Some(Err(_))) | Err(oneshot::Canceled) => Some(Step::Done(Outcome::Unknown)),
            },
            (Stage::Applied { index, then }, Some(running)) => {
                if running.shards_applied() < *index {
                    None
                } else {
                    match then {
                        Then::Complete(outcome) => Some(Step::Done(outcome.clone())),
                        Then::Read { revision } => {
                            let Op::Get { key } = &pending.op else {
                                unreachable!("only gets read")
                            };
                            Some(Step::Done(Outcome::Get(read(running, key, *revision))))
                        }
                    }
                }
            }
        };
        match next? {
            Step::Wait(index, then) => {
                let read_at = match &then {
                    Then::Read { revision } => format!(", to read at revision {revision}"),
                    Then::Complete(outcome) => format!(" with {outcome:?}"),
                };
                self.notes
                    .push(format!("c{} answered at index {index}{read_at}", self.id));
                pending.stage = Stage::Applied { index, then };
                // It may be applied already.
                self.poll(nodes, now_ns)
            }
            Step::Done(outcome) => {
                let pending = self.pending.take()?;
                self.notes.push(format!(
                    "c{} completes {:?}: {outcome:?}",
                    self.id, pending.op
                ));
                // An unknown read says nothing; drop it rather than record it.
                if outcome == Outcome::Unknown && matches!(pending.op, Op::Get { .. }) {
                    return None;
                }
                Some(Event {
                    client: self.id,
                    op: pending.op,
                    outcome,
                    invoke_ns: pending.invoke_ns,
                    complete_ns: now_ns,
                })
            }
        }
    }
}

enum Step {
    Wait(u64, Then),
    Done(Outcome),
}

fn string(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// A txn that puts `new` if the key holds `expected` (`None`: if it does not exist).
fn cas(key: &str, expected: Option<&str>, new: &str) -> TxnRequest {
    let key_bytes = Bytes::copy_from_slice(key.as_bytes());
    let compare = match expected {
        Some(value) => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key_bytes,
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::Value(Bytes::copy_from_slice(
                value.as_bytes(),
            ))),
        },
        None => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key_bytes,
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
        },
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put(key, new))),
        }],
        failure: Vec::new(),
    }
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

/// A read-only txn that reads `key`.
fn read_txn(key: &str) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range(key))),
        }],
        failure: Vec::new(),
    }
}

/// Reads `key` at `revision` from the shard that owns it, as a shard core serves a
/// linearizable range once every shard applied the read point.
pub fn read(running: &Running, key: &str, revision: i64) -> Option<String> {
    let shard = &running.shards[shard_of(key.as_bytes(), running.shards.len())];
    let part = RangePart::from_request(&range(key), revision);
    let result = shard
        .range(&part)
        .unwrap_or_else(|e| panic!("reading {key} at revision {revision}: {e}"));
    result.kvs.first().map(|kv| string(&kv.value))
}
