//! The shard's end of the apply stream, the applied-index watermark that read-your-writes
//! waits on, and the requests the other cores send this shard.
//!
//! Every shard publishes the index it applied in [`Shared`](crate::shared::Shared); a
//! request that must see index `i` waits until every shard published `i`. A core that
//! waits says so (`waiting_for`), and a shard that passes that index wakes it, so nobody
//! polls.

use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures::future::{self, Either, LocalBoxFuture};

use super::ShardCore;
use crate::messages::{ApplyMessage, CheckpointRequest, RestoreChunk, ShardAck, ShardRequest};
use crate::page::SyncTarget;

impl ShardCore {
    /// Returns once every shard has applied `index`: then any shard shows the effects of
    /// everything up to it. Fast path: one atomic load per shard.
    pub async fn wait_applied(&self, index: u64) {
        poll_fn(|cx| {
            if self.shared.applied_index() >= index {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push((index, cx.waker().clone()));
            self.publish_waiting_for();
            // Checked again after publishing: a shard that applied in between either saw
            // our `waiting_for` or is visible here (both sides use SeqCst).
            if self.shared.applied_index() >= index {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn publish_waiting_for(&self) {
        let smallest = self
            .waiters
            .borrow()
            .iter()
            .map(|(index, _)| *index)
            .min()
            .unwrap_or(u64::MAX);
        self.shared.shards[self.id]
            .waiting_for
            .store(smallest, Ordering::SeqCst);
    }

    /// Wakes this core's requests whose index every shard has applied.
    fn wake_satisfied(&self) {
        let applied = self.shared.applied_index();
        let ready: Vec<Waker> = {
            let mut waiters = self.waiters.borrow_mut();
            let mut ready = Vec::new();
            waiters.retain(|(index, waker)| {
                if *index <= applied {
                    ready.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            ready
        };
        self.publish_waiting_for();
        for waker in ready {
            waker.wake();
        }
    }

    /// Publishes this shard's progress and wakes every core waiting for it.
    fn publish_applied(&self, index: u64, revision: i64) {
        let progress = &self.shared.shards[self.id];
        progress.applied_revision.store(revision, Ordering::SeqCst);
        progress.applied_index.store(index, Ordering::SeqCst);
        for (id, other) in self.shared.shards.iter().enumerate() {
            if id == self.id {
                self.wake_satisfied();
            } else if other.waiting_for.load(Ordering::SeqCst) <= index {
                other.notified.store(true, Ordering::SeqCst);
                other.waker.wake();
            }
        }
    }

    /// Wakes this core's waiting requests when another shard's progress satisfies them.
    pub async fn run_watermark(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                let progress = &self.shared.shards[self.id];
                progress.waker.register(cx.waker());
                if progress.notified.swap(false, Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            self.wake_satisfied();
        }
    }

    /// Streams this shard's live keys to the raft core to rebuild the sequencer, one
    /// chunk at a time, ending with the chunk that says this shard is done. A chunk is
    /// read only once the bounded channel has room for it, so at most
    /// [`crate::limits::RESTORE_QUEUE_CHUNKS`] chunks exist beside the sequencer (never
    /// every key twice at once: ETCD_LESSONS 11), and the shard reads the next chunk
    /// while the raft core inserts the last one. A record that cannot be read fails the
    /// start (the caller stops the member).
    pub async fn send_restore(
        &self,
        restore: &async_channel::Sender<RestoreChunk>,
    ) -> Result<(), crate::shard::ShardOpenError> {
        let mut after: Option<Bytes> = None;
        let mut segments = self.shard.borrow().segment_views()?;
        loop {
            let heads = self.shard.borrow().heads_after(after.as_deref())?;
            let Some((last, _)) = heads.last() else { break };
            after = Some(last.clone());
            let chunk = RestoreChunk {
                shard: self.id,
                segments: std::mem::take(&mut segments),
                heads: Some(heads),
            };
            if restore.send(chunk).await.is_err() {
                return Ok(());
            }
        }
        let done = RestoreChunk {
            shard: self.id,
            segments: Vec::new(),
            heads: None,
        };
        let _ = restore.send(done).await;
        Ok(())
    }

    /// The apply loop: runs until the raft core closes the stream. A checkpoint's syncs go
    /// through `sync` (glommio's io_uring on a shard core, `rivet-net`'s `page_sync`), and
    /// batches go on being applied while they run: a checkpoint covers what was applied
    /// before it began (see [`ShardCore::checkpoint`]). Any other message waits for the
    /// checkpoint in the making to end first.
    pub async fn run_apply<S, F>(
        self: Rc<Self>,
        stream: async_channel::Receiver<ApplyMessage>,
        acks: async_channel::Sender<ShardAck>,
        sync: S,
    ) where
        S: Fn(SyncTarget) -> F,
        F: Future<Output = std::io::Result<()>>,
    {
        // The checkpoint in the making: resolves to its index once written.
        let mut checkpoint: Option<LocalBoxFuture<'_, u64>> = None;
        loop {
            let received = match checkpoint.as_mut() {
                None => stream.recv().await,
                Some(running) => {
                    let next = std::pin::pin!(stream.recv());
                    match future::select(running, next).await {
                        // A `recv` that lost the race took nothing from the stream.
                        Either::Left((index, _)) => {
                            checkpoint = None;
                            if !self.acknowledge(Some(index), &acks).await {
                                return;
                            }
                            continue;
                        }
                        Either::Right((received, _)) => received,
                    }
                }
            };
            let Ok(mut message) = received else { break };
            if !matches!(message, ApplyMessage::Batch(_)) {
                if let Some(running) = checkpoint.take() {
                    let index = running.await;
                    if !self.acknowledge(Some(index), &acks).await {
                        return;
                    }
                }
            }
            if let ApplyMessage::Batch(batch) = &mut message {
                self.apply_auth_updates(batch);
            }
            match message {
                ApplyMessage::Checkpoint(request) => {
                    // Begun here, before the next batch is applied; acknowledged once
                    // written, and until then the stream goes on.
                    let started = std::time::Instant::now();
                    let records = self.shard.borrow_mut().checkpoint_begin(&request);
                    checkpoint = Some(Box::pin(self.checkpoint(request, records, started, &sync)));
                }
                message => {
                    let ack = self.shard.borrow_mut().handle_apply(message);
                    if !self.send_ack(ack, &acks).await {
                        return;
                    }
                }
            }
        }
        // The stream closed (the member stops): the raft core still waits for the
        // checkpoint in the making, the one a graceful stop asks for included.
        if let Some(running) = checkpoint {
            let index = running.await;
            self.acknowledge(Some(index), &acks).await;
        }
    }

    /// Acknowledges what this shard applied (and `checkpoint`, written); false once the
    /// raft core is gone.
    async fn acknowledge(
        &self,
        checkpoint: Option<u64>,
        acks: &async_channel::Sender<ShardAck>,
    ) -> bool {
        let ack = self.shard.borrow_mut().ack(checkpoint);
        self.send_ack(ack, acks).await
    }

    async fn send_ack(&self, ack: ShardAck, acks: &async_channel::Sender<ShardAck>) -> bool {
        let (revision, gc_wanted) = {
            let mut shard = self.shard.borrow_mut();
            (shard.revision(), shard.take_gc_wanted())
        };
        self.publish_applied(ack.index, revision);
        if gc_wanted {
            self.wake_gc();
        }
        acks.send(ack).await.is_ok()
    }

    /// Checkpoints this shard's page file without holding the core during the syncs: the
    /// shard is borrowed only to take each sync job and to give back its result, so reads
    /// and the apply loop's next batches run while the disk works. The checkpoint covers
    /// what was applied before it began: its record's place is reserved then, right after
    /// those records, and written only after their sync completed; it counts as written
    /// only after its own sync completed (the order of the blocking path). Records of the
    /// batches applied meanwhile lie after that place, in the tail a restart at this
    /// checkpoint discards and the WAL replays.
    ///
    /// `records` is the job [`crate::shard::Shard::checkpoint_begin`] returned when the
    /// checkpoint began, at `started`.
    async fn checkpoint<S, F>(
        &self,
        request: CheckpointRequest,
        records: crate::page::SyncJob,
        started: std::time::Instant,
        sync: &S,
    ) -> u64
    where
        S: Fn(SyncTarget) -> F,
        F: Future<Output = std::io::Result<()>>,
    {
        let records = records.run(sync).await;
        let record = self.shard.borrow_mut().checkpoint_write(&request, records);
        let record = record.run(sync).await;
        self.shard
            .borrow_mut()
            .checkpoint_end(&request, record, started);
        request.index
    }

    /// Serves the other cores' parts of scattered reads.
    pub async fn serve_peers(self: Rc<Self>, requests: async_channel::Receiver<ShardRequest>) {
        while let Ok(request) = requests.recv().await {
            match request {
                ShardRequest::Range { part, reply } => {
                    let _ = reply.send(self.shard.borrow().range(&part));
                }
                ShardRequest::SizeBytes { reply } => {
                    let _ = reply.send(self.shard.borrow().sizes());
                }
                ShardRequest::SnapshotChunk {
                    id,
                    restart,
                    sizes_only,
                    reply,
                } => {
                    let _ = reply.send(self.local_snapshot_chunk(id, restart, sizes_only).await);
                }
                ShardRequest::SnapshotEnd { id } => {
                    self.shard.borrow_mut().snapshot_end(id);
                }
                ShardRequest::Defragment { after, reply } => {
                    let request = super::gc::GcRequest::Defragment { after, reply };
                    if let Err(async_channel::SendError(super::gc::GcRequest::Defragment {
                        reply,
                        ..
                    })) = self.gc.send(request).await
                    {
                        let _ = reply.send(Err(crate::error::EtcdError::Stopped));
                    }
                }
                ShardRequest::HashKv { revision, reply } => {
                    let _ = reply.send(self.shard.borrow().hash_kv(revision));
                }
                ShardRequest::WatchRecent {
                    from,
                    to,
                    prev_kv,
                    reply,
                } => {
                    let _ = reply.send(self.shard.borrow().recent_changes(from, to, prev_kv));
                }
                ShardRequest::WatchHistory {
                    key,
                    end,
                    from,
                    to,
                    prev_kv,
                    reply,
                } => {
                    let _ = reply.send(self.shard.borrow().history(&key, &end, from, to, prev_kv));
                }
                ShardRequest::Export {
                    index,
                    revision,
                    reply,
                } => {
                    // Rare (a raft snapshot); the shards reach `index` within moments.
                    self.wait_applied(index).await;
                    match self.shard.borrow().export(revision) {
                        Ok(records) => {
                            let _ = reply.send(records);
                        }
                        Err(e) => {
                            // Dropping `reply` fails this snapshot; raft asks again later.
                            tracing::error!("cannot export a snapshot: {e}");
                        }
                    }
                }
            }
        }
    }
}
