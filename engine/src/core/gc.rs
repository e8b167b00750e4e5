//! The shard core's garbage collection task: rewrites the page segments compactions left
//! dead bytes in (the rules are in `crate::shard`, the file steps in `crate::page::gc`),
//! one bounded step at a time, yielding to the core's other work between steps. The
//! server runs it in a task queue with lower shares than the one serving clients, so
//! under load it takes a small part of the core, and all of it when the core is idle.
//!
//! It wakes when a checkpoint is recorded in the WAL (after every compaction one is), and
//! for Maintenance.Defragment, which every shard runs at once on its own core.

use std::future::Future;
use std::rc::Rc;

use futures::channel::oneshot;

use super::ShardCore;
use crate::error::EtcdError;
use crate::limits;
use crate::messages::{RaftCommand, ShardRequest};
use crate::shard::GcMode;

/// What wakes the garbage collection task.
pub enum GcRequest {
    /// A checkpoint was recorded: look for segments past the dead-share threshold.
    Background,
    /// Rewrite every segment with a dead byte once the checkpoint at `after` is recorded.
    Defragment {
        after: u64,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
}

impl ShardCore {
    /// The garbage collection task. `yield_now` lets the executor run other task queues
    /// (glommio's `yield_task_queue_now` on a shard core).
    pub async fn run_gc<Y, F>(self: Rc<Self>, yield_now: Y)
    where
        Y: Fn() -> F,
        F: Future<Output = ()>,
    {
        let Some(requests) = self.gc_requests.borrow_mut().take() else {
            return;
        };
        let mut defragments: Vec<(u64, oneshot::Sender<Result<(), EtcdError>>)> = Vec::new();
        while let Ok(first) = requests.recv().await {
            let mut next = Some(first);
            while let Some(request) = next.take().or_else(|| requests.try_recv().ok()) {
                if let GcRequest::Defragment { after, reply } = request {
                    defragments.push((after, reply));
                }
            }
            let durable = self.shard.borrow().durable().map_or(0, |d| d.index);
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut defragments)
                .into_iter()
                .partition(|(after, _)| *after <= durable);
            defragments = waiting;
            let mode = if ready.is_empty() {
                GcMode::Background
            } else {
                GcMode::Defragment
            };
            let result = self.gc_pass(mode, &yield_now).await;
            if let Err(error) = &result {
                tracing::error!(shard = self.id, "garbage collection failed: {error}");
            }
            for (_, reply) in ready {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// One pass over the segments `mode` picks, oldest first.
    async fn gc_pass<Y, F>(&self, mode: GcMode, yield_now: &Y) -> Result<(), EtcdError>
    where
        Y: Fn() -> F,
        F: Future<Output = ()>,
    {
        let failed = |error: crate::page::GcError| EtcdError::Internal(error.to_string());
        if mode == GcMode::Defragment {
            self.shard.borrow_mut().gc_reseal().map_err(failed)?;
        }
        let candidates = self.shard.borrow().gc_candidates(mode);
        let pass_started = std::time::Instant::now();
        let (mut rewritten, mut freed) = (0, 0);
        for key in candidates {
            if !self.shard.borrow_mut().gc_begin(key).map_err(failed)? {
                break;
            }
            loop {
                // etcd's compaction pause: how long one step holds the shard.
                let step_started = std::time::Instant::now();
                let step = self
                    .shard
                    .borrow_mut()
                    .gc_step(limits::GC_STEP_RECORDS, mode)
                    .map_err(failed)?;
                crate::metrics::DB_COMPACTION_PAUSE.observe_millis(step_started.elapsed());
                match step {
                    // Stopped (a compaction or a snapshot stream came): the next
                    // recorded checkpoint wakes this task again.
                    None => return Ok(()),
                    Some(progress) if progress.done => break,
                    Some(_) => yield_now().await,
                }
            }
            freed += self.shard.borrow_mut().gc_finish().map_err(failed)?;
            rewritten += 1;
            // Segment `key`'s file is deleted: the sequencer may still map it for values
            // restored at start. A closed channel means the member is stopping.
            let deleted = RaftCommand::SegmentsDeleted {
                shard: self.id,
                segments: vec![key],
            };
            let _ = self.raft.send(deleted).await;
            while !self
                .shard
                .borrow_mut()
                .gc_switch_step(limits::GC_STEP_RECORDS)
            {
                yield_now().await;
            }
            yield_now().await;
        }
        if rewritten > 0 {
            crate::metrics::DB_COMPACTION_TOTAL.observe_millis(pass_started.elapsed());
            let sizes = self.shard.borrow().sizes();
            tracing::info!(
                shard = self.id,
                ?mode,
                segments = rewritten,
                freed_bytes = freed,
                db_size = sizes.used_bytes,
                db_size_in_use = sizes.live_bytes,
                "page file garbage collection rewrote segments"
            );
        }
        Ok(())
    }

    /// Maintenance.Defragment: a checkpoint that seals every shard's active segment, then
    /// every shard rewrites every segment with a dead byte, each on its own core; answers
    /// when all are done. Requests go on meanwhile.
    pub async fn defragment(&self) -> Result<(), EtcdError> {
        crate::metrics::DEFRAG_INFLIGHT.add(1);
        let started = std::time::Instant::now();
        let result = self.defragment_all().await;
        crate::metrics::DEFRAG_INFLIGHT.add(-1);
        if result.is_ok() {
            crate::metrics::DEFRAG.observe(started.elapsed());
        }
        result
    }

    async fn defragment_all(&self) -> Result<(), EtcdError> {
        let after = self.ask(|reply| RaftCommand::Defragment { reply }).await?;
        let mut answers = Vec::with_capacity(self.shard_count);
        for id in 0..self.shard_count {
            if id == self.id {
                let (reply, answer) = oneshot::channel();
                self.gc
                    .send(GcRequest::Defragment { after, reply })
                    .await
                    .map_err(|_| EtcdError::Stopped)?;
                answers.push(answer);
            } else {
                answers.push(
                    self.ask_shard(id, |reply| ShardRequest::Defragment { after, reply })
                        .await?,
                );
            }
        }
        for answer in answers {
            answer.await.map_err(|_| EtcdError::Stopped)??;
        }
        Ok(())
    }

    /// Tells the garbage collection task to look (a checkpoint was recorded).
    pub(super) fn wake_gc(&self) {
        // A full queue already holds a wake-up.
        let _ = self.gc.try_send(GcRequest::Background);
    }
}
